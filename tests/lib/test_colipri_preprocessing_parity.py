"""Voxelwise parity of :func:`common.transforms.ct.colipri_preprocessing` with the official ``colipri==0.1.3`` TorchIO
processor (``colipri.get_processor(image_only=True)``), on real CT (skipped without shared/data) and on synthetic
volumes that exercise cropping, padding and the ``padding_mode="minimum"`` value.

Tolerance: SimpleITK resamples an integer image in its integer type, so TorchIO's output is truncated to whole HU,
i.e. up to 1 HU = 1e-3 after the [-1000, 1000] -> [-1, 1] rescale; ours keeps the interpolated value. Beyond that,
both compute the same trilinear interpolation on the same grid (float32 vs float64 weights, ~1e-6). So every voxel
must agree to 1e-3 plus float slack, and on average to well under half of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from common.transforms.ct import colipri_preprocessing

pytestmark = pytest.mark.reference

HU_STEP = 1e-3  # one HU after rescaling [-1000, 1000] to [-1, 1]
TOLERANCE = HU_STEP + 2e-5


@pytest.fixture(scope="module")
def colipri_processor():
    colipri = pytest.importorskip("colipri")
    pytest.importorskip("torchio")
    torch.set_num_threads(1)
    return colipri.get_processor(image_only=True)


def _compare(ours, reference) -> dict[str, float]:
    diff = np.abs(ours.numpy() - reference.data.numpy())
    stats = {
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "within": float((diff <= TOLERANCE).mean()),
    }
    print(
        f"voxelwise |ours - TorchIO|: max {stats['max']:.2e}, mean {stats['mean']:.2e}, "
        f"within {TOLERANCE:.2e}: {100 * stats['within']:.4f}%"
    )
    return stats


def _ours(path, **kwargs):
    return Compose(colipri_preprocessing(**kwargs), lazy=True)({"image": str(path)})["image"]


@pytest.mark.parametrize("name", ["chest_cta_cropped.nii.gz", "lung_pet_ct_dx_A0001_5mm.nii.gz"])
def test_parity_on_real_ct(real_data_dir, colipri_processor, name):
    path = real_data_dir / "ct" / name
    reference = colipri_processor.process_images(str(path))[0]
    ours = _ours(path)
    assert tuple(ours.shape) == tuple(reference.data.shape) == (1, 192, 192, 192)
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine, atol=1e-4)
    stats = _compare(ours, reference)
    assert stats["mean"] < HU_STEP / 2
    assert stats["within"] > 0.99
    assert stats["max"] < 2 * HU_STEP


def test_parity_in_sar_orientation(real_data_dir):
    colipri = pytest.importorskip("colipri")
    path = real_data_dir / "ct" / "chest_cta_cropped.nii.gz"
    reference = colipri.get_processor(image_only=True, orientation="SAR").process_images(str(path))[0]
    ours = _ours(path, orientation="SAR")
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine, atol=1e-4)
    stats = _compare(ours, reference)
    assert stats["mean"] < HU_STEP / 2 and stats["within"] > 0.99


@pytest.mark.parametrize(
    "shape,spacing,low,high",
    [
        ((60, 50, 30), (1.5, 1.5, 6.0), 20.0, 80.0),  # padded on every axis, no air: pad value is not -1
        ((260, 90, 40), (1.7, 0.9, 3.0), -1100.0, 1400.0),  # cropped along x, padded along y and z
        ((101, 99, 77), (2.0, 2.0, 2.0), -1500.0, 2000.0),  # already at 2 mm: crop/pad only, odd sizes
    ],
)
def test_parity_on_synthetic_float_volumes(tmp_path, write_nifti, colipri_processor, shape, spacing, low, high):
    rng = np.random.default_rng(sum(shape))
    smooth = rng.uniform(low, high, size=tuple(max(2, s // 8) for s in shape))
    data = torch.nn.functional.interpolate(
        torch.from_numpy(smooth)[None, None].float(), size=shape, mode="trilinear", align_corners=False
    )[0, 0].numpy()  # smooth, float32: no integer quantisation on the TorchIO side
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-stored, as most DICOM-derived NIfTI
    affine[:3, 3] = (12.5, -40.0, 7.0)
    path = write_nifti(tmp_path / "volume.nii.gz", data.astype(np.float32), affine)
    reference = colipri_processor.process_images(str(path))[0]
    ours = _ours(path)
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine, atol=1e-4)
    stats = _compare(ours, reference)
    assert stats["max"] < 1e-4  # float input: only float32-vs-float64 interpolation rounding remains
