"""Modality-neutral spatial transforms for channel-first ``(C, *spatial)`` tensors, 2D or 3D.

* :class:`CentralCrop` / :class:`CentralPad` (and their dictionary versions): centred crop and constant pad that
  choose the side taking the odd voxel, ``"start"`` as TorchIO ``CropOrPad`` or ``"end"`` as torchvision / Hugging
  Face ``center_crop`` (MONAI's centre crop/pad put it at the end), with the image minimum as a possible pad value
  (TorchIO ``padding_mode="minimum"``).
* :func:`apply_pending_fast` / :class:`ApplyPendingResampled`: run MONAI's pending lazy spatial operations as ONE
  interpolation with explicit settings. Axis-aligned voxel maps (orientation, spacing, crop, flips) are resampled
  separably by :func:`resample_axis_aligned` (same values as ``grid_sample``); anything else (rotations) by MONAI.
* :class:`FusedResampled`: a chain of spatial transforms run that way inside any ``Compose`` (MONAI's default
  ``Compose(lazy=False)`` would run them one by one, interpolating voxels a later crop discards).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.data.utils import to_affine_nd
from monai.transforms import Crop, Cropd, InvertibleTransform, MapTransform, Pad, Padd, TraceableTransform
from monai.transforms.lazy.functional import apply_pending
from monai.transforms.lazy.utils import affine_from_pending, combine_transforms
from monai.transforms.traits import LazyTrait
from monai.transforms.utils import create_translate
from monai.utils import LazyAttr, convert_to_numpy, convert_to_tensor, ensure_tuple_rep

__all__ = [
    "ApplyPendingResampled",
    "CentralCrop",
    "CentralCropd",
    "CentralPad",
    "CentralPadd",
    "FusedResampled",
    "OddVoxel",
    "apply_pending_fast",
    "resample_axis_aligned",
]

OddVoxel = Literal["start", "end"]


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

        Same result and inverse bookkeeping as ``monai.transforms.Pad``, but one slice copy into an empty output and
        a constant fill of the margins only, ~3x faster than ``torch.nn.functional.pad`` in constant mode.
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
        out = data.new_empty((data.shape[0], *out_shape))
        out[(slice(None), *(slice(lo, lo + s) for s, (lo, _) in zip(in_shape, to_pad[1:])))] = data
        for dim, (size, (lo, hi)) in enumerate(zip(in_shape, to_pad[1:]), start=1):  # fill the margins only
            out.narrow(dim, 0, lo).fill_(value)
            out.narrow(dim, lo + size, hi).fill_(value)
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


def _lerp_slabs(x: torch.Tensor, dim: int, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along a non-contiguous axis ``dim``: each output slab ``j`` is the ``lerp`` of two input
    slabs, written in place into the float32 output (no gathered copies of the two neighbours)."""
    shape = list(x.shape)
    shape[dim] = len(low)
    out = torch.empty(shape, dtype=torch.float32, device=x.device)
    for j, (a, b, w) in enumerate(zip(low.tolist(), high.tolist(), weight.tolist())):
        lower, upper = x.select(dim, a).to(torch.float32), x.select(dim, b).to(torch.float32)
        torch.lerp(lower, upper, w, out=out.select(dim, j))
    return out


def resample_axis_aligned(
    img: torch.Tensor, plan: Sequence[tuple[int, float, float]], spatial_size: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Separable (multi)linear or nearest resampling for axis-aligned voxel maps, with border clamping.

    Output voxel ``j`` along output axis ``b`` samples input axis ``plan[b][0]`` at ``scale * j + offset``: the
    same values as ``grid_sample(..., padding_mode="border", align_corners=False)`` for the equivalent grid, computed
    one axis at a time instead of through a dense sampling grid. The input is first narrowed (a view) to the voxels
    the output reads (a crop after resampling costs nothing) and taken in its own memory order (a Fortran-ordered
    volume is not copied); then the most-shrinking axis goes first, and the volume is put into the output's axis
    order (one copy) where it is smallest: before the first enlarging pass, or at the end. Values are converted to
    float32 only once read, so integer input (int16 CT) may come as stored. A non-contiguous axis is interpolated
    one output slab at a time (``lerp`` of two input slabs into the output, or ``index_select`` for nearest); the
    contiguous last axis, where a gather is slow, with a small banded matrix product.

    Args:
        img: ``(C, *spatial)`` tensor, any strides (any real dtype; interpolation happens in float32).
        plan: per output axis ``(input axis, scale, offset)`` (see :func:`_axis_aligned_plan`).
        spatial_size: output spatial shape.
        mode: ``"bilinear"`` or ``"nearest"`` (round half to even, like ``grid_sample``).

    Returns:
        ``(C, *spatial_size)`` float32 tensor.
    """
    rank = len(plan)
    memory = sorted(range(rank), key=lambda a: -img.stride(1 + a))  # input axes, largest stride first
    x = img.permute(0, *(1 + a for a in memory))
    layout = list(memory)  # the input axis each spatial axis of x holds
    samplers: dict[int, tuple[torch.Tensor, ...]] = {}  # input axis -> (index,) or (low, high, weight)
    for b, (axis, scale, offset) in enumerate(plan):
        dim, n = 1 + layout.index(axis), img.shape[1 + axis]
        coords = (torch.arange(int(spatial_size[b]), dtype=torch.float64) * scale + offset).clamp_(0, n - 1)
        if mode == "nearest" or bool(torch.all(coords == coords.round())):
            taps: tuple[torch.Tensor, ...] = (coords.round().long(),)
        else:
            taps = _linear_taps(coords, n)
        first = min(int(t.min()) for t in taps[:2])
        last = max(int(t.max()) for t in taps[:2])
        x = x.narrow(dim, first, last - first + 1)
        samplers[axis] = (*(t - first for t in taps[:2]), *taps[2:])
    # most-shrinking axis first (on a tie, the banded product of the contiguous axis after the other)
    order = sorted(samplers, key=lambda a: (len(samplers[a][0]) / x.shape[1 + layout.index(a)], layout[-1] == a))
    target = [axis for axis, _, _ in plan]  # the output's axis order
    for axis in order:
        taps = samplers[axis]
        if layout != target and len(taps[0]) > x.shape[1 + layout.index(axis)]:
            # the remaining passes only enlarge the volume: take it into the output's order now, while it is smallest
            x = x.permute(0, *(1 + layout.index(a) for a in target)).contiguous()
            layout = target
        dim = 1 + layout.index(axis)
        if len(taps) == 1:
            if not (len(taps[0]) == x.shape[dim] and bool(torch.all(taps[0] == torch.arange(x.shape[dim])))):
                x = x.index_select(dim, taps[0].to(x.device))
            continue
        low, high, weight = taps
        n, m = x.shape[dim], len(low)
        if dim == x.ndim - 1:  # a gather along the contiguous axis is slow: use a banded matrix product
            rows = x.to(torch.float32).reshape(-1, n)  # a view where the rows allow it (a narrowed last axis does)
            x = _banded_interpolation(rows, low, high, weight).view(*x.shape[:-1], m)
            continue
        x = _lerp_slabs(x, dim, low, high, weight)
    return x.permute(0, *(1 + layout.index(a) for a in target)).to(torch.float32).contiguous()


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


class FusedResampled(MapTransform, InvertibleTransform):
    """Spatial dictionary transforms run lazily and executed as ONE interpolation, whatever ``Compose`` runs them.

    ``Compose(lazy=False)`` (MONAI's default, and what the bundles' training configs build) calls every transform
    eagerly: a re-orientation copies the volume, the resampling covers the whole input and a crop then discards
    part of it. Here the steps always accumulate as pending operations and :class:`ApplyPendingResampled` applies
    them at once, so only the voxels that survive the crop are interpolated (separably where the voxel map is
    axis-aligned). The output carries the steps' applied operations; :meth:`inverse` undoes the steps in reverse.

    Args:
        transforms: lazy-capable spatial dictionary transforms (e.g. ``Orientationd``, ``Spacingd``, a crop).
        mode: interpolation mode per key of the union of the transforms' keys, in order (see
            :class:`ApplyPendingResampled`).
        padding_mode: ``grid_sample`` padding per key.
        device: device to resample on; ``None`` keeps the data's device.
    """

    def __init__(
        self,
        transforms: Sequence[MapTransform],
        mode: Sequence[str] | str = "bilinear",
        padding_mode: Sequence[str] | str = "border",
        device: str | torch.device | None = None,
    ) -> None:
        keys = tuple(dict.fromkeys(key for t in transforms for key in t.keys))
        MapTransform.__init__(self, keys, allow_missing_keys=False)
        for transform in transforms:
            if not isinstance(transform, LazyTrait):
                raise TypeError(f"{type(transform).__name__} cannot run lazily, so it cannot be fused")
        self.transforms = list(transforms)
        self.apply = ApplyPendingResampled(keys, mode=mode, padding_mode=padding_mode, device=device)

    def without(self, kind: type | tuple[type, ...]) -> FusedResampled:
        """The same fused step without its transforms of type ``kind`` (e.g. the crop, for sliding windows)."""
        fused = copy.copy(self)
        fused.transforms = [t for t in self.transforms if not isinstance(t, kind)]
        return fused

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for transform in self.transforms:
            d = transform(d, lazy=True)
        return self.apply(d)

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for transform in reversed(self.transforms):
            d = transform.inverse(d)
        return d
