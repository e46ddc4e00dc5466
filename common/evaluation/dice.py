"""Per-case, per-class Dice of arg-max segmentations, shared by the segmentation probes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import DiceMetric

__all__ = ["argmax_dice_table"]


@torch.no_grad()
def argmax_dice_table(
    predict: Callable[[torch.Tensor], torch.Tensor],
    masks: torch.Tensor,
    *,
    num_classes: int,
    include_background: bool,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Dice ``(cases, classes)`` of the arg-max of ``predict(case_indices)`` (logits ``(b, num_classes, *spatial)``)
    against the integer label maps ``masks`` ``(cases, *spatial)``, NaN where a case lacks the class (MONAI's
    ``ignore_empty``); mini-batches of ``batch_size`` cases, scored on ``device``."""
    metric = DiceMetric(
        include_background=include_background, reduction="none", num_classes=num_classes, ignore_empty=True
    )
    for batch in torch.arange(len(masks)).split(batch_size):
        prediction = predict(batch).argmax(dim=1, keepdim=True)
        metric(y_pred=prediction, y=masks[batch].to(device).long()[:, None])
    return metric.aggregate().cpu().numpy()
