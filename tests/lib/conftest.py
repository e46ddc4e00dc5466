"""Shared fixtures for tests/lib: builders of small image files (NIfTI, DICOM slices and series) in ``tmp_path``, the
real reference data and single-threaded torch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

_REPO = Path(__file__).resolve().parents[2]
# The real reference data sit next to the checkout (``../shared/data``) or inside it (``shared/data``).
REAL_DATA_DIR = next(
    (d for d in (_REPO.parent / "shared" / "data", _REPO / "shared" / "data") if d.is_dir()),
    _REPO.parent / "shared" / "data",
)


@pytest.fixture
def real_data_dir() -> Path:
    """``shared/data`` (real CT volumes and reports); tests using it skip when it is absent, as in a fresh clone."""
    if not (REAL_DATA_DIR / "ct").is_dir():
        pytest.skip("real reference data (shared/data) not available")
    return REAL_DATA_DIR


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch CPU thread (fast and reproducible beside other jobs), then restore the count.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    nib.save(image, path)
    return path


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=None)``: save ``array`` as NIfTI (qform and sform set to ``affine``)."""
    return _write_nifti


def _dicom_slice(
    pixels: np.ndarray,
    *,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: Sequence[float] = (0.7, 0.7),
    instance: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.4f}" for v in spacing]
    ds.SliceThickness = "1.0"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    signed = pixels.dtype.kind == "i"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def _save_dicom(ds, path: Path) -> Path:
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.save_as(path, write_like_original=False)
    return path


@pytest.fixture
def write_dicom() -> Callable[..., Path]:
    """``write_dicom(path, pixels, **tags)``: one uncompressed DICOM file (a CT slice unless told otherwise)."""
    from pydicom.uid import generate_uid

    def write(path: Path, pixels: np.ndarray, **tags) -> Path:
        uids = {key: tags.pop(key, generate_uid()) for key in ("series_uid", "study_uid", "frame_uid")}
        return _save_dicom(_dicom_slice(pixels, **uids, **tags), path)

    return write


@pytest.fixture
def write_dicom_series() -> Callable[..., list[Path]]:
    """``write_dicom_series(folder, volume, step=2.5, positions=None, series_uid=None, **tags)``.

    Writes ``volume`` ``(Z, rows, columns)`` as one CT slice per file, slice k at ``(-10, -20, positions[k])`` (default
    z = ``k * step``; a 3-sequence gives the whole position), in shuffled file order so readers must sort by position.
    A tag given as a list is set per slice. Returns the files in slice order.
    """
    from pydicom.uid import generate_uid

    def write(
        folder: Path,
        volume: np.ndarray,
        step: float = 2.5,
        positions: Sequence[float] | None = None,
        series_uid: str | None = None,
        study_uid: str | None = None,
        frame_uid: str | None = None,
        prefix: str = "slice",
        **tags,
    ) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        series_uid, study_uid, frame_uid = (u or generate_uid() for u in (series_uid, study_uid, frame_uid))
        zs = [k * step for k in range(len(volume))] if positions is None else list(positions)
        order = np.random.default_rng(0).permutation(len(volume))
        files = []
        for k, z in enumerate(zs):
            per_slice = {key: value[k] if isinstance(value, list) else value for key, value in tags.items()}
            ds = _dicom_slice(
                volume[k],
                series_uid=series_uid,
                study_uid=study_uid,
                frame_uid=frame_uid,
                position=tuple(z) if np.ndim(z) else (-10.0, -20.0, z),
                instance=k + 1,
                **per_slice,
            )
            files.append(_save_dicom(ds, folder / f"{prefix}{int(order[k]):03d}.dcm"))
        return files

    return write
