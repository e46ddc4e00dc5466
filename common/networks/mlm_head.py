"""Masked-language-model prediction head over the vocabulary (BERT's, from ``transformers``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLMPredictionHead

from common.networks.bert_init import bert_init_weights

__all__ = ["masked_lm_head", "masked_token_log_prior"]


def masked_lm_head(
    hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12, output_bias: torch.Tensor | None = None
) -> BertLMPredictionHead:
    """BERT's MLM head ``Linear -> GELU -> LayerNorm -> Linear(vocab)`` for ``(B, L, hidden_size)`` states.

    M3AE uses the same head (``m3ae/modules/prediction_heads.py::MLMHead``: transform, bias-free decoder not tied to
    the word embeddings, a separate zero-initialised output bias) on the fused text tokens and initialises it as BERT
    (N(0, 0.02) weights, zero biases, LayerNorm 1/0; PyTorch's default would draw a 128-wide demo head ~2.5x wider).
    ``output_bias`` ``(vocab_size,)`` replaces the zero output bias, e.g. the masked-token log prior
    (:func:`masked_token_log_prior`; not M3AE's).
    """
    if hidden_size <= 0 or vocab_size <= 0:
        raise ValueError(f"hidden_size and vocab_size must be positive, got {hidden_size}, {vocab_size}")
    config = BertConfig(
        hidden_size=hidden_size, vocab_size=vocab_size, hidden_act="gelu", layer_norm_eps=layer_norm_eps
    )
    head = BertLMPredictionHead(config)
    head.apply(bert_init_weights)
    if output_bias is not None:
        if tuple(output_bias.shape) != (vocab_size,):
            raise ValueError(f"output_bias must have shape ({vocab_size},), got {tuple(output_bias.shape)}")
        with torch.no_grad():
            head.bias.copy_(output_bias)
    return head


def masked_token_log_prior(reports: Iterable[str], tokenizer, pseudo_count: float = 0.01) -> torch.Tensor:
    """``(V,)`` log-probabilities of the tokens of ``reports`` over ``tokenizer``'s vocabulary: an MLM output bias.

    Whole-word masking draws words uniformly, so the masked targets follow the reports' token unigram distribution; an
    output bias at its logarithm starts the head at the prior's cross-entropy (its entropy, ~4.9 nats on the phantom
    radiograph reports) instead of ``ln V`` (10.3 for 30,522 tokens). Under Adam a zero-initialised bias moves ~lr per
    step, too slowly to express the prior's ~10-nat spread in a few hundred steps, so without it a network can express
    the prior through a direction shared by every fused text state (issue 18, ``mpma_cxr`` docs/README.md).

    Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ...) are never masking targets and are not counted;
    every vocabulary entry (special tokens included) gets ``pseudo_count`` (add-k smoothing): a finite, low prior.

    Args:
        reports: report texts (empty strings are skipped).
        tokenizer: a ``transformers`` tokenizer (the one the text pipeline uses).
        pseudo_count: added to every token's count (> 0); the default gives unseen tokens ~1 % of the mass on 300
            reports of ~80 tokens (30,522 x 0.01 = 305 pseudo-counts).
    """
    if pseudo_count <= 0:
        raise ValueError(f"pseudo_count must be > 0, got {pseudo_count}")
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    texts = [text for text in reports if text]
    if not texts:
        raise ValueError("no report text to estimate the masked-token prior from")
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        counts += torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=len(counts)).double()
    counts[torch.as_tensor(tokenizer.all_special_ids, dtype=torch.long)] = 0.0
    counts += pseudo_count
    return torch.log(counts / counts.sum()).float()
