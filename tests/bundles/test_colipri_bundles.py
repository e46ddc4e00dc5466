"""End to end on tiny phantom data: train (demo overlay, mixed image-only + paired) -> export -> inference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from common.data.findings import FINDINGS
from common.evaluation.per_case import read_per_case


@pytest.fixture(scope="module")
def tiny_dataset(make_phantoms) -> Path:
    return make_phantoms(num_train=6, num_image_only=2, num_val=1, num_test=2, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("bundle,dims", [("colipri_ct", 3), ("colipri_cxr", 2)])
def test_train_export_infer(
    bundle: str, dims: int, tiny_dataset: Path, tmp_path: Path, bundle_workflow, scratch_bundle_root, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datalist = tiny_dataset / f"datalist_{dims}d.json"
    bundle_root = scratch_bundle_root(bundle)
    small = {
        "max_epochs": 1,
        "batch_size": 4,
        "max_text_length": 32,
        "spatial_size": 32 if dims == 3 else 64,
        "n_bootstrap": 10,
    }
    if dims == 3:
        small["pixdim"] = 12.0
    train = bundle_workflow(
        bundle, ["train.yaml", "demo.yaml"], "train", bundle_root=str(bundle_root), dataset_dir=str(datalist), **small
    )
    train.run()
    trainer = train.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2  # 8 training records (6 paired + 2 image-only), batch 4
    assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    assert {"contrastive", "report", "mae"} <= set(trainer.state.output)
    model_pt = bundle_root / "models" / "model.pt"
    assert model_pt.is_file() and (bundle_root / "models" / "colipri_model.pt").is_file()
    state = torch.load(model_pt, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # flat state dict of network_def

    demo = train.parser
    infer = bundle_workflow(
        bundle,
        ["inference.yaml"],
        "infer",
        bundle_root=str(bundle_root),
        dataset_dir=str(datalist),
        image_backbone=demo.get("image_backbone"),
        projection_dim=demo["projection_dim"],
        pool_heads=demo["pool_heads"],
        spatial_size=small["spatial_size"],
        **({"pixdim": 12.0} if dims == 3 else {}),
    )
    infer.run()
    rows = list(csv.reader((bundle_root / "eval" / "predictions.csv").read_text().splitlines()))
    num_findings = len(demo.get_parsed_content("findings") if "findings" in demo else FINDINGS)
    assert len(rows) == 2 and all(len(r) == 1 + num_findings for r in rows)
    probs = torch.tensor([[float(x) for x in r[1:]] for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()

    # frozen-encoder evaluation through the bundle's evaluate.yaml (all sections, tiny settings)
    evaluate = bundle_workflow(
        bundle,
        ["train.yaml", "demo.yaml", "evaluate.yaml"],
        None,
        bundle_root=str(bundle_root),
        dataset_dir=str(datalist),
        eval_output_dir=str(tmp_path / "evaluation"),
        segmentation_epochs=1,
        eval_train_split="training",
        **small,
    )
    evaluate.run()
    results = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    sections = set(results.get("results", results))
    assert {"zero_shot", "retrieval", "linear_probe", "knn_probe"} <= sections
    assert ("segmentation" in sections) == (dims == 3)  # the 2D bundle has no mask resampling yet
    case_ids, columns = read_per_case(tmp_path / "evaluation")  # per-case outputs for paired comparisons of runs
    assert len(case_ids) == len(set(case_ids)) and all(Path(c).exists() for c in case_ids)
    assert {"retrieval/image_to_text_rank", "retrieval/text_to_image_rank"} <= set(columns)
