"""Validation curves of a pre-training run, read from its TensorBoard event files.

Every bundle's ``train.yaml`` validates while it trains (its ``validate`` section: the key metric on the datalist's
``validation`` split every ``val_interval`` epochs, written to TensorBoard as ``val_*`` scalars at the training
epoch; ``common/engines/validation.py``). This script reads those scalars back from a run's log folder (searched
recursively, so PRIOR's ``runs/stage<N>`` folders are found too) and writes ``validation_curves.json`` (per tag:
``[[epoch, value], ...]``) and ``validation_curves.png``. A resumed run may validate an epoch twice: the value
written last wins.

Usage::

    python scripts/probe_trajectory.py run --log_dir bundles/raddino_cxr/runs --out_dir /tmp/curves

(An earlier version of this script trained a RAD-DINO run itself and probed copies of its teacher; the probe
trajectories in the RAD-DINO READMEs were measured with it, see the git history.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from common.evaluation.plots import plot_validation_curves

__all__ = ["read_validation_curves", "run"]


def read_validation_curves(log_dir: str | Path, prefix: str = "val_") -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` sorted by step, for every scalar tag starting with ``prefix`` in the event files
    below ``log_dir`` (the value written last wins for a step logged twice).

    Raises:
        FileNotFoundError: if ``log_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{log_dir}: no TensorBoard event file (events.out.tfevents.*) below this folder")
    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if not tag.startswith(prefix):
                continue
            points = latest.setdefault(f"{path.parent.relative_to(log_dir)}/{tag}".removeprefix("./"), {})
            for event in accumulator.Scalars(tag):
                if event.step not in points or event.wall_time >= points[event.step][0]:
                    points[event.step] = (event.wall_time, event.value)
    return {tag: [(step, value) for step, (_, value) in sorted(points.items())] for tag, points in latest.items()}


def run(log_dir: str, out_dir: str | None = None, title: str | None = None) -> Mapping[str, list]:
    """Write ``validation_curves.json`` and ``.png`` for the run logged in ``log_dir`` (into ``out_dir``, default
    ``log_dir``); returns the curves.

    Raises:
        FileNotFoundError: if ``log_dir`` holds no event file.
        ValueError: if the event files hold no validation scalar (validation off, or no ``validation`` split).
    """
    curves = read_validation_curves(log_dir)
    if not curves:
        raise ValueError(
            f"{log_dir}: no val_* scalar in the event files: was validation on (val_interval > 0) and does the "
            "datalist have a labelled 'validation' split?"
        )
    out = Path(out_dir) if out_dir is not None else Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation_curves.json").write_text(json.dumps({"log_dir": str(log_dir), "curves": curves}, indent=1))
    plot_validation_curves(curves, out / "validation_curves.png", title=title or str(log_dir))
    for tag, points in curves.items():
        best_step, best = max(points, key=lambda point: point[1])
        print(
            f"{tag}: {len(points)} points, last {points[-1][1]:.4f} at epoch {points[-1][0]}, "
            f"best {best:.4f} at epoch {best_step}"
        )
    return curves


def _cli_run(*args, **kwargs) -> None:
    run(*args, **kwargs)  # the JSON is written; returning the curves would make fire print them


if __name__ == "__main__":
    import functools

    import fire

    fire.Fire({"run": functools.wraps(run)(_cli_run)})
