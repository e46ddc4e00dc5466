"""EVA-02-style Vision Transformer for 2D and 3D images (Primus-M and friends).

One backbone serves COLIPRI (3D CT and 2D chest X-ray), RAD-DINO 3D and the MAE decoder. The block is the
EVA-02 block (Fang et al., https://arxiv.org/abs/2303.11331) as configured by Primus
(Wald et al., https://arxiv.org/abs/2503.01835) in ``dynamic_network_architectures`` (DNA) 0.4.x with timm's
``EvaBlock`` (timm<1.0.23):

* pre-norm attention with separate q/k/v projections (q and v biased, k unbiased), an optional LayerNorm on the
  attention output before the output projection (``scale_attn_inner``) and 2D/3D rotary position embeddings;
* SwiGLU MLP with an inner LayerNorm (``scale_mlp``), hidden width ``int(embed_dim * mlp_ratio)``;
* LayerScale (``gamma_1``/``gamma_2``) and stochastic depth growing linearly over depth;
* ``torch.nn.LayerNorm`` (eps 1e-5) everywhere, as DNA passes it instead of timm's eps-1e-6 default.

Parameter names follow DNA's ``Primus``, so a Primus state dict (minus its ``up_projection.*`` decoder) loads
into :class:`EvaViT` with no missing or unexpected keys; the RoPE table is not part of the state dict.

**Rotary embedding and input size.** The table uses timm's ``RotaryEmbeddingCat`` semantics with
``in_pixels=False``: per spatial axis ``head_dim / (2 * spatial_dims)`` frequency bands
``temperature ** (-k / num_bands)`` (3D Primus-M: head 72 -> rope dim 48 -> 12 bands per axis), interleaved
sin/cos pairs, 'ij' grid order. DNA builds it once for the grid ``img_size // patch_size`` and fails on any other
input size. Here it is computed (on CPU in float32, then cached per grid shape and device) for the grid of the
actual input, so 64^3 demos and 2D inputs work. ``rope_mode`` chooses what a different grid means:

* ``"absolute"`` (default): token ``i`` along an axis sits at position ``i`` (one patch = one unit), exactly what the
  official model computes when re-instantiated with another ``input_size`` (bitwise equal). Positions beyond the
  reference grid are extrapolated; for CT at a fixed 2 mm spacing this keeps one RoPE unit = 16 mm.
* ``"scaled"``: positions are rescaled onto the reference grid (``i * ref / size``, timm's EVA fine-tuning rule),
  i.e. interpolation; a smaller input then covers the same position range with coarser steps.

At the reference grid both modes give the DNA/timm table bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PRIMUS_CONFIGS",
    "EvaAttention",
    "EvaBlock",
    "EvaEncoder",
    "EvaViT",
    "PatchEmbedding",
    "RotaryPositionEmbedding",
    "SwiGLU",
    "apply_rope",
    "eva_tiny",
    "patchify",
    "primus",
    "primus_m",
    "random_keep_indices",
    "unpatchify",
]

RopeMode = Literal["absolute", "scaled"]

# Widths, depths and heads of the Primus family (DNA ``_PRIMUS_CONFIGS``); COLIPRI uses "M".
PRIMUS_CONFIGS: dict[str, dict[str, int]] = {
    "S": {"embed_dim": 396, "depth": 12, "num_heads": 6},
    "B": {"embed_dim": 792, "depth": 12, "num_heads": 12},
    "M": {"embed_dim": 864, "depth": 16, "num_heads": 12},
    "L": {"embed_dim": 1056, "depth": 24, "num_heads": 16},
}


def _as_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name} must have {spatial_dims} entries, got {value}")
    return value


class SwiGLU(nn.Module):
    """SwiGLU MLP with separate gate/value projections and an optional LayerNorm before the output projection.

    Args:
        dim: token width.
        hidden_dim: inner width.
        inner_norm: LayerNorm on the gated hidden state (EVA-02 ``scale_mlp``).
        dropout_rate: dropout after the gating and after the output projection.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self, dim: int, hidden_dim: int, inner_norm: bool = True, dropout_rate: float = 0.0, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden_dim)
        self.fc1_x = nn.Linear(dim, hidden_dim)
        self.drop1 = nn.Dropout(dropout_rate)
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps) if inner_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.fc1_g(x)) * self.fc1_x(x)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]`` (interleaved RoPE layout)."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, N, Dh)`` by the table ``rope`` ``(N, 2*Dh)`` or ``(B, N, 2*Dh)`` (sin then cos)."""
    sin, cos = rope.chunk(2, dim=-1)
    if rope.ndim == 3:
        sin, cos = sin.unsqueeze(1), cos.unsqueeze(1)
    return x * cos + _rotate_pairs(x) * sin


class EvaAttention(nn.Module):
    """Multi-head self-attention with RoPE, q/v bias without k bias, and an optional inner LayerNorm.

    Uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).

    Args:
        dim: token width.
        num_heads: number of heads.
        qkv_bias: bias on the query and value projections (the key projection never has one).
        inner_norm: LayerNorm on the attention output before ``proj`` (EVA ``scale_attn_inner``).
        attn_drop: attention-probability dropout.
        proj_drop: dropout after the output projection.
        num_prefix_tokens: leading tokens (CLS) that RoPE leaves untouched.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        inner_norm: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if inner_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(B, N, C)``; ``rope`` covers the ``N - num_prefix_tokens`` patch tokens."""
        b, n, c = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if rope is not None:
            p = self.num_prefix_tokens
            if p:
                q = torch.cat((q[:, :, :p], apply_rope(q[:, :, p:], rope)), dim=2).type_as(v)
                k = torch.cat((k[:, :, :p], apply_rope(k[:, :, p:], rope)), dim=2).type_as(v)
            else:
                q, k = apply_rope(q, rope).type_as(v), apply_rope(k, rope).type_as(v)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(self.norm(x)))


class EvaBlock(nn.Module):
    """Pre-norm EVA-02 transformer block: RoPE attention and SwiGLU, each with LayerScale and stochastic depth.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: SwiGLU hidden width over ``dim`` (hidden = ``int(dim * mlp_ratio)``).
        qkv_bias: q/v projection bias.
        scale_attn_inner: LayerNorm inside attention before the output projection.
        scale_mlp: LayerNorm inside the SwiGLU.
        init_values: LayerScale initial value; ``None`` disables LayerScale.
        drop_path: stochastic-depth rate of this block.
        proj_drop: dropout after projections.
        attn_drop: attention dropout.
        num_prefix_tokens: leading tokens without RoPE.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 8 / 3,
        qkv_bias: bool = True,
        scale_attn_inner: bool = True,
        scale_mlp: bool = True,
        init_values: float | None = 0.1,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        num_prefix_tokens: int = 0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EvaAttention(
            dim, num_heads, qkv_bias, scale_attn_inner, attn_drop, proj_drop, num_prefix_tokens, norm_eps
        )
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values))) if init_values is not None else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), scale_mlp, proj_drop, norm_eps)
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values))) if init_values is not None else None
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), rope)
        x = x + self.drop_path1(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path2(m if self.gamma_2 is None else self.gamma_2 * m)


class PatchEmbedding(nn.Module):
    """Non-overlapping convolutional patch embedding ``(B, C_in, *spatial) -> (B, embed_dim, *grid)`` (He init).

    The weights are a strided convolution (the checkpoint layout); when the input tiles exactly into patches the
    same map is computed as one matrix product over :func:`patchify` rows, several times faster on CPU (most of
    all in the backward pass) and equal up to float rounding.
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, patch_size: Sequence[int]) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.proj = conv(in_channels, embed_dim, tuple(patch_size), stride=tuple(patch_size))
        self.patch_size = tuple(int(p) for p in patch_size)
        nn.init.kaiming_normal_(self.proj.weight, a=1e-2)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if len(spatial) != len(self.patch_size) or any(s % p for s, p in zip(spatial, self.patch_size)):
            return self.proj(x)  # the convolution floors ragged borders
        grid = [s // p for s, p in zip(spatial, self.patch_size)]
        weight = self.proj.weight.movedim(1, -1).flatten(1)  # channel-last rows, as patchify lays them out
        tokens = F.linear(patchify(x, self.patch_size, len(grid)), weight, self.proj.bias)  # (B, N, E)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)


class RotaryPositionEmbedding(nn.Module):
    """2D/3D rotary position table with timm ``RotaryEmbeddingCat`` semantics (``in_pixels=False``).

    The table for a grid of ``N`` tokens is ``(N, 2 * head_dim)``: sin then cos, each holding, per spatial axis,
    ``head_dim / (2 * spatial_dims)`` bands repeated pairwise. Tables are computed in float32 on CPU (as the
    reference does at construction) and cached per grid shape and device; none is stored in the state dict.

    Args:
        spatial_dims: 2 or 3.
        head_dim: attention head width; must be divisible by ``2 * spatial_dims``.
        ref_grid: token grid the model was built for (``img_size // patch_size``).
        temperature: frequency base.
        mode: ``"absolute"`` (integer positions) or ``"scaled"`` (positions rescaled onto ``ref_grid``).
    """

    def __init__(
        self,
        spatial_dims: int,
        head_dim: int,
        ref_grid: Sequence[int],
        temperature: float = 10000.0,
        mode: RopeMode = "absolute",
    ) -> None:
        super().__init__()
        if head_dim % (2 * spatial_dims) != 0:
            raise ValueError(
                f"head_dim ({head_dim}) must be divisible by 2 * spatial_dims ({2 * spatial_dims}) for RoPE"
            )
        if mode not in ("absolute", "scaled"):
            raise ValueError(f"rope mode must be 'absolute' or 'scaled', got {mode!r}")
        if len(ref_grid) != spatial_dims:
            raise ValueError(f"ref_grid {tuple(ref_grid)} does not have {spatial_dims} entries")
        self.spatial_dims = spatial_dims
        self.head_dim = head_dim
        self.num_bands = head_dim // (2 * spatial_dims)
        self.ref_grid = tuple(int(g) for g in ref_grid)
        self.temperature = float(temperature)
        self.mode = mode
        self._cache: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}

    def _table(self, grid: tuple[int, ...]) -> torch.Tensor:
        exponent = torch.arange(self.num_bands, dtype=torch.int64).to(torch.float32) / self.num_bands
        bands = 1.0 / (self.temperature**exponent)
        ref = grid if self.mode == "absolute" else self.ref_grid
        axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) / s * r for s, r in zip(grid, ref)]
        coords = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).unsqueeze(-1)  # (*grid, dims, 1)
        angles = (coords * bands).reshape(math.prod(grid), -1)  # (N, dims * bands), axis-major
        return torch.cat((angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)), dim=-1)

    @torch.compiler.disable
    def get_embed(self, grid: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """The ``(N, 2 * head_dim)`` float32 table for token grid ``grid`` on ``device``.

        Runs eagerly under ``torch.compile`` (the cache lookup would otherwise force recompilations).
        """
        grid = tuple(int(g) for g in grid)
        if len(grid) != self.spatial_dims:
            raise ValueError(f"grid {grid} does not have {self.spatial_dims} entries")
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (grid, str(device))
        table = self._cache.get(key)
        if table is None:
            table = self._table(grid).to(device)
            if not torch.jit.is_tracing():
                self._cache[key] = table
        return table

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, num_bands={self.num_bands}, ref_grid={self.ref_grid}, mode={self.mode}"
        )


class EvaEncoder(nn.Module):
    """The transformer trunk: (optional absolute position embedding), RoPE, EVA blocks and the final LayerNorm.

    Named ``eva`` inside :class:`EvaViT` so that keys read ``eva.blocks.{i}.*`` and ``eva.norm.*`` as in DNA.
    """

    def __init__(
        self,
        spatial_dims: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ref_grid: Sequence[int],
        mlp_ratio: float = 8 / 3,
        qkv_bias: bool = True,
        scale_attn_inner: bool = True,
        scale_mlp: bool = True,
        init_values: float | None = 0.1,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        use_rope: bool = True,
        rope_temperature: float = 10000.0,
        rope_mode: RopeMode = "absolute",
        use_abs_pos_embed: bool = False,
        num_prefix_tokens: int = 0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ref_grid = tuple(ref_grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.grad_checkpointing = False
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_prefix_tokens + math.prod(self.ref_grid), embed_dim))
            if use_abs_pos_embed
            else None
        )
        self.rope = (
            RotaryPositionEmbedding(spatial_dims, embed_dim // num_heads, self.ref_grid, rope_temperature, rope_mode)
            if use_rope
            else None
        )
        rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            EvaBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                scale_attn_inner,
                scale_mlp,
                init_values,
                rates[i],
                proj_drop_rate,
                attn_drop_rate,
                num_prefix_tokens,
                norm_eps,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """EVA initialisation: truncated-normal linears (std 0.02), zero biases, depth-rescaled output projections."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer_id, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def abs_pos_embed(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Absolute position embedding for ``grid``, resampled from the reference grid when they differ."""
        assert self.pos_embed is not None
        p = self.num_prefix_tokens
        prefix, patches = self.pos_embed[:, :p], self.pos_embed[:, p:]
        if grid != self.ref_grid:
            c = patches.shape[-1]
            patches = patches.transpose(1, 2).reshape(1, c, *self.ref_grid)
            mode = "trilinear" if len(grid) == 3 else "bicubic"
            patches = F.interpolate(patches, size=grid, mode=mode, align_corners=False).flatten(2).transpose(1, 2)
        return torch.cat((prefix, patches), dim=1)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        """Run the blocks and the final norm over ``x`` ``(B, N, C)`` (prefix tokens first)."""
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return self.norm(x)


class EvaViT(nn.Module):
    """EVA-02 ViT for ``(B, in_channels, *spatial)`` images, 2D or 3D; defaults are Primus-M as used by COLIPRI.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        img_size: reference input size (sets the RoPE reference grid and the absolute embedding size).
        patch_size: non-overlapping patch size (convolutional patch embedding).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: SwiGLU hidden width over ``embed_dim``.
        qkv_bias: q/v projection bias (k never has one).
        scale_attn_inner: LayerNorm inside attention.
        scale_mlp: LayerNorm inside the SwiGLU.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        proj_drop_rate: dropout after projections.
        attn_drop_rate: attention dropout.
        init_values: LayerScale init; ``None`` disables it.
        use_rope: rotary position embedding.
        rope_temperature: RoPE frequency base.
        rope_mode: ``"absolute"`` or ``"scaled"`` (see the module docstring).
        use_abs_pos_embed: learned absolute position embedding (resampled for other grids).
        num_cls_tokens: learned prefix tokens returned as ``cls`` by :meth:`forward_tokens`.
        learnable_mask_token: make ``mask_token`` a parameter (iBOT/SimMIM); otherwise it is a zero buffer as in DNA.
        grad_checkpointing: recompute blocks in backward to save memory.
        norm_eps: LayerNorm epsilon.

    Raises:
        ValueError: on inconsistent sizes (``embed_dim``/``num_heads``/RoPE divisibility, ``img_size``/``patch_size``).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 192,
        patch_size: int | Sequence[int] = 8,
        embed_dim: int = 864,
        depth: int = 16,
        num_heads: int = 12,
        mlp_ratio: float = 8 / 3,
        qkv_bias: bool = True,
        scale_attn_inner: bool = True,
        scale_mlp: bool = True,
        drop_path_rate: float = 0.2,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        init_values: float | None = 0.1,
        use_rope: bool = True,
        rope_temperature: float = 10000.0,
        rope_mode: RopeMode = "absolute",
        use_abs_pos_embed: bool = False,
        num_cls_tokens: int = 0,
        learnable_mask_token: bool = False,
        grad_checkpointing: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_cls_tokens < 0:
            raise ValueError(f"num_cls_tokens must be >= 0, got {num_cls_tokens}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.patch_size = _as_tuple(patch_size, spatial_dims, "patch_size")
        self.img_size = _as_tuple(img_size, spatial_dims, "img_size")
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.ref_grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.depth = depth
        self.num_cls_tokens = num_cls_tokens

        self.down_projection = PatchEmbedding(spatial_dims, in_channels, embed_dim, self.patch_size)

        self.cls_token = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim)) if num_cls_tokens else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if learnable_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.register_buffer("mask_token", torch.zeros(1, 1, embed_dim))

        self.eva = EvaEncoder(
            spatial_dims,
            embed_dim,
            depth,
            num_heads,
            self.ref_grid,
            mlp_ratio,
            qkv_bias,
            scale_attn_inner,
            scale_mlp,
            init_values,
            drop_path_rate,
            proj_drop_rate,
            attn_drop_rate,
            use_rope,
            rope_temperature,
            rope_mode,
            use_abs_pos_embed,
            num_cls_tokens,
            norm_eps,
        )
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block during backward (``torch.utils.checkpoint``, non-reentrant) to save memory."""
        self.eva.grad_checkpointing = bool(enable)

    def grid_size(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid for an input of spatial shape ``spatial_shape``; raises ``ValueError`` if not divisible."""
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if len(spatial_shape) != self.spatial_dims or any(s % p for s, p in zip(spatial_shape, self.patch_size)):
            raise ValueError(
                f"input spatial shape {spatial_shape} must have {self.spatial_dims} dims divisible by "
                f"patch_size {self.patch_size}"
            )
        return tuple(s // p for s, p in zip(spatial_shape, self.patch_size))

    def no_weight_decay(self) -> set[str]:
        """Parameter names usually excluded from weight decay."""
        names = {"cls_token", "mask_token", "eva.pos_embed"}
        return {n for n, _ in self.named_parameters() if n in names}

    def forward_tokens(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | tuple[int, ...]]:
        """Encode ``x`` into tokens.

        Args:
            x: images ``(B, in_channels, *spatial)``, each spatial size divisible by the patch size.
            mask: ``(B, N)`` bool; ``True`` patch tokens are replaced by ``mask_token`` (iBOT/SimMIM masking).
            keep_indices: ``(B, N_keep)`` long; only these patch tokens are encoded (MAE token dropping), each
                with the RoPE of its true grid position.

        Returns:
            ``tokens`` ``(B, N or N_keep, C)`` after the final norm (in ``keep_indices`` order), ``cls``
            ``(B, num_cls_tokens, C)`` when the model has CLS tokens, and ``grid`` (the full token grid).
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a (B, C, *spatial) tensor with {self.spatial_dims} spatial dims, got {tuple(x.shape)}"
            )
        grid = self.grid_size(x.shape[2:])
        tokens = self.down_projection(x).flatten(2).transpose(1, 2)  # (B, N, C)
        b, n, c = tokens.shape
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        pos = self.eva.abs_pos_embed(grid) if self.eva.pos_embed is not None else None
        if pos is not None:
            tokens = tokens + pos[:, self.num_cls_tokens :].to(tokens.dtype)
        rope = self.eva.rope.get_embed(grid, tokens.device) if self.eva.rope is not None else None
        if keep_indices is not None:
            if keep_indices.ndim != 2 or keep_indices.shape[0] != b:
                raise ValueError(f"keep_indices must have shape (B={b}, N_keep), got {tuple(keep_indices.shape)}")
            tokens = tokens.gather(1, keep_indices.unsqueeze(-1).expand(-1, -1, c))
            if rope is not None:
                rope = rope[keep_indices]  # (B, N_keep, 2 * head_dim): true positions of the kept tokens
        if self.cls_token is not None:
            cls = self.cls_token.expand(b, -1, -1).to(tokens.dtype)
            if pos is not None:
                cls = cls + pos[:, : self.num_cls_tokens].to(tokens.dtype)
            tokens = torch.cat((cls, tokens), dim=1)
        tokens = self.eva(tokens, rope)
        out: dict[str, torch.Tensor | tuple[int, ...]] = {"tokens": tokens[:, self.num_cls_tokens :], "grid": grid}
        if self.cls_token is not None:
            out["cls"] = tokens[:, : self.num_cls_tokens]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, embed_dim, *grid)`` of ``x`` ``(B, in_channels, *spatial)``."""
        out = self.forward_tokens(x)
        tokens, grid = out["tokens"], out["grid"]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, *grid)


def primus(
    size: str = "M",
    spatial_dims: int = 3,
    in_channels: int = 1,
    img_size: int | Sequence[int] = 192,
    patch_size: int | Sequence[int] = 8,
    **kwargs,
) -> EvaViT:
    """A Primus-{S,B,M,L} EVA encoder (DNA widths/depths/heads); ``kwargs`` go to :class:`EvaViT`."""
    if size not in PRIMUS_CONFIGS:
        raise ValueError(f"unknown Primus size {size!r}; expected one of {sorted(PRIMUS_CONFIGS)}")
    return EvaViT(spatial_dims, in_channels, img_size, patch_size, **PRIMUS_CONFIGS[size], **kwargs)


def primus_m(
    spatial_dims: int = 3,
    in_channels: int = 1,
    img_size: int | Sequence[int] = 192,
    patch_size: int | Sequence[int] = 8,
    **kwargs,
) -> EvaViT:
    """Primus-M as in the COLIPRI release: 864 wide, 16 blocks, 12 heads, 8^3 patches, RoPE, LayerScale 0.1."""
    return primus("M", spatial_dims, in_channels, img_size, patch_size, **kwargs)


def eva_tiny(
    spatial_dims: int = 3,
    in_channels: int = 1,
    img_size: int | Sequence[int] = 64,
    patch_size: int | Sequence[int] = 8,
    embed_dim: int = 96,
    depth: int = 2,
    num_heads: int = 4,
    **kwargs,
) -> EvaViT:
    """A tiny EVA encoder for tests and CPU demos (same block design as Primus-M)."""
    kwargs.setdefault("drop_path_rate", 0.0)
    return EvaViT(spatial_dims, in_channels, img_size, patch_size, embed_dim, depth, num_heads, **kwargs)


def patchify(images: torch.Tensor, patch_size: int | Sequence[int], spatial_dims: int | None = None) -> torch.Tensor:
    """Cut ``(B, C, *spatial)`` images into ``(B, N, prod(patch_size) * C)`` rows in the encoder's token order.

    Tokens are ordered row-major over the patch grid (as :meth:`EvaViT.forward_tokens`); each row holds the
    patch voxels row-major with the channel last.
    """
    spatial_dims = images.ndim - 2 if spatial_dims is None else spatial_dims
    if images.ndim != spatial_dims + 2:
        raise ValueError(f"expected (B, C, *spatial) with {spatial_dims} spatial dims, got {tuple(images.shape)}")
    patch = _as_tuple(patch_size, spatial_dims, "patch_size")
    b, c, *spatial = images.shape
    if any(s % p for s, p in zip(spatial, patch)):
        raise ValueError(f"spatial shape {tuple(spatial)} is not divisible by patch_size {patch}")
    grid = [s // p for s, p in zip(spatial, patch)]
    shape = [b, c]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = images.reshape(shape)
    d = spatial_dims
    grid_axes = [2 + 2 * i for i in range(d)]
    patch_axes = [3 + 2 * i for i in range(d)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int | Sequence[int], grid: Sequence[int], in_channels: int = 1
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, prod(patch_size) * C)`` rows back to ``(B, C, *spatial)`` images."""
    grid = tuple(int(g) for g in grid)
    d = len(grid)
    patch = _as_tuple(patch_size, d, "patch_size")
    b, n, length = patches.shape
    if n != math.prod(grid) or length != math.prod(patch) * in_channels:
        raise ValueError(
            f"patches {tuple(patches.shape)} do not match grid {grid}, patch_size {patch}, in_channels {in_channels}"
        )
    x = patches.reshape(b, *grid, *patch, in_channels)
    order = [0, 2 * d + 1]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    x = x.permute(order)
    return x.reshape(b, in_channels, *(g * p for g, p in zip(grid, patch)))


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sorted indices ``(B, N_keep)`` of the tokens left visible by MAE-style random masking at ``mask_ratio``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    num_keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :num_keep].sort(dim=1).values
