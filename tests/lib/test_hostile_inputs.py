"""Files whose headers lie and decoders that raise: every read failure is a named ``DataContractError`` (so
``on_bad_sample="skip"`` can skip it), and memory is bounded by the file, not by its header."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from common.data.contract import DataContractError
from common.data.dataset import PretrainingDataset, pretraining_collate
from common.data.readers import MAX_RADIOGRAPH_PIXELS, MAX_VOLUME_VOXELS, read_radiograph, read_volume

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _nifti_header(shape: tuple[int, ...], dtype: type = np.float32) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["pixdim"][1 : 1 + len(shape)] = 1.0
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a decoder is asked to allocate the image (the size checks must refuse it first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the decoder was called: the header's size was not checked first")

    monkeypatch.setattr(nib.Nifti1Image, "from_filename", refuse)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)


def _refused(call, path: Path, phrase: str) -> DataContractError:
    tracemalloc.start()
    try:
        with pytest.raises(DataContractError) as caught:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.source == str(path), caught.value
    assert phrase in caught.value.problem, caught.value.problem
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated while refusing {path.name}"
    return caught.value


@pytest.mark.usefixtures("no_decoding")
def test_68_byte_nifti_claiming_gigabytes_is_refused_before_allocation(tmp_path: Path) -> None:
    """The issue's case: a 57-byte .nii.gz whose header implies a 3.6 GB volume."""
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((1000, 1000, 900))))
    assert path.stat().st_size < 100
    error = _refused(lambda: read_volume(path), path, "header implies 3,600,000,352")
    assert "nothing was allocated" in error.problem


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_data_shorter_than_its_header(tmp_path: Path, suffix: str) -> None:
    data = np.zeros((20, 20, 10), np.int16).tobytes()
    block = _nifti_header((20, 20, 12), np.int16) + data  # header says 12 slices, the file holds 10
    path = tmp_path / f"short{suffix}"
    path.write_bytes(gzip.compress(block) if suffix.endswith(".gz") else block)
    _refused(lambda: read_volume(path), path, "header implies")


@pytest.mark.usefixtures("no_decoding")
def test_nifti_gzip_stream_breaking_off_is_named(tmp_path: Path) -> None:
    block = _nifti_header((64, 64, 64), np.int16) + np.random.default_rng(0).integers(0, 99, 64**3, np.int16).tobytes()
    packed = gzip.compress(block)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(packed[: len(packed) // 2])
    error = _refused(lambda: read_volume(path), path, "compressed stream breaks off")
    assert "truncated or corrupt image data" in error.problem


def test_multi_member_gzip_with_a_misleading_trailer_still_reads(tmp_path: Path) -> None:
    """The gzip trailer is only a shortcut: a valid two-member stream (trailer = last member) reads normally."""
    volume = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    block = _nifti_header(volume.shape, np.int16) + volume.tobytes(order="F")
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(block[:500]) + gzip.compress(block[500:]))
    array, _ = read_volume(path)
    np.testing.assert_array_equal(array, volume)


@pytest.mark.usefixtures("no_decoding")
def test_header_dimensions_above_the_ceiling(tmp_path: Path) -> None:
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((30000, 30000, 2000), np.uint8)))
    _refused(lambda: read_volume(path), path, f"above the ceiling of {MAX_VOLUME_VOXELS:,}")


def _mha(tmp_path: Path, size: str, compressed: bool = False) -> Path:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    plain = tmp_path / "plain.mha"
    sitk.WriteImage(image, str(plain), useCompression=compressed)
    path = tmp_path / "lying.mha"
    path.write_bytes(plain.read_bytes().replace(b"DimSize = 6 5 4", b"DimSize = " + size.encode()))
    return path


@pytest.mark.usefixtures("no_decoding")
def test_metaimage_data_shorter_than_its_header(tmp_path: Path) -> None:
    path = _mha(tmp_path, "1000 1000 900")
    _refused(lambda: read_volume(path), path, "header implies 1,800,000,000")


@pytest.mark.usefixtures("no_decoding")
def test_compressed_metaimage_above_the_ceiling(tmp_path: Path) -> None:
    path = _mha(tmp_path, "100000 100000 900", compressed=True)
    _refused(lambda: read_volume(path), path, "above the ceiling")


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_nrrd_data_shorter_than_its_header(tmp_path: Path, encoding: str) -> None:
    data = np.zeros((10, 20, 20), np.int16).tobytes()
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 20 20 12\nspacings: 1 1 1\n"
        f"endian: little\nencoding: {encoding}\n\n"
    ).encode()
    path = tmp_path / f"short_{encoding}.nrrd"
    path.write_bytes(header + (gzip.compress(data) if encoding == "gzip" else data))
    _refused(lambda: read_volume(path), path, "header implies 9,600")


def test_png_decompression_bomb_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 M pixels in about 50 kB
    assert path.stat().st_size < 200_000
    with pytest.raises(DataContractError, match="decompression bomb") as caught:
        read_radiograph(path)
    assert caught.value.source == str(path)


def test_radiograph_above_the_ceiling_below_pillows_limit(tmp_path: Path) -> None:
    side = int(MAX_RADIOGRAPH_PIXELS**0.5) + 8
    path = tmp_path / "large.png"
    Image.new("1", (side, side)).save(path)
    with pytest.raises(DataContractError, match="above the ceiling"):
        read_radiograph(path)


def test_dicom_rows_columns_lying_about_the_size(tmp_path: Path, write_dicom) -> None:
    import pydicom

    path = write_dicom(tmp_path / "cxr.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), modality="DX")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    _refused(lambda: read_radiograph(path), path, "above the ceiling")


@pytest.mark.parametrize(
    "error",
    [
        nib.spatialimages.HeaderDataError("bad header field"),
        OverflowError("int too large to convert"),
        MemoryError(),
        KeyError("dim"),
        Image.DecompressionBombError("could be decompression bomb DOS attack"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_decoder_error_becomes_a_named_error(tmp_path: Path, write_nifti, monkeypatch, error) -> None:
    path = write_nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(nib.Nifti1Image, "from_file_map", broken)  # nibabel's decoding of header and voxels
    with pytest.raises(DataContractError) as caught:
        read_volume(path)
    assert caught.value.source == str(path)
    assert type(error).__name__ in caught.value.problem


def test_skip_counts_decoder_errors_instead_of_aborting(tmp_path: Path, write_nifti) -> None:
    """A training dataset over a good file, a header that lies and a gzip bomb: ``skip`` substitutes and counts."""
    from monai.transforms import Compose

    from common.data.readers import LoadVolumed

    good = write_nifti(tmp_path / "good.nii.gz", np.ones((6, 7, 8), np.float32))
    lying = tmp_path / "lying.nii.gz"
    lying.write_bytes(gzip.compress(_nifti_header((1000, 1000, 900))))
    records = [{"image": str(lying)}, {"image": str(good)}]
    dataset = PretrainingDataset(records, Compose([LoadVolumed("image")]), on_bad_sample="skip")
    batch = pretraining_collate([dataset[0], dataset[1]])
    assert batch["skipped_records"] == [0]
    assert tuple(batch["image"].shape) == (2, 1, 6, 7, 8)
    with pytest.raises(DataContractError, match=r"record 0: .*header implies"):
        PretrainingDataset(records, Compose([LoadVolumed("image")]))[0]
