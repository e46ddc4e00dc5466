"""raddino_cxr end to end: a tiny training run through `python -m monai.bundle run`, inference and evaluation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.data.default import default_datalist

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "raddino_cxr"
TINY = [  # a 56 px ViT/14 (4x4 tokens), 2 local crops, 64 prototypes
    "--image_size", "56", "--global_crop_size", "56", "--local_crop_size", "28", "--num_local_crops", "2",
    "--head_prototypes", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
]


def _bundle_run(configs: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files,
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_raddino_cxr_train_then_infer(tmp_path):
    datalist = default_datalist(dims=2, cache_root=tmp_path / "phantoms", num_train=8, num_image_only=2,
                                num_val=0, num_test=6)
    model = tmp_path / "model.pt"
    train = _bundle_run(
        ["train.yaml", "demo.yaml"], "--dataset_dir", datalist, "--max_epochs", "1", "--batch_size", "4",
        "--cache_preprocessed", "False", "--output_dir", str(tmp_path / "runs"), "--model_path", str(model), *TINY,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "Epoch[1] Complete" in train.stdout + train.stderr
    weights = torch.load(model, weights_only=True)
    assert weights and all(k.startswith("backbone.model.") for k in weights)
    initial = torch.load(tmp_path / "model_init.pt", weights_only=True)  # the teacher before the first step
    assert initial.keys() == weights.keys()
    assert any(not torch.equal(initial[k], weights[k]) for k in weights)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    infer = _bundle_run(
        ["inference.yaml", "demo.yaml"], "--dataset_dir", datalist, "--model_path", str(model), "--num_workers", "0",
        "--output_dir", str(tmp_path / "infer"), "--image_size", "56", cwd=tmp_path,
    )
    assert infer.returncode == 0, infer.stdout[-3000:] + infer.stderr[-3000:]
    rows = list(csv.reader((tmp_path / "infer" / "embeddings.csv").open()))
    assert len(rows) == 6
    width = weights["backbone.model.embeddings.cls_token"].shape[-1]
    for row in rows:
        assert Path(row[0]).suffix == ".jpg" and len(row) == 1 + width  # the default data: a miniature MIMIC-CXR-JPG
        assert all(map(lambda v: abs(float(v)) < 1e4, row[1:]))
    assert rows[0][1:] != rows[1][1:]

    evaluate = _bundle_run(
        ["train.yaml", "demo.yaml", "evaluate.yaml"], "--dataset_dir", datalist, "--model_path", str(model),
        "--eval_output_dir", str(tmp_path / "eval"), "--n_bootstrap", "20", "--eval_batch_size", "4", *TINY,
        cwd=tmp_path,
    )
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    sections = results.get("results", results)
    for probe in ("linear_probe", "knn_probe"):  # the baseline is the run's own initial weights (model_init.pt)
        assert {probe, f"initial_weights_{probe}", f"{probe}_vs_initial_weights"} <= set(sections)
        diff = sections[f"{probe}_vs_initial_weights"]["macro"]
        if diff["difference"] is not None:  # the paired difference is the difference of the two macro AUROCs
            ours, theirs = sections[probe]["macro"]["auroc"], sections[f"initial_weights_{probe}"]["macro"]["auroc"]
            assert abs(diff["difference"] - (ours - theirs)) < 1e-9
