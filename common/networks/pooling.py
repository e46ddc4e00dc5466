"""Pooling of a token sequence into one vector: attention pooling as in the COLIPRI release (``colipri`` 0.1.3),
the first token, the masked mean.

The query is the (masked) mean of the tokens; keys and values are all tokens; padding positions are excluded
from both the mean and the attention. The same module turns into a per-token ("dense") map by keeping only its
value and output projections (MaskCLIP, Zhou et al., https://arxiv.org/abs/2112.01071), which is how COLIPRI
produces patch-level embeddings in the joint space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionPool1D", "FirstTokenPool", "MaskedMeanPool"]


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
        if valid is None:
            query = x.mean(dim=1, keepdim=True)
            key_padding_mask = None
        else:
            weights = valid.unsqueeze(-1).to(x.dtype)
            query = ((x * weights).sum(dim=1) / weights.sum(dim=1)).unsqueeze(1)
            key_padding_mask = ~valid
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


class FirstTokenPool(nn.Module):
    """The first token of each sequence (BERT's ``[CLS]``): ``(B, N, D) -> (B, D)``; the mask is not needed."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, 0]


class MaskedMeanPool(nn.Module):
    """Mean over the valid tokens: ``(B, N, D) -> (B, D)``; ``attention_mask`` ``(B, N)`` is nonzero at valid ones."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return x.mean(dim=1)
        weights = attention_mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
