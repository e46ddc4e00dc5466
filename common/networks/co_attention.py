"""Co-attention multimodal fusion (M3AE's ``num_top_layer`` stack), with MPMA's memory on the text side.

M3AE (Chen et al., MICCAI 2022, https://arxiv.org/abs/2209.07098; code ``m3ae/modules/m3ae_module.py``) maps the
image and text encoder outputs to one width, adds a modality-type embedding and runs ``depth`` pairs of
``BertCrossLayer`` (self-attention, cross-attention to the other modality's previous output, feed-forward). MPMA's
MA-CMF (memory-augmented cross-modal fusion) lets the text stream, which reconstructs the report, attend over image
tokens *and* learnable memory slots (:class:`~common.networks.memory_attention.MemoryAugmentedCrossAttention`).

Deviation (our choice, ``docs/README.md`` of the MPMA bundles): pre-norm residual blocks (M3AE's BERT layers are
post-norm) so that the stack trains from scratch at CPU demo sizes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from common.networks.bert_init import bert_init_weights
from common.networks.memory_attention import MemoryAugmentedCrossAttention

__all__ = ["CoAttentionFusion", "CoAttentionLayer", "FusedTokens"]


class CoAttentionLayer(nn.Module):
    """One stream of one fusion layer: self-attention, cross-attention to the other modality, feed-forward.

    Args:
        dim: stream width.
        num_heads: attention heads.
        mlp_ratio: feed-forward hidden width over ``dim``.
        num_memory_slots: memory slots of the cross-attention (0: plain cross-attention).
        dropout: dropout in attention and feed-forward.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, num_memory_slots: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = MemoryAugmentedCrossAttention(dim, num_heads, num_memory_slots, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor | None,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` ``(B, L, D)`` (``x_mask`` True = real token) attending to ``context`` ``(B, N, D)``."""
        h = self.self_norm(x)
        padding = None if x_mask is None else ~x_mask.to(torch.bool)
        x = x + self.self_attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        x = x + self.cross_attn(self.cross_norm(x), context, context_mask)
        return x + self.mlp(self.mlp_norm(x))


class FusedTokens(NamedTuple):
    """Outputs of :class:`CoAttentionFusion`: fused image tokens ``(B, N, D)`` and text tokens ``(B, L, D)``."""

    image: torch.Tensor
    text: torch.Tensor


class CoAttentionFusion(nn.Module):
    """``depth`` co-attention layers over image and text tokens (both streams updated from the previous layer).

    Args:
        image_dim: width of the image encoder's tokens.
        text_dim: width of the text encoder's tokens.
        hidden_dim: fusion width (M3AE: 768).
        depth: layers (M3AE: 6).
        num_heads: heads per attention (M3AE: 12).
        mlp_ratio: feed-forward ratio (M3AE: 4).
        num_memory_slots: MA-CMF memory slots of the text stream's cross-attention (0 switches the memory off).
        dropout: dropout inside the layers.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_dim: int = 768,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_memory_slots: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.hidden_dim = int(hidden_dim)
        self.num_memory_slots = int(num_memory_slots)
        self.image_in = nn.Linear(image_dim, hidden_dim)
        self.text_in = nn.Linear(text_dim, hidden_dim)
        self.modality_type = nn.Embedding(2, hidden_dim)  # 0: text, 1: image (M3AE's token_type_embeddings)
        self.text_layers = nn.ModuleList(
            CoAttentionLayer(hidden_dim, num_heads, mlp_ratio, num_memory_slots, dropout) for _ in range(depth)
        )
        self.image_layers = nn.ModuleList(
            CoAttentionLayer(hidden_dim, num_heads, mlp_ratio, 0, dropout) for _ in range(depth)
        )
        self.image_norm = nn.LayerNorm(hidden_dim)
        self.text_norm = nn.LayerNorm(hidden_dim)
        # M3AE's ``init_weights``: every linear, attention projection and embedding N(0, 0.02), biases 0, LayerNorm 1/0
        # (PyTorch's defaults draw the demo width's layers ~2.5x wider, and nn.Embedding's N(0, 1) modality type
        # outweighed the projected MiniLM tokens ~7:1, making every fused text token alike); the MA-CMF memory slots
        # keep Meshed-Memory's initialisation (no M3AE counterpart)
        self.apply(bert_init_weights)

    def forward(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> FusedTokens:
        """Fuse ``image_tokens`` ``(B, N, image_dim)`` and ``text_tokens`` ``(B, L, text_dim)``.

        ``text_mask`` / ``image_mask``: ``(B, L)`` / ``(B, N)`` bool, True where a token is real (not padding).
        """
        if image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"batch sizes differ: {image_tokens.shape[0]} images, {text_tokens.shape[0]} texts")
        image = self.image_in(image_tokens) + self.modality_type.weight[1].to(image_tokens.dtype)
        text = self.text_in(text_tokens) + self.modality_type.weight[0].to(text_tokens.dtype)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            text, image = (
                text_layer(text, text_mask, image, image_mask),
                image_layer(image, image_mask, text, text_mask),
            )
        return FusedTokens(image=self.image_norm(image), text=self.text_norm(text))
