"""Issue 26: g2d_ct and prior_ct train on image-only and paired records in one run (``image_only_share``).

Tiny phantom runs through the bundles' configs: every batch holds the requested number of image-only rows, an epoch
is one pass over the paired records, the terms are finite, a mixed run resumes from its checkpoint and its zero-shot
network exports as a Model Zoo bundle, and both run under the torchrun overlay on two CPU ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_multi_gpu
import torch
import yaml
from test_prior_bundles import _small as prior_small  # PRIOR's tiny sizes

from common.data.contract import load_datalist
from common.engines.preprocessing_record import preprocessing_differences, read_record
from common.methods.prior.objective import STAGE_WEIGHTS
from common.transforms.sentences import records_with_min_sentences

tiny_text_encoder = test_multi_gpu.tiny_text_encoder  # the two-layer BERT fixture of the torchrun tests
MIXED = {"image_only_share": 0.5, "batch_size": 4, "max_epochs": 1, "val_interval": 0, "num_workers": 0}
#: bundle -> (configs, tiny settings, terms its output must hold)
BUNDLES = {
    "g2d_ct": (
        ["train.yaml", "demo.yaml"],
        {"max_text_length": 32, "spatial_size": 64, "pixdim": 12.0, "warmup_iterations": 0},
        {"contrastive", "segmentation"},
    ),
    "prior_ct": (
        ["train.yaml", "stage3.yaml", "demo.yaml"],
        {**prior_small(3), "init_objective_path": "$None"},
        set(STAGE_WEIGHTS[3]),
    ),
}


@pytest.fixture(scope="module")
def phantoms(make_phantoms) -> Path:
    return make_phantoms(num_train=6, num_image_only=3, num_val=1, num_test=1, seed=4) / "datalist_3d.json"


def _paired(bundle: str, datalist: Path, tiny: dict) -> int:
    records = load_datalist(str(datalist), "training")
    if bundle.startswith("prior"):
        return len(records_with_min_sentences(records, tiny["min_sentences"]))
    return sum(1 for r in records if r.get("report"))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_mixed_run_feeds_image_only_rows_resumes_and_exports(
    bundle: str, phantoms: Path, bundle_workflow, scratch_bundle_root, exporter, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    configs, tiny, terms = BUNDLES[bundle]
    root = scratch_bundle_root(bundle)

    def train(**override):
        workflow = bundle_workflow(
            bundle, configs, "train", bundle_root=str(root), dataset_dir=str(phantoms), **{**tiny, **MIXED, **override}
        )
        workflow.run()
        return workflow.parser

    parser = train()
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == _paired(bundle, phantoms, tiny) // 2  # two paired rows per batch of 4
    assert trainer.state.batch["has_report"].tolist() == [False, False, True, True]  # image-only rows first
    assert terms <= set(trainer.state.output)
    assert all(torch.isfinite(torch.as_tensor(trainer.state.output[k])) for k in terms)
    resumed = train(resume="true", max_epochs=2).get_parsed_content("train#trainer")
    assert resumed.state.iteration == 2 * trainer.state.iteration

    # the Model Zoo export of the mixed run's zero-shot network (demo + the tiny sizes as overlays)
    weights = Path(parser.get_parsed_content("classifier_path"))
    sizes = tmp_path / "tiny.yaml"
    sizes.write_text(yaml.safe_dump(tiny))
    summary = exporter.export(bundle, str(tmp_path / "zoo"), weights=str(weights), overlay=["demo", str(sizes)])
    served = tmp_path / "zoo" / "models" / "model.pt"
    trained, exported = (torch.load(p, weights_only=True) for p in (weights, served))
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], v) for k, v in trained.items())
    assert summary["preprocessing_sha256"] == read_record(served)["sha256"]
    assert not preprocessing_differences(read_record(weights), read_record(served))  # served as the mixed run trained


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_mixed_torchrun_two_ranks(bundle: str, phantoms: Path, tiny_text_encoder: Path, tmp_path: Path) -> None:
    """Every rank gets the same number of image-only rows per batch (masked contrastive gathers stay aligned)."""
    extra = {"image_only_share": 0.5, "batch_size": 4}
    overrides = test_multi_gpu._overrides(bundle, phantoms.parent, tiny_text_encoder, tmp_path / "bundle", extra)
    run = test_multi_gpu._torchrun(bundle, overrides, tmp_path / "logs", tmp_path)
    logs = test_multi_gpu._rank_logs(tmp_path / "logs")
    assert run.returncode == 0, run.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    assert "batches of 4 per rank and epoch, 2 image-only each" in logs[0] + run.stderr, logs[0][-3000:]
