"""Token lengths of the phantom chest X-ray reports against the IU X-ray reports.

Counts MiniLM word pieces (``common.transforms.text.load_tokenizer("default")``, no special tokens) of
``findings + " " + impression``:

* ``iu_xray``: the IU X-ray reports (``shared/data/reports/iu_xray_reports.csv``) that have both sections, after
  :func:`~common.transforms.text.clean_report` (de-identification tokens ``XXXX`` removed).
* ``phantom``: :func:`~common.data.radiograph_findings.write_radiograph_report` of ``num_cases`` random CT cases
  (:func:`~common.data.radiograph_findings.sample_ct_case`: CT-RATE label prevalences by default, or one
  probability for every CT finding), mapped with ``radiograph_labels``; sections read back with
  :func:`~common.transforms.text.extract_sections`.

Usage::

    python scripts/radiograph_report_lengths.py
    python scripts/radiograph_report_lengths.py --num_cases 500 --prevalence 0.4 --out_json /tmp/lengths.json

Prints median / p10 / p90 (and mean, p25, p75) of both and writes them as JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.data.radiograph_findings import radiograph_labels, sample_ct_case, write_radiograph_report
from common.transforms.text import clean_report, extract_sections, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IU = next(
    (
        p
        for p in (
            ROOT.parent / "shared" / "data" / "reports" / "iu_xray_reports.csv",
            ROOT / "shared" / "data" / "reports" / "iu_xray_reports.csv",
        )
        if p.is_file()
    ),
    ROOT.parent / "shared" / "data" / "reports" / "iu_xray_reports.csv",
)


def summary(lengths: list[int]) -> dict[str, float]:
    """n, mean and the 10/25/50/75/90th percentiles of token counts."""
    values = np.asarray(lengths, dtype=float)
    p10, p25, p50, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 1),
        "p10": float(p10),
        "p25": float(p25),
        "median": float(p50),
        "p75": float(p75),
        "p90": float(p90),
    }


def iu_lengths(csv_path: str | Path, tokenizer: Any) -> list[int]:
    """Token counts of the IU X-ray reports with both a findings and an impression section."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["findings"].strip() and r["impression"].strip()]
    texts = [f"{clean_report(r['findings'])} {clean_report(r['impression'])}" for r in rows]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def phantom_lengths(num_cases: int, seed: int, prevalence: Any, tokenizer: Any) -> list[int]:
    """Token counts of ``num_cases`` radiograph reports of random CT cases."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(num_cases):
        labels, details = sample_ct_case(rng, prevalence)
        sections = extract_sections(write_radiograph_report(radiograph_labels(labels, details), details, rng))
        texts.append(f"{sections['findings']} {sections['impression']}")
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def main(
    num_cases: int = 2000,
    seed: int = 0,
    prevalence: str | float = "ct_rate",
    iu_csv: str | None = None,
    tokenizer: str = "default",
    out_json: str = "radiograph_report_lengths.json",
) -> None:
    """Measure both distributions, print them and write ``out_json``.

    Args:
        num_cases: phantom reports to write.
        seed: generator seed of the phantom cases.
        prevalence: ``"ct_rate"`` (the labelled CT-RATE prevalences) or one probability for every CT finding.
        iu_csv: IU X-ray CSV (default: ``shared/data/reports/iu_xray_reports.csv`` next to or inside the checkout).
        tokenizer: tokenizer alias or path.
        out_json: output file.
    """
    tok = load_tokenizer(tokenizer)
    result: dict[str, Any] = {"tokenizer": tokenizer, "seed": seed, "prevalence": prevalence}
    p = None if prevalence == "ct_rate" else float(prevalence)
    result["phantom"] = summary(phantom_lengths(num_cases, seed, p, tok))
    csv_path = Path(iu_csv) if iu_csv else DEFAULT_IU
    result["iu_xray"] = summary(iu_lengths(csv_path, tok)) if csv_path.is_file() else None
    for name in ("iu_xray", "phantom"):
        stats = result[name]
        if stats is None:
            print(f"{name:8s} not available ({csv_path})")
            continue
        print(
            f"{name:8s} n={stats['n']:5d} median={stats['median']:5.1f} p10={stats['p10']:5.1f} "
            f"p90={stats['p90']:5.1f} mean={stats['mean']:5.1f}"
        )
    Path(out_json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
