"""Issue 26: the app's train task turns datastore images without a report into image-only records, and a client's
``image_only_share`` override (a number, which clients may set) makes a g2d_ct or prior_ct run a mixed one.

The datastore holds the phantoms' 4 paired volumes (report in the image info) and 1 without a report. At share 0.5
and batch 4 every batch holds 2 image-only and 2 paired rows, so an epoch (one pass over the paired records) is 2
iterations; a paired-only run of the same records would be 1 (4 paired / 4), COLIPRI's shuffle 1 (5 // 4). Runs in
``.venv-label``; skipped where monailabel is not installed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

from label_app import app_conf, app_modules, bundle_folder

#: bundle -> (the app's overlays, the operator's overrides: tiny sizes), applied to the bundle's train.yaml
MIXED_RUNS = {
    "g2d_ct": ("demo", {"spatial_size": 64, "pixdim": 12.0, "max_text_length": 32, "warmup_iterations": 0}),
    "prior_ct": (  # stage 3: image-only rows feed its untexted image reconstruction (stages 1-2: no term)
        "prior_ct:stage3,demo",
        {"spatial_size": 32, "pixdim": 12.0, "image_decoder_blocks": 2, "max_text_length": 48, "embed_dim": 32,
         "num_prototypes": 16, "num_queries": 4, "sentence_pool_heads": 4, "pool_heads": 4, "decoder_heads": 4,
         "decoder_mlp_dim": 64, "decoder_layers": 1, "text_num_layers": 2, "text_frozen_layers": 1,
         "min_sentences": 2, "init_objective_path": "$None"},
    ),
}  # fmt: skip
CLIENT_REQUEST = {"max_epochs": 1, "overrides": {"image_only_share": 0.5, "batch_size": 4, "num_workers": 0}}


@pytest.mark.parametrize("bundle", sorted(MIXED_RUNS))
def test_images_without_report_train_as_image_only_rows(
    bundle: str, train_datastore, tmp_path: Path, monkeypatch, capfd
) -> None:
    overlays, tiny = MIXED_RUNS[bundle]
    root = bundle_folder(tmp_path, bundle)
    bundle_specs, BundlePretrainTask = app_modules()
    task = BundlePretrainTask(bundle_specs(app_conf(root, bundle, overlays, tiny))[bundle])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the training subprocess inherits these
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stats = task(CLIENT_REQUEST, train_datastore)
    log = capfd.readouterr().out

    records = json.loads((task.run_dir / "datalist.json").read_text())["training"]
    image_only = [r for r in records if "report" not in r]
    assert len(records) == 5 and stats["paired"] == 4 and len(image_only) == 1
    assert set(image_only[0]) == {"image"}  # no report, no empty text: has_report False in the bundle
    assert "4 paired + 1 image-only records: 2 batches of 4 per rank and epoch, 2 image-only each" in log, log[-3000:]
    assert stats["status"] == "DONE" and stats["iteration"] == stats["iterations_per_epoch"] == 2
    loss = re.search(r"\bloss: (\S+)", stats["last"])
    assert loss and math.isfinite(float(loss.group(1))), stats["last"]
