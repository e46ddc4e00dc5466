"""Multi-label AUROC with case-resampling bootstrap confidence intervals, shared by every scoring section.

Point estimates come from :func:`sklearn.metrics.roc_auc_score` / :func:`~sklearn.metrics.average_precision_score`.
The bootstrap uses the Mann-Whitney identity ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with
mid-ranks (:func:`scipy.stats.rankdata`), vectorised over resamples, which equals ``roc_auc_score`` on every
resample (ties count one half) and is ~18x faster than calling it in a loop (0.5 ms vs 8.7 ms per resample
at N=1500 on one CPU core; 1000 resamples x 18 labels take ~8 s).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from common.evaluation._arrays import as_numpy, label_names, to_2d_labels

__all__ = [
    "auroc_rows",
    "bootstrap_mean",
    "multilabel_auroc",
    "paired_auroc_difference",
    "paired_mean_difference",
    "paired_ratio_difference",
]

logger = logging.getLogger(__name__)

# Resamples are processed in chunks of at most this many (resample x case) entries to bound memory.
_CHUNK_ENTRIES = 4_000_000


def auroc_rows(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` against ``labels``, counting only the entries where ``valid``.

    Args:
        scores: ``(R, n)`` finite scores.
        labels: ``(R, n)`` 0/1 (values where not ``valid`` are ignored).
        valid: ``(R, n)`` bool.

    Returns:
        ``(R,)`` AUROC per row; NaN where a row has no positive or no negative valid entry.
    """
    # Invalid entries are pushed above every valid score, so the valid entries keep the ranks 1..n_valid.
    ranks = rankdata(np.where(valid, scores, np.inf), axis=1)
    positive = valid & (labels > 0.5)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = valid.sum(axis=1) - n_pos
    u_stat = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1.0) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = u_stat / (n_pos * n_neg)
    auroc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auroc


def _resample_chunks(n_cases: int, n_bootstrap: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """Case-resampling bootstrap indices ``(start, (R, n_cases))`` in chunks of at most ``_CHUNK_ENTRIES`` entries."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // max(n_cases, 1))
    for start in range(0, n_bootstrap, chunk):
        yield start, rng.integers(0, n_cases, size=(min(chunk, n_bootstrap - start), n_cases))


def _percentile_ci(samples: np.ndarray, level: float) -> list[float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _check_scores(scores: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Columns that are entirely NaN mark labels that could not be scored; anything else must be finite."""
    skipped = np.isnan(scores).all(axis=0)
    bad = ~np.isfinite(scores[:, ~skipped]).all(axis=0)
    if bad.any():
        offenders = [n for n, s in zip(np.asarray(names)[~skipped], bad) if s]
        raise ValueError(f"scores contain NaN/inf for {offenders}; a model produced non-finite outputs")
    return skipped


def multilabel_auroc(
    scores: Any,
    labels: Any,
    names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """AUROC (and AUPRC) per label and macro-averaged, with percentile bootstrap confidence intervals.

    Cases (rows) are resampled with replacement, the same resample for every label, so the macro interval
    accounts for the correlation between labels. A label's interval uses the resamples in which it still has
    both classes; the macro interval uses the resamples in which every evaluable label has both classes.
    Unknown labels (NaN) are masked per label. A label with a single class (or an all-NaN score column, the
    convention for "could not be scored") gets ``None`` and is left out of the macro average.

    Args:
        scores: ``(N, K)`` scores, higher meaning "finding present"; ``(N,)`` for one label.
        labels: ``(N, K)`` 0/1 with NaN for unknown; ``(N,)`` for one label.
        names: ``K`` display names (default ``label_0..``).
        n_bootstrap: number of resamples (0 disables the intervals).
        seed: seed of the resampling generator.
        ci_level: coverage of the percentile interval.

    Returns:
        ``{"per_label": {name: {"auroc", "auroc_ci", "auprc", "n_pos", "n_neg", "n_unknown"}},
        "macro": {"auroc", "auroc_ci", "auprc", "n_labels"}, "n_cases", "bootstrap": {...}}``;
        ``*_ci`` are ``[low, high]`` lists, undefined values are ``None``.

    Raises:
        ValueError: on mismatched shapes, labels other than 0/1/NaN, or non-finite scores.
    """
    labels = to_2d_labels(labels, "labels")
    scores = as_numpy(scores, "scores")
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must have the same shape")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    n_cases, n_labels = labels.shape
    names = label_names(names, n_labels)
    skipped = _check_scores(scores, names)
    known = ~np.isnan(labels)

    per_label: dict[str, dict[str, Any]] = {}
    point = np.full(n_labels, np.nan)
    auprc = np.full(n_labels, np.nan)
    for k, name in enumerate(names):
        y = labels[known[:, k], k]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos and n_neg and not skipped[k]:
            point[k] = roc_auc_score(y, scores[known[:, k], k])
            auprc[k] = average_precision_score(y, scores[known[:, k], k])
        elif not skipped[k]:
            logger.warning("AUROC of %r is undefined: %d positive and %d negative cases", name, n_pos, n_neg)
        per_label[name] = {
            "auroc": None if np.isnan(point[k]) else float(point[k]),
            "auroc_ci": [None, None],
            "auprc": None if np.isnan(auprc[k]) else float(auprc[k]),
            "n_pos": n_pos,
            "n_neg": n_neg,
            "n_unknown": int(n_cases - n_pos - n_neg),
        }
    evaluable = np.isfinite(point)
    macro = {
        "auroc": float(point[evaluable].mean()) if evaluable.any() else None,
        "auroc_ci": [None, None],
        "auprc": float(auprc[evaluable].mean()) if evaluable.any() else None,
        "n_labels": int(evaluable.sum()),
    }

    n_used = 0
    if n_bootstrap and evaluable.any():
        boot = np.full((n_bootstrap, n_labels), np.nan)
        for start, idx in _resample_chunks(n_cases, n_bootstrap, seed):
            for k in np.flatnonzero(evaluable):
                valid = known[idx, k]
                boot[start : start + len(idx), k] = auroc_rows(scores[idx, k], np.nan_to_num(labels[idx, k]), valid)
        for k in np.flatnonzero(evaluable):
            per_label[names[k]]["auroc_ci"] = _percentile_ci(boot[:, k], ci_level)
        complete = np.isfinite(boot[:, evaluable]).all(axis=1)
        n_used = int(complete.sum())
        macro["auroc_ci"] = _percentile_ci(boot[complete][:, evaluable].mean(axis=1), ci_level)
    return {
        "per_label": per_label,
        "macro": macro,
        "n_cases": int(n_cases),
        "bootstrap": {"n_resamples": int(n_bootstrap), "n_used_macro": n_used, "ci_level": ci_level, "seed": seed},
    }


def paired_auroc_difference(
    scores: Any,
    baseline_scores: Any,
    labels: Any,
    names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Macro (and per-label) AUROC of ``scores`` minus that of ``baseline_scores`` on the same cases, with a paired
    bootstrap: each resample draws cases once and scores both models on them, so the interval is that of the
    difference (much narrower than comparing two separate intervals when the models' errors are correlated).

    Args:
        scores, baseline_scores: ``(N, K)`` scores of the two models on the same ``N`` cases.
        labels: ``(N, K)`` 0/1 with NaN for unknown.
        names: ``K`` display names.
        n_bootstrap: paired resamples (0: point estimates only).
        seed: seed of the resampling generator.
        ci_level: coverage of the percentile interval.

    Returns:
        ``{"macro": {"difference", "difference_ci", "p_not_better"}, "per_label": {name: {...}}, "n_cases",
        "bootstrap": {...}}``; ``p_not_better`` is the fraction of resamples in which the difference is <= 0
        (a one-sided bootstrap p-value), None without resamples.

    Raises:
        ValueError: if the score arrays and labels disagree in shape.
    """
    labels = to_2d_labels(labels, "labels")
    a, b = (as_numpy(s, "scores") for s in (scores, baseline_scores))
    a, b = (s[:, None] if s.ndim == 1 else s for s in (a, b))
    if a.shape != labels.shape or b.shape != labels.shape:
        raise ValueError(f"scores {a.shape} and {b.shape} must both match labels {labels.shape}")
    n_cases, n_labels = labels.shape
    names = label_names(names, n_labels)
    skipped = _check_scores(a, names) | _check_scores(b, names)
    known = ~np.isnan(labels)
    full = np.arange(n_cases)[None]
    point = np.full(n_labels, np.nan)
    for k in np.flatnonzero(~skipped):
        y = np.nan_to_num(labels[full, k])
        point[k] = (auroc_rows(a[full, k], y, known[full, k]) - auroc_rows(b[full, k], y, known[full, k]))[0]
    evaluable = np.isfinite(point)
    boot = np.full((n_bootstrap, n_labels), np.nan)
    if n_bootstrap and evaluable.any():
        for start, idx in _resample_chunks(n_cases, n_bootstrap, seed):
            for k in np.flatnonzero(evaluable):
                y, valid = np.nan_to_num(labels[idx, k]), known[idx, k]
                boot[start : start + len(idx), k] = auroc_rows(a[idx, k], y, valid) - auroc_rows(b[idx, k], y, valid)

    def summary(samples: np.ndarray, value: float) -> dict[str, Any]:
        finite = samples[np.isfinite(samples)]
        return {
            "difference": None if not np.isfinite(value) else float(value),
            "difference_ci": _percentile_ci(finite, ci_level) if finite.size else [None, None],
            "p_not_better": float((finite <= 0).mean()) if finite.size else None,
        }

    per_label = {names[k]: summary(boot[:, k], point[k]) for k in range(n_labels)}
    complete = np.isfinite(boot[:, evaluable]).all(axis=1) if evaluable.any() else np.zeros(n_bootstrap, bool)
    macro_point = float(point[evaluable].mean()) if evaluable.any() else float("nan")
    macro = {
        **summary(boot[complete][:, evaluable].mean(axis=1) if complete.any() else np.empty(0), macro_point),
        "n_labels": int(evaluable.sum()),
    }
    return {
        "macro": macro,
        "per_label": per_label,
        "n_cases": int(n_cases),
        "bootstrap": {
            "n_resamples": int(n_bootstrap),
            "n_used_macro": int(complete.sum()),
            "ci_level": ci_level,
            "seed": seed,
        },
    }


def bootstrap_mean(values: Any, n_bootstrap: int = 1000, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """Mean of per-case values (NaN ignored) with a case-resampling percentile interval.

    Returns:
        ``{"mean", "mean_ci", "n_cases"}`` (``None`` where no case is finite).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "mean_ci": [None, None], "n_cases": 0}
    samples = (
        np.concatenate([x[idx].mean(axis=1) for _, idx in _resample_chunks(x.size, n_bootstrap, seed)])
        if n_bootstrap
        else np.empty(0)
    )
    return {
        "mean": float(x.mean()),
        "mean_ci": _percentile_ci(samples, ci_level) if samples.size else [None, None],
        "n_cases": int(x.size),
    }


def paired_mean_difference(
    values: Any, baseline_values: Any, n_bootstrap: int = 1000, seed: int = 0, ci_level: float = 0.95
) -> dict[str, Any]:
    """Mean of ``values - baseline_values`` over the cases where both are finite, with a paired bootstrap.

    Returns:
        ``{"difference", "difference_ci", "p_not_better", "n_cases"}``; ``p_not_better`` is the fraction of resamples
        whose mean difference is <= 0.
    """
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (values, baseline_values))
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {a.size} and {b.size}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return {"difference": None, "difference_ci": [None, None], "p_not_better": None, "n_cases": 0}
    samples = (
        np.concatenate([d[idx].mean(axis=1) for _, idx in _resample_chunks(d.size, n_bootstrap, seed)])
        if n_bootstrap
        else np.empty(0)
    )
    return {
        "difference": float(d.mean()),
        "difference_ci": _percentile_ci(samples, ci_level) if samples.size else [None, None],
        "p_not_better": float((samples <= 0).mean()) if samples.size else None,
        "n_cases": int(d.size),
    }


def paired_ratio_difference(
    counts: Any,
    baseline_counts: Any,
    totals: Any,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """``sum(counts) / sum(totals) - sum(baseline_counts) / sum(totals)`` with a paired bootstrap over cases.

    For a rate pooled over units that come in cases (e.g. correct tokens among each report's masked tokens): both
    models are scored on the same units, each resample draws whole cases, so units of one case stay together.

    Returns:
        ``{"difference", "difference_ci", "n_cases"}``.
    """
    a, b, n = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (counts, baseline_counts, totals))
    if not a.shape == b.shape == n.shape:
        raise ValueError(f"per-case counts and totals must have the same length, got {a.size}, {b.size}, {n.size}")
    d = a - b
    difference = float(d.sum() / max(n.sum(), 1.0))
    samples = (
        np.concatenate(
            [
                d[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1.0)
                for _, idx in _resample_chunks(d.size, n_bootstrap, seed)
            ]
        )
        if n_bootstrap and d.size
        else np.empty(0)
    )
    return {
        "difference": difference,
        "difference_ci": _percentile_ci(samples, ci_level) if samples.size else [None, None],
        "n_cases": int(d.size),
    }
