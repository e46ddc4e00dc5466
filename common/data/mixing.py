"""Batches with a fixed share of image-only records: the sampler behind the ``image_only_share`` knob.

A datalist may mix paired records (with a ``report``) and image-only ones (without; ``has_report`` False after
:class:`~common.transforms.text.EnsureReportd`). Objectives that mix them (G2D, PRIOR) feed each term only the rows
that can feed it (:mod:`common.data.batch`); this sampler decides how many rows of each batch are image-only:
``round(image_only_share * batch_size)`` on every rank and in every batch, so that every rank holds the same number of
paired rows. ``image_only_share=0`` draws paired records only (the papers' paired-only objective); an epoch is one pass
over the paired records (over the image-only ones when ``image_only_share=1``), the other kind cycling through fresh
permutations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.data.contract import DataContractError
from common.data.dataset import ResumableSampler

__all__ = ["ImageOnlyShareSampler", "has_report"]

logger = logging.getLogger(__name__)


def has_report(record: Mapping[str, Any], key: str = "report") -> bool:
    """Whether a datalist record is paired (a non-empty ``key``); the contract's image-only records are not."""
    return bool(record.get(key))


class ImageOnlyShareSampler(ResumableSampler):
    """:class:`~common.data.dataset.ResumableSampler` whose batches hold ``round(share * batch_size)`` image-only rows.

    Per epoch the order is a pure function of ``(seed, epoch)`` (resume and ``set_offset`` work as in the parent);
    every batch of every rank starts with its image-only rows, then its paired ones. Use it with a DataLoader of the
    same ``batch_size`` and no ``shuffle``.

    Args:
        records: the training records (the dataset's, same order); ``has_report`` tells the two kinds apart.
        batch_size: per-rank batch size of the DataLoader.
        image_only_share: in ``[0, 1]``; 0: paired records only.
        shuffle, seed, rank, world_size: as :class:`~common.data.dataset.ResumableSampler` (always ``drop_last``).
        report_key: the record's report key.

    Raises:
        ValueError: on a share outside ``[0, 1]`` or a non-positive batch size.
        DataContractError: when the records cannot fill one batch of the requested mix (e.g. no paired record).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        batch_size: int,
        image_only_share: float = 0.0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        report_key: str = "report",
    ) -> None:
        if not 0.0 <= float(image_only_share) <= 1.0:
            raise ValueError(f"image_only_share must be in [0, 1], got {image_only_share}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        paired = np.array([i for i, r in enumerate(records) if has_report(r, report_key)], dtype=np.int64)
        image_only = np.array([i for i, r in enumerate(records) if not has_report(r, report_key)], dtype=np.int64)
        per_batch = round(float(image_only_share) * batch_size)
        if per_batch > 0 and image_only.size == 0:
            logger.warning("image_only_share=%s but no image-only record: paired-only batches", image_only_share)
            per_batch = 0
        super().__init__(max(len(records), 1), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        self.batch_size, self.image_only_per_batch = int(batch_size), per_batch
        self.paired, self.image_only = paired, image_only
        paired_per_step = self.num_replicas * (batch_size - per_batch)
        driver, per_step = (paired, paired_per_step) if paired_per_step else (image_only, self.num_replicas * per_batch)
        self.steps = driver.size // per_step
        if self.steps < 1:
            raise DataContractError(
                None,
                f"{paired.size} paired and {image_only.size} image-only training records cannot fill one batch of "
                f"{batch_size} x {self.num_replicas} rank(s) with {per_batch} image-only row(s) each "
                "(batch_size / image_only_share knobs)",
            )
        self.num_samples = self.steps * self.batch_size
        self.total_size = self.num_samples * self.num_replicas
        logger.info(
            "%d paired + %d image-only records: %d batches of %d per rank and epoch, %d image-only each",
            paired.size,
            image_only.size,
            self.steps,
            batch_size,
            per_batch,
        )

    def _draw(self, indices: np.ndarray, count: int, epoch: int, group: int) -> np.ndarray:
        """``count`` indices of ``indices``: successive permutations (or the list repeated without shuffle)."""
        if count == 0:
            return indices[:0]
        passes = math.ceil(count / indices.size)
        if not self.shuffle:
            return np.tile(indices, passes)[:count]
        rngs = [np.random.default_rng([self.seed, epoch, group, k]) for k in range(passes)]
        return np.concatenate([indices[rng.permutation(indices.size)] for rng in rngs])[:count]

    def global_order(self, epoch: int) -> np.ndarray:
        """All ranks' indices of ``epoch``: per step, ``world_size * k`` image-only then the paired ones, so that rank
        ``r`` (taking ``[r::world_size]``) gets ``k`` image-only rows at the head of each of its batches."""
        w, k = self.num_replicas, self.image_only_per_batch
        image_only = self._draw(self.image_only, self.steps * w * k, epoch, 1).reshape(self.steps, w * k)
        paired = self._draw(self.paired, self.steps * w * (self.batch_size - k), epoch, 0)
        return np.concatenate([image_only, paired.reshape(self.steps, -1)], axis=1).reshape(-1)
