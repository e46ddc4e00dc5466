"""``scripts/probe_trajectory.py``: probes of the live teacher during a tiny raddino_cxr run, and the time budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from common.data.default import default_datalist

ROOT = Path(__file__).resolve().parents[2]
TINY = {  # a 56 px ViT/14 (4x4 tokens), 2 local crops, 64 prototypes, no data-loader workers
    "image_size": 56, "global_crop_size": 56, "local_crop_size": 28, "num_local_crops": 2, "head_prototypes": 64,
    "head_hidden_dim": 32, "head_bottleneck_dim": 16, "batch_size": 4, "num_workers": 0, "cache_preprocessed": False,
}


@pytest.fixture(scope="module")
def script():
    pytest.importorskip("ignite")
    spec = importlib.util.spec_from_file_location("probe_trajectory", ROOT / "scripts" / "probe_trajectory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return default_datalist(dims=2, cache_root=root, num_train=12, num_image_only=2, num_val=0, num_test=8)


def test_probes_every_epoch_against_a_fixed_random_init(script, datalist, tmp_path):
    history = script.run("raddino_cxr", max_epochs=2, probe_every=1, out_dir=str(tmp_path), n_bootstrap=20,
                         overrides={**TINY, "dataset_dir": datalist})
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert [row["iteration"] for row in history] == [0, 3, 6]  # 14 records, batch 4, drop_last
    assert history[0]["loss_terms"] is None and set(history[-1]["loss_terms"]) >= {"dino_global_crops", "ibot", "koleo"}
    for row in history:
        for probe in ("linear_probe", "knn_probe"):
            assert 0.0 <= row[probe]["auroc"] <= 1.0
            diff = row[f"{probe}_vs_random_init"]
            assert diff["difference"] == pytest.approx(row[probe]["auroc"] - row[f"random_init_{probe}"]["auroc"])
        # the baseline is embedded once: the same random-init figures in every row
        assert row["random_init_linear_probe"]["auroc"] == history[0]["random_init_linear_probe"]["auroc"]
    # the live teacher is probed: its EMA moves it away from the initial weights, more with every epoch
    assert history[0]["teacher_change"] == 0.0 < history[1]["teacher_change"] < history[2]["teacher_change"]
    saved = json.loads((tmp_path / "probe_trajectory.json").read_text())
    assert saved["bundle"] == "raddino_cxr" and saved["max_epochs"] == 2 and len(saved["history"]) == 3
    assert (tmp_path / "probe_trajectory.png").stat().st_size > 0


def test_time_budget_stops_after_the_epoch_it_runs_out(script, datalist, tmp_path):
    history = script.run("raddino_cxr", max_epochs=5, probe_every=4, time_budget_s=0, out_dir=str(tmp_path),
                         n_bootstrap=0, overrides={**TINY, "dataset_dir": datalist})
    assert [row["epoch"] for row in history] == [0, 1]  # the initial probe, then the final one when time ran out
