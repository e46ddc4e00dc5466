"""Frozen-encoder evaluation harness used by every bundle's evaluate workflow.

Method-independent: everything takes numpy arrays / torch tensors of precomputed embeddings, or callables.

* :mod:`~common.evaluation.zero_shot`: prompt-pair zero-shot probabilities and AUROC with bootstrap CIs.
* :mod:`~common.evaluation.retrieval`: image <-> report recall@k, median rank, recall curves.
* :mod:`~common.evaluation.probes`: logistic-regression and weighted-kNN probes.
* :mod:`~common.evaluation.seg_probe`: light segmentation decoder on frozen patch features (Dice).
* :mod:`~common.evaluation.text_zero_shot`: text-side zero-shot on a labelled report CSV.
* :mod:`~common.evaluation.plots`: ROC, recall@k, embedding map and Dice figures (PNG).
* :mod:`~common.evaluation.report`: ``results.json`` + TensorBoard + Markdown summary; ``format_table``.
* :mod:`~common.evaluation.harness`: :func:`evaluate_embeddings`, the single entry point.
"""

from __future__ import annotations

from common.evaluation.harness import evaluate_embeddings
from common.evaluation.metrics import multilabel_auroc
from common.evaluation.probes import knn_probe, knn_scores, linear_probe, linear_probe_scores
from common.evaluation.report import EvaluationReport, flatten_scalars, format_table, machine_info
from common.evaluation.retrieval import retrieval_metrics, retrieval_ranks
from common.evaluation.seg_probe import SegmentationProbe, train_segmentation_probe
from common.evaluation.text_zero_shot import CT_RATE_LABELS, read_labelled_reports, text_zero_shot_from_csv
from common.evaluation.zero_shot import zero_shot_auroc, zero_shot_scores

__all__ = [
    "CT_RATE_LABELS",
    "EvaluationReport",
    "SegmentationProbe",
    "evaluate_embeddings",
    "flatten_scalars",
    "format_table",
    "knn_probe",
    "knn_scores",
    "linear_probe",
    "linear_probe_scores",
    "machine_info",
    "multilabel_auroc",
    "read_labelled_reports",
    "retrieval_metrics",
    "retrieval_ranks",
    "text_zero_shot_from_csv",
    "train_segmentation_probe",
    "zero_shot_auroc",
    "zero_shot_scores",
]
