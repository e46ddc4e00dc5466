"""Deterministic toy pre-training run for the resume tests (importable, or a script the tests SIGKILL).

Every random stream a real objective uses is exercised: the dataset augments with a MONAI random transform and a
transform drawing from the global torch/numpy/python generators; the objective uses dropout (torch), numpy noise,
python ``random``, a per-step schedule read in ``before_iteration`` and an EMA teacher updated in
``after_optimizer_step``; AdamW with a warm-up cosine ``LambdaLR``. Each iteration's loss is appended to
``<out_dir>/losses.txt`` as ``<iteration> <float.hex()>``.

    python tests/lib/_resume_worker.py OUT_DIR [--resume] [--stall-after N] [--num-workers K]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __name__ == "__main__":  # run as a script from anywhere: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ignite.engine import Events
from monai.transforms import Compose, RandGaussianNoised

from common import distributed
from common.data.dataset import PretrainingDataset, ResumableSampler, pretraining_collate
from common.engines.checkpoint import CheckpointHandler
from common.engines.schedules import cosine_schedule, warmup_cosine_lambda
from common.engines.trainer import PretrainingTrainer

NUM_RECORDS = 20
BATCH_SIZE = 4  # -> epoch_length 5
MAX_EPOCHS = 3
SAVE_EVERY = 3
FEATURES = 12


class GlobalRngJitterd:
    """Adds noise drawn from the *global* torch, numpy and python generators (as careless transforms do)."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        jitter = torch.rand(FEATURES) * 0.05 + float(np.random.uniform(0, 0.05)) + random.uniform(0, 0.05)
        d["image"] = torch.as_tensor(d["image"]) + jitter
        return d


class ToyObjective(nn.Module):
    """Student MLP with dropout, an EMA teacher and three weighted terms."""

    def __init__(self, max_iterations: int) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(FEATURES, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, FEATURES))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.temperature_schedule = cosine_schedule(0.5, 0.1, max_iterations, warmup_iters=2, start_warmup_value=1.0)
        self.momentum_schedule = cosine_schedule(0.9, 1.0, max_iterations)
        self.temperature = float(self.temperature_schedule[0])

    def before_iteration(self, step: int, max_steps: int) -> None:
        self.temperature = float(self.temperature_schedule[step])

    @torch.no_grad()
    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        m = float(self.momentum_schedule[step])
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1 - m)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"].float()
        noise = torch.from_numpy(np.random.normal(0, 0.01, size=tuple(x.shape)).astype(np.float32)).to(x.device)
        out = self.student(x + noise)
        with torch.no_grad():
            target = self.teacher(x)
        recon = (out - x).square().mean()
        distill = (out / self.temperature - target / self.temperature).square().mean() * 0.01
        reg = self.student[0].weight.square().mean() * random.uniform(0.5, 1.5) * 1e-3
        return {"loss": recon + distill + reg, "recon": recon, "distill": distill, "reg": reg}


def records() -> list[dict]:
    rng = np.random.default_rng(1234)
    return [{"image": rng.normal(size=FEATURES).astype(np.float32), "id": i} for i in range(NUM_RECORDS)]


def run_training(
    out_dir: str | Path,
    resume: bool | str = False,
    stall_after: int | None = None,
    num_workers: int = 0,
    keep_last: int | None = 2,
    max_epochs: int = MAX_EPOCHS,
    device: str = "cpu",
    save_every: int = SAVE_EVERY,
) -> dict[int, float]:
    """Train the toy objective deterministically; returns ``{iteration: loss}`` of the iterations run.

    Inside an initialised process group the objective is DDP-wrapped, the sampler shards by rank, every rank
    seeds its generators differently and logs its own losses to ``losses_rank<r>.txt``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        rank, world_size = distributed.get_rank(), distributed.get_world_size()
        random.seed(rank)
        np.random.seed(rank)
        torch.manual_seed(rank)
        transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.1), GlobalRngJitterd()])
        dataset = PretrainingDataset(records(), transform, seed=7)
        sampler = ResumableSampler(len(dataset), shuffle=True, seed=3, rank=rank, world_size=world_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=num_workers, collate_fn=pretraining_collate
        )
        max_iterations = max_epochs * len(loader)
        objective = ToyObjective(max_iterations).to(device)
        if distributed.is_enabled():
            objective = nn.parallel.DistributedDataParallel(objective)
        optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3, weight_decay=0.05)
        lr_scheduler = warmup_cosine_lambda(optimizer, max_iterations, warmup_iters=3, min_lr=1e-5)
        checkpoints = CheckpointHandler(
            out_dir / "checkpoints",
            {"objective": objective, "optimizer": optimizer, "lr_scheduler": lr_scheduler},
            save_every_n_iterations=save_every,
            keep_last=keep_last,
            resume=resume,
        )
        trainer = PretrainingTrainer(
            device, max_epochs, loader, objective, optimizer, lr_scheduler, train_handlers=[checkpoints], progress=False
        )
        losses: dict[int, float] = {}
        log = open(out_dir / ("losses.txt" if world_size == 1 else f"losses_rank{rank}.txt"), "a", encoding="utf-8")

        @trainer.on(Events.ITERATION_COMPLETED)
        def record(engine: PretrainingTrainer) -> None:
            loss = engine.state.output["loss"]
            losses[engine.state.iteration] = loss
            log.write(f"{engine.state.iteration} {float(loss).hex()}\n")
            log.flush()
            if stall_after is not None and engine.state.iteration >= stall_after:
                time.sleep(3600)  # wait to be killed

        try:
            trainer.run()
        finally:
            log.close()
        return losses
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])


def read_losses(path: str | Path) -> dict[int, float]:
    """``{iteration: loss}`` from a ``losses.txt`` (later lines win)."""
    out: dict[int, float] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        iteration, value = line.split()
        out[int(iteration)] = float.fromhex(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stall-after", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run_training(
        args.out_dir,
        resume=args.resume,
        stall_after=args.stall_after,
        num_workers=args.num_workers,
        device=args.device,
    )


if __name__ == "__main__":
    main()
