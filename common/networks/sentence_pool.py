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

from typing import Any

import torch
from torch import nn

__all__ = ["SentenceGather", "SentencePooler", "gather_sentences", "single_sentence_index"]


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


def single_sentence_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence numbers treating each sequence as one sentence: every real token but the first and the last
    (``[CLS]`` and ``[SEP]``) is sentence 1 (the release's prompt embedding, ``zero_classification_model.py``)."""
    mask = attention_mask.bool()
    position = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = mask.long().sum(dim=1, keepdim=True) - 1
    inner = mask & (position > 0) & (position < last)
    return torch.where(inner, torch.ones_like(position), torch.full_like(position, -1))


class SentencePooler(nn.Module):
    """A report's global embedding from its sentences: gather -> (prototypes) -> attention pooling.

    PRIOR's global text feature: the projected tokens of each sentence are averaged (:func:`gather_sentences`),
    from stage 2 on every sentence is replaced by its soft prototype from the sentence prototype bank, and a
    mean-query attention pooling without positional embedding (``PositionalAttentionPool(grid_size=None)``, the
    release's ``SentenceAttentionPool``) pools the set. Usable as a :class:`~common.networks.two_tower.TextTower`
    pooler: ``forward(tokens, attention_mask, sentence_index=None)``; without ``sentence_index`` the whole text is one
    sentence (prompts).

    Args:
        attention: the pooling over sentences, ``(B, S, D), mask -> (B, D)``.
        prototypes: the sentence prototype bank (:class:`~common.networks.prototypes.SentencePrototypeBank`).
        use_prototypes: quantise sentences before pooling (PRIOR stages 2 and 3).
        max_sentences: keep the first ``max_sentences`` sentences of a report (``None``: all).
    """

    pools_sentences = True  # tells common.networks.two_tower.encode_texts to pass sentence numbers

    def __init__(
        self,
        attention: nn.Module,
        prototypes: nn.Module | None = None,
        use_prototypes: bool = False,
        max_sentences: int | None = None,
    ) -> None:
        super().__init__()
        if use_prototypes and prototypes is None:
            raise ValueError("use_prototypes needs a prototype bank")
        self.attention = attention
        self.prototypes = prototypes
        self.use_prototypes = bool(use_prototypes)
        self.max_sentences = max_sentences

    def sentences(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, sentence_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentence embeddings ``(B, S, D)`` and their mask, before any prototype."""
        if sentence_index is None:
            if attention_mask is None:
                attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
            sentence_index = single_sentence_index(attention_mask)
        return gather_sentences(tokens, sentence_index, self.max_sentences)

    def quantise(self, sentences: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Prototypes of the real sentences (padding stays zero) and the bank's output on them (loss, logits).

        The prototypes are cast to the sentences' dtype: under bf16 autocast the bank's matmuls return bf16 while the
        sentences may be float32 (stage 3's matched predictions).
        """
        out = self.prototypes(sentences[mask])
        prototypes = out.prototypes.to(sentences.dtype)
        quantised = sentences.new_zeros(sentences.shape).index_put((*mask.nonzero(as_tuple=True),), prototypes)
        return quantised, out

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        sentence_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sentences, mask = self.sentences(tokens, attention_mask, sentence_index)
        if self.use_prototypes:
            sentences, _ = self.quantise(sentences, mask)
        return self.attention(sentences, mask)
