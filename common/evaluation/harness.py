"""One entry point for a bundle's evaluate workflow: run every section whose inputs are present.

The harness knows nothing about the method. A bundle encodes its evaluation data with the FROZEN encoders
(global image embeddings, report embeddings, prompt embeddings, patch features) and hands the arrays over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    labels = to_2d_labels(test_labels, "test_labels") if test_labels is not None else None
    names = _label_names(label_names, labels.shape[1]) if labels is not None else None
    if test_emb is not None:  # kept as given (a CUDA tensor stays on the GPU for zero-shot and retrieval)
        shape = tuple(test_emb.shape) if hasattr(test_emb, "shape") else np.shape(test_emb)
        if len(shape) != 2 or (labels is not None and shape[0] != len(labels)):
            raise ValueError(f"test_emb must be (N, D) with one row per test_labels row, got shape {shape}")
    sections = _Sections(labels, names, n_bootstrap, seed, report)

    if test_emb is not None and labels is not None and pos_prompt_emb is not None and neg_prompt_emb is not None:
        _zero_shot(sections, test_emb, pos_prompt_emb, neg_prompt_emb, temperature)
    if test_emb is not None and test_text_emb is not None:
        _retrieval(sections, test_emb, test_text_emb)
    if train_emb is not None and train_labels is not None and test_emb is not None and labels is not None:
        baseline = (baseline_train_emb, baseline_test_emb, baseline_name)
        _probes(sections, train_emb, train_labels, test_emb, knn_k, knn_temperature, baseline)
    seg_inputs = (train_patch_features, train_masks, test_patch_features, test_masks)
    if all(x is not None for x in seg_inputs):
        _segmentation(sections, seg_inputs, {"seed": seed, **dict(segmentation_kwargs or {})})
    elif any(x is not None for x in seg_inputs):
        logger.warning("segmentation probe skipped: it needs train/test patch features and masks")

    if not sections.results:
        raise ValueError("nothing to evaluate: no section received all of its inputs (see the docstring table)")
    if report is not None:
        sections.write(test_emb, case_ids, embedding_map)
    return sections.results


@dataclass
class _Sections:
    """What the sections of one :func:`evaluate_embeddings` call share, and what they produce."""

    labels: np.ndarray | None
    names: list[str] | None
    n_bootstrap: int
    seed: int
    report: EvaluationReport | None
    results: dict[str, Any] = field(default_factory=dict)
    per_case: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) columns, "<section>/<finding or quantity>"

    def auroc(self, scores: Any, labels: np.ndarray | None = None) -> dict[str, Any]:
        """Macro / per-finding AUROC with bootstrap CIs of ``(N, K)`` scores against the test labels."""
        labels = self.labels if labels is None else labels
        return multilabel_auroc(scores, labels, self.names, n_bootstrap=self.n_bootstrap, seed=self.seed)

    def figure(self, name: str, draw: Callable[[Path], Path], stem: str | None = None) -> None:
        """Draw ``<stem or name>.png`` into the report's figure folder as figure ``name`` (nothing without a report)."""
        if self.report is not None:
            self.report.add_figure(name, draw(self.report.figure_dir / f"{stem or name}.png"))

    def write(self, test_emb: Any, case_ids: Sequence[str] | None, embedding_map: str | None) -> None:
        """Add every section, ``per_case.csv``'s columns and the embedding map to the report."""
        for name, section in self.results.items():
            self.report.add_section(name, section)
        labels, names = self.labels, self.names
        if self.per_case and labels is not None:
            n = len(labels)
            ids = [str(i) for i in range(n)] if case_ids is None else [str(c) for c in case_ids]
            if len(ids) != n:
                raise ValueError(f"{len(ids)} case_ids for {n} test cases")
            self.report.set_per_case(ids, {**_columns("label", names, labels), **self.per_case})
        if embedding_map and test_emb is not None and labels is not None and len(test_emb) >= 3:
            self.figure(
                "embedding_map",
                lambda path: plot_embedding_map(test_emb, labels, names, path, embedding_map, self.seed),
            )


def _zero_shot(sections: _Sections, test_emb: Any, pos: Any, neg: Any, temperature: float) -> None:
    """Prompt-pair zero-shot scores and their AUROCs."""
    labels, names = sections.labels, sections.names
    scores = zero_shot_scores(test_emb, pos, neg, temperature)
    if scores.shape[1] != labels.shape[1]:
        raise ValueError(f"{scores.shape[1]} prompt sets for {labels.shape[1]} label columns")
    results = zero_shot_auroc(scores, labels, names, sections.n_bootstrap, sections.seed)
    sections.results["zero_shot"] = {**results, "temperature": temperature}
    sections.per_case.update(_columns("zero_shot", names, scores))
    sections.figure("zero_shot_roc", lambda path: plot_roc_curves(scores, labels, names, path))


def _retrieval(sections: _Sections, test_emb: Any, test_text_emb: Any) -> None:
    """Image -> report and report -> image ranks of the true pair, and their recall summary."""
    image_to_text, text_to_image = retrieval_ranks(test_emb, test_text_emb), retrieval_ranks(test_text_emb, test_emb)
    summary = retrieval_summary(image_to_text, text_to_image, n_bootstrap=sections.n_bootstrap, seed=sections.seed)
    sections.results["retrieval"] = summary
    sections.per_case.update(
        {"retrieval/image_to_text_rank": image_to_text, "retrieval/text_to_image_rank": text_to_image}
    )
    sections.figure("retrieval_recall", lambda path: plot_recall_curve(summary, path), stem="retrieval")


def _probes(
    sections: _Sections,
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    knn_k: int,
    knn_temperature: float,
    baseline: tuple[Any, Any, str],
) -> None:
    """Linear and kNN probes (the computation of probes.linear_probe / knn_probe, keeping scores for the figures),
    and the same probes on a baseline encoder's embeddings with paired AUROC differences."""
    labels, names, seed = sections.labels, sections.names, sections.seed
    train_y = to_2d_labels(train_labels, "train_labels")
    if train_y.shape[1] != labels.shape[1]:
        raise ValueError(f"train_labels has {train_y.shape[1]} columns but test_labels has {labels.shape[1]}")
    linear, chosen = linear_probe_scores(train_emb, train_y, test_emb, seed=seed)
    sections.results["linear_probe"] = sections.auroc(linear)
    for entry, c in zip(sections.results["linear_probe"]["per_label"].values(), chosen):
        entry["C"] = c
    knn = knn_scores(train_emb, train_y, test_emb, k=knn_k, temperature=knn_temperature)
    sections.results["knn_probe"] = {**sections.auroc(knn), "k": knn_k, "temperature": knn_temperature}
    sections.per_case.update({**_columns("linear_probe", names, linear), **_columns("knn_probe", names, knn)})
    for name, probe_scores in (("linear_probe_roc", linear), ("knn_probe_roc", knn)):
        sections.figure(name, lambda path, s=probe_scores: plot_roc_curves(s, labels, names, path))

    baseline_train_emb, baseline_test_emb, baseline_name = baseline
    if baseline_train_emb is None or baseline_test_emb is None:
        return
    base_linear, _ = linear_probe_scores(baseline_train_emb, train_y, baseline_test_emb, seed=seed)
    base_knn = knn_scores(baseline_train_emb, train_y, baseline_test_emb, k=knn_k, temperature=knn_temperature)
    for probe, ours, theirs in (("linear_probe", linear, base_linear), ("knn_probe", knn, base_knn)):
        sections.results[f"{baseline_name}_{probe}"] = sections.auroc(theirs)
        sections.results[f"{probe}_vs_{baseline_name}"] = paired_auroc_difference(
            ours, theirs, labels, names, n_bootstrap=sections.n_bootstrap, seed=seed
        )


def _segmentation(sections: _Sections, inputs: tuple[Any, Any, Any, Any], kwargs: dict[str, Any]) -> None:
    """The linear patch-feature segmentation probe and its Dice bars."""
    results = train_segmentation_probe(*inputs, **kwargs)
    sections.results["segmentation"] = results
    sections.figure("segmentation_dice", lambda path: plot_dice_bars(results, path))
