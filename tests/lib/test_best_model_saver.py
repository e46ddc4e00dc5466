"""BestModelSaver: the best model by the key metric, NaN never best, ranking carried across a resume, record beside."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from common.engines.checkpoint import CheckpointHandler, latest_checkpoint
from common.engines.preprocessing_record import read_record
from common.engines.validation import BestModelSaver


def _record() -> dict:
    from common.engines.preprocessing_record import _sha256

    record = {"image": {"pixdim": [1.5, 1.5, 1.5]}}
    return {**record, "sha256": _sha256(record)}


def _validations(saver: BestModelSaver, model: nn.Linear, scores: list[float]) -> None:
    """One evaluator epoch per score; the model's bias is set to the score so the saved file tells which it was."""
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "auc"
    saver.attach(evaluator)
    for score in scores:
        with torch.no_grad():
            model.bias.fill_(score if not math.isnan(score) else -1.0)
        evaluator.state.metrics = {"auc": score}
        evaluator.fire_event(Events.EPOCH_COMPLETED)


def _saved_bias(path: Path) -> float:
    state = torch.load(path, weights_only=True)
    return round(float(state["bias"][0]), 4)


def test_best_model_is_the_best_score_and_nan_never_stays_best(tmp_path: Path):
    model = nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, model, preprocessing=_record())
    _validations(saver, model, [float("nan"), 0.6, 0.55, 0.7, float("nan"), 0.65])
    best = tmp_path / "best_model.pt"
    assert _saved_bias(best) == 0.7
    assert set(torch.load(best, weights_only=True)) == {"weight", "bias"}  # a flat state dict, as models/model.pt
    assert read_record(best) == _record()


def test_a_resumed_saver_keeps_a_better_best_model(tmp_path: Path):
    model = nn.Linear(2, 1)
    before = BestModelSaver(tmp_path, model)
    _validations(before, model, [0.8, 0.6])
    resumed = BestModelSaver(tmp_path, model)
    resumed.load_state_dict(before.state_dict())
    _validations(resumed, model, [0.7])
    assert _saved_bias(tmp_path / "best_model.pt") == 0.8  # MONAI's saver alone would have written 0.7 here
    _validations(resumed, model, [0.9])
    assert _saved_bias(tmp_path / "best_model.pt") == 0.9


def test_the_training_checkpoint_carries_the_ranking(tmp_path: Path):
    model = nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path / "ckpt", model)
    _validations(saver, model, [0.75])
    trainer = Engine(lambda engine, batch: None)
    handler = CheckpointHandler(tmp_path / "ckpt", {"model": model, "best_model": saver})
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    _, checkpoint = latest_checkpoint(tmp_path / "ckpt")
    restored = BestModelSaver(tmp_path / "ckpt", model)
    restored.load_state_dict(checkpoint["best_model"])
    assert restored.state_dict() == saver.state_dict() and restored.state_dict()
