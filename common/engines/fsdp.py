"""FSDP2 for the large 3D encoders: per-block ``fully_shard``, full (plain) state dicts for checkpoints and export.

With ``fsdp: true`` a multi-GPU overlay builds ``objective`` with :func:`shard_objective` instead of wrapping it in
DDP. Every transformer block (the entries of each homogeneous ``nn.ModuleList``: EVA blocks, BERT layers, decoder
layers, for the student and the EMA teacher alike) becomes one FSDP unit and the objective itself the root unit
(patch embeddings, pooling, heads), so each rank holds ``1 / world_size`` of every parameter, gradient
and AdamW state and all-gathers one block at a time. On CUDA the parameters are cast to the autocast dtype for
compute and gradients are reduced in fp32 (``MixedPrecisionPolicy``); on CPU (gloo) FSDP runs in full precision,
which is how the tests exercise it. 0-d parameters (the learned logit scale), which FSDP2 cannot shard, stay
replicated and have their gradients averaged over ranks.

``fully_shard`` turns parameters into sharded ``DTensor``\\ s in place. :func:`full_state_dicts` gives the
:class:`~common.engines.checkpoint.CheckpointHandler` objects whose ``state_dict`` is the full, unsharded state
(plain tensors keyed exactly as the un-wrapped module, gathered onto rank 0's CPU; a collective, so saving runs it
on every rank), so FSDP checkpoints load into a single-process objective. :func:`gather_into` copies the trained
state into the un-sharded twin (``objective_def``) that the export steps read; that twin stays in CPU memory on
every rank for the run (the price of building the model un-sharded; a meta-device build would avoid it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from common import distributed

__all__ = ["FullStateDict", "full_state_dicts", "gather_into", "is_sharded", "shard_objective", "transformer_blocks"]

_AMP = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
# full, unsharded state dicts: gathered to CPU on rank 0 for saving (other ranks get {}); loaded on every rank
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def transformer_blocks(module: nn.Module, block_types: Sequence[str] | None = None) -> list[nn.Module]:
    """The outermost blocks to shard one by one, in module order.

    Args:
        module: the objective (or any network).
        block_types: class names to shard (e.g. ``["EvaBlock", "BertLayer"]``); ``None``: every entry of every
            ``nn.ModuleList`` whose entries share one class and hold parameters (a stack of transformer blocks).
    """
    chosen: list[nn.Module] = []
    inside: set[int] = set()

    def visit(mod: nn.Module) -> None:
        for child in mod.children():
            if id(child) in inside:
                continue
            if block_types is not None:
                if type(child).__name__ in block_types:
                    chosen.append(child)
                    inside.update(id(m) for m in child.modules())
                    continue
            elif isinstance(child, nn.ModuleList) and len(child) > 0:
                classes = {type(c) for c in child}
                if len(classes) == 1 and any(True for _ in child[0].parameters()):
                    chosen.extend(child)
                    inside.update(id(m) for c in child for m in c.modules())
                    continue
            visit(child)

    visit(module)
    return chosen


def shard_objective(
    objective: nn.Module,
    device: torch.device | str,
    amp_dtype: str | torch.dtype | None = None,
    block_types: Sequence[str] | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Move ``objective`` to ``device``, broadcast rank 0's weights, and apply FSDP2 ``fully_shard`` per transformer
    block, then to the root.

    Args:
        objective: the (un-wrapped) pre-training objective; sharded in place and returned.
        device: this rank's device (``common.distributed.local_device()``).
        amp_dtype: ``"bf16"``/``"fp16"``: on CUDA, compute in that dtype with fp32 gradient reduction.
        block_types: see :func:`transformer_blocks`.
        reshard_after_forward: free a block's gathered parameters after its forward (ZeRO-3; ``False``: ZeRO-2).

    Raises:
        RuntimeError: if no process group is initialised (launch with ``torchrun``).
        ValueError: on an unknown ``amp_dtype``.
    """
    if not distributed.is_enabled():
        raise RuntimeError("shard_objective needs torch.distributed: launch with torchrun (fsdp: true)")
    if isinstance(amp_dtype, str):
        if amp_dtype.lower() not in _AMP:
            raise ValueError(f"amp_dtype must be one of {sorted(_AMP)} or None, got {amp_dtype!r}")
        amp_dtype = _AMP[amp_dtype.lower()]
    device = torch.device(device)
    distributed.broadcast_module(objective.to(device))  # every rank starts from rank 0's weights, as with DDP
    mesh = init_device_mesh(device.type, (distributed.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if amp_dtype is not None and device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    # FSDP2 cannot shard 0-d parameters (the contrastive logit scale): they stay replicated, and their
    # gradients are averaged over ranks here, as DDP would
    scalars = {p for p in objective.parameters() if p.ndim == 0}
    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_average_grad)
    kwargs = {"mesh": mesh, "mp_policy": policy, "ignored_params": scalars or None}
    for block in transformer_blocks(objective, block_types):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(objective, **kwargs)  # the root keeps its parameters gathered from forward to backward
    return objective


def _average_grad(param: torch.Tensor) -> None:
    distributed.all_reduce_mean(param.grad)


def is_sharded(module: Any) -> bool:
    """True if ``module`` or one of its submodules was sharded with ``fully_shard``."""
    return isinstance(module, nn.Module) and any(isinstance(m, FSDPModule) for m in module.modules())


class FullStateDict:
    """``state_dict``/``load_state_dict`` of an FSDP-sharded module, or of its optimizer, as full state dicts.

    Model states are keyed as the un-wrapped module's (``load_state_dict`` of a single-process objective accepts
    them); optimizer states follow ``torch.distributed.checkpoint``'s full format (keyed by parameter name), so an
    FSDP run resumes from an FSDP checkpoint. ``state_dict`` is a collective: call it on every rank (rank 0 receives
    the CPU tensors, the others an empty dict).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return get_model_state_dict(self.model, options=_SAVE)
        return get_optimizer_state_dict(self.model, self.optimizer, options=_SAVE)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.optimizer is None:
            set_model_state_dict(self.model, dict(state), options=_LOAD)
        else:
            set_optimizer_state_dict(self.model, self.optimizer, dict(state), options=_LOAD)


def full_state_dicts(obj: Any, model: nn.Module | None = None) -> Any:
    """What a ``CheckpointHandler`` should save for ``obj``: a :class:`FullStateDict` when ``obj`` (a module) or
    ``model`` (the module of optimizer ``obj``) is FSDP-sharded, else ``obj`` itself (DDP, single process)."""
    if isinstance(obj, nn.Module):
        return FullStateDict(obj) if is_sharded(obj) else obj
    if model is not None and is_sharded(model):
        return FullStateDict(model, obj)
    return obj


def gather_into(sharded: nn.Module, target: nn.Module | Iterable[nn.Module] | None = None) -> dict[str, Any]:
    """Gather the full state of ``sharded`` (collective) and, on rank 0, load it strictly into ``target``.

    ``target`` is the un-sharded twin the export steps read (a copy of the objective made before sharding).
    Returns the gathered state dict (empty on ranks other than 0).
    """
    state = get_model_state_dict(sharded, options=_SAVE)
    if distributed.is_main_process() and target is not None:
        targets = [target] if isinstance(target, nn.Module) else list(target)
        for module in targets:
            module.load_state_dict(state, strict=True)
    return state
