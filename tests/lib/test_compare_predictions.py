"""scripts/compare_predictions.py: paired AUROC comparison of two models' predictions.csv on the same cases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError
from common.data.radiograph_findings import CXR_FINDINGS

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("compare_predictions", REPO / "scripts" / "compare_predictions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_predictions_cli_pairs_cases_and_orders_models(tmp_path: Path, capsys):
    script = _script()
    rng = np.random.default_rng(0)
    k, n = len(CXR_FINDINGS), 40
    labels = rng.integers(0, 2, (n, k))
    records = [
        {"image": str(tmp_path / f"{i}.png"), "labels": {f.key: int(labels[i, j]) for j, f in enumerate(CXR_FINDINGS)}}
        for i in range(n)
    ]
    for record in records:
        Path(record["image"]).write_bytes(b"")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": records[:1], "test": records}))
    good = labels + rng.normal(0, 0.3, labels.shape)
    noise = rng.normal(0, 1, labels.shape)
    for name, scores in (("good", good), ("noise", noise)):
        rows = [",".join([records[i]["image"], *map(str, scores[i])]) for i in reversed(range(n))]  # any order
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cmp.json"
    script.run(
        f"noise={tmp_path / 'noise.csv'}",
        {"good": str(tmp_path / "good.csv")},
        str(tmp_path / "datalist.json"),
        out=str(out),
        n_bootstrap=200,
    )
    result = json.loads(out.read_text())
    assert result["n_cases"] == n
    diff = result["differences"]["good"]["macro"]
    assert diff["difference"] > 0.3 and diff["difference_ci"][0] > 0
    assert result["models"]["good"]["macro"]["auroc"] > result["models"]["noise"]["macro"]["auroc"]
    assert "| good |" in capsys.readouterr().out


def test_read_predictions_names_a_short_row(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_text("/x.png,0.1,0.2\n")
    with pytest.raises(DataContractError, match="row 1 has 2 values"):
        _script().read_predictions(path, 3)
