"""``PretrainingTrainer``: the MONAI/ignite training engine every pre-training bundle runs as ``train#trainer``.

One ignite iteration is one optimizer step, in DINOv2's order:

1. move the dict batch to the device (:func:`prepare_dict_batch`), pop and count replaced records
   (:data:`~common.data.dataset.SKIPPED_KEY`);
2. ``objective.train()``; call ``objective.before_iteration(step, max_steps)`` if defined (teacher temperature and
   other per-step values read *before* the forward);
3. split the batch into ``grad_accumulation`` micro-batches; for each: forward under ``torch.autocast``
   (``amp_dtype``), ``loss * share`` backward (scaled by a ``GradScaler`` for fp16; DDP gradient sync only on the last);
4. unscale, clip the gradient norm (over ``objective.clip_grad_groups()`` separately if defined, as DINOv2 clips
   backbone and heads separately; else over all parameters);
5. the terms and the gradient norm are averaged over ranks and read with one host sync; a non-finite value raises
   :class:`NonFiniteLossError` on every rank at the same iteration (or, with ``non_finite="skip"``, every rank drops
   this step) before the optimizer is touched, so no checkpoint of that state can be written;
6. ``optimizer.step()``, ``lr_scheduler.step()`` (per iteration), then ``objective.after_optimizer_step(step,
   max_steps)`` if defined (EMA teacher update).

``step`` is the 0-based index of the optimizer step and ``max_steps = max_epochs * epoch_length``, so schedules from
:func:`~common.engines.schedules.cosine_schedule` with ``total_iters=max_steps`` are indexed directly.
``engine.state.output`` holds the objective's terms (mean over ranks), ``grad_norm``, ``lr`` and the objective's
``log_values()`` if it has that method, as floats; log them with
``StatsHandler``/``TensorBoardStatsHandler(output_transform=loss_terms_transform)``.

Reproducibility: the trainer sets the epoch of the data loader's sampler and dataset at every epoch start and, after
a mid-epoch resume (:class:`~common.engines.checkpoint.CheckpointHandler`), makes a
:class:`~common.data.dataset.ResumableSampler` skip the batches already trained on. Creating a data-loader iterator
does not consume the global torch generator here, so the training random stream (dropout, masks) does not depend on
epoch boundaries or on where a run was resumed.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from itertools import pairwise
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch import nn

from common import distributed
from common.data.dataset import SKIPPED_KEY

__all__ = [
    "NonFiniteLossError",
    "PretrainingObjective",
    "PretrainingTrainer",
    "loss_terms_transform",
    "prepare_dict_batch",
    "split_batch",
    "unwrap_module",
]

logger = logging.getLogger(__name__)

_AMP_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@runtime_checkable
class PretrainingObjective(Protocol):
    """What the trainer needs from an objective; the hooks below are optional and found by name.

    * ``before_iteration(step: int, max_steps: int) -> None``: before the forward of 0-based optimizer step ``step``.
    * ``after_optimizer_step(step: int, max_steps: int) -> None``: after the optimizer and lr-scheduler steps.
    * ``clip_grad_groups() -> Mapping[str, Iterable[nn.Parameter]]``: parameter groups clipped separately.
    * ``log_values() -> Mapping[str, float]``: extra scalars logged after the step (e.g. a learned temperature).

    Under DDP every rank must return the same term names (they are averaged over ranks for logging).

    The trainer calls ``objective.train()`` every iteration (a validation handler may have switched it to eval);
    an objective whose EMA teacher must stay in eval mode overrides ``train`` accordingly.
    """

    def __call__(self, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> nn.Module: ...


class NonFiniteLossError(FloatingPointError):
    """A loss term or the gradient norm was NaN/inf; raised before the optimizer step.

    Attributes:
        iteration: 1-based ignite iteration that failed.
        epoch: 1-based epoch.
        values: every logged value of that iteration (terms and ``grad_norm``).
        non_finite: names of the non-finite values.
    """

    def __init__(self, iteration: int, epoch: int, values: Mapping[str, float], non_finite: Sequence[str]) -> None:
        self.iteration = iteration
        self.epoch = epoch
        self.values = dict(values)
        self.non_finite = list(non_finite)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in self.values.items())
        super().__init__(
            f"non-finite {', '.join(self.non_finite)} at iteration {iteration} (epoch {epoch}) [{shown}]. "
            "The optimizer step was not taken and no checkpoint of this state was written, so the last saved "
            "checkpoint is intact. Usual causes: learning rate too high or warm-up too short, fp16 overflow "
            "(try amp_dtype='bf16'), a loss taking log(0), or a degenerate batch."
        )


def unwrap_module(module: nn.Module) -> nn.Module:
    """The bare module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def prepare_dict_batch(
    batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Move every tensor of a (nested) dict batch to ``device``; ``MetaTensor``\\ s become plain tensors (the
    objectives need no metadata and plain tensors avoid MONAI's per-op overhead); other values are kept as they are.

    Raises:
        TypeError: if ``batchdata`` is not a mapping.
    """
    if not isinstance(batchdata, Mapping):
        raise TypeError(
            f"PretrainingTrainer expects dict batches (see common/README.md), got {type(batchdata).__name__}"
        )

    def move(value: Any) -> Any:
        if isinstance(value, MetaTensor):
            value = value.as_tensor()
        if isinstance(value, torch.Tensor):
            return value.to(device=device, non_blocking=non_blocking, **kwargs)
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(move(v) for v in value)
        return value

    return {k: move(v) for k, v in batchdata.items()}


def _batch_size(batch: Mapping[str, Any]) -> int | None:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            return int(value.shape[0])
        if isinstance(value, Mapping):
            size = _batch_size(value)
            if size is not None:
                return size
    return None


def split_batch(batch: Mapping[str, Any], num_chunks: int) -> list[tuple[dict[str, Any], float]]:
    """Split a collated dict batch along dim 0 into ``num_chunks`` micro-batches with their share of the batch.

    Tensors and lists/tuples whose length is the batch size are sliced (sizes differ by at most one); other values
    are shared. The shares weight the micro-batch losses so that a per-sample mean equals the full-batch mean.

    Raises:
        ValueError: if the batch holds fewer samples than ``num_chunks`` or no batched tensor.
    """
    if num_chunks == 1:
        return [(dict(batch), 1.0)]
    size = _batch_size(batch)
    if size is None:
        raise ValueError("cannot split a batch without tensors for gradient accumulation")
    if size < num_chunks:
        raise ValueError(f"batch of {size} samples cannot be split into grad_accumulation={num_chunks} micro-batches")
    bounds = np.linspace(0, size, num_chunks + 1).round().astype(int)

    def take(value: Any, start: int, stop: int) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == size:
            return value[start:stop]
        if isinstance(value, (list, tuple)) and len(value) == size:
            return value[start:stop]
        if isinstance(value, Mapping):
            return {k: take(v, start, stop) for k, v in value.items()}
        return value

    return [
        ({k: take(v, int(a), int(b)) for k, v in batch.items()}, (int(b) - int(a)) / size) for a, b in pairwise(bounds)
    ]


def loss_terms_transform(output: Any) -> dict[str, float] | None:
    """``output_transform`` for MONAI ``StatsHandler``/``TensorBoardStatsHandler``: every scalar of the output dict."""
    if isinstance(output, list) and output:
        output = output[0]
    if not isinstance(output, Mapping):
        return None
    return {
        str(k): float(v)
        for k, v in output.items()
        if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
    }


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _loader_batch_size(loader: Any) -> int | None:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if size else None


class _RngNeutralLoader:
    """Iterable over ``loader`` whose ``iter()`` leaves the global torch generator untouched.

    ``DataLoader.__iter__`` draws a worker base seed from the global generator; without this, the training random
    stream after a resume would be shifted by that draw when the resume point is not an epoch boundary.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        state = torch.get_rng_state()
        try:
            return iter(self.loader)
        finally:
            torch.set_rng_state(state)


class PretrainingTrainer(Trainer):
    """MONAI ``Trainer`` for objectives whose ``forward(batch)`` returns ``{"loss": total, "<term>": ...}``.

    Args:
        device: device of the objective and the batches.
        max_epochs: number of epochs.
        train_data_loader: iterable of dict batches (a ``DataLoader`` over a
            :class:`~common.data.dataset.PretrainingDataset` with a :class:`~common.data.dataset.ResumableSampler`
            for exact resume).
        objective: module (possibly DDP-wrapped) owning networks and losses; see :class:`PretrainingObjective`.
        optimizer: optimizer over the objective's trainable parameters.
        lr_scheduler: stepped after every optimizer step; ``None`` for a constant lr.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``; keep the default for exact resume).
        amp_dtype: ``"bf16"``, ``"fp16"`` (with a ``GradScaler``) or ``None`` (full precision).
        grad_clip_norm: max gradient L2 norm; ``None`` or 0 to only measure it.
        grad_accumulation: micro-batches each loader batch is split into; one optimizer step per iteration.
        train_handlers: handlers with ``attach(engine)`` (stats, checkpoints, validation), attached last.
        non_finite: ``"raise"`` a :class:`NonFiniteLossError` or ``"skip"`` the step (warned and counted).
        prepare_batch: ``(batch, device, non_blocking, **kwargs) -> dict``.
        non_blocking: asynchronous host-to-device copies.
        progress: tqdm progress bar on rank 0: ``None`` when stdout is a terminal, ``True`` always, ``False`` never.

    Raises:
        ValueError: on an unknown ``amp_dtype``/``non_finite``, ``grad_accumulation < 1`` or negative clip norm.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any | None = None,
        epoch_length: int | None = None,
        amp_dtype: str | torch.dtype | None = None,
        grad_clip_norm: float | None = 1.0,
        grad_accumulation: int = 1,
        train_handlers: Sequence[Any] | None = None,
        non_finite: Literal["raise", "skip"] = "raise",
        prepare_batch: Callable[..., Mapping[str, Any]] = prepare_dict_batch,
        non_blocking: bool = False,
        progress: bool | None = None,
    ) -> None:
        if isinstance(amp_dtype, str):
            if amp_dtype.lower() not in _AMP_DTYPES:
                raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)} or None, got {amp_dtype!r}")
            amp_dtype = _AMP_DTYPES[amp_dtype.lower()]
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be bf16, fp16 or None, got {amp_dtype!r}")
        if non_finite not in ("raise", "skip"):
            raise ValueError(f"non_finite must be 'raise' or 'skip', got {non_finite!r}")
        if grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
        if grad_clip_norm is not None and grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0 or None, got {grad_clip_norm}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            decollate=False,
        )
        self.objective = objective
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.amp_dtype: torch.dtype | None = amp_dtype
        self.grad_clip_norm = float(grad_clip_norm) if grad_clip_norm else None
        self.grad_accumulation = int(grad_accumulation)
        self.non_finite = non_finite
        device_type = self.state.device.type
        self.scaler = torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None
        #: per-rank counts, checkpointed by CheckpointHandler; summed over ranks into state.metrics at epoch end
        self.counters: dict[str, int] = {"skipped_records": 0, "non_finite_steps": 0}

        self._check_epoch_length(epoch_length)
        self.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._publish_counters)
        self.add_event_handler(Events.COMPLETED, self._log_summary)
        for handler in train_handlers or ():
            handler.attach(self)
        show = sys.stdout.isatty() if progress is None else progress
        if show and distributed.is_main_process():
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(self, output_transform=lambda out: {"loss": out["loss"]} if out else None)

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def max_iterations(self) -> int | None:
        """Optimizer steps of the whole run (``max_epochs * epoch_length``), ``None`` if the length is unknown."""
        if self.state.epoch_length is None:
            return None
        return int(self.state.max_epochs * self.state.epoch_length)

    # ---------------------------------------------------------------------------------------------------- running
    def run(self) -> None:  # type: ignore[override]
        """Train until ``max_epochs``; a second call continues from the current state."""
        if self.state.epoch_length == 0:
            warnings.warn("the data loader is empty or epoch_length is 0: nothing to train")
            return
        Engine.run(self, data=_RngNeutralLoader(self.data_loader), max_epochs=self.state.max_epochs)

    def _check_epoch_length(self, epoch_length: int | None) -> None:
        try:
            loader_length = len(self.data_loader)  # type: ignore[arg-type]
        except TypeError:
            return
        if epoch_length is not None and epoch_length != loader_length:
            logger.warning(
                "epoch_length=%d differs from len(train_data_loader)=%d: ignite then continues the loader across "
                "epochs and a mid-epoch resume is not exact; prefer ResumableSampler(num_samples=epoch_length * "
                "batch_size) with the default epoch_length",
                epoch_length,
                loader_length,
            )

    def _on_epoch_started(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        sampler = getattr(self.data_loader, "sampler", None)
        dataset = getattr(self.data_loader, "dataset", None)
        for obj in (sampler, dataset):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
        length = engine.state.epoch_length
        done = engine.state.iteration - (epoch - 1) * length if length else 0
        if done <= 0:
            return
        batch_size = _loader_batch_size(self.data_loader)
        if callable(getattr(sampler, "set_offset", None)) and batch_size:
            sampler.set_offset(done * batch_size)
            logger.info("resuming epoch %d after %d of its %d iterations", epoch, done, length)
        else:
            logger.warning(
                "resuming epoch %d after %d iterations, but the sampler (%s) cannot skip them: this epoch trains on "
                "its first batches again instead of the remaining ones (use common.data.dataset.ResumableSampler)",
                epoch,
                done,
                type(sampler).__name__,
            )

    def _global_counters(self) -> dict[str, int]:
        values = torch.tensor(list(self.counters.values()), dtype=torch.float64)
        if distributed.get_world_size() > 1:
            device = self.state.device if self.state.device is not None else torch.device("cpu")
            values = distributed.all_reduce_sum(values.to(device)).cpu()
        return {k: int(v) for k, v in zip(self.counters, values.tolist())}

    def _publish_counters(self, engine: Engine) -> None:
        engine.state.metrics.update(self._global_counters())

    def _log_summary(self, engine: Engine) -> None:
        totals = self._global_counters()
        engine.state.metrics.update(totals)
        if distributed.is_main_process():
            logger.info(
                "training finished at iteration %d (epoch %d): %d unreadable records replaced, %d non-finite steps "
                "skipped",
                engine.state.iteration,
                engine.state.epoch,
                totals["skipped_records"],
                totals["non_finite_steps"],
            )

    # -------------------------------------------------------------------------------------------------- iteration
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.state.device.type, dtype=self.amp_dtype)

    def _clip_gradients(self, module: nn.Module) -> dict[str, torch.Tensor]:
        groups_fn = getattr(module, "clip_grad_groups", None)
        groups = dict(groups_fn()) if callable(groups_fn) else {"": self.objective.parameters()}
        norms: dict[str, torch.Tensor] = {}
        for name, params in groups.items():
            with_grad = [p for p in params if p.grad is not None]
            if not with_grad:
                continue
            if self.grad_clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(with_grad, self.grad_clip_norm)
            else:
                norm = _total_norm([p.grad for p in with_grad])
            norms[name] = distributed.full_tensor(norm)  # FSDP: a DTensor -> the global norm
        if not norms:
            return {"grad_norm": torch.zeros((), device=self.state.device)}
        out = {f"grad_norm/{k}": v for k, v in norms.items() if k}
        total = torch.stack([v.float() for v in norms.values()]).square().sum().sqrt() if out else norms[""]
        return {"grad_norm": total, **out}

    def _call_hook(self, module: nn.Module, name: str, step: int) -> None:
        hook = getattr(module, name, None)
        if callable(hook):
            hook(step, self.max_iterations)

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, float]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("the data loader returned no batch")
        batch = dict(self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs))
        skipped = batch.pop(SKIPPED_KEY, None)
        if skipped:
            self.counters["skipped_records"] += len(skipped)
        step = engine.state.iteration - 1
        module = unwrap_module(self.objective)
        self.objective.train()
        self._call_hook(module, "before_iteration", step)
        self.optimizer.zero_grad(set_to_none=True)

        sums = self._forward_backward(engine, batch)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norms = self._clip_gradients(module)
        output = self._reduce_outputs(sums, norms)
        bad = [k for k in sums if not math.isfinite(output[k])]
        if self.scaler is None:  # with fp16 an inf gradient only means "lower the loss scale"
            bad += [k for k in norms if not math.isfinite(output[k])]
        self._optimizer_step(engine, output, bad)

        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._call_hook(module, "after_optimizer_step", step)
        log_values = getattr(module, "log_values", None)
        if callable(log_values):
            output.update({str(k): float(v) for k, v in log_values().items()})
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

    def _forward_backward(self, engine: Engine, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss and backward per micro-batch (DDP syncs gradients on the last only); the terms summed over them."""
        chunks = split_batch(batch, self.grad_accumulation)
        sums: dict[str, torch.Tensor] = {}
        for i, (chunk, share) in enumerate(chunks):
            last = i == len(chunks) - 1
            no_sync = getattr(self.objective, "no_sync", None)
            with nullcontext() if last or no_sync is None else no_sync():
                with self._autocast():
                    terms = self.objective(chunk)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                if not isinstance(terms, Mapping) or "loss" not in terms:
                    raise TypeError(f"the objective must return a dict with a 'loss' entry, got {type(terms).__name__}")
                loss = terms["loss"] * share if share != 1.0 else terms["loss"]
                engine.fire_event(IterationEvents.LOSS_COMPLETED)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for key, value in terms.items():
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        raise ValueError(
                            f"objective term {key!r} has shape {tuple(value.shape)}; terms must be scalars"
                        )
                    value = value.detach().float().reshape(())
                else:
                    value = torch.tensor(float(value), device=loss.device)
                weighted = value if share == 1.0 else value * share
                sums[key] = sums[key] + weighted if key in sums else weighted
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        return sums

    def _reduce_outputs(self, sums: dict[str, torch.Tensor], norms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms and gradient norms averaged over ranks and read with one host sync, plus the peak lr."""
        names = ["loss", *sorted(k for k in sums if k != "loss"), *norms]  # same order on every rank
        tensors = {**sums, **norms}
        device = sums["loss"].device
        stacked = torch.stack([tensors[k].to(device) for k in names])
        if distributed.get_world_size() > 1:
            distributed.all_reduce_mean(stacked)
        output = dict(zip(names, stacked.cpu().tolist()))
        output["lr"] = max(float(g["lr"]) for g in self.optimizer.param_groups)
        return output

    def _optimizer_step(self, engine: Engine, output: dict[str, float], bad: list[str]) -> None:
        """Step the optimizer, or skip the step (or raise) when a loss term or gradient norm is not finite."""
        if bad:
            if self.non_finite == "raise":
                raise NonFiniteLossError(engine.state.iteration, engine.state.epoch, output, bad)
            self.counters["non_finite_steps"] += 1
            logger.warning("skipping optimizer step %d: non-finite %s", engine.state.iteration, ", ".join(bad))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
