"""Frozen-encoder evaluation harness used by every bundle's evaluate workflow.

Method-independent: everything takes numpy arrays / torch tensors of precomputed embeddings, or callables. Import
from the modules (``from common.evaluation.harness import evaluate_embeddings``): this package re-exports nothing,
so that importing one piece does not load all of them (and an exported bundle carries only what it uses).

* :mod:`~common.evaluation.zero_shot`: prompt-pair zero-shot probabilities and AUROC with bootstrap CIs.
* :mod:`~common.evaluation.retrieval`: image <-> report recall@k, median rank, recall curves.
* :mod:`~common.evaluation.probes`: logistic-regression and weighted-kNN probes.
* :mod:`~common.evaluation.seg_probe`: light segmentation decoder on frozen patch features (Dice).
* :mod:`~common.evaluation.dice`: per-case, per-class Dice of arg-max segmentations (both segmentation probes).
* :mod:`~common.evaluation.text_zero_shot`: text-side zero-shot on a labelled report CSV.
* :mod:`~common.evaluation.plots`: ROC, recall@k, embedding map and Dice figures (PNG).
* :mod:`~common.evaluation.report`: ``results.json`` + TensorBoard + Markdown summary; ``format_table``.
* :mod:`~common.evaluation.harness`: :func:`~common.evaluation.harness.evaluate_embeddings`, the single entry point.
"""

from __future__ import annotations
