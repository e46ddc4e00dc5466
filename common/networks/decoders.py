"""Decoders used only during pre-training: the MAE pixel decoder and the report (caption) decoder.

* :class:`MAEDecoder` - a light EVA decoder in the spirit of nnssl's ``EvaMAE`` used for Primus-M (MAE recipe of
  COLIPRI's framework): encoder tokens -> linear to the decoder width -> mask tokens inserted at the dropped
  positions -> 2 EVA blocks with RoPE at the true grid positions -> LayerNorm -> linear to the pixels of each patch
  (He et al., https://arxiv.org/abs/2111.06377). Deviation: nnssl keeps the encoder width and reconstructs with a
  convolutional ``PatchDecode``; we use MAE's linear pixel head (cheaper, same target) and an optional narrower
  width. Pair with :func:`common.networks.eva.patchify` for the target.
* :class:`ReportDecoder` - a causal text decoder that cross-attends to the projected image tokens, built from
  ``transformers.BertLMHeadModel`` (``is_decoder=True``, ``add_cross_attention=True``). COLIPRI's report decoder is
  not public; 6 layers at width 768 is our choice. Image tokens are average-pooled to at most
  ``max_image_tokens`` (default 256, e.g. 24^3 -> 6^3) before cross-attention to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.networks.eva import EvaEncoder, RopeMode

__all__ = ["MAEDecoder", "ReportDecoder", "pooled_grid"]


class MAEDecoder(nn.Module):
    """Reconstruct every patch from the visible encoder tokens.

    Args:
        embed_dim: encoder token width.
        decoder_dim: decoder width (``None``: the encoder width, as nnssl).
        depth: EVA blocks (nnssl: 2).
        num_heads: decoder heads (nnssl: 12).
        patch_size: encoder patch size.
        spatial_dims: 2 or 3.
        in_channels: image channels to reconstruct.
        img_size: reference input size (RoPE reference grid for ``rope_mode="scaled"``).
        mlp_ratio: SwiGLU ratio.
        init_values: LayerScale init.
        drop_path_rate: stochastic depth of the last block.
        rope_mode: see :mod:`common.networks.eva`.
    """

    def __init__(
        self,
        embed_dim: int = 864,
        decoder_dim: int | None = None,
        depth: int = 2,
        num_heads: int = 12,
        patch_size: int | Sequence[int] = 8,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 192,
        mlp_ratio: float = 8 / 3,
        init_values: float | None = 0.1,
        drop_path_rate: float = 0.0,
        rope_mode: RopeMode = "absolute",
    ) -> None:
        super().__init__()
        decoder_dim = embed_dim if decoder_dim is None else decoder_dim
        if decoder_dim % num_heads != 0:
            raise ValueError(f"decoder_dim ({decoder_dim}) must be divisible by num_heads ({num_heads})")
        patch = (patch_size,) * spatial_dims if isinstance(patch_size, int) else tuple(patch_size)
        size = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
        if len(patch) != spatial_dims or len(size) != spatial_dims:
            raise ValueError(f"patch_size {patch} and img_size {size} must have {spatial_dims} entries")
        self.patch_size = patch
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = EvaEncoder(
            spatial_dims,
            decoder_dim,
            depth,
            num_heads,
            [s // p for s, p in zip(size, patch)],
            mlp_ratio=mlp_ratio,
            init_values=init_values,
            drop_path_rate=drop_path_rate,
            rope_mode=rope_mode,
        )
        self.pred = nn.Linear(decoder_dim, math.prod(patch) * in_channels)
        for layer in (self.decoder_embed, self.pred):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the decoder blocks during backward."""
        self.decoder.grad_checkpointing = bool(enable)

    def forward(self, tokens: torch.Tensor, keep_indices: torch.Tensor | None, grid: Sequence[int]) -> torch.Tensor:
        """Predict the pixels of all patches.

        Args:
            tokens: encoder tokens ``(B, N_keep, C)`` (``(B, N, C)`` when nothing was dropped).
            keep_indices: ``(B, N_keep)`` grid positions of ``tokens``; ``None`` if ``tokens`` covers the grid.
            grid: the full token grid.

        Returns:
            ``(B, N, prod(patch_size) * in_channels)`` in :func:`~common.networks.eva.patchify` layout.
        """
        grid = tuple(int(g) for g in grid)
        n = math.prod(grid)
        x = self.decoder_embed(tokens)
        b, _, d = x.shape
        if keep_indices is None:
            if x.shape[1] != n:
                raise ValueError(f"without keep_indices tokens must cover the grid {grid} ({n}), got {x.shape[1]}")
        else:
            if keep_indices.shape != tokens.shape[:2]:
                raise ValueError(
                    f"keep_indices {tuple(keep_indices.shape)} must match tokens {tuple(tokens.shape[:2])}"
                )
            full = self.mask_token.to(x.dtype).expand(b, n, d)
            x = full.scatter(1, keep_indices.unsqueeze(-1).expand(-1, -1, d), x)
        return self.pred(self.decoder(x, self.decoder.rope.get_embed(grid, x.device)))


def pooled_grid(grid: Sequence[int], max_tokens: int) -> tuple[int, ...]:
    """Largest grid obtained by shrinking every axis by one common factor with at most ``max_tokens`` cells."""
    grid = tuple(int(g) for g in grid)
    if math.prod(grid) <= max_tokens:
        return grid
    factor = (math.prod(grid) / max_tokens) ** (1.0 / len(grid))
    while True:
        out = tuple(max(1, int(g / factor)) for g in grid)
        if math.prod(out) <= max_tokens:
            return out
        factor *= 1.01


class ReportDecoder(nn.Module):
    """Causal BERT decoder with cross-attention to image tokens, for report generation (teacher forcing).

    Args:
        vocab_size: vocabulary of the text tokenizer.
        image_dim: width of the image tokens (COLIPRI's projection width 768).
        hidden_size: decoder width.
        num_layers: decoder layers.
        num_heads: attention heads.
        intermediate_size: MLP width (``None``: ``4 * hidden_size``).
        max_length: longest token sequence.
        pad_token_id: padding id.
        bos_token_id: first token fed when generating (``[CLS]`` for BERT tokenizers).
        eos_token_id: token that ends generation (``[SEP]``).
        max_image_tokens: image tokens are average-pooled down to at most this many (``None``: no pooling).
        dropout_rate: hidden and attention dropout.
    """

    def __init__(
        self,
        vocab_size: int,
        image_dim: int = 768,
        hidden_size: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int | None = None,
        max_length: int = 512,
        pad_token_id: int = 0,
        bos_token_id: int = 101,
        eos_token_id: int = 102,
        max_image_tokens: int | None = 256,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        from transformers import BertConfig, BertLMHeadModel

        if max_image_tokens is not None and max_image_tokens < 1:
            raise ValueError(f"max_image_tokens must be positive or None, got {max_image_tokens}")
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size or 4 * hidden_size,
            max_position_embeddings=max_length,
            hidden_dropout_prob=dropout_rate,
            attention_probs_dropout_prob=dropout_rate,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_decoder=True,
            add_cross_attention=True,
        )
        self.lm = BertLMHeadModel(config)
        self.image_proj = nn.Linear(image_dim, hidden_size) if image_dim != hidden_size else nn.Identity()
        self.max_image_tokens = max_image_tokens
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> ReportDecoder:
        """Take vocabulary size and special ids from a Hugging Face tokenizer; ``kwargs`` go to the constructor."""
        bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(len(tokenizer), pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, **kwargs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the transformer layers."""
        if enable:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_disable()

    def image_memory(self, image_tokens: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """Cross-attention memory ``(B, M, hidden)`` from ``(B, D, *grid)`` maps or ``(B, N, D)`` tokens.

        Maps (or tokens with their ``grid``) are pooled spatially with adaptive average pooling to
        :func:`pooled_grid`; plain token sequences without a grid are pooled along the sequence.
        """
        if image_tokens.ndim == 3 and grid is not None:
            b, n, d = image_tokens.shape
            image_tokens = image_tokens.transpose(1, 2).reshape(b, d, *grid)
        if image_tokens.ndim > 3:
            spatial = tuple(image_tokens.shape[2:])
            if self.max_image_tokens is not None and math.prod(spatial) > self.max_image_tokens:
                target = pooled_grid(spatial, self.max_image_tokens)
                pool = F.adaptive_avg_pool3d if len(spatial) == 3 else F.adaptive_avg_pool2d
                image_tokens = pool(image_tokens, target)
            image_tokens = image_tokens.flatten(2).transpose(1, 2)
        elif self.max_image_tokens is not None and image_tokens.shape[1] > self.max_image_tokens:
            image_tokens = F.adaptive_avg_pool1d(image_tokens.transpose(1, 2), self.max_image_tokens).transpose(1, 2)
        return self.image_proj(image_tokens)

    def forward(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        grid: Sequence[int] | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(B, L, vocab)``; position ``t`` predicts token ``t + 1`` (shift in the loss).

        Args:
            image_tokens: ``(B, D, *grid)`` projected patch map, or ``(B, N, D)`` tokens (give ``grid`` to pool
                them spatially).
            input_ids: ``(B, L)`` report tokens starting with ``bos_token_id``.
            attention_mask: ``(B, L)``, 0 at padding.
            grid: token grid of ``(B, N, D)`` inputs.
            positions: optional ``(B, L)`` bool; the vocabulary head then runs at these positions only and the
                result is ``(P, vocab)`` in row-major order (the head dominates the cost for large vocabularies).
        """
        memory = self.image_memory(image_tokens, grid)
        if positions is None:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory, use_cache=False)
            return out.logits
        if positions.shape != input_ids.shape:
            raise ValueError(f"positions {tuple(positions.shape)} must match input_ids {tuple(input_ids.shape)}")
        hidden = self.lm.bert(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory, use_cache=False
        ).last_hidden_state
        return self.lm.cls(hidden[positions.to(device=hidden.device, dtype=torch.bool)])

    @torch.no_grad()
    def generate(
        self, image_tokens: torch.Tensor, max_new_tokens: int = 128, grid: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Greedy decoding ``(B, <= 1 + max_new_tokens)`` starting from ``bos_token_id``; stops at ``eos_token_id``.

        Finished rows are padded with ``pad_token_id``. Meant for qualitative checks, not for evaluation.
        """
        memory = self.image_memory(image_tokens, grid)
        b = memory.shape[0]
        ids = torch.full((b, 1), self.bos_token_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        past = None
        for _ in range(max_new_tokens):
            step_ids = ids if past is None else ids[:, -1:]
            out = self.lm(input_ids=step_ids, encoder_hidden_states=memory, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_token_id), nxt)
            ids = torch.cat((ids, nxt[:, None]), dim=1)
            done = done | (nxt == self.eos_token_id)
            if bool(done.all()):
                break
        return ids
