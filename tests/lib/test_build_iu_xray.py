"""``python -m common.data.build iu_xray`` on miniature IU X-ray trees written here in both published layouts: R2Gen's
``annotation.json`` + ``images/`` and the Indiana reports / projections CSVs (real report rows from
``shared/data/reports/iu_xray_reports.csv`` when present)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.contract import DataContractError
from common.data.sources.iu_xray import build_iu_xray
from common.data.validate import validate_datalist
from common.transforms.text import extract_sections


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), np.uint8)).save(path)


@pytest.fixture
def r2gen(tmp_path: Path) -> Path:
    root = tmp_path / "iu_xray"
    entries = {"train": [], "val": [], "test": []}
    for index, split in enumerate(["train", "train", "val", "test"]):
        study = f"CXR{index + 1}_IM-000{index}"
        entries[split].append({"id": study, "report": "The heart is normal. No effusion.",
                               "image_path": [f"{study}/0.png", f"{study}/1.png"], "split": split})  # fmt: skip
        _png(root / "images" / study / "0.png", index)
        _png(root / "images" / study / "1.png", index + 10)
    entries["train"][1]["report"] = ""  # an empty report: image-only
    (root / "images" / "CXR4_IM-0003" / "0.png").unlink()  # a missing image
    entries["train"].append({"id": "CXR9"})  # an entry without images
    (root / "annotation.json").write_text(json.dumps(entries))
    return root


def test_r2gen_layout(r2gen: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    summary = build_iu_xray(r2gen, out)
    assert summary.sections == {"training": 2, "validation": 1, "test": 0}
    assert summary.skipped == {"image file missing": 1, "entry without an id or image_path list": 1}
    assert summary.image_only == 1
    summary = build_iu_xray(r2gen, out, images="all", quiet=True)
    assert summary.sections == {"training": 4, "validation": 2, "test": 1}
    assert validate_datalist(out, dims=2) == []
    with pytest.raises(DataContractError, match=r"annotation\.json \[train\]\[2\]: entry without an id"):
        build_iu_xray(r2gen, out, on_bad="raise", quiet=True)


def _real_iu_rows(real_dir: Path | None, count: int) -> list[dict]:
    path = None if real_dir is None else real_dir / "reports" / "iu_xray_reports.csv"
    if path is not None and path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            return [row for row, _ in zip(csv.DictReader(handle), range(count))]
    return [{"uid": str(i + 1), "MeSH": "normal", "Problems": "normal", "image": "Xray Chest PA and Lateral",
             "indication": "Cough.", "comparison": "None.", "findings": "The heart is normal.",
             "impression": "No acute disease."} for i in range(count)]  # fmt: skip


def test_indiana_csv_layout(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    try:  # real report rows when shared/data is there, made-up ones in a fresh clone
        real_dir = request.getfixturevalue("real_data_dir")
    except pytest.skip.Exception:
        real_dir = None
    root = tmp_path / "indiana"
    root.mkdir()
    rows = _real_iu_rows(real_dir, 40)
    rows[1]["impression"] = ""
    rows[2]["findings"] = rows[2]["impression"] = ""
    columns = list(rows[0])
    with open(root / "indiana_reports.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    projections = []
    for index, row in enumerate(rows):
        for view in ("Frontal", "Lateral"):
            name = f"{row['uid']}_IM-{index}-{view}.dcm.png"
            projections.append({"uid": row["uid"], "filename": name, "projection": view})
            _png(root / "images" / "images_normalized" / name, index)
    projections.append({"uid": "999999", "filename": "x.png", "projection": "Frontal"})  # no report row
    with open(root / "indiana_projections.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["uid", "filename", "projection"])
        writer.writeheader()
        writer.writerows(projections)
    out = tmp_path / "datalist.json"
    summary = build_iu_xray(root, out)
    assert summary.written == 40 and summary.skipped == {"projection row without a report row": 1}
    assert summary.notes["image(s) not frontal, left out (frontal_only=False keeps them)"] == 40
    assert summary.image_only == sum(not r["findings"].strip() and not r["impression"].strip() for r in rows) >= 1
    assert summary.sections["test"] > 0 and summary.sections["validation"] > 0
    content = json.loads(out.read_text())
    records = {r["meta"]["study_id"]: r for s in ("training", "validation", "test") for r in content[s]}
    first = records[rows[0]["uid"]]
    if rows[0]["impression"]:
        assert extract_sections(first["report"])["impression"] == rows[0]["impression"].strip()
    assert first["meta"]["projection"] == "Frontal"
    assert validate_datalist(out, dims=2) == []


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="neither annotation.json"):
        build_iu_xray(tmp_path, tmp_path / "d.json", quiet=True)
