"""Compare the length of the synthetic chest-CT reports with that of the real labelled reports.

Real reports: ``report_text`` of ``shared/data/reports/chest_ct_reports_labeled.csv`` (findings then impression,
no headers). Synthetic reports: :func:`common.data.report_writer.write_report` on ``n`` random cases of
:func:`~common.data.report_writer.random_case` (labels drawn with the real prevalences, random details); their
``FINDINGS:``/``IMPRESSION:`` headers are removed with :func:`common.transforms.text.extract_sections` so both
sides count the same kind of text. Lengths are whitespace words and MiniLM tokens (``[CLS]``/``[SEP]`` included,
no truncation).

Usage::

    python scripts/report_lengths.py run --n 500 --seed 0 --out report_lengths.json

Writes a JSON with the percentiles of both sides and their ratios, and prints a table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_REPORTS", "length_stats", "run", "synthetic_reports"]

DEFAULT_REPORTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reports" / "chest_ct_reports_labeled.csv"
_PERCENTILES = (10, 25, 50, 75, 90)


def synthetic_reports(n: int = 500, seed: int = 0) -> list[str]:
    """``n`` synthetic reports without section headers (findings then impression)."""
    from common.data.report_writer import random_case, write_report
    from common.transforms.text import extract_sections

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labels, details, study = random_case(rng)
        sections = extract_sections(write_report(labels, details, study, rng))
        out.append(f"{sections['findings']} {sections['impression']}".strip())
    return out


def length_stats(texts: Sequence[str], tokenizer: Any) -> dict[str, dict[str, float]]:
    """Percentiles (p10, p25, median, p75, p90) and mean of the word and token counts of ``texts``."""
    words = np.array([len(t.split()) for t in texts], dtype=float)
    tokens = np.array([len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]], dtype=float)
    out = {}
    for name, values in (("words", words), ("tokens", tokens)):
        stats = {f"p{q}" if q != 50 else "median": float(np.percentile(values, q)) for q in _PERCENTILES}
        stats["mean"] = float(values.mean())
        out[name] = stats
    return out


def run(
    n: int = 500,
    seed: int = 0,
    reports: str | None = None,
    tokenizer: str = "default",
    out: str = "report_lengths.json",
) -> dict[str, Any]:
    """Measure real and synthetic report lengths, write ``out`` (JSON) and print a table.

    Args:
        n: number of synthetic reports.
        seed: seed of the synthetic cases.
        reports: CSV of real reports with a ``report_text`` column (default: the shared labelled CT reports).
        tokenizer: tokenizer name or path for :func:`common.transforms.text.load_tokenizer`.
        out: output JSON path.

    Returns:
        ``{"real": stats, "synthetic": stats, "ratio": synthetic / real, ...}``.
    """
    from common.transforms.text import load_tokenizer

    path = Path(reports) if reports else DEFAULT_REPORTS
    with path.open(newline="") as f:
        real = [row["report_text"] for row in csv.DictReader(f) if row.get("report_text")]
    tok = load_tokenizer(tokenizer)
    result: dict[str, Any] = {
        "reports": str(path),
        "num_real": len(real),
        "num_synthetic": n,
        "seed": seed,
        "tokenizer": tokenizer,
        "real": length_stats(real, tok),
        "synthetic": length_stats(synthetic_reports(n, seed), tok),
    }
    result["ratio"] = {
        unit: {k: result["synthetic"][unit][k] / result["real"][unit][k] for k in result["real"][unit]}
        for unit in ("words", "tokens")
    }
    Path(out).write_text(json.dumps(result, indent=2))
    columns = ("p10", "p25", "median", "p75", "p90", "mean")
    print(f"{'':18s}" + "".join(f"{c:>9s}" for c in columns))
    for unit in ("words", "tokens"):
        for side in ("real", "synthetic", "ratio"):
            values = result[side][unit] if side != "ratio" else result["ratio"][unit]
            fmt = "{:9.2f}" if side == "ratio" else "{:9.0f}"
            print(f"{unit + ' ' + side:18s}" + "".join(fmt.format(values[c]) for c in columns))
    return result


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)  # the JSON is written and the table printed; returning it would make fire print it again


if __name__ == "__main__":
    import functools
    import sys

    import fire

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    fire.Fire({"run": functools.wraps(run)(_cli_run)})
