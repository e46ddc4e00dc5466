"""Sentence-level text embeddings: the mean of each sentence's token embeddings, as a padded set with a mask.

PRIOR (Cheng et al., "PRIOR: Prototype Representation Joint Learning from Medical Images and Reports", ICCV 2023,
https://arxiv.org/abs/2307.14975) represents a report by its sentences: every token carries the number of the
sentence it belongs to (``sentence_index``: 1, 2, ... for sentence tokens, -1 for ``[CLS]``/``[SEP]``/padding) and a
sentence embedding is the mean of its tokens' (projected) embeddings (``SentenceGather(pool='avg')`` in the release's
``prior/modules/gather.py``, a per-report, per-sentence Python loop returning a list of ``(n_b, D)`` tensors).

Here the same means are computed for the whole batch at once (``index_add_``) and returned as a padded
``(B, S, D)`` tensor with a ``(B, S)`` validity mask, the form that :class:`~common.networks.pooling
.PositionalAttentionPool` (``grid_size=None``: PRIOR's sentence attention pooling) and batched losses take.
As in the release, sentence numbers that own no token (e.g. cut by truncation) are skipped and the remaining
sentences keep their order, packed to the left.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SentenceGather", "gather_sentences"]


def gather_sentences(
    tokens: torch.Tensor, sentence_index: torch.Tensor, max_sentences: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average token embeddings per sentence.

    Args:
        tokens: ``(B, L, D)`` token embeddings.
        sentence_index: ``(B, L)`` integer sentence number of each token, starting at 1; tokens with a number
            ``<= 0`` belong to no sentence.
        max_sentences: keep at most the first ``max_sentences`` sentences of each report (PRIOR's
            ``trancated_sentence_stack``, ``num_queries=16``); ``None`` keeps all.

    Returns:
        ``sentences`` ``(B, S, D)`` (zeros at padding) and ``mask`` ``(B, S)`` bool, ``S`` the largest number of
        non-empty sentences in the batch (after ``max_sentences``). A report without any sentence has an all-False
        row (the release fails on it).

    Raises:
        ValueError: if the shapes do not agree or ``max_sentences < 1``.
    """
    if tokens.ndim != 3 or sentence_index.shape != tokens.shape[:2]:
        raise ValueError(
            f"tokens must be (B, L, D) and sentence_index (B, L); got {tuple(tokens.shape)} and "
            f"{tuple(sentence_index.shape)}"
        )
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be positive, got {max_sentences}")
    b, _, d = tokens.shape
    index = sentence_index.to(device=tokens.device, dtype=torch.long).clamp_min(0)  # bucket 0: no sentence
    buckets = int(index.max().item()) + 1 if index.numel() else 1
    flat = (torch.arange(b, device=tokens.device).unsqueeze(1) * buckets + index).reshape(-1)
    sums = tokens.new_zeros(b * buckets, d).index_add_(0, flat, tokens.reshape(-1, d))
    counts = torch.zeros(b * buckets, device=tokens.device, dtype=torch.long).index_add_(0, flat, torch.ones_like(flat))
    sums, counts = sums.view(b, buckets, d)[:, 1:], counts.view(b, buckets)[:, 1:]
    present = counts > 0
    means = sums / counts.clamp_min(1).unsqueeze(-1).to(tokens.dtype)
    slot = present.long().cumsum(dim=1) - 1  # position of each non-empty sentence after packing
    if max_sentences is not None:
        present = present & (slot < max_sentences)
    size = int(present.sum(dim=1).max().item()) if present.numel() else 0
    rows, cols = present.nonzero(as_tuple=True)
    sentences = tokens.new_zeros(b, size, d)
    sentences = sentences.index_put((rows, slot[rows, cols]), means[rows, cols])
    mask = torch.zeros(b, size, dtype=torch.bool, device=tokens.device)
    mask[rows, slot[rows, cols]] = True
    return sentences, mask


class SentenceGather(nn.Module):
    """:func:`gather_sentences` as a module (no parameters): ``(tokens, sentence_index) -> (sentences, mask)``.

    Args:
        max_sentences: see :func:`gather_sentences`.
    """

    def __init__(self, max_sentences: int | None = None) -> None:
        super().__init__()
        self.max_sentences = max_sentences

    def forward(self, tokens: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_sentences(tokens, sentence_index, self.max_sentences)
