"""``.nii.gz`` volumes decoded through ISA-L (``isal``) give the same arrays as nibabel's own stdlib-zlib path, and
the readers fall back to the standard library when ``isal`` is absent."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import readers
from common.data.contract import DataContractError

ROOT = Path(__file__).resolve().parents[2]


def _nibabel_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)  # nibabel's opener: gzip.GzipFile (stdlib zlib)
    return image.get_fdata(dtype=np.float32), np.asarray(image.affine)


def _scaled_volume(tmp_path: Path) -> Path:
    """An int16 volume with scl_slope / scl_inter and an extension, written as two gzip members."""
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 2000, size=(40, 33, 21), dtype=np.int16)
    image = nib.Nifti1Image(data, np.diag([0.7, 0.8, 1.5, 1.0]))
    image.header.set_slope_inter(0.5, -3.0)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"comment for the test"))
    plain = tmp_path / "v.nii"
    nib.save(image, plain)
    raw = plain.read_bytes()
    path = tmp_path / "v.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))  # a valid two-member stream
    return path


def test_isal_is_the_backend_when_installed() -> None:
    pytest.importorskip("isal")
    assert readers.GZIP_BACKEND == "isal"


@pytest.mark.parametrize("name", ["chest_cta_cropped.nii.gz", "abdomen_ct.nii.gz", "lung_pet_ct_dx_A0001_5mm.nii.gz"])
def test_real_ct_arrays_identical_to_nibabel(name: str, real_data_dir: Path) -> None:
    path = real_data_dir / "ct" / name
    array, affine = readers.read_volume(path)
    expected, expected_affine = _nibabel_reference(path)
    assert array.dtype == np.float32
    assert array.flags.f_contiguous  # NIfTI's own order: LoadVolumed wraps it without a transposing copy
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(affine, expected_affine)


def test_scaled_multi_member_volume_identical(tmp_path: Path) -> None:
    path = _scaled_volume(tmp_path)
    array, affine = readers.read_volume(path)
    expected, expected_affine = _nibabel_reference(path)
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(affine, expected_affine)
    assert np.unique(np.mod(array * 2, 1)).tolist() == [0.0]  # slope 0.5 applied, not dropped


_FALLBACK = """
import sys
sys.modules["isal"] = None  # `import isal` raises ImportError: isal is absent
import numpy as np
from common.data import readers
from common.data.contract import DataContractError
assert readers.GZIP_BACKEND == "zlib", readers.GZIP_BACKEND
np.save(sys.argv[2], readers.read_volume(sys.argv[1])[0])
try:
    readers.read_volume(sys.argv[3])
except DataContractError as err:
    print(err)
"""


def test_stdlib_fallback_without_isal(tmp_path: Path) -> None:
    path = _scaled_volume(tmp_path)
    whole = gzip.compress(path.with_suffix("").with_suffix(".nii").read_bytes())
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "fallback.npy"
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK, str(path), str(out), str(truncated)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "cut.nii.gz" in done.stdout and "truncated" in done.stdout
    np.testing.assert_array_equal(np.load(out), readers.read_volume(path)[0])


def test_corrupt_stream_named(tmp_path: Path) -> None:
    path = _scaled_volume(tmp_path)
    raw = bytearray(gzip.compress(gzip.decompress(path.read_bytes())))
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # damage deflate blocks, keep header and trailer
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataContractError, match="bad.nii.gz"):
        readers.read_volume(bad)
