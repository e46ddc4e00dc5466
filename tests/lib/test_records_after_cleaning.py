"""Reports and labels checked after cleaning, and datalist-level problems: each is named (file, record, datalist),
never trained on silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.contract import DataContractError, load_datalist
from common.data.findings import FINDING_KEYS
from common.data.radiograph_findings import CXR_KEYS
from common.data.readers import read_volume
from common.data.validate import finding_vocabulary, validate_datalist
from common.transforms.labels import LabelVectord
from common.transforms.text import CleanReportd, EnsureReportd, report_has_words

EMPTY_ONCE_CLEANED = ["...", "FINDINGS:", "Impression: -", "FINDINGS:\nIMPRESSION:", "XXXX", " ,; ", "()", "Findings"]
REAL_REPORTS = ["No acute findings.", "Normal", "5 mm nodule", "Findings: normal", "IMPRESSION: NO ACUTE DISEASE"]


@pytest.mark.parametrize("report", EMPTY_ONCE_CLEANED)
def test_report_without_words_is_a_named_problem_not_an_empty_pair(report: str) -> None:
    ensure_then_clean = [EnsureReportd(), CleanReportd()]
    record = {"image": "/data/case_7.nii.gz", "report": report}
    with pytest.raises(DataContractError, match="has no words once cleaned") as caught:
        for transform in ensure_then_clean:
            record = transform(record)
    assert caught.value.source == "/data/case_7.nii.gz"


@pytest.mark.parametrize("report", EMPTY_ONCE_CLEANED)
def test_report_without_words_can_become_image_only(report: str) -> None:
    record = CleanReportd(empty="image_only")(EnsureReportd()({"image": "a.nii.gz", "report": report}))
    assert record["report"] == "" and record["has_report"] is False


@pytest.mark.parametrize("report", REAL_REPORTS)
def test_reports_with_words_stay_paired(report: str) -> None:
    record = CleanReportd()(EnsureReportd()({"image": "a.nii.gz", "report": report}))
    assert record["has_report"] is True and report_has_words(record["report"])


def test_image_only_marker_passes_cleaning() -> None:
    record = CleanReportd()(EnsureReportd()({"image": "a.nii.gz"}))
    assert record["report"] == "" and record["has_report"] is False


def test_label_transform_names_unknown_and_misspelt_keys_by_file() -> None:
    from monai.data import MetaTensor

    image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "/data/case_9.nii.gz"})
    record = {"image": image, "labels": {"cardiomegally": 1, "pleural_effusion": 0, "made_up": 1}}
    with pytest.raises(DataContractError) as caught:
        LabelVectord()(record)
    assert caught.value.source == "/data/case_9.nii.gz"
    assert "'cardiomegally' (did you mean 'cardiomegaly'?)" in caught.value.problem
    assert "'made_up'" in caught.value.problem and "tensor" not in str(caught.value)  # no tensor dump
    vector = LabelVectord(unknown_keys="ignore")(record)["labels_vector"]
    assert vector[FINDING_KEYS.index("pleural_effusion")] == 0 and torch.isnan(vector).sum() == len(FINDING_KEYS) - 1


def test_null_labels_and_values_are_unknown() -> None:
    assert torch.isnan(LabelVectord()({"image": "a", "labels": None})["labels_vector"]).all()
    vector = LabelVectord()({"image": "a", "labels": {"cardiomegaly": None, "atelectasis": 1}})["labels_vector"]
    assert torch.isnan(vector[FINDING_KEYS.index("cardiomegaly")]) and vector[FINDING_KEYS.index("atelectasis")] == 1


def _write(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def volume(tmp_path: Path, write_nifti) -> Path:
    return write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))


def test_validator_names_empty_reports_and_unknown_labels(tmp_path: Path, volume: Path, write_nifti) -> None:
    other = write_nifti(tmp_path / "w.nii.gz", np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32))
    records = [{"image": volume.name, "report": "FINDINGS:"}, {"image": other.name, "labels": {"cardiomegally": 1}}]
    path = _write(tmp_path, {"training": records})
    problems = validate_datalist(path, findings="colipri_ct")
    assert [(p.index, p.source) for p in problems] == [(0, str(volume)), (1, str(other))]
    assert "no words once cleaned" in problems[0].problem and "did you mean 'cardiomegaly'" in problems[1].problem
    assert len(validate_datalist(path)) == 1  # without a vocabulary only the report is a problem
    assert len(validate_datalist(path, findings=["cardiomegally"])) == 1


def test_finding_vocabulary_from_a_bundle_or_keys() -> None:
    assert finding_vocabulary("colipri_ct") == list(FINDING_KEYS)
    assert finding_vocabulary("raddino_cxr") == list(CXR_KEYS)
    assert finding_vocabulary("a, b") == ["a", "b"] and finding_vocabulary(None) is None


def test_empty_training_section_is_named_by_validator_and_training(tmp_path: Path, volume: Path) -> None:
    path = _write(tmp_path, {"training": [], "test": [{"image": volume.name}]})
    problems = validate_datalist(path)
    assert [(p.section, p.source) for p in problems] == [("training", str(path))]
    assert "'training' section is empty" in problems[0].problem
    with pytest.raises(DataContractError, match="'training' section is empty") as caught:
        load_datalist(path, "training")
    assert caught.value.source == str(path)
    missing = _write(tmp_path, {"test": [{"image": volume.name}]})
    with pytest.raises(DataContractError, match="'training' section is missing"):
        load_datalist(missing, "training")
    assert len(load_datalist(missing, "test")) == 1


def test_same_file_twice_in_one_split_through_any_path(tmp_path: Path, volume: Path) -> None:
    (tmp_path / "link.nii.gz").symlink_to(volume)
    (tmp_path / "sub").mkdir()
    records = [
        {"image": volume.name},
        {"image": str(volume)},  # absolute
        {"image": "sub/../v.nii.gz"},  # another relative spelling
        {"image": "link.nii.gz"},  # a symlink
    ]
    problems = validate_datalist(_write(tmp_path, {"training": records}), open_images=False)
    assert [p.index for p in problems] == [1, 2, 3]
    assert all("same image as training[0]: a duplicate in one split" in p.problem for p in problems)


def test_symlink_loop_is_reported_as_a_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(DataContractError, match="symbolic link loop") as caught:
        read_volume(a)
    assert caught.value.source == str(a)
    problems = validate_datalist(_write(tmp_path, {"training": [{"image": "a.nii.gz"}]}))
    assert ["symbolic link loop" in p.problem for p in problems] == [True]
    dangling = tmp_path / "dangling.nii.gz"
    os.symlink(tmp_path / "nowhere.nii.gz", dangling)
    with pytest.raises(DataContractError, match="symbolic link to a missing target"):
        read_volume(dangling)
