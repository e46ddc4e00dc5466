"""Pooling of a token sequence into one vector: attention pooling as in the COLIPRI release (``colipri`` 0.1.3),
CLIP's attention pooling with a learned positional embedding over a 1D/2D/3D token grid (G2D), the first token, and the
masked token mean.

The query is the (masked) mean of the tokens; keys and values are all tokens; padding positions are excluded
from both the mean and the attention. The same module turns into a per-token ("dense") map by keeping only its
value and output projections (MaskCLIP, Zhou et al., https://arxiv.org/abs/2112.01071), which is how COLIPRI
produces patch-level embeddings in the joint space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionPool1D", "FirstTokenPool", "MeanTokenPool", "PositionalAttentionPool", "masked_mean", "token_pool"]


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``(B, N, D)`` tokens over the ``(B, N)`` bool mask ``valid`` (all tokens when None): ``(B, D)``."""
    if valid is None:
        return x.mean(dim=1)
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


class AttentionPool1D(nn.Module):
    """Pool ``(B, N, D)`` tokens to ``(B, D)`` with one multi-head attention whose query is the masked token mean.

    Parameter names (``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.*``) match the official
    checkpoint.

    Args:
        embed_dim: token width.
        num_heads: attention heads.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)

    @staticmethod
    def _valid_mask(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        if attention_mask.shape != x.shape[:2]:
            raise ValueError(f"attention_mask must have shape {tuple(x.shape[:2])}, got {tuple(attention_mask.shape)}")
        valid = attention_mask.to(device=x.device, dtype=torch.bool)
        if not torch.jit.is_tracing() and not bool(valid.any(dim=1).all()):
            raise ValueError("every sequence needs at least one valid (unmasked) token")
        return valid

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` ``(B, N, D)``; ``attention_mask`` ``(B, N)`` is nonzero at valid tokens.

        With ``return_attention`` also the query's attention over the tokens, per head: ``(B, heads, N)`` (rows sum
        to 1, zero at padding): what G2D turns into pseudo-masks and PRIOR weights local features with.

        Raises:
            ValueError: if the mask has the wrong shape or a sequence has no valid token.
        """
        valid = self._valid_mask(x, attention_mask)
        query = masked_mean(x, valid).unsqueeze(1)
        key_padding_mask = None if valid is None else ~valid
        pooled, attention = self.attn(
            query, x, x, key_padding_mask=key_padding_mask, need_weights=return_attention, average_attn_weights=False
        )
        if return_attention:
            return pooled.squeeze(1), attention.squeeze(2)
        return pooled.squeeze(1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token joint-space embeddings ``(B, N, D)``: value projection then output projection (no softmax).

        Equivalent to the official ``AttentionPool1D.to_dense()`` 1x1 convolutions applied to a feature map.
        """
        d = self.embed_dim
        values = F.linear(x, self.attn.in_proj_weight[2 * d :], self.attn.in_proj_bias[2 * d :])
        return self.attn.out_proj(values)


class PositionalAttentionPool(nn.Module):
    """CLIP's attention pooling (``AttentionPool2d``) generalised to 1D/2D/3D token grids: ``(B, N, D) -> (B, D')``.

    The mean token is prepended to the grid tokens, a learned positional embedding ``(N + 1, D)`` is added, and one
    multi-head attention with the mean token as the only query attends over all ``N + 1`` tokens; ``c_proj`` maps the
    result to ``output_dim`` (Radford et al. 2021, https://arxiv.org/abs/2103.00020; G2D pools its projected
    ResNet-50 map this way, https://arxiv.org/abs/2312.01522). Parameter names (``positional_embedding``,
    ``{q,k,v,c}_proj``) and initialisation (embedding ``randn / sqrt(D)``, projection weights normal with std
    ``D ** -0.5``) are CLIP's.

    **Heads.** Default 4 (G2D's release); the paper's best, 3, does not divide G2D's width 128 and is refused.

    **Grid.** Tokens are the row-major flattening of a ``grid_size`` map (as ``(B, D, *grid).flatten(2)`` gives).
    ``forward(x)`` needs ``N == prod(grid_size)``; for another grid pass ``grid_size=`` and the grid part of the
    embedding is (bi/tri)linearly interpolated (the mean token's entry is kept). Flattened tokens do not tell the
    grid, so it is never guessed.

    **No positional embedding.** ``grid_size=None`` builds the pooling without ``positional_embedding`` (no such
    parameter) and accepts any ``N``: PRIOR's ``SentenceAttentionPool(..., pos_embed=False)`` over a report's
    sentences (``prior/modules/sentence_pool.py``; Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.14975), with
    padded sentences excluded through ``attention_mask``.

    Args:
        embed_dim: token width ``D``.
        grid_size: token grid the embedding is learned on, e.g. ``(8, 8)`` (256 px at stride 32) or ``(5, 5, 5)``;
            ``None``: no positional embedding, any number of tokens.
        num_heads: attention heads (must divide ``embed_dim``).
        output_dim: output width (default ``embed_dim``).
    """

    def __init__(
        self, embed_dim: int, grid_size: Sequence[int] | None, num_heads: int = 4, output_dim: int | None = None
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.grid_size = None if grid_size is None else tuple(int(g) for g in grid_size)
        if self.grid_size is not None and (not 1 <= len(self.grid_size) <= 3 or min(self.grid_size) < 1):
            raise ValueError(f"grid_size must have 1 to 3 positive sides, got {tuple(grid_size)}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.output_dim = int(output_dim) if output_dim is not None else self.embed_dim
        if self.grid_size is None:
            self.num_tokens = None
            self.register_parameter("positional_embedding", None)
        else:
            self.num_tokens = math.prod(self.grid_size)
            self.positional_embedding = nn.Parameter(torch.empty(self.num_tokens + 1, embed_dim))
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, self.output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialisation (biases keep ``nn.Linear``'s)."""
        std = self.embed_dim**-0.5
        if self.positional_embedding is not None:
            with torch.no_grad():
                self.positional_embedding.copy_(torch.randn_like(self.positional_embedding) * std)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(proj.weight, std=std)

    def position_embedding(self, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """The ``(1 + prod(grid), D)`` embedding for ``grid_size`` (interpolated when it is not the learned grid)."""
        if self.grid_size is None:
            raise ValueError("this pooling has no positional embedding (grid_size=None)")
        grid = self.grid_size if grid_size is None else tuple(int(g) for g in grid_size)
        if grid == self.grid_size:
            return self.positional_embedding
        if len(grid) != len(self.grid_size):
            raise ValueError(f"grid_size {grid} has not the {len(self.grid_size)} dimensions of {self.grid_size}")
        first, rest = self.positional_embedding[:1], self.positional_embedding[1:]
        rest = rest.transpose(0, 1).reshape(1, self.embed_dim, *self.grid_size)
        mode = ("linear", "bilinear", "trilinear")[len(grid) - 1]
        rest = F.interpolate(rest, size=grid, mode=mode, align_corners=False)
        return torch.cat([first, rest.reshape(self.embed_dim, -1).transpose(0, 1)], dim=0)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        grid_size: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pool grid tokens ``x`` ``(B, N, D)``; ``attention_mask`` ``(B, N)`` (optional) is nonzero at valid tokens.

        With ``return_attention`` also the query's attention over the ``N`` grid tokens, per head,
        ``(B, heads, N)``: the softmax runs over ``N + 1`` tokens and the mean token's column is dropped (as G2D's
        pseudo-masks do), so rows sum to less than 1. They are not renormalised (a per-image percentile threshold,
        G2D's, is unchanged by it).

        Raises:
            ValueError: ``N`` does not fit the grid, or a bad mask (see :class:`AttentionPool1D`).
        """
        b, n, d = x.shape
        if self.grid_size is None:
            if grid_size is not None:
                raise ValueError("grid_size= needs a positional embedding; this pooling has none (grid_size=None)")
            position = None
        else:
            grid = self.grid_size if grid_size is None else tuple(int(g) for g in grid_size)
            if not torch.jit.is_tracing() and n != math.prod(grid):
                raise ValueError(f"{n} tokens do not fill the grid {grid}; pass grid_size= for another grid")
            position = self.position_embedding(grid)
        valid = AttentionPool1D._valid_mask(x, attention_mask)
        tokens = torch.cat([masked_mean(x, valid).unsqueeze(1), x], dim=1)
        if position is not None:
            tokens = tokens + position.to(x.dtype)
        h, hd = self.num_heads, d // self.num_heads
        q = self.q_proj(tokens[:, :1]).reshape(b, 1, h, hd).transpose(1, 2)
        k = self.k_proj(tokens).reshape(b, n + 1, h, hd).transpose(1, 2)
        v = self.v_proj(tokens).reshape(b, n + 1, h, hd).transpose(1, 2)
        scores = (q * hd**-0.5) @ k.transpose(-2, -1)  # (B, heads, 1, N + 1)
        if valid is not None:
            keep = torch.cat([valid.new_ones(b, 1), valid], dim=1)
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        attention = scores.softmax(dim=-1)
        pooled = self.c_proj((attention @ v).reshape(b, d))
        if return_attention:
            return pooled, attention[:, :, 0, 1:]
        return pooled

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token joint-space embeddings ``(B, N, output_dim)``: ``c_proj(v_proj(x))``, no softmax (MaskCLIP).

        No positional embedding is added (as MaskCLIP does for CLIP's ResNet pooling): a learned per-location
        offset would shift every text similarity at that location, whatever the image; and the map works at any
        grid size.
        """
        return self.c_proj(self.v_proj(x))


class FirstTokenPool(nn.Module):
    """The first token of each sequence (BERT's ``[CLS]``): ``(B, N, D) -> (B, D)``; the mask is not needed."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, 0]


class MeanTokenPool(nn.Module):
    """The mean of the non-padding tokens: ``(B, N, D), (B, N) mask -> (B, D)``.

    The sentence embedding of sentence-transformers models such as all-MiniLM-L6-v2, whose ``[CLS]`` state is nearly
    the same for every input (trained through mean pooling only).
    """

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(x, AttentionPool1D._valid_mask(x, attention_mask))


def token_pool(kind: str) -> nn.Module:
    """A parameter-free text pooler by name: ``"cls"`` (:class:`FirstTokenPool`) or ``"mean"`` (:class:`MeanTokenPool`)."""
    poolers = {"cls": FirstTokenPool, "mean": MeanTokenPool}
    if kind not in poolers:
        raise ValueError(f"text pooling must be one of {sorted(poolers)}, got {kind!r}")
    return poolers[kind]()
