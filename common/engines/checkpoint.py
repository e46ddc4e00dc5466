"""Atomic, resumable training checkpoints on ignite's ``Checkpoint`` + ``DiskSaver``, and the flat inference export.

:class:`CheckpointHandler` attaches an ``ignite.handlers.Checkpoint`` that writes ``<save_dir>/checkpoint_<iteration>.pt``
(``n_saved=keep_last``; its own list of saved files is stored too, ``include_self``), holding one state dict per name:

* the configured objects (objective with its EMA teacher, optimizer, lr scheduler) plus, found on the engine, the
  trainer's ``GradScaler`` (``scaler``) and the data loader's sampler/dataset (``train_sampler``/``train_dataset``:
  epoch, seed); modules are unwrapped from DDP/``torch.compile``, so single- and multi-GPU checkpoints interchange;
* ``trainer``: ignite's ``Engine.state_dict()`` (``iteration``, ``epoch_length``, ``max_epochs``);
* ``checkpointer``: ignite's list of the files it keeps;
* ``preprocessing``: the run's preprocessing record (:mod:`common.engines.preprocessing_record`), when given.

What ignite lacks is kept as small ``state_dict`` objects and helpers here:

* ``format`` (:class:`_FormatTag`): the layout name, so :func:`load_checkpoint` refuses foreign files;
* ``generators`` (:class:`GeneratorStates`): every rank's python/numpy/torch/CUDA generator states and the trainer's
  counters, gathered to rank 0 (a collective: attach the handler on **every** rank, ``train#handlers``);
* :class:`DurableDiskSaver`: ``DiskSaver`` whose atomic write also calls ``fsync`` on the file and its directory;
* :func:`latest_checkpoint`: the newest *loadable* file, falling back past a corrupt or truncated newest one.

The data loader's position inside an epoch needs no state: after a mid-epoch resume the trainer makes a
:class:`~common.data.dataset.ResumableSampler` skip the batches already trained on, so a killed run continues with the
losses it would have produced uninterrupted. Everything is tensors, numbers, strings, lists and dicts, so
:func:`load_checkpoint` uses ``torch.load(weights_only=True)``. No checkpoint is written when an iteration raises
(e.g. :class:`~common.engines.trainer.NonFiniteLossError`).

:func:`export_inference_weights` writes the flat ``state_dict`` of an inference ``network_def`` (``models/model.pt``
as the MONAI Model Zoo CI and MONAI Label load it, or ``.safetensors``).
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

from common import distributed
from common.data.contract import DataContractError
from common.engines.preprocessing_record import PreprocessingState, record_path, write_record
from common.engines.trainer import unwrap_module

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointHandler",
    "DurableDiskSaver",
    "GeneratorStates",
    "atomic_save",
    "atomic_write_bytes",
    "capture_rng_state",
    "export_inference_weights",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medvlp-training-checkpoint-v2"
_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_FILENAME_PATTERN = "{name}_{global_step:08d}.{ext}"
#: names the handler itself stores beside the configured objects
_RESERVED = ("format", "trainer", "generators", "checkpointer", "preprocessing")


# ------------------------------------------------------------------------------------------------------ file writing
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a reader sees the old file or the complete new one, never a part."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


class DurableDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` (rank ``save_on_rank`` writes) with :func:`atomic_save`: a ``*.tmp`` file in the same
    directory, ``fsync``, ``os.replace``, directory ``fsync``; removing a file that is already gone is not an error."""

    def __init__(self, dirname: str | os.PathLike, save_on_rank: int = 0) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() == self.save_on_rank:
            atomic_save(checkpoint, self.dirname / filename)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            (self.dirname / filename).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ generator states
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch-CPU and (if initialised) CUDA generator states as tensors and numbers."""
    version, state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda", []))
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(cuda[index], index)


def _gather_rank_states(local: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Every rank's ``local`` dict on rank 0 (other ranks get ``[]``); a collective when distributed."""
    world_size = distributed.get_world_size()
    if world_size == 1:
        return [local]
    buffer = io.BytesIO()
    torch.save(local, buffer)
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    sizes = distributed.all_gather_no_grad(torch.tensor([data.numel()], dtype=torch.int64, device=device)).tolist()
    padded = torch.zeros(1, max(sizes), dtype=torch.uint8, device=device)
    padded[0, : data.numel()] = data.to(device)
    gathered = distributed.all_gather_no_grad(padded).cpu()
    if not distributed.is_main_process():
        return []
    return [
        torch.load(io.BytesIO(gathered[r, : sizes[r]].numpy().tobytes()), weights_only=True) for r in range(world_size)
    ]


class GeneratorStates:
    """``state_dict`` object: every rank's generator states and the trainer's counters (ignite saves rank 0's only).

    ``state_dict()`` is a collective (rank 0 receives ``{"world_size", "ranks": [{"rng", "counters"}, ...]}``);
    ``load_state_dict`` restores this rank's entry, or seeds a rank the checkpoint has no entry for from
    ``(iteration, rank)`` with a warning (resuming on more GPUs than were saved).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        device = getattr(self.engine.state, "device", None) or torch.device("cpu")
        local = {"rng": capture_rng_state(), "counters": dict(getattr(self.engine, "counters", {}))}
        return {"world_size": distributed.get_world_size(), "ranks": _gather_rank_states(local, torch.device(device))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rank, ranks = distributed.get_rank(), state.get("ranks", [])
        if rank < len(ranks):
            restore_rng_state(ranks[rank]["rng"])
            counters = getattr(self.engine, "counters", None)
            if isinstance(counters, dict):
                counters.update({k: int(v) for k, v in ranks[rank]["counters"].items()})
            return
        seed = int(np.random.SeedSequence([int(self.engine.state.iteration), rank]).generate_state(1)[0])
        logger.warning("checkpoint has generator states for %d ranks; seeding rank %d with %d", len(ranks), rank, seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class _FormatTag:
    """``state_dict`` object naming the checkpoint layout (:data:`CHECKPOINT_FORMAT`)."""

    def state_dict(self) -> dict[str, str]:
        return {"name": CHECKPOINT_FORMAT}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # checked by load_checkpoint
        pass


# --------------------------------------------------------------------------------------------------------- loading
def _format_of(checkpoint: Any) -> str | None:
    tag = checkpoint.get("format") if isinstance(checkpoint, Mapping) else None
    return tag.get("name") if isinstance(tag, Mapping) else tag


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`CheckpointHandler` with ``torch.load(weights_only=True)``.

    Raises:
        DataContractError: if the file is missing, truncated, needs unsafe unpickling or is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataContractError(path, "checkpoint file does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise DataContractError(
            path, f"cannot be loaded with torch.load(weights_only=True) (truncated or holds pickled objects): {err}"
        ) from err
    found = _format_of(checkpoint)
    if found != CHECKPOINT_FORMAT:
        older = f" (its layout is {found!r}, written by an older version)" if found else ""
        raise DataContractError(
            path, f"not a training checkpoint written by CheckpointHandler ({CHECKPOINT_FORMAT}){older}"
        )
    return checkpoint


def find_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_<iteration>.pt`` files of ``save_dir``, oldest first (``*.tmp`` leftovers are ignored)."""
    directory = Path(save_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(
    save_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """Newest loadable checkpoint of ``save_dir`` and its content; unreadable ones are skipped with a warning."""
    for path in reversed(find_checkpoints(save_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except DataContractError as err:
            logger.warning("ignoring unusable checkpoint %s", err)
    return None


# --------------------------------------------------------------------------------------------------------- handler
class CheckpointHandler:
    """Ignite handler: atomic periodic checkpoints (``ignite.handlers.Checkpoint``) and exact resume.

    Args:
        save_dir: directory of ``checkpoint_<iteration>.pt`` files (created on first use).
        objects: named objects with ``state_dict``/``load_state_dict`` (``None`` values are ignored), e.g.
            ``{"objective": @objective, "optimizer": @optimizer, "lr_scheduler": @lr_scheduler}``. The engine's
            ``scaler`` and its data loader's ``sampler``/``dataset`` (when they have a ``state_dict``) are added
            as ``scaler``/``train_sampler``/``train_dataset``.
        save_every_n_iterations: also save every n iterations (``None``: only at epoch ends).
        save_on_epoch_end: save at every ``EPOCH_COMPLETED``.
        keep_last: number of newest checkpoints kept (ignite's ``n_saved``; ``None`` or 0: keep all).
        resume: ``False``; ``True`` for the newest loadable checkpoint in ``save_dir`` (no checkpoint file: start
            fresh; files but none loadable: raise); or a checkpoint file, or a directory to take the newest from.
        save_final: save when the run completes if the last iteration was not saved yet.
        preprocessing: the run's preprocessing record (config id ``preprocessing_record``), stored in every
            checkpoint; resuming from a checkpoint written with other preprocessing is refused.

    Raises:
        ValueError: on non-positive ``save_every_n_iterations``, negative ``keep_last`` or an object named like one
            the handler stores itself (``format``, ``trainer``, ``generators``, ``checkpointer``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        objects: Mapping[str, Any],
        save_every_n_iterations: int | None = None,
        save_on_epoch_end: bool = True,
        keep_last: int | None = 2,
        resume: bool | str | os.PathLike = False,
        save_final: bool = True,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        if save_every_n_iterations is not None and save_every_n_iterations < 1:
            raise ValueError(f"save_every_n_iterations must be >= 1 or None, got {save_every_n_iterations}")
        if keep_last is not None and keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 or None, got {keep_last}")
        reserved = sorted(set(objects) & set(_RESERVED))
        if reserved:
            raise ValueError(f"object names {reserved} are stored by the handler itself; rename them")
        self.save_dir = Path(save_dir)
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.save_every_n_iterations = save_every_n_iterations
        self.save_on_epoch_end = save_on_epoch_end
        self.keep_last = keep_last or None
        self.resume = resume
        self.save_final = save_final
        self.preprocessing = dict(preprocessing) if preprocessing is not None else None
        self.checkpointer: Checkpoint | None = None
        self.last_saved_iteration: int | None = None
        self.last_saved_path: Path | None = None
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_latest)
        if self.save_every_n_iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_every_n_iterations), self.save)
        if self.save_on_epoch_end:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save)

    # ------------------------------------------------------------------------------------------------- objects
    def _all_objects(self, engine: Engine) -> dict[str, Any]:
        """The configured objects (modules unwrapped) plus the engine's scaler and its loader's sampler/dataset."""
        objects = {k: unwrap_module(v) if isinstance(v, nn.Module) else v for k, v in self.objects.items()}
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" not in objects:
            objects["scaler"] = scaler
        loader = getattr(engine, "data_loader", None)
        for name, attr in (("train_sampler", "sampler"), ("train_dataset", "dataset")):
            obj = getattr(loader, attr, None)
            if name not in objects and callable(getattr(obj, "state_dict", None)):
                objects[name] = obj
        return objects

    def _checkpointer(self, engine: Engine) -> Checkpoint:
        if self.checkpointer is None:
            to_save = {
                "format": _FormatTag(),
                **self._all_objects(engine),
                "trainer": engine,
                "generators": GeneratorStates(engine),
            }
            if self.preprocessing is not None:
                to_save["preprocessing"] = PreprocessingState(self.preprocessing)
            self.checkpointer = Checkpoint(
                to_save,
                DurableDiskSaver(self.save_dir),
                n_saved=self.keep_last,
                global_step_transform=lambda e, _: int(e.state.iteration),
                filename_pattern=_FILENAME_PATTERN,
                include_self=True,
            )
        return self.checkpointer

    # ---------------------------------------------------------------------------------------------------- saving
    def save(self, engine: Engine) -> Path | None:
        """Write a checkpoint of the current state (collective; rank 0 writes). Returns its path on rank 0."""
        iteration = int(engine.state.iteration)
        if iteration == self.last_saved_iteration:
            return None
        checkpointer = self._checkpointer(engine)
        checkpointer(engine)  # every rank: a state_dict may be a collective (generators, FSDP full state dicts)
        self.last_saved_iteration = iteration
        if not distributed.is_main_process():
            return None
        self.last_saved_path = Path(checkpointer.last_checkpoint)
        logger.info("saved checkpoint %s", self.last_saved_path)
        return self.last_saved_path

    # --------------------------------------------------------------------------------------------------- loading
    def load_latest(self, engine: Engine) -> Path | None:
        """``Events.STARTED``: restore the checkpoint selected by ``resume``; returns its path (``None``: fresh run)."""
        if self.resume is True:
            if not find_checkpoints(self.save_dir):
                logger.info("no checkpoint in %s: starting from scratch", self.save_dir)
                return None
            found = latest_checkpoint(self.save_dir)
            if found is None:  # never silently restart (and later prune) over checkpoints that exist
                raise DataContractError(self.save_dir, "none of the checkpoint_<iteration>.pt files can be loaded")
        else:
            target = Path(self.resume)  # type: ignore[arg-type]
            found = latest_checkpoint(target) if target.is_dir() else (target, load_checkpoint(target))
            if found is None:
                raise DataContractError(target, "no loadable checkpoint_<iteration>.pt in this directory")
        path, checkpoint = found
        self.restore(engine, checkpoint, path)
        return path

    def restore(self, engine: Engine, checkpoint: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> None:
        """Load ``checkpoint`` into the objects, the engine state, this rank's generators and the trainer counters.

        Raises:
            DataContractError: if a configured object is missing from the checkpoint.
            PreprocessingMismatchError: if the checkpoint records other preprocessing than this run's.
            ValueError: if the checkpoint's epoch length differs from the engine's (the data order would not match).
        """
        if self.preprocessing is not None:
            PreprocessingState(self.preprocessing, path).load_state_dict(checkpoint.get("preprocessing"))
        objects = self._all_objects(engine)
        missing = [name for name in self.objects if name not in checkpoint]
        if missing:
            held = sorted(k for k in checkpoint if k not in _RESERVED)
            raise DataContractError(path, f"checkpoint has no state for {missing}; it holds {held}")
        trainer = checkpoint["trainer"]
        saved_length = trainer["epoch_length"]
        if saved_length != engine.state.epoch_length:
            raise ValueError(
                f"{path}: written with epoch_length={saved_length}, the trainer now has {engine.state.epoch_length} "
                "(batch size, dataset or epoch_length changed); resuming would not continue the same data order. "
                "Start a new run initialised from the checkpoint's weights instead."
            )
        for name in [n for n in objects if n not in checkpoint]:
            logger.warning("checkpoint %s has no state for %r; keeping its current state", path, name)
            objects.pop(name)
        Checkpoint.load_objects(objects, checkpoint)
        # ignite's engine state, keeping this run's max_epochs (a resumed run may train longer)
        engine.load_state_dict({**trainer, "max_epochs": engine.state.max_epochs})
        self._checkpointer(engine).load_state_dict(checkpoint["checkpointer"])
        GeneratorStates(engine).load_state_dict(checkpoint["generators"])  # last: loading must not move them
        self.last_saved_iteration = int(engine.state.iteration)
        self.resumed_from = Path(path)
        logger.info("resumed from %s at iteration %d (epoch %d)", path, engine.state.iteration, engine.state.epoch)


# ---------------------------------------------------------------------------------------------------------- export
def export_inference_weights(
    module: nn.Module, path: str | os.PathLike, preprocessing: Mapping[str, Any] | None = None
) -> Path:
    """Write the flat ``state_dict`` of ``module`` (unwrapped from DDP/``torch.compile``) for inference.

    The file holds tensors only, keyed by parameter/buffer name: ``torch.save`` format unless ``path`` ends with
    ``.safetensors``. Both load with ``network_def.load_state_dict(...)`` (``torch.load(weights_only=True)`` or
    ``safetensors.torch.load_file``), which is what MONAI bundle ``ckpt_export``, the Model Zoo CI and MONAI Label do
    with ``models/model.pt``. Non-tensor ``extra_state`` entries are left out with a warning. The write is atomic.
    ``preprocessing`` (a record of :mod:`common.engines.preprocessing_record`) is written beside the weights as
    ``<stem>.preprocessing.json`` (the weight file stays a flat state dict, as the Model Zoo and MONAI Label need).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, value in unwrap_module(module).state_dict().items():
        if not isinstance(value, torch.Tensor):
            logger.warning("export_inference_weights: leaving out non-tensor entry %r", name)
            continue
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    path = Path(path)
    if preprocessing is not None:
        write_record(path, preprocessing, atomic_write_bytes)
    else:  # a record left by an earlier export would describe other weights
        record_path(path).unlink(missing_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save as safetensors_bytes

        data = safetensors_bytes(tensors, metadata={"format": "pt"})
        return _atomic_write(path, lambda f: f.write(data))
    return atomic_save(tensors, path)
