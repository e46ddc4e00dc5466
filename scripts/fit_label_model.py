"""Fit the CT-RATE label co-occurrence model of :mod:`common.data.label_model` and compare it with its source.

    python scripts/fit_label_model.py fit \\
        [--csv ../shared/data/reports/chest_ct_reports_labeled.csv] [--samples 100000] [--seed 0] \\
        [--out_json outputs/label_model_fit.json] [--update_module]

Reads the 18 CT-RATE label columns (by name) of a labelled-report CSV, fits the Gaussian copula
(:func:`common.data.label_model.fit_label_model`: prevalences, pairwise tetrachoric correlations, nearest
positive-definite repair, rounding) and prints

* the constants block in the module's format (``--update_module`` writes it, and today's date, into
  ``common/data/label_model.py``);
* a comparison of the source with 100k cases drawn from the fitted model: prevalence per finding, the largest
  absolute error of the conditional co-occurrence ``P(k | j)`` over all ordered pairs, and the distribution of the
  number of positive findings per case.

The JSON holds the same figures. Only summary statistics leave the CSV (its licence is CC BY-NC-SA).
"""

from __future__ import annotations

import csv
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

import fire
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.data import label_model

# The reference data sit next to the checkout (``../shared/data``) or inside it (``shared/data``).
_CSV_NAME = Path("data") / "reports" / "chest_ct_reports_labeled.csv"
_CSV_CANDIDATES = (REPO.parent / "shared" / _CSV_NAME, REPO / "shared" / _CSV_NAME)
DEFAULT_CSV = str(next((path for path in _CSV_CANDIDATES if path.is_file()), _CSV_CANDIDATES[0]))
MODULE = REPO / "common" / "data" / "label_model.py"
_BLOCK = re.compile(r"(# fmt: off\n)PREVALENCE: dict.*?(# fmt: on\n)", re.DOTALL)
_DATE = re.compile(r"fitted on \d{4}-\d{2}-\d{2}")

__all__ = ["compare", "fit", "format_constants", "read_labels"]


def read_labels(csv_path: str | Path) -> np.ndarray:
    """``(reports, 18)`` int64 label matrix from the CSV's CT-RATE columns (matched by name, any column order)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in label_model.FINDING_NAMES if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{csv_path}: missing label columns {missing}")
        rows = [[int(float(row[name])) for name in label_model.FINDING_NAMES] for row in reader]
    labels = np.asarray(rows, dtype=np.int64)
    if labels.size == 0 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{csv_path}: label columns must hold 0/1 and at least one row")
    return labels


def format_constants(prevalence: np.ndarray, correlation: np.ndarray, num_positives: np.ndarray) -> str:
    """The module's constants block (between ``# fmt: off`` and ``# fmt: on``, both included)."""
    lines = ["# fmt: off", "PREVALENCE: dict[str, float] = {"]
    lines += [f'    "{key}": {value:.3f},' for key, value in zip(label_model.FINDING_KEYS, prevalence)]
    lines += ["}", "_CORRELATION_ROWS = ("]
    for row in correlation:
        lines.append("    (" + ", ".join(f"{value:.2f}" for value in row + 0.0) + "),")
    lines += [")", f"SOURCE_NUM_POSITIVES: tuple[int, ...] = {tuple(int(c) for c in num_positives)}", "# fmt: on"]
    return "\n".join(lines) + "\n"


def _conditional(labels: np.ndarray) -> np.ndarray:
    """``P(k | j)`` as a ``(K, K)`` matrix (row ``j`` conditions on finding ``j``); NaN rows for absent ``j``."""
    y = labels.astype(np.float64)
    counts = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y.T @ y) / counts[:, None]


def compare(real: np.ndarray, sampled: np.ndarray) -> dict[str, Any]:
    """Prevalences, conditional co-occurrences and positives-per-case of two label matrices."""
    keys = label_model.FINDING_KEYS
    real_p, sampled_p = real.mean(axis=0), sampled.mean(axis=0)
    error = np.abs(_conditional(real) - _conditional(sampled))
    np.fill_diagonal(error, 0.0)
    j, k = np.unravel_index(np.nanargmax(error), error.shape)
    size = len(keys) + 1
    real_counts = np.bincount(real.sum(axis=1), minlength=size)
    sampled_counts = np.bincount(sampled.sum(axis=1), minlength=size)
    last = int(max(np.flatnonzero(real_counts).max(), np.flatnonzero(sampled_counts).max())) + 1
    return {
        "prevalence": {key: {"real": float(r), "sampled": float(s)} for key, r, s in zip(keys, real_p, sampled_p)},
        "prevalence_max_abs_error": float(np.abs(real_p - sampled_p).max()),
        "conditional_cooccurrence_max_abs_error": float(error[j, k]),
        "conditional_cooccurrence_mean_abs_error": float(np.nanmean(error[~np.eye(len(keys), dtype=bool)])),
        "conditional_cooccurrence_worst_pair": {"given": keys[j], "finding": keys[k]},
        "num_positives": {
            "real_counts": real_counts[:last].tolist(),
            "real_fraction": (real_counts[:last] / len(real)).round(4).tolist(),
            "sampled_fraction": (sampled_counts[:last] / len(sampled)).round(4).tolist(),
            "real_mean": float(real.sum(axis=1).mean()),
            "sampled_mean": float(sampled.sum(axis=1).mean()),
        },
    }


def fit(
    csv: str = DEFAULT_CSV,
    samples: int = 100_000,
    seed: int = 0,
    out_json: str = "outputs/label_model_fit.json",
    update_module: bool = False,
) -> None:
    """Fit the copula to ``csv``, print the constants block and the comparison, write ``out_json``.

    Args:
        csv: labelled-report CSV with the 18 CT-RATE label columns.
        samples: cases drawn from the fitted model for the comparison.
        seed: seed of the comparison draw.
        out_json: where the figures go (``""``: nowhere).
        update_module: write the constants block and today's date into ``common/data/label_model.py``.
    """
    labels = read_labels(csv)
    prevalence, correlation = label_model.fit_label_model(labels)
    num_positives = np.bincount(labels.sum(axis=1))
    block = format_constants(prevalence, correlation, num_positives)
    today = datetime.date.today().isoformat()
    print(f"# fitted on {today} from {csv} ({len(labels)} reports)\n{block}")

    # The comparison samples the freshly fitted constants, not necessarily the module's current ones.
    stored = label_model._CHOLESKY, label_model._PREVALENCE_VECTOR
    try:
        label_model._CHOLESKY = np.linalg.cholesky(correlation)
        label_model._PREVALENCE_VECTOR = prevalence.astype(np.float64)
        sampled = label_model.sample_label_matrix(np.random.default_rng(seed), samples)
    finally:
        label_model._CHOLESKY, label_model._PREVALENCE_VECTOR = stored
    result = compare(labels, sampled)
    module_matches = bool(
        np.array_equal(prevalence, label_model._PREVALENCE_VECTOR)
        and np.array_equal(correlation, label_model.CORRELATION)
    )

    print(f"{'finding':36s} {'real':>6s} {'sampled':>8s}")
    for key, row in result["prevalence"].items():
        print(f"{key:36s} {row['real']:6.3f} {row['sampled']:8.3f}")
    print(f"prevalence max abs error: {result['prevalence_max_abs_error']:.4f}")
    worst = result["conditional_cooccurrence_worst_pair"]
    print(
        f"P(k|j) max abs error: {result['conditional_cooccurrence_max_abs_error']:.4f} "
        f"(P({worst['finding']} | {worst['given']})), mean {result['conditional_cooccurrence_mean_abs_error']:.4f}"
    )
    counts = result["num_positives"]
    print("positives per case:", " ".join(f"{i:>5d}" for i in range(len(counts["real_counts"]))))
    print("  real counts      :", " ".join(f"{c:>5d}" for c in counts["real_counts"]))
    print("  real fraction    :", " ".join(f"{f:5.3f}" for f in counts["real_fraction"]))
    print("  sampled fraction :", " ".join(f"{f:5.3f}" for f in counts["sampled_fraction"]))
    print(f"  mean positives   : real {counts['real_mean']:.3f}, sampled {counts['sampled_mean']:.3f}")
    print(f"module constants match this fit: {module_matches}")

    if update_module:
        source = MODULE.read_text(encoding="utf-8")
        if not _BLOCK.search(source):
            raise RuntimeError(f"{MODULE}: constants block not found")
        source = _BLOCK.sub(lambda _: block, source, count=1)
        source = _DATE.sub(f"fitted on {today}", source, count=1)
        MODULE.write_text(source, encoding="utf-8")
        print(f"wrote the constants into {MODULE}")
    if out_json:
        report = {
            "source": str(csv),
            "reports": len(labels),
            "date": today,
            "samples": int(samples),
            "seed": int(seed),
            "finding_keys": list(label_model.FINDING_KEYS),
            "prevalence_fitted": prevalence.tolist(),
            "correlation_fitted": correlation.tolist(),
            "module_constants_match": module_matches,
            **result,
        }
        path = Path(out_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    fire.Fire({"fit": fit})
