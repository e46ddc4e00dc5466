"""Finding sets chosen by name (``--finding_set``): named sets, comma-separated names, and the user's YAML/JSON file
with its own prompt pairs; malformed files are named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.contract import DataContractError
from common.data.finding_sets import finding_set
from common.data.findings import FINDING_KEYS
from common.data.radiograph_findings import CXR_KEYS
from common.transforms.text import build_prompts


def test_named_sets() -> None:
    assert [f.key for f in finding_set("ct_rate", dims=2)] == list(FINDING_KEYS)
    assert [f.key for f in finding_set("phantom", dims=3)] == list(FINDING_KEYS)
    assert [f.key for f in finding_set("phantom", dims=2)] == list(CXR_KEYS)
    prompts = build_prompts(finding_set("Pleural effusion, Rib fracture"))
    assert prompts.keys == ("pleural_effusion", "rib_fracture")
    with pytest.raises(ValueError, match="finding_set is empty"):
        finding_set(" ")


def test_user_file_with_prompts(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([
        {"name": "Pneumothorax", "positive": ["Pneumothorax is seen."], "negative": ["No pneumothorax is seen."]},
        "Cardiomegaly",
    ]))  # fmt: skip
    prompts = build_prompts(finding_set(str(path)))
    assert prompts.keys == ("pneumothorax", "cardiomegaly")
    assert "Pneumothorax is seen." in prompts.positive[0] + tuple(p for row in prompts.positive for p in row)
    index = list(build_prompts(finding_set(str(path)), templates=()).positive[0]).index("Pneumothorax is seen.")
    assert build_prompts(finding_set(str(path)), templates=()).negative[0][index] == "No pneumothorax is seen."


@pytest.mark.parametrize(
    "content,problem",
    [
        ("findings:\n  - name: A\n    positive: [a, b]\n    negative: [c]\n", r"\[finding 0\]: positive and negative"),
        ("findings: []\n", "non-empty list of findings"),
        ("- name: A\n  prompt: [a]\n", r"unknown field\(s\) \['prompt'\]"),
        ("- A\n- a\n", r"listed twice: \['a'\]"),
        ("findings: [", "cannot read the finding file"),
    ],
)
def test_malformed_files_are_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(DataContractError, match=rf"bad\.yaml.*{problem}"):
        finding_set(str(path))
    with pytest.raises(DataContractError, match="finding file does not exist"):
        finding_set(str(tmp_path / "missing.yml"))
