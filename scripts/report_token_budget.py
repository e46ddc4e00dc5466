"""How long real chest-CT reports are in tokens, and how much of their impression survives the text pipeline.

Reports: ``report_text`` of ``shared/data/reports/chest_ct_reports_labeled.csv`` (689 real CT-RATE-style reports,
findings then impression, no headers). Each report goes through the COLIPRI text preprocessing
(``bundles/colipri_*/configs/train.yaml``): :class:`~common.transforms.text.CleanReportd`, then

* **before**: :class:`~common.transforms.text.SelectReportSectionsd` (findings, then impression) and
  :class:`~common.transforms.text.Tokenized` truncation at ``max_length`` (what a plain truncating pipeline does);
* **after**: :class:`~common.transforms.text.FitReportToTokenBudgetd` first (the paper config today).

For each ``max_length`` it counts the reports whose impression is cut (some of its tokens lost) and wholly lost,
the reports truncated at all, and after fitting the share of findings sentences kept. A report's impression
survives when the truncated token ids end with the impression's own ids. Reports in which
:func:`~common.transforms.text.extract_sections` finds no impression are counted apart.

Tokenizer: ``--tokenizer`` (default ``default``, all-MiniLM-L6-v2: BERT's uncased WordPiece, the family of the
paper's CXR-BERT, whose own vocabulary is not available offline; pass a local CXR-BERT folder to measure with it).

Usage::

    python scripts/report_token_budget.py run --max_lengths "[512,160]" --out report_token_budget.json
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_REPORTS", "measure", "run"]

DEFAULT_REPORTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reports" / "chest_ct_reports_labeled.csv"
_PERCENTILES = (10, 25, 50, 75, 90, 99)


def _content_ids(tokenizer: Any, text: str, max_length: int | None) -> list[int]:
    """Token ids of ``text`` without special tokens, truncated as :class:`Tokenized` would at ``max_length``."""
    if max_length is None:
        return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    ids = tokenizer(text, max_length=max_length, truncation=True)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return [i for i in ids if i not in special]


def _impression_kept(tokenizer: Any, selected: str, impression: str, max_length: int) -> tuple[bool, bool, bool]:
    """``(truncated at all, impression whole, impression wholly lost)`` for ``selected`` ending in ``impression``."""
    full = _content_ids(tokenizer, selected, None)
    kept = _content_ids(tokenizer, selected, max_length)
    own = _content_ids(tokenizer, impression, None)
    whole = kept[-len(own) :] == own
    lost = len(kept) <= len(full) - len(own)  # every impression token is past the cut
    return len(kept) < len(full), whole, lost


def measure(reports: Sequence[str], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Before/after figures of one ``max_length`` (see the module docstring)."""
    from common.transforms.text import (
        CleanReportd,
        FitReportToTokenBudgetd,
        SelectReportSectionsd,
        extract_sections,
        split_sentences,
    )

    clean = CleanReportd("report", image_key=None)
    select = SelectReportSectionsd("report", image_key=None)
    fit = FitReportToTokenBudgetd("report", tokenizer, max_length=max_length, image_key=None)
    counts = {"before": np.zeros(3, int), "after": np.zeros(3, int)}
    kept_fraction, no_impression = [], 0
    for text in reports:
        cleaned = clean({"report": text})["report"]
        parts = extract_sections(cleaned)
        if not parts["impression"]:
            no_impression += 1
            continue
        fitted = fit({"report": cleaned})["report"]
        for side, report in (("before", cleaned), ("after", fitted)):
            selected = select({"report": report})["report"]
            impression = extract_sections(report)["impression"]
            counts[side] += _impression_kept(tokenizer, selected, impression, max_length)
        before, after = split_sentences(parts["findings"]), split_sentences(extract_sections(fitted)["findings"])
        kept_fraction.append(len(after) / len(before) if before else 1.0)
    with_impression = len(reports) - no_impression
    out: dict[str, Any] = {"max_length": max_length, "with_impression": with_impression, "no_impression": no_impression}
    for side, (truncated, whole, lost) in counts.items():
        out[side] = {
            "truncated": int(truncated),
            "impression_cut": int(with_impression - whole),
            "impression_lost": int(lost),
            "impression_cut_fraction": (with_impression - whole) / max(with_impression, 1),
        }
    fractions = np.array(kept_fraction)
    out["after"]["findings_sentences_kept_mean"] = float(fractions.mean())
    out["after"]["findings_sentences_kept_min"] = float(fractions.min())
    out["after"]["reports_shortened"] = int((fractions < 1.0).sum())
    return out


def run(
    reports: str | None = None,
    tokenizer: str = "default",
    max_lengths: Sequence[int] = (512, 160),
    out: str = "report_token_budget.json",
) -> dict[str, Any]:
    """Measure token lengths and impression survival, write ``out`` (JSON) and print a table.

    Args:
        reports: CSV of reports with a ``report_text`` column (default: the shared labelled CT reports).
        tokenizer: tokenizer name or path for :func:`common.transforms.text.load_tokenizer`.
        max_lengths: the ``max_length`` values to measure (512: paper config; 160: CPU demo).
        out: output JSON path.

    Returns:
        ``{"lengths": percentiles of the cleaned findings + impression in tokens, "budgets": [measure(...)]}``.
    """
    from common.transforms.text import CleanReportd, SelectReportSectionsd, load_tokenizer

    path = Path(reports) if reports else DEFAULT_REPORTS
    with path.open(newline="", encoding="utf-8") as handle:
        texts = [row["report_text"] for row in csv.DictReader(handle) if row.get("report_text", "").strip()]
    tok = load_tokenizer(tokenizer)
    clean, select = CleanReportd("report", image_key=None), SelectReportSectionsd("report", image_key=None)
    selected = [select(clean({"report": t}))["report"] for t in texts]
    lengths = np.array([len(_content_ids(tok, s, None)) + tok.num_special_tokens_to_add() for s in selected])
    result: dict[str, Any] = {
        "reports": str(path),
        "num_reports": len(texts),
        "tokenizer": tokenizer,
        "lengths": {f"p{q}": float(np.percentile(lengths, q)) for q in _PERCENTILES} | {"max": int(lengths.max())},
        "over": {str(m): int((lengths > m).sum()) for m in max_lengths},
        "budgets": [measure(texts, tok, int(m)) for m in max_lengths],
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(texts)} reports ({path.name}), tokenizer {tokenizer}; findings + impression, special tokens included:")
    print("  " + ", ".join(f"{k} {v:.0f}" for k, v in result["lengths"].items()))
    for budget in result["budgets"]:
        m = budget["max_length"]
        print(f"max_length {m}: {result['over'][str(m)]} reports longer; {budget['no_impression']} without impression")
        for side in ("before", "after"):
            b = budget[side]
            print(
                f"  {side:6s}: truncated {b['truncated']}, impression cut {b['impression_cut']} "
                f"({100 * b['impression_cut_fraction']:.1f} %), wholly lost {b['impression_lost']}"
            )
        a = budget["after"]
        print(
            f"  after: {a['reports_shortened']} reports shortened, findings sentences kept mean "
            f"{100 * a['findings_sentences_kept_mean']:.1f} % (min {100 * a['findings_sentences_kept_min']:.1f} %)"
        )
    return result


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)  # the JSON is written and the table printed; returning it would make fire print it again


if __name__ == "__main__":
    import functools
    import sys

    import fire

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    fire.Fire({"run": functools.wraps(run)(_cli_run)})
