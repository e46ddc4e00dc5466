"""Training engines: the pre-training trainer, resumable checkpoints and iteration-indexed schedules."""

from __future__ import annotations

from common.engines.checkpoint import CheckpointHandler, export_inference_weights, load_checkpoint
from common.engines.schedules import (
    WeightDecayScheduleHandler,
    cosine_schedule,
    param_groups_lrd,
    warmup_cosine_lambda,
)
from common.engines.trainer import NonFiniteLossError, PretrainingTrainer, loss_terms_transform

__all__ = [
    "CheckpointHandler",
    "NonFiniteLossError",
    "PretrainingTrainer",
    "WeightDecayScheduleHandler",
    "cosine_schedule",
    "export_inference_weights",
    "load_checkpoint",
    "loss_terms_transform",
    "param_groups_lrd",
    "warmup_cosine_lambda",
]
