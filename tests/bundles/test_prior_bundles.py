"""PRIOR bundles end to end on tiny phantom data: stage 1 -> 2 -> 3 through the configs, export, inference, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from common.data.contract import load_datalist
from common.methods.prior.objective import STAGE_WEIGHTS
from common.transforms.sentences import records_with_min_sentences


@pytest.fixture(scope="module")
def tiny_dataset(make_phantoms) -> Path:
    return make_phantoms(num_train=8, num_image_only=2, num_val=1, num_test=2, seed=5)


def _small(dims: int) -> dict:
    small = {
        "max_epochs": 1,
        "batch_size": 2,
        "max_text_length": 48,
        "num_prototypes": 16,
        "num_queries": 4,
        "embed_dim": 32,
        "sentence_pool_heads": 4,
        "pool_heads": 4,
        "decoder_heads": 4,
        "decoder_mlp_dim": 64,
        "decoder_layers": 1,
        "text_num_layers": 2,
        "text_frozen_layers": 1,
        "min_sentences": 2,
    }
    small.update(
        {"spatial_size": 32, "pixdim": 12.0, "image_decoder_blocks": 2}
        if dims == 3
        else {"spatial_size": 64, "resize_size": 64, "image_decoder_blocks": 3}
    )
    return small


@pytest.mark.slow
@pytest.mark.parametrize("bundle,dims", [("prior_cxr", 2), ("prior_ct", 3)])
def test_three_stages_export_infer(
    bundle: str, dims: int, tiny_dataset: Path, bundle_workflow, scratch_bundle_root, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datalist = tiny_dataset / f"datalist_{dims}d.json"
    bundle_root = scratch_bundle_root(bundle)
    small = _small(dims)
    paired = records_with_min_sentences(load_datalist(str(datalist), "training"), small["min_sentences"])
    stage_weights = {}
    for stage, overlay in ((1, []), (2, ["stage2.yaml"]), (3, ["stage3.yaml"])):
        train = bundle_workflow(
            bundle,
            ["train.yaml", *overlay, "demo.yaml"],
            "train",
            bundle_root=str(bundle_root),
            dataset_dir=str(datalist),
            **small,
        )
        train.run()
        trainer = train.parser.get_parsed_content("train#trainer")
        assert trainer.state.iteration == len(paired) // small["batch_size"]  # paired records only, drop_last
        assert set(STAGE_WEIGHTS[stage]) <= set(trainer.state.output)
        assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
        assert (bundle_root / "models" / f"prior_stage{stage}.pt").is_file()
        stage_weights[stage] = torch.load(bundle_root / "models" / f"prior_stage{stage}.pt", weights_only=True)
    # each stage started from the previous one: what a stage freezes is carried over unchanged, the rest trains
    bank = "model.text_encoder.pooler.prototypes.embed.weight"
    decoder = next(k for k in stage_weights[1] if k.startswith("sentence_decoder.") and k.endswith("weight"))
    torch.testing.assert_close(stage_weights[1][decoder], stage_weights[2][decoder])
    assert not torch.equal(stage_weights[2][decoder], stage_weights[3][decoder])
    assert not torch.equal(stage_weights[1][bank], stage_weights[2][bank])

    demo = train.parser
    infer = bundle_workflow(
        bundle,
        ["inference.yaml", "demo.yaml"],
        "infer",
        bundle_root=str(bundle_root),
        dataset_dir=str(datalist),
        **{k: small[k] for k in ("spatial_size", "embed_dim", "pool_heads") if k in small},
        **({"pixdim": 12.0} if dims == 3 else {"resize_size": 64}),
    )
    infer.run()
    with open(bundle_root / "eval" / "predictions.csv") as handle:
        rows = list(csv.reader(handle))
    num_findings = len(demo.get_parsed_content("findings"))
    assert len(rows) == 2 and all(len(r) == 1 + num_findings for r in rows)
    probs = torch.tensor([[float(x) for x in r[1:]] for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.slow
def test_stage_resumes_from_its_own_checkpoints(tiny_dataset: Path, bundle_workflow, scratch_bundle_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datalist = tiny_dataset / "datalist_2d.json"
    bundle_root = scratch_bundle_root("prior_cxr")
    small = _small(2)

    def stage1(**override):
        workflow = bundle_workflow("prior_cxr", ["train.yaml", "demo.yaml"], "train", bundle_root=str(bundle_root),
                                   dataset_dir=str(datalist), **{**small, **override})  # fmt: skip
        workflow.run()
        return workflow.parser.get_parsed_content("train#trainer").state.iteration

    done = stage1()
    assert stage1(resume="true", max_epochs=2) == 2 * done
    assert (bundle_root / "runs" / "checkpoints_stage1").is_dir()
