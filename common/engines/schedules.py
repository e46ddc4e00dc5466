"""Schedules indexed by optimizer step: learning rate, weight decay, layer-wise lr decay, and values such as
teacher momentum or temperature.

* :func:`cosine_schedule` returns one value per iteration with the semantics of DINOv2's ``CosineScheduler``
  (``dinov2/utils/utils.py``): ``freeze_iters`` zeros, then a linear warm-up from ``start_warmup_value`` that
  reaches ``base`` on its last step (``numpy.linspace``), then ``final + (base - final) * (1 + cos(pi * i / n)) / 2``
  for ``i = 0 .. n - 1``; past ``total_iters`` the value is ``final``. Objectives index it by the 0-based step the
  trainer passes to their hooks.
* :func:`warmup_cosine_lambda` builds a ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer step (the
  trainer does that), so step ``i`` uses the value at index ``i``. Every param group follows the schedule from its
  own initial ``lr`` to ``min_lr``, times its ``lr_scale`` (set by :func:`param_groups_lrd`), which is how DINOv2
  applies its ``lr_multiplier``.
* :func:`param_groups_lrd` builds AdamW param groups with layer-wise lr decay (Clark et al. ELECTRA; Bao et al. BEiT;
  He et al. MAE; DINOv2 ``get_params_groups_with_decay``) for ViTs named like transformers' ``Dinov2Model``
  (``embeddings.*``, ``encoder.layer.{i}.*``) or our :class:`~common.networks.eva.EvaViT`
  (``down_projection.*``, ``cls_token``, ``eva.blocks.{i}.*``).
* :class:`WeightDecayScheduleHandler` sets ``param_group["weight_decay"]`` before every step (DINOv2: 0.04 -> 0.4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "WeightDecayScheduleHandler",
    "cosine_schedule",
    "layer_id_for_vit",
    "param_groups_lrd",
    "warmup_cosine_lambda",
]

#: Name fragments of ViT input-side parameters (layer 0 of layer-wise decay): timm/DINOv2/EVA, transformers, MONAI.
EMBEDDING_KEYS: tuple[str, ...] = (
    "patch_embed",  # timm/DINOv2 ``patch_embed``, MONAI ``patch_embedding``, transformers ``patch_embeddings``
    "down_projection",  # Primus / EvaViT patch embedding
    "pos_embed",
    "position_embedding",
    "cls_token",
    "mask_token",
    "register_tokens",
    "embeddings.",  # transformers ``embeddings.*`` (ViT/DINOv2 and BERT word embeddings)
)
#: Name fragments of patch-embedding weights, which DINOv2 trains with ``patch_embed_lr_mult``.
PATCH_EMBED_KEYS: tuple[str, ...] = ("patch_embed", "down_projection")
_BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:blocks|layer|layers)\.(\d+)(?:\.|$)")


def _check_iters(total_iters: int, warmup_iters: int, freeze_iters: int = 0) -> None:
    if total_iters < 0 or warmup_iters < 0 or freeze_iters < 0:
        raise ValueError(
            f"iteration counts must be >= 0, got total={total_iters}, warmup={warmup_iters}, freeze={freeze_iters}"
        )
    if warmup_iters + freeze_iters > total_iters:
        raise ValueError(
            f"warmup_iters + freeze_iters ({warmup_iters} + {freeze_iters}) exceed total_iters ({total_iters})"
        )


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup_value: float = 0.0,
    freeze_iters: int = 0,
) -> np.ndarray:
    """Per-iteration values: ``freeze_iters`` zeros, linear warm-up to ``base``, then half-cosine to ``final``.

    Args:
        base: value at the end of warm-up (peak).
        final: value the cosine approaches at ``total_iters``.
        total_iters: length of the returned array.
        warmup_iters: linear warm-up length; its last value is ``base``.
        start_warmup_value: first warm-up value.
        freeze_iters: leading zeros (DINOv2's frozen last layer).

    Returns:
        ``float64`` array of length ``total_iters``.

    Raises:
        ValueError: on negative lengths or when warm-up and freeze exceed ``total_iters``.
    """
    _check_iters(total_iters, warmup_iters, freeze_iters)
    decay_iters = total_iters - warmup_iters - freeze_iters
    steps = np.arange(decay_iters, dtype=np.float64)
    decay = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * steps / max(decay_iters, 1)))
    return np.concatenate((np.zeros(freeze_iters), np.linspace(start_warmup_value, base, warmup_iters), decay)).astype(
        np.float64
    )


def _lambda_lr(
    optimizer: torch.optim.Optimizer,
    build: Callable[[float], np.ndarray],
    min_lr: float,
    freeze_last_layer_iters: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """One multiplier closure per param group: ``lr_scale * schedule(base_lr -> min_lr)[step] / base_lr``."""
    lambdas = []
    for group in optimizer.param_groups:
        base_lr = float(group.get("initial_lr", group["lr"]))
        scale = float(group.get("lr_scale", 1.0))
        values = build(base_lr)
        multipliers = (values / base_lr * scale).tolist() if base_lr > 0 else [0.0] * len(values)
        after_end = (min_lr / base_lr * scale) if base_lr > 0 else 0.0
        frozen = freeze_last_layer_iters if group.get("is_last_layer", False) else 0
        lambdas.append(_make_multiplier(multipliers, after_end, frozen))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _make_multiplier(multipliers: list[float], after_end: float, frozen: int) -> Callable[[int], float]:
    # a plain closure: LambdaLR.state_dict() stores nothing for functions, so checkpoints stay weights_only-loadable
    def multiplier(step: int) -> float:
        if step < frozen:
            return 0.0
        return multipliers[step] if step < len(multipliers) else after_end

    return multiplier


def warmup_cosine_lambda(
    optimizer: torch.optim.Optimizer,
    total_iters: int,
    warmup_iters: int = 0,
    min_lr: float = 0.0,
    start_warmup_lr: float = 0.0,
    freeze_last_layer_iters: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``min_lr`` for every param group, as a ``LambdaLR`` (step it per iteration).

    Each group goes from ``start_warmup_lr`` to its own initial ``lr`` over ``warmup_iters`` and then down to
    ``min_lr``, all multiplied by the group's ``lr_scale`` (1 if absent). Groups flagged ``is_last_layer`` (see
    :func:`param_groups_lrd`) get lr 0 for the first ``freeze_last_layer_iters`` steps (DINOv2's
    ``freeze_last_layer_epochs``).

    Args:
        optimizer: the optimizer whose groups are scheduled (their current ``lr`` is the peak).
        total_iters: number of optimizer steps of the run; later steps stay at ``min_lr``.
        warmup_iters: warm-up length in steps.
        min_lr: final learning rate (absolute, before ``lr_scale``).
        start_warmup_lr: learning rate of the first warm-up step (absolute, before ``lr_scale``).
        freeze_last_layer_iters: steps with lr 0 for ``is_last_layer`` groups.
    """
    return _lambda_lr(
        optimizer,
        lambda base_lr: cosine_schedule(base_lr, min_lr, total_iters, warmup_iters, start_warmup_lr),
        min_lr,
        freeze_last_layer_iters,
    )


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Depth of parameter ``name`` for layer-wise decay: 0 for embeddings/tokens, ``i + 1`` inside block ``i``
    (``blocks.{i}``, ``layer.{i}``, ``layers.{i}``), ``num_layers + 1`` for everything after the blocks (final norm,
    heads). With ``num_layers == 0`` (no blocks) every parameter is at depth 1 (no decay)."""
    if num_layers == 0:
        return 1
    if any(key in name for key in EMBEDDING_KEYS):
        return 0
    match = _BLOCK_PATTERN.search(name)
    if match is not None:
        return int(match.group(1)) + 1
    return num_layers + 1


def _no_weight_decay(name: str, param: nn.Parameter, no_weight_decay_list: Iterable[str]) -> bool:
    # DINOv2: biases, norms and LayerScale gammas; every 1-D tensor covers transformers' ``lambda1`` too
    if param.ndim <= 1 or name.endswith(".bias") or "norm" in name or "gamma" in name:
        return True
    parts = name.split(".")
    return any(name == key or key in parts or name.endswith("." + key) for key in no_weight_decay_list)


def param_groups_lrd(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    no_weight_decay_list: Sequence[str] = (),
    patch_embed_lr_mult: float = 1.0,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """Param groups with layer-wise learning-rate decay and no weight decay on biases, norms and LayerScale.

    A parameter at depth ``d`` (:func:`layer_id_for_vit`) gets ``lr_scale = layer_decay ** (num_layers + 1 - d)``:
    the embeddings ``layer_decay ** (L + 1)``, block ``i`` ``layer_decay ** (L - i)``, the final norm and heads 1
    (DINOv2's ``get_vit_lr_decay_rate``). Patch-embedding weights are further multiplied by ``patch_embed_lr_mult``
    (DINOv2/RAD-DINO: 0.2). Parameters whose names contain ``last_layer`` are flagged ``is_last_layer`` for
    :func:`warmup_cosine_lambda`'s ``freeze_last_layer_iters``. Frozen parameters (``requires_grad=False``) are
    left out.

    Blocks are found by name anywhere in ``model``, so pass the backbone (plus heads) rather than a model holding
    several towers, whose block indices would be pooled.

    Args:
        model: module whose parameters are grouped.
        weight_decay: weight decay of the decayed groups (biases, norms, 1-D tensors and ``no_weight_decay_list``
            get 0).
        layer_decay: per-block lr factor (1: no layer-wise decay).
        no_weight_decay_list: extra parameter names (full names or name components, e.g. ``"pos_embed"``) without
            weight decay (MAE/timm's ``no_weight_decay()``).
        patch_embed_lr_mult: lr factor of the patch embedding.
        num_layers: number of blocks; inferred as the largest block index + 1 when ``None``.

    Returns:
        A list of param-group dicts (``params``, ``weight_decay``, ``lr_scale``, ``wd_multiplier``, ``layer_id``,
        ``is_last_layer``) for ``torch.optim.AdamW``.

    Raises:
        ValueError: if ``layer_decay`` is not in ``(0, 1]`` or ``weight_decay``/``patch_embed_lr_mult`` is negative.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if weight_decay < 0 or patch_embed_lr_mult < 0:
        raise ValueError(
            f"weight_decay and patch_embed_lr_mult must be >= 0, got {weight_decay}, {patch_embed_lr_mult}"
        )
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        indices = [int(m.group(1)) for m in (_BLOCK_PATTERN.search(n) for n, _ in named) if m is not None]
        num_layers = max(indices) + 1 if indices else 0
    groups: dict[tuple[int, bool, bool, bool], dict[str, Any]] = {}
    for name, param in named:
        layer_id = layer_id_for_vit(name, num_layers)
        decay = not _no_weight_decay(name, param, no_weight_decay_list)
        is_patch_embed = any(key in name for key in PATCH_EMBED_KEYS)
        is_last_layer = "last_layer" in name
        key = (layer_id, decay, is_patch_embed, is_last_layer)
        if key not in groups:
            lr_scale = layer_decay ** (num_layers + 1 - layer_id) * (patch_embed_lr_mult if is_patch_embed else 1.0)
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "wd_multiplier": 1.0 if decay else 0.0,
                "lr_scale": lr_scale,
                "layer_id": layer_id,
                "is_last_layer": is_last_layer,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


class WeightDecayScheduleHandler:
    """Sets every param group's weight decay to ``schedule[step] * wd_multiplier`` before each optimizer step.

    ``wd_multiplier`` comes from :func:`param_groups_lrd`; groups without it keep decay off if they start at 0.
    The step is derived from ``engine.state.iteration``, so a resumed run continues the schedule unchanged.

    Args:
        optimizer: the optimizer whose groups are updated.
        schedule: one value per optimizer step (e.g. :func:`cosine_schedule`); later steps use the last value.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Sequence[float]) -> None:
        if len(schedule) == 0:
            raise ValueError("schedule must not be empty")
        self.optimizer = optimizer
        self.schedule = [float(v) for v in schedule]
        self.multipliers = [
            float(g.get("wd_multiplier", 1.0 if g.get("weight_decay", 0.0) > 0 else 0.0))
            for g in optimizer.param_groups
        ]

    def value(self, step: int) -> float:
        """Scheduled weight decay at 0-based optimizer step ``step``."""
        return self.schedule[min(max(step, 0), len(self.schedule) - 1)]

    def apply(self, step: int) -> None:
        """Write the value of ``step`` into the optimizer's groups."""
        value = self.value(step)
        for group, multiplier in zip(self.optimizer.param_groups, self.multipliers):
            group["weight_decay"] = value * multiplier

    def __call__(self, engine: Engine) -> None:
        # ITERATION_STARTED: state.iteration already counts the step about to run (1-based)
        self.apply(engine.state.iteration - 1)

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` on ``Events.ITERATION_STARTED``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self)
