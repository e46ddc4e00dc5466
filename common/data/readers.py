"""Validating image readers: 3D volumes (NIfTI, MHA/MHD, NRRD, DICOM series) and 2D radiographs (DICOM, PNG, JPEG).

Every problem with an input raises :class:`~common.data.contract.DataContractError` naming the file and what is
wrong with it; header-level problems (dimensionality, spacing) are found before any pixel data is read, and pixel
data are read exactly once.

Conventions:

* **Volumes** (:func:`read_volume`): the array is ``(X, Y, Z)`` float32 in the file's own voxel index order
  (i, j, k; for DICOM and ITK files i runs along columns, j along rows, k across slices), **not re-oriented**, in
  the file's intensity units (Hounsfield units for CT; DICOM rescale slope/intercept applied). The 4x4 affine maps
  ``(i, j, k, 1)`` to **RAS+** world millimetres, the NIfTI/nibabel/MONAI convention; ITK's LPS+ is converted by
  negating the first two rows. Re-orientation and resampling are left to ``Orientationd``/``Spacingd``.
* **Radiographs** (:func:`read_radiograph`): the array is ``(H, W)`` float32, rows top to bottom and columns left
  to right as stored (no flips), with dense tissue bright: the DICOM Modality LUT (rescale) then the VOI LUT or
  window are applied and MONOCHROME1 images are inverted. Spacing is ``(row, column)`` in mm, NaN when the file does
  not record it (PNG/JPEG, or a zero DICOM Pixel Spacing).

:class:`VolumeReader`/:class:`RadiographReader` expose the same readers as MONAI ``ImageReader`` objects, and
:class:`LoadVolumed`/:class:`LoadRadiographd` load dictionary items into ``MetaTensor`` objects whose affine feeds
``Orientationd``/``Spacingd``. The formats are decoded with nibabel, SimpleITK (GDCM), pydicom and Pillow directly
rather than through MONAI's ``NibabelReader``/``ITKReader``/``PydicomReader`` because the checks need the raw header
(nibabel silently replaces zero or negative ``pixdim`` on load, ITK takes the absolute value of a negative spacing)
and per-slice DICOM positions, which those readers do not expose; parity with them is covered by the tests.
"""

from __future__ import annotations

import errno
import gzip
import io
import logging
import os
import re
import threading
import zlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader, MetaTensor, get_track_meta
from monai.transforms import LoadImage, MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple, get_equivalent_dtype

from common.data.contract import DataContractError

try:  # Intel ISA-L inflate (python-isal): identical bytes, 2.4x stdlib zlib on a 512x512x64 CT (common/data/DATA_PATH.md)
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _IsalError

    GZIP_BACKEND = "isal"
    _GZIP_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, _IsalError)
except ImportError:  # the standard library's zlib: same arrays, slower
    _gzip = gzip
    GZIP_BACKEND = "zlib"
    _GZIP_ERRORS = (OSError, EOFError, zlib.error)

logger = logging.getLogger(__name__)

__all__ = [
    "AIR_HU",
    "GZIP_BACKEND",
    "MAX_AXIS_COSINE",
    "MAX_RADIOGRAPH_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_CT_SLICES",
    "NORMALISED_RANGE",
    "QFORM_SFORM_TOLERANCE_MM",
    "RADIOGRAPH_SUFFIXES",
    "VOLUME_SUFFIXES",
    "LoadRadiographMaskd",
    "LoadRadiographd",
    "LoadVolumed",
    "RadiographMaskReader",
    "RadiographReader",
    "VolumeReader",
    "ct_problems",
    "read_radiograph",
    "read_volume",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: File types :func:`read_volume` accepts (plus folders holding a DICOM series).
VOLUME_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES
#: File types :func:`read_radiograph` accepts (DICOM files without a suffix are recognised by their preamble).
RADIOGRAPH_SUFFIXES: tuple[str, ...] = DICOM_SUFFIXES + PIL_SUFFIXES + VOLUME_SUFFIXES

#: Largest volume the readers allocate: 2**30 voxels (4 GiB as float32); CT-RATE's largest is about 512 x 512 x 900.
MAX_VOLUME_VOXELS: int = 2**30
#: Largest radiograph the readers decode: 2**26 pixels (8192 x 8192), below Pillow's decompression-bomb warning.
MAX_RADIOGRAPH_PIXELS: int = 2**26

#: "Is this really a CT in HU?" (:func:`ct_problems`): fewest voxels along any axis of a CT volume (a localiser or a
#: few slices is not a volume), the value a chest CT in HU must go below (air), and the widest intensity range of
#: data normalised to [0, 1] (or [-1, 1]).
MIN_CT_SLICES: int = 16
AIR_HU: float = -500.0
NORMALISED_RANGE: float = 2.0
#: Voxel axes more than this far from perpendicular (|cos| of the angle; 1e-3 is 0.06 degrees) are a sheared grid.
MAX_AXIS_COSINE: float = 1e-3
#: qform and sform of a NIfTI file disagree when their affines differ by more than this (mm, per element).
QFORM_SFORM_TOLERANCE_MM: float = 0.01

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A gap between consecutive DICOM slices this many times the usual step is reported as missing slices.
_MISSING_SLICE_RATIO = 1.5


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", *VOLUME_SUFFIXES, *DICOM_SUFFIXES, *PIL_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _is_dicom_file(path: Path) -> bool:
    """True if ``path`` starts with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _itk_message(err: Exception) -> str:
    """The informative line of an ITK/SimpleITK exception (drops build paths and object addresses)."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line:
            return re.sub(r"^.*ERROR:\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", line)
    return lines[-1] if lines else type(err).__name__


def _given_path(path: PathLike | None, what: str) -> Path:
    """``path`` as a ``Path``; an empty or missing path is an error, never the working directory (``Path("")``)."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise DataContractError(
            None, f"no {what} path given (got {path!r}); an empty path is not the working directory"
        )
    return Path(path)


def _check_exists(path: Path) -> None:
    if path.exists():
        return
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError as err:  # Python < 3.13 reports a loop as RuntimeError, later versions as OSError
            raise DataContractError(path, f"is a symbolic link loop ({err})") from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise DataContractError(path, "is a symbolic link loop") from err
        raise DataContractError(path, f"is a symbolic link to a missing target ({os.readlink(path)})")
    raise DataContractError(path, "file or folder does not exist")


def _check_pixel_count(path: Path, shape: Sequence[int], limit: int, what: str) -> None:
    """Refuse, before anything is allocated, an image whose header claims more than ``limit`` voxels/pixels."""
    count = int(np.prod([int(s) for s in shape], dtype=object))
    if count > limit:
        raise DataContractError(
            path,
            f"header claims {count:,} {what}s (shape {tuple(int(s) for s in shape)}), above the ceiling of "
            f"{limit:,}; a header that lies or an image too large for these readers",
        )


def _check_stored_bytes(path: Path, stored: int, expected: int, what: str) -> None:
    if stored < expected:
        raise DataContractError(
            path,
            f"{what} holds {stored:,} bytes but the header implies {expected:,}; truncated file or a header "
            "that lies (nothing was allocated)",
        )


def _gzip_size(path: Path, offset: int, expected: int) -> int:
    """Uncompressed bytes of the gzip stream starting at ``offset``, counted up to ``expected`` in bounded memory.

    The gzip trailer (ISIZE, the size modulo 2**32) answers at once when it agrees; otherwise the stream is inflated
    chunk by chunk without keeping the data.
    """
    with open(path, "rb") as f:
        f.seek(-4, io.SEEK_END)
        trailer = int.from_bytes(f.read(4), "little")
    if trailer == expected % 2**32 and path.stat().st_size - offset >= 18:
        return expected
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(offset)
            with _gzip.open(raw, "rb") as f:
                while total < expected:
                    chunk = f.read(min(1 << 16, expected - total))
                    if not chunk:
                        break
                    total += len(chunk)
    except _GZIP_ERRORS as err:
        raise DataContractError(
            path,
            f"truncated or corrupt image data: the compressed stream breaks off after about {total:,} of the "
            f"{expected:,} bytes its header implies ({err}); nothing was allocated",
        ) from err
    return total


@contextmanager
def _named_read_errors(path: Path) -> Iterator[None]:
    """Whatever nibabel, SimpleITK, pydicom or Pillow raise on a bad file (``HeaderDataError``,
    ``DecompressionBombError``, ``OverflowError``, ``MemoryError``, ...) becomes a :class:`DataContractError` naming
    the file, so that ``on_bad_sample="skip"`` can skip it."""
    try:
        yield
    except DataContractError:
        raise
    except MemoryError as err:
        raise DataContractError(path, f"not enough memory to decode the image (MemoryError: {err})") from err
    except Exception as err:
        raise DataContractError(path, f"cannot decode the file ({type(err).__name__}: {err})") from err


def _check_spacing(path: Path, spacing: Sequence[float], what: str) -> None:
    values = np.asarray(spacing, dtype=np.float64)
    shown = np.array2string(values, precision=4, separator=", ")
    if not np.isfinite(values).all():
        raise DataContractError(path, f"non-finite voxel spacing {shown} ({what})")
    if (values == 0).any():
        raise DataContractError(path, f"zero voxel spacing {shown} ({what})")
    if (values < 0).any():
        raise DataContractError(
            path, f"negative voxel spacing {shown} ({what}); a flip belongs in the orientation, not the spacing"
        )


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.isfinite(affine).all():
        raise DataContractError(path, "affine (voxel-to-world matrix) contains non-finite values")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if (zooms == 0).any() or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * max(float(np.prod(zooms)), 1e-300):
        raise DataContractError(path, f"singular affine (voxel axes are degenerate; column norms {zooms.round(4)})")


def _check_orthogonal(path: Path, affine: np.ndarray) -> None:
    """A sheared voxel grid is refused as the DICOM path refuses a gantry tilt: resampling it first is the user's call."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3))
    i, j = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
    if cosines[i, j] > MAX_AXIS_COSINE:
        angle = float(np.degrees(np.arccos(np.clip(axes[:, i] @ axes[:, j], -1, 1))))
        raise DataContractError(
            path,
            f"non-orthogonal (sheared) voxel grid: axes {i} and {j} meet at {angle:.2f} degrees (gantry tilt?); "
            "resample the volume onto an orthogonal grid first",
        )


def ct_problems(path: PathLike, array: np.ndarray) -> list[str]:
    """Why a volume read as CT is probably not a CT in Hounsfield units (empty: nothing suspicious).

    Rules (thresholds are module constants): a constant volume; fewer than :data:`MIN_CT_SLICES` voxels along an
    axis; intensities spanning at most :data:`NORMALISED_RANGE` (normalised data); whole numbers within [0, 255]
    (an 8-bit export); no voxel below :data:`AIR_HU` (no air); and for NIfTI files, qform and sform that disagree by
    more than :data:`QFORM_SFORM_TOLERANCE_MM`.
    """
    out = []
    low, high = float(array.min()), float(array.max())
    if low == high:
        return [f"constant volume (every voxel = {low:g}): not a CT"]
    if min(array.shape[-3:]) < MIN_CT_SLICES:
        out.append(
            f"only {min(array.shape[-3:])} voxels along an axis (shape {tuple(array.shape[-3:])}; fewer than "
            f"{MIN_CT_SLICES}): a localiser or a partial series, not a CT volume"
        )
    if high - low <= NORMALISED_RANGE:
        out.append(f"intensities span [{low:g}, {high:g}]: normalised data, not Hounsfield units")
    elif low >= 0 and high <= 255 and np.array_equal(array, np.round(array)):
        out.append(f"whole-number intensities in [{low:g}, {high:g}]: an 8-bit export, not Hounsfield units")
    elif low > AIR_HU:
        out.append(f"no voxel below {AIR_HU:g} (minimum {low:g}): no air, so not a chest CT in Hounsfield units")
    path = Path(path)
    if _suffix(path) in NIFTI_SUFFIXES:
        header = _nifti_header(path)
        if int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
            difference = float(np.abs(header.get_qform() - header.get_sform()).max())
            if difference > QFORM_SFORM_TOLERANCE_MM:
                out.append(
                    f"qform and sform disagree (by up to {difference:.3g} mm); nibabel and MONAI use the sform, "
                    "other tools the qform"
                )
    return out


def _check_finite(path: Path, array: np.ndarray, unit: str) -> None:
    if array.dtype.kind in "iub":  # integers are finite
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    if n_nan:
        raise DataContractError(path, f"contains {n_nan} NaN {unit}(s)" + (f" and {n_inf} infinite" if n_inf else ""))
    raise DataContractError(path, f"contains {n_inf} infinite {unit}(s)")


def _spatial_shape(path: Path, shape: Sequence[int], dims: int) -> tuple[int, ...]:
    """Validate a file's array shape for ``dims`` spatial dimensions; trailing singleton dimensions are dropped."""
    shape = tuple(int(s) for s in shape)
    if any(s == 0 for s in shape):
        raise DataContractError(path, f"image has no voxels (shape {shape})")
    trimmed = list(shape)
    while len(trimmed) > dims and trimmed[-1] == 1:
        trimmed.pop()
    if dims == 3:
        if len(trimmed) < 3 or min(trimmed[:3]) == 1:
            raise DataContractError(path, f"image is 2D (shape {shape}); a 3D volume is expected")
        if len(trimmed) > 3:
            extra = int(np.prod(trimmed[3:]))
            raise DataContractError(
                path, f"image has {extra} volumes/channels (shape {shape}); a single 3D volume is expected"
            )
    else:
        if len(trimmed) < 2:
            raise DataContractError(path, f"image is 1D (shape {shape}); a 2D radiograph is expected")
        if len(trimmed) > 2:
            raise DataContractError(path, f"image is a 3D volume (shape {shape}); a single 2D radiograph is expected")
    return tuple(trimmed)


# ----------------------------------------------------------------------------------------------------------------------
# format back-ends: each returns (array in index order with `dims` axes, 4x4 RAS affine)
# ----------------------------------------------------------------------------------------------------------------------


def _nifti_header(path: Path) -> nib.Nifti1Header:
    """The raw header, without nibabel's silent fixes of zero/negative ``pixdim``."""
    try:
        with nib.openers.ImageOpener(path) as f:
            block = f.read(nib.Nifti2Header.template_dtype.itemsize)
    except (OSError, EOFError, zlib.error) as err:
        raise DataContractError(path, f"cannot read the header: truncated or corrupt file ({err})") from err
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(block) >= size and klass.may_contain_header(block[:size]):
            try:
                return klass.from_fileobj(io.BytesIO(block[:size]), check=False)
            except Exception as err:  # nibabel raises several types for a malformed block
                raise DataContractError(path, f"cannot read the header ({err})") from err
    if len(block) < nib.Nifti1Header.template_dtype.itemsize:
        raise DataContractError(path, f"cannot read the header: truncated file ({len(block)} header bytes)")
    raise DataContractError(path, "cannot read the header: not a NIfTI-1/NIfTI-2 file (bad magic)")


def _nifti_file_size(header: nib.Nifti1Header) -> int:
    """Bytes of the (uncompressed) file the header implies: ``vox_offset`` + voxels x item size."""
    count = int(np.prod(header.get_data_shape(), dtype=object))
    return int(header["vox_offset"]) + count * header.get_data_dtype().itemsize


def _check_nifti_size(path: Path, header: nib.Nifti1Header, dims: int) -> None:
    """The voxel data the header implies must fit the ceiling and be present in the (decompressed) file."""
    shape = header.get_data_shape()
    limit, what = (MAX_VOLUME_VOXELS, "voxel") if dims == 3 else (MAX_RADIOGRAPH_PIXELS, "pixel")
    _check_pixel_count(path, shape, limit, what)
    try:
        expected = _nifti_file_size(header)
    except Exception as err:  # nibabel raises several types for an unknown datatype code
        raise DataContractError(path, f"unknown voxel data type in the header ({err})") from err
    if _suffix(path) == ".nii.gz":
        _check_stored_bytes(path, _gzip_size(path, 0, expected), expected, "decompressed file")
    else:
        _check_stored_bytes(path, path.stat().st_size, expected, "file")


def _read_nifti(path: Path, dims: int) -> tuple[np.ndarray, np.ndarray]:
    header = _nifti_header(path)
    shape = _spatial_shape(path, header.get_data_shape(), dims)
    _check_spacing(path, header["pixdim"][1 : 1 + dims], "header pixdim")
    if header.get_data_dtype().kind == "c":
        raise DataContractError(
            path, f"complex voxel data ({header.get_data_dtype()}); a real-valued image is expected"
        )
    _check_nifti_size(path, header, dims)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    try:
        if _suffix(path) == ".nii.gz":
            image, array = _gunzipped_nifti(path, header, image_class)
        else:
            image = image_class.from_filename(path)  # the class is known: no content sniffing of a damaged file
            array = _stored_voxels(image)
        affine = np.asarray(image.affine, dtype=np.float64)
    except (ValueError, nib.filebasedimages.ImageFileError, *_GZIP_ERRORS) as err:
        raise DataContractError(path, f"truncated or corrupt image data ({err})") from err
    return array.reshape(shape), affine


#: Stored voxel types every value of which is a float32 exactly: such data are read as stored (no copy) and
#: converted once at the end of :func:`read_volume` (nibabel's ``get_fdata`` would copy them first).
_EXACT_IN_FLOAT32 = frozenset(np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "float32"))


def _unscaled_exact(image: nib.Nifti1Image) -> bool:
    """Whether the stored values of a NIfTI image are its float32 values exactly (no scaling, a type of
    :data:`_EXACT_IN_FLOAT32`)."""
    proxy = image.dataobj
    exact = np.dtype(proxy.dtype).newbyteorder("=") in _EXACT_IN_FLOAT32
    return exact and float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0


def _stored_voxels(image: nib.Nifti1Image, data: np.ndarray | None = None) -> np.ndarray:
    """The voxel values of a NIfTI image: as stored if :func:`_unscaled_exact` (from ``data``, the inflated bytes
    of a ``.nii.gz`` file, as a view: NIfTI voxels are Fortran-ordered), else ``get_fdata(dtype=float32)``."""
    if not _unscaled_exact(image):
        return image.get_fdata(dtype=np.float32, caching="unchanged")
    proxy = image.dataobj
    if data is None:
        array = np.asarray(proxy.get_unscaled())
    else:
        array = np.ndarray(proxy.shape, dtype=proxy.dtype, buffer=data, offset=int(proxy.offset), order="F")
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


#: Bytes inflated per call when a ``.nii.gz`` file is decoded into its buffer (small enough to stay in the heap).
_INFLATE_CHUNK = 1 << 20


def _gunzip(path: Path, size: int) -> np.ndarray:
    """The first ``size`` bytes (or fewer, if the stream ends) of a gzip file, inflated by :data:`GZIP_BACKEND`
    straight into one writable buffer, a chunk at a time (no second copy of the whole volume)."""
    buffer = np.empty(size, dtype=np.uint8)
    view, filled = memoryview(buffer), 0
    with _gzip.open(path, "rb") as f:
        while filled < size:
            count = f.readinto(view[filled : filled + _INFLATE_CHUNK])
            if not count:
                break
            filled += count
    return buffer[:filled]


def _gunzipped_nifti(
    path: Path, header: nib.Nifti1Header, image_class: type[nib.Nifti1Image]
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A ``.nii.gz`` image inflated in one pass by :data:`GZIP_BACKEND`, and its voxel values (see
    :func:`_stored_voxels`).

    nibabel's own opener inflates through the standard library's zlib; inflating here (no more than the header
    implies) and giving nibabel the header in memory yields the same header, affine and scaling. Unscaled voxels
    are a view of the inflated buffer, not a copy.
    """
    size = _nifti_file_size(header)
    data = _gunzip(path, size)
    if len(data) < size:
        raise DataContractError(
            path, f"truncated or corrupt image data: the stream ends after {len(data):,} of the {size:,} bytes"
        )
    head = io.BytesIO(data[: max(int(header["vox_offset"]), 544)].tobytes())
    image = image_class.from_file_map({name: nib.FileHolder(str(path), head) for name in ("header", "image")})
    if not _unscaled_exact(image):  # nibabel scales the voxels: it reads them from (a copy of) the bytes
        whole = io.BytesIO(data.tobytes())
        image = image_class.from_file_map({name: nib.FileHolder(str(path), whole) for name in ("header", "image")})
    return image, _stored_voxels(image, data)


def _sitk_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """4x4 RAS affine from ITK's (LPS) direction cosines, spacing and origin; 2D images get an identity z axis."""
    ndim = len(spacing)
    lps = np.eye(4)
    lps[:ndim, :ndim] = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim) @ np.diag(spacing)
    lps[:ndim, 3] = origin
    return _LPS_TO_RAS @ lps


def _check_detached_data(path: Path) -> None:
    """For a detached header (``.mhd``/``.nhdr``), the data file it names must exist (ITK only says it cannot read)."""
    pattern = {".mhd": r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", ".nhdr": r"^\s*data ?file\s*:\s*(.+?)\s*$"}[
        _suffix(path)
    ]
    try:
        header = path.read_bytes()[:65536].decode("latin-1")
    except OSError as err:
        raise DataContractError(path, f"cannot read the header ({err})") from err
    match = re.search(pattern, header, flags=re.MULTILINE | re.IGNORECASE)
    if match is None:
        return
    name = match.group(1)
    if name.upper() == "LOCAL" or name.upper().startswith("LIST") or "%" in name or " " in name:
        return  # data inside the header file, or a file list/pattern: left to ITK
    if not (path.parent / name).is_file():
        raise DataContractError(path, f"data file {name!r} named in the header does not exist")


_META_BYTES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "FLOAT": 4, "DOUBLE": 8,
               "LONG_LONG": 8, "ULONG_LONG": 8}  # fmt: skip
_NRRD_BYTES = {"int8": 1, "uint8": 1, "uchar": 1, "signed char": 1, "int16": 2, "uint16": 2, "short": 2,
               "ushort": 2, "unsigned short": 2, "int32": 4, "uint32": 4, "int": 4, "uint": 4, "unsigned int": 4,
               "float": 4, "double": 8, "int64": 8, "uint64": 8, "longlong": 8, "ulonglong": 8}  # fmt: skip


def _check_itk_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """MetaImage / NRRD: the raw (or gzip) data the header implies must be in the file before ITK allocates it."""
    count = int(np.prod(reader.GetSize(), dtype=object)) * reader.GetNumberOfComponents()
    with open(path, "rb") as f:
        head = f.read(65536)
    suffix = _suffix(path)
    if suffix in (".mha", ".mhd"):
        fields = dict(re.findall(rb"^\s*(\w+)\s*=\s*(.*?)\s*$", head.split(b"ElementDataFile", 1)[0], re.MULTILINE))
        itemsize = _META_BYTES.get(fields.get(b"ElementType", b"").decode("latin-1").upper().removeprefix("MET_"))
        data = re.search(rb"^\s*ElementDataFile\s*=\s*(.+?)[ \t]*\r?$\n?", head, re.MULTILINE)
        if itemsize is None or data is None or fields.get(b"CompressedData", b"False").lower() == b"true":
            return  # compressed MetaImage: the dimension ceiling alone bounds the allocation
        name = data.group(1).decode("latin-1")
        if name.upper() == "LOCAL":
            stored = path.stat().st_size - data.end()
        elif (path.parent / name).is_file():
            stored = (path.parent / name).stat().st_size
        else:
            return  # file lists/patterns: left to ITK
        _check_stored_bytes(path, stored, count * itemsize, "data")
    elif suffix == ".nrrd":
        end = head.find(b"\n\n")
        fields = dict(re.findall(rb"^([\w ]+):\s*(.*?)\s*$", head[: max(end, 0)], re.MULTILINE))
        itemsize = _NRRD_BYTES.get(fields.get(b"type", b"").decode("latin-1").strip().lower())
        encoding = fields.get(b"encoding", b"").decode("latin-1").strip().lower()
        if end < 0 or itemsize is None or b"data file" in fields or b"datafile" in fields:
            return
        expected = count * itemsize
        if encoding == "raw":
            _check_stored_bytes(path, path.stat().st_size - end - 2, expected, "data")
        elif encoding in ("gzip", "gz"):
            _check_stored_bytes(path, _gzip_size(path, end + 2, expected), expected, "decompressed data")


def _read_itk(path: Path, dims: int) -> tuple[np.ndarray, np.ndarray]:
    if _suffix(path) in (".mhd", ".nhdr"):
        _check_detached_data(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataContractError(path, f"cannot read the header ({_itk_message(err)})") from err
    if "complex" in sitk.GetPixelIDValueAsString(reader.GetPixelID()).lower():
        raise DataContractError(path, "complex voxel data; a real-valued image is expected")
    if reader.GetNumberOfComponents() != 1:
        raise DataContractError(
            path,
            f"has {reader.GetNumberOfComponents()} components per voxel (RGB/vector image); a scalar image is expected",
        )
    shape = _spatial_shape(path, reader.GetSize(), dims)
    limit, what = (MAX_VOLUME_VOXELS, "voxel") if dims == 3 else (MAX_RADIOGRAPH_PIXELS, "pixel")
    _check_pixel_count(path, reader.GetSize(), limit, what)
    _check_itk_size(path, reader)
    spacing = reader.GetSpacing()
    _check_spacing(path, spacing[:dims], "header spacing")
    n = min(len(spacing), 3)
    direction = np.asarray(reader.GetDirection()).reshape(len(spacing), len(spacing))[:n, :n]
    affine = _sitk_affine(direction.ravel(), spacing[:n], reader.GetOrigin()[:n])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise DataContractError(path, f"truncated or corrupt image data ({_itk_message(err)})") from err
    # ITK arrays are (..., z, y, x): transpose (a view) to index order (x, y, z, ...).
    return sitk.GetArrayFromImage(image).T.reshape(shape), affine


_quiet_lock = threading.Lock()
_quiet_state = {"depth": 0, "previous": True}


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's console warnings (e.g. non-uniform sampling), which the checks here report as errors.

    ITK's switch is global: nested and concurrent uses are counted so the user's setting comes back at the end.
    """
    with _quiet_lock:
        if _quiet_state["depth"] == 0:
            _quiet_state["previous"] = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        _quiet_state["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_state["depth"] -= 1
            if _quiet_state["depth"] == 0:
                sitk.ProcessObject.SetGlobalWarningDisplay(_quiet_state["previous"])


def _dicom_files(folder: Path) -> list[Path]:
    if not any(folder.iterdir()):
        raise DataContractError(folder, "folder is empty; a DICOM series is expected")
    return [p for p in sorted(folder.iterdir()) if p.is_file()]


def _slice_vector(text: str) -> np.ndarray:
    return np.asarray([float(v) for v in text.strip().split("\\")], dtype=np.float64)


def _check_pixel_spacing(folder: Path, reader: sitk.ImageSeriesReader, n: int) -> None:
    """GDCM silently replaces a zero or absent Pixel Spacing by 1 mm: check the headers instead."""
    tag = "0028|0030"
    if not all(reader.HasMetaDataKey(i, tag) for i in range(n)):
        raise DataContractError(folder, "DICOM slices have no Pixel Spacing (0028,0030); the voxel size is unknown")
    values = [reader.GetMetaData(i, tag).strip() for i in range(n)]
    if len(set(values)) > 1:
        raise DataContractError(folder, f"slices have different Pixel Spacing ({', '.join(sorted(set(values)))})")
    try:
        spacing = _slice_vector(values[0])
    except ValueError as err:
        raise DataContractError(folder, f"unreadable Pixel Spacing {values[0]!r}") from err
    _check_spacing(folder, spacing, "DICOM Pixel Spacing")


def _check_slice_positions(folder: Path, reader: sitk.ImageSeriesReader, files: Sequence[str]) -> None:
    """Raise on missing, duplicate or unevenly spaced slices (positions projected on the slice normal)."""
    n = len(files)
    try:
        orientations = [_slice_vector(reader.GetMetaData(i, "0020|0037")) for i in range(n)]
        positions = np.stack([_slice_vector(reader.GetMetaData(i, "0020|0032")) for i in range(n)])
    except (RuntimeError, ValueError) as err:
        raise DataContractError(
            folder, "slices lack Image Position/Orientation (Patient); cannot order the series"
        ) from err
    if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        raise DataContractError(folder, "slices have different orientations (Image Orientation Patient)")
    normal = np.cross(orientations[0][:3], orientations[0][3:6])
    along = positions @ normal
    offset = positions[-1] - positions[0]
    sideways = float(np.linalg.norm(offset - (offset @ normal) * normal))
    if sideways > max(0.1, 1e-3 * float(np.linalg.norm(offset))):
        raise DataContractError(
            folder,
            f"slices are not stacked along their normal ({sideways:.2f} mm sideways drift, gantry tilt?); "
            "resample the series (e.g. dcm2niix) first",
        )
    steps = np.diff(along)
    step = float(np.median(np.abs(steps)))
    names = [Path(f).name for f in files]
    duplicates = np.flatnonzero(np.abs(steps) <= 1e-3 * max(step, 1.0))
    if duplicates.size:
        i = int(duplicates[0])
        raise DataContractError(
            folder,
            f"duplicate slice position {along[i]:.2f} mm ({names[i]}, {names[i + 1]}); "
            "the folder may mix acquisitions of one series",
        )
    tolerance = max(0.01, 0.01 * step)
    gaps = [i for i, s in enumerate(np.abs(steps)) if s > _MISSING_SLICE_RATIO * step]
    if gaps:
        shown = "; ".join(
            f"gap of {abs(steps[i]):.2f} mm between slice positions {along[i]:.2f} and {along[i + 1]:.2f} mm "
            f"({names[i]}, {names[i + 1]}), about {round(abs(steps[i]) / step) - 1} slice(s)"
            for i in gaps[:3]
        )
        more = f" and {len(gaps) - 3} more gap(s)" if len(gaps) > 3 else ""
        raise DataContractError(folder, f"missing slice(s): {shown}{more}; expected {step:.2f} mm steps")
    if (np.abs(np.abs(steps) - step) > tolerance).any():
        raise DataContractError(
            folder,
            f"non-uniform slice spacing (steps from {np.abs(steps).min():.3f} to {np.abs(steps).max():.3f} mm)",
        )


def _check_series_size(folder: Path, names: Sequence[str]) -> None:
    """Rows x Columns of the first slice times the number of slices must fit the ceiling (read before GDCM allocates)."""
    import pydicom

    try:
        ds = pydicom.dcmread(names[0], stop_before_pixels=True)
    except Exception as err:
        raise DataContractError(names[0], f"not a readable DICOM file ({err})") from err
    shape = (int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), len(names))
    _check_pixel_count(folder, shape, MAX_VOLUME_VOXELS, "voxel")


def _read_dicom_series(folder: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    files = _dicom_files(folder)
    with _quiet_itk():
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise DataContractError(folder, f"no DICOM series found among {len(files)} file(s)")
    if series_uid is None:
        if len(series) > 1:
            listed = ", ".join(repr(s) for s in series)
            raise DataContractError(
                folder, f"contains {len(series)} DICOM series ({listed}); pick one with series_uid="
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise DataContractError(
            folder, f"series_uid {series_uid!r} not found; available: {', '.join(repr(s) for s in series)}"
        )
    with _quiet_itk():
        names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    if len(names) < 2:
        raise DataContractError(
            folder, f"contains a single DICOM slice ({Path(names[0]).name}); a 3D series needs several"
        )
    _check_series_size(folder, names)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.SetOutputPixelType(sitk.sitkFloat32)  # GDCM applies Rescale Slope/Intercept per slice
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as err:
        message = _itk_message(err)
        if "spacing" in message.lower():
            raise DataContractError(folder, f"zero voxel spacing in the DICOM headers ({message})") from err
        raise DataContractError(folder, f"cannot read the DICOM series ({message})") from err
    _check_pixel_spacing(folder, reader, len(names))
    _check_slice_positions(folder, reader, names)
    if image.GetDimension() != 3:
        raise DataContractError(folder, f"DICOM series decoded to {image.GetDimension()}D; a 3D volume is expected")
    _check_spacing(folder, image.GetSpacing(), "DICOM spacing")
    affine = _sitk_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    return sitk.GetArrayFromImage(image).T, affine


def _reject_single_dicom(path: Path) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many types for damaged files
        raise DataContractError(path, f"not a readable DICOM file ({err})") from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataContractError(
            path, f"multi-frame DICOM ({frames} frames) is not supported for volumes; convert it to NIfTI (dcm2niix)"
        )
    raise DataContractError(
        path, "is a single DICOM file (one slice); a 3D volume needs the folder holding the whole series"
    )


# ----------------------------------------------------------------------------------------------------------------------
# public readers
# ----------------------------------------------------------------------------------------------------------------------


def _read_any_volume(path: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    if path.is_dir():
        return _read_dicom_series(path, series_uid)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path, dims=3)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path, dims=3)
    if suffix in DICOM_SUFFIXES or _is_dicom_file(path):
        _reject_single_dicom(path)
    raise DataContractError(
        path,
        f"unsupported file type {suffix or '(none)'!r} for a volume; expected {list(VOLUME_SUFFIXES)} "
        "or a DICOM series folder",
    )


def read_volume(path: PathLike, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one 3D volume.

    Args:
        path: a NIfTI (``.nii``/``.nii.gz``), MetaImage (``.mha``/``.mhd``) or NRRD file, or a folder holding a DICOM
            series.
        series_uid: for a DICOM folder holding several series, the SeriesInstanceUID to read.

    Returns:
        ``(array, affine)``: ``(X, Y, Z)`` float32 in file intensity units (HU for CT) in the file's voxel order, and
        the 4x4 voxel-to-RAS+ (mm) affine. A trailing singleton 4th dimension is dropped.

    Raises:
        DataContractError: missing file, empty folder, unreadable header, truncated/corrupt data, 2D or 4D image,
            zero/negative/non-finite spacing, singular affine, NaN/inf voxels, several DICOM series without
            ``series_uid``, missing or duplicate DICOM slices, a single DICOM file, an unsupported file type.
    """
    path = _given_path(path, "volume")
    _check_exists(path)
    with _named_read_errors(path):
        array, affine = _read_any_volume(path, series_uid)
    _check_affine(path, affine)
    _check_orthogonal(path, affine)
    _check_finite(path, array, "voxel")
    return _writable_float32(array), affine


def _writable_float32(array: np.ndarray) -> np.ndarray:
    """``array`` as a writable float32 array in the same memory order (a Fortran-ordered NIfTI volume stays so)."""
    if array.dtype == np.float32 and array.flags.writeable:
        return array
    return array.astype(np.float32, order="K")


def _read_dicom_radiograph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises many types for damaged files
        raise DataContractError(path, f"not a readable DICOM file ({err})") from err
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataContractError(path, "DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataContractError(path, f"image is a 3D volume ({frames} frames); a single 2D radiograph is expected")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixel_count(path, (rows, columns, int(ds.get("SamplesPerPixel", 1) or 1)), MAX_RADIOGRAPH_PIXELS, "pixel")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # decoder plugins raise many types
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise DataContractError(path, f"cannot decode the pixel data ({syntax}: {err})") from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        array = _grey(np.asarray(pixels, dtype=np.float32))
    else:
        if pixels.ndim != 2:
            raise DataContractError(path, f"image is not 2D (pixel array shape {pixels.shape})")
        array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        raw_constant = array.min() == array.max()
        array = np.asarray(apply_voi_lut(array, ds), dtype=np.float32)
        if not raw_constant and array.min() == array.max():
            raise DataContractError(
                path, f"image is constant after the VOI LUT/window (every pixel = {array.flat[0]:g})"
            )
        if photometric == "MONOCHROME1":  # low values are bright: invert within the value range
            array = array.max() + array.min() - array
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    values = np.full(2, np.nan)
    if spacing is not None and len(spacing) == 2:
        values = np.asarray([float(s) for s in spacing])
        values[~(np.isfinite(values) & (values > 0))] = np.nan
    return array, values


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Grey levels of an ``(H, W, 3)`` array: the shared channel if all are equal, else ITU-R BT.601 luma."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return (rgb[..., :3] @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def _read_pil(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames = int(getattr(image, "n_frames", 1))
            if frames > 1:
                raise DataContractError(
                    path, f"image is a 3D volume ({frames} frames); a single 2D radiograph is expected"
                )
            _check_pixel_count(path, image.size, MAX_RADIOGRAPH_PIXELS, "pixel")
            image.load()
            mode = image.mode
            if mode in ("L", "I", "F", "1") or mode.startswith("I;16"):
                array = np.asarray(image, dtype=np.float32)
            elif mode == "LA":
                array = np.asarray(image, dtype=np.float32)[..., 0]
            else:  # RGB(A), palette, CMYK, YCbCr, ...
                array = _grey(np.asarray(image.convert("RGB"), dtype=np.float32))
    except DataContractError:
        raise
    except Image.DecompressionBombError as err:
        raise DataContractError(path, f"decompression bomb refused before decoding ({err})") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataContractError(path, f"unreadable image file ({err})") from err
    return array, np.full(2, np.nan)


def _read_any_radiograph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES or suffix in ITK_SUFFIXES:
        array, affine = (_read_nifti if suffix in NIFTI_SUFFIXES else _read_itk)(path, dims=2)
        return np.array(array.T, dtype=np.float32, order="C"), np.linalg.norm(affine[:3, :2], axis=0)[::-1]
    if suffix in DICOM_SUFFIXES or _is_dicom_file(path):
        return _read_dicom_radiograph(path)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path)
    raise DataContractError(
        path, f"unsupported file type {suffix or '(none)'!r} for a radiograph; expected {list(RADIOGRAPH_SUFFIXES)}"
    )


def read_radiograph(path: PathLike, allow_constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one 2D radiograph.

    DICOM: Modality LUT (rescale slope/intercept or LUT), then the first VOI LUT or window, then MONOCHROME1
    inversion (``max + min - value``), so dense tissue is bright. PNG/JPEG/TIFF: 8- or 16-bit grey values as stored;
    colour images are converted to grey. A 2D NIfTI/MHA/NRRD image is returned as ``(j, i)`` = rows by columns.

    Args:
        path: a DICOM (``.dcm`` or no suffix), PNG, JPEG or TIFF file, or a 2D NIfTI/MHA/NRRD file.
        allow_constant: accept a constant image (e.g. an empty 2D mask).

    Returns:
        ``(array, spacing)``: ``(H, W)`` float32 (row 0 at the top, no flips) and the ``(row, column)`` pixel spacing
        in mm, NaN where the file does not record a positive spacing.

    Raises:
        DataContractError: missing or unreadable file, a folder, a 3D volume or multi-frame file, NaN/inf pixels,
            a constant image (unless ``allow_constant``), an unsupported file type.
    """
    path = _given_path(path, "radiograph")
    _check_exists(path)
    if path.is_dir():
        raise DataContractError(path, "is a folder; a radiograph is a single file (DICOM, PNG or JPEG)")
    with _named_read_errors(path):
        array, spacing = _read_any_radiograph(path)
    _check_finite(path, array, "pixel")
    if not allow_constant and array.min() == array.max():
        raise DataContractError(path, f"image is constant (every pixel = {array.flat[0]:g})")
    return array.astype(np.float32, copy=False), spacing.astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# MONAI integration
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    array: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _single_path(data: Sequence[PathLike] | PathLike) -> Path:
    paths = ensure_tuple(data)
    if len(paths) != 1:
        raise DataContractError(paths[0] if paths else None, f"one image per item is expected, got {len(paths)} paths")
    return _given_path(paths[0], "image")


def _meta(loaded: _Loaded) -> dict[str, Any]:
    meta = {
        MetaKeys.AFFINE: loaded.affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: loaded.affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(loaded.array.shape),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "spacing": loaded.spacing.copy(),
    }
    meta.update(loaded.meta)
    return meta


class VolumeReader(ImageReader):
    """MONAI ``ImageReader`` around :func:`read_volume`: ``(X, Y, Z)`` data with its RAS affine and all checks.

    Args:
        series_uid: SeriesInstanceUID to read from DICOM folders holding several series.
    """

    def __init__(self, series_uid: str | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(Path(f).is_dir() or _suffix(Path(f)) in VOLUME_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> _Loaded:
        array, affine = read_volume(_single_path(data), series_uid=kwargs.get("series_uid", self.series_uid))
        return _Loaded(array, affine, np.linalg.norm(affine[:3, :3], axis=0), {MetaKeys.SPACE: SpaceKeys.RAS})

    def get_data(self, img: _Loaded) -> tuple[np.ndarray, dict]:
        return img.array, _meta(img)


class RadiographReader(ImageReader):
    """MONAI ``ImageReader`` around :func:`read_radiograph`: ``(H, W)`` data (not MONAI's transposed ``(W, H)``).

    The affine is ``diag(row_spacing, column_spacing, 1, 1)`` with 1 mm standing in for an unknown spacing; the
    recorded spacing (NaN if unknown) is kept in the ``spacing`` metadata.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        paths = [Path(f) for f in ensure_tuple(filename)]
        return all(_suffix(p) in RADIOGRAPH_SUFFIXES or _is_dicom_file(p) for p in paths)

    allow_constant: bool = False

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> _Loaded:
        array, spacing = read_radiograph(_single_path(data), allow_constant=self.allow_constant)
        affine = np.diag([*np.nan_to_num(spacing, nan=1.0), 1.0, 1.0])
        return _Loaded(array, affine, spacing)

    def get_data(self, img: _Loaded) -> tuple[np.ndarray, dict]:
        return img.array, _meta(img)


class RadiographMaskReader(RadiographReader):
    """:class:`RadiographReader` for 2D label maps: values as stored, an empty (constant) map allowed."""

    allow_constant = True


class _LoadValidatedd(MapTransform):
    reader_class: type[ImageReader]

    def __init__(
        self,
        keys: KeysCollection,
        ensure_channel_first: bool = True,
        dtype: DtypeLike | torch.dtype = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = self.reader_class()
        # Readers are always passed at call time: LoadImage then neither falls back to other readers on an error
        # nor hides our DataContractError behind its own "cannot find a suitable reader" message.
        self.loader = LoadImage(
            reader=self.reader, image_only=True, dtype=dtype, ensure_channel_first=ensure_channel_first
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not isinstance(d[key], (list, tuple)):  # LoadImage would turn "" into "."
                _given_path(d[key], str(key))
            d[key] = self._load(d[key])
        return d

    def _load(self, path: Sequence[PathLike] | PathLike) -> torch.Tensor:
        return self.loader(path, reader=self.reader)


class LoadVolumed(_LoadValidatedd):
    """Load 3D volumes with :class:`VolumeReader` into ``MetaTensor`` ``(1, X, Y, Z)`` (RAS affine, HU for CT).

    The volumes under ``ct_keys`` are checked with :func:`ct_problems` ("is this really a CT in HU?").

    Args:
        keys: keys of the items holding a volume path (file or DICOM folder).
        ensure_channel_first: add the channel dimension.
        dtype: output data type.
        allow_missing_keys: do not raise if a key is absent.
        ct_checks: ``"warn"`` (log a warning naming the file), ``"error"`` (a :class:`DataContractError`, which
            ``on_bad_sample="skip"`` skips) or ``"off"``.
        ct_keys: the keys holding CT images (not label maps).

    Raises:
        ValueError: for an unknown ``ct_checks``.
    """

    reader_class = VolumeReader

    def __init__(
        self,
        keys: KeysCollection,
        ensure_channel_first: bool = True,
        dtype: DtypeLike | torch.dtype = np.float32,
        allow_missing_keys: bool = False,
        ct_checks: str = "warn",
        ct_keys: KeysCollection = ("image",),
    ) -> None:
        super().__init__(keys, ensure_channel_first, dtype, allow_missing_keys)
        if ct_checks not in ("warn", "error", "off"):
            raise ValueError(f"ct_checks must be 'warn', 'error' or 'off', got {ct_checks!r}")
        self.ct_checks = ct_checks
        self.ct_keys = set(ensure_tuple(ct_keys))
        self._warned: set[str] = set()  # warn once per file, not once per epoch

    def _load(self, path: Sequence[PathLike] | PathLike) -> torch.Tensor:
        """What ``LoadImage`` (+ ``EnsureChannelFirst``) makes of :class:`VolumeReader`'s output: the same values,
        metadata and affine, in the array's own memory order.

        ``LoadImage`` copies every array into C order; a NIfTI volume is Fortran-ordered, and that whole-array
        transposing copy cost 1.5 CPU s for 512 x 512 x 300 voxels (common/data/DATA_PATH.md). The resampling that
        follows reads any memory order, so the volume is wrapped as it is.
        """
        array, meta = self.reader.get_data(self.reader.read(path))
        meta[ImageMetaKey.FILENAME_OR_OBJ] = f"{ensure_tuple(path)[0]}"
        tensor = torch.from_numpy(array)
        if self.loader.dtype is not None:
            tensor = tensor.to(get_equivalent_dtype(self.loader.dtype, torch.Tensor))
        if self.loader.ensure_channel_first:
            tensor = tensor.unsqueeze(0)
        return MetaTensor(tensor, meta=meta) if get_track_meta() else tensor

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        paths = {key: data.get(key) for key in self.ct_keys}
        d = super().__call__(data)
        if self.ct_checks == "off":
            return d
        for key in self.key_iterator(d):
            if key not in self.ct_keys or not isinstance(paths[key], (str, Path)):
                continue
            problems = ct_problems(paths[key], np.asarray(d[key]))
            if problems and self.ct_checks == "error":
                raise DataContractError(paths[key], "; ".join(problems))
            if problems and str(paths[key]) not in self._warned:
                self._warned.add(str(paths[key]))
                logger.warning("%s: %s", paths[key], "; ".join(problems))
        return d


class LoadRadiographd(_LoadValidatedd):
    """Load 2D radiographs with :class:`RadiographReader` into ``MetaTensor`` ``(1, H, W)``, dense tissue bright.

    Args:
        keys: keys of the items holding a radiograph path.
        ensure_channel_first: add the channel dimension.
        dtype: output data type.
        allow_missing_keys: do not raise if a key is absent.
    """

    reader_class = RadiographReader


class LoadRadiographMaskd(_LoadValidatedd):
    """Load 2D label maps aligned with radiographs (class indices as stored, empty maps allowed) as ``(1, H, W)``."""

    reader_class = RadiographMaskReader
