"""CT transforms: TorchIO-style grid, with the modality-neutral crop/pad and separable fused resampling of
:mod:`common.transforms.spatial` they build on, and the preprocessing pipeline on real volumes (skipped without
shared/data)."""

from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, ScaleIntensityRanged
from monai.transforms.lazy.functional import apply_pending

from common.transforms.ct import (
    CentredSpacing,
    CentredSpacingd,
    centred_grid,
    colipri_preprocessing,
    ct_preprocessing,
)
from common.transforms.intensity import FastScaleIntensityRanged
from common.transforms.spatial import (
    ApplyPendingResampled,
    CentralCrop,
    CentralCropd,
    CentralPad,
    CentralPadd,
    apply_pending_fast,
    resample_axis_aligned,
)

REAL_VOLUMES = ("chest_cta_cropped.nii.gz", "lung_pet_ct_dx_A0001_5mm.nii.gz", "abdomen_ct.nii.gz")

pytestmark = pytest.mark.usefixtures("one_thread")


def _oblique_affine(spacing, angle_deg=0.0, origin=(10.0, -20.0, 30.0), flips=(1, 1, 1)) -> np.ndarray:
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.asarray(spacing) * np.asarray(flips))
    affine[:3, 3] = origin
    return affine


def _volume(shape=(23, 19, 11), spacing=(1.3, 0.9, 2.5), seed=0, low=-1200.0, high=1500.0, **kwargs) -> MetaTensor:
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(rng.uniform(low, high, size=(1, *shape)).astype(np.float32))
    return MetaTensor(data, affine=torch.as_tensor(_oblique_affine(spacing, **kwargs)))


# ------------------------------------------------------------------------------------------------ grid, crop, pad


@pytest.mark.parametrize("shape,spacing,target", [((23, 19, 11), (1.3, 0.9, 2.5), 2.0), ((10, 1, 7), (0.5, 1, 3), 1.0)])
def test_centred_grid_keeps_centre_direction_and_floors_extent(shape, spacing, target):
    affine = _oblique_affine(spacing, angle_deg=17.0, flips=(-1, 1, -1))
    out_affine, out_shape = centred_grid(affine, shape, target)
    expected = [1 if n == 1 else math.floor(n * s / target) for n, s in zip(shape, spacing)]
    assert list(out_shape) == expected
    centre_in = affine @ np.append((np.asarray(shape) - 1) / 2, 1)
    centre_out = out_affine @ np.append((np.asarray(out_shape) - 1) / 2, 1)
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
    directions_in = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(out_affine[:3, :3], directions_in * target, atol=1e-12)


def test_centred_grid_matches_torchio_reference_image():
    tio_resample = pytest.importorskip("torchio.transforms.preprocessing.spatial.resample")
    sitk = pytest.importorskip("SimpleITK")
    for shape, spacing, target in [((23, 19, 11), (1.3, 0.9, 2.5), 2.0), ((64, 48, 9), (0.84, 0.84, 5.0), 2.0)]:
        affine = _oblique_affine(spacing, angle_deg=0.0, flips=(-1, -1, 1))  # LPS-stored, as DICOM-derived NIfTI
        image = sitk.GetImageFromArray(np.zeros(shape[::-1], np.float32))
        image.SetSpacing(spacing)
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
        image.SetDirection((lps / np.asarray(spacing)).ravel().tolist())
        image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
        reference = tio_resample.Resample.get_reference_image(image, (target,) * 3)
        out_affine, out_shape = centred_grid(affine, shape, target)
        assert tuple(reference.GetSize()) == out_shape
        np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ out_affine[:3, 3], reference.GetOrigin(), atol=1e-9)


@pytest.mark.parametrize("odd_voxel", ["start", "end"])
def test_central_crop_and_pad_put_the_odd_voxel_where_asked(odd_voxel):
    img = torch.arange(7.0).reshape(1, 7)
    cropped = CentralCrop(4, odd_voxel=odd_voxel)(img)  # 3 to remove: 2 + 1
    assert cropped.flatten().tolist() == ([2.0, 3.0, 4.0, 5.0] if odd_voxel == "start" else [1.0, 2.0, 3.0, 4.0])
    padded = CentralPad(10, value=-5.0, odd_voxel=odd_voxel)(img)  # 3 to add: 2 + 1
    lead = 2 if odd_voxel == "start" else 1
    assert padded.flatten()[:lead].tolist() == [-5.0] * lead
    assert padded.flatten()[lead : lead + 7].tolist() == img.flatten().tolist()
    assert padded.shape == (1, 10)


def test_central_crop_or_pad_matches_torchio_crop_or_pad():
    tio = pytest.importorskip("torchio")
    rng = np.random.default_rng(3)
    for shape in [(5, 8, 9), (12, 3, 6), (7, 7, 7)]:
        data = torch.from_numpy(rng.normal(size=(1, *shape)).astype(np.float32))
        ref = tio.CropOrPad((6, 6, 6), padding_mode="minimum")(tio.ScalarImage(tensor=data, affine=np.eye(4)))
        img = MetaTensor(data.clone(), affine=torch.eye(4, dtype=torch.float64))
        ours = CentralCrop(6)(CentralPad(6, value="minimum")(img))  # TorchIO pads (whole-image minimum), then crops
        np.testing.assert_array_equal(ours.numpy(), ref.data.numpy())
        np.testing.assert_allclose(ours.affine.numpy(), ref.affine, atol=1e-12)


def test_central_pad_is_eager_and_invertible_inside_a_lazy_compose():
    data = {"image": _volume(shape=(6, 5, 4), spacing=(1, 1, 1))}
    pipeline = Compose([CentralCropd("image", 3, lazy=True), ct_pad := _pad_only(8)], lazy=True)
    out = pipeline(data)["image"]
    assert out.shape == (1, 8, 8, 8)
    assert float(out[0, 0, 0, 0]) == pytest.approx(float(out.min()))
    restored = ct_pad.inverse({"image": out})["image"]
    assert restored.shape == (1, 3, 3, 3)


def _pad_only(size: int):
    return CentralPadd("image", size, value="minimum")


@pytest.mark.parametrize(
    ("dtype", "clip", "b_range"),
    [(torch.float32, True, (-1.0, 1.0)), (torch.float64, True, (0.0, 1.0)), (torch.int16, True, (-1.0, 1.0)),
     (torch.float32, False, (-1.0, 1.0)), (torch.float32, False, (None, None))],
)  # fmt: skip
def test_fast_scale_intensity_range_equals_monai_bit_for_bit(dtype, clip, b_range):
    values = torch.linspace(-3000.0, 3000.0, 7 * 6 * 5).reshape(1, 7, 6, 5)
    values[0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    img = MetaTensor(values.to(dtype), affine=torch.as_tensor(_oblique_affine((1.5, 1.0, 2.0), angle_deg=10.0)))
    img.meta["filename_or_obj"] = "scan.nii.gz"
    before = img.clone()
    args = {"keys": "image", "a_min": -1000.0, "a_max": 1000.0, "b_min": b_range[0], "b_max": b_range[1], "clip": clip}
    ours = FastScaleIntensityRanged(**args)({"image": img})["image"]
    theirs = ScaleIntensityRanged(**args)({"image": img.clone()})["image"]
    assert ours.dtype == theirs.dtype and torch.equal(ours.as_tensor().isnan(), theirs.as_tensor().isnan())
    assert torch.equal(ours.as_tensor().nan_to_num(), theirs.as_tensor().nan_to_num())
    assert torch.equal(ours.affine, theirs.affine) and ours.meta["filename_or_obj"] == "scan.nii.gz"
    assert torch.equal(img.as_tensor().nan_to_num(), before.as_tensor().nan_to_num())  # the input is left alone


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pixdim"):
        CentredSpacing(-1.0)
    with pytest.raises(ValueError, match="odd_voxel"):
        CentralCrop(4, odd_voxel="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value"):
        CentralPad(4, value="maximum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="orientation"):
        ct_preprocessing(orientation="RA", loader=None)
    with pytest.raises(ValueError, match="hu_range"):
        ct_preprocessing(hu_range=(1000, -1000), loader=None)
    with pytest.raises(TypeError, match="MetaTensor"):
        CentredSpacing(2.0)(torch.zeros(1, 4, 4, 4))


# ------------------------------------------------------------------------------------------------ fused resampling


def _random_axis_aligned_plan(rng, in_shape, out_shape):
    permutation = rng.permutation(len(in_shape))
    plan = []
    for b, a in enumerate(permutation):
        scale = rng.uniform(0.3, 2.5) * rng.choice([-1, 1])
        offset = rng.uniform(-2, in_shape[a] + 1)  # may leave the image: exercises border clamping
        plan.append((int(a), float(scale), float(offset)))
    return plan


def _grid_sample_reference(img, plan, out_shape, mode):
    """``grid_sample`` (border, align_corners=False) on the dense grid of the same axis-aligned map."""
    rank = len(plan)
    in_shape = img.shape[1:]
    axes = [torch.arange(n, dtype=torch.float64) for n in out_shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    coords = [None] * rank
    for b, (a, scale, offset) in enumerate(plan):
        coords[a] = mesh[b] * scale + offset
    # grid_sample wants (x, y[, z]) = reversed axis order, normalised with align_corners=False
    normalised = [(2 * coords[a] + 1) / in_shape[a] - 1 for a in reversed(range(rank))]
    grid = torch.stack(normalised, dim=-1)[None].float()
    return F.grid_sample(img[None].float(), grid, mode=mode, padding_mode="border", align_corners=False)[0]


@pytest.mark.parametrize("rank,mode", list(itertools.product([2, 3], ["bilinear", "nearest"])))
def test_resample_axis_aligned_matches_grid_sample(rank, mode):
    rng = np.random.default_rng(rank * 10 + len(mode))
    for _ in range(4):
        in_shape = tuple(int(n) for n in rng.integers(3, 12, size=rank))
        out_shape = tuple(int(n) for n in rng.integers(2, 14, size=rank))
        img = torch.from_numpy(rng.normal(size=(2, *in_shape)).astype(np.float32))
        plan = _random_axis_aligned_plan(rng, in_shape, out_shape)
        ours = resample_axis_aligned(img, plan, out_shape, mode)
        reference = _grid_sample_reference(img, plan, out_shape, mode)
        if mode == "nearest":  # ties (x.5 exactly) may round differently in float32 grids: compare almost all
            assert (ours - reference).abs().lt(1e-6).float().mean() > 0.98
        else:
            torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)


def _lazy_chain(img: MetaTensor) -> dict:
    data = {"image": img}
    data = Orientationd("image", axcodes="RAS", labels=None, lazy=True)(data)
    data = CentredSpacingd("image", pixdim=1.7, lazy=True)(data)
    return CentralCropd("image", (9, 8, 7), lazy=True)(data)


def test_apply_pending_fast_matches_monai_apply_pending():
    img = _volume(flips=(-1, -1, 1))  # LPS-stored volume: orientation flips two axes
    ours = ApplyPendingResampled("image")(_lazy_chain(img.clone()))["image"]
    reference, _ = apply_pending(
        _lazy_chain(img.clone())["image"],
        overrides={"mode": "bilinear", "padding_mode": "border", "dtype": torch.float64},
    )
    assert ours.shape == reference.shape == (1, 9, 8, 7)
    torch.testing.assert_close(ours.as_tensor(), reference.as_tensor().float(), atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine.numpy(), atol=1e-9)
    assert len(ours.applied_operations) == len(reference.applied_operations) == 3
    assert not ours.pending_operations


def test_apply_pending_fast_falls_back_to_monai_for_rotations():
    img = _volume(shape=(8, 8, 8), spacing=(1, 1, 1))
    img.push_pending_operation(
        {"lazy_affine": torch.as_tensor(_oblique_affine((1, 1, 1), 30.0, (0, 0, 0))), "lazy_shape": (8, 8, 8)}
    )
    out = apply_pending_fast(img, "bilinear", "border")
    assert out.shape == (1, 8, 8, 8)
    assert not out.pending_operations


def test_lazy_and_eager_pipelines_agree():
    img = _volume(shape=(40, 33, 12), spacing=(0.8, 0.8, 3.0), flips=(-1, -1, 1))
    outputs = [
        Compose(ct_preprocessing(pixdim=2.0, spatial_size=16, loader=None, lazy=lazy), lazy=lazy)(
            {"image": img.clone()}
        )
        for lazy in (True, False)
    ]
    lazy_out, eager_out = (o["image"] for o in outputs)
    assert lazy_out.shape == eager_out.shape == (1, 16, 16, 16)
    torch.testing.assert_close(lazy_out.as_tensor(), eager_out.as_tensor(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lazy_out.affine.numpy(), eager_out.affine.numpy(), atol=1e-9)


def test_label_keys_resample_nearest_without_windowing():
    img = _volume(shape=(20, 20, 10), spacing=(1.0, 1.0, 2.0))
    labels = MetaTensor(torch.randint(0, 3, (1, 20, 20, 10)).float(), affine=img.affine.clone())
    out = Compose(ct_preprocessing(pixdim=1.5, spatial_size=16, label_keys="mask", loader=None), lazy=True)(
        {"image": img, "mask": labels}
    )
    assert out["mask"].shape == out["image"].shape == (1, 16, 16, 16)
    assert set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0, 2.0}
    np.testing.assert_allclose(out["mask"].affine.numpy(), out["image"].affine.numpy())


def test_pad_value_is_the_windowed_minimum_when_there_is_no_air():
    soft_tissue = _volume(shape=(10, 10, 10), spacing=(1, 1, 1), low=20.0, high=80.0)
    out = Compose(ct_preprocessing(pixdim=1.0, spatial_size=14, loader=None))({"image": soft_tissue})["image"]
    inner_min = float(out[0, 2:12, 2:12, 2:12].min())
    assert float(out[0, 0, 0, 0]) == pytest.approx(inner_min)
    assert inner_min > 0.0  # 20 HU -> 0.02, not the window floor -1


@pytest.mark.parametrize("lazy", [True, False])
def test_pipeline_inverts_to_the_input_grid(lazy):
    """Maps (e.g. dense similarities) computed on the 2 mm grid can be taken back to the scan's own grid."""
    smooth = torch.nn.functional.interpolate(
        torch.rand(1, 1, 4, 4, 3) * 1600 - 800, size=(30, 26, 12), mode="trilinear", align_corners=False
    )[0]
    img = MetaTensor(smooth, affine=torch.as_tensor(_oblique_affine((0.9, 0.9, 3.0), flips=(-1, -1, 1))))
    pipeline = Compose(ct_preprocessing(pixdim=1.5, spatial_size=(16, 20, 28), loader=None, lazy=lazy), lazy=lazy)
    out = pipeline({"image": img.clone()})
    restored = pipeline.inverse(out)["image"]
    assert restored.shape == img.shape and not restored.pending_operations
    np.testing.assert_allclose(restored.affine.numpy(), img.affine.numpy(), atol=1e-6)
    inside = (slice(None), slice(4, 26), slice(4, 22), slice(2, 10))  # away from the cropped/padded margins
    expected = (img.as_tensor() / 1000).clamp(-1, 1)[inside]
    assert float((restored.as_tensor()[inside] - expected).abs().mean()) < 0.02


# ------------------------------------------------------------------------------------------------ real volumes


@pytest.mark.parametrize("name", REAL_VOLUMES)
def test_colipri_preprocessing_on_real_volumes(real_data_dir, name):
    path = real_data_dir / "ct" / name
    out = Compose(colipri_preprocessing(), lazy=True)({"image": str(path)})["image"]
    assert out.shape == (1, 192, 192, 192) and out.dtype == torch.float32
    assert float(out.min()) == -1.0 and float(out.max()) <= 1.0  # air reaches the window floor
    assert nib.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :3], axis=0), 2.0, atol=1e-6)
    # the volume centre stays at the centre of the output grid (centred resampling, centred crop/pad)
    source = nib.load(path)
    centre_in = source.affine @ np.append((np.asarray(source.shape[:3]) - 1) / 2, 1)
    centre_out = out.affine.numpy() @ np.append(np.full(3, 191 / 2), 1)
    assert np.abs(centre_out - centre_in).max() <= 2.0 + 1e-6  # at most one 2 mm voxel of odd-size rounding


def test_sar_orientation_and_demo_geometry(real_data_dir):
    path = str(real_data_dir / "ct" / "chest_cta_cropped.nii.gz")
    sar = Compose(colipri_preprocessing(orientation="SAR"), lazy=True)({"image": path})["image"]
    assert nib.aff2axcodes(sar.affine.numpy()) == ("S", "A", "R")
    demo = Compose(ct_preprocessing(pixdim=6.0, spatial_size=64), lazy=True)({"image": path})["image"]
    assert demo.shape == (1, 64, 64, 64)
    assert np.linalg.norm(demo.affine.numpy()[:3, :3], axis=0) * 64 == pytest.approx([384.0] * 3)


def test_lazy_and_eager_agree_on_a_real_volume(real_data_dir):
    path = str(real_data_dir / "ct" / "chest_cta_cropped.nii.gz")
    lazy = Compose(colipri_preprocessing(lazy=True), lazy=True)({"image": path})["image"]
    eager = Compose(colipri_preprocessing(lazy=False))({"image": path})["image"]
    assert (lazy.as_tensor() - eager.as_tensor()).abs().max() < 1e-5
