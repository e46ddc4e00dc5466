"""Body masks (common.transforms.body_mask) on synthetic CT volumes and radiographs whose body is known."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose

from common.networks.attention_masks import attention_pseudo_mask
from common.transforms.body_mask import (
    CTBodyMask,
    CTBodyMaskd,
    RadiographBodyMask,
    RadiographBodyMaskd,
    fill_holes,
    keep_largest_component,
    otsu_thresholds,
)
from common.transforms.ct import ct_preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")


def _ct_volume() -> tuple[np.ndarray, np.ndarray]:
    """(40, 36, 30) HU: air -1000; body = elliptic cylinder along z (cut by the field of view, like a chest CT) of
    -50 HU holding a -850 HU lung closed in 3D, a second lung with an airway leaving through the top slice, a 3D
    enclosed gas pocket; outside: a table (300 HU, smaller, separate) and a small -50 HU blob. Returns (hu, body)."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(30), indexing="ij")
    body = ((x - 20) / 16.0) ** 2 + ((y - 16) / 12.0) ** 2 <= 1.0
    hu = np.full(body.shape, -1000.0, dtype=np.float32)
    hu[body] = -50.0
    lung_closed = ((x - 13) / 5.0) ** 2 + ((y - 16) / 6.0) ** 2 + ((z - 12) / 6.0) ** 2 <= 1.0
    lung_open = ((x - 27) / 5.0) ** 2 + ((y - 16) / 6.0) ** 2 + ((z - 12) / 6.0) ** 2 <= 1.0
    airway = ((x - 27) ** 2 + (y - 16) ** 2 <= 2) & (z >= 12)
    pocket = (x - 20) ** 2 + (y - 8) ** 2 + (z - 20) ** 2 <= 4
    hu[lung_closed | lung_open | airway] = -850.0
    hu[pocket] = -1000.0
    hu[(y >= 31) & (y <= 32) & (x >= 8) & (x <= 32)] = 300.0  # table below the body, not touching it
    hu[(x - 37) ** 2 + (y - 2) ** 2 + (z - 3) ** 2 <= 2] = -50.0  # small blob in air
    return hu, body


def test_ct_body_mask_keeps_the_body_with_its_lungs() -> None:
    hu, body = _ct_volume()
    mask = CTBodyMask()(torch.from_numpy(hu)[None])
    assert mask.shape == (1, *hu.shape) and mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), body)
    # a 3D fill (MONAI FillHoles) closes the lung and the pocket but not the lung whose airway reaches the border
    mask3d = CTBodyMask(slice_axis=None)(torch.from_numpy(hu)[None])[0].numpy().astype(bool)
    assert mask3d[13, 16, 12] and mask3d[20, 8, 20] and not mask3d[27, 16, 12] and not mask3d[27, 16, 29]
    assert (mask3d <= body).all()
    # without the largest component the table and the blob stay; without filling the lungs are out
    raw = CTBodyMask(largest_component=False, fill_holes=False)(torch.from_numpy(hu)[None])[0].numpy().astype(bool)
    np.testing.assert_array_equal(raw, hu > -500)


def test_ct_threshold_in_hu_or_in_the_window() -> None:
    hu, body = _ct_volume()
    windowed = np.clip(hu, -1000, 1000) / 1000.0  # ScaleIntensityRange((-1000, 1000) -> (-1, 1))
    mask = CTBodyMask(hu_range=(-1000, 1000), out_range=(-1, 1))(torch.from_numpy(windowed)[None])
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), body)
    assert CTBodyMask(hu_threshold=-500, hu_range=(-1000, 1000), out_range=(0, 1)).threshold == pytest.approx(0.25)
    with pytest.raises(ValueError, match="inside the window"):
        CTBodyMask(hu_threshold=-500, hu_range=(-400, 400))


def test_dictionary_transform_keeps_the_metadata() -> None:
    hu, body = _ct_volume()
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(hu)[None], affine=affine)
    out = CTBodyMaskd(keys="image", mask_key="body")({"image": image, "other": 1})
    assert out["image"] is image and out["other"] == 1
    assert isinstance(out["body"], MetaTensor) and torch.equal(out["body"].affine, affine)
    np.testing.assert_array_equal(out["body"][0].numpy().astype(bool), body)
    with pytest.raises(ValueError, match="one image key"):
        CTBodyMaskd(keys=["image", "other"])
    with pytest.raises(ValueError, match="one-channel"):
        CTBodyMask()(torch.zeros(2, 4, 4, 4))
    pending = MetaTensor(torch.from_numpy(hu)[None], affine=affine)
    from monai.transforms import Spacing

    pending = Spacing(pixdim=4.0, lazy=True)(pending)
    with pytest.raises(ValueError, match="pending"):
        CTBodyMask()(pending)


def test_wiring_into_ct_preprocessing() -> None:
    """Both wirings of a bundle give (nearly) the same mask on the preprocessed grid: from the raw HU right after
    loading, resampled as a label key, or from the windowed image after preprocessing."""
    hu, _ = _ct_volume()
    affine = torch.diag(torch.tensor([3.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    kwargs = {"keys": "image", "pixdim": 5.0, "spatial_size": 24, "loader": None}

    def record() -> dict:
        return {"image": MetaTensor(torch.from_numpy(hu)[None], affine=affine)}

    early = Compose([CTBodyMaskd("image", "body"), *ct_preprocessing(label_keys="body", **kwargs)])(record())
    late = Compose([*ct_preprocessing(**kwargs), CTBodyMaskd("image", "body", hu_range=(-1000, 1000))])(record())
    assert early["body"].shape == late["body"].shape == early["image"].shape == (1, 24, 24, 24)
    assert set(early["body"].unique().tolist()) <= {0.0, 1.0}
    a, b = early["body"].bool(), late["body"].bool()
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.95


def _radiograph() -> tuple[np.ndarray, np.ndarray]:
    """(96, 80) radiograph in [0, 1]: dark background 0.02 with noise, body ellipse 0.7 with two dark lungs 0.3
    inside, a bright marker 0.95 in a corner. Returns (image, body)."""
    rng = np.random.default_rng(0)
    r, c = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
    body = ((r - 50) / 40.0) ** 2 + ((c - 40) / 30.0) ** 2 <= 1.0
    image = np.where(body, 0.7, 0.02)
    lungs = (((r - 45) / 22.0) ** 2 + ((c - 28) / 9.0) ** 2 <= 1.0) | (
        ((r - 45) / 22.0) ** 2 + ((c - 52) / 9.0) ** 2 <= 1.0
    )
    image[lungs] = 0.3
    image[2:6, 70:76] = 0.95
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
    return image, body


def test_radiograph_body_mask() -> None:
    image, body = _radiograph()
    mask = RadiographBodyMask()(torch.from_numpy(image)[None])
    assert mask.shape == (1, 96, 80) and mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), body)
    low, high = otsu_thresholds(image, classes=3)
    assert 0.05 < low < 0.3 < high < 0.7  # background | lungs | tissue
    (two,) = otsu_thresholds(image, classes=2)
    assert 0.05 < two  # plain Otsu: lungs below the threshold, put back only because the body encloses them
    # the same mask before and after normalisation (Otsu is invariant to positive affine intensity maps)
    normalised = RadiographBodyMask()(torch.from_numpy((image - 0.53) / 0.26)[None])
    assert torch.equal(normalised, mask)
    assert bool(RadiographBodyMask()(torch.full((1, 8, 8), 0.5)).all())  # no threshold: nothing excluded
    d = RadiographBodyMaskd(keys="image", mask_key="body")({"image": MetaTensor(torch.from_numpy(image)[None])})
    assert isinstance(d["body"], MetaTensor) and torch.equal(d["body"].as_tensor(), mask)


def _brute_force_otsu(values: np.ndarray, classes: int, bins: int) -> list[float]:
    hist, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    mean = (hist * centres).sum() / hist.sum()
    best, best_cut = -1.0, None
    cuts = (
        [(i,) for i in range(bins - 1)]
        if classes == 2
        else [(i, j) for i in range(bins - 1) for j in range(i + 1, bins - 1)]
    )
    for cut in cuts:
        bounds = [0, *(k + 1 for k in cut), bins]
        variance = 0.0
        for lo, hi in itertools.pairwise(bounds):
            w = hist[lo:hi].sum()
            if w == 0:
                break
            variance += w * ((hist[lo:hi] * centres[lo:hi]).sum() / w - mean) ** 2
        else:
            if variance > best + 1e-9 * abs(best):
                best, best_cut = variance, cut
    return [float(centres[k]) for k in best_cut]


def test_otsu_matches_the_definition() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.1, 0.05, 3000), rng.normal(0.45, 0.08, 2000), rng.normal(0.8, 0.05, 1000)])
    for classes in (2, 3):
        np.testing.assert_allclose(otsu_thresholds(values, classes, bins=48), _brute_force_otsu(values, classes, 48))
    with pytest.raises(ValueError, match="distinct"):
        otsu_thresholds(np.ones(5))
    if importlib.util.find_spec("skimage") is not None:
        from skimage.filters import threshold_multiotsu, threshold_otsu

        assert otsu_thresholds(values, 2)[0] == pytest.approx(threshold_otsu(values, nbins=256))
        np.testing.assert_allclose(otsu_thresholds(values, 3), threshold_multiotsu(values, classes=3, nbins=256))


def test_component_and_hole_helpers() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:5, 3:5] = False  # hole
    mask[9:11, 9:11] = True  # smaller component
    mask[8, 8] = True  # touches the big square diagonally: one component with full connectivity
    assert keep_largest_component(mask).sum() == mask.sum()
    assert keep_largest_component(mask, connectivity=1).sum() == mask.sum() - 5
    filled = fill_holes(mask)
    assert filled[3:5, 3:5].all() and filled.sum() == mask.sum() + 4
    assert not keep_largest_component(np.zeros((4, 4), dtype=bool)).any()
    with pytest.raises(ValueError, match="3D"):
        fill_holes(mask, slice_axis=0)
    if importlib.util.find_spec("skimage") is not None:
        from monai.transforms import KeepLargestConnectedComponent

        for connectivity in (1, 2):
            monai_mask = KeepLargestConnectedComponent(applied_labels=1, connectivity=connectivity)(
                mask[None].astype(np.uint8)
            )
            np.testing.assert_array_equal(
                np.asarray(monai_mask[0], dtype=bool), keep_largest_component(mask, connectivity)
            )


def test_phantom_ct_lungs_and_airways_are_body() -> None:
    from common.data.phantom import TISSUES, make_phantom

    phantom = make_phantom(0, "training", 0)
    mask = CTBodyMask()(torch.from_numpy(phantom.hu.astype(np.float32))[None])[0].numpy().astype(bool)
    for tissue in ("lung", "airway", "heart", "vertebral_body"):
        inside = phantom.tissue == TISSUES[tissue]
        assert mask[inside].all(), tissue
    assert not mask[phantom.tissue == TISSUES["air"]].any()


def test_collated_body_masks_feed_the_pseudo_mask() -> None:
    image, body = _radiograph()
    transform = RadiographBodyMaskd(keys="image", mask_key="body")
    batch = list_data_collate([transform({"image": torch.from_numpy(image)[None]}) for _ in range(2)])
    assert batch["body"].shape == (2, 1, 96, 80) and batch["body"].dtype == torch.uint8
    attention = torch.rand(2, 3, 6, 5).flatten(2).softmax(-1).view(2, 3, 6, 5)
    mask = attention_pseudo_mask(attention, (96, 80), batch["body"])
    assert mask.shape == (2, 1, 96, 80) and not bool(mask[:, 0][:, ~torch.from_numpy(body)].any())
    assert bool(mask.any())
