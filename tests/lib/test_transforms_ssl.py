"""SSL views and masks: RandomResizedCrop boxes, DINOv2 multi-crop, per-view recipes, iBOT block masks and MAE
masks, in 2D and 3D; shapes, scale/ratio ranges, mask ratios and determinism under ``set_random_state``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, RandGaussianSmoothd

from common.transforms.ssl import (
    BlockMaskGenerator,
    MultiCropd,
    RandBlockMaskd,
    RandPatchMaskd,
    RandSolarized,
    crop_and_resize,
    dino_multicrop,
    dino_view_transforms,
    random_patch_mask,
    sample_resized_crop_box,
)

DIMS = (2, 3)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    transform = MultiCropd("image", 16, 8, num_local=2, global_scale=(1.0, 1.0), ratio=(1.0, 1.0),
                           global_transforms=[marker, []], local_transforms=None)
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
    pipeline = Compose(dino_multicrop("image", dims, global_size, local_size, patch, num_local=2,
                                      mean=0.5 if dims == 2 else None, std=0.25 if dims == 2 else None))
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


@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.75), ((4, 6, 8), 0.6), (10, 0.0)])
def test_random_patch_mask_keeps_exactly_the_mae_count(grid, ratio):
    mask = random_patch_mask(grid, ratio, np.random.RandomState(0))
    total = int(np.prod(grid))
    assert mask.shape == (total,) and mask.dtype == torch.bool
    assert int((~mask).sum()) == int(total * (1 - ratio))
    transform = RandPatchMaskd("image", grid, ratio)
    first = transform.set_random_state(2)({"image": torch.zeros(1)})["mae_mask"]
    assert torch.equal(first, transform.set_random_state(2)({"image": torch.zeros(1)})["mae_mask"])
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(grid, 1.0)
