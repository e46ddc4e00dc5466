"""``python -m common.data.build chexpert_plus`` on a miniature CheXpert Plus written here in the published layout
(report-section CSV, PNGs under names ending in .jpg, CheXpert's label CSV): laterals, empty sections, a missing
image, an unknown split and uncertain labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.contract import DataContractError
from common.data.sources.chexpert_plus import CSV_NAME, build_chexpert_plus
from common.data.sources.mimic_cxr import CHEXPERT_LABELS
from common.data.validate import validate_datalist
from common.transforms.text import extract_sections

COLUMNS = [
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "split",
]  # fmt: skip


def _row(patient: int, study: int, view: str, split: str = "train", **sections: str) -> dict:
    path = f"{split}/patient{patient:05d}/study{study}/view1_{view.lower()}.jpg"
    row = {c: "" for c in COLUMNS}
    row.update(path_to_image=path, frontal_lateral=view, deid_patient_id=f"pid{patient}", split=split)
    row.update(section_findings="Heart size is normal. Small right effusion.", section_impression="Right effusion.")
    row.update(section_clinical_history="Dyspnea.", report="FINDINGS: whole report text. IMPRESSION: Whole.")
    row.update(sections)
    return row


ROWS = [
    _row(1, 1, "Frontal"),
    _row(1, 1, "Lateral"),  # lateral: left out by default
    _row(2, 1, "Frontal", section_impression=""),  # findings only
    _row(3, 1, "Frontal", section_findings="", section_impression=""),  # the whole report cell is used
    _row(4, 1, "Frontal", section_findings="", section_impression="", report=""),  # no text: image-only
    _row(5, 1, "Frontal", split="valid"),  # official valid: test
    _row(6, 1, "Frontal"),  # image missing on disk
    _row(7, 1, "Frontal", split="holdout"),  # unknown split
]


def make_chexpert_plus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for row in ROWS:
        if "patient00006" in row["path_to_image"]:
            continue
        png = (root / "PNG" / row["path_to_image"]).with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8)).save(png)
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(ROWS)
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS])
        writer.writeheader()
        for row in ROWS:
            writer.writerow({"Path": "CheXpert-v1.0/" + row["path_to_image"], "Pleural Effusion": "1.0",
                             "Edema": "-1.0", "Pneumothorax": "0.0"})  # fmt: skip
    return root


@pytest.fixture
def chexpert_plus(tmp_path: Path) -> Path:
    return make_chexpert_plus(tmp_path / "chexpert_plus")


def test_records_reports_labels(chexpert_plus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "datalist.json"
    summary = build_chexpert_plus(chexpert_plus, out, labels_csv=str(chexpert_plus / "train.csv"), val_fraction=0.0)
    content = json.loads(out.read_text())
    by_patient = {r["meta"]["patient_id"]: (s, r) for s in ("training", "validation", "test") for r in content[s]}
    assert sorted(by_patient) == ["pid1", "pid2", "pid3", "pid4", "pid5"]
    assert by_patient["pid5"][0] == "test" and by_patient["pid1"][0] == "training"
    assert summary.skipped == {"image file missing": 1, "unknown split": 1}
    assert summary.notes["image(s) not frontal, left out (frontal_only=False keeps them)"] == 1
    record = by_patient["pid1"][1]
    sections = extract_sections(record["report"])
    assert sections["impression"] == "Right effusion." and sections["other"] == "Dyspnea."
    assert record["labels"] == {"pleural_effusion": 1, "pneumothorax": 0, **{
        k: 0 for k in ("atelectasis", "cardiomegaly", "consolidation", "enlarged_cardiomediastinum", "fracture",
                       "lung_lesion", "lung_opacity", "no_finding", "pleural_other", "pneumonia", "support_devices")
    }}  # fmt: skip
    assert extract_sections(by_patient["pid2"][1]["report"])["impression"] == ""
    assert by_patient["pid3"][1]["report"] == "FINDINGS: whole report text. IMPRESSION: Whole."
    assert "report" not in by_patient["pid4"][1]
    assert "holdout" in capsys.readouterr().out
    assert validate_datalist(out, dims=2) == []


def test_laterals_and_raise(chexpert_plus: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    summary = build_chexpert_plus(chexpert_plus, out, frontal_only=False, quiet=True)
    assert summary.written == 6 and summary.labels == {}
    with pytest.raises(DataContractError, match=rf"{CSV_NAME}, line 8: image file missing"):
        build_chexpert_plus(chexpert_plus, out, on_bad="raise", quiet=True)
