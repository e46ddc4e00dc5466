""" "Is this really a CT in HU?": volumes that would silently become garbage are flagged by the validator and warned
about or refused by the readers (``ct_checks``), and geometry that cannot be trusted is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from common.data.contract import DataContractError
from common.data.dataset import PretrainingDataset, pretraining_collate
from common.data.readers import AIR_HU, MIN_CT_SLICES, LoadVolumed, ct_problems, read_volume
from common.data.validate import validate_datalist


def _hu(shape: tuple[int, ...] = (20, 21, 22), seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 250 - 300).astype(np.float32)


NOT_HU = {
    "eight_bit_export": (lambda: np.round((_hu() + 1024) / 3000 * 255).clip(0, 255).astype(np.uint8), "8-bit export"),
    "normalised_0_1": (lambda: ((_hu() + 1000) / 2000).clip(0, 1), "normalised data"),
    "normalised_minus1_1": (lambda: ((_hu() + 300) / 1000).clip(-1, 1), "normalised data"),
    "constant": (lambda: np.full((20, 21, 22), -1000, np.int16), "constant volume"),
    "few_slices": (lambda: _hu((64, 64, MIN_CT_SLICES - 1)), f"fewer than {MIN_CT_SLICES}"),
    "no_air": (lambda: _hu() + 800, f"no voxel below {AIR_HU:g}"),
}


@pytest.mark.parametrize("kind", sorted(NOT_HU))
def test_ct_problems_name_each_rule(tmp_path: Path, write_nifti, kind: str) -> None:
    make, phrase = NOT_HU[kind]
    path = write_nifti(tmp_path / f"{kind}.nii.gz", make())
    array, _ = read_volume(path)
    problems = ct_problems(path, array)
    assert any(phrase in p for p in problems), problems


def test_a_ct_in_hu_has_no_problems(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "ct.nii.gz", _hu())
    assert ct_problems(path, read_volume(path)[0]) == []


def test_disagreeing_qform_and_sform(tmp_path: Path) -> None:
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[:3, 3] = [0.0, 0.0, 15.0]
    image = nib.Nifti1Image(_hu(), shifted)
    image.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    image.set_sform(shifted, code=1)
    path = tmp_path / "two_geometries.nii.gz"
    nib.save(image, path)
    assert any("qform and sform disagree (by up to 15 mm)" in p for p in ct_problems(path, read_volume(path)[0]))


def test_complex_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kspace.nii.gz"
    nib.save(nib.Nifti1Image(_hu().astype(np.complex64), np.eye(4)), path)
    with pytest.raises(DataContractError, match="complex voxel data") as caught:
        read_volume(path)
    assert caught.value.source == str(path)
    mha = tmp_path / "kspace.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_hu().astype(np.complex64)), str(mha))
    with pytest.raises(DataContractError, match="complex voxel data|2 components per voxel"):  # ITK: a 2-vector
        read_volume(mha)


@pytest.mark.parametrize("degrees", [0.5, 20.0])
def test_sheared_grid_is_refused_like_a_gantry_tilt(tmp_path: Path, write_nifti, degrees: float) -> None:
    affine = np.eye(4)
    affine[1, 2] = np.tan(np.radians(degrees))  # the slice axis leans along y
    path = write_nifti(tmp_path / "tilted.nii.gz", _hu(), affine)
    with pytest.raises(DataContractError, match="sheared") as caught:
        read_volume(path)
    assert f"{90 - degrees:.2f} degrees" in caught.value.problem


def test_rotated_grid_is_fine(tmp_path: Path, write_nifti) -> None:
    angle = np.radians(30)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    read_volume(write_nifti(tmp_path / "rotated.nii.gz", _hu(), affine))


def test_loader_warns_once_refuses_when_strict_and_skips(tmp_path: Path, write_nifti, caplog) -> None:
    export = write_nifti(tmp_path / "export.nii.gz", NOT_HU["eight_bit_export"][0]())
    mask = write_nifti(tmp_path / "mask.nii.gz", np.zeros((20, 21, 22), np.uint8))  # a label map is not checked
    good = write_nifti(tmp_path / "ct.nii.gz", _hu())
    record = {"image": str(export), "mask": str(mask)}
    loader = LoadVolumed(["image", "mask"])
    with caplog.at_level(logging.WARNING, logger="common.data.readers"):
        loader(record)
        loader(record)
    assert [r.getMessage() for r in caplog.records if "8-bit export" in r.getMessage()] == [
        f"{export}: " + "; ".join(ct_problems(export, read_volume(export)[0]))
    ]
    with pytest.raises(DataContractError, match="8-bit export") as caught:
        LoadVolumed(["image", "mask"], ct_checks="error")(record)
    assert caught.value.source == str(export)
    LoadVolumed(["image", "mask"], ct_checks="error")({"image": str(good), "mask": str(mask)})
    dataset = PretrainingDataset(
        [{"image": str(export)}, {"image": str(good)}], LoadVolumed("image", ct_checks="error"), on_bad_sample="skip"
    )
    assert pretraining_collate([dataset[0], dataset[1]])["skipped_records"] == [0]


def test_validator_warns_or_counts_them_with_strict(tmp_path: Path, write_nifti) -> None:
    write_nifti(tmp_path / "export.nii.gz", NOT_HU["eight_bit_export"][0]())
    write_nifti(tmp_path / "ct.nii.gz", _hu())
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "ct.nii.gz"}, {"image": "export.nii.gz"}]}))
    warnings: list = []
    assert validate_datalist(path, warnings=warnings) == []
    assert [(w.index, Path(w.source).name) for w in warnings] == [(1, "export.nii.gz")]
    strict = validate_datalist(path, strict=True)
    assert [(p.index, "8-bit export" in p.problem) for p in strict] == [(1, True)]


def _ct_stacks() -> list[tuple[str, list[Path], str]]:
    """(bundle:config, config files, id of the preprocessing list) of every config that exposes ``ct_checks``."""
    import yaml

    from common.bundle_support import discover_bundles

    out = []
    for bundle in discover_bundles():
        for name, preprocessing in (("train", "image_preprocessing"), ("inference", "preprocessing")):
            path = bundle.config(name)
            if path is not None and "ct_checks" in (yaml.safe_load(path.read_text()) or {}):
                out.append((f"{bundle.name}:{name}", [path], preprocessing))
    return out


CT_STACKS = _ct_stacks()


def test_ct_bundles_expose_the_knob() -> None:
    assert {s.split(":")[0] for s, _, _ in CT_STACKS} >= {"colipri_ct", "g2d_ct", "raddino_ct"}


@pytest.mark.parametrize(("stack", "files", "preprocessing"), CT_STACKS, ids=[s for s, _, _ in CT_STACKS])
def test_bundle_ct_checks_knob(tmp_path: Path, write_nifti, stack: str, files: list[Path], preprocessing: str) -> None:
    """``--ct_checks error`` makes a bundle's preprocessing refuse an 8-bit export naming it; ``warn`` reads it."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    export = write_nifti(tmp_path / "export.nii.gz", NOT_HU["eight_bit_export"][0]())
    for knob, refused in (("error", True), ("warn", False)):
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        parser.update({"ct_checks": knob, "spatial_size": 16, "pixdim": 8.0})
        transform = parser.get_parsed_content(preprocessing)
        transform = transform if isinstance(transform, Compose) else Compose(transform)
        if not refused:
            transform({"image": str(export)})
            continue
        with pytest.raises(Exception) as caught:
            transform({"image": str(export)})
        error = caught.value
        while error is not None and not isinstance(error, DataContractError):
            error = error.__cause__ or error.__context__
        assert error is not None and error.source == str(export) and "8-bit export" in error.problem, stack
