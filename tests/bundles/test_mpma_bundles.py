"""MPMA bundles end to end on tiny phantom data: train (mixed image-only + paired) -> export -> inference ->
evaluation (harness + multi-modal probe), switches through the config, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from common.methods.mpma.evaluate import read_masked_tokens
from common.methods.mpma.objective import TERMS


@pytest.fixture(scope="module")
def tiny_dataset(make_phantoms) -> Path:
    return make_phantoms(num_train=6, num_image_only=2, num_val=1, num_test=3, seed=3)


SMALL = {"max_epochs": 1, "batch_size": 4, "max_text_length": 32, "n_bootstrap": 10, "fusion_dim": 32,
         "fusion_heads": 4, "fusion_depth": 1, "memory_slots": 4, "text_num_layers": 2, "text_frozen_layers": 1}  # fmt: skip
SIZES = {2: {"spatial_size": 64}, 3: {"spatial_size": 32, "pixdim": 12.0, "segmentation_epochs": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("bundle,dims", [("mpma_cxr", 2), ("mpma_ct", 3)])
def test_train_export_infer_evaluate(bundle: str, dims: int, tiny_dataset: Path, tmp_path: Path, bundle_workflow,
                                     scratch_bundle_root, monkeypatch):  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datalist = tiny_dataset / f"datalist_{dims}d.json"
    bundle_root = scratch_bundle_root(bundle)
    small = {**SMALL, **SIZES[dims]}
    train = bundle_workflow(bundle, ["train.yaml", "demo.yaml"], "train", bundle_root=str(bundle_root),
                            dataset_dir=str(datalist), **{k: v for k, v in small.items() if k != "segmentation_epochs"})  # fmt: skip
    train.run()
    trainer = train.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2  # 8 training records (6 paired + 2 image-only), batch 4
    assert set(TERMS) <= set(trainer.state.output) and "masked_token_accuracy" in trainer.state.output
    assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    for name in ("model.pt", "mpma_model.pt"):
        state = torch.load(bundle_root / "models" / name, weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())

    image_size = {k: v for k, v in SIZES[dims].items() if k != "segmentation_epochs"}
    infer = bundle_workflow(bundle, ["inference.yaml", "demo.yaml"], "infer", bundle_root=str(bundle_root),
                            dataset_dir=str(datalist), **image_size)  # fmt: skip
    infer.run()
    with open(bundle_root / "eval" / "predictions.csv") as handle:
        rows = list(csv.reader(handle))
    num_findings = len(train.parser.get_parsed_content("findings"))
    assert len(rows) == 3 and all(len(r) == 1 + num_findings for r in rows)
    probs = torch.tensor([[float(x) for x in r[1:]] for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()

    out = tmp_path / "evaluation"
    evaluate = bundle_workflow(bundle, ["train.yaml", "demo.yaml", "evaluate.yaml"], None,
                               bundle_root=str(bundle_root), dataset_dir=str(datalist), eval_output_dir=str(out),
                               eval_train_split="training", **small)  # fmt: skip
    evaluate.run()
    sections = set(json.loads((out / "results.json").read_text())["results"])
    assert {"zero_shot", "retrieval", "linear_probe"} <= sections
    assert ("segmentation" in sections) == (dims == 3)
    multimodal = json.loads((out / "multimodal.json").read_text())
    assert set(multimodal["linear_probe"]) == {"image", "text", "fused"}
    assert {"fused_vs_image", "fused_vs_text"} <= set(multimodal)
    accuracy = multimodal["masked_token_accuracy"]
    assert accuracy["total"] > 0 and 0.0 <= accuracy["accuracy"] <= 1.0
    assert 0.0 < accuracy["most_frequent_target_share"] <= 1.0 and accuracy["distinct_predictions"] >= 1
    tokens = read_masked_tokens(out)  # the same tokens, one row each, for paired comparisons of runs
    assert tokens["target"].size == accuracy["total"]
    assert int((tokens["target"] == tokens["prediction"]).sum()) == accuracy["correct"]


@pytest.mark.slow
def test_config_switches_and_resume(tiny_dataset: Path, bundle_workflow, scratch_bundle_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datalist = tiny_dataset / "datalist_2d.json"
    bundle_root = scratch_bundle_root("mpma_cxr")

    def run(**override):
        workflow = bundle_workflow("mpma_cxr", ["train.yaml", "demo.yaml"], "train", bundle_root=str(bundle_root),
                                   dataset_dir=str(datalist), **{**SMALL, **SIZES[2], **override})  # fmt: skip
        workflow.run()
        return workflow.parser.get_parsed_content("train#trainer"), workflow.parser.get_parsed_content("objective_def")

    trainer, objective = run(image_reconstruction_weight=0.0, text_reconstruction_weight=0.0, memory_slots=0)
    assert set(trainer.state.output) >= {"global_alignment", "local_alignment"}
    assert not {"image_reconstruction", "text_reconstruction"} & set(trainer.state.output)
    assert objective.fusion is None and objective.mlm_head is None
    resumed, _ = run(image_reconstruction_weight=0.0, text_reconstruction_weight=0.0, memory_slots=0, resume="true",
                     max_epochs=2)  # fmt: skip
    assert resumed.state.iteration == 2 * trainer.state.iteration
    _, with_prior = run(mlm_bias_prior="true", max_epochs=1)  # the MLM output bias starts at the reports' token prior
    bias = with_prior.mlm_head.bias.detach()
    assert torch.count_nonzero(bias) == bias.numel() and abs(float(bias.float().logsumexp(0))) < 1e-2
