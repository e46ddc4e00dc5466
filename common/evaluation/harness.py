"""One entry point for a bundle's evaluate workflow: run every section whose inputs are present.

The harness knows nothing about the method. A bundle encodes its evaluation data with the FROZEN encoders
(global image embeddings, report embeddings, prompt embeddings, patch features) and hands the arrays over.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.evaluation._arrays import label_names as _label_names
from common.evaluation._arrays import to_2d_labels
from common.evaluation.metrics import multilabel_auroc, paired_auroc_difference
from common.evaluation.plots import plot_dice_bars, plot_embedding_map, plot_recall_curve, plot_roc_curves
from common.evaluation.probes import knn_scores, linear_probe_scores
from common.evaluation.report import EvaluationReport
from common.evaluation.retrieval import retrieval_ranks, retrieval_summary
from common.evaluation.seg_probe import train_segmentation_probe
from common.evaluation.zero_shot import zero_shot_auroc, zero_shot_scores

__all__ = ["evaluate_embeddings"]

logger = logging.getLogger(__name__)


def _columns(section: str, names: Sequence[str], values: Any) -> dict[str, np.ndarray]:
    """``{"<section>/<name>": (N,)}`` for the columns of an ``(N, K)`` score or label array."""
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    return {f"{section}/{name}": array[:, k] for k, name in enumerate(names)}


def evaluate_embeddings(
    test_emb: Any = None,
    test_labels: Any = None,
    label_names: Sequence[str] | None = None,
    *,
    train_emb: Any = None,
    train_labels: Any = None,
    test_text_emb: Any = None,
    pos_prompt_emb: Any = None,
    neg_prompt_emb: Any = None,
    temperature: float = 0.01,
    train_patch_features: Any = None,
    train_masks: Any = None,
    test_patch_features: Any = None,
    test_masks: Any = None,
    segmentation_kwargs: Mapping[str, Any] | None = None,
    baseline_train_emb: Any = None,
    baseline_test_emb: Any = None,
    baseline_name: str = "baseline",
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    n_bootstrap: int = 1000,
    seed: int = 0,
    report: EvaluationReport | None = None,
    embedding_map: str | None = "pca",
    case_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate frozen-encoder outputs; each section runs only when its inputs are given.

    =================  ===========================================================================
    section            inputs
    =================  ===========================================================================
    ``zero_shot``      ``test_emb``, ``test_labels``, ``pos_prompt_emb``, ``neg_prompt_emb``
    ``retrieval``      ``test_emb``, ``test_text_emb`` (row-aligned pairs)
    ``linear_probe``   ``train_emb``, ``train_labels``, ``test_emb``, ``test_labels``
    ``knn_probe``      same as ``linear_probe``
    ``segmentation``   ``train_patch_features``, ``train_masks``, ``test_patch_features``, ``test_masks``
    ``*_vs_<name>``    the probe inputs plus ``baseline_train_emb``, ``baseline_test_emb``: the same probes on a
                       baseline encoder's embeddings (``<name>_linear_probe``, ``<name>_knn_probe``) and the paired
                       bootstrap of the AUROC differences (``linear_probe_vs_<name>``, ``knn_probe_vs_<name>``)
    =================  ===========================================================================

    Args:
        test_emb: ``(N, D)`` global image embeddings of the test set.
        test_labels: ``(N, K)`` 0/1 labels, NaN for unknown.
        label_names: ``K`` finding names (the prompt order for zero-shot).
        train_emb: ``(M, D)`` embeddings of the probe training set.
        train_labels: ``(M, K)`` labels of the probe training set.
        test_text_emb: ``(N, D)`` report embeddings paired with ``test_emb``.
        pos_prompt_emb: ``(K, P, D)`` "present" prompt embeddings.
        neg_prompt_emb: ``(K, P, D)`` paired "absent" prompt embeddings.
        temperature: the model's contrastive softmax temperature (CLIP's trained value is 0.01).
        train_patch_features: ``(B, C, *grid)`` frozen patch features.
        train_masks: ``(B, *spatial)`` label maps.
        test_patch_features: ``(B', C, *grid)``.
        test_masks: ``(B', *spatial)``.
        baseline_train_emb, baseline_test_emb: embeddings of the same cases from a baseline encoder (e.g. the
            random initialisation), compared case by case with the paired bootstrap.
        baseline_name: name of the baseline in the result keys.
        segmentation_kwargs: extra arguments of :func:`~common.evaluation.seg_probe.train_segmentation_probe`
            (``epochs``, ``lr``, ``class_names``, ...).
        knn_k: neighbours of the kNN probe.
        knn_temperature: temperature of the kNN vote.
        n_bootstrap: bootstrap resamples for every AUROC CI.
        seed: seed of every random choice (CV folds, bootstrap, probe training, t-SNE).
        report: when given, each section and its figures are added to it (call ``report.write()`` afterwards).
        embedding_map: ``"pca"``/``"tsne"``/``"auto"`` draws the test embedding map into ``report``; None skips it.
        case_ids: ``N`` names of the test cases (e.g. image paths) for ``report``'s ``per_case.csv`` (labels, zero-shot
            and probe scores, retrieval ranks per case: :mod:`common.evaluation.per_case`); None numbers the rows.

    Returns:
        ``{section: results}`` for the sections that ran.

    Raises:
        ValueError: if no section has its inputs, or inputs disagree in shape.
    """
    results: dict[str, Any] = {}
    per_case: dict[str, Any] = {}  # (N,) columns for per_case.csv, named <section>/<finding or quantity>
    figures = report.figure_dir if report is not None else None
    labels = to_2d_labels(test_labels, "test_labels") if test_labels is not None else None
    names = _label_names(label_names, labels.shape[1]) if labels is not None else None
    if test_emb is not None:  # kept as given (a CUDA tensor stays on the GPU for zero-shot and retrieval)
        shape = tuple(test_emb.shape) if hasattr(test_emb, "shape") else np.shape(test_emb)
        if len(shape) != 2 or (labels is not None and shape[0] != len(labels)):
            raise ValueError(f"test_emb must be (N, D) with one row per test_labels row, got shape {shape}")

    if test_emb is not None and labels is not None and pos_prompt_emb is not None and neg_prompt_emb is not None:
        scores = zero_shot_scores(test_emb, pos_prompt_emb, neg_prompt_emb, temperature)
        if scores.shape[1] != labels.shape[1]:
            raise ValueError(f"{scores.shape[1]} prompt sets for {labels.shape[1]} label columns")
        results["zero_shot"] = {**zero_shot_auroc(scores, labels, names, n_bootstrap, seed), "temperature": temperature}
        per_case.update(_columns("zero_shot", names, scores))
        if figures is not None:
            report.add_figure("zero_shot_roc", plot_roc_curves(scores, labels, names, figures / "zero_shot_roc.png"))

    if test_emb is not None and test_text_emb is not None:
        image_to_text, text_to_image = (
            retrieval_ranks(test_emb, test_text_emb),
            retrieval_ranks(test_text_emb, test_emb),
        )
        results["retrieval"] = retrieval_summary(image_to_text, text_to_image, n_bootstrap=n_bootstrap, seed=seed)
        per_case.update({"retrieval/image_to_text_rank": image_to_text, "retrieval/text_to_image_rank": text_to_image})
        if figures is not None:
            report.add_figure("retrieval_recall", plot_recall_curve(results["retrieval"], figures / "retrieval.png"))

    if train_emb is not None and train_labels is not None and test_emb is not None and labels is not None:
        train_y = to_2d_labels(train_labels, "train_labels")
        if train_y.shape[1] != labels.shape[1]:
            raise ValueError(f"train_labels has {train_y.shape[1]} columns but test_labels has {labels.shape[1]}")
        # Same computation as probes.linear_probe / probes.knn_probe, keeping the scores for the ROC figures.
        linear, chosen = linear_probe_scores(train_emb, train_y, test_emb, seed=seed)
        results["linear_probe"] = multilabel_auroc(linear, labels, names, n_bootstrap=n_bootstrap, seed=seed)
        for entry, c in zip(results["linear_probe"]["per_label"].values(), chosen):
            entry["C"] = c
        knn = knn_scores(train_emb, train_y, test_emb, k=knn_k, temperature=knn_temperature)
        per_case.update({**_columns("linear_probe", names, linear), **_columns("knn_probe", names, knn)})
        results["knn_probe"] = {
            **multilabel_auroc(knn, labels, names, n_bootstrap=n_bootstrap, seed=seed),
            "k": knn_k,
            "temperature": knn_temperature,
        }
        if figures is not None:
            for figure, probe_scores in (("linear_probe_roc", linear), ("knn_probe_roc", knn)):
                report.add_figure(figure, plot_roc_curves(probe_scores, labels, names, figures / f"{figure}.png"))
        if baseline_train_emb is not None and baseline_test_emb is not None:
            base_linear, _ = linear_probe_scores(baseline_train_emb, train_y, baseline_test_emb, seed=seed)
            base_knn = knn_scores(baseline_train_emb, train_y, baseline_test_emb, k=knn_k, temperature=knn_temperature)
            for probe, ours, theirs in (("linear_probe", linear, base_linear), ("knn_probe", knn, base_knn)):
                results[f"{baseline_name}_{probe}"] = multilabel_auroc(
                    theirs, labels, names, n_bootstrap=n_bootstrap, seed=seed
                )
                results[f"{probe}_vs_{baseline_name}"] = paired_auroc_difference(
                    ours, theirs, labels, names, n_bootstrap=n_bootstrap, seed=seed
                )

    seg_inputs = (train_patch_features, train_masks, test_patch_features, test_masks)
    if all(x is not None for x in seg_inputs):
        kwargs = {"seed": seed, **dict(segmentation_kwargs or {})}
        results["segmentation"] = train_segmentation_probe(*seg_inputs, **kwargs)
        if figures is not None:
            path = plot_dice_bars(results["segmentation"], figures / "segmentation_dice.png")
            report.add_figure("segmentation_dice", path)
    elif any(x is not None for x in seg_inputs):
        logger.warning("segmentation probe skipped: it needs train/test patch features and masks")

    if not results:
        raise ValueError("nothing to evaluate: no section received all of its inputs (see the docstring table)")
    if report is not None:
        for name, section in results.items():
            report.add_section(name, section)
        if per_case and labels is not None:
            n = len(labels)
            ids = [str(i) for i in range(n)] if case_ids is None else [str(c) for c in case_ids]
            if len(ids) != n:
                raise ValueError(f"{len(ids)} case_ids for {n} test cases")
            report.set_per_case(ids, {**_columns("label", names, labels), **per_case})
        if embedding_map and test_emb is not None and labels is not None and len(test_emb) >= 3:
            path = plot_embedding_map(test_emb, labels, names, figures / "embedding_map.png", embedding_map, seed)
            report.add_figure("embedding_map", path)
    return results
