"""Pseudo-segmentation masks from a pooler's query attention (G2D: Liu et al., "From Global to Dense Radiography
Representation Learning via Vision-Language Pre-training", NeurIPS 2024, §3.2, Eqs. 2-3, Fig. 2; Tables 5b/5f/8).

The pipeline, parameter-free and without gradient, entirely on the attention's device (no ``.cpu()``, no ``.item()``,
no data-dependent Python branch, so no host synchronisation):

1. average the query's attention over the heads (Eq. 2): ``(B, heads, *grid) -> (B, 1, *grid)``;
2. upsample to the image size: linear (bilinear 2D / trilinear 3D, ``align_corners=False``: a token is the centre of
   its ``spatial / grid`` cell, which is how a stride-``s`` feature map or a patch grid tiles the image), or
   ``"nearest"``, the release's blocky ``Resize(NEAREST)``;
3. zero outside the body mask, if one is given (the paper's ``W[~B] = 0``);
4. per image, threshold at the ``percentile`` quantile (0.85, Table 5b), taken inside the body mask or over the whole
   image (``percentile_in_body``; the paper does not say, the 3D design says inside), with linear interpolation
   between order statistics as ``numpy.quantile``/``torch.quantile`` (which the release used);
5. foreground ``W >= threshold`` (Eq. 3; ``strict=True`` gives the release's ``>``), but never where ``W`` equals
   its lowest value inside the body (the whole image without a body mask): a constant map, or one where at least
   ``percentile`` of the pixels share the lowest value, gives an empty mask instead of an all-ones one (with ``>=``
   every pixel of a constant map would pass), also when the zeros written outside the body pull the threshold down;
6. smooth the blocky edges and re-apply the body mask.

Deviation: the paper smooths with a bilateral filter (parameters unstated; the release does not smooth at all).
MONAI's ``BilateralFilter`` needs its C++/CUDA extension, so step 6 blurs the binary mask with a separable Gaussian
(MONAI's ``erf`` kernel and ``separable_filtering``, replicate padding so masks touching the image border keep it)
and re-thresholds at 0.5: straight edges stay where they are, block corners are rounded and specks smaller than about
the kernel vanish. ``smooth_sigma`` is in token-grid cells (per axis ``sigma * spatial / grid`` pixels), so one
setting fits any resolution and anisotropic grids.

:func:`shuffle_across_batch` is the Table 8 control: each image gets the pseudo-mask of another image of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers import separable_filtering
from torch import nn

__all__ = [
    "AttentionPseudoMask",
    "attention_pseudo_mask",
    "derangement",
    "masked_quantile",
    "shuffle_across_batch",
    "smooth_binary_mask",
]

_LINEAR = {2: "bilinear", 3: "trilinear"}


def masked_quantile(values: torch.Tensor, q: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row ``q``-quantile of ``values`` ``(B, N)`` over its ``valid`` entries ``(B, N)`` bool (all if ``None``).

    Linear interpolation between order statistics, as ``torch.quantile``/``numpy.quantile`` (default method), but
    with a different number of entries per row and without ``torch.quantile``'s input-size limit (one sort per row,
    batched). Computed in float32. Rows without a valid entry get ``+inf``. Returns ``(B,)`` float32.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if values.ndim != 2:
        raise ValueError(f"values must be (B, N), got shape {tuple(values.shape)}")
    values = values.float()
    n = values.shape[1]
    if valid is None:
        ordered = values.sort(dim=1).values
        count = torch.full(values.shape[:1], n, device=values.device)
    else:
        if valid.shape != values.shape:
            raise ValueError(f"valid must have shape {tuple(values.shape)}, got {tuple(valid.shape)}")
        valid = valid.to(device=values.device, dtype=torch.bool)
        ordered = values.masked_fill(~valid, math.inf).sort(dim=1).values  # valid entries first
        count = valid.sum(dim=1)
    position = q * (count.clamp(min=1) - 1).float()
    low = position.floor().long().clamp(max=n - 1)
    high = position.ceil().long().clamp(max=n - 1)
    v_low = ordered.gather(1, low[:, None])[:, 0]
    v_high = ordered.gather(1, high[:, None])[:, 0]
    interpolated = torch.lerp(v_low, v_high, position - low.float())
    return torch.where(count > 0, interpolated, torch.full_like(interpolated, math.inf))


def _gaussian_kernel(sigma: float, device: torch.device, truncated: float = 4.0) -> torch.Tensor:
    """MONAI's ``gaussian_1d(sigma, truncated, approx="erf", normalize=True)``, built directly on ``device``
    (``gaussian_1d`` builds it on the CPU, and copying it over would synchronise with the host)."""
    tail = int(max(sigma * truncated, 0.5) + 0.5)
    x = torch.arange(-tail, tail + 1, dtype=torch.float32, device=device)
    t = 0.70710678 / sigma
    kernel = (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)
    return kernel / kernel.sum()


def smooth_binary_mask(mask: torch.Tensor, sigma: Sequence[float] | float) -> torch.Tensor:
    """Gaussian-blur a ``(B, C, *spatial)`` {0, 1} mask and re-threshold it at 0.5 (``> 0.5``); float32 out.

    ``sigma`` is in pixels, one value or one per spatial axis; 0 leaves an axis alone. Replicate padding, so the
    image border is not an edge.
    """
    dims = mask.ndim - 2
    sigmas = [float(sigma)] * dims if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != dims or any(s < 0 for s in sigmas):
        raise ValueError(f"sigma must be {dims} non-negative numbers, got {sigma!r}")
    x = mask.float()
    if not any(s > 0 for s in sigmas):
        return (x > 0.5).float()
    # an axis left alone gets the 3-tap identity: MONAI skips 1-tap kernels through a host-side comparison
    identity = torch.zeros(3, device=x.device)
    identity[1] = 1.0
    kernels = [_gaussian_kernel(s, x.device) if s > 0 else identity for s in sigmas]
    return (separable_filtering(x, kernels, mode="replicate") > 0.5).float()


@torch.no_grad()
def attention_pseudo_mask(
    attention: torch.Tensor,
    spatial_size: Sequence[int],
    body_mask: torch.Tensor | None = None,
    *,
    percentile: float = 0.85,
    mode: Literal["bilinear", "trilinear", "nearest"] = "bilinear",
    align_corners: bool = False,
    percentile_in_body: bool | None = None,
    strict: bool = False,
    smooth_sigma: float = 0.25,
) -> torch.Tensor:
    """G2D pseudo-mask of each image from its pooler's query attention (see the module docstring for the steps).

    Args:
        attention: ``(B, heads, *grid)`` (2D or 3D grid), the query's attention over the tokens of the last feature
            map (without the query's own column), e.g. ``AttentionPool1D(..., return_attention=True)``'s
            ``(B, heads, N)`` output ``.unflatten(-1, grid)``. Any float dtype; gradients are not followed.
        spatial_size: the input image's spatial size ``(H, W)`` or ``(D, H, W)``.
        body_mask: optional ``(B, 1, *spatial_size)`` body mask (bool, or numbers where ``> 0.5`` is body), e.g. from
            :mod:`common.transforms.body_mask`; moved to the attention's device if elsewhere.
        percentile: quantile as a fraction, 0.85 = the 85th percentile (paper's best, Table 5b).
        mode: ``"bilinear"``/``"trilinear"`` (the same: linear along each axis, MONAI's naming) or ``"nearest"``
            (the release).
        align_corners: passed to ``F.interpolate`` for linear modes (False: tokens are cell centres).
        percentile_in_body: take the quantile over body pixels only; ``None`` = True when ``body_mask`` is given.
        strict: foreground ``> threshold`` as the release, instead of the paper's ``>=``. With ties (a nearest
            upsampled map is made of them) ``>=`` keeps at least ``1 - percentile`` of the region, ``>`` at most.
        smooth_sigma: Gaussian edge smoothing in token-grid cells (0 = off).

    Returns:
        ``(B, 1, *spatial_size)`` {0, 1} mask in the attention's dtype (float32 for non-float input) on its device,
        without gradient.
    """
    if attention.ndim not in (4, 5):
        raise ValueError(
            f"attention must be (B, heads, *grid) with a 2D or 3D grid, got shape {tuple(attention.shape)}"
        )
    dims = attention.ndim - 2
    size = tuple(int(s) for s in spatial_size)
    if len(size) != dims or min(size) < 1:
        raise ValueError(f"spatial_size must be {dims} positive sizes for a {dims}D grid, got {spatial_size!r}")
    if not 0.0 < percentile < 1.0:
        raise ValueError(f"percentile is a fraction in (0, 1), e.g. 0.85 for the 85th percentile; got {percentile}")
    if mode not in ("bilinear", "trilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear', 'trilinear' or 'nearest', got {mode!r}")
    if smooth_sigma < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    batch, grid = attention.shape[0], tuple(attention.shape[2:])
    out_dtype = attention.dtype if attention.is_floating_point() else torch.float32

    heat = attention.detach().float().mean(dim=1, keepdim=True)  # Eq. 2
    if mode == "nearest":
        heat = F.interpolate(heat, size=size, mode="nearest")
    else:
        heat = F.interpolate(heat, size=size, mode=_LINEAR[dims], align_corners=align_corners)
    flat = heat.flatten(1)

    body = None
    if body_mask is not None:
        expected = (batch, 1, *size)
        if tuple(body_mask.shape) != expected:
            raise ValueError(f"body_mask must have shape {expected}, got {tuple(body_mask.shape)}")
        body_mask = body_mask.detach().to(flat.device)
        body = (body_mask if body_mask.dtype == torch.bool else body_mask.float() > 0.5).flatten(1)
        flat = flat.masked_fill(~body, 0.0)
    in_body = body is not None if percentile_in_body is None else bool(percentile_in_body)
    if in_body and body is None:
        raise ValueError("percentile_in_body=True needs a body_mask")
    region = body if in_body else None

    threshold = masked_quantile(flat, percentile, region)[:, None]
    # the lowest attention inside the body (not the zeros written outside it) is never foreground
    lowest = (flat if body is None else flat.masked_fill(~body, math.inf)).amin(dim=1, keepdim=True)
    foreground = (flat > threshold) if strict else (flat >= threshold)
    foreground &= flat > lowest
    if body is not None:
        foreground &= body
    mask = foreground.view(batch, 1, *size).float()

    if smooth_sigma > 0:
        mask = smooth_binary_mask(mask, [smooth_sigma * s / g for s, g in zip(size, grid)])
        if body is not None:
            mask = mask * body.view(batch, 1, *size)
    return mask.to(out_dtype)


def derangement(
    n: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` without fixed points (``int64``), by rejection sampling
    ``torch.randperm`` on the CPU (about e draws); deterministic given a CPU ``generator`` (else the global CPU RNG).
    ``n < 2`` has no derangement: the identity is returned. On a CUDA ``device`` it is sent from pinned memory without
    synchronising with the host."""
    identity = torch.arange(max(n, 0))
    perm = identity
    while n >= 2:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == identity).any()):
            break
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        perm = perm.pin_memory()
    return perm.to(device, non_blocking=True)


def shuffle_across_batch(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Table 8 control: give each image the mask of another image of the batch (a :func:`derangement` along dim 0;
    a batch of one is returned unchanged)."""
    return masks.index_select(0, derangement(masks.shape[0], masks.device, generator))


class AttentionPseudoMask(nn.Module):
    """:func:`attention_pseudo_mask` as a module without parameters or buffers; the knobs are its arguments, with the
    same defaults. ``shuffle=True`` applies :func:`shuffle_across_batch` to the result (Table 8 control)."""

    def __init__(
        self,
        percentile: float = 0.85,
        mode: Literal["bilinear", "trilinear", "nearest"] = "bilinear",
        align_corners: bool = False,
        percentile_in_body: bool | None = None,
        strict: bool = False,
        smooth_sigma: float = 0.25,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < percentile < 1.0:
            raise ValueError(f"percentile is a fraction in (0, 1), e.g. 0.85 for the 85th percentile; got {percentile}")
        if mode not in ("bilinear", "trilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear', 'trilinear' or 'nearest', got {mode!r}")
        if smooth_sigma < 0:
            raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
        self.percentile = float(percentile)
        self.mode = mode
        self.align_corners = bool(align_corners)
        self.percentile_in_body = percentile_in_body
        self.strict = bool(strict)
        self.smooth_sigma = float(smooth_sigma)
        self.shuffle = bool(shuffle)

    def forward(
        self,
        attention: torch.Tensor,
        spatial_size: Sequence[int],
        body_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, heads, *grid)`` attention -> ``(B, 1, *spatial_size)`` {0, 1} pseudo-mask (no gradient);
        ``generator`` seeds the shuffle control."""
        mask = attention_pseudo_mask(
            attention,
            spatial_size,
            body_mask,
            percentile=self.percentile,
            mode=self.mode,
            align_corners=self.align_corners,
            percentile_in_body=self.percentile_in_body,
            strict=self.strict,
            smooth_sigma=self.smooth_sigma,
        )
        return shuffle_across_batch(mask, generator) if self.shuffle else mask

    def extra_repr(self) -> str:
        return (
            f"percentile={self.percentile}, mode={self.mode!r}, percentile_in_body={self.percentile_in_body}, "
            f"strict={self.strict}, smooth_sigma={self.smooth_sigma}, shuffle={self.shuffle}"
        )
