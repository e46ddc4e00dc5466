"""Paired comparison of zero-shot predictions of several models on the same cases (ablations, baselines).

Each model's ``predictions.csv`` is what a bundle's ``inference.yaml`` writes (MONAI ``ClassificationSaver``: the
image path, then one probability per finding in the bundle's finding order). Labels come from the datalist split the
predictions were made on. For each model: macro AUROC with a bootstrap CI; for each model against the reference:
the paired-bootstrap difference (:func:`common.evaluation.metrics.paired_auroc_difference`: every resample scores
both models on the same cases). Writes JSON and prints a Markdown table.

Usage::

    python scripts/compare_predictions.py run --findings cxr --reference full=runs/full/predictions.csv \\
        --others "{'stage 1 only': 'runs/s1/predictions.csv', 'no local': 'runs/nolocal/predictions.csv'}" \\
        --datalist ~/.cache/medvlp/phantoms-v2.1/datalist_2d.json --out comparison.json

The ``evaluations`` command compares evaluate-workflow outputs instead (each run's evaluation directory, holding the
``per_case.csv`` the harness writes): zero-shot, linear and kNN probe AUROC and retrieval R@k in both directions, each
with paired-bootstrap differences (:func:`common.evaluation.per_case.compare_evaluations`)::

    python scripts/compare_predictions.py evaluations --reference full=runs/full/eval \
        --others "{'no memory': 'runs/no_memory/eval'}" --out comparison.json

The ``masked_tokens`` command pairs MPMA evaluations on their report reconstruction (``masked_tokens.csv``: the same
masked tokens of the held-out reports in every run of one seed): masked-token accuracy per run and the difference
against the reference with a bootstrap over reports (:func:`common.methods.mpma.evaluate.compare_masked_tokens`)::

    python scripts/compare_predictions.py masked_tokens --reference full=runs/full/eval \
        --others "{'no memory': 'runs/no_memory/eval'}" --out masked_tokens.json
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fire
import numpy as np

from common.data.contract import DataContractError, load_datalist
from common.data.finding_sets import finding_set
from common.evaluation.metrics import multilabel_auroc, paired_auroc_difference
from common.evaluation.per_case import compare_evaluations, comparison_markdown
from common.methods.mpma.evaluate import compare_masked_tokens

__all__ = ["compare", "evaluations", "masked_tokens", "read_predictions", "run"]


def _findings(name: str) -> list[Any]:
    """The phantom vocabulary of ``cxr`` (radiograph findings) or ``ct`` (the 18 CT-RATE findings)."""
    if name not in ("cxr", "ct"):
        raise ValueError(f"findings must be 'cxr' or 'ct', got {name!r}")
    return finding_set("phantom", dims=2 if name == "cxr" else 3)


def read_predictions(path: str | os.PathLike, num_findings: int) -> dict[str, np.ndarray]:
    """``{resolved image path: (K,) probabilities}`` from a ``ClassificationSaver`` CSV."""
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 1 + num_findings:
                raise DataContractError(path, f"row {row_number} has {len(row) - 1} values, expected {num_findings}")
            out[os.path.realpath(row[0])] = np.asarray([float(v) for v in row[1:]], dtype=np.float64)
    if not out:
        raise DataContractError(path, "no predictions")
    return out


def compare(
    reference: tuple[str, Mapping[str, np.ndarray]],
    others: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    names: list[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro AUROC per model and paired differences against the reference, on the cases every model predicted."""
    cases = sorted(set(labels).intersection(reference[1], *others.values()))
    if not cases:
        raise ValueError("the predictions and the labelled cases have no image in common")
    y = np.stack([labels[c] for c in cases])
    ref = np.stack([reference[1][c] for c in cases])
    result: dict[str, Any] = {"n_cases": len(cases), "reference": reference[0], "models": {}, "differences": {}}
    result["models"][reference[0]] = multilabel_auroc(ref, y, names, n_bootstrap=n_bootstrap, seed=seed)
    for name, predictions in others.items():
        scores = np.stack([predictions[c] for c in cases])
        result["models"][name] = multilabel_auroc(scores, y, names, n_bootstrap=n_bootstrap, seed=seed)
        result["differences"][name] = paired_auroc_difference(scores, ref, y, names, n_bootstrap=n_bootstrap, seed=seed)
    return result


def _markdown(result: dict[str, Any]) -> str:
    section = {"models": result["models"], "differences": result["differences"]}
    return comparison_markdown({**result, "sections": {"zero_shot": section}})


def run(
    reference: str,
    others: Mapping[str, str],
    datalist: str,
    findings: str = "cxr",
    split: str = "test",
    out: str = "comparison.json",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> None:
    """Compare ``others`` (``{name: predictions.csv}``) with ``reference`` (``name=predictions.csv``).

    Args:
        findings: the finding set of the predictions' columns: ``cxr`` or ``ct``.
    """
    ref_name, _, ref_path = reference.partition("=")
    if not ref_path:
        raise ValueError("--reference must be name=path/to/predictions.csv")
    vocabulary = _findings(findings)
    keys, names = [f.key for f in vocabulary], [f.name for f in vocabulary]
    labels = {}
    for record in load_datalist(datalist, split):
        if "labels" in record:
            values = [record["labels"].get(k) for k in keys]
            labels[os.path.realpath(record["image"])] = np.asarray(
                [np.nan if v is None else float(v) for v in values], dtype=np.float64
            )
    result = compare(
        (ref_name, read_predictions(ref_path, len(keys))),
        {name: read_predictions(path, len(keys)) for name, path in others.items()},
        labels,
        names,
        n_bootstrap,
        seed,
    )
    Path(out).write_text(json.dumps(result, indent=2, default=float))
    print(_markdown(result))


def evaluations(
    reference: str,
    others: Mapping[str, str],
    out: str = "comparison.json",
    ks: tuple[int, ...] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> None:
    """Compare evaluation directories ``others`` (``{name: dir}``) with ``reference`` (``name=dir``), case by case."""
    ref_name, _, ref_path = reference.partition("=")
    if not ref_path:
        raise ValueError("--reference must be name=path/to/evaluation_dir")
    result = compare_evaluations(
        (ref_name, ref_path), dict(others), ks=tuple(int(k) for k in ks), n_bootstrap=n_bootstrap, seed=seed
    )
    Path(out).write_text(json.dumps(result, indent=2, default=float))
    print(comparison_markdown(result))


def masked_tokens(
    reference: str, others: Mapping[str, str], out: str = "masked_tokens.json", n_bootstrap: int = 1000, seed: int = 0
) -> None:
    """Compare MPMA evaluation directories' masked-token accuracy (``others``: ``{name: dir}``, ``reference``:
    ``name=dir``), paired on the same masked tokens."""
    ref_name, _, ref_path = reference.partition("=")
    if not ref_path:
        raise ValueError("--reference must be name=path/to/evaluation_dir")
    result = compare_masked_tokens((ref_name, ref_path), dict(others), n_bootstrap=n_bootstrap, seed=seed)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"| run | masked-token accuracy | minus {ref_name} | 95% CI |\n|---|---|---|---|")
    print(f"| {ref_name} | {result['accuracy'][ref_name]:.3f} | reference | |")
    for name, diff in result["differences"].items():
        low, high = diff["difference_ci"]
        ci = "" if low is None else f"[{low:+.3f}, {high:+.3f}]"
        print(f"| {name} | {result['accuracy'][name]:.3f} | {diff['difference']:+.3f} | {ci} |")
    print(f"\n{result['n_tokens']} masked tokens of {result['n_cases']} reports")


if __name__ == "__main__":
    fire.Fire({"run": run, "evaluations": evaluations, "masked_tokens": masked_tokens})
