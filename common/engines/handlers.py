"""Ignite handlers for inference workflows: :class:`EmbeddingWriter` (``embeddings.npz``, ``findings.json``,
``retrieval.json``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import convert_to_numpy

__all__ = ["EmbeddingWriter", "case_id"]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".dcm")


def case_id(path: str | os.PathLike) -> str:
    """File name without its image suffix (``ct/case_01.nii.gz`` -> ``case_01``; a DICOM folder keeps its name)."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class EmbeddingWriter:
    """Ignite handler: collect each case's global embedding, write ``embeddings.npz`` and ``findings.json``.

    ``embeddings.npz`` holds ``ids`` (case ids, :func:`case_id`), ``paths`` (input files) and ``embeddings``
    ``(N, D)`` float32 (unit norm), in data order. ``findings.json`` names the channels of the similarity maps.
    When every case has a non-empty ``report`` and ``text_encoder`` is given, image<->report retrieval
    (:func:`common.evaluation.retrieval.retrieval_metrics`) goes to ``retrieval.json``.

    Args:
        output_dir: where the files go.
        finding_keys: the K channel names of the similarity maps.
        text_encoder: ``texts -> (N, D)`` embeddings (e.g. a ``functools.partial`` of :func:`common.networks.two_tower.encode_texts`).
        embedding_key, image_key, report_key: keys of the decollated outputs / batch items.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        finding_keys: Sequence[str],
        text_encoder: Callable[[list[str]], np.ndarray] | None = None,
        embedding_key: str = "embedding",
        image_key: str = "image",
        report_key: str = "report",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.finding_keys = list(finding_keys)
        self.text_encoder = text_encoder
        self.embedding_key, self.image_key, self.report_key = embedding_key, image_key, report_key
        self.reset()

    def reset(self) -> None:
        self.paths: list[str] = []
        self.embeddings: list[np.ndarray] = []
        self.reports: list[str | None] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Any) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, Mapping):
            raise TypeError("EmbeddingWriter needs decollated outputs (an evaluator with postprocessing)")
        for output, item in zip(outputs, batch):
            meta = getattr(item.get(self.image_key), "meta", {})
            self.paths.append(str(meta.get("filename_or_obj", f"case_{len(self.paths):05d}")))
            self.embeddings.append(convert_to_numpy(output[self.embedding_key], dtype=np.float32).reshape(-1))
            report = item.get(self.report_key)
            self.reports.append(report if isinstance(report, str) and report.strip() else None)

    def write(self, engine: Any | None = None) -> dict[str, Any] | None:
        """Write the files; returns the retrieval metrics when they were computed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ids = [case_id(p) for p in self.paths]
        if len(set(ids)) != len(ids):
            ids = [f"{i:05d}_{name}" for i, name in enumerate(ids)]
        embeddings = np.stack(self.embeddings) if self.embeddings else np.zeros((0, 0), np.float32)
        np.savez(
            self.output_dir / "embeddings.npz", ids=np.asarray(ids), paths=np.asarray(self.paths), embeddings=embeddings
        )
        (self.output_dir / "findings.json").write_text(
            json.dumps(
                {
                    "channels": self.finding_keys,
                    "similarity": "mean over prompt pairs of cos(patch, positive prompt) - cos(patch, negative prompt)",
                },
                indent=2,
            )
        )
        logger.info("wrote %d embeddings to %s", len(ids), self.output_dir / "embeddings.npz")
        if self.text_encoder is None or len(ids) < 2 or any(r is None for r in self.reports):
            return None
        from common.evaluation.retrieval import retrieval_metrics

        results = retrieval_metrics(embeddings, self.text_encoder(list(self.reports)))
        results.pop("curve", None)
        (self.output_dir / "retrieval.json").write_text(json.dumps(results, indent=2))
        logger.info("retrieval over %d image/report pairs: %s", len(ids), results["image_to_text"])
        return results
