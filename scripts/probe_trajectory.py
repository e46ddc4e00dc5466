"""Frozen-teacher probes during a RAD-DINO training run: does the encoder get better than its random initialisation,
and when?

Builds the bundle's ``train.yaml`` (+ an overlay, ``demo`` by default) and ``evaluate.yaml``, then every
``probe_every`` epochs (and before the first step) embeds the evaluation split with a copy of the EMA teacher and runs
the linear and kNN probes of :func:`common.evaluation.evaluate_embeddings` against a randomly initialised encoder of
the same architecture (paired bootstrap of the AUROC differences). The epoch-0 row probes the teacher the run starts
from, so it also shows how much two random initialisations differ. ``time_budget_s`` ends the run early (the schedules
still follow ``max_epochs``), so the same command fits a fixed slot on a GPU.

Usage::

    python scripts/probe_trajectory.py run --bundle raddino_ct --max_epochs 60 --probe_every 5 --out_dir runs/probe_ct
    python scripts/probe_trajectory.py run --bundle raddino_cxr --overrides '{"lr": 0.002}' --time_budget_s 300

Writes ``probe_trajectory.json`` (one row per probe: epoch, iteration, seconds, both probes, the random-init
baseline's, the paired differences, the loss terms of the last step, how far the teacher's weights moved) and
``probe_trajectory.png``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from common.bundle_support import locate_bundle_root
from common.engines.trainer import loss_terms_transform
from common.evaluation.harness import evaluate_embeddings
from common.evaluation.plots import plot_probe_trajectory
from common.data.dataset import records_loader
from common.evaluation.encoder import global_features
from common.methods.rad_dino.export import teacher_encoder
from common.networks.dino import DinoClsEncoder

__all__ = ["TrajectoryProbe", "run"]

logger = logging.getLogger("probe_trajectory")
PROBES = ("linear_probe", "knn_probe")


class TrajectoryProbe:
    """Probes the teacher of a running RAD-DINO objective against fixed random-init baseline features."""

    def __init__(self, parser: ConfigParser, n_bootstrap: int, num_workers: int, batch_size: int = 32) -> None:
        self.objective = parser.get_parsed_content("objective")
        self.device = parser.get_parsed_content("device")
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.n_bootstrap = n_bootstrap
        transform = parser.get_parsed_content("evaluate#transform")
        self.loaders = [
            records_loader(parser.get_parsed_content(f"evaluate#{split}_records"), transform, batch_size, num_workers)
            for split in ("train", "test")
        ]
        baseline = DinoClsEncoder(parser.get_parsed_content("evaluate#baseline_backbone"))
        self.baseline = [f["embedding"] for f in self._features(baseline)]
        self.initial = [p.detach().clone() for p in self._teacher_backbone().parameters()]
        self.history: list[dict[str, Any]] = []

    def _teacher_backbone(self) -> torch.nn.Module:
        return teacher_encoder(self.objective).backbone

    @torch.no_grad()
    def teacher_change(self) -> float:
        """``||theta - theta_0|| / ||theta_0||`` over the teacher backbone's parameters."""
        current = list(self._teacher_backbone().parameters())
        moved = sum(float((p.float() - q.float()).square().sum()) for p, q in zip(current, self.initial))
        return (moved / sum(float(q.float().square().sum()) for q in self.initial)) ** 0.5

    def _features(self, encoder: torch.nn.Module) -> list[dict[str, Any]]:
        return global_features(encoder, self.loaders, self.device, amp_dtype=self.amp_dtype, progress=False)

    def __call__(self, epoch: int, iteration: int, elapsed_s: float, output: Any = None, final: bool = False) -> dict:
        """Probe a copy of the current teacher (the run's own teacher is left in its mode and place)."""
        encoder = DinoClsEncoder(copy.deepcopy(self._teacher_backbone()))
        train, test = self._features(encoder)
        results = evaluate_embeddings(
            test["embedding"], test["labels"], None, train_emb=train["embedding"], train_labels=train["labels"],
            baseline_train_emb=self.baseline[0], baseline_test_emb=self.baseline[1], baseline_name="random_init",
            n_bootstrap=1000 if final else self.n_bootstrap, seed=0, embedding_map=None,
        )
        row: dict[str, Any] = {"epoch": epoch, "iteration": iteration, "elapsed_s": round(elapsed_s, 1),
                               "teacher_change": self.teacher_change()}
        for probe in PROBES:
            for key in (probe, f"random_init_{probe}", f"{probe}_vs_random_init"):
                row[key] = results[key]["macro"]
        row["loss_terms"] = loss_terms_transform(output) if output is not None else None
        self.history.append(row)
        diff = row["linear_probe_vs_random_init"]
        low, high = diff["difference_ci"] or (None, None)
        logger.info(
            "epoch %d (iteration %d, %.0f s): linear %s vs random init %s, paired difference %s [%s, %s] P(<=0) %s; "
            "kNN %s vs %s", epoch, iteration, elapsed_s, _num(row["linear_probe"]["auroc"]),
            _num(row["random_init_linear_probe"]["auroc"]), _num(diff["difference"], "+.3f"), _num(low, "+.3f"),
            _num(high, "+.3f"), _num(diff["p_not_better"], ".2f"), _num(row["knn_probe"]["auroc"]),
            _num(row["random_init_knn_probe"]["auroc"]),
        )
        return row


def _num(value: float | None, spec: str = ".3f") -> str:
    """A metric for the log line; ``n/a`` where it is undefined (no resamples, a single class)."""
    return "n/a" if value is None else format(value, spec)


def run(
    bundle: str = "raddino_cxr",
    overlay: str | None = "demo",
    max_epochs: int | None = None,
    probe_every: int = 4,
    time_budget_s: float | None = None,
    out_dir: str = "probe_trajectory",
    num_workers: int | None = None,
    n_bootstrap: int = 200,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``bundle`` with probes every ``probe_every`` epochs; the last probe uses 1000 bootstrap resamples.

    Args:
        bundle: ``raddino_cxr`` or ``raddino_ct``.
        overlay: a config of the bundle laid over ``train.yaml`` (``demo``), or None for the paper settings.
        max_epochs: overrides the config's (the schedules follow it).
        probe_every: epochs between probes.
        time_budget_s: stop training after the first epoch that ends past this many seconds (probed then).
        out_dir: where ``probe_trajectory.json`` and ``.png`` go (the run's checkpoints and logs go below it).
        num_workers: training data-loader workers (default: the config's); the probe loaders use the same.
        n_bootstrap: bootstrap resamples of the intermediate probes.
        overrides: further config overrides, ``{"id": value}``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = Path(locate_bundle_root(bundle)) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f"{name}.yaml") for name in ("train", overlay, "evaluate") if name])
    settings: dict[str, Any] = {"output_dir": str(out / "run"), "ckpt_dir": str(out / "run" / "models"), **(overrides or {})}
    if max_epochs is not None:
        settings["max_epochs"] = max_epochs
    if num_workers is not None:
        settings["num_workers"] = num_workers
    for key, value in settings.items():
        parser[key] = value
    trainer: Engine = parser.get_parsed_content("train#trainer")
    probe = TrajectoryProbe(parser, n_bootstrap, parser.get_parsed_content("num_workers"))
    epochs = parser.get_parsed_content("max_epochs")
    start = time.time()

    def record(final: bool = False) -> None:
        state = trainer.state
        probe(state.epoch, state.iteration, time.time() - start, state.output, final=final)
        (out / "probe_trajectory.json").write_text(json.dumps(
            {"bundle": bundle, "overlay": overlay, "max_epochs": epochs, "settings": settings, "history": probe.history},
            indent=1, default=str,
        ))
        plot_probe_trajectory(probe.history, out / "probe_trajectory.png", title=f"{bundle} ({overlay or 'paper'})")

    @trainer.on(Events.STARTED)
    def _first(engine: Engine) -> None:
        if not probe.history:  # a resumed run starts with its own epoch
            record()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _every(engine: Engine) -> None:
        over = time_budget_s is not None and time.time() - start > time_budget_s
        last = over or engine.state.epoch == epochs
        if last or engine.state.epoch % probe_every == 0:
            record(final=last)
        if over and engine.state.epoch != epochs:
            logger.info("time budget reached after epoch %d: stopping", engine.state.epoch)
            engine.terminate()

    trainer.run()
    return probe.history


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)  # the JSON is written; returning the history would make fire print it


if __name__ == "__main__":
    import functools

    import fire

    fire.Fire({"run": functools.wraps(run)(_cli_run)})
