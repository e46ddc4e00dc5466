"""``python -m common.data.build folder``: a folder of volumes (NIfTI and a DICOM series) or radiographs, a CSV of
file -> report / labels / patient / split, and a second folder of image-only scans."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.contract import DataContractError
from common.data.sources.folder import build_folder
from common.data.validate import validate_datalist

REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(image: str, patient: str, report: str = "FINDINGS: Clear lungs. IMPRESSION: Normal.", **labels: str) -> dict:
    return {"image": image, "patient_id": patient, "report": report, "age": "61",
            "Emphysema": labels.get("Emphysema", "0"), "Lung nodule": labels.get("Lung nodule", "")}  # fmt: skip


@pytest.fixture
def volumes(tmp_path: Path, write_nifti, write_dicom_series) -> Path:
    root = tmp_path / "scans"
    for name in ("a.nii.gz", "b.nii.gz", "sub/c.nii.gz", "d.nii.gz", "unlisted.nii.gz"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(root / name, np.random.default_rng(len(name)).normal(size=(5, 6, 7)).astype(np.float32))
    write_dicom_series(root / "series", np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8))
    extra = tmp_path / "image_only"
    extra.mkdir()
    write_nifti(extra / "e.nii.gz", np.ones((5, 6, 7), np.float32))
    return root


def test_volumes_csv_and_image_only(volumes: Path, tmp_path: Path, capsys) -> None:
    table = _csv(tmp_path / "map.csv", [
        _row("a.nii.gz", "p1", Emphysema="1", **{"Lung nodule": "-1"}),
        _row("b.nii.gz", "p1"),  # same patient as a: same split
        _row("sub/c.nii.gz", "p2", report=""),  # no report: image-only
        _row("series", "p3"),
        _row("d.nii.gz", "p4", Emphysema="yes"),  # bad label value
        _row("missing.nii.gz", "p5"),  # not on disk
        _row("a.nii.gz", "p1"),  # second row for one image
    ])  # fmt: skip
    out = tmp_path / "out" / "datalist.json"
    summary = build_folder(
        volumes, out, csv=str(table), image_only_dir=str(tmp_path / "image_only"),
        label_columns=["Emphysema", "Lung nodule"], val_fraction=0.0, test_fraction=0.0,
    )  # fmt: skip
    assert summary.skipped == {
        "label value other than 1/0/-1/blank": 1,
        "CSV row whose image is not on disk": 1,
        "second CSV row for one image": 1,
    }
    # a, b, series paired; c, unlisted and e image-only; d is skipped (its row is bad), not turned image-only
    assert summary.written == 6 and summary.paired == 3 and summary.image_only == 3
    assert summary.notes["image(s) under root not in the CSV: image-only record(s)"] == 1
    records = {Path(r["image"]).name: r for r in json.loads(out.read_text())["training"]}
    assert records["a.nii.gz"]["labels"] == {"emphysema": 1} and records["a.nii.gz"]["meta"] == {"age": "61"}
    assert records["series"]["report"].startswith("FINDINGS") and "report" not in records["c.nii.gz"]
    assert "line 6: column 'Emphysema'" in capsys.readouterr().out
    assert validate_datalist(out, dims=3) == []
    with pytest.raises(DataContractError, match=r"map\.csv, line 6: label value"):
        build_folder(volumes, out, csv=str(table), label_columns=["Emphysema"], on_bad="raise", quiet=True)


def test_patient_level_hash_split_and_pinned_image_only(tmp_path: Path) -> None:
    root, extra = tmp_path / "cxr", tmp_path / "more"
    rows = []
    for index in range(60):
        for view in range(2):
            path = root / f"p{index}" / f"v{view}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(index).integers(0, 255, (8, 8), np.uint8)).save(path)
            rows.append(
                {"file": f"p{index}/v{view}.png", "patient": f"p{index}", "findings": "Clear.", "impression": ""}
            )
    extra.mkdir()
    for index in range(5):
        Image.fromarray(np.full((8, 8), index * 40, np.uint8)).save(extra / f"x{index}.png")
    out = tmp_path / "d.json"
    summary = build_folder(
        root, out, dims=2, csv=str(_csv(tmp_path / "m.csv", rows)), image_only_dir=str(extra), quiet=True
    )
    content = json.loads(out.read_text())
    where = {}
    for section in ("training", "validation", "test"):
        for record in content[section]:
            where.setdefault(Path(record["image"]).parent.name, set()).add(section)
    assert all(len(s) == 1 for n, s in where.items() if n != "more")  # both views of a patient in one split
    assert where["more"] == {"training"}  # image-only scans stay in training
    assert summary.sections["validation"] >= 2 and summary.sections["test"] >= 2
    assert content["training"][0]["report"] == "FINDINGS: Clear."


def test_split_column_and_cli(tmp_path: Path) -> None:
    root = tmp_path / "cxr"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), np.uint8)).save(root / name)
    table = _csv(tmp_path / "m.csv", [{"path": n, "report": "Normal.", "split": s}
                                       for n, s in (("a.png", "train"), ("b.png", "val"), ("c.png", "unseen"))])  # fmt: skip
    out = tmp_path / "d.json"
    done = subprocess.run(
        [sys.executable, "-m", "common.data.build", "folder", "--root", str(root), "--out", str(out), "--dims", "2",
         "--csv", str(table)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 unknown split" in done.stdout and "m.csv, line 4: 'unseen'" in done.stdout
    content = json.loads(out.read_text())
    assert [len(content[s]) for s in ("training", "validation", "test")] == [1, 1, 0]  # c skipped, not image-only


def test_cli_boolean_knobs_are_read_as_flags(volumes: Path, tmp_path: Path) -> None:
    from common.data.build import BUILDERS, _command

    seen = {}

    def builder(root: str, out: str, open_images: bool = False, quiet: bool = False) -> None:
        seen.update(open_images=open_images, quiet=quiet)

    _command(builder)("r", "o", open_images="false", quiet="1")  # as fire passes --open_images false --quiet 1
    assert seen == {"open_images": False, "quiet": True}
    with pytest.raises(ValueError, match="knob 'quiet'"):
        _command(BUILDERS["folder"])(str(volumes), str(tmp_path / "d.json"), quiet="maybe")


def test_open_images_reads_every_image(tmp_path: Path, write_nifti) -> None:
    root = tmp_path / "scans"
    root.mkdir()
    write_nifti(root / "ok.nii.gz", np.random.default_rng(0).normal(-500, 300, size=(20, 20, 20)).astype(np.float32))
    write_nifti(root / "flat.nii.gz", np.zeros((20, 20, 20), np.float32))  # constant: probably not a CT in HU
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    summary = build_folder(root, tmp_path / "d.json", open_images=True, val_fraction=0.0, test_fraction=0.0, quiet=True)
    assert summary.written == 2 and summary.skipped == {"record failed validation": 1}
    assert "broken.nii.gz" in summary.examples["record failed validation"][0]
    assert summary.notes["validator warning(s), record kept"] >= 1
    assert any("flat.nii.gz" in e for e in summary.examples["validator warning(s), record kept"])
