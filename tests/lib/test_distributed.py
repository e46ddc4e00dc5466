"""Two gloo processes on CPU, each with half a batch, against one process on the whole batch.

Checks :func:`common.distributed.all_gather_with_grad` (torch's autograd all-gather) against the hand-written
gather it replaced, values and gradients; that the losses' cross-rank maths goes through :mod:`common.distributed`
correctly: ClipLoss values and
the DDP-averaged gradients of the embedding layers and of the logit scale, the DINO and iBOT centre updates, and
Sinkhorn-Knopp targets; then whole objectives: COLIPRI (contrastive + report + MAE over a mixed image-only/paired
batch) under DDP and under FSDP2 (:mod:`common.engines.fsdp`), and one RAD-DINO step under FSDP2 (terms, student
gradients, EMA teacher). Float64 throughout, so that 1e-6 agreement tests the maths, not the rounding.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

import common.methods.colipri.objective as colipri_method
from common import distributed
from common.engines import fsdp
from common.losses.clip_loss import ClipLoss
from common.losses.dino_clstoken_loss import DINOClsTokenLoss
from common.losses.ibot_patch_loss import IBOTPatchLoss
from common.methods.colipri.objective import ColipriPretraining
from common.methods.rad_dino.objective import RadDinoPretraining
from common.networks.decoders import MAEDecoder, ReportDecoder
from common.networks.dino import EvaDinoBackbone
from common.networks.eva import eva_tiny
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel

WORLD_SIZE = 2
PER_RANK = 4
TOL = {"atol": 1e-6, "rtol": 1e-6}
TOL32 = {"atol": 1e-5, "rtol": 1e-4}  # the COLIPRI objective runs in float32
# (gather_with_grad, local_loss, masked)
CLIP_CASES = [(True, False, False), (True, False, True), (True, True, False), (True, True, True), (False, False, False)]
# rows per rank for the teacher-side statistics: uneven on purpose
TEACHER_ROWS = (3, 5)
K = 6


class _Towers(nn.Module):
    """Two linear "encoders" and the contrastive loss, wrapped together in DDP as a method module would be."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.clip = ClipLoss(init_logit_scale=5.0)
        self.double()

    def forward(self, x_image: torch.Tensor, x_text: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.clip(self.image(x_image), self.text(x_text), valid)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = WORLD_SIZE * PER_RANK
    valid = torch.ones(n, dtype=torch.bool)
    valid[[1, 2]] = False  # rank 0 holds two image-only rows, rank 1 none
    return {
        "x_image": torch.randn(n, 6, generator=g, dtype=torch.float64),
        "x_text": torch.randn(n, 5, generator=g, dtype=torch.float64),
        "valid": valid,
        "teacher_1": torch.randn(sum(TEACHER_ROWS), K, generator=g),
        "teacher_2": torch.randn(sum(TEACHER_ROWS), K, generator=g),
        "patches": torch.randn(WORLD_SIZE * 2, 5, K, generator=g),
    }


def _rows(rank: int) -> slice:
    start = sum(TEACHER_ROWS[:rank])
    return slice(start, start + TEACHER_ROWS[rank])


def _clip_result(model: nn.Module, data: dict[str, torch.Tensor], part: slice, masked: bool) -> dict:
    valid = data["valid"][part] if masked else None
    loss = model(data["x_image"][part], data["x_text"][part], valid)
    loss.backward()
    grads = {name.removeprefix("module."): p.grad.clone() for name, p in model.named_parameters()}
    return {"loss": loss.detach(), "grads": grads}


def _teacher_results(data: dict[str, torch.Tensor], rows: slice, patches: slice) -> dict[str, torch.Tensor]:
    dino = DINOClsTokenLoss(K)
    dino.update_center(data["teacher_1"][rows])
    dino.update_center(data["teacher_2"][rows])
    ibot = IBOTPatchLoss(K)
    ibot.update_center(data["patches"][patches])
    return {
        "dino_center": dino.center.clone(),
        "ibot_center": ibot.center.clone(),
        "dino_sinkhorn": dino.sinkhorn_knopp_teacher(data["teacher_1"][rows], teacher_temp=0.07),
        "ibot_sinkhorn": ibot.sinkhorn_knopp_teacher(data["teacher_2"][rows], 0.04, n_iterations=5),
    }


class _HandWrittenGather(torch.autograd.Function):
    """The library's all-gather before torch's: backward all-reduces the whole gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def _gather_weights() -> torch.Tensor:
    """Per-rank loss weights over the gathered (WORLD_SIZE * 3, 2) rows: every rank's loss reaches every slice."""
    return torch.randn(WORLD_SIZE, WORLD_SIZE * 3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def _gather_results(rank: int) -> dict[str, torch.Tensor]:
    """Gathered values and input gradients of ``sum(weights[rank] * gather(x) ** 2)``, new and hand-written."""
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64).T  # non-contiguous
    results = {"input": x.detach().clone()}
    for name, gather in (("new", distributed.all_gather_with_grad), ("old", _HandWrittenGather.apply)):
        leaf = x.detach().clone().requires_grad_(True)
        gathered = gather(leaf.contiguous() if name == "old" else leaf)
        (_gather_weights()[rank] * gathered.pow(2)).sum().backward()
        results[f"{name}_value"], results[f"{name}_grad"] = gathered.detach(), leaf.grad.clone()
    return results


# ------------------------------------------------------------------------------------------- whole objectives
VOCAB, TEXT_LEN, NUM_TOKENS = 50, 8, 8  # 16^3 images, 8^3 patches -> 8 tokens
# per-row token counts and report flags (image-only rows carry an empty report: two special tokens); each rank holds
# the same number of report targets (12) and of MAE-masked patches, so per-rank means average to the batch means
REPORT_LENGTHS = [6, 2, 4, 5, 5, 5, 5, 2]
HAS_REPORT = [True, False, True, True, True, True, True, False]


def _colipri() -> ColipriPretraining:
    import transformers

    torch.manual_seed(0)
    backbone = eva_tiny(spatial_dims=3, img_size=16, embed_dim=24, depth=2, num_heads=2)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    )
    model = TwoTowerModel(ImageTower(backbone, projection_dim=24, num_heads=2), TextTower(bert, num_heads=2))
    mae = MAEDecoder(embed_dim=24, decoder_dim=24, depth=2, num_heads=2, patch_size=8, img_size=16)
    report = ReportDecoder(
        VOCAB, image_dim=24, hidden_size=16, num_layers=2, num_heads=2, max_length=16, dropout_rate=0.0
    )
    return ColipriPretraining(model, mae, report, mask_ratio=0.5).eval()  # float32: transformers' masks need it


def _colipri_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    n = len(REPORT_LENGTHS)
    lengths = torch.tensor(REPORT_LENGTHS)
    mask = (torch.arange(TEXT_LEN)[None] < lengths[:, None]).long()
    return {
        "image": torch.randn(n, 1, 16, 16, 16, generator=g),
        "input_ids": torch.randint(3, VOCAB, (n, TEXT_LEN), generator=g) * mask,
        "attention_mask": mask,
        "has_report": torch.tensor(HAS_REPORT),
        # MAE keep indices, fixed per row so that one process and two ranks hide the same patches
        "keep": torch.stack([torch.randperm(NUM_TOKENS, generator=g)[: NUM_TOKENS // 2] for _ in range(n)]),
    }


def _objective_result(objective: nn.Module, batch: dict[str, torch.Tensor], part: slice) -> dict:
    """Terms and full gradients of one forward/backward on ``batch[part]`` (DDP, FSDP or a single process)."""
    keep = batch["keep"][part] if "keep" in batch else None
    original = colipri_method.random_keep_indices
    colipri_method.random_keep_indices = lambda *args, **kwargs: keep
    try:
        terms = objective({k: v[part] for k, v in batch.items() if k != "keep"})
    finally:
        colipri_method.random_keep_indices = original
    terms["loss"].backward()
    grads = {
        name.removeprefix("module."): distributed.full_tensor(p.grad).clone()
        for name, p in objective.named_parameters()
        if p.grad is not None
    }
    return {"terms": {k: v.detach() for k, v in terms.items()}, "grads": grads}


def _rad_dino() -> RadDinoPretraining:
    torch.manual_seed(0)
    backbone = EvaDinoBackbone(
        spatial_dims=3, img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, drop_path_rate=0.0
    )
    objective = RadDinoPretraining(
        backbone,
        head={"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
        koleo_loss_weight=0.0,
        momentum_teacher=0.9,
        warmup_teacher_temp_iters=4,
    )
    return objective.double().train()


def _rad_dino_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n = WORLD_SIZE * 2
    masks = torch.zeros(n, 2, NUM_TOKENS, dtype=torch.bool)
    masks[:, 0, :3] = True
    masks[::2, 1, 4:6] = True  # every rank: one sample with two masked crops, one with one
    return {
        "global_crops": torch.randn(n, 2, 1, 16, 16, 16, generator=g, dtype=torch.float64),
        "local_crops": torch.randn(n, 2, 1, 8, 8, 8, generator=g, dtype=torch.float64),
        "masks": masks,
    }


def _rad_dino_step(objective: RadDinoPretraining, batch: dict[str, torch.Tensor], part: slice) -> dict:
    """Terms, student gradients, then an SGD step and the EMA update: the teacher's full state."""
    objective.before_iteration(0, 10)
    result = _objective_result(objective, batch, part)
    torch.optim.SGD(objective.student.parameters(), lr=0.1).step()
    objective.after_optimizer_step(0, 10)
    teacher = {k: distributed.full_tensor(v).clone() for k, v in objective.teacher.state_dict().items()}
    result["grads"] = {k: v for k, v in result["grads"].items() if k.startswith("student.")}
    return {**result, "teacher": teacher, "center": objective.dino_loss.center.clone()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    assert distributed.init_distributed(backend="gloo")
    try:
        data = _data()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results: dict = {"gather": _gather_results(rank)}
        model = nn.parallel.DistributedDataParallel(_Towers())
        for gather_with_grad, local_loss, masked in CLIP_CASES:
            model.module.clip.gather_with_grad, model.module.clip.local_loss = gather_with_grad, local_loss
            model.zero_grad(set_to_none=True)
            results[f"clip_{gather_with_grad}_{local_loss}_{masked}"] = _clip_result(model, data, part, masked)
        results.update(_teacher_results(data, _rows(rank), slice(rank * 2, rank * 2 + 2)))
        half = len(REPORT_LENGTHS) // WORLD_SIZE
        colipri_part = slice(rank * half, (rank + 1) * half)
        ddp = nn.parallel.DistributedDataParallel(_colipri())
        results["colipri_ddp"] = _objective_result(ddp, _colipri_batch(), colipri_part)
        unsharded = _colipri()
        if rank == 1:  # shard_objective starts every rank from rank 0's weights
            with torch.no_grad():
                for p in unsharded.parameters():
                    p.add_(1.0)
        sharded = fsdp.shard_objective(unsharded, "cpu")
        results["colipri_fsdp_units"] = torch.tensor(len(fsdp.transformer_blocks(_colipri())))
        results["colipri_fsdp"] = _objective_result(sharded, _colipri_batch(), colipri_part)
        results["rad_dino_fsdp"] = _rad_dino_step(
            fsdp.shard_objective(_rad_dino(), "cpu"), _rad_dino_batch(), slice(rank * 2, rank * 2 + 2)
        )
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.destroy_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("distributed")
    # a fork server imports torch once for both ranks (spawn would import it in each, ~4 s of CPU apiece)
    multiprocessing.set_forkserver_preload(
        ["torch", "torch.nn.parallel", "pytest", "transformers", "common.losses", "common.methods.colipri"]
    )
    torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True, start_method="forkserver"
    )
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def test_all_gather_with_grad_matches_the_hand_written_gather(rank_results: list[dict]) -> None:
    """torch's all-gather (backward: reduce-scatter) gives the old gather's values and gradients, bit for bit."""
    inputs = torch.cat([r["gather"]["input"] for r in rank_results])
    weights = _gather_weights()
    for rank, result in enumerate(rank_results):
        result = result["gather"]
        assert torch.equal(result["new_value"], inputs) and torch.equal(result["old_value"], inputs)
        assert torch.equal(result["new_grad"], result["old_grad"])
        # d/dx_r of sum_q sum(w_q * gathered ** 2): rank r's rows of sum_q w_q, times 2 x_r
        rows = slice(rank * 3, (rank + 1) * 3)
        torch.testing.assert_close(result["new_grad"], 2 * inputs[rows] * weights.sum(0)[rows], **TOL)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x  # one process: the identity


@pytest.mark.parametrize("gather_with_grad, local_loss, masked", CLIP_CASES)
def test_clip_loss_and_gradients_match_single_process(
    rank_results: list[dict], gather_with_grad: bool, local_loss: bool, masked: bool
) -> None:
    data = _data()
    expected = _clip_result(_Towers(), data, slice(None), masked)
    ranks = [r[f"clip_{gather_with_grad}_{local_loss}_{masked}"] for r in rank_results]
    if local_loss:  # each rank holds its share; their mean is the global loss
        torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), expected["loss"], **TOL)
    else:
        for r in ranks:
            torch.testing.assert_close(r["loss"], expected["loss"], **TOL)
    for r in ranks:
        for name, grad in expected["grads"].items():
            if not gather_with_grad and name != "clip.log_logit_scale":
                # open_clip's no-grad gather: each rank differentiates through its own rows only
                grad = grad / WORLD_SIZE
            torch.testing.assert_close(r["grads"][name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_centres_and_sinkhorn_match_single_process(rank_results: list[dict]) -> None:
    data = _data()
    expected = _teacher_results(data, slice(0, sum(TEACHER_ROWS)), slice(None))
    for rank, result in enumerate(rank_results):
        torch.testing.assert_close(result["dino_center"], expected["dino_center"], **TOL)
        torch.testing.assert_close(result["ibot_center"], expected["ibot_center"], **TOL)
        for key in ("dino_sinkhorn", "ibot_sinkhorn"):
            torch.testing.assert_close(result[key], expected[key][_rows(rank)], **TOL)


def _assert_matches_single_process(ranks: list[dict], expected: dict, tol: dict) -> None:
    for name, value in expected["terms"].items():  # every term is a per-rank mean: their mean is the batch mean
        torch.testing.assert_close(
            torch.stack([r["terms"][name] for r in ranks]).mean(), value, **tol, msg=lambda m, n=name: f"{n}: {m}"
        )
    for result in ranks:
        assert result["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_colipri_objective_matches_single_process(rank_results: list[dict], wrapper: str) -> None:
    """Contrastive (gathered negatives), report and MAE terms and every gradient, DDP and FSDP2 alike (rank 1's
    FSDP copy starts from different weights: sharding must broadcast rank 0's)."""
    batch = _colipri_batch()
    expected = _objective_result(_colipri(), batch, slice(None))
    assert {"contrastive", "report", "mae"} <= set(expected["terms"])
    assert "clip_loss.log_logit_scale" in expected["grads"]  # the replicated 0-d parameter of FSDP too
    _assert_matches_single_process([r[f"colipri_{wrapper}"] for r in rank_results], expected, TOL32)


def test_fsdp_units_are_transformer_blocks(rank_results: list[dict]) -> None:
    blocks = fsdp.transformer_blocks(_colipri())
    # 2 EVA blocks, 2 BERT layers, 2 MAE-decoder blocks, 2 report-decoder layers; no block inside another
    assert len(blocks) == 8 and int(rank_results[0]["colipri_fsdp_units"]) == 8
    ids = {id(b) for b in blocks}
    assert not any(id(m) in ids for b in blocks for m in list(b.modules())[1:])


def test_rad_dino_fsdp_step_matches_single_process(rank_results: list[dict]) -> None:
    """DINO + iBOT terms, student gradients, the synchronised centre and the sharded EMA teacher after one step."""
    expected = _rad_dino_step(_rad_dino(), _rad_dino_batch(), slice(None))
    ranks = [r["rad_dino_fsdp"] for r in rank_results]
    _assert_matches_single_process(ranks, expected, TOL)
    for result in ranks:
        torch.testing.assert_close(result["center"], expected["center"], **TOL)
        for name, value in expected["teacher"].items():
            torch.testing.assert_close(result["teacher"][name], value, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_single_process_helpers_and_fsdp_needs_torchrun(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert not distributed.is_enabled() and not distributed.init_distributed()
    assert distributed.ddp_device_ids("cpu") is None and distributed.ddp_device_ids("cuda:1") == [1]
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.local_device() == expected
    objective = _colipri()
    with pytest.raises(RuntimeError, match="torchrun"):
        fsdp.shard_objective(objective, "cpu")
    assert not fsdp.is_sharded(objective) and fsdp.full_state_dicts(objective) is objective
    names = {type(b).__name__ for b in fsdp.transformer_blocks(objective, block_types=["EvaBlock"])}
    assert names == {"EvaBlock"}


def test_destroy_waits_for_peers_unless_an_exception_propagates(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(distributed, "is_enabled", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.destroy_distributed()
    assert calls == ["barrier", "destroy"]  # every rank leaves together
    calls.clear()
    with pytest.raises(ValueError):
        try:
            raise ValueError("rank failed")
        finally:
            distributed.destroy_distributed()
    assert calls == ["destroy"]  # a failing rank does not wait for peers that may never arrive
