"""Body masks as dictionary transforms, computed in the data pipeline (workers) so that the training step needs no CPU
work: G2D zeroes the attention outside the body before thresholding its pseudo-masks (Liu et al., NeurIPS 2024,
§3.2: "histogram-based thresholding", after Ouyang et al. 2020 / nnU-Net practice; Table 5f).

* CT (:class:`CTBodyMaskd`): ``HU > -500`` -> largest connected component -> holes filled. The threshold is in HU;
  on an image already windowed by ``ScaleIntensityRange(hu_range -> out_range)`` give ``hu_range``/``out_range`` and
  it is mapped there. Holes are filled per slice across ``slice_axis`` (default the last spatial axis: axial in RAS
  and in the voxel order of nearly every scan): the airway leaves a chest CT through its top slice, so a 3D fill
  leaves the lungs, which are body, outside (``slice_axis=None`` is MONAI's 3D ``FillHoles``).
* Radiographs (:class:`RadiographBodyMaskd`): the lowest multi-Otsu threshold of the image histogram (3 classes by
  default: background, lung fields, dense tissue; plain 2-class Otsu cuts the dark lungs out) -> largest component ->
  holes filled (MONAI ``FillHoles``). Otsu is invariant to positive affine intensity maps, so the mask is the same
  before or after normalisation.

The largest component is found with ``scipy.ndimage.label`` (same full connectivity as MONAI's
``KeepLargestConnectedComponent``, which needs scikit-image, not a dependency of this project). Masks are
``(1, *spatial)`` (uint8 by default) MetaTensors carrying the image's metadata (affine, applied operations), so later
spatial transforms can treat them as label keys (nearest interpolation).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, MapTransform, Transform
from monai.utils import convert_to_numpy
from scipy import ndimage

__all__ = [
    "CTBodyMask",
    "CTBodyMaskd",
    "RadiographBodyMask",
    "RadiographBodyMaskd",
    "fill_holes",
    "keep_largest_component",
    "otsu_thresholds",
]


def otsu_thresholds(values: np.ndarray | torch.Tensor, classes: int = 2, bins: int = 256) -> np.ndarray:
    """(Multi-)Otsu thresholds of the histogram of ``values`` (``bins`` bins over [min, max] of the finite values).

    Returns the ``classes - 1`` increasing thresholds, as bin centres: foreground is ``values > threshold``
    (scikit-image's ``threshold_otsu``/``threshold_multiotsu`` conventions). ``classes`` is 2 or 3.

    Raises:
        ValueError: for another ``classes``, or when the finite values are fewer than two distinct numbers.
    """
    if classes not in (2, 3):
        raise ValueError(f"classes must be 2 or 3, got {classes}")
    v = convert_to_numpy(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        raise ValueError("Otsu needs at least two distinct finite values")
    hist, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    count = np.cumsum(hist)  # pixels in bins [0, i], exact integers
    moment = np.cumsum(hist * centres)
    n, total = count[-1], moment[-1]
    if classes == 2:  # bins [0, i] and (i, end)
        w0, w1 = count[:-1], n - count[:-1]
        m0, m1 = moment[:-1], total - moment[:-1]
        valid = (w0 > 0) & (w1 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            between = np.where(valid, w0 * w1 * (m0 / w0 - m1 / w1) ** 2, -np.inf)
        return centres[[int(np.argmax(between))]]
    # three classes: bins [0, i], (i, j], (j, end); maximise sum_k M_k^2 / W_k (between-class variance + constant)
    i, j = np.triu_indices(bins - 1, k=1)
    w = np.stack([count[i], count[j] - count[i], n - count[j]]).astype(np.float64)
    m = np.stack([moment[i], moment[j] - moment[i], total - moment[j]])
    valid = (w > 0).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(valid, (m * m / w).sum(axis=0), -np.inf)
    best = int(np.argmax(score))
    return centres[[i[best], j[best]]]


def keep_largest_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a boolean ``mask`` (any dimension); ``connectivity`` is the number of
    orthogonal hops between neighbours, ``None`` = full (MONAI/scikit-image default). Ties: the first in raster
    order. An empty mask stays empty."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, slice_axis: int | None = None, connectivity: int | None = None) -> np.ndarray:
    """Fill the background regions of a boolean ``mask`` not connected to the array border.

    ``slice_axis=None``: holes enclosed in the whole array (MONAI ``FillHoles``). Otherwise holes enclosed within each
    slice perpendicular to ``slice_axis`` (background connected only in-plane), which includes every 3D hole.
    ``connectivity`` of the background, ``None`` = full (in-plane when slicing).
    """
    mask = np.asarray(mask, dtype=bool)
    if slice_axis is None:
        filled = FillHoles(applied_labels=1, connectivity=connectivity)(mask[None].astype(np.uint8))
        return np.asarray(filled[0], dtype=bool)
    if mask.ndim < 3:
        raise ValueError(f"slice-wise filling needs a 3D mask, got {mask.ndim}D")
    axis = slice_axis % mask.ndim
    in_plane = ndimage.generate_binary_structure(mask.ndim - 1, connectivity or mask.ndim - 1)
    structure = np.zeros((3,) * mask.ndim, dtype=bool)
    structure[(slice(None),) * axis + (1,)] = in_plane  # neighbours within the slice only
    return ndimage.binary_fill_holes(mask, structure=structure)


def _image_array(img: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(img, MetaTensor) and img.pending_operations:
        raise ValueError(f"{name}: the image has pending (lazy) operations; apply them first (ApplyPendingd)")
    if img.ndim < 3 or img.shape[0] != 1:
        raise ValueError(f"{name} expects a one-channel (1, *spatial) image, got shape {tuple(img.shape)}")
    return convert_to_numpy(img)[0]


def _as_output(mask: np.ndarray, img: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    out = torch.as_tensor(mask[None]).to(dtype)
    if isinstance(img, MetaTensor):
        meta = MetaTensor(out)
        meta.copy_meta_from(img)
        return meta
    return out


def _clean(
    mask: np.ndarray, largest_component: bool, holes: bool, slice_axis: int | None, connectivity: int | None
) -> np.ndarray:
    if largest_component:
        mask = keep_largest_component(mask, connectivity)
    if holes:
        mask = fill_holes(mask, slice_axis, connectivity)
    return mask


class _BodyMask(Transform):
    """Shared clean-up of a thresholded body: largest component, holes filled, output dtype and metadata."""

    def __init__(
        self,
        largest_component: bool,
        fill_holes: bool,
        connectivity: int | None,
        dtype: torch.dtype,
        slice_axis: int | None = None,
    ) -> None:
        self.largest_component = largest_component
        self.fill_holes = fill_holes
        self.connectivity = connectivity
        self.dtype = dtype
        self.slice_axis = slice_axis

    def _finish(self, body: np.ndarray, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        slice_axis = self.slice_axis if body.ndim >= 3 else None
        mask = _clean(body, self.largest_component, self.fill_holes, slice_axis, self.connectivity)
        return _as_output(mask, img, self.dtype)


class CTBodyMask(_BodyMask):
    """Body mask ``(1, *spatial)`` of a one-channel CT image: ``HU > hu_threshold`` -> largest component -> holes
    filled (see the module docstring).

    Args:
        hu_threshold: body threshold in HU (-500 separates air, below about -900, from skin and fat).
        hu_range: ``None`` for an image in HU. For an image windowed by ``ScaleIntensityRange(hu_range -> out_range)``
            (``ct_preprocessing``'s ``hu_range``, e.g. ``(-1000, 1000)``) the threshold is mapped into ``out_range``.
        out_range: the window's output range.
        largest_component: keep only the largest connected component (drops the table, arms held apart, noise).
        fill_holes: fill enclosed holes (lungs, airways, bowel gas).
        slice_axis: spatial axis across which holes are filled slice by slice (negative counts from the end); ``None``
            fills 3D holes only.
        connectivity: neighbourhood (orthogonal hops) for the component and the holes; ``None`` = full.
        dtype: output dtype.
    """

    def __init__(
        self,
        hu_threshold: float = -500.0,
        hu_range: Sequence[float] | None = None,
        out_range: Sequence[float] = (-1.0, 1.0),
        largest_component: bool = True,
        fill_holes: bool = True,
        slice_axis: int | None = -1,
        connectivity: int | None = None,
        dtype: torch.dtype = torch.uint8,
    ) -> None:
        self.threshold = float(hu_threshold)
        if hu_range is not None:
            a_min, a_max = (float(v) for v in hu_range)
            b_min, b_max = (float(v) for v in out_range)
            if not a_min < hu_threshold < a_max:
                raise ValueError(f"hu_threshold {hu_threshold} must lie inside the window hu_range {tuple(hu_range)}")
            self.threshold = b_min + (hu_threshold - a_min) * (b_max - b_min) / (a_max - a_min)
        super().__init__(largest_component, fill_holes, connectivity, dtype, slice_axis)

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``img`` ``(1, *spatial)`` -> body mask ``(1, *spatial)`` with ``img``'s metadata."""
        return self._finish(_image_array(img, type(self).__name__) > self.threshold, img)


class RadiographBodyMask(_BodyMask):
    """Body mask ``(1, H, W)`` of a one-channel radiograph: ``image >`` the lowest multi-Otsu threshold -> largest
    component -> holes filled. A constant image has no threshold: its mask is all body (nothing is excluded).

    Args:
        classes: Otsu classes, 3 (background / lungs / dense tissue; default) or 2 (plain Otsu).
        bins: histogram bins.
        largest_component: keep only the largest connected component (drops markers, text, collimator edges).
        fill_holes: fill enclosed holes (MONAI ``FillHoles``).
        connectivity: neighbourhood (orthogonal hops); ``None`` = full.
        dtype: output dtype.
    """

    def __init__(
        self,
        classes: int = 3,
        bins: int = 256,
        largest_component: bool = True,
        fill_holes: bool = True,
        connectivity: int | None = None,
        dtype: torch.dtype = torch.uint8,
    ) -> None:
        if classes not in (2, 3):
            raise ValueError(f"classes must be 2 or 3, got {classes}")
        super().__init__(largest_component, fill_holes, connectivity, dtype)
        self.classes = classes
        self.bins = bins

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``img`` ``(1, H, W)`` -> body mask ``(1, H, W)`` with ``img``'s metadata."""
        array = _image_array(img, type(self).__name__)
        finite = array[np.isfinite(array)]
        if finite.size == 0 or finite.min() == finite.max():
            return _as_output(np.ones(array.shape, dtype=bool), img, self.dtype)
        return self._finish(array > otsu_thresholds(finite, self.classes, self.bins)[0], img)


class _BodyMaskd(MapTransform):
    """Writes the body mask of the one image key to ``mask_key``."""

    def __init__(
        self, keys: KeysCollection, mask_key: Hashable, transform: Transform, allow_missing_keys: bool
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} reads one image key, got {self.keys}")
        self.mask_key = mask_key
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.transform(d[key])
        return d


class CTBodyMaskd(_BodyMaskd):
    """Dictionary wrapper of :class:`CTBodyMask`: ``data[mask_key]`` = body mask of ``data[keys]`` (one key)."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: Hashable = "body",
        hu_threshold: float = -500.0,
        hu_range: Sequence[float] | None = None,
        out_range: Sequence[float] = (-1.0, 1.0),
        largest_component: bool = True,
        fill_holes: bool = True,
        slice_axis: int | None = -1,
        connectivity: int | None = None,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = CTBodyMask(
            hu_threshold, hu_range, out_range, largest_component, fill_holes, slice_axis, connectivity, dtype
        )
        super().__init__(keys, mask_key, transform, allow_missing_keys)


class RadiographBodyMaskd(_BodyMaskd):
    """Dictionary wrapper of :class:`RadiographBodyMask`: ``data[mask_key]`` = body mask of ``data[keys]``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: Hashable = "body",
        classes: int = 3,
        bins: int = 256,
        largest_component: bool = True,
        fill_holes: bool = True,
        connectivity: int | None = None,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RadiographBodyMask(classes, bins, largest_component, fill_holes, connectivity, dtype)
        super().__init__(keys, mask_key, transform, allow_missing_keys)
