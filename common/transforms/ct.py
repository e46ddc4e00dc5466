"""3D CT dictionary transforms and pipeline builders: COLIPRI preprocessing and SSL augmentation.

All transforms take and return channel-first MetaTensors ``(C, X, Y, Z)`` whose ``affine`` maps voxel indices to
RAS millimetres (what MONAI's readers produce).

**COLIPRI parity.** :func:`colipri_preprocessing` reproduces the TorchIO processor shipped with ``colipri==0.1.3``
(``configs/processor/image_transform/default.yaml``): ``ToOrientation(RAS)`` -> ``Resample(2 mm, linear, no
antialias)`` -> ``Clamp(-1000, 1000)`` -> ``RescaleIntensity([-1000, 1000] -> [-1, 1])`` ->
``CropOrPad(192^3, padding_mode="minimum")``. MONAI's stock transforms differ from TorchIO's in three places, so
three small transforms here carry TorchIO's geometry:

* :class:`CentredSpacingd` - TorchIO ``Resample`` grid: ``floor(n * s_in / s_out)`` voxels per axis, centred on the
  input's centre, same direction cosines (MONAI ``Spacingd`` anchors the grid at the first voxel and rounds
  ``(n - 1) * s_in / s_out + 1``, a sub-voxel shift);
* :class:`CentralCropd` / :class:`CentralPadd` - TorchIO ``CropOrPad``: the odd voxel goes to the *start* of each axis
  (MONAI's centre crop/pad put it at the end), and the pad value can be the image minimum (``"minimum"``).

With ``lazy=True`` orientation, spacing and crop are accumulated as pending operations and executed by
:class:`ApplyPendingResampled` as ONE interpolation over the cropped field of view only; padding is a constant fill
afterwards, so no time is spent interpolating the padded margin. Because that voxel map is axis-aligned (also for
oblique scans, whose direction cosines are kept), the interpolation runs separably (:func:`resample_axis_aligned`,
same values as ``grid_sample``); rotations fall back to MONAI's resampler. Single-threaded CPU, per volume, versus
the TorchIO processor: 0.03 vs 0.09 s (chest CTA 120x126x164), 0.07 vs 0.98 s (512x512x64 thorax), 0.06 vs 0.25 s
(abdomen 122x101x112), loading excluded. Remaining differences from TorchIO (documented in
:func:`colipri_preprocessing`) are below 1 HU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import (
    Crop,
    Cropd,
    InvertibleTransform,
    LazyTransform,
    MapTransform,
    Orientationd,
    Pad,
    Padd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    SpatialResample,
    TraceableTransform,
    Transform,
)
from monai.data.utils import to_affine_nd
from monai.transforms.lazy.functional import apply_pending
from monai.transforms.lazy.utils import affine_from_pending, combine_transforms
from monai.transforms.traits import LazyTrait
from monai.transforms.utils import create_translate
from monai.utils import LazyAttr, convert_to_numpy, convert_to_tensor, ensure_tuple, ensure_tuple_rep

from common.data.readers import LoadVolumed

__all__ = [
    "centred_grid",
    "CentredSpacing",
    "CentredSpacingd",
    "CentralCrop",
    "CentralCropd",
    "CentralPad",
    "CentralPadd",
    "resample_axis_aligned",
    "apply_pending_fast",
    "ApplyPendingResampled",
    "load_volume",
    "ct_preprocessing",
    "colipri_preprocessing",
    "ct_ssl_augmentation",
]

OddVoxel = Literal["start", "end"]
Loader = Callable[[Sequence[Hashable]], Transform]


def load_volume(keys: KeysCollection) -> Transform:
    """Default volume loader: :class:`common.data.readers.LoadVolumed` (validated, ``(1, X, Y, Z)`` float32, RAS
    affine). Pass another ``loader=`` to the builders to replace it, e.g. ``monai.transforms.LoadImaged``."""
    return LoadVolumed(keys)


def _as_spacing(pixdim: Sequence[float] | float, rank: int) -> np.ndarray:
    spacing = np.asarray(ensure_tuple_rep(pixdim, rank) if np.ndim(pixdim) == 0 else tuple(pixdim), dtype=np.float64)
    if spacing.shape != (rank,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"pixdim must be {rank} positive finite numbers, got {pixdim!r}")
    return spacing


def centred_grid(
    affine: np.ndarray | torch.Tensor, spatial_shape: Sequence[int], pixdim: Sequence[float] | float
) -> tuple[np.ndarray, tuple[int, ...]]:
    """TorchIO's ``Resample(target=spacing)`` output grid for an input grid.

    The output keeps the input's direction cosines, has ``floor(n * s_in / s_out)`` voxels per axis (never extending
    past the input; singleton axes stay singleton) and shares the input's centre (mean of first and last voxel
    centres).

    Args:
        affine: ``(r + 1, r + 1)`` voxel-to-world matrix of the input.
        spatial_shape: input spatial shape ``(n_1, ..., n_r)``.
        pixdim: output spacing in mm, one number or one per axis.

    Returns:
        The output affine (float64 numpy) and spatial shape.
    """
    affine = convert_to_numpy(affine, dtype=np.float64)
    shape = np.asarray(spatial_shape, dtype=np.int64)
    rank = len(shape)
    new_spacing = _as_spacing(pixdim, rank)
    linear = affine[:rank, :rank]
    old_spacing = np.sqrt((linear**2).sum(axis=0))
    if np.any(old_spacing <= 0) or not np.all(np.isfinite(old_spacing)):
        raise ValueError(f"input affine has a zero or non-finite spacing: {old_spacing.tolist()}")
    direction = linear / old_spacing
    new_shape = np.floor(shape * old_spacing / new_spacing).astype(np.int64)
    new_shape[shape == 1] = 1
    new_shape = np.maximum(new_shape, 1)
    centre = linear @ ((shape - 1) / 2.0) + affine[:rank, rank]
    out = np.eye(rank + 1)
    out[:rank, :rank] = direction * new_spacing
    out[:rank, rank] = centre - out[:rank, :rank] @ ((new_shape - 1) / 2.0)
    return out, tuple(int(s) for s in new_shape)


class CentredSpacing(InvertibleTransform, LazyTransform):
    """Resample to a target spacing on TorchIO's centred grid (see :func:`centred_grid`).

    A thin wrapper over :class:`monai.transforms.SpatialResample`, so it runs lazily and inverts like ``Spacing``.

    Args:
        pixdim: output spacing in mm, one number or one per spatial axis.
        mode: interpolation mode (``"bilinear"`` is trilinear in 3D; ``"nearest"`` for label maps).
        padding_mode: ``grid_sample`` padding. ``"border"`` reproduces ITK's linear interpolator, which clamps
            neighbours at the image edge within the half-voxel margin TorchIO's grid may reach when upsampling.
        align_corners: see ``torch.nn.functional.grid_sample``.
        dtype: resampling precision.
        lazy: whether to defer the resampling (fused with later spatial transforms).
    """

    backend = SpatialResample.backend

    def __init__(
        self,
        pixdim: Sequence[float] | float,
        mode: str = "bilinear",
        padding_mode: str = "border",
        align_corners: bool = False,
        dtype: DtypeLike | torch.dtype = torch.float32,
        lazy: bool = False,
    ) -> None:
        LazyTransform.__init__(self, lazy=lazy)
        self.pixdim = pixdim if np.ndim(pixdim) == 0 else tuple(float(p) for p in pixdim)
        _as_spacing(self.pixdim, 1 if np.ndim(pixdim) == 0 else len(self.pixdim))
        self.sp_resample = SpatialResample(
            mode=mode, padding_mode=padding_mode, align_corners=align_corners, dtype=dtype, lazy=lazy
        )

    @LazyTransform.lazy.setter  # type: ignore[attr-defined]
    def lazy(self, value: bool) -> None:
        self._lazy = value
        self.sp_resample.lazy = value

    def __call__(
        self, img: torch.Tensor, mode: str | None = None, padding_mode: str | None = None, lazy: bool | None = None
    ) -> torch.Tensor:
        """Resample ``img`` ``(C, *spatial)``; its (pending) affine defines the input grid."""
        if not isinstance(img, MetaTensor):
            raise TypeError("CentredSpacing needs a MetaTensor with an affine (load the image with a MONAI reader)")
        shape = tuple(int(s) for s in img.peek_pending_shape())
        affine = img.peek_pending_affine()
        rank = len(shape)
        affine_nd = np.eye(rank + 1)
        src = convert_to_numpy(affine, dtype=np.float64)
        affine_nd[:rank, :rank] = src[:rank, :rank]
        affine_nd[:rank, rank] = src[:rank, -1]
        dst_affine, dst_shape = centred_grid(affine_nd, shape, self.pixdim)
        lazy_ = self.lazy if lazy is None else lazy
        out = self.sp_resample(
            img,
            dst_affine=torch.as_tensor(dst_affine),
            spatial_size=dst_shape,
            mode=mode,
            padding_mode=padding_mode,
            lazy=True,
        )
        if lazy_:
            return out
        resample = self.sp_resample
        return apply_pending_fast(
            out,
            mode=str(mode or resample.mode),
            padding_mode=str(padding_mode or resample.padding_mode),
            dtype=resample.dtype,
            align_corners=bool(resample.align_corners),
        )

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Resample back to the input grid, eagerly (a lazily inverted result would stay pending)."""
        lazy = self.sp_resample.lazy
        self.sp_resample.lazy = False
        try:
            return self.sp_resample.inverse(data)
        finally:
            self.sp_resample.lazy = lazy


class CentredSpacingd(MapTransform, InvertibleTransform, LazyTransform):
    """Dictionary wrapper of :class:`CentredSpacing`; ``mode`` may differ per key (e.g. nearest for masks)."""

    backend = CentredSpacing.backend

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float] | float,
        mode: Sequence[str] | str = "bilinear",
        padding_mode: Sequence[str] | str = "border",
        align_corners: bool = False,
        dtype: DtypeLike | torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
        lazy: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        LazyTransform.__init__(self, lazy=lazy)
        self.spacing = CentredSpacing(pixdim, align_corners=align_corners, dtype=dtype, lazy=lazy)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))

    @LazyTransform.lazy.setter  # type: ignore[attr-defined]
    def lazy(self, value: bool) -> None:
        self._lazy = value
        self.spacing.lazy = value

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        lazy_ = self.lazy if lazy is None else lazy
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            d[key] = self.spacing(d[key], mode=mode, padding_mode=padding_mode, lazy=lazy_)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.spacing.inverse(d[key])
        return d


def _centred_bounds(size: int, target: int, odd_voxel: OddVoxel) -> tuple[int, int]:
    """Voxels to remove (size > target) or add (size < target) at (start, end) of one axis."""
    diff = abs(size - target)
    big, small = math.ceil(diff / 2), diff // 2
    return (big, small) if odd_voxel == "start" else (small, big)


def _check_odd_voxel(odd_voxel: str) -> None:
    if odd_voxel not in ("start", "end"):
        raise ValueError(f"odd_voxel must be 'start' or 'end', got {odd_voxel!r}")


class CentralCrop(Crop):
    """Centre-crop axes longer than ``spatial_size``; shorter axes are left alone.

    Args:
        spatial_size: target size, one int or one per axis; values ``<= 0`` keep that axis.
        odd_voxel: side that loses the extra voxel when the excess is odd: ``"start"`` (TorchIO ``CropOrPad``) or
            ``"end"`` (``torchvision``/Hugging Face ``center_crop``).
        lazy: whether to defer the crop (it then fuses with pending resampling).
    """

    def __init__(self, spatial_size: Sequence[int] | int, odd_voxel: OddVoxel = "start", lazy: bool = False) -> None:
        super().__init__(lazy=lazy)
        _check_odd_voxel(odd_voxel)
        self.spatial_size = spatial_size
        self.odd_voxel = odd_voxel

    def compute_slices_for(self, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
        """The crop window for an input of ``spatial_shape``."""
        target = ensure_tuple_rep(self.spatial_size, len(spatial_shape))
        slices = []
        for size, goal in zip(spatial_shape, target):
            size = int(size)
            if goal <= 0 or size <= goal:
                slices.append(slice(0, size))
                continue
            start, _ = _centred_bounds(size, int(goal), self.odd_voxel)
            slices.append(slice(start, start + int(goal)))
        return tuple(slices)

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        shape = img.peek_pending_shape() if isinstance(img, MetaTensor) else img.shape[1:]
        return super().__call__(img=img, slices=self.compute_slices_for(shape), lazy=lazy)


class CentralCropd(Cropd):
    """Dictionary wrapper of :class:`CentralCrop`."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        odd_voxel: OddVoxel = "start",
        allow_missing_keys: bool = False,
        lazy: bool = False,
    ) -> None:
        super().__init__(keys, CentralCrop(spatial_size, odd_voxel, lazy=lazy), allow_missing_keys, lazy=lazy)


class CentralPad(Pad):
    """Centre-pad axes shorter than ``spatial_size`` with a constant; longer axes are left alone.

    Always eager: a lazily padded margin would be filled by the resampler's ``padding_mode`` rather than by
    ``value``, and padding an up-to-date tensor is a cheap constant fill anyway. Pending operations are therefore
    applied before it (``requires_current_data``).

    Args:
        spatial_size: target size, one int or one per axis; values ``<= 0`` keep that axis.
        value: the fill value, or ``"minimum"`` for the image's minimum (TorchIO ``padding_mode="minimum"``).
        odd_voxel: side that gets the extra voxel when the deficit is odd (``"start"`` as TorchIO ``CropOrPad``).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int,
        value: float | Literal["minimum"] = 0.0,
        odd_voxel: OddVoxel = "start",
    ) -> None:
        super().__init__(mode="constant", lazy=False)
        _check_odd_voxel(odd_voxel)
        if not (value == "minimum" or isinstance(value, (int, float))):
            raise ValueError(f"value must be a number or 'minimum', got {value!r}")
        self.spatial_size = spatial_size
        self.value = value
        self.odd_voxel = odd_voxel

    @property
    def requires_current_data(self) -> bool:
        return True

    def compute_pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        target = ensure_tuple_rep(self.spatial_size, len(spatial_shape))
        widths = [(0, 0)]
        for size, goal in zip(spatial_shape, target):
            size = int(size)
            widths.append((0, 0) if goal <= 0 or size >= goal else _centred_bounds(size, int(goal), self.odd_voxel))
        return tuple(widths)

    def __call__(  # type: ignore[override]
        self, img: torch.Tensor, mode: str | None = None, lazy: bool | None = None, **kwargs
    ) -> torch.Tensor:
        """Pad ``img`` ``(C, *spatial)``; ``mode`` and ``lazy`` are accepted for API compatibility and ignored.

        Same result and inverse bookkeeping as ``monai.transforms.Pad``, but filled with ``new_full`` plus one slice
        copy, ~3x faster than ``torch.nn.functional.pad`` in constant mode.
        """
        in_shape = [int(s) for s in img.shape[1:]]
        to_pad = self.compute_pad_width(in_shape)
        value = float(img.min()) if self.value == "minimum" else float(self.value)
        out_shape = [s + lo + hi for s, (lo, hi) in zip(in_shape, to_pad[1:])]
        meta_info = TraceableTransform.track_transform_meta(
            img,
            sp_size=out_shape,
            affine=create_translate(len(in_shape), [-lo for lo, _ in to_pad[1:]]),
            extra_info={"padded": to_pad, "mode": "constant"},
            orig_size=in_shape,
            transform_info=self.get_transform_info(),
            lazy=False,
        )
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        out = data.new_full((data.shape[0], *out_shape), value)
        out[(slice(None), *(slice(lo, lo + s) for s, (lo, _) in zip(in_shape, to_pad[1:])))] = data
        out = convert_to_tensor(out, track_meta=get_track_meta())
        return out.copy_meta_from(meta_info) if isinstance(out, MetaTensor) else out


class CentralPadd(Padd):
    """Dictionary wrapper of :class:`CentralPad` (always eager)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        value: float | Literal["minimum"] = 0.0,
        odd_voxel: OddVoxel = "start",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, CentralPad(spatial_size, value, odd_voxel), "constant", allow_missing_keys, lazy=False)

    @property
    def requires_current_data(self) -> bool:
        return True

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        return super().__call__(data, lazy=False)


def _axis_aligned_plan(matrix: np.ndarray, rank: int, atol: float = 1e-6) -> list[tuple[int, float, float]] | None:
    """For an output-to-input voxel map that only permutes, flips, scales and shifts axes, return per output axis
    ``(input axis, scale, offset)``; ``None`` if the map mixes axes (rotation, shear)."""
    linear = matrix[:rank, :rank]
    nonzero = np.abs(linear) > atol
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    source = nonzero.argmax(axis=0)
    return [(int(source[b]), float(linear[source[b], b]), float(matrix[source[b], rank])) for b in range(rank)]


def _linear_taps(coords: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower neighbour, upper neighbour and upper weight for linear interpolation at clamped ``coords``."""
    low = coords.floor().long().clamp_(max=max(n - 2, 0))
    high = (low + 1).clamp_(max=n - 1)
    return low, high, (coords - low).to(torch.float32)


def _banded_interpolation(
    rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor, block: int = 16
) -> torch.Tensor:
    """Linear interpolation along the last axis of ``rows`` ``(R, n)`` as blocks of a banded ``(n, m)`` GEMM."""
    n, m = rows.shape[1], len(low)
    taps = torch.zeros(n, m, dtype=torch.float32)
    columns = torch.arange(m)
    taps.index_put_((low, columns), 1.0 - weight, accumulate=True)
    taps.index_put_((high, columns), weight, accumulate=True)
    taps = taps.to(rows.device)
    out = rows.new_empty(rows.shape[0], m)
    for start in range(0, m, block):
        stop = min(m, start + block)
        first = int(torch.minimum(low[start:stop], high[start:stop]).min())
        last = int(torch.maximum(low[start:stop], high[start:stop]).max()) + 1
        out[:, start:stop] = rows[:, first:last] @ taps[first:last, start:stop]
    return out


def resample_axis_aligned(
    img: torch.Tensor, plan: Sequence[tuple[int, float, float]], spatial_size: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Separable (multi)linear or nearest resampling for axis-aligned voxel maps, with border clamping.

    Output voxel ``j`` along output axis ``b`` samples input axis ``plan[b][0]`` at ``scale * j + offset``: the
    same values as ``grid_sample(..., padding_mode="border", align_corners=False)`` for the equivalent grid, computed
    one axis at a time (most-shrinking axis first, in the input's memory layout) instead of through a dense
    sampling grid. Non-contiguous axes are gathered with ``index_select``; the contiguous last axis, where a gather
    is slow, with a small banded matrix product.

    Args:
        img: ``(C, *spatial)`` tensor (any real dtype; interpolation happens in float32).
        plan: per output axis ``(input axis, scale, offset)`` (see :func:`_axis_aligned_plan`).
        spatial_size: output spatial shape.
        mode: ``"bilinear"`` or ``"nearest"`` (round half to even, like ``grid_sample``).

    Returns:
        ``(C, *spatial_size)`` float32 tensor.
    """
    rank = len(plan)
    x = img.contiguous()
    per_input_axis = {axis: (b, scale, offset) for b, (axis, scale, offset) in enumerate(plan)}
    order = sorted(range(rank), key=lambda a: spatial_size[per_input_axis[a][0]] / x.shape[1 + a])
    for a in order:
        b, scale, offset = per_input_axis[a]
        dim, n, m = 1 + a, x.shape[1 + a], int(spatial_size[b])
        coords = (torch.arange(m, dtype=torch.float64) * scale + offset).clamp_(0, n - 1)
        if mode == "nearest" or bool(torch.all(coords == coords.round())):
            index = coords.round().long()
            if m == n and bool(torch.all(index == torch.arange(n))):
                continue
            if m > 1 and bool(torch.all(index.diff() == 1)):
                x = x.narrow(dim, int(index[0]), m)
            else:
                x = x.index_select(dim, index.to(x.device))
            continue
        low, high, weight = _linear_taps(coords, n)
        if dim == x.ndim - 1:  # a gather along the contiguous axis is slow: use a banded matrix product
            x = _banded_interpolation(x.reshape(-1, n).to(torch.float32), low, high, weight).reshape(*x.shape[:-1], m)
            continue
        shape = [1] * x.ndim
        shape[dim] = -1
        lower = x.index_select(dim, low.to(x.device)).to(torch.float32)
        upper = x.index_select(dim, high.to(x.device)).to(torch.float32)
        x = torch.lerp(lower, upper, weight.to(x.device).view(shape))
    order_out = [1 + plan[b][0] for b in range(rank)]
    return x.permute(0, *order_out).to(torch.float32).contiguous()


def apply_pending_fast(
    img: MetaTensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
    dtype: torch.dtype = torch.float32,
    align_corners: bool = False,
    device: str | torch.device | None = None,
) -> MetaTensor:
    """``monai.transforms.lazy.functional.apply_pending`` with a separable fast path.

    When the accumulated output-to-input voxel map is axis-aligned, ``mode`` is bilinear/nearest, ``padding_mode``
    is ``"border"`` and ``align_corners`` is False, the values come from :func:`resample_axis_aligned`; otherwise
    MONAI resamples. Either way the output carries the same affine and applied-operation trace as MONAI's.

    Args:
        img: MetaTensor with pending operations (returned unchanged if it has none).
        mode: interpolation mode.
        padding_mode: ``grid_sample`` padding mode.
        dtype: precision of MONAI's path.
        align_corners: see ``torch.nn.functional.grid_sample``.
        device: device to resample on; ``None`` keeps the data's device.
    """
    if not img.has_pending_operations:
        return img
    pending = img.pending_operations
    rank = len(img.peek_pending_shape())  # not peek_pending_rank(): see the 4x4 note below
    matrix = to_affine_nd(rank, affine_from_pending(pending[0]))
    for op in pending[1:]:
        matrix = combine_transforms(matrix, to_affine_nd(rank, affine_from_pending(op)))
    matrix_np = convert_to_numpy(matrix, dtype=np.float64)
    plan = _axis_aligned_plan(matrix_np, rank)
    if plan is None or mode not in ("bilinear", "nearest") or padding_mode != "border" or align_corners:
        overrides = {"mode": mode, "padding_mode": padding_mode, "dtype": dtype, "align_corners": align_corners}
        if device is not None:
            overrides["device"] = device
        # MONAI's random transforms record a (4, 4) identity for 2D images when they do not fire, which its
        # apply_pending cannot chain with the (3, 3) matrices of the others: hand it rank-consistent matrices.
        consistent = [
            {**op, LazyAttr.AFFINE: to_affine_nd(rank, affine_from_pending(op))} if isinstance(op, dict) else op
            for op in pending
        ]
        original_affine = convert_to_numpy(img.affine, dtype=np.float64)
        img.clear_pending_operations()
        out = apply_pending(img, pending=consistent, overrides=overrides)[0]
        # keep e.g. a 2D image's (4, 4) affine, as eager execution does
        out.affine = torch.as_tensor(to_affine_nd(original_affine, convert_to_numpy(out.affine, dtype=np.float64)))
        return out
    shape = [int(s) for s in img.peek_pending_shape()]
    source = img.as_tensor() if device is None else img.as_tensor().to(device)
    values = resample_axis_aligned(source, plan, shape, mode)
    out = MetaTensor(values, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    base = convert_to_numpy(img.affine, dtype=np.float64)
    out.affine = torch.as_tensor(to_affine_nd(base, to_affine_nd(rank, base) @ matrix_np))
    for op in pending:
        out.push_applied_operation(op)
    img.clear_pending_operations()
    return out


class ApplyPendingResampled(MapTransform, LazyTrait):
    """Execute pending lazy spatial operations as ONE interpolation, with explicit resampling settings.

    MONAI's ``ApplyPendingd`` resamples with the enclosing ``Compose``'s ``overrides``, i.e. in float64 unless the
    caller remembers ``overrides={key: {"dtype": torch.float32}}``. This transform carries its own settings so the
    pipeline is fast whatever ``Compose`` it ends up in. It declares itself lazy so that ``Compose(lazy=True)``
    leaves the pending operations for it to apply; with ``Compose(lazy=False)`` nothing is pending and it is a
    no-op.

    When the accumulated voxel map is axis-aligned (orientation, spacing, crop, flips: every CT preprocessing
    chain, oblique scans included since the direction cosines are kept) and ``padding_mode="border"``, the
    resampling runs through :func:`resample_axis_aligned` (separable, same values as ``grid_sample``); anything
    else (rotations, other padding modes) goes through MONAI's ``apply_pending``.

    Args:
        keys: keys whose pending operations are applied.
        mode: interpolation mode per key (``"bilinear"`` for images, ``"nearest"`` for label maps).
        padding_mode: ``grid_sample`` padding per key.
        dtype: resampling precision for the MONAI path (the separable path interpolates in float32).
        align_corners: see ``torch.nn.functional.grid_sample``.
        device: device to resample on (e.g. ``"cuda"``; the result stays there). ``None`` keeps the data's device.
        allow_missing_keys: do not raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: Sequence[str] | str = "bilinear",
        padding_mode: Sequence[str] | str = "border",
        dtype: torch.dtype = torch.float32,
        align_corners: bool = False,
        device: str | torch.device | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        self.dtype = dtype
        self.align_corners = align_corners
        self.device = device

    @property
    def lazy(self) -> bool:
        return True

    @lazy.setter
    def lazy(self, value: bool) -> None:  # the transform always applies what is pending
        pass

    @property
    def requires_current_data(self) -> bool:
        return False

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            img = d[key]
            if isinstance(img, MetaTensor) and img.has_pending_operations:
                d[key] = apply_pending_fast(
                    img, str(mode), str(padding_mode), self.dtype, self.align_corners, self.device
                )
        return d


def ct_preprocessing(
    keys: KeysCollection = ("image",),
    *,
    pixdim: Sequence[float] | float = 2.0,
    spatial_size: Sequence[int] | int = 192,
    orientation: str = "RAS",
    hu_range: tuple[float, float] = (-1000.0, 1000.0),
    out_range: tuple[float, float] = (-1.0, 1.0),
    pad_value: float | Literal["minimum"] = "minimum",
    label_keys: KeysCollection = (),
    lazy: bool = True,
    device: str | torch.device | None = None,
    loader: Loader | None = load_volume,
) -> list[Transform]:
    """Deterministic CT preprocessing: load, reorient, resample, window, centre crop/pad.

    The steps are ``loader`` -> ``Orientationd(orientation)`` -> :class:`CentredSpacingd` (trilinear) ->
    :class:`CentralCropd` -> :class:`ApplyPendingResampled` -> ``ScaleIntensityRanged(hu_range -> out_range, clip)``
    -> :class:`CentralPadd`. The field of view is ``pixdim * spatial_size`` mm per axis (384 mm for the COLIPRI
    default 2 mm x 192; the CPU demo's 6 mm x 64 keeps it).

    Args:
        keys: image keys (interpolated trilinearly, intensity-windowed).
        pixdim: output spacing in mm.
        spatial_size: output shape.
        orientation: target axis codes, e.g. ``"RAS"`` (colipri >= 0.1.2) or ``"SAR"`` (colipri 0.1.0/0.1.1).
        hu_range: HU window clamped and mapped to ``out_range``.
        out_range: output intensity range.
        pad_value: fill for padded margins; ``"minimum"`` is the windowed image's minimum (TorchIO ``minimum``).
        label_keys: label maps aligned with the image (nearest interpolation, no windowing, padded with 0).
        lazy: fuse orientation, resampling and crop into one interpolation (run inside ``Compose``; any ``lazy``
            setting of the ``Compose`` gives the same values, ``lazy=True`` is fastest).
        device: device for the fused resampling (``"cuda"`` moves the data there); ``None`` keeps it.
        loader: ``keys -> loading transform``; ``None`` when the data are already MetaTensors.

    Returns:
        The transforms, to be wrapped in ``monai.transforms.Compose``.
    """
    image_keys = ensure_tuple(keys)
    label_keys = ensure_tuple(label_keys)
    spatial_keys = image_keys + label_keys
    if len(orientation) != 3:
        raise ValueError(f"orientation must be three axis codes such as 'RAS', got {orientation!r}")
    if not hu_range[0] < hu_range[1]:
        raise ValueError(f"hu_range must be increasing, got {hu_range}")
    modes = ("bilinear",) * len(image_keys) + ("nearest",) * len(label_keys)
    transforms: list[Transform] = [] if loader is None else [loader(spatial_keys)]
    transforms += [
        Orientationd(spatial_keys, axcodes=orientation, labels=None, lazy=lazy),
        CentredSpacingd(spatial_keys, pixdim=pixdim, mode=modes, padding_mode="border", lazy=lazy),
        CentralCropd(spatial_keys, spatial_size, odd_voxel="start", lazy=lazy),
        ApplyPendingResampled(spatial_keys, mode=modes, padding_mode="border", device=device),
        ScaleIntensityRanged(
            image_keys, a_min=hu_range[0], a_max=hu_range[1], b_min=out_range[0], b_max=out_range[1], clip=True
        ),
        CentralPadd(image_keys, spatial_size, value=pad_value, odd_voxel="start"),
    ]
    if label_keys:
        transforms.append(CentralPadd(label_keys, spatial_size, value=0.0, odd_voxel="start"))
    return transforms


def colipri_preprocessing(
    keys: KeysCollection = ("image",),
    orientation: str = "RAS",
    pixdim: float = 2.0,
    hu_range: tuple[float, float] = (-1000.0, 1000.0),
    out_range: tuple[float, float] = (-1.0, 1.0),
    spatial_size: int = 192,
    lazy: bool = True,
    loader: Loader | None = load_volume,
    device: str | torch.device | None = None,
) -> list[Transform]:
    """The official ``colipri==0.1.3`` image processor as MONAI transforms (see the module docstring).

    Deviations from the TorchIO processor, all below the resolution that matters:

    * SimpleITK resamples integer images in their integer type, so TorchIO's output is quantised to whole HU
      (truncated); ours keeps the interpolated float (at most 1 HU, i.e. 0.001 after rescaling).
    * ``padding_mode="minimum"`` is the minimum over the resampled image; ours is the minimum over the cropped
      field of view. They agree whenever nothing is cropped or the field of view reaches the window floor
      (-1000 HU, i.e. any air), which holds for every chest CT.
    * Interpolation is ``grid_sample`` in float32 (ITK: float64 weights); differences are ~1e-6 HU.

    Args:
        keys: image keys.
        orientation: ``"RAS"`` (colipri 0.1.2+) or ``"SAR"`` (0.1.0/0.1.1; the released weights' training
            orientation is not documented).
        pixdim: isotropic spacing in mm.
        hu_range: HU window.
        out_range: output range.
        spatial_size: output edge length (cube).
        lazy: fuse the spatial steps into one interpolation.
        loader: see :func:`ct_preprocessing`.
        device: see :func:`ct_preprocessing`.
    """
    return ct_preprocessing(
        keys,
        pixdim=pixdim,
        spatial_size=spatial_size,
        orientation=orientation,
        hu_range=hu_range,
        out_range=out_range,
        pad_value="minimum",
        lazy=lazy,
        device=device,
        loader=loader,
    )


def ct_ssl_augmentation(
    keys: KeysCollection = ("image",),
    spatial_size: Sequence[int] | int = 96,
    *,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (0,),
    affine_prob: float = 0.5,
    rotate_degrees: float = 10.0,
    scale_range: float = 0.1,
    intensity_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    contrast_prob: float = 0.3,
    gamma: tuple[float, float] = (0.7, 1.5),
    smooth_prob: float = 0.2,
    smooth_sigma: tuple[float, float] = (0.5, 1.0),
    noise_prob: float = 0.2,
    noise_std: float = 0.05,
    lazy: bool = True,
) -> list[Transform]:
    """Random single-view augmentation for 3D SSL (MAE, contrastive) on preprocessed volumes (e.g. ``[-1, 1]``).

    Spatial (fused into one interpolation when ``lazy``): ``RandSpatialCropd(spatial_size)`` -> ``RandFlipd`` per
    axis in ``flip_axes`` -> ``RandAffined`` (rotation up to ``rotate_degrees`` about every axis, per-axis zoom
    ``1 +- scale_range``, border padding) -> :class:`ApplyPendingResampled`. With lazy resampling the rotated view
    samples real anatomy beyond the crop's edge instead of padding. Intensity, each with its own probability:
    ``RandScaleIntensityd`` (``v * (1 + f)``, ``|f| <= intensity_scale``), ``RandShiftIntensityd``
    (``|offset| <= intensity_shift``, i.e. 100 HU for a [-1000, 1000] window mapped to [-1, 1]),
    ``RandAdjustContrastd(gamma)``, ``RandGaussianSmoothd(smooth_sigma voxels)``, ``RandGaussianNoised(noise_std)``.

    Choices: magnitudes are small because HU carry meaning (DINOv2's colour-jitter strength would shift tissue
    classes); only the left-right axis (axis 0 in RAS) is flipped by default, the analogue of DINOv2's horizontal
    flip; for vision-language training set ``flip_prob=0`` since reports name sides ("left lower lobe").

    Args:
        keys: image keys (all get the same crop, flip and affine).
        spatial_size: crop size in voxels.
        flip_prob: probability of flipping, per axis in ``flip_axes``.
        flip_axes: spatial axes that may be flipped.
        affine_prob: probability of the rotation/zoom.
        rotate_degrees: maximum rotation about each axis.
        scale_range: maximum relative zoom per axis.
        intensity_prob: probability of each of the intensity scale and shift.
        intensity_scale: maximum relative intensity scaling.
        intensity_shift: maximum intensity offset.
        contrast_prob: probability of the gamma change.
        gamma: gamma range.
        smooth_prob: probability of Gaussian smoothing.
        smooth_sigma: smoothing sigma range in voxels.
        noise_prob: probability of Gaussian noise.
        noise_std: noise standard deviation.
        lazy: fuse crop, flips and affine into one interpolation.

    Returns:
        The transforms (all ``Randomizable``; seed them through ``Compose.set_random_state``).
    """
    keys = ensure_tuple(keys)
    for name, prob in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("intensity_prob", intensity_prob),
                       ("contrast_prob", contrast_prob), ("smooth_prob", smooth_prob), ("noise_prob", noise_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    angle = math.radians(rotate_degrees)
    transforms: list[Transform] = [RandSpatialCropd(keys, roi_size=spatial_size, random_size=False, lazy=lazy)]
    transforms += [RandFlipd(keys, prob=flip_prob, spatial_axis=axis, lazy=lazy) for axis in flip_axes]
    transforms += [
        RandAffined(
            keys,
            prob=affine_prob,
            rotate_range=(angle, angle, angle),
            scale_range=(scale_range, scale_range, scale_range),
            mode="bilinear",
            padding_mode="border",
            lazy=lazy,
        ),
        ApplyPendingResampled(keys, mode="bilinear", padding_mode="border"),
        RandScaleIntensityd(keys, factors=intensity_scale, prob=intensity_prob),
        RandShiftIntensityd(keys, offsets=intensity_shift, prob=intensity_prob),
        RandAdjustContrastd(keys, prob=contrast_prob, gamma=gamma),
        RandGaussianSmoothd(keys, sigma_x=smooth_sigma, sigma_y=smooth_sigma, sigma_z=smooth_sigma, prob=smooth_prob),
        RandGaussianNoised(keys, prob=noise_prob, mean=0.0, std=noise_std),
    ]
    return transforms
