"""``python -m common.data.build mimic_cxr`` on a miniature MIMIC-CXR-JPG + MIMIC-CXR reports written here in the
published layout (gzipped and plain CSVs), with lateral views, uncertain and blank labels, a missing report, an empty
impression, a subject in two official splits, a missing image, a split row without metadata and a bad label value."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.contract import DataContractError
from common.data.sources.mimic_cxr import CHEXPERT_LABELS, build_mimic_cxr
from common.data.validate import validate_datalist
from common.transforms.text import extract_sections

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:
 
 There is a small left pleural effusion.  The heart size is normal.
 
 IMPRESSION:
 
 Small left pleural effusion.
"""
NO_IMPRESSION = "FINDINGS: Lungs are clear. No effusion."

# (subject, study, dicom, view, split): what each image exercises is in the module docstring
IMAGES = [
    ("10000032", "50414267", "d1", "PA", "train"),
    ("10000032", "50414267", "d2", "LATERAL", "train"),  # lateral: not selected by default
    ("10000032", "50414268", "d3", "AP", "train"),  # empty impression
    ("10000033", "50000001", "d4", "PA", "train"),  # no report file: image-only
    ("11000001", "60000001", "d5", "PA", "test"),  # subject 11000001 also has a train study ...
    ("11000001", "60000002", "d6", "PA", "train"),  # ... moved to test with it
    ("12000001", "70000001", "d7", "PA", "validate"),
    ("12000002", "70000002", "d8", "PA", "train"),  # image missing on disk
    ("12000003", "70000003", "d9", "PA", "train"),  # bad label value
]
NO_METADATA = ("12000004", "70000004", "d10", "PA", "train")


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_mimic(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for subject, study, dicom, view, _ in IMAGES + [NO_METADATA]:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        if dicom != "d8":
            Image.fromarray(rng.integers(0, 255, (24, 20), np.uint8)).save(folder / f"{dicom}.jpg")
        reports = root / "mimic-cxr-reports" / "files" / f"p{subject[:2]}" / f"p{subject}"
        reports.mkdir(parents=True, exist_ok=True)
        if dicom not in ("d2", "d4"):
            (reports / f"s{study}.txt").write_text(NO_IMPRESSION if dicom == "d3" else REPORT)
    _write_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
        [{"dicom_id": d, "study_id": st, "subject_id": su, "split": sp} for su, st, d, _, sp in IMAGES + [NO_METADATA]],
    )  # fmt: skip
    _write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows"],
        [{"dicom_id": d, "subject_id": su, "study_id": st, "ViewPosition": v, "Rows": 24} for su, st, d, v, _ in IMAGES],
    )  # fmt: skip
    rows = []
    for subject, study in dict.fromkeys((su, st) for su, st, *_ in IMAGES):
        row = {"subject_id": subject, "study_id": study, "Pleural Effusion": "1.0", "Cardiomegaly": "-1.0"}
        row["Edema"] = "2.0" if study == "70000003" else "0.0"
        rows.append(row)  # the other 11 labels blank
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], rows)
    return root


@pytest.fixture
def mimic(tmp_path: Path) -> Path:
    return make_mimic(tmp_path / "mimic-cxr-jpg")


def _by_dicom(out: Path) -> dict[str, tuple[str, dict]]:
    content = json.loads(out.read_text())
    return {r["meta"]["dicom_id"]: (s, r) for s in ("training", "validation", "test") for r in content[s]}


def test_records_and_counts(mimic: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "datalist.json"
    summary = build_mimic_cxr(mimic, out)
    records = _by_dicom(out)
    assert {d: s for d, (s, _) in records.items()} == {
        "d1": "training", "d3": "training", "d4": "training", "d5": "test", "d6": "test", "d7": "validation",
    }  # fmt: skip
    assert summary.skipped == {
        "image file missing": 1,
        "split row without a metadata row": 1,
        "image of a study whose label row is bad": 1,
    }
    assert summary.notes["unusable row(s): label row with a value other than 1/0/-1/blank"] == 1
    assert summary.notes["image(s) of a view not selected (PA, AP kept)"] == 1
    assert summary.notes["image(s) of a study without a report: image-only record(s)"] == 1
    assert summary.notes["patient(s) in more than one split of the source, moved whole to test"] == 1
    printed = capsys.readouterr().out
    assert "mimic-cxr-2.0.0-chexpert.csv, line 9: column 'Edema'" in printed
    assert "pleural_effusion: 5 / 0 / 1" in printed  # the image-only record's labels are not training labels
    assert validate_datalist(out, dims=2) == []


def test_labels_reports_and_policies(mimic: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    build_mimic_cxr(mimic, out, quiet=True)
    _, paired = _by_dicom(out)["d1"]
    assert paired["labels"]["pleural_effusion"] == 1 and "cardiomegaly" not in paired["labels"]  # uncertain: ignore
    assert paired["labels"]["pneumothorax"] == 0  # blank: zeros
    assert len(paired["labels"]) == 13 and paired["meta"]["view"] == "PA"
    sections = extract_sections(paired["report"])
    assert sections["impression"] == "Small left pleural effusion."
    assert "small left pleural effusion" in sections["findings"]
    assert extract_sections(_by_dicom(out)["d3"][1]["report"])["impression"] == ""
    image_only = _by_dicom(out)["d4"][1]
    assert "report" not in image_only and "labels" not in image_only
    build_mimic_cxr(mimic, out, uncertain="ones", blank="ignore", views=["PA", "AP", "LATERAL"], quiet=True)
    records = _by_dicom(out)
    assert records["d1"][1]["labels"] == {"cardiomegaly": 1, "edema": 0, "pleural_effusion": 1}
    assert "d2" in records
    build_mimic_cxr(mimic, out, views="lateral", quiet=True)  # one view, in any case, as typed on the command line
    assert set(_by_dicom(out)) == {"d2"}


def test_raise_names_the_row(mimic: Path, tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv, line 9: label row"):
        build_mimic_cxr(mimic, tmp_path / "d.json", on_bad="raise", quiet=True)


def test_unknown_label_column_and_missing_table(mimic: Path, tmp_path: Path) -> None:
    _write_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", "Nodule"], [])
    with pytest.raises(DataContractError, match=r"chexpert\.csv: unknown label column\(s\) \['Nodule'\]"):
        build_mimic_cxr(mimic, tmp_path / "d.json", quiet=True)
    (mimic / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataContractError, match="no mimic-cxr-2.0.0-split.csv or mimic-cxr-2.0.0-split.csv.gz"):
        build_mimic_cxr(mimic, tmp_path / "d.json", quiet=True)


def test_extra_label_columns_and_side_folder_of_masks(mimic: Path, tmp_path: Path) -> None:
    """``extra_labels`` admits columns beyond the 14 (MIMIC-CXR-LT names); ``masks`` gives paired images a mask."""
    rows = [{"subject_id": "10000032", "study_id": "50414267", "Emphysema": "1.0", "Pleural Effusion": "0.0"}]
    _write_csv(
        mimic / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", "Pleural Effusion", "Emphysema"], rows
    )
    masks = tmp_path / "masks" / "nested"
    masks.mkdir(parents=True)
    for name in ("d1.png", "d4.png", "unknown.png"):  # d4 is image-only: its mask stays out of the datalist
        Image.fromarray(np.zeros((24, 20), np.uint8)).save(masks / name)
    out = tmp_path / "datalist.json"
    with pytest.raises(DataContractError, match=r"unknown label column\(s\) \['Emphysema'\]"):
        build_mimic_cxr(mimic, out, quiet=True)
    summary = build_mimic_cxr(mimic, out, extra_labels=["Emphysema"], masks=str(tmp_path / "masks"), quiet=True)
    records = _by_dicom(out)
    assert records["d1"][1]["labels"] == {"pleural_effusion": 0, "emphysema": 1}
    assert Path(out.parent / records["d1"][1]["mask"]).resolve() == (masks / "d1.png").resolve()
    assert "mask" not in records["d4"][1] and "mask" not in records["d3"][1]
    assert summary.notes["mask file(s) without an image (unused)"] == 1
    with pytest.raises(DataContractError, match="mask folder does not exist"):
        build_mimic_cxr(mimic, out, extra_labels=["Emphysema"], masks=str(tmp_path / "nowhere"), quiet=True)
