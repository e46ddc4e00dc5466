"""Optimizer parameter groups for AdamW-style pre-training (no decay on biases, norms, scales and tokens)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["param_groups"]


def _lr_scale(name: str, lr_scales: Mapping[str, float]) -> tuple[int, float]:
    """Index (1-based, 0 = none) and value of the first ``lr_scales`` entry whose module path contains ``name``."""
    dotted = f".{name}"
    for index, (prefix, scale) in enumerate(lr_scales.items(), start=1):
        if f".{prefix.strip('.')}." in dotted:
            return index, float(scale)
    return 0, 1.0


def param_groups(module: nn.Module, weight_decay: float, lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW groups: no weight decay on 1-d parameters, biases and tokens; learning-rate scales by module path.

    Args:
        module: the objective (trainable parameters only are grouped).
        weight_decay: decay of the other parameters.
        lr_scales: ``{module path: scale}``, e.g. ``{"text_encoder.backbone": 0.1}`` for a pretrained text tower
            that learns 10x slower; a parameter takes the first path found in its name, else 1. Each group carries
            ``lr_scale`` (read by :mod:`common.engines.schedules`).
    """
    lr_scales = dict(lr_scales or {})
    groups: dict[tuple[bool, int], tuple[float, list[nn.Parameter]]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or "token" in name.split(".")[-1]
        index, scale = _lr_scale(name, lr_scales)
        groups.setdefault((no_decay, index), (scale, []))[1].append(param)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        for (no_decay, _), (scale, params) in sorted(groups.items(), key=lambda item: item[0])
    ]
