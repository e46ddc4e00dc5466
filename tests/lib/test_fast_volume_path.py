"""The fast on-the-fly CT path gives the values of the plain one: ``LoadVolumed`` wraps volumes without MONAI's
copy into C order, the separable resampling reads any memory order, dtype and crop, and ``FusedResampled`` makes
the spatial steps one interpolation over the cropped field of view whatever ``Compose`` runs them."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage

from common.data.readers import LoadVolumed, VolumeReader, read_volume
from common.transforms.ct import ct_preprocessing
from common.transforms.spatial import FusedResampled, resample_axis_aligned

pytestmark = pytest.mark.usefixtures("one_thread")


def _monai_loaded(path: Path) -> MetaTensor:
    """What MONAI's own ``LoadImage`` (with ``EnsureChannelFirst``) makes of :class:`VolumeReader`'s output."""
    return LoadImage(reader=VolumeReader(), image_only=True, ensure_channel_first=True)(str(path))


def _assert_same_loading(path: Path) -> MetaTensor:
    ours = LoadVolumed("image", ct_checks="off")({"image": str(path)})["image"]
    theirs = _monai_loaded(path)
    assert isinstance(ours, MetaTensor) and ours.dtype == theirs.dtype == torch.float32
    assert ours.shape == theirs.shape
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    assert torch.equal(ours.affine, theirs.affine)
    assert ours.meta.keys() == theirs.meta.keys()
    for key, value in theirs.meta.items():
        np.testing.assert_array_equal(np.asarray(ours.meta[key]), np.asarray(value), err_msg=str(key))
    return ours


def _int16_ct(tmp_path: Path, shape=(37, 29, 23), slope: float | None = None) -> Path:
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 2000, size=shape).astype(np.int16)
    image = nib.Nifti1Image(data, np.diag([-0.7, -0.8, 1.5, 1.0]))
    if slope is not None:
        image.header.set_slope_inter(slope, -3.0)
    path = tmp_path / ("scaled.nii" if slope else "plain.nii")
    nib.save(image, path)
    gz = path.with_suffix(".nii.gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return gz


@pytest.mark.parametrize("slope", [None, 0.5])
def test_load_volumed_equals_monai_load_image_without_copying(tmp_path: Path, slope: float | None) -> None:
    path = _int16_ct(tmp_path, slope=slope)
    ours = _assert_same_loading(path)
    assert not ours.is_contiguous()  # the Fortran-ordered NIfTI voxels, not a transposed copy
    assert ours.stride()[1:] == (1, 37, 37 * 29)
    np.testing.assert_array_equal(ours[0].numpy(), nib.load(path).get_fdata(dtype=np.float32))


def test_load_volumed_equals_monai_load_image_for_itk_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(9, 11, 13)).astype(np.int16))
    image.SetSpacing((0.9, 0.8, 2.0))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    _assert_same_loading(tmp_path / "v.mha")


def test_load_volumed_equals_monai_load_image_on_real_ct(real_data_dir: Path) -> None:
    _assert_same_loading(real_data_dir / "ct" / "chest_cta_cropped.nii.gz")


def test_read_volume_gives_writable_float32(tmp_path: Path) -> None:
    array, _ = read_volume(_int16_ct(tmp_path))
    assert array.dtype == np.float32 and array.flags.writeable


def test_truncated_stream_is_named(tmp_path: Path) -> None:
    path = _int16_ct(tmp_path)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-500]))
    with pytest.raises(Exception, match="cut.nii.gz.*(truncated|holds)"):
        read_volume(cut)


def _plan_cases():
    """(input shape, plan, output shape): shrinking with a crop, upsampling, flips, permuted axes, identities."""
    return [
        ((40, 36, 30), [(0, 2.6, 1.3), (1, 2.6, 1.3), (2, 1.4, 3.2)], (14, 12, 17)),
        ((12, 10, 8), [(0, 0.4, -0.3), (1, 0.45, 0.2), (2, 0.5, 0.25)], (28, 22, 15)),
        ((20, 18, 16), [(0, -1.7, 18.5), (1, -1.7, 16.1), (2, 1.2, 0.4)], (11, 10, 12)),
        ((20, 18, 16), [(2, 1.3, 0.2), (0, -1.1, 19.0), (1, 1.0, 2.0)], (12, 17, 14)),
        ((15, 14, 13), [(0, 1.0, 0.0), (1, 1.0, 2.0), (2, 2.0, 1.0)], (15, 10, 6)),
    ]


@pytest.mark.parametrize("case", range(len(_plan_cases())))
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resample_reads_any_memory_order_and_integer_input(case: int, mode: str) -> None:
    in_shape, plan, out_shape = _plan_cases()[case]
    rng = np.random.default_rng(case)
    stored = rng.integers(-1024, 3000, size=in_shape).astype(np.int16)
    contiguous = torch.from_numpy(stored.astype(np.float32))[None]
    reference = resample_axis_aligned(contiguous, plan, out_shape, mode)
    fortran = torch.from_numpy(np.asfortranarray(stored))[None]  # NIfTI's order, int16 as stored
    assert not fortran.is_contiguous()
    as_stored = resample_axis_aligned(fortran, plan, out_shape, mode)
    assert as_stored.dtype == torch.float32 and as_stored.is_contiguous() and as_stored.shape == (1, *out_shape)
    assert torch.equal(as_stored, resample_axis_aligned(fortran.float(), plan, out_shape, mode))  # int16 exact
    # another memory order runs the axes in another order: equal up to float32 rounding
    for variant in (fortran, contiguous.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)):
        torch.testing.assert_close(resample_axis_aligned(variant, plan, out_shape, mode), reference, atol=1e-3, rtol=0)


def _ct_volume(flips=(-1, -1, 1)) -> MetaTensor:
    rng = np.random.default_rng(5)
    data = torch.from_numpy(rng.uniform(-1100, 1500, size=(1, 60, 52, 18)).astype(np.float32))
    affine = np.diag([0.8 * flips[0], 0.8 * flips[1], 3.0 * flips[2], 1.0])
    return MetaTensor(data, affine=torch.as_tensor(affine))


def test_fused_transform_is_lazy_inside_an_eager_compose() -> None:
    """MONAI's default Compose(lazy=False) would run orientation, spacing and crop one by one; the fused step gives
    the one-interpolation result of a lazy Compose, bit for bit, and undoes the steps on inversion."""
    pipeline = ct_preprocessing(pixdim=2.0, spatial_size=16, loader=None)
    assert any(isinstance(t, FusedResampled) for t in pipeline)
    eager_compose = Compose(pipeline)
    out = eager_compose({"image": _ct_volume()})["image"]
    lazy_compose = Compose(ct_preprocessing(pixdim=2.0, spatial_size=16, loader=None), lazy=True)
    assert torch.equal(out.as_tensor(), lazy_compose({"image": _ct_volume()})["image"].as_tensor())
    eager_steps = Compose(ct_preprocessing(pixdim=2.0, spatial_size=16, loader=None, lazy=False))
    expected = eager_steps({"image": _ct_volume()})["image"]
    torch.testing.assert_close(out.as_tensor(), expected.as_tensor(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out.affine.numpy(), expected.affine.numpy(), atol=1e-9)
    restored = eager_compose.inverse({"image": out})["image"]
    assert restored.shape == (1, 60, 52, 18)
    np.testing.assert_allclose(restored.affine.numpy(), _ct_volume().affine.numpy(), atol=1e-6)


def test_fused_transform_refuses_eager_only_steps() -> None:
    from monai.transforms import ScaleIntensityd

    with pytest.raises(TypeError, match="ScaleIntensityd cannot run lazily"):
        FusedResampled([ScaleIntensityd("image")])
