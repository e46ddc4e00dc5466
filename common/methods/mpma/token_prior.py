"""The masked-token prior: log unigram frequencies of the training reports' WordPiece tokens.

Whole-word masking draws words uniformly, so the masked targets follow the reports' token unigram distribution; an
MLM output bias set to its logarithm starts the head at the prior's cross-entropy (its entropy, ~4.9 nats on the
phantom radiograph reports) instead of ``ln V`` (10.3 for 30,522 tokens). Under Adam a zero-initialised bias moves
~lr per step, far too slowly to express the prior's ~10-nat spread in a few hundred steps, so without it the network
expresses the prior through a direction shared by every fused text state (issue 18, ``mpma_cxr`` docs/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["masked_token_log_prior"]


def masked_token_log_prior(reports: Iterable[str], tokenizer, pseudo_count: float = 0.01) -> torch.Tensor:
    """``(V,)`` log-probabilities of the tokens of ``reports`` over ``tokenizer``'s vocabulary.

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
