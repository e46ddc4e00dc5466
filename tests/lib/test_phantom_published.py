"""The embedded phantoms written as a miniature CT-RATE and a miniature MIMIC-CXR-JPG and read back by the builders
(common.data.phantom_published): the same records as the phantom datalists, section by section and in order."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose
from PIL import Image

from common.data.contract import DataContractError, load_datalist
from common.data.phantom import generate_dataset
from common.data.phantom_published import DATASET_VERSION, EXTRA_LABELS, write_published_phantoms
from common.data.sources.ct_rate import VOLUME_NAME
from common.data.sources.mimic_cxr_layout import to_8bit_jpeg, write_mimic_cxr_layout
from common.data.validate import validate_datalist
from common.transforms.text import EnsureReportd
from common.transforms.xray import xray_preprocessing

SIZES = {"num_train": 3, "num_image_only": 2, "num_val": 1, "num_test": 2}
SECTIONS = ("training", "validation", "test")


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    """(the phantom datalists' folder, the published layouts' folder) of the same cases."""
    native, published = tmp_path_factory.mktemp("native"), tmp_path_factory.mktemp("published")
    generate_dataset(native, **SIZES, seed=4, image_size_2d=96)
    write_published_phantoms(published, **SIZES, seed=4, image_size_2d=96)
    return native, published


def test_layouts_are_the_published_ones(both) -> None:
    _, published = both
    volumes = sorted(p.name for p in (published / "ct_rate").rglob("*.nii.gz") if "masks" not in p.parts)
    assert len(volumes) == sum(SIZES.values()) and all(VOLUME_NAME.match(name) for name in volumes)
    for folder in ("radiology_text_reports", "multi_abnormality_labels", "metadata"):
        assert list((published / "ct_rate" / folder).glob("*.csv"))
    images = sorted((published / "mimic_cxr" / "files").rglob("*.jpg"))
    pattern = r"files/p\d\d/p(\d{8})/s(\d{8})/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.jpg"
    assert len(images) == sum(SIZES.values())
    assert all(re.fullmatch(pattern, p.relative_to(published / "mimic_cxr").as_posix()) for p in images)
    reports = list((published / "mimic_cxr" / "files").rglob("s*.txt"))
    assert len(reports) == sum(SIZES.values()) - SIZES["num_image_only"]
    for name in ("metadata", "chexpert", "split"):
        assert (published / "mimic_cxr" / f"mimic-cxr-2.0.0-{name}.csv").is_file()
    manifest = json.loads((published / "phantoms.json").read_text())
    assert manifest["dataset"] == DATASET_VERSION == "phantoms-v2.1" and manifest["generator"] == "phantoms-v2"
    assert not (published / ".phantoms").exists()  # the generated files were moved, not copied
    for dims in (3, 2):
        assert validate_datalist(published / f"datalist_{dims}d.json", dims=dims) == []


@pytest.mark.parametrize("dims", [3, 2])
def test_same_records_reports_labels_and_masks(both, dims: int) -> None:
    native, published = both
    for section in SECTIONS:
        before = load_datalist(native / f"datalist_{dims}d.json", section)
        after = load_datalist(published / f"datalist_{dims}d.json", section)
        assert len(after) == len(before) == {"training": 5, "validation": 1, "test": 2}[section]
        for old, new in zip(before, after):
            assert new.get("report") == old.get("report")
            assert list(new.get("labels", {}).items()) == list(old.get("labels", {}).items())  # values and order
            if "report" not in old:  # image-only: no report, labels out of sight in meta, has_report False
                assert not {"report", "labels", "mask"} & set(new) and new["meta"]["labels"] == old["meta"]["labels"]
                assert EnsureReportd()(new)["has_report"] is False
            else:
                assert _sha(new["mask"]) == _sha(old["mask"])  # lesion maps byte for byte
            if dims == 3:  # volumes byte for byte (moved)
                assert _sha(new["image"]) == _sha(old["image"])


def test_radiographs_are_8_bit_jpeg_equal_up_to_quantisation(both) -> None:
    native, published = both
    pairs = [
        (old["image"], new["image"])
        for section in SECTIONS
        for old, new in zip(
            load_datalist(native / "datalist_2d.json", section), load_datalist(published / "datalist_2d.json", section)
        )
    ]
    preprocess = Compose(xray_preprocessing(keys=["image"], spatial_size=64, mean=None, std=None))
    for png, jpeg in pairs:
        with Image.open(jpeg) as image:
            assert image.format == "JPEG" and image.mode == "L"
            stored = np.asarray(image).astype(float)
        with Image.open(png) as image:
            reference = np.asarray(image).astype(float) / 257.0
        error = np.abs(stored - reference)
        assert error.mean() < 1.0 and error.max() <= 12  # quality 95: about a grey level on average
        # the readers and the min-max scaling treat both alike: no second normalisation of the 8-bit data
        old, new = (preprocess({"image": p})["image"].numpy() for p in (png, jpeg))
        assert np.abs(new - old).mean() < 0.01 and np.abs(new - old).max() < 0.06


def test_cases_map_each_phantom_to_its_files(both) -> None:
    native, published = both
    cases = json.loads((published / "cases.json").read_text())
    assert len(cases) == sum(SIZES.values())
    first_test = json.loads((native / "datalist_3d.json").read_text())["test"][0]
    entry = cases[first_test["meta"]["case_id"]]
    assert entry["meta"]["ct"]["study"] == first_test["meta"]["study"] and entry["ct_volume"] == "valid_1_a_1"
    assert entry["cxr_dicom_id"] == load_datalist(published / "datalist_2d.json", "test")[0]["meta"]["dicom_id"]
    assert entry["meta"]["cxr"]["ct_labels"] == first_test["labels"]


def test_8_bit_conversion_and_refusals(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    decoded = np.asarray(Image.open(io.BytesIO(to_8bit_jpeg(tmp_path / "ramp.png")))).astype(float)
    assert np.abs(decoded - np.rint(ramp / 257.0)).max() <= 3
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataContractError, match="colour.png.*grey radiograph"):
        to_8bit_jpeg(tmp_path / "colour.png")
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"training": [{"image": "ramp.png", "report": "x", "labels": {"nodule": 1}}]}))
    with pytest.raises(DataContractError, match=r"\['nodule'\] are not CheXpert labels"):
        write_mimic_cxr_layout(datalist, tmp_path / "mimic")
    assert "Emphysema" in EXTRA_LABELS
