"""Putting an objective on its device(s): activation checkpointing, then one process, DDP or FSDP2.

Configs call :func:`prepare_objective` (single process) or :func:`parallel_objective` (``multi_gpu_train.yaml``)
instead of spelling the choice out in ``$`` expressions.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common import distributed
from common.engines.fsdp import shard_objective

__all__ = ["enable_activation_checkpointing", "parallel_objective", "prepare_objective"]


def enable_activation_checkpointing(module: nn.Module) -> list[str]:
    """Switch activation checkpointing on in every outermost submodule that supports it; returns their paths.

    Our networks expose ``set_grad_checkpointing(True)`` (EVA ViT, decoders, DINO backbones); Hugging Face models
    ``gradient_checkpointing_enable`` (called with non-reentrant checkpoints, which DDP and FSDP need).
    """
    switched: list[str] = []

    def visit(mod: nn.Module, path: str) -> None:
        if callable(getattr(mod, "set_grad_checkpointing", None)):
            mod.set_grad_checkpointing(True)
            switched.append(path)
        elif callable(getattr(mod, "gradient_checkpointing_enable", None)) and getattr(
            mod, "supports_gradient_checkpointing", False
        ):
            mod.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            switched.append(path)
        else:
            for name, child in mod.named_children():
                visit(child, f"{path}.{name}" if path else name)

    visit(module, "")
    return switched


def prepare_objective(
    objective: nn.Module, device: torch.device | str, activation_checkpointing: bool = False
) -> nn.Module:
    """``objective`` on ``device``, with activation checkpointing on every submodule that supports it if asked."""
    if activation_checkpointing:
        enable_activation_checkpointing(objective)
    return objective.to(device)


def parallel_objective(
    objective: nn.Module,
    device: torch.device | str,
    fsdp: bool = False,
    amp_dtype: str | torch.dtype | None = None,
    activation_checkpointing: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """The objective for a torchrun job: DDP around it, or (``fsdp``) FSDP2 shards of a copy of it.

    With FSDP the objective itself stays un-sharded on the CPU: it is the twin that
    :func:`common.engines.fsdp.gather_into` fills after training and the export steps read.

    Args:
        objective: the un-wrapped objective (``objective_def``).
        device: this rank's device (``common.distributed.local_device()``).
        fsdp: shard with FSDP2 (one unit per transformer block + root) instead of DDP.
        amp_dtype: FSDP2 compute dtype (``"bf16"`` on GPU).
        activation_checkpointing: see :func:`enable_activation_checkpointing`.
        find_unused_parameters: DDP's flag (RAD-DINO: the teacher and heads unused in some steps).
    """
    if fsdp:
        return shard_objective(
            prepare_objective(copy.deepcopy(objective), "cpu", activation_checkpointing), device, amp_dtype
        )
    return nn.parallel.DistributedDataParallel(
        prepare_objective(objective, device, activation_checkpointing),
        device_ids=distributed.ddp_device_ids(device),
        find_unused_parameters=find_unused_parameters,
    )
