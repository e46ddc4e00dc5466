"""Local image-sentence cross-attention of PRIOR (Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.12577, §3.2).

Two sets of query/key/value linear maps, one applied to the local image tokens ``V`` ``(..., I, D)`` and one to the
sentence embeddings ``S`` ``(..., T, D)``. Attention weights are element-wise *sigmoids* of the scaled scores
(``1/sqrt(D)``, a single head), not a softmax, so a token may attend strongly to several partners or to none:

* patches attend to sentences: ``V~ = sigmoid(Q_v(V) K_t(S)^T / sqrt(D)) V_t(S)``  -> ``image_context`` ``(..., I, D)``
* sentences attend to patches: ``S~ = sigmoid(Q_t(S) K_v(V)^T / sqrt(D)) V_v(V)``  -> ``text_context`` ``(..., T, D)``

Release: ``codes/prior/modules/local_attention.py`` (QtacierP/PRIOR 086bf2e), ``LocalCrossAttention``. It works on one
sample at a time (2-D inputs, a Python loop over the batch in ``models/prior.py``) and takes optional *additive* masks
that PRIOR never passes. This module batches over any leading dimensions and takes boolean key masks instead
(``True`` = real token); a masked key gets score ``-inf``, i.e. weight exactly 0, which equals the release with an
additive ``-inf`` mask. Rows of padded *queries* are still computed and must be ignored by the caller. Dropout acts
on the attention weights, as in the release (PRIOR: rate 0). Parameter names differ from the release; load its
state dict through :data:`RELEASE_KEY_MAP` (``query1`` -> ``image_query``, ..., ``value2`` -> ``text_value``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["RELEASE_KEY_MAP", "LocalCrossAttention", "LocalCrossAttentionOutput", "map_release_state_dict"]

RELEASE_KEY_MAP: dict[str, str] = {
    f"{old}{index}": f"{side}_{new}"
    for index, side in ((1, "image"), (2, "text"))
    for old, new in (("query", "query"), ("key", "key"), ("value", "value"))
}


def map_release_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the release's ``{query,key,value}{1,2}.{weight,bias}`` keys to this module's names."""
    mapped = {}
    for key, value in state.items():
        layer, _, rest = key.partition(".")
        if layer not in RELEASE_KEY_MAP:
            raise KeyError(f"unexpected key {key!r} in a PRIOR LocalCrossAttention state dict")
        mapped[f"{RELEASE_KEY_MAP[layer]}.{rest}"] = value
    return mapped


class LocalCrossAttentionOutput(NamedTuple):
    """In the release's return order: patches attending to sentences (``image_context`` ``(..., I, D)``, weights
    ``image_attention`` ``(..., I, T)``), then sentences attending to patches (``text_context`` ``(..., T, D)``,
    ``text_attention`` ``(..., T, I)``)."""

    image_context: torch.Tensor
    image_attention: torch.Tensor
    text_context: torch.Tensor
    text_attention: torch.Tensor


def _sigmoid_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None, dropout: nn.Dropout
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool().unsqueeze(-2), float("-inf"))
    weights = dropout(torch.sigmoid(scores))
    return weights @ value, weights


class LocalCrossAttention(nn.Module):
    """Bidirectional single-head sigmoid cross-attention between image tokens and sentence embeddings.

    Args:
        embed_dim: token width ``D`` shared by both sides (PRIOR: 768).
        dropout: dropout rate on the attention weights (PRIOR: 0).
    """

    def __init__(self, embed_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        for side in ("image", "text"):
            for role in ("query", "key", "value"):
                setattr(self, f"{side}_{role}", nn.Linear(embed_dim, embed_dim))
        self.image_dropout = nn.Dropout(dropout)
        self.text_dropout = nn.Dropout(dropout)

    def forward(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> LocalCrossAttentionOutput:
        """``image_tokens`` ``(..., I, D)``, ``text_tokens`` ``(..., T, D)``; optional boolean masks ``(..., I)`` /
        ``(..., T)`` (``True`` = real) exclude padded keys."""
        for name, tokens in (("image_tokens", image_tokens), ("text_tokens", text_tokens)):
            if tokens.ndim < 2 or tokens.shape[-1] != self.embed_dim:
                raise ValueError(f"{name} must be (..., N, {self.embed_dim}), got shape {tuple(tokens.shape)}")
        image_context, image_attention = _sigmoid_attention(
            self.image_query(image_tokens),
            self.text_key(text_tokens),
            self.text_value(text_tokens),
            text_mask,
            self.image_dropout,
        )
        text_context, text_attention = _sigmoid_attention(
            self.text_query(text_tokens),
            self.image_key(image_tokens),
            self.image_value(image_tokens),
            image_mask,
            self.text_dropout,
        )
        return LocalCrossAttentionOutput(image_context, image_attention, text_context, text_attention)
