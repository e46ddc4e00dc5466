"""G2D records the report sections it was trained on: a model trained on impressions is refused by an evaluation
that reads findings + impressions (the sections change every report embedding, so retrieval and the prompts would
be measured against text the model never saw)."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from common.engines.preprocessing_record import preprocessing_differences

REPO = Path(__file__).resolve().parents[2]


def _record(bundle: str, *names: str) -> dict:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / f"{name}.yaml") for name in names])
    return parser.get_parsed_content("preprocessing_record")


@pytest.mark.parametrize("bundle", ["g2d_cxr", "g2d_ct"])
def test_record_names_the_report_sections(bundle: str) -> None:
    paper = _record(bundle, "train")
    assert paper["text"]["report_sections"] == ["findings", "impression"]
    if bundle == "g2d_ct":  # its demo reads the impression only
        demo = _record(bundle, "train", "demo")
        assert demo["text"]["report_sections"] == ["impression"]
        assert any(d.startswith("text.report_sections") for d in preprocessing_differences(demo, paper))
