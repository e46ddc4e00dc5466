"""RAD-DINO export: the EMA teacher's CLS encoder (DINOv2 evaluates and releases the teacher)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from common.engines.checkpoint import export_inference_weights
from common.engines.trainer import unwrap_module
from common.networks.dino import DinoClsEncoder

__all__ = ["teacher_encoder", "export_rad_dino"]

logger = logging.getLogger(__name__)


def teacher_encoder(objective: torch.nn.Module) -> DinoClsEncoder:
    """The inference network around the EMA teacher's backbone."""
    return DinoClsEncoder(unwrap_module(objective).teacher["backbone"])


def export_rad_dino(objective: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the teacher's :class:`~common.networks.dino.DinoClsEncoder` as a flat state dict (``models/model.pt``)."""
    out = export_inference_weights(teacher_encoder(objective), path)
    logger.info("exported the teacher encoder to %s", out)
    return out
