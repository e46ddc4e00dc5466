"""PretrainingTrainer and schedules on a toy objective (tiny MLP on random tensors), CPU only."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.handlers import StatsHandler
from torch import nn

from common import distributed
from common.data.contract import DataContractError
from common.data.dataset import PretrainingDataset, pretraining_collate
from common.engines.checkpoint import CheckpointHandler, find_checkpoints, load_checkpoint
from common.engines.schedules import (
    WeightDecayScheduleHandler,
    cosine_schedule,
    layer_id_for_vit,
    param_groups_lrd,
    warmup_cosine_lambda,
)
from common.engines.trainer import NonFiniteLossError, PretrainingTrainer, loss_terms_transform, split_batch

FEATURES = 6

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyObjective(nn.Module):
    """Linear regression ``y = x @ W`` with a small weight penalty; ``nan_at`` poisons one iteration's term."""

    def __init__(self, scale: float = 1.0, nan_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
        self.scale = scale
        self.nan_at = nan_at
        self.calls = 0
        self.hook_calls: list[tuple[str, int, int]] = []

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        pred = self.net(batch["image"])
        fit = (pred - batch["target"]).square().mean() * self.scale
        penalty = self.net[0].weight.square().mean() * 1e-4
        if self.nan_at is not None and self.calls == self.nan_at:
            fit = fit * float("nan")
        return {"loss": fit + penalty, "fit": fit, "penalty": penalty}

    def before_iteration(self, step: int, max_steps: int) -> None:
        self.hook_calls.append(("before", step, max_steps))

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.hook_calls.append(("after", step, max_steps))


def toy_records(n: int = 32, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    out = []
    for _ in range(n):
        x = rng.normal(size=FEATURES).astype(np.float32)
        out.append({"image": torch.from_numpy(x), "target": torch.from_numpy(x @ w)})
    return out


def make_trainer(objective: nn.Module, records=None, max_epochs: int = 1, batch_size: int = 8, lr: float = 0.05, **kw):
    records = toy_records() if records is None else records
    loader = torch.utils.data.DataLoader(records, batch_size=batch_size, shuffle=False)
    optimizer = kw.pop("optimizer", None) or torch.optim.SGD(objective.parameters(), lr=lr)
    return PretrainingTrainer("cpu", max_epochs, loader, objective, optimizer, progress=False, **kw), optimizer


def record_outputs(trainer: PretrainingTrainer) -> list[dict]:
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    return outputs


# ---------------------------------------------------------------------------------------------------- trainer
def test_loss_decreases_and_hooks_are_called():
    torch.manual_seed(0)
    objective = ToyObjective()
    trainer, _ = make_trainer(objective, max_epochs=8, optimizer=None, lr=0.1)
    outputs = record_outputs(trainer)
    trainer.run()
    losses = [o["loss"] for o in outputs]
    assert len(losses) == 8 * 4
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    total = trainer.max_iterations
    expected = [("before", 0, total), ("after", 0, total), ("before", 1, total), ("after", 1, total)]
    assert objective.hook_calls[:4] == expected
    assert objective.hook_calls[-1] == ("after", total - 1, total)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_terms_are_logged():
    torch.manual_seed(0)
    collect = _Collect()
    stats = StatsHandler(name="toy_stats", output_transform=loss_terms_transform)
    stats.logger.addHandler(collect)
    trainer, _ = make_trainer(ToyObjective(), train_handlers=[stats])
    try:
        trainer.run()
    finally:
        stats.logger.removeHandler(collect)
    output = trainer.state.output
    assert set(output) == {"loss", "fit", "penalty", "grad_norm", "lr"}
    assert all(isinstance(v, float) for v in output.values())
    assert output["loss"] == pytest.approx(output["fit"] + output["penalty"], rel=1e-6)
    logged = [m for m in collect.messages if "Iter:" in m]
    assert len(logged) == 4
    assert all(f"{term}:" in logged[-1] for term in ("loss", "fit", "penalty", "grad_norm", "lr"))


def test_objective_log_values_are_merged_into_the_output():
    objective = ToyObjective()
    objective.log_values = lambda: {"temperature": 0.07}
    trainer, _ = make_trainer(objective, epoch_length=1)
    trainer.run()
    assert trainer.state.output["temperature"] == pytest.approx(0.07)
    assert list(trainer.state.output)[:3] == ["loss", "fit", "penalty"]


def test_gradient_clipping_is_applied():
    torch.manual_seed(0)
    objective = ToyObjective(scale=1e4)
    trainer, _ = make_trainer(objective, grad_clip_norm=0.5, epoch_length=1, lr=0.0)
    trainer.run()
    grads = [p.grad for p in objective.parameters()]
    assert trainer.state.output["grad_norm"] > 10.0  # the norm before clipping is logged
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(0.5, rel=1e-4)


def test_clip_groups_are_clipped_separately():
    torch.manual_seed(0)
    objective = ToyObjective(scale=1e4)
    objective.clip_grad_groups = lambda: {"first": objective.net[0].parameters(), "last": objective.net[2].parameters()}
    trainer, _ = make_trainer(objective, grad_clip_norm=0.5, epoch_length=1, lr=0.0)
    trainer.run()
    for layer in (objective.net[0], objective.net[2]):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in layer.parameters()]))
        assert norm.item() == pytest.approx(0.5, rel=1e-4)
    out = trainer.state.output
    assert out["grad_norm"] == pytest.approx(math.hypot(out["grad_norm/first"], out["grad_norm/last"]), rel=1e-5)


def test_non_finite_loss_raises_and_keeps_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    objective = ToyObjective(nan_at=4)
    trainer, optimizer = make_trainer(objective, max_epochs=2)
    handler = CheckpointHandler(tmp_path, {"objective": objective, "optimizer": optimizer}, save_every_n_iterations=2)
    handler.attach(trainer)
    snapshots: dict[int, dict] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def snapshot(engine):
        snapshots[engine.state.iteration] = {k: v.clone() for k, v in objective.state_dict().items()}

    with pytest.raises(NonFiniteLossError, match=r"non-finite .*fit.* at iteration 4 \(epoch 1\)") as info:
        trainer.run()
    assert info.value.iteration == 4 and "fit" in info.value.non_finite and "loss" in info.value.non_finite
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_00000002.pt"]
    checkpoint = load_checkpoint(tmp_path / "checkpoint_00000002.pt")
    assert checkpoint["trainer"]["iteration"] == 2
    for key, value in checkpoint["objective"].items():
        assert torch.equal(value, snapshots[2][key])
    for key, value in objective.state_dict().items():  # the poisoned step was not applied
        assert torch.equal(value, snapshots[3][key])


def test_non_finite_skip_drops_the_step():
    torch.manual_seed(0)
    objective = ToyObjective(nan_at=2)
    trainer, _ = make_trainer(objective, non_finite="skip")
    before: dict[int, dict] = {}
    trainer.add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: before.__setitem__(e.state.iteration, {k: v.clone() for k, v in objective.state_dict().items()}),
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=2),
        lambda e: before.__setitem__("after2", {k: v.clone() for k, v in objective.state_dict().items()}),
    )
    trainer.run()
    assert trainer.state.metrics["non_finite_steps"] == 1
    assert all(torch.equal(before["after2"][k], v) for k, v in before[2].items())
    assert math.isfinite(trainer.state.output["loss"])


def test_gradient_accumulation_matches_full_batch():
    records = toy_records(8)
    results = []
    for accumulation in (1, 3):
        torch.manual_seed(0)
        objective = ToyObjective()
        trainer, _ = make_trainer(objective, records, grad_accumulation=accumulation, grad_clip_norm=None, lr=0.5)
        trainer.run()
        results.append((objective.state_dict(), trainer.state.output))
    for key, value in results[0][0].items():
        torch.testing.assert_close(results[1][0][key], value, rtol=1e-5, atol=1e-6)
    assert results[1][1]["loss"] == pytest.approx(results[0][1]["loss"], rel=1e-5)


def test_split_batch_slices_tensors_and_lists():
    batch = {"image": torch.arange(10).reshape(5, 2), "report": list("abcde"), "meta": {"id": torch.arange(5)}, "k": 3}
    chunks = split_batch(batch, 2)
    assert [share for _, share in chunks] == pytest.approx([0.4, 0.6])
    assert torch.equal(torch.cat([c["image"] for c, _ in chunks]), batch["image"])
    assert sum((c["report"] for c, _ in chunks), []) == batch["report"]
    assert torch.equal(chunks[1][0]["meta"]["id"], torch.tensor([2, 3, 4]))
    assert all(c["k"] == 3 for c, _ in chunks)
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch(batch, 6)


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(amp_dtype):
    torch.manual_seed(0)
    trainer, _ = make_trainer(ToyObjective(), amp_dtype=amp_dtype, epoch_length=2)
    trainer.run()
    assert (trainer.scaler is not None) == (amp_dtype == "fp16")
    assert math.isfinite(trainer.state.output["loss"])


def test_bad_arguments_are_rejected():
    objective = ToyObjective()
    for kwargs in ({"amp_dtype": "fp8"}, {"non_finite": "ignore"}, {"grad_accumulation": 0}, {"grad_clip_norm": -1}):
        with pytest.raises(ValueError):
            make_trainer(objective, **kwargs)


class _FailOn:
    """Transform raising a DataContractError for the records listed in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def __call__(self, record: dict) -> dict:
        if int(record["id"]) in self.bad:
            raise DataContractError(record["image_path"], "truncated file")
        return {"image": record["image"], "target": record["target"]}


def test_skipped_records_are_counted():
    records = [dict(r, id=i, image_path=f"/data/case{i}.nii.gz") for i, r in enumerate(toy_records(16))]
    dataset = PretrainingDataset(records, _FailOn({3, 9}), on_bad_sample="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=pretraining_collate)
    objective = ToyObjective()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.01)
    trainer = PretrainingTrainer("cpu", 2, loader, objective, optimizer, progress=False)
    trainer.run()
    assert trainer.state.metrics["skipped_records"] == 4  # two bad records, two epochs
    assert trainer.counters["skipped_records"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrapped_objective(tmp_path, monkeypatch):
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.init_distributed("gloo")
    try:
        torch.manual_seed(0)
        inner = ToyObjective()
        objective = nn.parallel.DistributedDataParallel(inner)
        trainer, optimizer = make_trainer(objective, grad_accumulation=2, epoch_length=2)
        handler = CheckpointHandler(tmp_path, {"objective": objective, "optimizer": optimizer})
        handler.attach(trainer)
        trainer.run()
        assert [c[0] for c in inner.hook_calls] == ["before", "after", "before", "after"]
        state = load_checkpoint(find_checkpoints(tmp_path)[-1])["objective"]
        assert set(state) == set(inner.state_dict())  # no "module." prefix
    finally:
        distributed.destroy_distributed()
    # the process goes on single-process: ignite (checkpoints, MONAI metrics) no longer sees the destroyed group
    trainer, optimizer = make_trainer(ToyObjective(), epoch_length=2)
    CheckpointHandler(tmp_path / "after", {"optimizer": optimizer}).attach(trainer)
    trainer.run()
    assert find_checkpoints(tmp_path / "after")


# -------------------------------------------------------------------------------------------------- schedules
def test_cosine_schedule_semantics():
    values = cosine_schedule(1.0, 0.1, total_iters=20, warmup_iters=5, start_warmup_value=0.2, freeze_iters=2)
    assert values.shape == (20,)
    assert np.all(values[:2] == 0)
    np.testing.assert_allclose(values[2:7], np.linspace(0.2, 1.0, 5))
    decay = values[7:]
    n = len(decay)
    np.testing.assert_allclose(decay, [0.1 + 0.45 * (1 + math.cos(math.pi * i / n)) for i in range(n)])
    assert decay[0] == pytest.approx(1.0) and np.all(np.diff(decay) < 0) and decay[-1] > 0.1
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, total_iters=3, warmup_iters=4)


def test_lambda_lr_follows_schedule_per_group():
    head, body = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr_scale": 1.0, "is_last_layer": True},
            {"params": body.parameters(), "lr_scale": 0.5},
        ],
        lr=1e-3,
    )
    scheduler = warmup_cosine_lambda(optimizer, total_iters=12, warmup_iters=3, min_lr=1e-5, freeze_last_layer_iters=2)
    expected = cosine_schedule(1e-3, 1e-5, 12, 3)
    seen = []
    for _ in range(14):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    seen = np.array(seen)
    np.testing.assert_allclose(seen[2:12, 0], expected[2:12], rtol=1e-9)
    assert np.all(seen[:2, 0] == 0)  # frozen last layer
    np.testing.assert_allclose(seen[:12, 1], 0.5 * expected, rtol=1e-9)
    np.testing.assert_allclose(seen[12:, 1], 0.5e-5)  # past the end: min_lr


def test_trainer_steps_lr_schedule_per_iteration():
    torch.manual_seed(0)
    objective = ToyObjective()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    scheduler = warmup_cosine_lambda(optimizer, total_iters=8, warmup_iters=2, min_lr=1e-4)
    trainer, _ = make_trainer(objective, max_epochs=2, optimizer=optimizer, lr_scheduler=scheduler)
    outputs = record_outputs(trainer)
    trainer.run()
    np.testing.assert_allclose([o["lr"] for o in outputs], cosine_schedule(1e-2, 1e-4, 8, 2), rtol=1e-9)


def test_weight_decay_schedule_handler():
    model = nn.Sequential(nn.Linear(FEATURES, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    groups = param_groups_lrd(model, weight_decay=0.04)
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    schedule = cosine_schedule(0.04, 0.4, 8)
    handler = WeightDecayScheduleHandler(optimizer, schedule)
    records = toy_records(16)
    loader = torch.utils.data.DataLoader(records, batch_size=4)

    class Objective(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch):
            return {"loss": (self.model(batch["image"]) - batch["target"]).square().mean()}

    trainer = PretrainingTrainer("cpu", 2, loader, Objective(), optimizer, train_handlers=[handler], progress=False)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append([g["weight_decay"] for g in optimizer.param_groups])
    )
    trainer.run()
    seen = np.array(seen)
    decayed = [i for i, g in enumerate(optimizer.param_groups) if g["wd_multiplier"] == 1.0]
    frozen = [i for i, g in enumerate(optimizer.param_groups) if g["wd_multiplier"] == 0.0]
    assert decayed and frozen
    np.testing.assert_allclose(seen[:, decayed], np.repeat(schedule[:, None], len(decayed), axis=1))
    assert np.all(seen[:, frozen] == 0)


def _check_lrd(model: nn.Module, num_layers: int, decay: float, patch_mult: float, embed_names, block_name) -> None:
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=decay, patch_embed_lr_mult=patch_mult)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_param) == len(named) == sum(len(g["params"]) for g in groups)  # each parameter exactly once
    for name, param in named.items():
        group = by_param[id(param)]
        layer = layer_id_for_vit(name, num_layers)
        expected = decay ** (num_layers + 1 - layer)
        if "patch_embed" in name or "down_projection" in name:
            expected *= patch_mult
        assert group["lr_scale"] == pytest.approx(expected), name
        no_decay = param.ndim <= 1 or name.endswith(".bias") or "norm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    for name in embed_names:
        assert layer_id_for_vit(name, num_layers) == 0, name
    assert layer_id_for_vit(block_name.format(i=2), num_layers) == 3


def test_layer_decay_groups_for_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    model = Dinov2Model(config)
    _check_lrd(
        model,
        3,
        0.9,
        0.2,
        [
            "embeddings.cls_token",
            "embeddings.mask_token",
            "embeddings.position_embeddings",
            "embeddings.patch_embeddings.projection.weight",
        ],
        "encoder.layer.{i}.mlp.fc1.weight",
    )
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=0.9)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.layernorm.weight)] == 1.0
    assert scale[id(model.encoder.layer[0].attention.attention.query.weight)] == pytest.approx(0.9**3)
    assert scale[id(model.embeddings.cls_token)] == pytest.approx(0.9**4)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(model.encoder.layer[1].layer_scale1.lambda1)] == 0.0


def test_layer_decay_groups_for_eva_naming():
    from common.networks.eva import EvaViT

    model = EvaViT(
        spatial_dims=2,
        img_size=16,
        patch_size=8,
        embed_dim=16,
        depth=4,
        num_heads=2,
        num_cls_tokens=1,
        use_abs_pos_embed=True,
    )
    embeddings = ["down_projection.proj.weight", "cls_token", "eva.pos_embed"]
    _check_lrd(model, 4, 0.75, 0.2, embeddings, "eva.blocks.{i}.attn.q_proj.weight")
    groups = param_groups_lrd(model, 0.05, layer_decay=0.75, no_weight_decay_list=["pos_embed", "cls_token"])
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(model.cls_token)] == 0.0 and wd[id(model.eva.pos_embed)] == 0.0
    assert wd[id(model.eva.blocks[0].gamma_1)] == 0.0
    assert wd[id(model.eva.blocks[0].attn.q_proj.weight)] == 0.05


def test_layer_decay_rejects_bad_arguments():
    with pytest.raises(ValueError):
        param_groups_lrd(nn.Linear(2, 2), weight_decay=0.05, layer_decay=1.5)
    with pytest.raises(ValueError):
        param_groups_lrd(nn.Linear(2, 2), weight_decay=-1.0)
