"""Validation while pre-training: ``validate#evaluator``, run by MONAI's ``ValidationHandler`` every N epochs.

:class:`EmbeddingEvaluator` is a MONAI :class:`~monai.engines.Evaluator` that embeds the datalist's ``validation``
split with the live networks of the run (the two-tower model of a paired method, the EMA teacher's CLS encoder of
RAD-DINO): per iteration the image embeddings, the label vectors and, when it has a tokenizer, the report
embeddings. Its ignite metrics score the whole split at the end of the validation epoch with the evaluation
harness's own functions and cheap settings (no bootstrap):

* :class:`ZeroShotAUROC`: zero-shot macro AUROC from the prompt pairs of the findings (paired methods);
* :class:`RetrievalRecall`: image-to-report recall@k over the validation pairs (paired methods);
* :class:`KnnProbeAUROC`: the weighted kNN probe macro AUROC against a bank of labelled training records
  (image-only methods).

The first metric given as ``key_val_metric`` is the key metric: MONAI records the best value and epoch, a
``CheckpointSaver(save_key_metric=True)`` attached to the evaluator keeps the best model, and ``StatsHandler`` /
``TensorBoardStatsHandler`` on the evaluator log every metric to the console and TensorBoard.

Validation leaves the run as it found it: every module's train/eval mode and the python, numpy, torch and CUDA
generator states are restored afterwards, so a run with validation trains on the same random stream (and resumes
as exactly) as one without.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.handlers import CheckpointSaver
from monai.networks.utils import eval_mode
from torch import nn

from common.data.findings import FINDINGS, Finding
from common.engines.checkpoint import atomic_write_bytes, capture_rng_state, restore_rng_state
from common.engines.preprocessing_record import write_record
from common.engines.trainer import prepare_dict_batch, unwrap_module
from common.evaluation.encoder import finding_names
from common.evaluation.extract import extract_features
from common.evaluation.probes import knn_probe
from common.evaluation.retrieval import retrieval_metrics
from common.evaluation.two_tower import prompt_embeddings
from common.evaluation.zero_shot import zero_shot_auroc, zero_shot_scores
from common.networks.two_tower import encode_texts

__all__ = [
    "BestModelSaver",
    "EmbeddingEvaluator",
    "EmbeddingMetric",
    "KnnProbeAUROC",
    "RetrievalRecall",
    "ZeroShotAUROC",
    "embed_images",
    "preserved_rng",
    "sync_temperature",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the python, numpy, torch and CUDA generator states on exit (a data loader's ``iter()`` draws one)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def embed_images(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global image embeddings ``(B, D)``: ``network.encode_image`` for a two-tower model, else ``network(images)``."""
    encode = getattr(network, "encode_image", None)
    return encode(images) if callable(encode) else network(images)


def sync_temperature(objective: nn.Module) -> float:
    """Store the contrastive loss' current logit scale in the model as its ``softmax_temperature`` (``T = 1 / s``,
    what :func:`~common.engines.export.export_two_tower` does at the end) and return ``T``, so that a best model
    saved at validation carries the temperature it was scored with. The buffer takes no part in training."""
    module = unwrap_module(objective)
    clip_loss = getattr(module, "clip_loss", None)
    if clip_loss is not None:
        module.model.set_logit_scale(clip_loss.logit_scale.detach(), clip_loss.max_logit_scale)
    return float(module.model.softmax_temperature)


class EmbeddingEvaluator(Evaluator):
    """Embeds the validation split with the live network; its metrics score the split at epoch end.

    Args:
        device: where the network runs.
        val_data_loader: ordered loader of the validation records (``image``, ``labels_vector`` and, for paired
            methods, the cleaned ``report`` string), e.g. :func:`common.data.dataset.records_loader`.
        network: the live module: a two-tower model (``encode_image`` / ``encode_text``) or an image encoder.
        key_val_metric: ``{name: metric}``, the metric that chooses the best model.
        additional_metrics: further ``{name: metric}`` logged beside it.
        val_handlers: handlers attached to this evaluator (stats, TensorBoard, ``CheckpointSaver``).
        tokenizer: the text tower's tokenizer; given, the reports are embedded too (``text_embedding``,
            ``has_report``).
        max_text_length: token budget of the report embeddings.
        amp_dtype: autocast dtype of the image forward on CUDA (``None``: full precision).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: nn.Module,
        key_val_metric: Mapping[str, Metric],
        additional_metrics: Mapping[str, Metric] | None = None,
        val_handlers: Sequence[Any] | None = None,
        tokenizer: Any = None,
        max_text_length: int = 512,
        amp_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            prepare_batch=prepare_dict_batch,
            key_val_metric=dict(key_val_metric),
            additional_metrics=dict(additional_metrics or {}),
            val_handlers=val_handlers,
            decollate=False,
        )
        self.network = network
        self.tokenizer = tokenizer
        self.max_text_length = int(max_text_length)
        if isinstance(amp_dtype, str):
            amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype.lower()]
        self.amp_dtype = amp_dtype

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Validate at training epoch ``global_epoch``, leaving the generators and module modes as they were."""
        with preserved_rng(), eval_mode(self.network):
            super().run(global_epoch)
        values = ", ".join(f"{k} {v:.4f}" for k, v in self.state.metrics.items() if isinstance(v, float))
        logger.info(
            "validation at epoch %d: %s (best %s %.4f at epoch %d)",
            global_epoch,
            values,
            self.state.key_metric_name,
            self.state.best_metric,
            self.state.best_metric_epoch,
        )

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        batch = prepare_dict_batch(batchdata, self.state.device, self.non_blocking)
        images = batch["image"]
        use_amp = self.amp_dtype is not None and images.device.type == "cuda"
        with (
            torch.no_grad(),
            torch.autocast(images.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=use_amp),
        ):
            output = {"embedding": embed_images(self.network, images).float()}
        output["labels"] = batch["labels_vector"].float()
        if self.tokenizer is not None:
            output.update(self._embed_reports(batch.get("report"), len(images), output["embedding"]))
        return output

    def _embed_reports(self, reports: Sequence[Any] | None, size: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """``text_embedding`` (zeros where a record has no report) and the ``has_report`` mask."""
        reports = list(reports) if reports is not None else [None] * size
        has = [isinstance(r, str) and bool(r.strip()) for r in reports]
        rows = [i for i, h in enumerate(has) if h]
        text = like.new_zeros(like.shape)
        if rows:
            emb = encode_texts(
                [reports[i] for i in rows], self.network, self.tokenizer, self.max_text_length, device=like.device
            )
            text[rows] = torch.as_tensor(emb, device=like.device, dtype=like.dtype)
        return {"text_embedding": text, "has_report": torch.tensor(has, device=like.device)}


class EmbeddingMetric(Metric):
    """An ignite metric over the evaluator's outputs of a whole validation epoch, scored in :meth:`score`."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self._parts: dict[str, list[np.ndarray]] = {}
        super().__init__(output_transform=lambda output: output, device=device)

    def reset(self) -> None:
        self._parts = {}

    def update(self, output: Mapping[str, torch.Tensor]) -> None:
        for key, value in output.items():
            self._parts.setdefault(key, []).append(value.detach().float().cpu().numpy())

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> float:
        if not self._parts:
            raise RuntimeError(f"{type(self).__name__} has no validation outputs: is the validation split empty?")
        value = self.score({key: np.concatenate(parts) for key, parts in self._parts.items()})
        return float("nan") if value is None else float(value)

    def score(self, arrays: Mapping[str, np.ndarray]) -> float | None:
        """The metric of the epoch's stacked outputs (``embedding``, ``labels``, ...); None when undefined."""
        raise NotImplementedError


class ZeroShotAUROC(EmbeddingMetric):
    """Zero-shot macro AUROC of the findings' prompt pairs, embedded with the live model at scoring time.

    Args:
        model: the live two-tower model.
        tokenizer: its tokenizer.
        findings: the label vocabulary (prompt order = label order).
        temperature: the softmax temperature, or a callable returning it (the contrastive loss' current one:
            :func:`sync_temperature`).
        max_text_length: token budget of the prompts.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        findings: Sequence[Finding | str] = FINDINGS,
        temperature: float | Callable[[], float] = 0.01,
        max_text_length: int = 512,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.findings = list(findings)
        self.temperature = temperature
        self.max_text_length = int(max_text_length)
        super().__init__()

    def score(self, arrays: Mapping[str, np.ndarray]) -> float | None:
        device = next(self.model.parameters()).device
        with eval_mode(self.model):
            pos, neg = prompt_embeddings(self.model, self.tokenizer, self.findings, self.max_text_length, device)
        temperature = self.temperature() if callable(self.temperature) else float(self.temperature)
        scores = zero_shot_scores(arrays["embedding"], pos, neg, temperature)
        result = zero_shot_auroc(scores, arrays["labels"], finding_names(self.findings), n_bootstrap=0)
        return result["macro"]["auroc"]


class RetrievalRecall(EmbeddingMetric):
    """Recall@k between the validation images and their own reports (records without a report left out).

    Args:
        k: the cut-off.
        direction: ``"image_to_text"`` or ``"text_to_image"``.
    """

    def __init__(self, k: int = 5, direction: str = "image_to_text") -> None:
        if direction not in ("image_to_text", "text_to_image"):
            raise ValueError(f"direction must be 'image_to_text' or 'text_to_image', got {direction!r}")
        self.k = int(k)
        self.direction = direction
        super().__init__()

    def score(self, arrays: Mapping[str, np.ndarray]) -> float | None:
        rows = arrays["has_report"].astype(bool)
        if rows.sum() < 2:
            return None
        result = retrieval_metrics(
            arrays["embedding"][rows], arrays["text_embedding"][rows], ks=(self.k,), n_bootstrap=0
        )
        return result[self.direction][f"R@{self.k}"]


class KnnProbeAUROC(EmbeddingMetric):
    """Macro AUROC of the weighted kNN probe (DINO's: ``k``, ``temperature``) on the validation embeddings, voting
    from a bank of labelled training records embedded with the same live encoder at scoring time.

    Args:
        encoder: the live image encoder (the evaluator's ``network``).
        bank_loader: ordered loader of the bank records (``image``, ``labels_vector``).
        findings: the label vocabulary.
        k, temperature: the kNN vote.
    """

    def __init__(
        self,
        encoder: nn.Module,
        bank_loader: Iterable,
        findings: Sequence[Finding | str] = FINDINGS,
        k: int = 20,
        temperature: float = 0.07,
    ) -> None:
        self.encoder = encoder
        self.bank_loader = bank_loader
        self.names = finding_names(findings)
        self.k = int(k)
        self.knn_temperature = float(temperature)
        super().__init__()

    def score(self, arrays: Mapping[str, np.ndarray]) -> float | None:
        device = next(self.encoder.parameters()).device
        with eval_mode(self.encoder):
            bank = extract_features(
                lambda images: {"embedding": embed_images(self.encoder, images)},
                self.bank_loader,
                device,
                progress=False,
            )
        result = knn_probe(
            bank["embedding"],
            bank["labels"],
            arrays["embedding"],
            arrays["labels"],
            self.names,
            k=self.k,
            temperature=self.knn_temperature,
            n_bootstrap=0,
        )
        return result["macro"]["auroc"]


class BestModelSaver(CheckpointSaver):
    """MONAI's key-metric ``CheckpointSaver`` for ``validate#handlers``: keeps the best model as one file.

    Three things MONAI's saver does not do:

    * a NaN key metric (e.g. a validation split in which no finding has both classes) ranks below every number,
      so it never stays "best" (ignite compares priorities with ``<``, which is false for NaN);
    * its ranking is a ``state_dict``: the resumable training checkpoint carries it (``CheckpointHandler``
      ``objects``), so the first validation after a resume does not overwrite a better ``best_model.pt``;
    * the run's preprocessing record is written beside the file (``best_model.preprocessing.json``), so
      ``evaluate.yaml --model_path .../best_model.pt`` checks it as it checks an export.

    Args:
        save_dir: folder of the file (the run's checkpoint folder).
        model: the module saved (its ``state_dict``, flat, as ``models/model.pt``).
        filename: name of the file.
        preprocessing: the run's preprocessing record (config id ``preprocessing_record``), or None.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        model: nn.Module,
        filename: str = "best_model.pt",
        preprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            save_dir=str(save_dir),
            save_dict={"model": model},
            save_key_metric=True,
            key_metric_n_saved=1,
            key_metric_filename=filename,
        )
        self.filename = filename
        self.preprocessing = dict(preprocessing) if preprocessing is not None else None
        checkpoint = self._key_metric_checkpoint
        score = checkpoint.score_function

        def finite_score(engine: Engine) -> float:
            value = float(score(engine))
            if math.isnan(value):
                logger.warning("key metric is NaN: ranked below every number for the best model")
                return -math.inf
            return value

        checkpoint.score_function = finite_score

    @property
    def best_path(self) -> Path:
        """Path of the best model (written at the first validation)."""
        return Path(self.save_dir) / self.filename

    def metrics_completed(self, engine: Engine) -> None:
        """Rank this validation and, when it is the best so far, save the model and its preprocessing record."""
        before = self.state_dict()
        super().metrics_completed(engine)
        if self.preprocessing is not None and self.state_dict() != before:
            write_record(self.best_path, self.preprocessing, atomic_write_bytes)

    def state_dict(self) -> dict[str, Any]:
        """The ranking of the saved best model (ignite's ``(priority, filename)`` list)."""
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the ranking, so a resumed run saves only a validation better than the best before the stop."""
        super().load_state_dict(dict(state_dict))
