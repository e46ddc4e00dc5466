"""Atomic checkpoint writes, weights_only loading, keep_last, generator states and the inference export."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

import common.engines.checkpoint as ckpt
from common.data.contract import DataContractError
from common.engines.checkpoint import (
    CheckpointHandler,
    atomic_save,
    capture_rng_state,
    export_inference_weights,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from common.engines.trainer import PretrainingTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Objective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (self.net(batch["image"]) - batch["target"]).square().mean()}


def train(save_dir, max_epochs: int = 1, resume=False, keep_last: int | None = 2, every: int | None = 1, **kw):
    torch.manual_seed(0)
    records = [{"image": torch.randn(4), "target": torch.randn(1)} for _ in range(10)]
    loader = torch.utils.data.DataLoader(records, batch_size=2)
    objective = Objective()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    handler = CheckpointHandler(
        save_dir,
        {"objective": objective, "optimizer": optimizer, "lr_scheduler": scheduler},
        save_every_n_iterations=every,
        keep_last=keep_last,
        resume=resume,
        **kw,
    )
    trainer = PretrainingTrainer(
        "cpu", max_epochs, loader, objective, optimizer, scheduler, train_handlers=[handler], progress=False
    )
    trainer.run()
    return trainer, handler, objective


class _Custom:
    """Any user class: needs full unpickling, which weights_only=True refuses."""


def _only_safe_types(obj) -> bool:
    if isinstance(obj, Mapping):
        return all(isinstance(k, (str, int)) and _only_safe_types(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_only_safe_types(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str))


# ------------------------------------------------------------------------------------------------- atomic writes
def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_00000001.pt"
    atomic_save({"format": "x", "value": torch.arange(5)}, path)
    before = path.read_bytes()

    def crash_midway(obj, f):
        f.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"value": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.arange(5))
    assert list(tmp_path.iterdir()) == [path]  # no *.tmp left behind


def test_crash_before_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"value": torch.ones(3)}, path)

    def crash(src, dst):
        raise OSError("power loss before rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_save({"value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))


def test_resume_skips_truncated_and_temporary_files(tmp_path, caplog):
    train(tmp_path, keep_last=None)
    files = find_checkpoints(tmp_path)
    assert [int(p.stem.split("_")[1]) for p in files] == [1, 2, 3, 4, 5]
    newest = files[-1]
    newest.write_bytes(newest.read_bytes()[:200])  # e.g. copied by a non-atomic tool and cut short
    (tmp_path / "checkpoint_00000009.pt.tmp").write_bytes(b"left over by a killed writer")
    with caplog.at_level(logging.WARNING, logger="common.engines.checkpoint"):
        path, checkpoint = latest_checkpoint(tmp_path)
    assert path == files[-2] and checkpoint["trainer"]["iteration"] == 4
    assert any("checkpoint_00000005.pt" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------- loading
def test_checkpoint_loads_with_weights_only(tmp_path):
    trainer, handler, objective = train(tmp_path)
    path = find_checkpoints(tmp_path)[-1]
    raw = torch.load(path, weights_only=True)
    assert _only_safe_types(raw)
    assert set(raw) == {"format", "objective", "optimizer", "lr_scheduler", "trainer", "generators", "checkpointer"}
    assert raw["format"] == {"name": ckpt.CHECKPOINT_FORMAT}
    assert dict(raw["trainer"]) == {"iteration": 5, "epoch_length": 5, "max_epochs": 1}  # ignite's Engine.state_dict
    assert [name for _, name in raw["checkpointer"]["_saved"]] == ["checkpoint_00000004.pt", "checkpoint_00000005.pt"]
    generators = raw["generators"]
    assert generators["world_size"] == 1 and set(generators["ranks"][0]["rng"]) == {"python", "numpy", "torch", "cuda"}
    for key, value in objective.state_dict().items():
        assert torch.equal(raw["objective"][key], value)


def test_unsafe_or_foreign_files_are_rejected(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "object": _Custom()}, unsafe)
    with pytest.raises(DataContractError, match="unsafe.pt.*weights_only=True"):
        load_checkpoint(unsafe)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DataContractError, match="foreign.pt.*not a training checkpoint"):
        load_checkpoint(foreign)
    older = tmp_path / "checkpoint_00000001.pt"
    torch.save({"format": "medvlp-training-checkpoint-v1", "objects": {}}, older)
    with pytest.raises(DataContractError, match="layout is 'medvlp-training-checkpoint-v1'"):
        load_checkpoint(older)
    with pytest.raises(DataContractError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_keep_last(tmp_path):
    train(tmp_path / "two", keep_last=2)
    assert [p.name for p in find_checkpoints(tmp_path / "two")] == ["checkpoint_00000004.pt", "checkpoint_00000005.pt"]
    train(tmp_path / "all", keep_last=None, every=2)
    assert [p.name for p in find_checkpoints(tmp_path / "all")] == [
        "checkpoint_00000002.pt",
        "checkpoint_00000004.pt",
        "checkpoint_00000005.pt",  # epoch end
    ]


def test_resume_restores_state_and_continues(tmp_path):
    train(tmp_path, max_epochs=1)
    trainer, handler, objective = train(tmp_path, max_epochs=2, resume=True)
    assert handler.resumed_from == tmp_path / "checkpoint_00000005.pt"
    assert trainer.state.iteration == 10 and trainer.state.epoch == 2
    assert [p.name for p in find_checkpoints(tmp_path)][-1] == "checkpoint_00000010.pt"


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(DataContractError, match="missing.pt"):
        train(tmp_path / "a", resume=tmp_path / "missing.pt")
    train(tmp_path / "b")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataContractError, match="no loadable"):
        train(tmp_path / "c", resume=tmp_path / "a")  # a directory without checkpoints
    torch.manual_seed(0)
    records = [{"image": torch.randn(4), "target": torch.randn(1)} for _ in range(12)]
    objective = Objective()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    handler = CheckpointHandler(tmp_path / "b", {"objective": objective, "optimizer": optimizer}, resume=True)
    loader = torch.utils.data.DataLoader(records, batch_size=3)  # 4 iterations per epoch instead of 5
    trainer = PretrainingTrainer("cpu", 2, loader, objective, optimizer, train_handlers=[handler], progress=False)
    with pytest.raises(ValueError, match="epoch_length=5"):
        trainer.run()
    handler = CheckpointHandler(tmp_path / "d", {"objective": objective, "ema": objective})
    with pytest.raises(DataContractError, match="no state for \\['ema'\\]"):
        handler.restore(trainer, load_checkpoint(find_checkpoints(tmp_path / "b")[-1]))


def test_no_resume_without_checkpoint_starts_fresh(tmp_path):
    trainer, handler, _ = train(tmp_path, resume=True)
    assert handler.resumed_from is None and trainer.state.iteration == 5


def test_resume_refuses_to_start_over_unreadable_checkpoints(tmp_path):
    (tmp_path / "checkpoint_00000004.pt").write_bytes(b"not a zip archive")
    with pytest.raises(DataContractError, match="none of the checkpoint"):
        train(tmp_path, resume=True)
    assert (tmp_path / "checkpoint_00000004.pt").exists()


def test_bad_handler_arguments():
    with pytest.raises(ValueError):
        CheckpointHandler("x", {}, save_every_n_iterations=0)
    with pytest.raises(ValueError):
        CheckpointHandler("x", {}, keep_last=-1)


# ------------------------------------------------------------------------------------------ generator states
def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    first = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(state)
    second = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    assert first == second


# -------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_inference_weights_is_flat(tmp_path, suffix):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    wrapped = nn.DataParallel(network)  # keys of the wrapper start with "module."
    path = export_inference_weights(wrapped, tmp_path / f"models/model{suffix}")
    if suffix == ".pt":
        state = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(path)
    assert set(state) == set(network.state_dict())
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    fresh.load_state_dict(state)
    for key, value in network.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
