"""Evaluation figures saved as PNG: ROC curves, recall@k curve, embedding map, Dice bar chart, validation curves.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly; pyplot is never
imported, so no global backend is switched and nothing is left open (safe in headless jobs and notebooks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import roc_auc_score, roc_curve

from common.evaluation._arrays import as_numpy, label_names, to_2d_labels

__all__ = ["plot_dice_bars", "plot_dice_fractions", "plot_embedding_map", "plot_recall_curve", "plot_roc_curves", "plot_validation_curves"]


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_roc_curves(
    scores: Any, labels: Any, names: Sequence[str] | None, path: str | os.PathLike, title: str = "ROC"
) -> Path:
    """All findings' ROC curves in one axes, AUROC in the legend; unknown (NaN) labels are masked.

    Findings with a single known class (AUROC undefined) or an all-NaN score column are listed as "n/a".
    """
    labels = to_2d_labels(labels, "labels")
    scores = as_numpy(scores, "scores").reshape(labels.shape)
    names = label_names(names, labels.shape[1])
    figure = Figure(figsize=(7.5, 6.0))
    ax = figure.add_subplot()
    palette = matplotlib.colormaps["tab20"]
    for k, name in enumerate(names):
        valid = ~np.isnan(labels[:, k]) & np.isfinite(scores[:, k])
        y, s = labels[valid, k], scores[valid, k]
        if y.size == 0 or y.min() == y.max():
            ax.plot([], [], color=palette(k % 20), label=f"{name} (n/a)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.2, color=palette(k % 20), label=f"{name} ({roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=8)
    return _save(figure, path)


def plot_recall_curve(retrieval: Mapping[str, Any], path: str | os.PathLike, title: str = "Retrieval") -> Path:
    """Recall@k against k for both directions, from :func:`~common.evaluation.retrieval.retrieval_metrics`."""
    curve = retrieval["curve"]
    k = np.asarray(curve["k"])
    figure = Figure(figsize=(6.0, 4.5))
    ax = figure.add_subplot()
    ax.plot(k, curve["image_to_text"], label="image → report")
    ax.plot(k, curve["text_to_image"], label="report → image")
    ax.plot(k, np.minimum(k / retrieval["n_pairs"], 1.0), ls="--", color="grey", label="chance")
    ax.set(xlabel="k", ylabel="Recall@k", title=f"{title} (N={retrieval['n_pairs']})", ylim=(0, 1.01))
    ax.set_xscale("log")
    ax.legend()
    return _save(figure, path)


def plot_embedding_map(
    embeddings: Any,
    labels: Any,
    names: Sequence[str] | None,
    path: str | os.PathLike,
    method: str = "pca",
    seed: int = 0,
    max_points: int = 5000,
) -> Path:
    """2-D map of the embeddings (PCA, or t-SNE), one small panel per finding coloured by presence.

    Args:
        embeddings: ``(N, D)``.
        labels: ``(N, K)`` 0/1/NaN.
        names: ``K`` finding names.
        path: output PNG.
        method: ``"pca"`` (default, fast), ``"tsne"``, or ``"auto"`` (t-SNE when N <= 1000, else PCA).
        seed: seeds the subsampling and t-SNE.
        max_points: cases drawn at most (random subset beyond that).
    """
    x = as_numpy(embeddings, "embeddings", ndim=2)
    labels = to_2d_labels(labels, "labels")
    if len(x) != len(labels) or len(x) < 3:
        raise ValueError(f"need >= 3 embeddings with one label row each, got {len(x)} and {len(labels)}")
    names = label_names(names, labels.shape[1])
    if method == "auto":
        method = "tsne" if len(x) <= 1000 else "pca"
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca', 'tsne' or 'auto', got {method!r}")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        keep = np.sort(rng.choice(len(x), size=max_points, replace=False))
        x, labels = x[keep], labels[keep]
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        perplexity = min(30.0, (len(x) - 1) / 3)  # t-SNE needs perplexity < N
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    cols = min(6, len(names))
    rows = -(-len(names) // cols)
    figure = Figure(figsize=(2.4 * cols, 2.4 * rows))
    for k, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, k + 1)
        groups = (
            (np.isnan(labels[:, k]), "#dddddd", "unknown"),
            (labels[:, k] == 0, "#7f9fbf", "absent"),
            (labels[:, k] == 1, "#d62728", "present"),
        )
        for sel, colour, label in groups:
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, c=colour, label=label, linewidths=0)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.axes[0].legend(fontsize=6, markerscale=2, loc="best")
    figure.suptitle(f"Embedding map ({method.upper()}, N={len(x)})", fontsize=10)
    return _save(figure, path)


def plot_dice_bars(segmentation: Mapping[str, Any], path: str | os.PathLike, title: str = "Segmentation probe") -> Path:
    """Bar chart of Dice per class, from :func:`~common.evaluation.seg_probe.train_segmentation_probe`."""
    per_class = segmentation["per_class"]
    names = list(per_class)
    values = [per_class[n]["dice"] if per_class[n]["dice"] is not None else 0.0 for n in names]
    figure = Figure(figsize=(max(4.0, 0.6 * len(names) + 2.0), 4.0))
    ax = figure.add_subplot()
    bars = ax.bar(range(len(names)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    if segmentation.get("mean_dice") is not None:
        ax.axhline(segmentation["mean_dice"], ls="--", color="grey", label=f"mean {segmentation['mean_dice']:.3f}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="Dice", ylim=(0, 1.05), title=title)
    return _save(figure, path)


def plot_dice_fractions(
    results: Mapping[str, Any], path: str | os.PathLike, title: str = "Segmentation, frozen encoder"
) -> Path:
    """Mean Dice (95 % CI) against the labelled fraction, one line per variant, from
    :func:`~common.evaluation.decoder_probe.frozen_encoder_segmentation`."""
    figure = Figure(figsize=(5.0, 3.6))
    ax = figure.add_subplot()
    for variant, runs in results["variants"].items():
        keys = sorted(runs, key=float)
        x = [100.0 * float(k) for k in keys]
        y = [runs[k]["mean_dice"] if runs[k]["mean_dice"] is not None else float("nan") for k in keys]
        low = [runs[k]["mean_dice_ci"][0] if runs[k]["mean_dice_ci"][0] is not None else v for k, v in zip(keys, y)]
        high = [runs[k]["mean_dice_ci"][1] if runs[k]["mean_dice_ci"][1] is not None else v for k, v in zip(keys, y)]
        ax.plot(x, y, marker="o", label=variant)
        ax.fill_between(x, low, high, alpha=0.2)
    ax.set_xscale("log")
    ax.set(xlabel="labelled training cases (%)", ylabel="mean Dice", ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_validation_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike, title: str = "Validation"
) -> Path:
    """Each validation metric against the training epoch, one line per tag (``{tag: [(epoch, value), ...]}`` as
    ``scripts/probe_trajectory.py`` reads them from a run's TensorBoard logs), the best point of each marked."""
    figure = Figure(figsize=(6.0, 4.0))
    ax = figure.add_subplot()
    for tag, points in curves.items():
        epochs, values = zip(*points)
        (line,) = ax.plot(epochs, values, marker="o", ms=3, label=tag)
        best = int(np.nanargmax(values))
        ax.plot([epochs[best]], [values[best]], marker="*", ms=10, color=line.get_color())
    ax.set(xlabel="epoch", ylabel="validation metric", title=title)
    ax.legend(fontsize=8)
    return _save(figure, path)
