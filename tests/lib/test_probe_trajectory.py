"""``scripts/probe_trajectory.py``: the validation curves of a run read back from its TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script(script_module):
    return script_module("probe_trajectory")


def _write(log_dir: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for tag, points in scalars.items():
            for step, value in points:
                writer.add_scalar(tag, value, global_step=step)


def test_reads_validation_scalars_of_every_event_file_latest_value_wins(script, tmp_path):
    runs = tmp_path / "runs"
    _write(runs, {"loss": [(1, 3.0), (2, 2.0)], "val_zero_shot_auroc": [(2, 0.51), (4, 0.55)]})
    _write(runs, {"val_zero_shot_auroc": [(4, 0.57), (6, 0.60)], "val_image_to_report_R5": [(4, 0.1)]})  # resumed
    _write(runs / "stage2", {"val_zero_shot_auroc": [(1, 0.62)]})  # PRIOR's per-stage folders
    curves = script.run(str(runs), out_dir=str(tmp_path / "out"))
    assert curves == {
        "val_zero_shot_auroc": [(2, pytest.approx(0.51)), (4, pytest.approx(0.57)), (6, pytest.approx(0.60))],
        "val_image_to_report_R5": [(4, pytest.approx(0.1))],
        "stage2/val_zero_shot_auroc": [(1, pytest.approx(0.62))],
    }
    saved = json.loads((tmp_path / "out" / "validation_curves.json").read_text())
    assert saved["curves"]["val_zero_shot_auroc"][-1] == [6, pytest.approx(0.60)]
    assert (tmp_path / "out" / "validation_curves.png").stat().st_size > 0


def test_names_a_folder_without_events_or_without_validation(script, tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
        script.run(str(tmp_path))
    _write(tmp_path / "runs", {"loss": [(1, 1.0)]})
    with pytest.raises(ValueError, match="no val_\\* scalar"):
        script.run(str(tmp_path / "runs"))
