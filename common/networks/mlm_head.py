"""Masked-language-model prediction head over the vocabulary (BERT's, from ``transformers``)."""

from __future__ import annotations

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLMPredictionHead

from common.networks.bert_init import bert_init_weights

__all__ = ["masked_lm_head"]


def masked_lm_head(
    hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12, output_bias: torch.Tensor | None = None
) -> BertLMPredictionHead:
    """BERT's MLM head ``Linear -> GELU -> LayerNorm -> Linear(vocab)`` for ``(B, L, hidden_size)`` states.

    M3AE uses the same head (``m3ae/modules/prediction_heads.py::MLMHead``: transform, bias-free decoder not tied to
    the word embeddings, a separate zero-initialised output bias) on the fused text tokens and initialises it as BERT
    (N(0, 0.02) weights, zero biases, LayerNorm 1/0; PyTorch's default would draw a 128-wide demo head ~2.5x wider).
    ``output_bias`` ``(vocab_size,)`` replaces the zero output bias, e.g. the masked-token log prior
    (:func:`common.methods.mpma.token_prior.masked_token_log_prior`; not M3AE's).
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
