"""Two gloo processes on CPU, each with half a batch, against one process on the whole batch.

Checks that the losses' cross-rank maths goes through :mod:`common.distributed` correctly: ClipLoss values and
the DDP-averaged gradients of the embedding layers and of the logit scale, the DINO and iBOT centre updates, and
Sinkhorn-Knopp targets. Float64 throughout, so that 1e-6 agreement tests the maths, not the rounding.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from common import distributed
from common.losses.clip_loss import ClipLoss
from common.losses.dino_clstoken_loss import DINOClsTokenLoss
from common.losses.ibot_patch_loss import IBOTPatchLoss

WORLD_SIZE = 2
PER_RANK = 4
TOL = {"atol": 1e-6, "rtol": 1e-6}
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


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    assert distributed.init_distributed(backend="gloo")
    try:
        data = _data()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results: dict = {}
        model = nn.parallel.DistributedDataParallel(_Towers())
        for gather_with_grad, local_loss, masked in CLIP_CASES:
            model.module.clip.gather_with_grad, model.module.clip.local_loss = gather_with_grad, local_loss
            model.zero_grad(set_to_none=True)
            results[f"clip_{gather_with_grad}_{local_loss}_{masked}"] = _clip_result(model, data, part, masked)
        results.update(_teacher_results(data, _rows(rank), slice(rank * 2, rank * 2 + 2)))
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
    multiprocessing.set_forkserver_preload(["torch", "torch.nn.parallel", "pytest", "common.losses"])
    torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True, start_method="forkserver"
    )
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


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
