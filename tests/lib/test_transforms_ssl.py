"""SSL views and masks: RandomResizedCrop boxes, DINOv2 multi-crop, per-view recipes, iBOT block masks and the
single-view augmentation, in 2D and 3D; shapes, scale/ratio ranges, mask ratios and determinism under
``set_random_state``; the augmentation is bit-identical to the per-modality builders it replaced."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
)

from common.transforms.spatial import ApplyPendingResampled
from common.transforms.ssl import (
    BlockMaskGenerator,
    MultiCropd,
    RandBlockMaskd,
    RandSolarized,
    crop_and_resize,
    dino_multicrop,
    dino_view_transforms,
    sample_resized_crop_box,
    ssl_augmentation,
)

DIMS = (2, 3)

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(dims: int, size: int = 40) -> MetaTensor:
    return MetaTensor(torch.rand(1, *([size] * dims)))


@pytest.mark.parametrize("dims,scale", list(itertools.product(DIMS, [(0.32, 1.0), (0.05, 0.32)])))
def test_resized_crop_boxes_respect_scale_ratio_and_bounds(dims, scale):
    shape = (60, 50, 40)[:dims]
    ratio = (3 / 4, 4 / 3)
    rng = np.random.RandomState(0)
    fractions = []
    for _ in range(300):
        start, size = sample_resized_crop_box(shape, scale, ratio, rng)
        assert all(0 <= b and b + s <= n and s > 0 for b, s, n in zip(start, size, shape))
        fraction = np.prod(size) / np.prod(shape)
        if size == shape:  # fallback after 10 failed draws
            continue
        fractions.append(fraction)
        # rounding each edge to whole pixels moves the fraction by at most ~1 pixel per edge
        slack = sum(1 / s for s in size) * 1.01
        assert scale[0] * (1 - slack) <= fraction <= scale[1] * (1 + slack)
        for k in range(1, dims):  # edge k over the geometric mean of edges 0..k-1
            rel = size[k] / math.prod(size[:k]) ** (1 / k)
            assert ratio[0] * (1 - slack) <= rel <= ratio[1] * (1 + slack)
    assert len(fractions) > 250
    if scale[1] <= 0.5:  # small boxes always fit: the fraction is uniform over the range
        assert np.mean(fractions) == pytest.approx(np.mean(scale), rel=0.15)
    else:  # large jittered boxes are rejected more often (as in torchvision), biasing towards smaller ones
        assert scale[0] < np.mean(fractions) < np.mean(scale)


def test_resized_crop_falls_back_to_the_whole_image():
    start, size = sample_resized_crop_box((10, 100), (0.9, 1.0), (1.0, 1.0), np.random.RandomState(0))
    assert start == (0, 0) and size == (10, 100)


@pytest.mark.parametrize("dims", DIMS)
def test_crop_and_resize_of_the_whole_image_is_a_resize(dims):
    img = torch.rand(2, *([16] * dims))
    out = crop_and_resize(img, (0,) * dims, (16,) * dims, (16,) * dims)
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)
    assert crop_and_resize(img, (2,) * dims, (8,) * dims, (12,) * dims).shape == (2, *([12] * dims))


@pytest.mark.parametrize("dims", DIMS)
def test_multicrop_shapes_determinism_and_collation(dims):
    transform = MultiCropd("image", 24, 12, num_global=2, num_local=3)
    data = {"image": _image(dims)}
    first = transform.set_random_state(5)(data)
    again = transform.set_random_state(5)(data)
    other = transform.set_random_state(6)(data)
    assert first["global_crops"].shape == (2, 1, *([24] * dims))
    assert first["local_crops"].shape == (3, 1, *([12] * dims))
    assert torch.equal(first["global_crops"], again["global_crops"])
    assert torch.equal(first["local_crops"], again["local_crops"])
    assert not torch.equal(first["global_crops"], other["global_crops"])
    assert torch.equal(first["image"], data["image"])  # the source stays
    batch = list_data_collate([first, other])
    assert batch["global_crops"].shape == (2, 2, 1, *([24] * dims))


def test_multicrop_per_view_pipelines_are_applied_and_seeded():
    marker = [RandSolarized("image", prob=1.0, threshold=-1.0)]  # inverts every value: v -> 1 - v
    transform = MultiCropd(
        "image",
        16,
        8,
        num_local=2,
        global_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        global_transforms=[marker, []],
        local_transforms=None,
    )
    img = _image(2, 16)
    out = transform({"image": img})
    torch.testing.assert_close(out["global_crops"][0], 1 - img.as_tensor(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["global_crops"][1], img.as_tensor(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="per-view"):
        MultiCropd("image", 16, 8, num_global=2, global_transforms=[marker, marker, marker])
    with pytest.raises(ValueError, match="one image key"):
        MultiCropd(["image", "mask"], 16, 8)
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropd("image", 16, 8, global_scale=(0.5, 1.5))


@pytest.mark.parametrize("dims", DIMS)
def test_dino_view_recipes(dims):
    (view_1, view_2), local = dino_view_transforms("image", dims)
    blur = [[t.prob for t in views if isinstance(t, RandGaussianSmoothd)] for views in (view_1, view_2, local)]
    assert blur == [[1.0], [0.1], [0.5]]
    solarize = [t for t in view_2 if isinstance(t, RandSolarized)]
    assert len(solarize) == (1 if dims == 2 else 0)
    assert not any(isinstance(t, RandSolarized) for t in view_1 + local)
    low, high = (0.0, 1.0) if dims == 2 else (-1.0, 1.0)
    views = Compose(view_1).set_random_state(0)({"image": torch.rand(1, *([20] * dims)) * (high - low) + low})
    assert float(views["image"].min()) >= low - 1e-6 and float(views["image"].max()) <= high + 1e-6


@pytest.mark.parametrize("dims", DIMS)
def test_dino_multicrop_pipeline(dims):
    global_size, local_size, patch = (28, 14, 7) if dims == 2 else (16, 8, 4)
    pipeline = Compose(
        dino_multicrop(
            "image",
            dims,
            global_size,
            local_size,
            patch,
            num_local=2,
            mean=0.5 if dims == 2 else None,
            std=0.25 if dims == 2 else None,
        )
    )
    first = pipeline.set_random_state(1)({"image": _image(dims, 32)})
    again = pipeline.set_random_state(1)({"image": _image(dims, 32).copy_(first["image"])})
    grid = (global_size // patch) ** dims
    assert first["global_crops"].shape == (2, 1, *([global_size] * dims))
    assert first["local_crops"].shape == (2, 1, *([local_size] * dims))
    assert first["masks"].shape == (2, grid) and first["masks"].dtype == torch.bool
    assert torch.equal(first["global_crops"], again["global_crops"])
    assert torch.equal(first["masks"], again["masks"])
    with pytest.raises(ValueError, match="multiple of patch_size"):
        dino_multicrop("image", dims, 30, 14, 7)


def test_multicrop_views_are_plain_tensors_and_metadata_tracking_is_restored():
    """The per-view augmentations run without MONAI metadata (speed); the global switch is put back, also on error."""
    from monai.data.meta_obj import get_track_meta

    (view_1, view_2), local = dino_view_transforms("image", 2)
    transform = MultiCropd("image", 16, 8, num_local=2, global_transforms=[view_1, view_2], local_transforms=local)
    out = transform.set_random_state(0)({"image": _image(2, 24)})
    assert get_track_meta()
    assert type(out["global_crops"]) is torch.Tensor and type(out["local_crops"]) is torch.Tensor
    assert isinstance(out["image"], MetaTensor)  # the source keeps its metadata

    def fail(_data):
        raise RuntimeError("augmentation failed")

    broken = MultiCropd("image", 16, 8, num_local=0, global_transforms=[fail])
    with pytest.raises(RuntimeError, match="applying transform"):  # MONAI wraps the error
        broken({"image": _image(2, 24)})
    assert get_track_meta()


@pytest.mark.parametrize("grid", [(16, 16), (37, 37), (8, 8, 8), (6, 10, 12)])
def test_block_masks_never_exceed_and_nearly_reach_the_target(grid):
    generator = BlockMaskGenerator(grid, max_num_patches=0.5 * np.prod(grid))
    rng = np.random.RandomState(0)
    total = int(np.prod(grid))
    reached = []
    for ratio in np.linspace(0.1, 0.5, 9):
        target = int(total * ratio)
        mask = generator(target, rng)
        assert mask.shape == grid and mask.dtype == bool
        assert 0 < mask.sum() <= target
        reached.append(mask.sum() / target)
    assert np.mean(reached) > 0.85
    assert not generator(0, rng).any()


def test_block_mask_blocks_are_boxes_with_bounded_aspect():
    generator = BlockMaskGenerator((20, 20), min_num_patches=16, min_aspect=0.5)
    rng = np.random.RandomState(1)
    for _ in range(20):
        mask = np.zeros((20, 20), dtype=bool)
        assert 0 < generator._add_block(mask, 40, rng) <= 40  # one block of 16 to 40 tokens
        rows, cols = np.nonzero(mask)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert height * width == mask.sum()  # a single filled rectangle
        assert 0.5 / 1.5 <= height / width <= 1.5 / 0.5  # aspect within range, allowing for rounding


@pytest.mark.parametrize("dims,num_crops", list(itertools.product(DIMS, [2, 4])))
def test_rand_block_mask_ratios_and_determinism(dims, num_crops):
    grid = (14, 14) if dims == 2 else (6, 6, 6)
    transform = RandBlockMaskd("global_crops", grid, mask_ratio_range=(0.1, 0.5), mask_sample_probability=0.5)
    data = {"global_crops": torch.zeros(num_crops, 1, *([8] * dims))}
    total = int(np.prod(grid))
    bins = np.linspace(0.1, 0.5, num_crops // 2 + 1)
    for seed in range(20):
        masks = transform.set_random_state(seed)(data)["masks"]
        assert masks.shape == (num_crops, total) and masks.dtype == torch.bool
        ratios = sorted(float(r) for r in masks.float().mean(1))
        assert ratios[: num_crops - num_crops // 2] == [0.0] * (num_crops - num_crops // 2)
        for ratio, high in zip(ratios[num_crops - num_crops // 2 :], bins[1:]):
            assert 0 < ratio <= high + 1e-9  # stratified: the k-th masked crop is drawn from the k-th bin
    assert torch.equal(transform.set_random_state(3)(data)["masks"], transform.set_random_state(3)(data)["masks"])


# ------------------------------------------------------------------------------------------ single-view augmentation


def _frozen_ct_ssl_augmentation(
    keys=("image",),
    spatial_size=96,
    *,
    flip_prob=0.5,
    flip_axes=(0,),
    affine_prob=0.5,
    rotate_degrees=10.0,
    scale_range=0.1,
    intensity_prob=0.5,
    intensity_scale=0.1,
    intensity_shift=0.1,
    contrast_prob=0.3,
    gamma=(0.7, 1.5),
    smooth_prob=0.2,
    smooth_sigma=(0.5, 1.0),
    noise_prob=0.2,
    noise_std=0.05,
    lazy=True,
):
    """The former ``common.transforms.ct.ct_ssl_augmentation`` (body verbatim, checks dropped): the reference that
    :func:`ssl_augmentation` must reproduce bit for bit in 3D."""
    angle = math.radians(rotate_degrees)
    transforms = [RandSpatialCropd(keys, roi_size=spatial_size, random_size=False, lazy=lazy)]
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


def _frozen_xray_ssl_augmentation(
    keys=("image",),
    spatial_size=224,
    *,
    flip_prob=0.5,
    flip_axes=(1,),
    affine_prob=0.5,
    rotate_degrees=10.0,
    scale_range=0.1,
    intensity_prob=0.5,
    intensity_scale=0.2,
    intensity_shift=0.1,
    contrast_prob=0.3,
    gamma=(0.7, 1.5),
    smooth_prob=0.2,
    smooth_sigma=(0.1, 2.0),
    noise_prob=0.2,
    noise_std=0.02,
    lazy=True,
):
    """The former ``common.transforms.xray.xray_ssl_augmentation`` (body verbatim, checks dropped): the 2D reference."""
    angle = math.radians(rotate_degrees)
    transforms = [RandSpatialCropd(keys, roi_size=spatial_size, random_size=False, lazy=lazy)]
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


_ALWAYS = {
    "flip_prob": 1.0,
    "affine_prob": 1.0,
    "intensity_prob": 1.0,
    "contrast_prob": 1.0,
    "smooth_prob": 1.0,
    "noise_prob": 1.0,
}
_COLIPRI_TRAIN = {"flip_prob": 0.0, "affine_prob": 0.5, "rotate_degrees": 5.0, "scale_range": 0.05}  # train.yaml
_EQUIVALENCE_CASES = [
    (3, {"spatial_size": 24}),
    (3, {"spatial_size": 24, **_COLIPRI_TRAIN}),
    (3, {"spatial_size": (24, 20, 16), **_ALWAYS, "flip_axes": (0, 2), "rotate_degrees": 20.0, "gamma": (0.5, 2.0)}),
    (2, {"spatial_size": 48}),
    (2, {"spatial_size": 48, **_COLIPRI_TRAIN}),
    (
        2,
        {
            "spatial_size": (48, 40),
            **_ALWAYS,
            "flip_axes": (0, 1),
            "intensity_scale": 0.3,
            "smooth_sigma": (0.3, 0.9),
            "noise_std": 0.1,
        },
    ),
]


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("dims,kwargs", _EQUIVALENCE_CASES)
def test_ssl_augmentation_is_bit_identical_to_the_per_modality_builders_it_replaced(dims, kwargs, lazy):
    frozen = _frozen_ct_ssl_augmentation if dims == 3 else _frozen_xray_ssl_augmentation
    spatial_dims = dims if isinstance(kwargs["spatial_size"], int) else None
    ours = Compose(ssl_augmentation(("image",), spatial_dims=spatial_dims, lazy=lazy, **kwargs), lazy=lazy)
    reference = Compose(frozen(lazy=lazy, **kwargs), lazy=lazy)
    img = MetaTensor(torch.rand(1, *(40, 36, 32)[:dims]) * 2 - 1)
    for seed in range(6):
        got = ours.set_random_state(seed)({"image": img.clone()})["image"]
        want = reference.set_random_state(seed)({"image": img.clone()})["image"]
        assert torch.equal(got.as_tensor(), want.as_tensor()), seed
        assert torch.equal(got.affine, want.affine), seed


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("dims", DIMS)
def test_ssl_augmentation_shapes_and_determinism(dims, lazy):
    img = MetaTensor(torch.rand(1, *(40, 36, 32)[:dims]) * 2 - 1)
    transforms = ssl_augmentation("image", 24, dims, affine_prob=1.0, noise_prob=1.0, lazy=lazy)
    affine = next(t for t in transforms if isinstance(t, RandAffined))
    assert len(affine.rand_affine.rand_affine_grid.rotate_range) == {2: 1, 3: 3}[dims]  # one angle per plane
    pipeline = Compose(transforms, lazy=lazy)
    first = pipeline.set_random_state(7)({"image": img.clone()})["image"]
    again = pipeline.set_random_state(7)({"image": img.clone()})["image"]
    other = pipeline.set_random_state(8)({"image": img.clone()})["image"]
    assert first.shape == (1, *([24] * dims)) and torch.isfinite(first).all()
    assert torch.equal(first.as_tensor(), again.as_tensor())
    assert not torch.equal(first.as_tensor(), other.as_tensor())


def test_ssl_augmentation_bad_arguments_raise():
    with pytest.raises(ValueError, match="flip_prob"):
        ssl_augmentation("image", 24, 3, flip_prob=1.5)
    with pytest.raises(ValueError, match="noise_prob"):
        ssl_augmentation("image", 24, 2, noise_prob=-0.1)
    with pytest.raises(ValueError, match="spatial_dims is needed"):
        ssl_augmentation("image", 24)
    with pytest.raises(ValueError, match="does not match"):
        ssl_augmentation("image", (24, 24), 3)
    with pytest.raises(ValueError, match="2D or 3D"):
        ssl_augmentation("image", (8, 8, 8, 8))
    with pytest.raises(ValueError, match="flip_axes"):
        ssl_augmentation("image", (24, 24), flip_axes=(2,))
