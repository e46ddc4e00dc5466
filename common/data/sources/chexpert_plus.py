"""CheXpert Plus (Chambon et al., 2024): its CSV of image paths and report sections, as published.

Layout read::

    <root>/df_chexpert_plus_240401.csv      (or --csv) path_to_image, frontal_lateral, deid_patient_id, split,
                                            section_findings, section_impression, section_clinical_history,
                                            section_history, section_comparison, section_technique, report, ...
    <images_root>/<path_to_image>           the image; also found with a .png suffix or under <root>/PNG/
                                            (the release ships PNGs under names ending in .jpg)
    --labels_csv (optional)                 CheXpert's train.csv / valid.csv format: Path and the 14 labels

One record per image of the selected views (frontal by default). ``report``: the sections, headed
(``INDICATION`` from the clinical history or history, ``COMPARISON``, ``TECHNIQUE``, ``FINDINGS``, ``IMPRESSION``);
when findings and impression are both empty, the whole ``report`` cell; none of them -> image-only (counted).
Sections: the CSV's ``train`` rows are training / validation by patient (``val_fraction``), ``valid`` is ``test``.
Labels (with ``labels_csv``): matched on the ``<split>/patientN/studyN/viewN_*`` part of the path, ``-1`` / blank by
the ``uncertain`` / ``blank`` policies.

Named problems (file and row; counted skips or errors): an image missing on disk, a row without a patient id, an
unknown split, a label value other than 1/0/-1/blank. A labels CSV with unknown columns is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data.sources.mimic_cxr import CHEXPERT_LABELS
from common.data.sources.records import (
    BuildLog,
    BuildSummary,
    Candidate,
    at,
    check_label_columns,
    heading_report,
    label_key,
    parse_labels,
    read_csv,
    write_datalist,
)

__all__ = ["CSV_NAME", "build_chexpert_plus"]

CSV_NAME = "df_chexpert_plus_240401.csv"
_SPLITS = {"train": "training", "valid": "test"}
_STUDY_PATH = re.compile(r"(?:train|valid|test)/patient\d+/study\d+/view\d+_[a-z]+", re.IGNORECASE)
#: CheXpert's own label CSV: the columns that are not labels
_CHEXPERT_INFO_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def _study_key(path: str) -> str | None:
    match = _STUDY_PATH.search(path.replace("\\", "/"))
    return match.group(0).lower() if match else None


def _find_image(relative: str, roots: Sequence[Path]) -> Path | None:
    for folder in roots:
        for candidate in (folder / relative, (folder / relative).with_suffix(".png")):
            if candidate.is_file():
                return candidate
    return None


def _labels_by_image(path: Path, uncertain: str, blank: str, log: BuildLog) -> dict[str, dict[str, int] | None]:
    columns, rows = read_csv(path, ("Path",))
    check_label_columns(path, columns, CHEXPERT_LABELS, _CHEXPERT_INFO_COLUMNS)
    label_columns = {c: label_key(c) for c in columns if c in CHEXPERT_LABELS}
    out: dict[str, dict[str, int] | None] = {}
    for line, row in rows:
        key = _study_key(row["Path"])
        values, problems = parse_labels(row, label_columns, uncertain, blank)
        if key is None:
            what = "label row(s) whose Path is not <split>/patientN/studyN/viewN_* (row unused)"
            log.note(what, example=f"{at(path, line)}: {row['Path']}")
        elif problems:
            log.row_problem(at(path, line), "label row with a value other than 1/0/-1/blank", "; ".join(problems))
            out[key] = None
        else:
            out[key] = values
    return out


def build_chexpert_plus(
    root: str | os.PathLike,
    out: str | os.PathLike,
    csv: str | None = None,
    images_root: str | None = None,
    labels_csv: str | None = None,
    frontal_only: bool = True,
    uncertain: str = "ignore",
    blank: str = "zeros",
    val_fraction: float = 0.1,
    seed: int = 0,
    image_only: bool = True,
    open_images: bool = False,
    on_bad: str = "skip",
    quiet: bool = False,
) -> BuildSummary:
    """Write a datalist of CheXpert Plus (layout and checks in the module docstring).

    Args:
        root: the CheXpert Plus folder.
        out: the datalist JSON to write.
        csv: the report CSV (default ``<root>/df_chexpert_plus_240401.csv``).
        images_root: where ``path_to_image`` is relative to (default ``root``; ``root/PNG`` is also tried).
        labels_csv: optional CheXpert-format label CSV (``Path`` and the 14 labels).
        frontal_only: keep only ``frontal_lateral == Frontal`` rows (laterals counted).
        uncertain: ``-1`` labels: ``ignore``, ``zeros`` or ``ones``.
        blank: blank labels: ``zeros``, ``ignore`` or ``ones``.
        val_fraction: fraction of training patients put in ``validation``.
        seed: seed of the patient-level split.
        image_only: keep rows without report text as image-only records.
        open_images: read every image with the validating readers (slow).
        on_bad: ``skip`` or ``raise``.
        quiet: print nothing.

    Returns:
        The :class:`~common.data.sources.records.BuildSummary` (also printed).
    """
    root = Path(root).expanduser().resolve()
    log = BuildLog("chexpert_plus", on_bad)
    table = Path(csv).expanduser().resolve() if csv else root / CSV_NAME
    _, rows = read_csv(table, ("path_to_image", "deid_patient_id", "split"))
    roots = [Path(images_root).expanduser().resolve()] if images_root else [root, root / "PNG"]
    labels = _labels_by_image(Path(labels_csv).expanduser().resolve(), uncertain, blank, log) if labels_csv else {}
    candidates = []
    for line, row in tqdm(rows, desc="chexpert_plus: images", unit="image", disable=quiet):
        where = at(table, line)
        section = _SPLITS.get(row["split"].lower())
        if section is None:
            log.problem(where, "unknown split", f"{row['split']!r}; expected one of {list(_SPLITS)}")
            continue
        if not row["deid_patient_id"]:
            log.problem(where, "row without a deid_patient_id")
            continue
        if frontal_only and row.get("frontal_lateral", "").lower() != "frontal":
            log.note("image(s) not frontal, left out (frontal_only=False keeps them)")
            continue
        image = _find_image(row["path_to_image"], roots)
        if image is None:
            log.problem(where, "image file missing", f"{row['path_to_image']} under {', '.join(map(str, roots))}")
            continue
        report = heading_report(
            (header, row.get(column, ""))
            for header, column in (
                ("INDICATION", "section_clinical_history" if row.get("section_clinical_history") else "section_history"),
                ("COMPARISON", "section_comparison"), ("TECHNIQUE", "section_technique"),
                ("FINDINGS", "section_findings"), ("IMPRESSION", "section_impression"),
            )
        )  # fmt: skip
        if not row.get("section_findings") and not row.get("section_impression"):
            report = row.get("report", "")
            if report:
                log.note("row(s) with empty findings and impression sections: the whole report cell used")
        elif not row.get("section_impression"):
            log.note("report(s) with an empty impression (findings only)")
        record: dict[str, Any] = {"image": str(image)}
        meta: dict[str, Any] = {"patient_id": row["deid_patient_id"], "path_to_image": row["path_to_image"]}
        if report:
            record["report"] = report
        elif not image_only:
            log.problem(where, "row without report text (image_only=False)")
            continue
        else:
            log.note("row(s) without report text: image-only record(s)")
        key = _study_key(row["path_to_image"])
        if key is not None and key in labels:
            values = labels[key]
            if values is None:
                log.problem(where, "image whose label row is bad", key)
                continue
            if report:
                record["labels"] = values
            else:
                meta["labels"] = values
        record["meta"] = meta
        candidates.append(Candidate(record, row["deid_patient_id"], section, where))
    return write_datalist(
        candidates, out, log, dims=2, val_fraction=val_fraction, seed=seed, open_images=open_images,
        name="CheXpert Plus", quiet=quiet,
        description=f"CheXpert Plus from {table} (train: training/validation by patient; valid: test)",
    )  # fmt: skip
