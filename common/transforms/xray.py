"""2D radiograph dictionary transforms and the radiograph preprocessing builder (RAD-DINO preprocessing).

Images are channel-first ``(C, H, W)`` MetaTensors with rows top to bottom, as loaded by
:class:`common.data.readers.LoadRadiographd` (which already applies the DICOM Modality LUT, the VOI LUT/window and
MONOCHROME1 inversion, so dense tissue is bright). Note that MONAI's own ``PILReader``/``PydicomReader`` return
transposed ``(W, H)`` arrays by default; do not mix them in.

**RAD-DINO parity.** :func:`xray_preprocessing` reproduces the Hugging Face image processor of ``microsoft/rad-dino``
(``BitImageProcessor``: resize the shortest edge to 518 with bicubic, centre crop 518, rescale 1/255, normalise with
mean 0.5307 / std 0.2583), on one channel and in float instead of through an 8-bit PIL image.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensityd,
    RepeatChanneld,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import ensure_tuple

from common.data.readers import LoadRadiographd, LoadRadiographMaskd
from common.transforms.spatial import CentralCropd

__all__ = [
    "RAD_DINO_MEAN",
    "RAD_DINO_STD",
    "ResizeShortestEdge",
    "ResizeShortestEdged",
    "load_radiograph",
    "shortest_edge_size",
    "xray_preprocessing",
]

#: ``microsoft/rad-dino`` ``preprocessor_config.json`` normalisation (MIMIC-CXR statistics), per grey channel.
RAD_DINO_MEAN = 0.5307
RAD_DINO_STD = 0.2583

Loader = Callable[[Sequence[Hashable]], Transform]


def load_radiograph(keys: KeysCollection) -> Transform:
    """Default radiograph loader: :class:`common.data.readers.LoadRadiographd` (validated ``(1, H, W)`` float32)."""
    return LoadRadiographd(keys)


def shortest_edge_size(spatial_shape: Sequence[int], size: int) -> tuple[int, int]:
    """Output ``(H, W)`` when the shorter edge becomes ``size`` (longer edge truncated, as Hugging Face/torchvision)."""
    height, width = (int(s) for s in spatial_shape)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if height > width else (size, new_long)


class ResizeShortestEdge(Transform):
    """Resize a ``(C, H, W)`` image so that its shorter edge is ``size``, keeping the aspect ratio.

    MONAI's ``Resize(size_mode="longest")`` fixes the *longer* edge; this is the torchvision/Hugging Face
    ``Resize(int)`` semantics. ``torch.nn.functional.interpolate`` with ``antialias=True`` reproduces Pillow's
    filtering when downsampling.

    Args:
        size: target length of the shorter edge.
        mode: ``"bicubic"`` (RAD-DINO's processor), ``"bilinear"``, or ``"nearest"`` for label maps.
        antialias: low-pass filter when downsampling (as Pillow does; ignored for ``"nearest"``).
        clip: clamp the output to the input's value range (bicubic overshoots; an 8-bit image saturates there).
    """

    def __init__(self, size: int, mode: str = "bicubic", antialias: bool = True, clip: bool = True) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"mode must be 'bicubic', 'bilinear' or 'nearest', got {mode!r}")
        self.size = int(size)
        self.mode = mode
        self.antialias = antialias and mode != "nearest"
        self.clip = clip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Resize ``img`` ``(C, H, W)``; a MetaTensor's affine is rescaled to the new pixel size."""
        if img.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(img.shape)}")
        in_shape = tuple(int(s) for s in img.shape[1:])
        out_shape = shortest_edge_size(in_shape, self.size)
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if out_shape == in_shape:
            return img
        if self.mode == "nearest":  # pixel centres (align_corners=False semantics), as label maps need
            values = F.interpolate(data[None].float(), size=out_shape, mode="nearest-exact")[0]
        else:
            values = F.interpolate(
                data[None].float(), size=out_shape, mode=self.mode, align_corners=False, antialias=self.antialias
            )[0]
        if self.clip:
            values = values.clamp_(float(data.min()), float(data.max()))
        if not isinstance(img, MetaTensor):
            return values
        out = MetaTensor(values, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        scale = torch.eye(3, dtype=torch.float64)
        for axis in range(2):
            factor = in_shape[axis] / out_shape[axis]
            scale[axis, axis] = factor
            scale[axis, 2] = 0.5 * (factor - 1.0)  # pixel-area (align_corners=False) correspondence
        affine = img.affine.to(torch.float64)
        affine_2d = torch.eye(3, dtype=torch.float64)
        affine_2d[:2, :2], affine_2d[:2, 2] = affine[:2, :2], affine[:2, -1]
        new = affine_2d @ scale
        affine = affine.clone()
        affine[:2, :2], affine[:2, -1] = new[:2, :2], new[:2, 2]
        out.affine = affine
        return out


class ResizeShortestEdged(MapTransform):
    """Dictionary wrapper of :class:`ResizeShortestEdge`."""

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: str = "bicubic",
        antialias: bool = True,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeShortestEdge(size, mode, antialias, clip)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d


def xray_preprocessing(
    keys: KeysCollection = ("image",),
    spatial_size: int = 518,
    *,
    intensity_range: str | tuple[float, float] = "minmax",
    mean: float | None = RAD_DINO_MEAN,
    std: float | None = RAD_DINO_STD,
    num_channels: int = 1,
    mode: str = "bicubic",
    loader: Loader | None = load_radiograph,
    resize_size: int | None = None,
    label_keys: KeysCollection = (),
) -> list[Transform]:
    """Deterministic radiograph preprocessing: load, scale to [0, 1], resize, centre crop, normalise.

    Steps: ``loader`` -> intensity to [0, 1] (``ScaleIntensityd`` min-max, or ``ScaleIntensityRanged`` for a fixed
    ``intensity_range`` such as ``(0, 255)``) -> :class:`ResizeShortestEdged` (bicubic, antialiased, clipped to
    [0, 1]) -> :class:`~common.transforms.spatial.CentralCropd` (``spatial_size`` square, odd pixel at the end as
    Hugging Face ``center_crop``) -> ``NormalizeIntensityd(mean, std)`` -> optionally ``RepeatChanneld`` to 3 channels.

    ``"minmax"`` matches RAD-DINO's data preparation (DICOMs min-max scaled to 8 bits); for images already stored
    that way it equals the processor's ``1/255``. Use ``intensity_range=(0, 255)`` for exact processor semantics on
    arbitrary 8-bit files.

    Args:
        keys: image keys.
        spatial_size: output edge length (518 = 37 x 14 patches for RAD-DINO).
        intensity_range: ``"minmax"`` or the ``(low, high)`` input values mapped to 0 and 1 (clipped).
        mean: normalisation mean (``None`` skips normalisation, leaving [0, 1]).
        std: normalisation standard deviation.
        num_channels: 1, or 3 to replicate the grey channel for RGB backbones.
        mode: resize interpolation, ``"bicubic"`` or ``"bilinear"``.
        loader: ``keys -> loading transform``; ``None`` when the data are already ``(C, H, W)`` tensors.
        resize_size: shorter side before the centre crop (``None``: ``spatial_size``); e.g. resize 256 then crop
            224, the torchvision / MGCA / G2D convention.
        label_keys: label maps aligned with the image (e.g. ``mask``): loaded as stored (empty maps allowed, see
            :class:`~common.data.readers.LoadRadiographMaskd`), resized with nearest neighbours and cropped alike.

    Returns:
        The transforms, to be wrapped in ``monai.transforms.Compose``.
    """
    keys = ensure_tuple(keys)
    resize_size = spatial_size if resize_size is None else int(resize_size)
    if resize_size < spatial_size:
        raise ValueError(f"resize_size {resize_size} must be at least the crop spatial_size {spatial_size}")
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
    if (mean is None) != (std is None) or (std is not None and std <= 0):
        raise ValueError(f"mean and std must both be given (std > 0) or both be None, got {mean}, {std}")
    label_keys = ensure_tuple(label_keys)
    transforms: list[Transform] = [] if loader is None else [loader(keys)]
    if label_keys and loader is not None:
        transforms.append(LoadRadiographMaskd(label_keys))
    if intensity_range == "minmax":
        transforms.append(ScaleIntensityd(keys, minv=0.0, maxv=1.0))
    elif (
        isinstance(intensity_range, (tuple, list))
        and len(intensity_range) == 2
        and intensity_range[0] < intensity_range[1]
    ):
        low, high = (float(v) for v in intensity_range)
        transforms.append(ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    else:
        raise ValueError(f"intensity_range must be 'minmax' or an increasing (low, high) pair, got {intensity_range!r}")
    transforms += [
        ResizeShortestEdged(keys, resize_size, mode=mode),
        CentralCropd(keys, spatial_size, odd_voxel="end"),
    ]
    if label_keys:
        transforms[-2:-2] = [ResizeShortestEdged(label_keys, resize_size, mode="nearest", clip=False)]
        transforms[-1:] = [CentralCropd([*keys, *label_keys], spatial_size, odd_voxel="end")]
    if mean is not None:
        transforms.append(NormalizeIntensityd(keys, subtrahend=mean, divisor=std))
    if num_channels == 3:
        transforms.append(RepeatChanneld(keys, repeats=3))
    return transforms
