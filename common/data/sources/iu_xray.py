"""IU X-ray (Demner-Fushman et al., 2016) in its two common layouts.

1. **R2Gen-style** (``<root>/annotation.json``, images under ``<root>/images/``)::

       {"train": [{"id": "CXR2384_IM-0942", "report": "...", "image_path": ["CXR2384_IM-0942/0.png", ...]}, ...],
        "val": [...], "test": [...]}

   The file's splits are kept (``val`` -> validation). The layout records no view; ``images="first"`` keeps
   ``image_path[0]`` (the frontal image by the R2Gen convention), ``"all"`` every image.
2. **Indiana CSVs** (``<root>/indiana_reports.csv``: uid, MeSH, Problems, indication, comparison, findings,
   impression; ``<root>/indiana_projections.csv``: uid, filename, projection; images under
   ``<root>/images/images_normalized/`` or ``<root>/images/``). Frontal projections by default; no official split,
   so studies are assigned by hash (``val_fraction``, ``test_fraction``; R2Gen's 7:1:2 by default).

Reports are headed (``INDICATION``, ``COMPARISON``, ``FINDINGS``, ``IMPRESSION``) in the CSV layout and kept as
written in the R2Gen one. IU X-ray has no label file: ``meta`` keeps MeSH and Problems (CSV layout). The study id
(``CXR<uid>`` / ``uid``) stands for the patient, which the release does not identify.

Named problems (file and row; counted skips or errors): an image missing on disk, a projection row without a report
row, an entry without an id or images, a file that is not the expected JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data.contract import DataContractError
from common.data.sources.records import (
    BuildLog,
    BuildSummary,
    Candidate,
    at,
    heading_report,
    read_csv,
    write_datalist,
)

__all__ = ["IMAGE_CHOICES", "build_iu_xray"]

IMAGE_CHOICES: tuple[str, ...] = ("first", "all")
_R2GEN_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def _r2gen(root: Path, images: str, log: BuildLog, quiet: bool) -> list[Candidate]:
    path = root / "annotation.json"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataContractError(path, f"not a valid UTF-8 JSON file ({err})") from err
    if not isinstance(content, dict) or not any(isinstance(content.get(s), list) for s in _R2GEN_SPLITS):
        raise DataContractError(path, f"expected an object with {list(_R2GEN_SPLITS)} lists (R2Gen layout)")
    candidates = []
    entries = [(s, i, e) for s in _R2GEN_SPLITS for i, e in enumerate(content.get(s) or [])]
    for split, index, entry in tqdm(entries, desc="iu_xray: studies", unit="study", disable=quiet):
        where = f"{path} [{split}][{index}]"
        paths = entry.get("image_path") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not entry.get("id") or not isinstance(paths, list) or not paths:
            log.problem(where, "entry without an id or image_path list")
            continue
        study = str(entry["id"])
        report = str(entry.get("report") or "").strip()
        for relative in paths[:1] if images == "first" else paths:
            image = root / "images" / str(relative)
            if not image.is_file():
                log.problem(where, "image file missing", str(image))
                continue
            record: dict[str, Any] = {"image": str(image), "meta": {"study_id": study}}
            if report:
                record["report"] = report
            else:
                log.note("entry(ies) with an empty report: image-only record(s)")
            candidates.append(Candidate(record, study.split("_")[0], _R2GEN_SPLITS[split], where))
    return candidates


def _indiana(root: Path, frontal_only: bool, log: BuildLog, quiet: bool) -> list[Candidate]:
    reports_path, projections_path = root / "indiana_reports.csv", root / "indiana_projections.csv"
    _, report_rows = read_csv(reports_path, ("uid", "findings", "impression"))
    _, projection_rows = read_csv(projections_path, ("uid", "filename", "projection"))
    reports = {row["uid"]: (line, row) for line, row in report_rows}
    folders = [root / "images" / "images_normalized", root / "images"]
    candidates = []
    for line, row in tqdm(projection_rows, desc="iu_xray: images", unit="image", disable=quiet):
        where = at(projections_path, line)
        if frontal_only and row["projection"].lower() != "frontal":
            log.note("image(s) not frontal, left out (frontal_only=False keeps them)")
            continue
        if row["uid"] not in reports:
            log.problem(where, "projection row without a report row", f"uid {row['uid']} not in {reports_path.name}")
            continue
        image = next((folder / row["filename"] for folder in folders if (folder / row["filename"]).is_file()), None)
        if image is None:
            log.problem(where, "image file missing", f"{row['filename']} under {folders[0]} or {folders[1]}")
            continue
        _, report_row = reports[row["uid"]]
        sections = ("INDICATION", "indication"), ("COMPARISON", "comparison"), ("FINDINGS", "findings"), (
            "IMPRESSION", "impression")  # fmt: skip
        meta = {"study_id": row["uid"], "projection": row["projection"]}
        meta.update({k.lower(): report_row[k] for k in ("MeSH", "Problems") if report_row.get(k)})
        record: dict[str, Any] = {"image": str(image), "meta": meta}
        if report_row["findings"] or report_row["impression"]:
            record["report"] = heading_report((header, report_row.get(column, "")) for header, column in sections)
            if not report_row["impression"]:
                log.note("report(s) with an empty impression (findings only)")
        else:
            log.note("report row(s) with empty findings and impression: image-only record(s)")
        candidates.append(Candidate(record, row["uid"], "training", where))
    return candidates


def build_iu_xray(
    root: str | os.PathLike,
    out: str | os.PathLike,
    images: str = "first",
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    open_images: bool = False,
    on_bad: str = "skip",
    quiet: bool = False,
) -> BuildSummary:
    """Write a datalist of IU X-ray (layouts and checks in the module docstring).

    Args:
        root: the IU X-ray folder (``annotation.json`` + ``images/``, or the two Indiana CSVs + ``images/``).
        out: the datalist JSON to write.
        images: R2Gen layout: ``first`` (``image_path[0]``) or ``all`` images of a study.
        frontal_only: CSV layout: keep only frontal projections (laterals counted).
        val_fraction: CSV layout: fraction of studies put in ``validation``.
        test_fraction: CSV layout: fraction of studies put in ``test``.
        seed: seed of the study-level split.
        open_images: read every image with the validating readers (slow).
        on_bad: ``skip`` or ``raise``.
        quiet: print nothing.

    Returns:
        The :class:`~common.data.sources.records.BuildSummary` (also printed).
    """
    if images not in IMAGE_CHOICES:
        raise ValueError(f"images must be one of {IMAGE_CHOICES}, got {images!r}")
    root = Path(root).expanduser().resolve()
    log = BuildLog("iu_xray", on_bad)
    if (root / "annotation.json").is_file():
        candidates, fractions = _r2gen(root, images, log, quiet), (0.0, 0.0)
    elif (root / "indiana_reports.csv").is_file():
        candidates, fractions = _indiana(root, frontal_only, log, quiet), (val_fraction, test_fraction)
    else:
        raise DataContractError(root, "neither annotation.json (R2Gen layout) nor indiana_reports.csv here")
    return write_datalist(
        candidates, out, log, dims=2, val_fraction=fractions[0], test_fraction=fractions[1], seed=seed,
        open_images=open_images, name="IU X-ray", description=f"IU X-ray from {root}", quiet=quiet,
    )  # fmt: skip
