"""scripts/retrieval_ceiling.py: the R@5 that an image side with given per-finding AUROCs can support."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.findings import FINDINGS


@pytest.fixture(scope="module")
def ceiling(script_module):
    return script_module("retrieval_ceiling")


def _labels(n: int = 120, k: int = 18, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, k)) < 0.25).astype(float)


def test_no_evidence_is_chance_and_more_evidence_retrieves_more(ceiling):
    labels = _labels()
    chance = ceiling.expected_recall(labels, [0.51] * 18, k=5, draws=100)  # at 0.5 every score ties: rank N
    assert chance["image_to_text"]["mean"] == pytest.approx(5 / 120, abs=0.02)
    means = [
        ceiling.expected_recall(labels, [a] * 18, k=5, draws=50)["image_to_text"]["mean"] for a in (0.6, 0.8, 0.99)
    ]
    assert means[0] < means[1] < means[2]
    distinct = len({tuple(row) for row in labels}) / len(labels)  # near-certain evidence: limited by shared label sets
    assert means[2] > 0.5 and means[2] <= min(1.0, 5 * distinct) + 1e-9


def test_run_reads_an_evaluation_and_writes_json_and_plot(ceiling, tmp_path: Path, capsys):
    labels = _labels(40)
    records = [
        {"image": f"/x/{i}.nii.gz", "report": "r", "labels": {f.key: int(labels[i, j]) for j, f in enumerate(FINDINGS)}}
        for i in range(40)
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": records[:1], "test": records}))
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    per_label = {f.name: {"auroc": 0.9} for f in FINDINGS}
    (evaluation / "results.json").write_text(json.dumps({"results": {"zero_shot": {"per_label": per_label}}}))
    result = ceiling.run(
        str(tmp_path / "datalist.json"),
        dims=3,
        evaluations={"run": str(evaluation)},
        levels=(0.9,),
        draws=20,
        out_dir=str(tmp_path / "out"),
    )
    assert result["evaluations"]["run (zero_shot)"]["image_to_text"] == result["levels"]["0.90"]["image_to_text"]
    assert (tmp_path / "out" / "retrieval_ceiling.png").stat().st_size > 0
    assert "| run (zero_shot), mean 0.900 |" in capsys.readouterr().out


def test_an_evaluation_without_usable_aurocs_is_a_named_error(ceiling, tmp_path: Path):
    labels = _labels(10)
    records = [
        {"image": f"/x/{i}.nii.gz", "labels": {f.key: int(labels[i, j]) for j, f in enumerate(FINDINGS)}}
        for i in range(10)
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": records[:1], "test": records}))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"results": {"retrieval": {}}}))
    with pytest.raises(ValueError, match="no zero_shot or linear_probe section"):
        ceiling.run(
            str(tmp_path / "datalist.json"),
            evaluations={"run": str(tmp_path / "eval")},
            levels=(),
            draws=2,
            out_dir=str(tmp_path / "out"),
        )
