"""RAD-DINO export: the EMA teacher's CLS encoder (DINOv2 evaluates and releases the teacher)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.engines.checkpoint import export_inference_weights
from common.engines.trainer import unwrap_module
from common.networks.dino import DinoClsEncoder

__all__ = ["export_rad_dino", "teacher_encoder"]

logger = logging.getLogger(__name__)


def teacher_encoder(objective: torch.nn.Module) -> DinoClsEncoder:
    """The inference network around the EMA teacher's backbone."""
    return DinoClsEncoder(unwrap_module(objective).teacher["backbone"])


def export_rad_dino(
    objective: torch.nn.Module, path: str | os.PathLike, preprocessing: Mapping[str, Any] | None = None
) -> Path:
    """Write the teacher's :class:`~common.networks.dino.DinoClsEncoder` as a flat state dict (``models/model.pt``),
    with the preprocessing record beside it when given."""
    out = export_inference_weights(teacher_encoder(objective), path, preprocessing)
    logger.info("exported the teacher encoder to %s", out)
    return out
