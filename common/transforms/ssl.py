"""Random views for self-supervised training of 2D and 3D images: single-view augmentation (MAE, contrastive),
DINOv2 multi-crop views and iBOT block masks.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", https://arxiv.org/abs/2304.07193
(``dinov2/data/augmentations.py``, ``dinov2/data/masking.py``, ``dinov2/data/collate.py``).

Every random transform here is MONAI ``Randomizable`` and draws only from its own ``R`` (and seeds its child
pipelines from it), so ``Compose.set_random_state(seed)`` makes a pipeline reproducible.

**N-d aspect ratios.** DINOv2 draws a log-uniform aspect ratio ``r`` and makes a 2D box ``sqrt(A / r) x sqrt(A r)``.
For ``n`` axes we draw ``n - 1`` log-uniform ratios ``r_k`` and pick edge lengths whose product is ``A`` such that edge
``k`` over the geometric mean of edges ``0..k-1`` is ``r_k``; in 2D this is exactly DINOv2's rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandomizableTransform,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import MAX_SEED, ensure_tuple, ensure_tuple_rep

from common.transforms.spatial import ApplyPendingResampled

__all__ = [
    "BlockMaskGenerator",
    "MultiCropd",
    "RandBlockMaskd",
    "RandSolarized",
    "crop_and_resize",
    "dino_multicrop",
    "dino_view_transforms",
    "sample_resized_crop_box",
    "ssl_augmentation",
]

ViewTransforms = Sequence[Callable] | Sequence[Sequence[Callable]] | None


def _log_edge_offsets(rng: np.random.RandomState, ndim: int, log_range: tuple[float, float]) -> np.ndarray:
    """Zero-sum log edge offsets: edge ``k`` over the geometric mean of edges ``0..k-1`` is ``exp(U(log_range))``."""
    offsets = np.zeros(ndim)
    for k in range(1, ndim):
        log_ratio = rng.uniform(*log_range)
        offsets[:k] -= log_ratio / (k + 1)
        offsets[k] += log_ratio * k / (k + 1)
    return offsets


def sample_resized_crop_box(
    spatial_shape: Sequence[int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.RandomState,
    attempts: int = 10,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sample a ``RandomResizedCrop`` box (torchvision semantics) in any number of dimensions.

    The box covers a fraction ``U(scale)`` of the image's area/volume, its aspect ratios are log-uniform in ``ratio``
    (see the module docstring for n-d), and it lies inside the image at a uniformly random integer position. After
    ``attempts`` failures the whole image is used.

    Args:
        spatial_shape: image spatial shape.
        scale: range of the area/volume fraction.
        ratio: range of the aspect ratio (width over height in 2D).
        rng: random state.
        attempts: tries before falling back to the whole image.

    Returns:
        ``(start, size)`` per axis.
    """
    shape = [int(s) for s in spatial_shape]
    total = float(np.prod(shape))
    log_range = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = total * rng.uniform(*scale)
        offsets = _log_edge_offsets(rng, len(shape), log_range)
        size = [int(round(target ** (1.0 / len(shape)) * math.exp(o))) for o in offsets]
        if all(0 < s <= n for s, n in zip(size, shape)):
            start = [int(rng.randint(0, n - s + 1)) for s, n in zip(size, shape)]
            return tuple(start), tuple(size)
    return (0,) * len(shape), tuple(shape)


def crop_and_resize(
    img: torch.Tensor,
    start: Sequence[int],
    size: Sequence[int],
    out_size: Sequence[int],
    mode: str | None = None,
) -> torch.Tensor:
    """Crop the box ``[start, start + size)`` of ``img`` ``(C, *spatial)`` and resize it to ``out_size``.

    Args:
        img: channel-first 2D or 3D image.
        start: box origin per axis.
        size: box size per axis.
        out_size: output spatial size.
        mode: ``None`` for DINOv2's bicubic (antialiased, as Pillow) in 2D and trilinear in 3D, or any
            ``torch.nn.functional.interpolate`` mode.

    Returns:
        ``(C, *out_size)`` float32 plain tensor.
    """
    data = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    ndim = data.ndim - 1
    box = data[(slice(None), *(slice(b, b + s) for b, s in zip(start, size)))]
    mode = mode or ("bicubic" if ndim == 2 else "trilinear")
    antialias = mode in ("bicubic", "bilinear") and ndim == 2
    out = F.interpolate(
        box[None].float(), size=tuple(int(s) for s in out_size), mode=mode, align_corners=False, antialias=antialias
    )
    return out[0]


def _as_pipelines(transforms: ViewTransforms, count: int, what: str) -> list[Compose]:
    """One ``Compose`` per view: ``transforms`` is None, one shared list, or one list per view."""
    if transforms is None:
        return [Compose([]) for _ in range(count)]
    if isinstance(transforms, Compose):
        return [transforms] * count
    items = list(transforms)
    if items and all(isinstance(t, (list, tuple, Compose)) for t in items):
        if len(items) != count:
            raise ValueError(f"{what}: got {len(items)} per-view pipelines for {count} views")
        return [t if isinstance(t, Compose) else Compose(list(t)) for t in items]
    shared = Compose(items)
    return [shared] * count


class MultiCropd(Randomizable, MapTransform):
    """DINOv2 multi-crop: ``num_global`` large and ``num_local`` small random-resized views of one image.

    Each view is a ``RandomResizedCrop`` (area/volume fraction ``U(global_scale | local_scale)``, aspect ratios
    log-uniform in ``ratio``, bicubic in 2D / trilinear in 3D) followed by its own augmentation pipeline, e.g. from
    :func:`dino_view_transforms`. Adds ``global_key`` ``(G, C, *global_crop_size)`` and ``local_key``
    ``(L, C, *local_crop_size)`` float32 tensors; the source image is kept.

    Args:
        keys: the one image key to crop.
        global_crop_size: global view size (int for a square/cube, or per axis).
        local_crop_size: local view size.
        num_global: number of global views.
        num_local: number of local views (0 for none; ``local_key`` is then ``(0, C, *local_crop_size)``).
        global_scale: area/volume fraction range of global views (DINOv2: 0.32-1.0).
        local_scale: area/volume fraction range of local views (DINOv2: 0.05-0.32).
        ratio: aspect-ratio range.
        global_transforms: dictionary transforms (on ``{key: view}``) applied to every global view, or one list per
            global view (DINOv2 blurs view 1 always and view 2 rarely), or None.
        local_transforms: the same for local views (one shared list or one per view).
        mode: interpolation (see :func:`crop_and_resize`).
        global_key: output key of the global views.
        local_key: output key of the local views.
        allow_missing_keys: do not raise if the key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        global_crop_size: Sequence[int] | int,
        local_crop_size: Sequence[int] | int,
        num_global: int = 2,
        num_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        global_transforms: ViewTransforms = None,
        local_transforms: ViewTransforms = None,
        mode: str | None = None,
        global_key: str = "global_crops",
        local_key: str = "local_crops",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"MultiCropd crops one image key, got {self.keys}")
        if num_global < 1 or num_local < 0:
            raise ValueError(f"need num_global >= 1 and num_local >= 0, got {num_global}, {num_local}")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale), ("ratio", ratio)):
            if not 0 < low <= high or (name != "ratio" and high > 1):
                raise ValueError(
                    f"{name} must satisfy 0 < low <= high{' <= 1' if name != 'ratio' else ''}, got {(low, high)}"
                )
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size
        self.num_global, self.num_local = int(num_global), int(num_local)
        self.global_scale, self.local_scale, self.ratio = tuple(global_scale), tuple(local_scale), tuple(ratio)
        self.global_pipelines = _as_pipelines(global_transforms, self.num_global, "global_transforms")
        self.local_pipelines = _as_pipelines(local_transforms, self.num_local, "local_transforms")
        self.mode = mode
        self.global_key, self.local_key = global_key, local_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiCropd:
        super().set_random_state(seed, state)
        for pipeline in {id(p): p for p in self.global_pipelines + self.local_pipelines}.values():
            pipeline.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Boxes for all views of an image of spatial shape ``data``: globals first, then locals."""
        boxes = [sample_resized_crop_box(data, self.global_scale, self.ratio, self.R) for _ in range(self.num_global)]
        boxes += [sample_resized_crop_box(data, self.local_scale, self.ratio, self.R) for _ in range(self.num_local)]
        return boxes

    def _views(self, key: Hashable, img: torch.Tensor, boxes, size, pipelines) -> torch.Tensor:
        out_size = ensure_tuple_rep(size, img.ndim - 1)
        views = []
        tracking = get_track_meta()
        set_track_meta(False)  # views leave as plain tensors: skip MONAI's metadata bookkeeping in their augmentations
        try:
            for (start, box), pipeline in zip(boxes, pipelines):
                view = crop_and_resize(img, start, box, out_size, self.mode)
                view = pipeline({key: view})[key]
                plain = view.as_tensor() if hasattr(view, "as_tensor") else view
                views.append(torch.as_tensor(plain, dtype=torch.float32))
        finally:
            set_track_meta(tracking)
        if not views:
            return torch.zeros((0, img.shape[0], *out_size), dtype=torch.float32)
        return torch.stack(views)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            boxes = self.randomize(tuple(img.shape[1:]))
            d[self.global_key] = self._views(
                key, img, boxes[: self.num_global], self.global_crop_size, self.global_pipelines
            )
            d[self.local_key] = self._views(
                key, img, boxes[self.num_global :], self.local_crop_size, self.local_pipelines
            )
        return d


class RandSolarized(RandomizableTransform, MapTransform):
    """Randomly solarise: values at or above ``threshold`` are inverted within ``value_range`` (torchvision
    ``RandomSolarize`` on [0, 1] images with ``threshold=0.5`` is DINOv2's ``Solarize(128)``).

    Args:
        keys: image keys.
        prob: probability of solarising.
        threshold: inversion threshold.
        value_range: ``(low, high)``; a value ``v`` becomes ``low + high - v``.
        allow_missing_keys: do not raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        threshold: float = 0.5,
        value_range: tuple[float, float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.threshold = float(threshold)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        low, high = self.value_range
        for key in self.key_iterator(d):
            img = d[key]
            d[key] = torch.where(img >= self.threshold, low + high - img, img)
        return d


def dino_view_transforms(
    keys: KeysCollection = ("image",),
    spatial_dims: int = 2,
    *,
    value_range: tuple[float, float] | None = None,
    flip_axis: int | None = None,
    flip_prob: float = 0.5,
    jitter_prob: float = 0.8,
    brightness: float | None = None,
    contrast: float | None = None,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5),
    solarize_prob: float | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> tuple[list[list[Transform]], list[Transform]]:
    """Per-view augmentations of DINOv2's ``DataAugmentationDINO``, adapted to grey-scale radiology.

    DINOv2: ``HFlip(0.5)``; ``ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1)`` with p=0.8;
    ``RandomGrayscale(0.2)``; ``GaussianBlur(sigma 0.1-2)`` with p=1.0 on global view 1, 0.1 on global view 2 and 0.5
    on local views; ``Solarize(128)`` with p=0.2 on global view 2; then ``Normalize``. Adaptations:

    * saturation, hue and grey-scale conversion are dropped (one grey channel);
    * 2D (radiographs in [0, 1]): brightness is torchvision's multiplicative factor (``RandScaleIntensityd``),
      contrast a scale about the image mean (``RandScaleIntensityFixedMeand``, torchvision's blend with the mean),
      both with probability ``jitter_prob`` each (independently, torchvision applies them jointly) and clamped to
      ``value_range``; solarisation kept at DINOv2's p=0.2 on global view 2;
    * 3D (CT windowed to [-1, 1]): brightness becomes a window-level shift (``RandShiftIntensityd``, default 0.1 =
      100 HU) and contrast a window-width change about the mean (default 20%); solarisation is off by default
      because inverted HU have no anatomical reading;
    * the flip is left-right: axis 1 of ``(H, W)`` in 2D, axis 0 (R-L in RAS) in 3D;
    * MONAI's Gaussian smoothing draws sigma per axis (DINOv2: one isotropic sigma).

    Args:
        keys: image keys inside each view dict.
        spatial_dims: 2 or 3.
        value_range: clamp range after jitter (default (0, 1) in 2D, (-1, 1) in 3D).
        flip_axis: flipped axis (default left-right, see above).
        flip_prob: flip probability.
        jitter_prob: probability of each of brightness and contrast.
        brightness: jitter strength (default 0.4 in 2D, 0.1 in 3D).
        contrast: jitter strength (default 0.4 in 2D, 0.2 in 3D).
        blur_sigma: blur sigma range in pixels/voxels.
        blur_probs: blur probability for (global view 1, global view 2, local views).
        solarize_prob: solarisation probability on global view 2 (default 0.2 in 2D, 0 in 3D).
        mean: normalisation mean applied last (e.g. RAD-DINO's 0.5307); None to skip.
        std: normalisation standard deviation.

    Returns:
        ``([global view 1 transforms, global view 2 transforms], local view transforms)`` for :class:`MultiCropd`.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    keys = ensure_tuple(keys)
    two_d = spatial_dims == 2
    low, high = value_range or ((0.0, 1.0) if two_d else (-1.0, 1.0))
    flip_axis = (1 if two_d else 0) if flip_axis is None else flip_axis
    brightness = (0.4 if two_d else 0.1) if brightness is None else brightness
    contrast = (0.4 if two_d else 0.2) if contrast is None else contrast
    solarize_prob = (0.2 if two_d else 0.0) if solarize_prob is None else solarize_prob
    sigmas = {f"sigma_{axis}": blur_sigma for axis in "xyz"[:spatial_dims]}

    def common() -> list[Transform]:
        bright = (
            RandScaleIntensityd(keys, factors=brightness, prob=jitter_prob)
            if two_d
            else RandShiftIntensityd(keys, offsets=brightness, prob=jitter_prob)
        )
        return [
            RandFlipd(keys, prob=flip_prob, spatial_axis=flip_axis),
            bright,
            RandScaleIntensityFixedMeand(keys, factors=contrast, prob=jitter_prob, fixed_mean=True),
            ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=low, b_max=high, clip=True),  # clamp
        ]

    def finish() -> list[Transform]:
        return [] if mean is None else [NormalizeIntensityd(keys, subtrahend=mean, divisor=std)]

    global_1 = common() + [RandGaussianSmoothd(keys, prob=blur_probs[0], **sigmas)] + finish()
    global_2 = common() + [RandGaussianSmoothd(keys, prob=blur_probs[1], **sigmas)]
    if solarize_prob > 0:
        global_2.append(RandSolarized(keys, prob=solarize_prob, threshold=(low + high) / 2, value_range=(low, high)))
    global_2 += finish()
    local = common() + [RandGaussianSmoothd(keys, prob=blur_probs[2], **sigmas)] + finish()
    return [global_1, global_2], local


class BlockMaskGenerator:
    """DINOv2/BEiT block masking on a token grid, in 2D or 3D (``dinov2/data/masking.py::MaskingGenerator``).

    Blocks of ``U(min_num_patches, remaining)`` tokens with log-uniform aspect ratios in
    ``[min_aspect, max_aspect]`` (strictly smaller than the grid along every axis) are added until the target count
    is reached; a block is accepted only if it adds between 1 and ``remaining`` new tokens, so the result never
    exceeds the target and, when 10 tries in a row fail, falls short of it.

    Args:
        grid_size: token grid, e.g. ``(37, 37)`` or ``(12, 12, 12)``.
        min_num_patches: smallest block (DINOv2: 4).
        max_num_patches: largest block (DINOv2 training: half the grid); None = no limit beyond the target.
        min_aspect: smallest aspect ratio (DINOv2: 0.3).
        max_aspect: largest aspect ratio (None = ``1 / min_aspect``).
    """

    def __init__(
        self,
        grid_size: Sequence[int],
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.grid_size = tuple(int(g) for g in grid_size)
        if len(self.grid_size) not in (2, 3) or min(self.grid_size) < 1:
            raise ValueError(f"grid_size must be 2 or 3 positive ints, got {grid_size}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.num_patches = int(np.prod(self.grid_size))
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, max_mask_patches: float, rng: np.random.RandomState) -> int:
        delta = 0
        for _ in range(10):
            target = rng.uniform(self.min_num_patches, max_mask_patches)
            offsets = _log_edge_offsets(rng, len(self.grid_size), self.log_aspect)
            size = [int(round(target ** (1.0 / len(self.grid_size)) * math.exp(o))) for o in offsets]
            if all(s < g for s, g in zip(size, self.grid_size)):
                start = [int(rng.randint(0, g - s + 1)) for s, g in zip(size, self.grid_size)]
                region = tuple(slice(b, b + s) for b, s in zip(start, size))
                new = int(np.prod(size)) - int(mask[region].sum())
                if 0 < new <= max_mask_patches:
                    mask[region] = True
                    delta += new
            if delta > 0:
                break
        return delta

    def __call__(self, num_masking_patches: int, rng: np.random.RandomState | None = None) -> np.ndarray:
        """A boolean mask of ``grid_size`` with about ``num_masking_patches`` True tokens (True = masked)."""
        rng = rng if rng is not None else np.random.RandomState()
        mask = np.zeros(self.grid_size, dtype=bool)
        count = 0
        while count < num_masking_patches:
            remaining = num_masking_patches - count
            if self.max_num_patches is not None:
                remaining = min(remaining, self.max_num_patches)
            delta = self._add_block(mask, remaining, rng)
            if delta == 0:
                break
            count += delta
        return mask


class RandBlockMaskd(Randomizable, MapTransform):
    """iBOT block masks for the global crops of one sample, as DINOv2's ``collate_data_and_cast``.

    Of the ``G`` global crops in ``data[key]``, ``int(G * mask_sample_probability)`` are masked, with ratios drawn
    stratified from ``mask_ratio_range`` (the k-th of n from ``U(r_k, r_{k+1})`` on an even split of the range); the
    others get empty masks, and the order is shuffled. DINOv2 does this over all ``B x G`` crops of a batch; per
    sample the marginal distribution is the same (for the default G=2, p=0.5: exactly one crop masked, ratio
    ``U(0.1, 0.5)``). Adds ``mask_key``: ``(G, prod(grid_size))`` bool, tokens in row-major grid order (True =
    masked).

    Args:
        keys: the key holding the ``(G, C, *spatial)`` global crops.
        grid_size: token grid of a global crop (crop size // patch size).
        mask_ratio_range: range of the masked fraction.
        mask_sample_probability: fraction of global crops that are masked.
        min_num_patches: smallest block.
        max_num_patches_ratio: largest block as a fraction of the grid (DINOv2 training: 0.5).
        min_aspect: smallest block aspect ratio (DINOv2: 0.3, i.e. 0.3-3.3).
        max_aspect: largest aspect ratio (None = ``1 / min_aspect``).
        mask_key: output key.
        allow_missing_keys: do not raise if the key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        grid_size: Sequence[int],
        mask_ratio_range: tuple[float, float] = (0.1, 0.5),
        mask_sample_probability: float = 0.5,
        min_num_patches: int = 4,
        max_num_patches_ratio: float | None = 0.5,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        mask_key: str = "masks",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandBlockMaskd reads one crops key, got {self.keys}")
        if not 0 <= mask_ratio_range[0] <= mask_ratio_range[1] <= 1:
            raise ValueError(f"mask_ratio_range must satisfy 0 <= low <= high <= 1, got {mask_ratio_range}")
        if not 0 <= mask_sample_probability <= 1:
            raise ValueError(f"mask_sample_probability must be in [0, 1], got {mask_sample_probability}")
        num_patches = int(np.prod(grid_size))
        max_patches = None if max_num_patches_ratio is None else max_num_patches_ratio * num_patches
        self.generator = BlockMaskGenerator(grid_size, min_num_patches, max_patches, min_aspect, max_aspect)
        self.mask_ratio_range = tuple(mask_ratio_range)
        self.mask_sample_probability = mask_sample_probability
        self.mask_key = mask_key

    def randomize(self, data: int) -> np.ndarray:
        """``(G, N)`` masks for ``data`` = G global crops."""
        num_crops, num_patches = int(data), self.generator.num_patches
        num_masked = int(num_crops * self.mask_sample_probability)
        bounds = np.linspace(*self.mask_ratio_range, num_masked + 1)
        masks = [
            self.generator(int(num_patches * self.R.uniform(bounds[i], bounds[i + 1])), self.R)
            for i in range(num_masked)
        ]
        masks += [self.generator(0, self.R) for _ in range(num_crops - num_masked)]
        order = self.R.permutation(num_crops)
        return np.stack([masks[i].reshape(-1) for i in order]) if masks else np.zeros((0, num_patches), bool)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = torch.from_numpy(self.randomize(d[key].shape[0]))
        return d


def dino_multicrop(
    keys: KeysCollection = ("image",),
    spatial_dims: int = 2,
    global_crop_size: int = 224,
    local_crop_size: int = 96,
    patch_size: int = 14,
    *,
    num_global: int = 2,
    num_local: int = 8,
    global_scale: tuple[float, float] = (0.32, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.32),
    mask_ratio_range: tuple[float, float] = (0.1, 0.5),
    mask_sample_probability: float = 0.5,
    mean: float | None = None,
    std: float | None = None,
    **view_kwargs,
) -> list[Transform]:
    """DINOv2 data pipeline tail: :class:`MultiCropd` with :func:`dino_view_transforms`, then :class:`RandBlockMaskd`.

    Defaults are DINOv2's (2 global 224 crops at 0.32-1.0, 8 local 96 crops at 0.05-0.32, patch 14, half the global
    crops masked at 10-50%). Input: one preprocessed image in the augmentation value range ([0, 1] radiographs,
    [-1, 1] CT); ``mean``/``std`` normalise every view last (RAD-DINO: 0.5307/0.2583).

    Args:
        keys: the image key.
        spatial_dims: 2 or 3.
        global_crop_size: global view edge.
        local_crop_size: local view edge.
        patch_size: ViT patch edge (mask grid = global_crop_size // patch_size).
        num_global: number of global views.
        num_local: number of local views.
        global_scale: global area/volume fraction range.
        local_scale: local area/volume fraction range.
        mask_ratio_range: iBOT masked fraction range.
        mask_sample_probability: fraction of global crops masked.
        mean: per-view normalisation mean.
        std: per-view normalisation std.
        view_kwargs: forwarded to :func:`dino_view_transforms`.
    """
    if global_crop_size % patch_size:
        raise ValueError(f"global_crop_size {global_crop_size} is not a multiple of patch_size {patch_size}")
    global_views, local_views = dino_view_transforms(keys, spatial_dims, mean=mean, std=std, **view_kwargs)
    if num_global != 2:  # DINOv2's two distinct global recipes; further globals reuse the second
        global_views = [global_views[min(i, 1)] for i in range(num_global)]
    grid = (global_crop_size // patch_size,) * spatial_dims
    return [
        MultiCropd(
            keys,
            (global_crop_size,) * spatial_dims,
            (local_crop_size,) * spatial_dims,
            num_global=num_global,
            num_local=num_local,
            global_scale=global_scale,
            local_scale=local_scale,
            global_transforms=global_views,
            local_transforms=local_views,
        ),
        RandBlockMaskd("global_crops", grid, mask_ratio_range, mask_sample_probability),
    ]


def _augmentation_dims(spatial_size: Sequence[int] | int, spatial_dims: int | None) -> int:
    """Number of spatial dimensions: ``spatial_size``'s length, or ``spatial_dims`` for a single number."""
    if np.ndim(spatial_size) == 0:
        if spatial_dims is None:
            raise ValueError(f"spatial_dims is needed when spatial_size is one number ({spatial_size})")
        dims = int(spatial_dims)
    else:
        dims = len(spatial_size)
        if spatial_dims is not None and int(spatial_dims) != dims:
            raise ValueError(f"spatial_dims={spatial_dims} does not match spatial_size {tuple(spatial_size)}")
    if dims not in (2, 3):
        raise ValueError(f"the augmentation is 2D or 3D, got {dims} spatial dimensions")
    return dims


def ssl_augmentation(
    keys: KeysCollection,
    spatial_size: Sequence[int] | int,
    spatial_dims: int | None = None,
    *,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] | None = None,
    affine_prob: float = 0.5,
    rotate_degrees: float = 10.0,
    scale_range: float = 0.1,
    intensity_prob: float = 0.5,
    intensity_scale: float | None = None,
    intensity_shift: float = 0.1,
    contrast_prob: float = 0.3,
    gamma: tuple[float, float] = (0.7, 1.5),
    smooth_prob: float = 0.2,
    smooth_sigma: tuple[float, float] | None = None,
    noise_prob: float = 0.2,
    noise_std: float | None = None,
    lazy: bool = True,
) -> list[Transform]:
    """Random single-view augmentation for SSL (MAE, contrastive) on preprocessed 2D or 3D images.

    Spatial (fused into one interpolation when ``lazy``): ``RandSpatialCropd(spatial_size)`` -> ``RandFlipd`` per
    axis in ``flip_axes`` -> ``RandAffined`` (rotation up to ``rotate_degrees`` in every plane: one angle in 2D, one
    per axis in 3D; per-axis zoom ``1 +- scale_range``; border padding) ->
    :class:`~common.transforms.spatial.ApplyPendingResampled`. With lazy resampling the rotated view samples real
    anatomy beyond the crop's edge instead of padding. Intensity, each with its own probability:
    ``RandScaleIntensityd`` (``v * (1 + f)``, ``|f| <= intensity_scale``), ``RandShiftIntensityd``
    (``|offset| <= intensity_shift``), ``RandAdjustContrastd(gamma)``, ``RandGaussianSmoothd(smooth_sigma)``,
    ``RandGaussianNoised(noise_std)``.

    Defaults left at ``None`` depend on the number of spatial dimensions:

    * 2D, radiographs scaled to [0, 1] (normalise after this): ``flip_axes=(1,)`` (left-right of ``(H, W)``, as
      DINOv2's horizontal flip), ``intensity_scale=0.2`` (brightness; DINOv2's 0.4 jitter is milder on a grey image
      once hue/saturation are gone), ``smooth_sigma=(0.1, 2.0)`` pixels (DINOv2's ``GaussianBlur``),
      ``noise_std=0.02``;
    * 3D, CT windowed to [-1, 1]: ``flip_axes=(0,)`` (left-right in RAS), ``intensity_scale=0.1``,
      ``smooth_sigma=(0.5, 1.0)`` voxels, ``noise_std=0.05``. Magnitudes are small because HU carry meaning
      (DINOv2's colour-jitter strength would shift tissue classes); ``intensity_shift=0.1`` is 100 HU there.

    For vision-language training set ``flip_prob=0``: reports name sides ("left lower lobe").

    Args:
        keys: image keys (all get the same crop, flip and affine).
        spatial_size: crop size in pixels/voxels, one number or one per axis.
        spatial_dims: 2 or 3; needed when ``spatial_size`` is one number, else it must match its length.
        flip_prob: probability of flipping, per axis in ``flip_axes``.
        flip_axes: spatial axes that may be flipped (default: left-right, see above).
        affine_prob: probability of the rotation/zoom.
        rotate_degrees: maximum rotation in each plane.
        scale_range: maximum relative zoom per axis.
        intensity_prob: probability of each of the intensity scale and shift.
        intensity_scale: maximum relative intensity scaling (default: see above).
        intensity_shift: maximum intensity offset.
        contrast_prob: probability of the gamma change.
        gamma: gamma range.
        smooth_prob: probability of Gaussian smoothing.
        smooth_sigma: smoothing sigma range in pixels/voxels (default: see above).
        noise_prob: probability of Gaussian noise.
        noise_std: noise standard deviation (default: see above).
        lazy: fuse crop, flips and affine into one interpolation.

    Returns:
        The transforms (all ``Randomizable``; seed them through ``Compose.set_random_state``).
    """
    dims = _augmentation_dims(spatial_size, spatial_dims)
    keys = ensure_tuple(keys)
    for name, prob in (
        ("flip_prob", flip_prob),
        ("affine_prob", affine_prob),
        ("intensity_prob", intensity_prob),
        ("contrast_prob", contrast_prob),
        ("smooth_prob", smooth_prob),
        ("noise_prob", noise_prob),
    ):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    two_d = dims == 2
    flip_axes = ((1,) if two_d else (0,)) if flip_axes is None else tuple(int(axis) for axis in flip_axes)
    if any(not 0 <= axis < dims for axis in flip_axes):
        raise ValueError(f"flip_axes must be spatial axes in [0, {dims}), got {flip_axes}")
    intensity_scale = (0.2 if two_d else 0.1) if intensity_scale is None else intensity_scale
    smooth_sigma = ((0.1, 2.0) if two_d else (0.5, 1.0)) if smooth_sigma is None else smooth_sigma
    noise_std = (0.02 if two_d else 0.05) if noise_std is None else noise_std
    angle = math.radians(rotate_degrees)
    sigmas = {f"sigma_{axis}": smooth_sigma for axis in "xyz"[:dims]}
    transforms: list[Transform] = [RandSpatialCropd(keys, roi_size=spatial_size, random_size=False, lazy=lazy)]
    transforms += [RandFlipd(keys, prob=flip_prob, spatial_axis=axis, lazy=lazy) for axis in flip_axes]
    transforms += [
        RandAffined(
            keys,
            prob=affine_prob,
            rotate_range=(angle,) * (dims * (dims - 1) // 2),  # one angle per plane: 1 in 2D, 3 in 3D
            scale_range=(scale_range,) * dims,
            mode="bilinear",
            padding_mode="border",
            lazy=lazy,
        ),
        ApplyPendingResampled(keys, mode="bilinear", padding_mode="border"),
        RandScaleIntensityd(keys, factors=intensity_scale, prob=intensity_prob),
        RandShiftIntensityd(keys, offsets=intensity_shift, prob=intensity_prob),
        RandAdjustContrastd(keys, prob=contrast_prob, gamma=gamma),
        RandGaussianSmoothd(keys, prob=smooth_prob, **sigmas),
        RandGaussianNoised(keys, prob=noise_prob, mean=0.0, std=noise_std),
    ]
    return transforms
