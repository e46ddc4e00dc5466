"""2D radiograph dictionary transforms and pipeline builders (RAD-DINO preprocessing, SSL augmentation).

Images are channel-first ``(C, H, W)`` MetaTensors with rows top to bottom, as loaded by
:class:`common.data.readers.LoadRadiographd` (which already applies the DICOM Modality LUT, the VOI LUT/window and
MONOCHROME1 inversion, so dense tissue is bright). Note that MONAI's own ``PILReader``/``PydicomReader`` return
transposed ``(W, H)`` arrays by default; do not mix them in.

**RAD-DINO parity.** :func:`xray_preprocessing` reproduces the Hugging Face image processor of ``microsoft/rad-dino``
(``BitImageProcessor``: resize the shortest edge to 518 with bicubic, centre crop 518, rescale 1/255, normalise with
mean 0.5307 / std 0.2583), on one channel and in float instead of through an 8-bit PIL image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    RepeatChanneld,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import ensure_tuple

from common.data.readers import LoadRadiographd
from common.transforms.ct import ApplyPendingResampled, CentralCropd

__all__ = [
    "RAD_DINO_MEAN",
    "RAD_DINO_STD",
    "shortest_edge_size",
    "ResizeShortestEdge",
    "ResizeShortestEdged",
    "load_radiograph",
    "xray_preprocessing",
    "xray_ssl_augmentation",
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
        mode: ``"bicubic"`` (RAD-DINO's processor) or ``"bilinear"``.
        antialias: low-pass filter when downsampling (as Pillow does).
        clip: clamp the output to the input's value range (bicubic overshoots; an 8-bit image saturates there).
    """

    def __init__(self, size: int, mode: str = "bicubic", antialias: bool = True, clip: bool = True) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
        self.size = int(size)
        self.mode = mode
        self.antialias = antialias
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
) -> list[Transform]:
    """Deterministic radiograph preprocessing: load, scale to [0, 1], resize, centre crop, normalise.

    Steps: ``loader`` -> intensity to [0, 1] (``ScaleIntensityd`` min-max, or ``ScaleIntensityRanged`` for a fixed
    ``intensity_range`` such as ``(0, 255)``) -> :class:`ResizeShortestEdged` (bicubic, antialiased, clipped to
    [0, 1]) -> :class:`~common.transforms.ct.CentralCropd` (``spatial_size`` square, odd pixel at the end as
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

    Returns:
        The transforms, to be wrapped in ``monai.transforms.Compose``.
    """
    keys = ensure_tuple(keys)
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
    if (mean is None) != (std is None) or (std is not None and std <= 0):
        raise ValueError(f"mean and std must both be given (std > 0) or both be None, got {mean}, {std}")
    transforms: list[Transform] = [] if loader is None else [loader(keys)]
    if intensity_range == "minmax":
        transforms.append(ScaleIntensityd(keys, minv=0.0, maxv=1.0))
    elif isinstance(intensity_range, (tuple, list)) and len(intensity_range) == 2 and intensity_range[0] < intensity_range[1]:
        low, high = (float(v) for v in intensity_range)
        transforms.append(ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    else:
        raise ValueError(f"intensity_range must be 'minmax' or an increasing (low, high) pair, got {intensity_range!r}")
    transforms += [
        ResizeShortestEdged(keys, spatial_size, mode=mode),
        CentralCropd(keys, spatial_size, odd_voxel="end"),
    ]
    if mean is not None:
        transforms.append(NormalizeIntensityd(keys, subtrahend=mean, divisor=std))
    if num_channels == 3:
        transforms.append(RepeatChanneld(keys, repeats=3))
    return transforms


def xray_ssl_augmentation(
    keys: KeysCollection = ("image",),
    spatial_size: Sequence[int] | int = 224,
    *,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (1,),
    affine_prob: float = 0.5,
    rotate_degrees: float = 10.0,
    scale_range: float = 0.1,
    intensity_prob: float = 0.5,
    intensity_scale: float = 0.2,
    intensity_shift: float = 0.1,
    contrast_prob: float = 0.3,
    gamma: tuple[float, float] = (0.7, 1.5),
    smooth_prob: float = 0.2,
    smooth_sigma: tuple[float, float] = (0.1, 2.0),
    noise_prob: float = 0.2,
    noise_std: float = 0.02,
    lazy: bool = True,
) -> list[Transform]:
    """Random single-view augmentation for 2D SSL, the 2D counterpart of
    :func:`~common.transforms.ct.ct_ssl_augmentation` (crop, flip, small affine fused into one interpolation, then
    intensity scale/shift, gamma, Gaussian blur and noise).

    Apply it to images scaled to [0, 1] (i.e. :func:`xray_preprocessing` with ``mean=None``) and normalise after it.
    Defaults: horizontal flips only (axis 1 of ``(H, W)``; DINOv2 flips horizontally with p=0.5; disable when
    laterality matters, e.g. dextrocardia or line position), brightness as a multiplicative scale of up to 20%
    (DINOv2's 0.4 jitter is milder on a grey image once hue/saturation are gone), blur sigma 0.1-2 px as DINOv2's
    ``GaussianBlur``.

    Args:
        keys: image keys (all get the same crop, flip and affine).
        spatial_size: crop size ``(H, W)`` in pixels.
        flip_prob: probability of flipping, per axis in ``flip_axes``.
        flip_axes: spatial axes that may be flipped (1 = left-right).
        affine_prob: probability of the rotation/zoom.
        rotate_degrees: maximum in-plane rotation.
        scale_range: maximum relative zoom per axis.
        intensity_prob: probability of each of the intensity scale and shift.
        intensity_scale: maximum relative intensity scaling (brightness).
        intensity_shift: maximum intensity offset.
        contrast_prob: probability of the gamma change.
        gamma: gamma range.
        smooth_prob: probability of Gaussian blur.
        smooth_sigma: blur sigma range in pixels.
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
            rotate_range=(angle,),
            scale_range=(scale_range, scale_range),
            mode="bilinear",
            padding_mode="border",
            lazy=lazy,
        ),
        ApplyPendingResampled(keys, mode="bilinear", padding_mode="border"),
        RandScaleIntensityd(keys, factors=intensity_scale, prob=intensity_prob),
        RandShiftIntensityd(keys, offsets=intensity_shift, prob=intensity_prob),
        RandAdjustContrastd(keys, prob=contrast_prob, gamma=gamma),
        RandGaussianSmoothd(keys, sigma_x=smooth_sigma, sigma_y=smooth_sigma, prob=smooth_prob),
        RandGaussianNoised(keys, prob=noise_prob, mean=0.0, std=noise_std),
    ]
    return transforms
