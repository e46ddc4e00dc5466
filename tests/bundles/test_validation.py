"""The `validate` section of every bundle's train.yaml and the TensorBoard images, on tiny phantom runs.

Each bundle trains two epochs with a validation after each (``val_interval: 1``) and images at every iteration
(``image_log_interval: 1``). Checked: the key metric reaches the console state and TensorBoard once per validation,
MONAI's best value and epoch are the maximum of those points, ``best_model.pt`` is written beside the training
checkpoints and loads strictly into the validated network, the image tags are in the event files, and (for one
paired and one image-only bundle) the validation metric equals what the bundle's evaluate.yaml computes on the same
split with the exported weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_prior_bundles import _small as prior_small  # PRIOR's tiny sizes

from common.networks.weights import load_weights

COMMON = {"max_epochs": 2, "batch_size": 4, "val_interval": 1, "image_log_interval": 1, "n_bootstrap": 10}
TEXT = {"max_text_length": 32}
#: a ViT/14 on 4x4 tokens (2D) or an 8-patch EVA on 32^3 (3D), 2 local crops, 64 prototypes
RADDINO = {
    "num_local_crops": 2,
    "head_prototypes": 64,
    "head_hidden_dim": 32,
    "head_bottleneck_dim": 16,
    "num_workers": 0,
    "cache_preprocessed": False,
}
RADDINO_2D = {**RADDINO, "image_size": 56, "global_crop_size": 56, "local_crop_size": 28}
RADDINO_3D = {**RADDINO, "spatial_size": 32, "pixdim": 12.0, "global_crop_size": 32, "local_crop_size": 16}
#: bundle -> (spatial dims, tiny settings, image tags its TensorBoard must hold)
BUNDLES = {
    "colipri_cxr": (2, {**TEXT, "spatial_size": 64}, {"views/image", "mae", "similarity_map"}),
    "colipri_ct": (3, {**TEXT, "spatial_size": 32, "pixdim": 12.0}, {"views/image", "mae", "similarity_map"}),
    "g2d_cxr": (2, {**TEXT, "spatial_size": 64, "resize_size": 64}, {"views/image", "pseudo_mask"}),
    "g2d_ct": (3, {**TEXT, "spatial_size": 64, "pixdim": 12.0}, {"views/image", "pseudo_mask"}),
    "mpma_ct": (3, {**TEXT, "spatial_size": 32, "pixdim": 12.0}, {"views/image"}),
    "mpma_cxr": (2, {**TEXT, "spatial_size": 64}, {"views/image"}),
    "prior_cxr": (2, {**prior_small(2), "max_epochs": 2}, {"views/image"}),
    "prior_ct": (3, {**prior_small(3), "max_epochs": 2}, {"views/image"}),
    "raddino_cxr": (2, RADDINO_2D, {"views/global_crops", "views/local_crops"}),
    "raddino_ct": (3, RADDINO_3D, {"views/global_crops", "views/local_crops"}),
}
#: one paired and one image-only bundle: evaluate.yaml's section and metric that the key metric must reproduce
EVALUATED = {"colipri_cxr": ("zero_shot", "macro", "auroc"), "raddino_cxr": ("knn_probe", "macro", "auroc")}


@pytest.fixture(scope="module")
def phantoms(make_phantoms) -> Path:
    return make_phantoms(num_train=6, num_image_only=2, num_val=6, num_test=2, seed=3)


def _events(log_dir: Path) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        found.append(accumulator)
    return found


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for acc in _events(log_dir) if tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def _image_tags(log_dir: Path) -> set[str]:
    return {tag for acc in _events(log_dir) for tag in acc.Tags()["images"]}


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_validation_logs_key_metric_keeps_best_model_and_images(
    bundle: str, phantoms: Path, tmp_path: Path, bundle_workflow, scratch_bundle_root, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dims, tiny, images = BUNDLES[bundle]
    root = scratch_bundle_root(bundle)
    datalist = str(phantoms / f"datalist_{dims}d.json")
    train = bundle_workflow(
        bundle, ["train.yaml", "demo.yaml"], "train", bundle_root=str(root), dataset_dir=datalist, **{**COMMON, **tiny}
    )
    train.run()
    evaluator = train.parser.get_parsed_content("validate#evaluator")
    key = evaluator.state.key_metric_name
    runs = Path(train.parser.get_parsed_content("train#rank0_handlers#1#log_dir"))  # PRIOR: runs/stage<N>
    checkpoints = Path(train.parser.get_parsed_content("checkpoint_dir"))
    assert runs.is_relative_to(root) and checkpoints.is_relative_to(root)

    history = _scalars(runs, key)
    assert [step for step, _ in history] == [1, 2]  # one point per validation, at the training epoch
    values = [value for _, value in history]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert evaluator.state.metrics[key] == pytest.approx(values[-1])
    assert evaluator.state.best_metric == pytest.approx(max(values))
    assert evaluator.state.best_metric_epoch == values.index(max(values)) + 1

    best = checkpoints / "best_model.pt"
    assert best.is_file() and list(checkpoints.glob("checkpoint_*.pt"))  # beside the latest
    network = evaluator.network
    load_weights(copy.deepcopy(network), best)  # strict: every key, every shape
    if evaluator.state.best_metric_epoch == 2:  # the last validation's weights are the final ones
        saved = torch.load(best, weights_only=True)
        assert all(torch.equal(saved[k], v.cpu()) for k, v in network.state_dict().items())

    tags = {tag.removeprefix("train/").removesuffix("_HW") for tag in _image_tags(runs)}
    assert images <= tags

    if bundle in EVALUATED:  # the same number through evaluate.yaml on the validation split
        out = tmp_path / "evaluation"
        evaluate = bundle_workflow(
            bundle,
            ["train.yaml", "demo.yaml", "evaluate.yaml"],
            None,
            bundle_root=str(root),
            dataset_dir=datalist,
            eval_output_dir=str(out),
            eval_test_split="validation",
            compare_random_init=False,
            **{**COMMON, **tiny},
        )
        evaluate.run()
        section, *path = EVALUATED[bundle]
        value = json.loads((out / "results.json").read_text())["results"][section]
        for step in path:
            value = value[step]
        assert evaluator.state.metrics[key] == pytest.approx(value, abs=1e-6)
        assert "eval/zero_shot_roc" in _image_tags(out / "tensorboard") or section != "zero_shot"


@pytest.mark.slow
def test_validation_and_images_leave_the_training_stream_unchanged(
    phantoms: Path, bundle_workflow, scratch_bundle_root, monkeypatch
):
    """Validation and the MAE image hook draw random numbers (loader seeds, masks); the run must not notice."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dims, tiny, _ = BUNDLES["colipri_cxr"]
    outputs = []
    for interval in (1, 0):
        root = scratch_bundle_root("colipri_cxr") / str(interval)
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "metadata.json").write_text((root.parent / "configs" / "metadata.json").read_text())
        settings = {**COMMON, **tiny, "val_interval": interval, "image_log_interval": interval}
        train = bundle_workflow(
            "colipri_cxr",
            ["train.yaml", "demo.yaml"],
            "train",
            bundle_root=str(root),
            dataset_dir=str(phantoms / f"datalist_{dims}d.json"),
            **settings,
        )
        train.run()
        outputs.append(train.parser.get_parsed_content("train#trainer").state.output)
        assert (root / "runs" / "checkpoints" / "best_model.pt").is_file() == bool(interval)
    assert outputs[0] == outputs[1]
