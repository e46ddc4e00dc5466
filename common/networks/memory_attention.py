"""Cross-attention whose keys and values are extended by learnable memory slots (MPMA's MA-CMF).

The memory follows the persistent memory vectors of the Meshed-Memory Transformer (Cornia et al., CVPR 2020,
https://arxiv.org/abs/1912.08226) and R2GenCMN: after the key and value projections of the context, ``M`` learned
key slots and ``M`` learned value slots are appended, so every query attends over ``[K_ctx; K_mem]`` with values
``[V_ctx; V_mem]``. With ``num_memory_slots=0`` the module is plain multi-head cross-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MemoryAugmentedCrossAttention"]


class MemoryAugmentedCrossAttention(nn.Module):
    """Multi-head cross-attention ``Attn(Q(x), [K(c); K_m], [V(c); V_m])`` with ``M`` learnable memory slots.

    Args:
        dim: width of queries, context and output.
        num_heads: attention heads (``dim`` divisible by it).
        num_memory_slots: ``M``; 0 gives plain cross-attention.
        dropout: attention dropout (training only).
    """

    def __init__(self, dim: int, num_heads: int, num_memory_slots: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_memory_slots < 0:
            raise ValueError(f"num_memory_slots must be >= 0, got {num_memory_slots}")
        self.num_heads = num_heads
        self.num_memory_slots = int(num_memory_slots)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        if self.num_memory_slots:
            # Meshed-Memory initialises the slots N(0, 1/d_k) and N(0, 1/M)
            self.memory_keys = nn.Parameter(torch.randn(1, self.num_memory_slots, dim) * (dim // num_heads) ** -0.5)
            self.memory_values = nn.Parameter(torch.randn(1, self.num_memory_slots, dim) * self.num_memory_slots**-0.5)
        else:
            self.memory_keys = self.memory_values = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values ``(B, N + M, D)``: the context's, then the memory slots'."""
        keys, values = self.key(context), self.value(context)
        if self.memory_keys is not None:
            b = context.shape[0]
            keys = torch.cat([keys, self.memory_keys.to(keys.dtype).expand(b, -1, -1)], dim=1)
            values = torch.cat([values, self.memory_values.to(values.dtype).expand(b, -1, -1)], dim=1)
        return keys, values

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries ``x`` ``(B, L, D)`` attend over ``context`` ``(B, N, D)`` and the memory.

        Args:
            x: queries.
            context: keys/values source.
            context_mask: ``(B, N)`` bool, ``True`` where a context token may be attended (memory always may).

        Returns:
            ``(B, L, D)``.
        """
        if x.ndim != 3 or context.ndim != 3 or x.shape[-1] != context.shape[-1] or x.shape[0] != context.shape[0]:
            raise ValueError(
                f"expected x (B, L, D) and context (B, N, D), got {tuple(x.shape)}, {tuple(context.shape)}"
            )
        keys, values = self.keys_values(context)
        attn_mask = None
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must be {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}")
            allowed = context_mask.to(torch.bool)
            if self.num_memory_slots:
                allowed = F.pad(allowed, (0, self.num_memory_slots), value=True)
            attn_mask = allowed[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(self.query(x)),
            self._heads(keys),
            self._heads(values),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(out.transpose(1, 2).reshape(x.shape))
