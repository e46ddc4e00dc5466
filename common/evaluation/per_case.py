"""Per-case outputs of an evaluation (``per_case.csv``) and paired comparisons of two or more evaluations.

The harness writes, beside ``results.json``, one row per test case: its labels, its zero-shot and probe scores per
finding and its retrieval ranks in both directions. Two runs evaluated on the same test cases (an ablation and the full
model, a run with and without extra data) can then be compared case by case: every bootstrap resample scores both runs
on the same cases (:func:`~common.evaluation.metrics.paired_auroc_difference` for the AUROC sections,
:func:`~common.evaluation.metrics.paired_mean_difference` of the hit indicators for retrieval recall@k), which gives the
interval of the difference itself, much narrower than two separate intervals when the runs' errors are correlated.

``per_case.csv`` columns: ``case`` (the test image path), then ``<section>/<name>`` with section ``label``,
``zero_shot``, ``linear_probe``, ``knn_probe`` (one column per finding; labels NaN when unknown) and ``retrieval``
(``image_to_text_rank``, ``text_to_image_rank``: 1-based ranks of the true match among the test set).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.contract import DataContractError
from common.evaluation.metrics import bootstrap_mean, multilabel_auroc, paired_auroc_difference, paired_mean_difference

__all__ = [
    "PER_CASE_FILE",
    "SCORE_SECTIONS",
    "compare_evaluations",
    "comparison_markdown",
    "read_per_case",
    "write_per_case",
]

PER_CASE_FILE = "per_case.csv"
SCORE_SECTIONS = ("zero_shot", "linear_probe", "knn_probe")
RANK_COLUMNS = {"image_to_text": "retrieval/image_to_text_rank", "text_to_image": "retrieval/text_to_image_rank"}


def write_per_case(path: str | os.PathLike, case_ids: Sequence[str], columns: Mapping[str, Any]) -> Path:
    """Write ``per_case.csv`` atomically: ``case`` then one column per entry of ``columns`` (each ``(N,)``)."""
    path = Path(path)
    ids = [str(c) for c in case_ids]
    arrays = {name: np.asarray(values).reshape(-1) for name, values in columns.items()}
    for name, values in arrays.items():
        if len(values) != len(ids):
            raise ValueError(f"per-case column {name!r} has {len(values)} values for {len(ids)} cases")
        if "/" not in name:
            raise ValueError(f"per-case column {name!r} must be named <section>/<name>")
    if len(set(ids)) != len(ids):
        raise ValueError("per-case ids must be unique (two test records with the same image?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", *arrays])
        for row, case in enumerate(ids):
            writer.writerow([case, *(_format(values[row]) for values in arrays.values())])
    tmp.replace(path)
    return path


def _format(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "nan" if not np.isfinite(value) else repr(value)  # shortest exact round trip: saturated scores stay apart


def read_per_case(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(case ids, {column: (N,) float64})`` from a ``per_case.csv`` or the evaluation directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / PER_CASE_FILE
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise DataContractError(
            path,
            f"cannot read per-case outputs ({type(err).__name__}: {err}); evaluations "
            "written before per_case.csv existed must be re-run",
        ) from err
    if not rows or rows[0][:1] != ["case"] or len(rows) < 2:
        raise DataContractError(path, "not a per_case.csv of the evaluation harness (no 'case' header or no rows)")
    header = rows[0]
    ids, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataContractError(path, f"line {number} has {len(row)} fields, the header {len(header)}")
        ids.append(row[0])
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError as err:
            raise DataContractError(path, f"line {number}: {err}") from err
    table = np.asarray(values, dtype=np.float64).reshape(len(ids), len(header) - 1)
    return ids, {name: table[:, i] for i, name in enumerate(header[1:])}


def _section(columns: Mapping[str, np.ndarray], section: str) -> tuple[list[str], np.ndarray] | None:
    names = [c.split("/", 1)[1] for c in columns if c.split("/", 1)[0] == section]
    if not names:
        return None
    return names, np.stack([columns[f"{section}/{n}"] for n in names], axis=1)


def _aligned(runs: Mapping[str, tuple[list[str], dict[str, np.ndarray]]]) -> tuple[list[str], dict[str, dict]]:
    """Every run's columns in one case order (the runs hold the same cases: checked by the caller)."""
    ids = sorted(next(iter(runs.values()))[0])
    out = {}
    for name, (run_ids, columns) in runs.items():
        where = {case: i for i, case in enumerate(run_ids)}
        rows = np.asarray([where[c] for c in ids])
        out[name] = {column: values[rows] for column, values in columns.items()}
    return ids, out


def compare_evaluations(
    reference: tuple[str, str | os.PathLike],
    others: Mapping[str, str | os.PathLike],
    ks: Sequence[int] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Each run's metrics and each other run minus the reference, paired over the test cases all runs share.

    Args:
        reference: ``(name, evaluation directory or per_case.csv)``.
        others: ``{name: evaluation directory or per_case.csv}``.
        ks: recall cut-offs compared.
        n_bootstrap: resamples (the same case draws for every difference of one metric).
        seed: resampling seed.

    Returns:
        ``{"n_cases", "reference", "sections": {section: {"models": {name: metric}, "differences": {name: diff}}}}``
        with AUROC sections (``macro`` + ``per_label`` as :func:`~common.evaluation.metrics.multilabel_auroc` /
        :func:`~common.evaluation.metrics.paired_auroc_difference`) and ``retrieval/<direction>/R@k`` (mean hit rate
        with its interval; the difference of hit rates with its paired interval). Ranks are those of each run's own
        evaluation, so all runs must have been evaluated on the same test set (checked: the case ids must agree).

    Raises:
        ValueError: if the runs were evaluated on different test sets or disagree on the labels.
        DataContractError: if a ``per_case.csv`` is missing or malformed (named).
    """
    paths = {reference[0]: reference[1], **others}
    if len(paths) != 1 + len(others):
        raise ValueError(f"the reference name {reference[0]!r} is also one of the others")
    runs = {name: read_per_case(path) for name, path in paths.items()}
    sizes = {name: len(ids) for name, (ids, _) in runs.items()}
    if len(set(sizes.values())) != 1 or len({frozenset(ids) for ids, _ in runs.values()}) != 1:
        raise ValueError(
            f"the evaluations were run on different test sets (cases per run: {sizes}); retrieval ranks "
            "and probe scores are only comparable on the same set"
        )
    ids, columns = _aligned(runs)
    ref_name = reference[0]
    labels = _section(columns[ref_name], "label")
    if labels is None:
        raise ValueError(f"{paths[ref_name]}: no label columns")
    for name in others:
        theirs = _section(columns[name], "label")
        if theirs is None or theirs[0] != labels[0] or not np.array_equal(theirs[1], labels[1], equal_nan=True):
            raise ValueError(f"{name} and {ref_name} disagree on the test labels: not the same test set")
    label_names, y = labels
    result: dict[str, Any] = {"n_cases": len(ids), "reference": ref_name, "sections": {}}
    for section in SCORE_SECTIONS:
        scores = {name: _section(columns[name], section) for name in paths}
        if any(s is None or s[0] != label_names for s in scores.values()):
            continue  # absent in some run (e.g. no zero-shot prompts): not comparable
        ref_scores = scores[ref_name][1]
        result["sections"][section] = {
            "models": {
                name: multilabel_auroc(s[1], y, label_names, n_bootstrap=n_bootstrap, seed=seed)
                for name, s in scores.items()
            },
            "differences": {
                name: paired_auroc_difference(
                    scores[name][1], ref_scores, y, label_names, n_bootstrap=n_bootstrap, seed=seed
                )
                for name in others
            },
        }
    for direction, column in RANK_COLUMNS.items():
        if not all(column in columns[name] for name in paths):
            continue
        for k in ks:
            hits = {name: (columns[name][column] <= k).astype(np.float64) for name in paths}
            result["sections"][f"retrieval/{direction}/R@{k}"] = {
                "models": {name: bootstrap_mean(h, n_bootstrap, seed) for name, h in hits.items()},
                "differences": {
                    name: paired_mean_difference(hits[name], hits[ref_name], n_bootstrap, seed) for name in others
                },
            }
    if not result["sections"]:
        raise ValueError("the evaluations have no section in common to compare")
    return result


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """One table: per section and model, the metric with its interval and the paired difference to the reference."""

    def ci(pair: Any) -> str:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]" if pair and pair[0] is not None else ""

    def value(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        f"{result['n_cases']} test cases; differences are model minus `{result['reference']}` (paired bootstrap).",
        "",
        "| metric | model | value | 95% CI | difference | 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for section, content in result["sections"].items():
        for name, metric in content["models"].items():
            point, interval = (
                (metric["macro"]["auroc"], metric["macro"].get("auroc_ci"))
                if "macro" in metric
                else (metric["mean"], metric["mean_ci"])
            )
            diff = content["differences"].get(name)
            if diff is not None:
                diff = diff.get("macro", diff)
                shown = "n/a" if diff["difference"] is None else f"{diff['difference']:+.3f}"
                tail = f" {shown} | {ci(diff['difference_ci'])} |"
            else:
                tail = " reference | |"
            label = f"{section} (macro AUROC)" if "macro" in metric else f"{section} (hit rate)"
            lines.append(f"| {label} | {name} | {value(point)} | {ci(interval)} |{tail}")
    return "\n".join(lines)
