"""Bad input of every kind we have met, built in tmp_path: each must fail with a message naming the file (or the
datalist record) and the problem."""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from common.data.contract import DataContractError
from common.data.readers import read_radiograph, read_volume
from common.data.validate import MAX_REPORT_CHARS, Problem, validate_datalist

# pydicom warns while parsing the deliberately broken DICOM file; the error is what is tested
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter")

NIFTI_PIXDIM_OFFSET = 76  # float32[8] in the NIfTI-1 header; pixdim[1] (x spacing) is at byte 80


@pytest.fixture
def make(write_nifti, write_dicom, write_dicom_series) -> SimpleNamespace:
    return SimpleNamespace(nifti=write_nifti, dicom=write_dicom, series=write_dicom_series)


def _volume(seed: int = 0, shape: tuple[int, ...] = (6, 7, 8)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _patched_nifti(tmp_path: Path, make: SimpleNamespace, name: str, offset: int, value: float) -> Path:
    """A valid NIfTI whose header float at ``offset`` is overwritten (nibabel would repair it when writing)."""
    plain = make.nifti(tmp_path / "plain.nii", _volume())
    raw = bytearray(plain.read_bytes())
    raw[offset : offset + 4] = struct.pack("<f", value)
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    return path


def _patched_mha(tmp_path: Path, spacing: str) -> Path:
    image = sitk.GetImageFromArray(_volume().transpose(2, 1, 0).copy())
    sitk.WriteImage(image, str(tmp_path / "plain.mha"))
    raw = (tmp_path / "plain.mha").read_bytes()
    path = tmp_path / "bad.mha"
    path.write_bytes(re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = " + spacing.encode(), raw, count=1))
    return path


# Each builder makes one bad input and returns (reader call, file the message must name, phrase it must contain).
Case = tuple[Callable[[], Any], Path, str]


def truncated_nii_gz(tmp: Path, make: SimpleNamespace) -> Case:
    raw = make.nifti(tmp / "ok.nii.gz", _volume()).read_bytes()
    (tmp / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    return lambda: read_volume(tmp / "cut.nii.gz"), tmp / "cut.nii.gz", "truncated or corrupt image data"


def truncated_inside_header(tmp: Path, make: SimpleNamespace) -> Case:
    raw = make.nifti(tmp / "ok.nii.gz", _volume()).read_bytes()
    (tmp / "stub.nii.gz").write_bytes(raw[:60])
    return lambda: read_volume(tmp / "stub.nii.gz"), tmp / "stub.nii.gz", "cannot read the header"


def corrupt_gzip_bytes(tmp: Path, make: SimpleNamespace) -> Case:
    raw = bytearray(make.nifti(tmp / "ok.nii.gz", _volume(shape=(20, 20, 20))).read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(range(64))
    (tmp / "corrupt.nii.gz").write_bytes(bytes(raw))
    return lambda: read_volume(tmp / "corrupt.nii.gz"), tmp / "corrupt.nii.gz", "truncated or corrupt"


def not_gzip_at_all(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "text.nii.gz").write_text("this is not an image\n" * 40)
    return lambda: read_volume(tmp / "text.nii.gz"), tmp / "text.nii.gz", "cannot read the header"


def not_nifti_magic(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "junk.nii").write_bytes(bytes(range(256)) * 4)
    return lambda: read_volume(tmp / "junk.nii"), tmp / "junk.nii", "not a NIfTI"


def nifti_2d_to_volume_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.nifti(tmp / "flat.nii.gz", _volume(shape=(16, 16)))
    return lambda: read_volume(path), path, r"image is 2D \(shape \(16, 16\)\)"


def single_slice_to_volume_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.nifti(tmp / "slice.nii.gz", _volume(shape=(16, 16, 1)))
    return lambda: read_volume(path), path, "image is 2D"


def four_d_to_volume_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.nifti(tmp / "4d.nii.gz", _volume(shape=(5, 5, 5, 3)))
    return lambda: read_volume(path), path, "3 volumes/channels"


def volume_to_radiograph_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.nifti(tmp / "ct.nii.gz", _volume())
    return lambda: read_radiograph(path), path, "is a 3D volume"


def multiframe_dicom_to_radiograph_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.dicom(tmp / "frames.dcm", np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), intercept=0.0)
    return lambda: read_radiograph(path), path, r"3D volume \(3 frames\)"


def multipage_tiff_to_radiograph_reader(tmp: Path, make: SimpleNamespace) -> Case:
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 20)]
    pages[0].save(tmp / "stack.tif", save_all=True, append_images=pages[1:])
    return lambda: read_radiograph(tmp / "stack.tif"), tmp / "stack.tif", r"3D volume \(2 frames\)"


def nan_voxels(tmp: Path, make: SimpleNamespace) -> Case:
    data = _volume()
    data[1, 2, 3] = data[4, 5, 6] = np.nan
    path = make.nifti(tmp / "nan.nii.gz", data)
    return lambda: read_volume(path), path, "contains 2 NaN voxel"


def inf_voxels(tmp: Path, make: SimpleNamespace) -> Case:
    data = _volume()
    data[0, 0, 0] = np.inf
    path = make.nifti(tmp / "inf.nii.gz", data)
    return lambda: read_volume(path), path, "contains 1 infinite voxel"


def nan_pixels_in_radiograph(tmp: Path, make: SimpleNamespace) -> Case:
    data = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    data[3, 3] = np.nan
    Image.fromarray(data, mode="F").save(tmp / "nan.tif")
    return lambda: read_radiograph(tmp / "nan.tif"), tmp / "nan.tif", "contains 1 NaN pixel"


def zero_spacing_nifti(tmp: Path, make: SimpleNamespace) -> Case:
    path = _patched_nifti(tmp, make, "zero.nii.gz", NIFTI_PIXDIM_OFFSET + 4, 0.0)
    return lambda: read_volume(path), path, "zero voxel spacing"


def negative_spacing_nifti(tmp: Path, make: SimpleNamespace) -> Case:
    path = _patched_nifti(tmp, make, "negative.nii", NIFTI_PIXDIM_OFFSET + 8, -2.0)
    return lambda: read_volume(path), path, "negative voxel spacing"


def nan_spacing_nifti(tmp: Path, make: SimpleNamespace) -> Case:
    path = _patched_nifti(tmp, make, "nan_spacing.nii", NIFTI_PIXDIM_OFFSET + 12, float("nan"))
    return lambda: read_volume(path), path, "non-finite voxel spacing"


def zero_spacing_mha(tmp: Path, make: SimpleNamespace) -> Case:
    path = _patched_mha(tmp, "1 0 1")
    return lambda: read_volume(path), path, "zero voxel spacing"


def negative_spacing_mha(tmp: Path, make: SimpleNamespace) -> Case:
    path = _patched_mha(tmp, "1 1 -2.5")  # ITK itself would silently read 2.5
    return lambda: read_volume(path), path, "negative voxel spacing"


def zero_pixel_spacing_dicom_series(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "zero", np.zeros((3, 6, 6), np.int16), spacing=(0.0, 0.7))  # GDCM would silently use 1 mm
    return lambda: read_volume(tmp / "zero"), tmp / "zero", "zero voxel spacing .*DICOM Pixel Spacing"


def mhd_without_its_raw_file(tmp: Path, make: SimpleNamespace) -> Case:
    sitk.WriteImage(sitk.GetImageFromArray(_volume()), str(tmp / "v.mhd"))
    (tmp / "v.raw").unlink()
    return lambda: read_volume(tmp / "v.mhd"), tmp / "v.mhd", "data file 'v.raw' named in the header does not exist"


def singular_affine(tmp: Path, make: SimpleNamespace) -> Case:
    degenerate = np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(_volume(), degenerate)
    image.header.set_sform(degenerate, code=2)
    image.header.set_qform(None, code=0)
    nib.save(image, tmp / "singular.nii.gz")
    return lambda: read_volume(tmp / "singular.nii.gz"), tmp / "singular.nii.gz", "singular affine"


def mixed_dicom_series(tmp: Path, make: SimpleNamespace) -> Case:
    volume = np.zeros((3, 6, 6), np.int16)
    make.series(tmp / "mixed", volume, series_uid="1.2.826.0.1.3680043.1", prefix="a")
    make.series(tmp / "mixed", volume, series_uid="1.2.826.0.1.3680043.2", prefix="b")
    phrase = r"contains 2 DICOM series \('1\.2\.826\.0\.1\.3680043\.1', '1\.2\.826\.0\.1\.3680043\.2'\).*series_uid="
    return lambda: read_volume(tmp / "mixed"), tmp / "mixed", phrase


def unknown_series_uid(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "one", np.zeros((3, 6, 6), np.int16), series_uid="1.2.826.0.1.3680043.1")
    return lambda: read_volume(tmp / "one", series_uid="9.9.9"), tmp / "one", r"series_uid '9\.9\.9' not found"


def missing_slice(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "gap", np.zeros((5, 6, 6), np.int16), positions=[0.0, 2.0, 4.0, 8.0, 10.0])
    return lambda: read_volume(tmp / "gap"), tmp / "gap", r"missing slice\(s\): gap of 4\.00 mm .* 4\.00 and 8\.00 mm"


def duplicate_slice(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "dup", np.zeros((4, 6, 6), np.int16), positions=[0.0, 2.0, 2.0, 4.0])
    return lambda: read_volume(tmp / "dup"), tmp / "dup", "duplicate slice position 2.00 mm"


def non_uniform_slices(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "uneven", np.zeros((4, 6, 6), np.int16), positions=[0.0, 2.0, 4.5, 6.5])
    return lambda: read_volume(tmp / "uneven"), tmp / "uneven", "non-uniform slice spacing"


def tilted_stack(tmp: Path, make: SimpleNamespace) -> Case:
    positions = [(-10.0, -20.0 + 0.5 * k, 2.0 * k) for k in range(4)]  # each slice 0.5 mm further back
    make.series(tmp / "tilt", np.zeros((4, 6, 6), np.int16), positions=positions)
    return lambda: read_volume(tmp / "tilt"), tmp / "tilt", r"not stacked along their normal \(1\.50 mm sideways"


def single_dicom_file_to_volume_reader(tmp: Path, make: SimpleNamespace) -> Case:
    path = make.dicom(tmp / "one.dcm", np.zeros((6, 6), np.int16))
    return lambda: read_volume(path), path, "single DICOM file"


def folder_with_one_slice(tmp: Path, make: SimpleNamespace) -> Case:
    make.series(tmp / "lonely", np.zeros((1, 6, 6), np.int16))
    return lambda: read_volume(tmp / "lonely"), tmp / "lonely", "contains a single DICOM slice"


def empty_folder(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "empty").mkdir()
    return lambda: read_volume(tmp / "empty"), tmp / "empty", "folder is empty"


def folder_without_dicom(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("no images here")
    return lambda: read_volume(tmp / "notes"), tmp / "notes", r"no DICOM series found among 1 file\(s\)"


def missing_file(tmp: Path, make: SimpleNamespace) -> Case:
    return lambda: read_volume(tmp / "nowhere.nii.gz"), tmp / "nowhere.nii.gz", "does not exist"


def missing_radiograph(tmp: Path, make: SimpleNamespace) -> Case:
    return lambda: read_radiograph(tmp / "nowhere.png"), tmp / "nowhere.png", "does not exist"


def unsupported_suffix(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "scan.xyz").write_bytes(b"\x00" * 400)
    return lambda: read_volume(tmp / "scan.xyz"), tmp / "scan.xyz", "unsupported file type '.xyz'"


def folder_to_radiograph_reader(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "dir").mkdir()
    return lambda: read_radiograph(tmp / "dir"), tmp / "dir", "is a folder"


def constant_radiograph(tmp: Path, make: SimpleNamespace) -> Case:
    Image.fromarray(np.full((10, 12), 77, np.uint8)).save(tmp / "flat.png")
    return lambda: read_radiograph(tmp / "flat.png"), tmp / "flat.png", r"image is constant \(every pixel = 77\)"


def unreadable_png(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "junk.png").write_bytes(b"\x89PNG but not really" * 10)
    return lambda: read_radiograph(tmp / "junk.png"), tmp / "junk.png", "unreadable image file"


def truncated_png(tmp: Path, make: SimpleNamespace) -> Case:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(tmp / "full.png")
    raw = (tmp / "full.png").read_bytes()
    (tmp / "cut.png").write_bytes(raw[: len(raw) // 2])
    return lambda: read_radiograph(tmp / "cut.png"), tmp / "cut.png", "unreadable image file"


def unreadable_dicom(tmp: Path, make: SimpleNamespace) -> Case:
    (tmp / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 20)
    return lambda: read_radiograph(tmp / "broken.dcm"), tmp / "broken.dcm", "not a readable DICOM file|no pixel data"


def rgb_volume(tmp: Path, make: SimpleNamespace) -> Case:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp / "rgb.mha"))
    return lambda: read_volume(tmp / "rgb.mha"), tmp / "rgb.mha", "3 components per voxel"


READER_CASES = [
    truncated_nii_gz,
    truncated_inside_header,
    corrupt_gzip_bytes,
    not_gzip_at_all,
    not_nifti_magic,
    nifti_2d_to_volume_reader,
    single_slice_to_volume_reader,
    four_d_to_volume_reader,
    volume_to_radiograph_reader,
    multiframe_dicom_to_radiograph_reader,
    multipage_tiff_to_radiograph_reader,
    nan_voxels,
    inf_voxels,
    nan_pixels_in_radiograph,
    zero_spacing_nifti,
    negative_spacing_nifti,
    nan_spacing_nifti,
    zero_spacing_mha,
    negative_spacing_mha,
    zero_pixel_spacing_dicom_series,
    mhd_without_its_raw_file,
    singular_affine,
    mixed_dicom_series,
    unknown_series_uid,
    missing_slice,
    duplicate_slice,
    non_uniform_slices,
    tilted_stack,
    single_dicom_file_to_volume_reader,
    folder_with_one_slice,
    empty_folder,
    folder_without_dicom,
    missing_file,
    missing_radiograph,
    unsupported_suffix,
    folder_to_radiograph_reader,
    constant_radiograph,
    unreadable_png,
    truncated_png,
    unreadable_dicom,
    rgb_volume,
]


@pytest.mark.parametrize("build", READER_CASES, ids=[f.__name__ for f in READER_CASES])
def test_reader_rejects_bad_input(tmp_path: Path, make: SimpleNamespace, build: Callable[..., Case]) -> None:
    call, source, phrase = build(tmp_path, make)
    with pytest.raises(DataContractError) as info:
        call()
    assert info.value.source == str(source)
    assert str(source) in str(info.value)
    assert re.search(phrase, info.value.problem), info.value.problem


def test_mixed_series_can_be_picked(tmp_path: Path, make: SimpleNamespace) -> None:
    """The remedy named in the error works: ``series_uid=`` selects one of the series."""
    call, folder, _ = mixed_dicom_series(tmp_path, make)
    first, _ = read_volume(folder, series_uid="1.2.826.0.1.3680043.1")
    assert first.shape == (6, 6, 3)


def test_positive_spacing_with_flipped_affine_is_fine(tmp_path: Path, make: SimpleNamespace) -> None:
    """A negative diagonal in the affine is a flip, not negative spacing."""
    path = make.nifti(tmp_path / "flipped.nii.gz", _volume(), np.diag([-1.0, -1.0, 2.0, 1.0]))
    _, affine = read_volume(path)
    np.testing.assert_allclose(np.diag(affine)[:3], [-1.0, -1.0, 2.0])


# ----------------------------------------------------------------------------------------------------------------------
# datalists
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def good_image(tmp_path: Path, make: SimpleNamespace) -> str:
    make.nifti(tmp_path / "ok.nii.gz", _volume())
    return "ok.nii.gz"


def _write_datalist(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _only(problems: list[Problem], phrase: str) -> Problem:
    matching = [p for p in problems if re.search(phrase, p.problem)]
    assert len(matching) == 1, [str(p) for p in problems]
    return matching[0]


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("report", "", "report is empty"),
        ("report", " \n\t ", "report is only whitespace"),
        ("report", "x" * 100_000, rf"report is absurdly long \(100,000 characters > {MAX_REPORT_CHARS:,}\)"),
        ("report", "Lungs clear.\ud800", r"not valid UTF-8 \(unpaired surrogate at character 12\)"),
        ("report", 42, "report must be a non-empty string, got int"),
        ("labels", {"lung_nodule": 2}, r"labels must be 0 or 1.*'lung_nodule': 2"),
        ("labels", {"lung_nodule": -1}, r"labels must be 0 or 1.*'lung_nodule': -1"),
        ("labels", {"lung_nodule": 0.5}, r"labels must be 0 or 1.*'lung_nodule': 0\.5"),
        ("labels", {"lung_nodule": "yes"}, r"labels must be 0 or 1.*'lung_nodule': 'yes'"),
        ("labels", [0, 1], "labels must be an object"),
        ("meta", "patient 7", "meta must be an object"),
        ("mask", "nowhere.nii.gz", "mask file does not exist"),
        ("extra", 1, r"unknown key\(s\) \['extra'\]"),
    ],
    ids=[
        "empty_report",
        "whitespace_report",
        "100k_report",
        "lone_surrogate_report",
        "non_string_report",
        "label_2",
        "label_minus_1",
        "label_half",
        "label_yes",
        "labels_list",
        "meta_string",
        "missing_mask",
        "unknown_key",
    ],
)
def test_datalist_record_problems(tmp_path: Path, good_image: str, field: str, value: Any, phrase: str) -> None:
    records = [{"image": good_image, "report": "Normal study."}, {"image": good_image, field: value}]
    path = _write_datalist(tmp_path, {"training": records})
    problem = _only(validate_datalist(path), phrase)
    assert (problem.section, problem.index) == ("training", 1)
    named = tmp_path / ("nowhere.nii.gz" if field == "mask" else good_image)
    assert problem.source == str(named)
    assert str(problem).startswith(f"training[1] {named}: ")


def test_datalist_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"training": [{"image": "a.nii.gz", "report": "Pleuraerguss r\u00e4umlich"}]}'.encode("latin-1"))
    problem = _only(validate_datalist(path), r"not valid UTF-8 \(byte 0xe4 at offset \d+\)")
    assert problem.source == str(path) and problem.index is None


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ([{"image": "a.nii.gz"}], "top level must be an object"),
        ({"training": {"image": "a.nii.gz"}}, "section 'training' must be a list, got dict"),
        ({"train": [{"image": "a.nii.gz"}]}, "unknown section 'train'"),
        ({"name": "nothing"}, "no records"),
    ],
    ids=["list_top_level", "section_not_list", "misspelt_section", "no_sections"],
)
def test_datalist_schema_problems(tmp_path: Path, content: Any, phrase: str) -> None:
    path = _write_datalist(tmp_path, content)
    problem = _only(validate_datalist(path), phrase)
    assert problem.source == str(path)


def test_record_without_image_and_non_object_record(tmp_path: Path, good_image: str) -> None:
    path = _write_datalist(tmp_path, {"validation": [{"report": "No image."}, "ok.nii.gz", {"image": good_image}]})
    problems = validate_datalist(path)
    no_image = _only(problems, "record has no 'image' path")
    not_object = _only(problems, "record must be an object, got str")
    assert (no_image.section, no_image.index, not_object.index) == ("validation", 0, 1)
    assert no_image.source == not_object.source == str(path)
    assert len(problems) == 2


def test_invalid_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    path.write_text('{"training": [{"image": "a.nii.gz",}]}', encoding="utf-8")
    problem = _only(validate_datalist(path), r"not valid JSON .*line 1, column \d+")
    assert problem.source == str(path)


def test_bad_image_inside_datalist(tmp_path: Path, make: SimpleNamespace, good_image: str) -> None:
    """A reader error becomes a problem of its record, naming the image file."""
    make.nifti(tmp_path / "flat.nii.gz", _volume(shape=(8, 8)))
    path = _write_datalist(tmp_path, {"test": [{"image": good_image}, {"image": "flat.nii.gz"}]})
    problem = _only(validate_datalist(path), "image is 2D")
    assert (problem.section, problem.index, problem.source) == ("test", 1, str(tmp_path / "flat.nii.gz"))


def test_mask_with_other_geometry(tmp_path: Path, make: SimpleNamespace, good_image: str) -> None:
    make.nifti(tmp_path / "small_mask.nii.gz", np.zeros((3, 3, 3), np.uint8))
    make.nifti(tmp_path / "moved_mask.nii.gz", np.zeros((6, 7, 8), np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))
    records = [{"image": good_image, "mask": "small_mask.nii.gz"}, {"image": good_image, "mask": "moved_mask.nii.gz"}]
    problems = validate_datalist(_write_datalist(tmp_path, {"training": records}))
    shape = _only(problems, r"mask shape \(3, 3, 3\) does not match image shape \(6, 7, 8\)")
    affine = _only(problems, "mask affine .* does not match")
    assert (shape.index, shape.source) == (0, str(tmp_path / "small_mask.nii.gz"))
    assert (affine.index, affine.source) == (1, str(tmp_path / "moved_mask.nii.gz"))


def test_image_shared_between_splits(tmp_path: Path, good_image: str) -> None:
    content = {"training": [{"image": good_image}], "test": [{"image": "./" + good_image}]}
    problem = _only(validate_datalist(_write_datalist(tmp_path, content)), r"same image as training\[0\]")
    assert (problem.section, problem.index) == ("test", 0)
