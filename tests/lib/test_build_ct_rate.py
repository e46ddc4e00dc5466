"""``python -m common.data.build ct_rate`` on a miniature CT-RATE written here in the published layout, awkward cases
included (two reconstructions, missing report, empty impression, a report row without a volume, a bad label value,
a header contradicting its metadata, an unfixed volume, a patient in both source splits, a corrupt volume)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError, load_datalist
from common.data.findings import FINDING_KEYS, FINDING_NAMES
from common.data.sources.ct_rate import build_ct_rate
from common.data.validate import validate_datalist
from common.transforms.text import extract_sections

REPO = Path(__file__).resolve().parents[2]
SPACING = (0.75, 0.75, 1.5)
FINDINGS_TEXT = "Trachea and both main bronchi are open. No pleural effusion. Heart size is normal."
IMPRESSION_TEXT = "Emphysema. Atelectasis in the left lower lobe."


def _csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def _volume(root: Path, write_nifti, name: str, spacing=SPACING) -> Path:
    split, patient, scan, _ = name.split("_")
    folder = "train_fixed" if split == "train" else "valid_fixed"
    path = root / folder / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / f"{name}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, np.full((4, 5, 6), -1000, np.int16), np.diag([*spacing, 1.0]))


def _labels(positive: tuple[str, ...] = ()) -> dict[str, str]:
    return {name: "1" if name in positive else "0" for name in FINDING_NAMES}


def make_ct_rate(root: Path, write_nifti) -> Path:
    """A miniature CT-RATE (see the module docstring for what each patient exercises)."""
    names = [
        "train_1_a_1", "train_1_a_2",  # two reconstructions of one scan
        "train_2_a_1",  # empty impression
        "train_3_a_1",  # no report row: image-only
        "train_4_a_1",  # label value 2
        "train_6_a_1", "train_6_b_1",  # two scans of one patient ...
        "valid_1_a_1",
    ]  # fmt: skip
    for name in names:
        _volume(root, write_nifti, name)
    _volume(root, write_nifti, "train_5_a_1", spacing=(1.0, 1.0, 1.0))  # unfixed header: unit spacing
    _volume(root, write_nifti, "train_7_a_1", spacing=(0.8, 0.8, 1.5))  # contradicts its metadata row
    # ... and a third scan of patient train_6 that the release put under valid_fixed: a patient in two splits
    path = root / "valid_fixed" / "train_6" / "train_6_c" / "train_6_c_1.nii.gz"
    path.parent.mkdir(parents=True)
    write_nifti(path, np.zeros((4, 5, 6), np.int16), np.diag([*SPACING, 1.0]))
    (root / "train_fixed" / "notes.nii.gz").write_bytes(b"not a CT-RATE volume name")
    report_columns = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]

    def report(name: str, findings: str = FINDINGS_TEXT, impression: str = IMPRESSION_TEXT) -> dict:
        return {"VolumeName": f"{name}.nii.gz", "ClinicalInformation_EN": "Cough.", "Technique_EN": "Non-contrast.",
                "Findings_EN": findings, "Impressions_EN": impression}  # fmt: skip

    train_reports = [report(n) for n in ("train_1_a_1", "train_1_a_2", "train_4_a_1", "train_5_a_1", "train_6_a_1")]
    train_reports += [report("train_2_a_1", impression=""), report("train_6_b_1"), report("train_7_a_1")]
    train_reports.append(report("train_99_a_1"))  # a report row without a volume
    _csv(root / "radiology_text_reports" / "train_reports.csv", report_columns, train_reports)
    _csv(root / "radiology_text_reports" / "validation_reports.csv", report_columns,
         [report("valid_1_a_1"), report("train_6_c_1")])  # fmt: skip
    label_columns = ["VolumeName", *FINDING_NAMES]
    label_rows = [
        {"VolumeName": f"{n}.nii.gz", **_labels(("Emphysema", "Atelectasis"))} for n in names if n != "train_4_a_1"
    ]
    label_rows.append({"VolumeName": "train_4_a_1.nii.gz", **_labels(), "Emphysema": "2"})
    _csv(root / "multi_abnormality_labels" / "train_predicted_labels.csv", label_columns,
         [r for r in label_rows if r["VolumeName"].startswith("train")])  # fmt: skip
    _csv(root / "multi_abnormality_labels" / "valid_predicted_labels.csv", label_columns,
         [r for r in label_rows if r["VolumeName"].startswith("valid")])  # fmt: skip
    meta_columns = ["VolumeName", "Manufacturer", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"]
    meta_rows = [
        {"VolumeName": f"{n}.nii.gz", "Manufacturer": "X", "XYSpacing": "[0.75, 0.75]", "ZSpacing": "1.5",
         "RescaleSlope": "1", "RescaleIntercept": "-1024"}
        for n in [*names, "train_5_a_1", "train_7_a_1", "train_6_c_1"]
    ]  # fmt: skip
    _csv(
        root / "metadata" / "train_metadata.csv", meta_columns, [r for r in meta_rows if "valid" not in r["VolumeName"]]
    )
    _csv(
        root / "metadata" / "validation_metadata.csv",
        meta_columns,
        [r for r in meta_rows if "valid" in r["VolumeName"]],
    )
    return root


@pytest.fixture
def ct_rate(tmp_path: Path, write_nifti) -> Path:
    return make_ct_rate(tmp_path / "CT-RATE" / "dataset", write_nifti)


def _names(datalist: Path) -> dict[str, list[str]]:
    content = json.loads(datalist.read_text())
    return {s: sorted(r["meta"]["volume_name"] for r in content[s]) for s in ("training", "validation", "test")}


def test_records_splits_and_counts(ct_rate: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "datalist.json"
    summary = build_ct_rate(ct_rate, out, val_fraction=0.0)
    names = _names(out)
    # one reconstruction per scan; train_6's three scans all in test (its third sits under valid_fixed)
    assert names["training"] == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]
    assert names["test"] == ["train_6_a_1", "train_6_b_1", "train_6_c_1", "valid_1_a_1"]
    assert summary.sections == {"training": 3, "validation": 0, "test": 4}
    assert summary.skipped == {
        "volume file name not <split>_<patient>_<scan>_<reconstruction>.nii.gz": 1,
        "volume header unreadable or contradicting its metadata": 2,
        "label row with a value other than 0/1": 1,
    }
    assert summary.notes["extra reconstruction(s) of a scan left out (reconstructions=all keeps them)"] == 1
    assert summary.notes["patient(s) in more than one split of the source, moved whole to test"] == 1
    assert summary.notes["report(s) with an empty impression (findings only)"] == 1
    assert summary.notes["volume(s) without a report: image-only record(s)"] == 1
    assert summary.notes["report row(s) without a volume on disk (row unused)"] == 1
    assert (
        "train_reports.csv, line 10: train_99_a_1"
        in summary.examples["report row(s) without a volume on disk (row unused)"][0]
    )
    printed = capsys.readouterr().out
    assert "wrote 7 record(s)" in printed and "skipped 4 record(s)" in printed
    assert "train_predicted_labels.csv, line 8" in printed  # the bad label row, named by file and line
    assert "emphysema: 5 / 0 / 2" in printed  # 5 paired records with labels, 2 without
    assert validate_datalist(out, dims=3) == []


def test_record_content(ct_rate: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    build_ct_rate(ct_rate, out, val_fraction=0.0, quiet=True)
    records = {r["meta"]["volume_name"]: r for r in load_datalist(out, "training") + load_datalist(out, "test")}
    paired = records["train_1_a_1"]
    assert Path(paired["image"]).is_file() and not json.loads(out.read_text())["training"][0]["image"].startswith("/")
    sections = extract_sections(paired["report"])
    assert sections["findings"] == FINDINGS_TEXT
    assert sections["impression"] == IMPRESSION_TEXT
    assert sections["other"].startswith("Cough.")
    assert list(paired["labels"]) == list(FINDING_KEYS)
    assert paired["labels"]["emphysema"] == 1 and paired["labels"]["cardiomegaly"] == 0
    assert paired["meta"]["spacing"] == [0.75, 0.75, 1.5] and paired["meta"]["RescaleIntercept"] == -1024.0
    assert paired["meta"]["patient_id"] == "train_1" and paired["meta"]["reconstruction"] == 1
    assert extract_sections(records["train_2_a_1"]["report"])["impression"] == ""
    image_only = records["train_3_a_1"]
    assert "report" not in image_only and "labels" not in image_only and image_only["meta"]["labels"]["emphysema"] == 1


def test_all_reconstructions_and_fallback(ct_rate: Path, tmp_path: Path) -> None:
    build_ct_rate(ct_rate, tmp_path / "all.json", reconstructions="all", val_fraction=0.0, quiet=True)
    assert "train_1_a_2" in _names(tmp_path / "all.json")["training"]
    # a corrupt first reconstruction: the scan keeps its second one
    (ct_rate / "train_fixed" / "train_1" / "train_1_a" / "train_1_a_1.nii.gz").write_bytes(b"\x1f\x8b broken")
    summary = build_ct_rate(ct_rate, tmp_path / "first.json", val_fraction=0.0, quiet=True)
    assert "train_1_a_2" in _names(tmp_path / "first.json")["training"]
    assert "cannot read the header" in " ".join(
        summary.examples["volume header unreadable or contradicting its metadata"]
    )


def test_patient_level_validation_split(ct_rate: Path, tmp_path: Path, write_nifti) -> None:
    for patient in range(10, 40):
        for scan in "ab":
            _volume(ct_rate, write_nifti, f"train_{patient}_{scan}_1")
    out = tmp_path / "datalist.json"
    build_ct_rate(ct_rate, out, val_fraction=0.3, seed=1, quiet=True)
    sections = {}
    for section, names in _names(out).items():
        for name in names:
            sections.setdefault(name.rsplit("_", 2)[0], set()).add(section)
    assert all(len(s) == 1 for s in sections.values())  # every patient in one split
    assert 3 <= sum(s == {"validation"} for s in sections.values()) <= 18
    order = [r["meta"]["volume_name"] for r in json.loads(out.read_text())["training"]]
    assert order.index("train_2_a_1") < order.index("train_10_a_1")  # CT-RATE's numeric order, not the string's
    assert _names(out) == (build_ct_rate(ct_rate, out, val_fraction=0.3, seed=1, quiet=True) and _names(out))


def test_on_bad_raise_names_file_and_row(ct_rate: Path, tmp_path: Path) -> None:
    (ct_rate / "train_fixed" / "notes.nii.gz").unlink()
    with pytest.raises(DataContractError, match=r"train_predicted_labels\.csv, line 8: label row .*'Emphysema'.*'2'"):
        build_ct_rate(ct_rate, tmp_path / "d.json", on_bad="raise", check_headers=False, quiet=True)


def test_unknown_label_column_is_an_error(ct_rate: Path, tmp_path: Path) -> None:
    path = ct_rate / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    _csv(path, ["VolumeName", "Emphysema", "Pneumothorax"], [{"VolumeName": "valid_1_a_1.nii.gz"}])
    with pytest.raises(
        DataContractError, match=r"valid_predicted_labels\.csv.*unknown label column\(s\) \['Pneumothorax'\]"
    ):
        build_ct_rate(ct_rate, tmp_path / "d.json", quiet=True)


def test_missing_layout_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="no volume folder: expected train_fixed and/or valid_fixed"):
        build_ct_rate(tmp_path, tmp_path / "d.json", quiet=True)


def test_cli(ct_rate: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    done = subprocess.run(
        [sys.executable, "-m", "common.data.build", "ct_rate", "--root", str(ct_rate), "--out", str(out),
         "--val_fraction", "0"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ct_rate: wrote 7 record(s)" in done.stdout and "skipped 4 record(s)" in done.stdout
    assert "ct_rate: volumes" in done.stderr  # the progress bar
    assert _names(out)["training"] == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]


def test_two_rows_for_one_volume_skip_it_once(ct_rate: Path, tmp_path: Path) -> None:
    path = ct_rate / "radiology_text_reports" / "validation_reports.csv"
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(["valid_1_a_1.nii.gz", "", "", "Other findings.", "Other impression."])
    summary = build_ct_rate(ct_rate, tmp_path / "d.json", val_fraction=0.0, quiet=True)
    assert summary.skipped["two report rows for the volume"] == 1
    assert summary.notes["unusable row(s): second report row for one volume"] == 1
    assert "valid_1_a_1" not in _names(tmp_path / "d.json")["test"]
    (ct_rate / "train_fixed" / "notes.nii.gz").unlink()
    with pytest.raises(DataContractError, match=r"validation_reports\.csv, line 4: second report row"):
        build_ct_rate(ct_rate, tmp_path / "d.json", check_headers=False, on_bad="raise", quiet=True)


def test_fixed_splits_csv(ct_rate: Path, tmp_path: Path) -> None:
    _csv(tmp_path / "splits.csv", ["VolumeName", "split"], [
        {"VolumeName": "train_1_a_1.nii.gz", "split": "val"},
        {"VolumeName": "train_2_a_1.nii.gz", "split": "holdout"},  # unknown: the row is unusable, the default rule
        {"VolumeName": "train_3_a_1.nii.gz", "split": "train"},  # pinned to training whatever val_fraction says
    ])  # fmt: skip
    out = tmp_path / "d.json"
    summary = build_ct_rate(ct_rate, out, splits=str(tmp_path / "splits.csv"), val_fraction=0.99, quiet=True)
    names = _names(out)
    assert names["validation"] == ["train_1_a_1", "train_2_a_1"] and names["training"] == ["train_3_a_1"]
    assert summary.notes["unusable row(s): unknown split"] == 1
