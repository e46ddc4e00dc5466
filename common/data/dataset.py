"""Reproducible, fault-tolerant training data: :class:`PretrainingDataset`, :class:`ResumableSampler` and
:func:`pretraining_collate`.

**Reproducible augmentation.** Before transforming record ``i`` in epoch ``e``, :class:`PretrainingDataset` seeds
the transform chain (``Compose.set_random_state``) *and* the global ``random``/``numpy``/``torch`` CPU generators
from ``(seed, e, i)``, then restores the global generators. A sample is therefore a pure function of
``(seed, epoch, index)``: the same whatever the number of DataLoader workers, the order samples are drawn in, or
whether the run was resumed, and loading data never perturbs the training process's own random streams (with
``num_workers=0`` the transforms run in the training process). The epoch travels with the index: the
:class:`ResumableSampler` yields :class:`EpochIndex` integers, so persistent workers see the right epoch too; plain
integer indices fall back to :meth:`PretrainingDataset.set_epoch` (the trainer calls it every epoch).

**Bad records.** A :class:`~common.data.contract.DataContractError`, ``OSError``, ``EOFError``, ``ValueError``,
``MemoryError`` or ``OverflowError`` raised while reading or transforming a record (MONAI wraps transform errors in
``RuntimeError``; the cause chain is searched) either re-raises as a ``DataContractError`` naming the image path and
record index (``on_bad_sample="raise"``) or (``"skip"``) logs a warning naming the file and the problem and substitutes the next
readable record (``i + 1``, ``i + 2``, ... with its own seed), which is deterministic. The substitution is recorded
on the returned sample and :func:`pretraining_collate` moves it into the batch under :data:`SKIPPED_KEY`, which
:class:`~common.engines.trainer.PretrainingTrainer` pops and counts; this works with any number of worker processes.

**Mid-epoch resume.** :class:`ResumableSampler` is a ``DistributedSampler`` whose order is a pure function of
``(seed, epoch)`` and which can start the next epoch's iterator at an offset (:meth:`ResumableSampler.set_offset`),
which the trainer does after restoring a checkpoint written mid-epoch. Ignite's ``ReproducibleBatchSampler`` was not
used: it needs ignite's ``DeterministicEngine``, which re-seeds the global generators from the iteration count at
every epoch, whereas MONAI's trainers derive from the plain ``Engine``, and it does not shard across ranks.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.data import Dataset, list_data_collate
from monai.transforms import Compose, Randomizable, RandomizableTrait, Transform
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from common import distributed
from common.data.contract import DataContractError, error_cause

__all__ = [
    "BAD_SAMPLE_ERRORS",
    "SKIPPED_KEY",
    "EpochIndex",
    "InferenceDataset",
    "PretrainingDataset",
    "ResumableSampler",
    "first_random_index",
    "pretraining_collate",
    "records_loader",
    "sample_seed",
]

logger = logging.getLogger(__name__)

#: Exceptions that mark a record as unreadable (searched along the ``__cause__``/``__context__`` chain). The readers
#: turn whatever their decoders raise into ``DataContractError``; ``MemoryError`` and ``OverflowError`` come from
#: transforms of a record whose geometry lies (e.g. a spacing that resamples to a giant grid).
BAD_SAMPLE_ERRORS: tuple[type[BaseException], ...] = (
    DataContractError,
    OSError,
    EOFError,
    ValueError,
    MemoryError,
    OverflowError,
)
#: Batch key under which :func:`pretraining_collate` lists the indices of records replaced in that batch.
SKIPPED_KEY = "skipped_records"


def first_random_index(transform: Compose) -> int:
    """Length of the deterministic prefix of ``transform``: the index of its first random (or non-MONAI) transform.

    The prefix is what :class:`PretrainingDataset` caches in RAM and what :mod:`common.data.store` writes to disk.
    """

    def is_random_or_opaque(t: Any) -> bool:
        return isinstance(t, RandomizableTrait) or not isinstance(t, Transform)

    first = transform.get_index_of_first(is_random_or_opaque)
    return len(transform.transforms) if first is None else first


class EpochIndex(int):
    """A dataset index that carries the epoch it was drawn for (an ``int`` everywhere else)."""

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self) -> tuple[type[EpochIndex], tuple[int, int]]:
        return EpochIndex, (int(self), self.epoch)

    def __repr__(self) -> str:
        return f"EpochIndex({int(self)}, epoch={self.epoch})"


def sample_seed(seed: int, epoch: int, index: int, attempt: int = 0) -> int:
    """32-bit seed of record ``index`` in ``epoch`` (``attempt > 0``: its k-th substitute), via ``SeedSequence``."""
    return int(np.random.SeedSequence([seed, epoch, index, attempt]).generate_state(1)[0])


@contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch-CPU global generators for the block and restore their previous states afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also re-seed CUDA generators
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _bad_sample_cause(err: BaseException) -> BaseException | None:
    """The first exception in ``err``'s cause chain that marks a bad record, or ``None`` (a bug: let it raise)."""
    return error_cause(err, BAD_SAMPLE_ERRORS)


def _describe(record: Any) -> str:
    if isinstance(record, Mapping):
        return str(record.get("image", "<record without 'image'>"))
    return repr(record)[:200]


class _SubstitutedDict(dict):
    """A sample dict that replaced unreadable records (``skipped_records``: their indices)."""

    skipped_records: tuple[int, ...] = ()


class _SubstitutedList(list):
    """A list of samples (multi-sample transforms) that replaced unreadable records."""

    skipped_records: tuple[int, ...] = ()


class PretrainingDataset(Dataset):
    """MONAI ``Dataset`` with per-sample deterministic augmentation and bad-record handling.

    Args:
        data: records (datalist dicts, see :mod:`common.data.contract`).
        transform: a callable or sequence of callables (wrapped in ``monai.transforms.Compose``).
        seed: base seed; sample ``i`` of epoch ``e`` uses :func:`sample_seed` ``(seed, e, i)``.
        on_bad_sample: ``"raise"`` (default) or ``"skip"`` (warn, count, substitute the next readable record).
        cache: keep the output of the deterministic prefix of ``transform`` (everything before the first random
            transform) in memory, computed once in the constructor like ``monai.data.CacheDataset`` with
            ``cache_rate=1``; only the random part runs per sample.
        max_consecutive_bad: with ``"skip"``, give up (raise) after this many unreadable records in a row.
        progress: show a progress bar while ``cache`` fills.

    Re-seeding mutates the transforms, so one instance must not serve several threads at once (use process
    workers, not ``ThreadDataLoader``); CUDA generators are not seeded (keep random transforms on the CPU).

    Raises:
        ValueError: on an unknown ``on_bad_sample`` or a non-positive ``max_consecutive_bad``.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        seed: int = 0,
        on_bad_sample: str = "raise",
        cache: bool = False,
        max_consecutive_bad: int = 64,
        progress: bool = True,
    ) -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if max_consecutive_bad < 1:
            raise ValueError(f"max_consecutive_bad must be >= 1, got {max_consecutive_bad}")
        super().__init__(data=data, transform=transform)
        self.seed = int(seed)
        self.epoch = 0
        self.on_bad_sample = on_bad_sample
        self.max_consecutive_bad = int(max_consecutive_bad)
        self._known_bad: dict[int, str] = {}  # process-local: skip re-reading a record known to fail
        self._first_random: int | None = None
        self._cache: list[Any] | None = None
        if cache:
            self._build_cache(progress)

    # ----------------------------------------------------------------------------------------------- epoch / state
    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (indices from :class:`ResumableSampler` carry their own)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    # ------------------------------------------------------------------------------------------------------ cache
    def _build_cache(self, progress: bool = True) -> None:
        if type(self.transform) is not Compose:
            raise ValueError(f"cache=True needs a plain Compose transform, got {type(self.transform).__name__}")
        self._first_random = first_random_index(self.transform)
        cache: list[Any] = []
        show = progress and distributed.is_main_process()
        records = tqdm(self.data, desc="caching preprocessed records", unit="record", disable=not show)
        for index, record in enumerate(records):
            try:
                cache.append(self.transform(deepcopy(record), end=self._first_random, threading=True))
            except Exception as err:  # classified below
                cause = _bad_sample_cause(err)
                if cause is None:
                    raise
                if self.on_bad_sample == "raise":
                    raise self._contract_error(index, record, err) from err
                cache.append(None)
                self._known_bad[index] = self._problem(cause, record)
                logger.warning("record %d (%s) will be skipped: %s", index, _describe(record), self._known_bad[index])
        self._cache = cache

    # ------------------------------------------------------------------------------------------------- transform
    def _apply(self, index: int, seed: int) -> Any:
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=seed)
        with _seeded_global_rng(seed):
            if self._cache is None:
                return self.transform(self.data[index])
            if self._cache[index] is None:
                raise DataContractError(_describe(self.data[index]), self._known_bad.get(index, "unreadable record"))
            return self.transform(deepcopy(self._cache[index]), start=self._first_random)

    @staticmethod
    def _problem(cause: BaseException, record: Any) -> str:
        """What went wrong, naming the offending file when it is not the record's image (e.g. a DICOM slice)."""
        if isinstance(cause, DataContractError):
            if cause.source is None or cause.source == _describe(record):
                return cause.problem
            return f"{cause.source}: {cause.problem}"
        return f"{type(cause).__name__}: {cause}"

    def _contract_error(self, index: int, record: Any, err: BaseException) -> DataContractError:
        cause = _bad_sample_cause(err) or err
        return DataContractError(_describe(record), f"record {index}: {self._problem(cause, record)}")

    def __getitem__(self, index: int | slice | Sequence[int]) -> Any:
        if isinstance(index, slice) or (isinstance(index, Sequence) and not isinstance(index, (str, bytes))):
            return super().__getitem__(index)  # MONAI: a Subset
        return self._transform(index)

    def _transform(self, index: int) -> Any:  # type: ignore[override]
        epoch = getattr(index, "epoch", self.epoch)
        index = int(index)
        n = len(self.data)
        skipped: list[int] = []
        for attempt in range(min(self.max_consecutive_bad, n)):
            candidate = (index + attempt) % n
            if candidate in self._known_bad:
                skipped.append(candidate)
                continue
            try:
                sample = self._apply(candidate, sample_seed(self.seed, epoch, index, attempt))
            except Exception as err:  # classified below
                cause = _bad_sample_cause(err)
                if cause is None:
                    raise
                if self.on_bad_sample == "raise":
                    raise self._contract_error(candidate, self.data[candidate], err) from err
                problem = self._problem(cause, self.data[candidate])
                self._known_bad[candidate] = problem
                logger.warning(
                    "skipping record %d (%s): %s; substituting the next record",
                    candidate,
                    _describe(self.data[candidate]),
                    problem,
                )
                skipped.append(candidate)
                continue
            return self._mark(sample, skipped) if skipped else sample
        raise DataContractError(
            _describe(self.data[index]),
            f"records {index}..{(index + min(self.max_consecutive_bad, n) - 1) % n} (wrapping) are all unreadable; "
            f"last problem: {self._known_bad.get(skipped[-1], '?') if skipped else '?'}",
        )

    @staticmethod
    def _mark(sample: Any, skipped: list[int]) -> Any:
        if isinstance(sample, Mapping):
            marked: Any = _SubstitutedDict(sample)
        elif isinstance(sample, list):
            marked = _SubstitutedList(sample)
        else:
            return sample
        marked.skipped_records = tuple(skipped)
        return marked


def pretraining_collate(batch: Sequence[Any]) -> Any:
    """``monai.data.list_data_collate`` that moves substitution markers into ``batch[SKIPPED_KEY]``.

    The key is present only in batches where records were replaced; its value is the list of their indices.
    """
    skipped: list[int] = []
    plain = []
    for sample in batch:
        if isinstance(sample, (_SubstitutedDict, _SubstitutedList)):
            skipped.extend(sample.skipped_records)
            sample = dict(sample) if isinstance(sample, dict) else list(sample)
        plain.append(sample)
    collated = list_data_collate(plain)
    if skipped and isinstance(collated, dict):
        collated[SKIPPED_KEY] = skipped
    return collated


class InferenceDataset(IterableDataset):
    """Inference records in datalist order through ``transform``, one sample per readable record.

    With ``on_bad_sample="raise"`` an unreadable record stops the run with a
    :class:`~common.data.contract.DataContractError` naming its file and the problem; with ``"skip"`` it is left
    out (no substitute: inference writes one row per readable input), a warning names it, and it is appended to
    ``skipped_file`` (CSV ``image,problem``) beside the predictions. Errors are classified as in
    :class:`PretrainingDataset`. Only ``keys`` of each record are kept, so ``null`` reports or labels of test
    records never reach the collate function. With DataLoader workers, worker ``w`` of ``n`` takes records
    ``w, w + n, ...``.

    Args:
        data: the records.
        transform: the (deterministic) preprocessing.
        on_bad_sample: ``"raise"`` or ``"skip"``.
        skipped_file: CSV listing skipped records, written at the first skip (an earlier run's is removed at
            construction, so the file exists only when records were skipped); None: only warnings.
        keys: record keys passed to ``transform``.

    Raises:
        ValueError: on an unknown ``on_bad_sample``.
        DataContractError: (while iterating) with ``"raise"``, or when no record at all is readable.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable,
        on_bad_sample: str = "raise",
        skipped_file: str | os.PathLike | None = None,
        keys: Sequence[str] = ("image",),
    ) -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.data = list(data)
        self.transform = transform
        self.on_bad_sample = on_bad_sample
        self.skipped_file = None if skipped_file is None else str(skipped_file)
        self.keys = tuple(keys)
        self.skipped: list[tuple[str, str]] = []  # (file, problem) seen by this process
        if self.skipped_file is not None and os.path.isfile(self.skipped_file):
            os.remove(self.skipped_file)  # a list from an earlier run would describe other inputs

    def _record_skipped(self, source: str, problem: str) -> None:
        logger.warning("skipping %s: %s", source, problem)
        self.skipped.append((source, problem))
        if self.skipped_file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.skipped_file)), exist_ok=True)
            with open(self.skipped_file, "a", newline="", encoding="utf-8") as f:
                if f.tell() == 0:
                    csv.writer(f).writerow(["image", "problem"])
                csv.writer(f).writerow([source, problem])

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        start, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        produced = 0
        for index in range(start, len(self.data), step):
            record = self.data[index]
            item = {key: record[key] for key in self.keys if key in record}
            try:
                sample = self.transform(item)
            except Exception as err:  # classified below
                cause = _bad_sample_cause(err)
                if cause is None:
                    raise
                problem = PretrainingDataset._problem(cause, record)
                if self.on_bad_sample == "raise":
                    raise DataContractError(_describe(record), f"record {index}: {problem}") from err
                self._record_skipped(_describe(record), problem)
                continue
            produced += 1
            yield sample
        if produced == 0 and self.skipped and worker is None:  # an empty run would look like success
            raise DataContractError(
                self.skipped[0][0],
                f"all {len(self.skipped)} record(s) are unreadable (first problem: "
                f"{self.skipped[0][1]}); see {self.skipped_file or 'the warnings'}",
            )


def records_loader(
    records: Sequence[Mapping[str, Any]], transform: Callable, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """An ordered, unshuffled loader over datalist records (frozen-encoder feature extraction, evaluation)."""
    dataset = PretrainingDataset(list(records), transform, seed=0)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=pretraining_collate
    )


class ResumableSampler(DistributedSampler):
    """Shuffled (or sequential) sharded sampler whose order is a pure function of ``(seed, epoch)``.

    Per epoch the global order is a ``numpy`` PCG64 permutation seeded with ``(seed, epoch)`` (further
    permutations ``(seed, epoch, k)`` are appended when more samples are needed); it is padded to a multiple of
    ``world_size`` (or truncated with ``drop_last``) and rank ``r`` takes every ``world_size``-th index starting at
    ``r``, as ``torch.utils.data.DistributedSampler`` does. Indices are :class:`EpochIndex` integers.

    Args:
        dataset_len: dataset length (or the dataset itself).
        shuffle: permute (else ``0..n-1`` repeated).
        seed: base seed, identical on every rank.
        rank: this process's rank (default: :func:`common.distributed.get_rank`).
        world_size: number of ranks (default: :func:`common.distributed.get_world_size`).
        drop_last: drop the tail instead of padding it so that every rank gets the same count.
        num_samples: samples per rank and epoch, overriding the default ``ceil(n / world_size)``
            (``floor`` with ``drop_last``); larger values give DINOv2-style fixed-length epochs over small data.

    Raises:
        ValueError: on an empty dataset, a rank outside ``[0, world_size)`` or a non-positive ``num_samples``.
    """

    def __init__(
        self,
        dataset_len: int | Sized,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        num_samples: int | None = None,
    ) -> None:
        length = dataset_len if isinstance(dataset_len, int) else len(dataset_len)
        world_size = distributed.get_world_size() if world_size is None else int(world_size)
        rank = distributed.get_rank() if rank is None else int(rank)
        if length < 1:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        super().__init__(
            range(length), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        if num_samples is not None:
            if num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {num_samples}")
            self.num_samples = int(num_samples)
            self.total_size = self.num_samples * self.num_replicas
        elif drop_last and length < world_size:
            raise ValueError(f"drop_last with {length} samples and {world_size} ranks leaves no sample per rank")
        self.dataset_len = length
        self.offset = 0

    def set_offset(self, offset: int) -> None:
        """Make the next iterator skip its first ``offset`` indices of this rank (consumed once)."""
        if not 0 <= offset <= self.num_samples:
            raise ValueError(f"offset must be in [0, {self.num_samples}], got {offset}")
        self.offset = int(offset)

    def global_order(self, epoch: int) -> np.ndarray:
        """All ranks' indices of ``epoch``, ``total_size`` long (rank ``r`` takes ``[r::world_size]``)."""
        n, needed = self.dataset_len, self.total_size
        passes = max(1, math.ceil(needed / n))
        if self.shuffle:
            chunks = [np.random.default_rng([self.seed, epoch]).permutation(n)]
            chunks += [np.random.default_rng([self.seed, epoch, k]).permutation(n) for k in range(1, passes)]
        else:
            chunks = [np.arange(n)] * passes
        return np.concatenate(chunks)[:needed]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = self.epoch, self.offset
        self.offset = 0
        mine = self.global_order(epoch)[self.rank :: self.num_replicas]
        return iter([EpochIndex(int(i), epoch) for i in mine[offset:]])

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "seed": int(self.seed)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
