"""Masked-language-model reconstruction: cross-entropy over the vocabulary at the masked text positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "MaskedTokenLoss", "masked_token_accuracy"]

#: label of positions that are not reconstructed (``transformers``' MLM collators use the same value)
IGNORE_INDEX = -100


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"expected logits (..., V) and labels (...), got {tuple(logits.shape)}, {tuple(labels.shape)}")


class MaskedTokenLoss(nn.Module):
    """Mean cross-entropy over the positions whose label is not :data:`IGNORE_INDEX` (BERT's MLM loss).

    Computed in float32 with autocast off (a 30k-way softmax in bfloat16 loses precision).
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(..., V)`` (e.g. ``(B, L, V)``), ``labels`` ``(...)``; 0 (attached to the graph) when nothing is masked."""
        _check(logits, labels)
        selected = labels != IGNORE_INDEX
        if not bool(selected.any()):
            return logits.sum() * 0.0
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits[selected].float(), labels[selected])


@torch.no_grad()
def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """``(correct, total)`` arg-max predictions at the masked positions."""
    _check(logits, labels)
    selected = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & selected
    return int(correct.sum()), int(selected.sum())
