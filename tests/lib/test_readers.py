"""Readers on real data (shared/data CT volumes and series, pydicom's CT slice and chest radiograph) and on small
files written here, cross-checked against nibabel, pydicom's LUT functions and MONAI's own readers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from common.data.readers import (
    LoadRadiographd,
    LoadVolumed,
    RadiographReader,
    VolumeReader,
    read_radiograph,
    read_volume,
)

try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom < 3
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

REAL_NIFTI = ("chest_cta_cropped.nii.gz", "lung_pet_ct_dx_A0001_5mm.nii.gz", "abdomen_ct.nii.gz")
REAL_SERIES = "dicom_series_abdomen"


def _pydicom_file(name: str) -> Path:
    """A file shipped with pydicom or pydicom-data, never downloaded; skip when it is not installed locally."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except TypeError:  # pydicom < 3 has no download switch
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available locally (pydicom-data not installed)")
    return Path(path)


def _assert_hu_like(array: np.ndarray) -> None:
    """Plausible CT numbers: air near -1000 HU present, nothing beyond the 12-bit CT range, soft tissue in between."""
    assert array.dtype == np.float32
    assert -1100 <= np.percentile(array[::2, ::2, ::2], 0.5) <= -850
    assert array.min() >= -3024 and array.max() <= 4095
    assert -1000 < np.median(array) < 400


# ----------------------------------------------------------------------------------------------------------------------
# real volumes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_NIFTI)
def test_real_nifti_matches_nibabel(real_data_dir: Path, name: str) -> None:
    path = real_data_dir / "ct" / name
    array, affine = read_volume(path)
    reference = nib.load(path)
    assert array.shape == reference.shape
    np.testing.assert_allclose(affine, reference.affine)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), reference.header.get_zooms()[:3], rtol=1e-6)
    # values are the stored integers (these files carry no scaling), voxel for voxel
    np.testing.assert_array_equal(array[::7, ::7, ::3], reference.dataobj[::7, ::7, ::3])
    _assert_hu_like(array)


def test_real_nifti_metatensor_feeds_orientation_and_spacing(real_data_dir: Path) -> None:
    from monai.transforms import Compose, Orientationd, Spacingd

    path = real_data_dir / "ct" / "chest_cta_cropped.nii.gz"
    reference = nib.load(path)
    item = LoadVolumed(keys="image")({"image": str(path)})
    image = item["image"]
    assert tuple(image.shape) == (1, *reference.shape)
    np.testing.assert_allclose(image.affine.numpy(), reference.affine, atol=1e-5)
    np.testing.assert_allclose(image.pixdim.numpy(), reference.header.get_zooms()[:3], rtol=1e-6)
    assert image.meta["filename_or_obj"] == str(path)

    out = Compose([Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=(3.0, 3.0, 3.0))])(item)
    ras = out["image"]
    assert nib.aff2axcodes(ras.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(ras.pixdim.numpy(), (3.0, 3.0, 3.0), rtol=1e-6)
    extent = np.asarray(reference.shape) * np.asarray(reference.header.get_zooms()[:3])
    np.testing.assert_allclose(np.asarray(ras.shape[1:]) * 3.0, extent, atol=3.0)


def test_real_dicom_series(real_data_dir: Path) -> None:
    folder = real_data_dir / "ct" / REAL_SERIES
    array, affine = read_volume(folder)
    headers = sorted(
        (pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    assert array.shape == (headers[0].Columns, headers[0].Rows, len(headers))
    steps = np.diff([float(ds.ImagePositionPatient[2]) for ds in headers])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [*map(float, headers[0].PixelSpacing[::-1]), steps.mean()], rtol=1e-5)
    _assert_hu_like(array)
    # the slice at the origin is the most inferior one (GDCM sorts by position), with rescale applied as pydicom does
    origin_lps = np.asarray(headers[0].ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(affine[:3, 3], origin_lps * [-1, -1, 1], atol=1e-4)
    first = pydicom.dcmread(folder / Path(headers[0].filename).name)
    np.testing.assert_array_equal(array[:, :, 0], apply_modality_lut(first.pixel_array, first).T)


@pytest.mark.slow
def test_real_dicom_series_matches_monai_pydicom_reader(real_data_dir: Path) -> None:
    from monai.transforms import LoadImage, Orientation

    folder = real_data_dir / "ct" / REAL_SERIES
    ours = LoadVolumed(keys="image")({"image": str(folder)})["image"]
    theirs = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(str(folder))
    ours, theirs = Orientation("RAS")(ours), Orientation("RAS")(theirs)  # PydicomReader stacks slices the other way
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.slow
def test_real_dicom_series_matches_monai_itk_reader(real_data_dir: Path) -> None:
    pytest.importorskip("itk")
    from monai.transforms import LoadImage

    folder = real_data_dir / "ct" / REAL_SERIES
    array, affine = read_volume(folder)
    theirs = LoadImage(reader="ITKReader", image_only=True)(str(folder))
    np.testing.assert_allclose(theirs.affine.numpy(), affine, atol=1e-5)
    np.testing.assert_array_equal(theirs.numpy(), array)


# ----------------------------------------------------------------------------------------------------------------------
# pydicom's real slices
# ----------------------------------------------------------------------------------------------------------------------


def test_ct_small_slice_as_radiograph_and_rejected_as_volume() -> None:
    from common.data.contract import DataContractError

    path = _pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    array, spacing = read_radiograph(path)
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # no VOI in this file: HU
    assert array.shape == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(array, expected.astype(np.float32))
    np.testing.assert_allclose(spacing, [float(v) for v in ds.PixelSpacing])
    with pytest.raises(DataContractError, match="single DICOM file") as info:
        read_volume(path)
    assert str(path) in str(info.value)


def test_series_built_from_ct_small_applies_per_slice_rescale(tmp_path: Path) -> None:
    """Three copies of the real CT_small slice, shifted along the slice normal, one with a different intercept."""
    source = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
    normal = np.cross(*np.reshape(np.asarray(source.ImageOrientationPatient, dtype=float), (2, 3)))
    folder = tmp_path / "series"
    folder.mkdir()
    intercepts = [-1024.0, -1000.0, -1024.0]
    for k, intercept in enumerate(intercepts):
        ds = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
        position = np.asarray(source.ImagePositionPatient, dtype=float) + 3.0 * k * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.RescaleIntercept = f"{intercept:g}"
        ds.save_as(folder / f"{2 - k}.dcm")  # reverse file order: sorting must follow the positions
    array, affine = read_volume(folder)
    assert array.shape == (source.Columns, source.Rows, 3)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [*map(float, source.PixelSpacing), 3.0], rtol=1e-4)
    for k, intercept in enumerate(intercepts):
        expected = source.pixel_array * float(source.RescaleSlope) + intercept
        np.testing.assert_array_equal(array[:, :, k], expected.T.astype(np.float32))


def test_chest_radiograph_monochrome1_is_inverted() -> None:
    path = _pydicom_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    array, spacing = read_radiograph(path)
    assert array.shape == (ds.Rows, ds.Columns)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    np.testing.assert_allclose(array, windowed.max() + windowed.min() - windowed)
    # anatomy: on a PA film, the mediastinum and spine (dense) must be brighter than the lung fields (air)
    h, w = array.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.concatenate([array[rows, int(0.2 * w) : int(0.35 * w)], array[rows, int(0.65 * w) : int(0.8 * w)]], 1)
    assert array[rows, int(0.46 * w) : int(0.54 * w)].mean() > lungs.mean()
    assert np.isnan(spacing).all()  # this file stores Pixel Spacing 0\0: unknown, not zero


# ----------------------------------------------------------------------------------------------------------------------
# radiographs written here
# ----------------------------------------------------------------------------------------------------------------------


def test_monochrome1_is_the_inverse_of_monochrome2_with_window(tmp_path: Path, write_dicom) -> None:
    pixels = np.random.default_rng(0).integers(0, 4096, size=(12, 10)).astype(np.uint16)
    window = (2000.0, 2000.0)
    tags = {"intercept": 0.0, "modality": "DX", "window": window, "spacing": (0.2, 0.25)}
    mono2, spacing = read_radiograph(write_dicom(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2", **tags))
    mono1, _ = read_radiograph(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", **tags))
    np.testing.assert_allclose(mono1, mono2.max() + mono2.min() - mono2)
    # the window clips: values below centre - width/2 share the lowest output, above centre + width/2 the highest
    low, high = pixels <= window[0] - window[1] / 2 - 1, pixels >= window[0] + window[1] / 2
    assert low.any() and high.any()
    assert np.ptp(mono2[low]) == 0 and np.ptp(mono2[high]) == 0 and mono2[low][0] < mono2[high][0]
    np.testing.assert_allclose(spacing, [0.2, 0.25])


@pytest.mark.parametrize("bits", [8, 16])
def test_png_grey_values_round_trip(tmp_path: Path, bits: int) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.random.default_rng(bits).integers(0, np.iinfo(dtype).max, size=(9, 13), endpoint=True).astype(dtype)
    path = tmp_path / "cxr.png"
    Image.fromarray(pixels).save(path)
    array, spacing = read_radiograph(path)
    assert array.dtype == np.float32 and array.shape == (9, 13)
    np.testing.assert_array_equal(array, pixels.astype(np.float32))
    assert np.isnan(spacing).all()


def test_rgb_png_and_jpeg_become_grey(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, size=(16, 16)).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "grey_rgb.png")[0], grey)
    colour = np.random.default_rng(2).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    expected = colour.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(read_radiograph(tmp_path / "colour.png")[0], expected, atol=1e-3)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1)).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "cxr.jpg", quality=95)
    array, _ = read_radiograph(tmp_path / "cxr.jpg")
    assert array.shape == (32, 32) and np.abs(array - smooth).mean() < 3  # lossy, but the same picture


def test_2d_nifti_radiograph_is_rows_by_columns(tmp_path: Path, write_nifti) -> None:
    ij = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)  # NIfTI index order (i, j) = (columns, rows)
    path = write_nifti(tmp_path / "cxr.nii.gz", ij[:, :, None], np.diag([0.3, 0.2, 1.0, 1.0]))
    array, spacing = read_radiograph(path)
    np.testing.assert_array_equal(array, ij.T)
    np.testing.assert_allclose(spacing, [0.2, 0.3])


def test_load_radiographd_metatensor(tmp_path: Path, write_dicom) -> None:
    pixels = np.random.default_rng(3).integers(0, 1000, size=(7, 11)).astype(np.uint16)
    path = write_dicom(tmp_path / "x.dcm", pixels, intercept=0.0, modality="DX", spacing=(0.15, 0.2))
    item = LoadRadiographd(keys=["image", "absent"], allow_missing_keys=True)({"image": str(path), "report": "x"})
    image = item["image"]
    assert tuple(image.shape) == (1, 7, 11) and item["report"] == "x" and "absent" not in item
    np.testing.assert_array_equal(image[0].numpy(), pixels.astype(np.float32))
    np.testing.assert_allclose(image.pixdim.numpy(), [0.15, 0.2], rtol=1e-6)
    with pytest.raises(KeyError):
        LoadRadiographd(keys="image")({"report": "x"})


# ----------------------------------------------------------------------------------------------------------------------
# volumes written here
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_match_nibabel_geometry(tmp_path: Path, suffix: str) -> None:
    """SimpleITK writes the same image as MHA/NRRD and as NIfTI; our LPS->RAS affine must equal nibabel's."""
    zyx = np.random.default_rng(4).normal(size=(5, 6, 7)).astype(np.float32)
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    rotation = sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix()
    image.SetDirection(rotation)
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    array, affine = read_volume(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(array, zyx.transpose(2, 1, 0))
    np.testing.assert_allclose(affine, nib.load(tmp_path / "v.nii.gz").affine, atol=1e-4)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nii.gz")[0], array)


def test_dicom_series_geometry_and_sorting(tmp_path: Path, write_dicom_series) -> None:
    volume = np.random.default_rng(5).integers(0, 2000, size=(4, 6, 5)).astype(np.int16)
    write_dicom_series(tmp_path / "s", volume, step=2.5, spacing=(0.6, 0.7), intercept=-1024.0)
    array, affine = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(array, (volume.astype(np.float32) - 1024).transpose(2, 1, 0))
    np.testing.assert_allclose(np.diag(affine)[:3], [-0.7, -0.6, 2.5], atol=1e-6)  # (columns, rows, slices), RAS
    np.testing.assert_allclose(affine[:3, 3], [10.0, 20.0, 0.0], atol=1e-6)  # LPS (-10, -20, 0) in RAS


def test_trailing_singleton_fourth_dimension_is_dropped(tmp_path: Path, write_nifti) -> None:
    data = np.random.default_rng(6).normal(size=(4, 5, 6, 1)).astype(np.float32)
    array, _ = read_volume(write_nifti(tmp_path / "v.nii", data))
    assert array.shape == (4, 5, 6)
    np.testing.assert_array_equal(array, data[..., 0])


def test_nifti2_is_read(tmp_path: Path) -> None:
    data = np.random.default_rng(7).normal(size=(3, 4, 5)).astype(np.float32)
    nib.save(nib.Nifti2Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "v2.nii.gz")
    array, affine = read_volume(tmp_path / "v2.nii.gz")
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(np.diag(affine), [1.0, 2.0, 3.0, 1.0])


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    stored = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.5, -1024.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(read_volume(tmp_path / "scaled.nii.gz")[0], stored * 0.5 - 1024.0)


def test_monai_reader_objects(tmp_path: Path, write_nifti, write_dicom_series) -> None:
    from monai.transforms import LoadImage

    path = write_nifti(tmp_path / "v.nii.gz", np.ones((3, 4, 5), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    reader = VolumeReader()
    assert reader.verify_suffix(str(path)) and reader.verify_suffix(str(tmp_path))
    assert not reader.verify_suffix("x.png") and RadiographReader().verify_suffix("x.png")
    image = LoadImage(image_only=True)(str(path), reader=reader)
    assert tuple(image.shape) == (3, 4, 5)
    np.testing.assert_allclose(image.pixdim.numpy(), [2.0, 2.0, 3.0])
    volume = np.zeros((3, 4, 5), np.int16)
    write_dicom_series(tmp_path / "mixed", volume, series_uid="1.2.826.0.1.1", prefix="a")
    write_dicom_series(tmp_path / "mixed", volume + 7, series_uid="1.2.826.0.1.2", prefix="b")
    picked = LoadImage(image_only=True)(str(tmp_path / "mixed"), reader=VolumeReader(series_uid="1.2.826.0.1.2"))
    assert float(picked.min()) == 7 - 1024


def test_readers_copy_nothing_twice(tmp_path: Path, write_nifti, monkeypatch) -> None:
    """Each reader decodes pixel data once: count the gzip inflations into a buffer, nibabel's scaled reads and
    SimpleITK's data reads (unscaled NIfTI voxels are viewed in the inflated buffer, not read again)."""
    from common.data import readers

    calls = {"inflate": 0, "nib": 0, "sitk": 0}
    original_inflate, original_fdata = readers._gunzip, nib.Nifti1Image.get_fdata
    original_execute = sitk.ImageFileReader.Execute

    def inflate(*args, **kwargs):
        calls["inflate"] += 1
        return original_inflate(*args, **kwargs)

    def fdata(self, *args, **kwargs):
        calls["nib"] += 1
        return original_fdata(self, *args, **kwargs)

    def execute(self, *args, **kwargs):
        calls["sitk"] += 1
        return original_execute(self, *args, **kwargs)

    monkeypatch.setattr(readers, "_gunzip", inflate)
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", fdata)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", execute)
    path = write_nifti(tmp_path / "v.nii.gz", np.ones((3, 4, 5), np.float32))
    LoadVolumed(keys="image")({"image": str(path)})
    assert calls == {"inflate": 1, "nib": 0, "sitk": 0}
    scaled = nib.Nifti1Image(np.ones((3, 4, 5), np.int16), np.eye(4))
    scaled.header.set_slope_inter(2.0, 1.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    read_volume(tmp_path / "scaled.nii.gz")
    assert calls == {"inflate": 2, "nib": 1, "sitk": 0}
    image = sitk.GetImageFromArray(np.ones((5, 4, 3), np.float32))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    read_volume(tmp_path / "v.mha")
    assert calls == {"inflate": 2, "nib": 1, "sitk": 1}
