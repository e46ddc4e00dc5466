"""Transforms between an image grid and a patch encoder's token grid (sliding windows, maps back onto the scan).

* :class:`WindowGridPadd` pads an image so that sliding windows of the training field of view tile it on the
  encoder's patch grid (:func:`sliding_window_preprocessing` swaps a bundle's centre crop/pad for it);
* :class:`PatchGridd` gives a token-grid map ``(K, *grid)`` the world affine of the token grid (token ``i`` sits at
  the centre of its patch);
* :class:`ResampleToOriginald` interpolates such a map once, directly onto the voxels of the original scan (the
  loader's ``original_affine`` and ``spatial_shape``), instead of upsampling to the preprocessed grid and then
  resampling a second time.

Used with :class:`common.inferers.PatchSlidingWindowInferer` by every bundle that writes dense maps.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Padd, SpatialResample, Transform
from monai.utils import convert_to_numpy, ensure_tuple, ensure_tuple_rep

from common.transforms.spatial import CentralCropd, CentralPad, CentralPadd, FusedResampled, apply_pending_fast

__all__ = [
    "PatchGridd",
    "ResampleToOriginald",
    "WindowGridPad",
    "WindowGridPadd",
    "sliding_window_preprocessing",
    "window_grid_size",
]


def window_grid_size(
    spatial_shape: Sequence[int], roi_size: Sequence[int] | int, patch_size: Sequence[int] | int
) -> tuple[int, ...]:
    """Per axis ``max(roi, ceil(n / patch) * patch)``: the padded size sliding windows tile on the patch grid."""
    rank = len(spatial_shape)
    roi, patch = ensure_tuple_rep(roi_size, rank), ensure_tuple_rep(patch_size, rank)
    return tuple(max(int(r), math.ceil(int(n) / int(p)) * int(p)) for n, r, p in zip(spatial_shape, roi, patch))


class WindowGridPad(CentralPad):
    """Centre-pad each axis to :func:`window_grid_size` (at least the ROI, a multiple of the patch size).

    Same fill, odd-voxel rule and inverse bookkeeping as :class:`~common.transforms.spatial.CentralPad`, so a scan no
    larger than the ROI is padded exactly as the centre crop/pad preprocessing pads it.

    Args:
        roi_size: sliding-window size (the training field of view in voxels).
        patch_size: the encoder's patch size.
        value: fill value or ``"minimum"`` (the image's minimum).
        odd_voxel: side that gets the extra voxel of an odd deficit.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        value: float | Literal["minimum"] = "minimum",
        odd_voxel: Literal["start", "end"] = "start",
    ) -> None:
        super().__init__(roi_size, value, odd_voxel)
        if any(int(p) < 1 for p in ensure_tuple(patch_size)):
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.roi_size = roi_size
        self.patch_size = patch_size

    def compute_pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        target = window_grid_size(spatial_shape, self.roi_size, self.patch_size)
        return CentralPad(target, self.value, self.odd_voxel).compute_pad_width(spatial_shape)


class WindowGridPadd(Padd):
    """Dictionary wrapper of :class:`WindowGridPad` (always eager)."""

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        value: float | Literal["minimum"] = "minimum",
        odd_voxel: Literal["start", "end"] = "start",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, WindowGridPad(roi_size, patch_size, value, odd_voxel), "constant", allow_missing_keys)

    @property
    def requires_current_data(self) -> bool:
        return True

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        return super().__call__(data, lazy=False)


def sliding_window_preprocessing(
    transforms: Sequence[Transform],
    roi_size: Sequence[int] | int,
    patch_size: Sequence[int] | int,
    keys: KeysCollection = ("image",),
    value: float | Literal["minimum"] = "minimum",
) -> list[Transform]:
    """A bundle's deterministic preprocessing without its centre crop/pad, padded for sliding windows instead.

    Drops every :class:`~common.transforms.spatial.CentralCropd` / :class:`~common.transforms.spatial.CentralPadd` of
    ``transforms``, also a crop fused into a :class:`~common.transforms.spatial.FusedResampled`
    (``ct_preprocessing``: orientation, spacing and HU window remain; ``xray_preprocessing``: the shorter edge is
    still resized to the ROI) and appends :class:`WindowGridPadd`.
    """
    kept, dropped = [], False
    for transform in transforms:
        if isinstance(transform, FusedResampled) and any(isinstance(t, CentralCropd) for t in transform.transforms):
            transform, dropped = transform.without(CentralCropd), True  # the crop fused into the resampling
        if isinstance(transform, (CentralCropd, CentralPadd)):
            dropped = True
            continue
        kept.append(transform)
    if not dropped:
        raise ValueError(
            "the preprocessing has no CentralCropd/CentralPadd to replace; does it end in a centre crop/pad?"
        )
    return [*kept, WindowGridPadd(keys, roi_size, patch_size, value=value)]


def _patch_grid_affine(affine: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """World affine of the token grid: token ``i`` sits at the centre of voxels ``[i*p, (i+1)*p)``."""
    rank = len(patch)
    scale = np.eye(rank + 1)
    for axis, p in enumerate(patch):
        scale[axis, axis] = p
        scale[axis, rank] = (p - 1) / 2.0
    out = np.array(affine, dtype=np.float64)
    nd = np.eye(rank + 1)
    nd[:rank, :rank], nd[:rank, rank] = out[:rank, :rank], out[:rank, -1]
    mapped = nd @ scale
    out[:rank, :rank], out[:rank, -1] = mapped[:rank, :rank], mapped[:rank, rank]
    return out


class PatchGridd(MapTransform):
    """Give a token-grid map ``(K, *grid)`` the meta data of its image ``ref_key`` and the token grid's affine.

    Args:
        keys: maps at patch resolution (e.g. ``similarity``).
        ref_key: the preprocessed image the map was computed from (a MetaTensor).
        patch_size: the encoder's patch size.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str, patch_size: Sequence[int] | int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.patch_size = patch_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        if not isinstance(ref, MetaTensor):
            raise TypeError(f"{self.ref_key!r} must be a MetaTensor with an affine to place the map in space")
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key]).detach().float()
            rank = values.ndim - 1
            patch = ensure_tuple_rep(self.patch_size, rank)
            expected = tuple(int(n) // int(p) for n, p in zip(ref.shape[1:], patch))
            if tuple(values.shape[1:]) != expected:
                raise ValueError(
                    f"{key!r} grid {tuple(values.shape[1:])} does not tile {self.ref_key!r} "
                    f"{tuple(ref.shape[1:])} with patches {patch}"
                )
            meta = {k: v for k, v in ref.meta.items() if k != "affine"}
            affine = _patch_grid_affine(convert_to_numpy(ref.affine, dtype=np.float64), patch)
            d[key] = MetaTensor(values.cpu(), affine=torch.as_tensor(affine), meta=meta)
        return d


class ResampleToOriginald(MapTransform):
    """Resample maps onto the original scan's voxel grid (the loader's ``original_affine`` and ``spatial_shape``).

    One interpolation (trilinear / bilinear, border values outside the map's extent) from the map's own affine;
    axis-aligned maps go through :func:`~common.transforms.spatial.apply_pending_fast` (separable). The result's affine
    is the original one, so :class:`~monai.transforms.SaveImaged` writes a file that overlays the input scan.
    """

    def __init__(self, keys: KeysCollection, mode: str = "bilinear", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = mode
        self.resampler = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float32, lazy=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or "original_affine" not in img.meta or "spatial_shape" not in img.meta:
                raise ValueError(
                    f"{key!r} needs MetaTensor meta 'original_affine' and 'spatial_shape' (from the loader)"
                )
            shape = tuple(int(s) for s in convert_to_numpy(img.meta["spatial_shape"]))
            original = torch.as_tensor(convert_to_numpy(img.meta["original_affine"], dtype=np.float64))
            out = self.resampler(img, dst_affine=original, spatial_size=shape)
            if out.has_pending_operations:
                out = apply_pending_fast(out, mode=self.mode, padding_mode="border")
            out.affine = original
            d[key] = out
        return d
