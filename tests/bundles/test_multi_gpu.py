"""Every bundle's multi_gpu_train overlay under `torchrun --standalone --nproc_per_node 2` on CPU (gloo).

The bundles are those in ``bundles/`` with a ``multi_gpu_train`` config: adding a bundle folder is enough. Each run
trains a tiny network (the demo overlay, then the size knobs of :data:`TINY` that the bundle's configs define) for
one epoch of two iterations on phantoms and checks what only a real launch shows: the ResumableSampler shards the
records by rank (iterations per epoch = records / (2 ranks x batch)), only rank 0 logged, wrote checkpoints,
TensorBoard events and the export, and the checkpoint is a plain state dict that loads strictly into the
single-process objective. 3D bundles whose overlay has an ``fsdp`` switch run sharded with FSDP2, the others DDP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from common.bundle_support import component_arguments, discover_bundles
from common.networks.text_encoder import resolve_text_encoder

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
BATCH = 2
RECORDS = 8  # 6 paired + 2 image-only training records
BUNDLES = {b.name: b for b in discover_bundles(REPO / "bundles", configs=["train", "multi_gpu_train"])}
#: size knobs shrunk for a two-iteration CPU run, applied to a bundle when its configs define the key
TINY = {"max_text_length": 32, "projection_dim": 48, "text_projection_dim": 48, "pool_heads": 2,
        "mae_decoder_dim": 48, "mae_decoder_heads": 2, "report_decoder_width": 32, "report_decoder_heads": 2,
        "image_backbone#embed_dim": 48, "image_backbone#num_heads": 2, "image_backbone#depth": 2, "depth": 2,
        "num_local_crops": 2, "head_prototypes": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16}
TINY_BY_DIMS = {  # input sizes: multiples of the patch (8 in 3D; 16 or 14 in 2D)
    3: {"spatial_size": 32, "pixdim": 12.0, "global_crop_size": 32, "local_crop_size": 16},
    2: {"spatial_size": 64, "image_backbone#patch_size": 16, "image_size": 56, "global_crop_size": 56,
        "local_crop_size": 28},
}
#: a text tower, when the bundle has one: the tiny BERT of `tiny_text_encoder` (random weights), 1 of 2 layers frozen
TINY_TEXT = {"text_num_layers": 2, "text_frozen_layers": 1}
#: PRIOR's sizes (joint width, prototypes, set size, decoders) and its sentence filter (phantom reports are short)
TINY_PRIOR = {"embed_dim": 32, "sentence_pool_heads": 2, "num_prototypes": 16, "num_queries": 4, "decoder_layers": 1,
              "decoder_heads": 2, "decoder_mlp_dim": 32, "min_sentences": 2}


def _parser(bundle: str, names: tuple[str, ...] = ("train", "demo", "multi_gpu_train")) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(path) for path in _configs(bundle, names)])
    return parser


def _configs(bundle: str, names: tuple[str, ...] = ("train", "demo", "multi_gpu_train")) -> list[Path]:
    """The bundle's configs of these names that it has (a bundle without a demo overlay runs without one)."""
    return [p for p in (BUNDLES[bundle].config(n) for n in names) if p is not None]


def _sharded(bundle: str) -> bool:
    return BUNDLES[bundle].spatial_dims == 3 and "fsdp" in _parser(bundle)


@pytest.fixture(scope="module")
def phantoms(make_phantoms) -> Path:
    return make_phantoms(num_train=6, num_image_only=2, num_val=0, num_test=0, seed=3)


@pytest.fixture(scope="module")
def tiny_text_encoder(tmp_path_factory) -> Path:
    """The offline MiniLM's tokenizer with a two-layer, 32-wide BERT config (randomly initialised in the runs)."""
    source = Path(resolve_text_encoder("default"))
    out = tmp_path_factory.mktemp("tiny_bert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _overrides(bundle: str, phantoms: Path, text_encoder: Path, root: Path, extra: dict) -> dict:
    parser = _parser(bundle)
    dims = BUNDLES[bundle].spatial_dims
    prior = TINY_PRIOR if "num_prototypes" in parser else {}  # PRIOR's knobs (RAD-DINO also has an embed_dim)
    tiny = {k: v for k, v in {**TINY, **TINY_BY_DIMS[dims], **prior}.items() if k in parser}
    if "text_encoder_name" in parser:
        tiny.update({k: v for k, v in TINY_TEXT.items() if k in parser}, text_encoder_name=str(text_encoder))
        tiny.update(dict.fromkeys(component_arguments(parser.config, ["pretrained"]), False))  # the tiny BERT has no weights
    return {"dataset_dir": str(phantoms / f"datalist_{dims}d.json"), "bundle_root": str(root), "max_epochs": 1,
            "batch_size": BATCH, "num_workers": 0, "cache_preprocessed": False, **tiny, **extra}


def _torchrun(bundle: str, overrides: dict, log_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{c}'" for c in _configs(bundle)) + "]"
    configs = BUNDLES[bundle].root / "configs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
           "--log-dir", str(log_dir), "--redirects", "3", "-m", "monai.bundle", "run", "--config_file", files,
           "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _rank_logs(log_dir: Path) -> dict[int, str]:
    logs = {}
    for rank in range(WORLD_SIZE):
        files = sorted(log_dir.glob(f"*/attempt_0/{rank}/std*.log"))
        logs[rank] = "".join(f.read_text() for f in files)
    return logs


def _single_process_objective(bundle: str, overrides: dict) -> torch.nn.Module:
    parser = _parser(bundle, ("train", "demo"))  # no process group
    parser.update(overrides)
    return parser.get_parsed_content("objective_def")


def _exported_model(bundle: str, overrides: dict) -> Path:
    """The file the train workflow exports (its ``model_path``)."""
    parser = _parser(bundle)
    parser.update(overrides)
    return Path(parser.get_parsed_content("model_path"))


def _export_prefix(exported: dict, state: dict) -> str:
    """The objective's attribute the export is the trained state of (``model.``, ``teacher.``): of the prefixes
    under which the objective's state holds most exported keys (a student and its EMA teacher hold the same keys),
    the one whose tensors equal the exported ones; ``""`` when none does (the caller's comparison then fails)."""
    counts = Counter(k[: -len(e)] for e in exported for k in state if k.endswith("." + e))
    assert counts, "no exported key is in the objective's state dict"
    most = max(counts.values())
    for prefix in (p for p, n in counts.items() if n == most):
        keys = [k for k in exported if prefix + k in state and k != "softmax_temperature"]
        if all(torch.equal(exported[k], state[prefix + k]) for k in keys):
            return prefix
    return counts.most_common(1)[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_torchrun_two_ranks(bundle: str, phantoms: Path, tiny_text_encoder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "bundle"
    overrides = _overrides(bundle, phantoms, tiny_text_encoder, root, {"fsdp": True} if _sharded(bundle) else {})
    run = _torchrun(bundle, overrides, tmp_path / "logs", tmp_path)
    logs = _rank_logs(tmp_path / "logs")
    assert run.returncode == 0, run.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]

    # only rank 0 logged the epoch and wrote checkpoints, TensorBoard events and the export (where the config says)
    paths = _parser(bundle)
    paths.update(overrides)
    records = len(paths.get_parsed_content("train_records"))  # the bundle's own selection (PRIOR: paired only)
    assert 0 < records <= RECORDS
    steps = records // (WORLD_SIZE * BATCH)
    if str(paths["train#sampler"]["_target_"]).endswith("ImageOnlyShareSampler"):  # an epoch: one pass over the paired
        paths["train#sampler#rank"], paths["train#sampler#world_size"] = 0, WORLD_SIZE
        steps = len(paths.get_parsed_content("train#sampler")) // BATCH
    assert "Epoch[1] Complete" in logs[0] and "saved checkpoint" in logs[0]
    assert "Epoch[1] Complete" not in logs[1] and "saved checkpoint" not in logs[1]
    events_dir = Path(paths.get_parsed_content("train#rank0_handlers#1#log_dir"))
    assert len(list(events_dir.glob("events.out.tfevents.*"))) == 1 and events_dir.is_relative_to(root)
    checkpoints = sorted(Path(paths.get_parsed_content("checkpoint_dir")).glob("checkpoint_*.pt"))
    assert [c.name for c in checkpoints] == [f"checkpoint_{steps:08d}.pt"]
    model_path = _exported_model(bundle, overrides)
    assert model_path.is_file() and model_path.is_relative_to(root)

    checkpoint = torch.load(checkpoints[0], weights_only=True)
    generators = checkpoint["generators"]
    assert generators["world_size"] == WORLD_SIZE and len(generators["ranks"]) == WORLD_SIZE
    # the sampler sharded the records: each rank saw half of them per epoch
    assert checkpoint["trainer"]["epoch_length"] == steps
    state = checkpoint["objective"]
    assert not any(k.startswith("module.") for k in state)
    assert all(type(v) is torch.Tensor for v in state.values())
    objective = _single_process_objective(bundle, overrides)
    objective.load_state_dict(state, strict=True)
    exported = torch.load(model_path, weights_only=True)
    prefix = _export_prefix(exported, state)  # e.g. the two towers / the EMA teacher encoder
    shared = [k for k in exported if prefix + k in state and k != "softmax_temperature"]
    assert len(shared) > len(exported) // 2
    for key in shared:  # the export is the trained state (gathered from the shards under FSDP)
        torch.testing.assert_close(exported[key], state[prefix + key], rtol=0, atol=0)
