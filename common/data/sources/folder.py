"""A plain folder of volumes or radiographs, an optional CSV of file -> report / labels / split, and an optional
second folder of image-only scans.

Images: every file under ``root`` (recursively) with a suffix the readers take (3D: NIfTI, MHA/MHD, NRRD, and a
folder of ``.dcm`` files as one DICOM series; 2D: DICOM, PNG, JPEG, TIFF and the volume formats).

CSV (optional, ``--csv``): one row per image, columns

* the image path, relative to ``root`` or absolute: ``image`` (or ``file``, ``filename``, ``path``);
* the report: ``report``, or sections ``findings`` / ``impression`` (headed into one report), optional;
* ``split`` (``train``/``training``, ``val``/``valid``/``validation``, ``test``) and ``patient_id`` (or
  ``patient``), optional; without ``split`` patients are assigned by hash (``val_fraction``, ``test_fraction``),
  without ``patient_id`` each image is its own patient;
* labels: every other column (or only ``label_columns``), keyed in snake case, ``1``/``0`` with ``-1`` / blank by
  the ``uncertain`` / ``blank`` policies; columns that are neither go to ``meta``.

Images under ``root`` that the CSV does not name are image-only records (counted); every image of
``image_only_dir`` is an image-only training record (never moved to validation or test).

Named problems (file and row; counted skips or errors): a CSV row whose image is not on disk or has no image path,
two rows for one image, an unknown split, a label value other than 1/0/-1/blank.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data.contract import DataContractError
from common.data.readers import DICOM_SUFFIXES, RADIOGRAPH_SUFFIXES, VOLUME_SUFFIXES
from common.data.sources.records import (
    SPLIT_NAMES,
    BuildLog,
    BuildSummary,
    Candidate,
    at,
    heading_report,
    label_key,
    parse_labels,
    read_csv,
    write_datalist,
)

__all__ = ["IMAGE_COLUMNS", "build_folder", "find_images"]

IMAGE_COLUMNS: tuple[str, ...] = ("image", "file", "filename", "path")
_RESERVED = (*IMAGE_COLUMNS, "report", "findings", "impression", "split", "patient_id", "patient")


def find_images(folder: Path, dims: int) -> list[Path]:
    """The image files of ``folder`` (recursive, sorted); with ``dims=3`` a folder of ``.dcm`` files is one image."""
    if not folder.is_dir():
        raise DataContractError(folder, "image folder does not exist")
    suffixes = VOLUME_SUFFIXES if dims == 3 else RADIOGRAPH_SUFFIXES
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)]
    if dims == 3:
        files += sorted(
            {p.parent for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(DICOM_SUFFIXES)}
        )
    return sorted(files)


def _key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def build_folder(
    root: str | os.PathLike,
    out: str | os.PathLike,
    dims: int = 3,
    csv: str | None = None,
    image_only_dir: str | None = None,
    label_columns: Sequence[str] | None = None,
    uncertain: str = "ignore",
    blank: str = "ignore",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    open_images: bool = False,
    on_bad: str = "skip",
    quiet: bool = False,
) -> BuildSummary:
    """Write a datalist of a folder of images (layout and checks in the module docstring).

    Args:
        root: the image folder.
        out: the datalist JSON to write.
        dims: 3 for volumes, 2 for radiographs.
        csv: optional CSV of image -> report / labels / split / patient.
        image_only_dir: optional second folder whose images are image-only training records.
        label_columns: the CSV's label columns (default: every column not reserved above).
        uncertain: ``-1`` labels: ``ignore``, ``zeros`` or ``ones``.
        blank: blank labels: ``ignore`` (default: unknown), ``zeros`` or ``ones``.
        val_fraction: fraction of patients put in ``validation`` when the CSV gives no split.
        test_fraction: fraction of patients put in ``test`` when the CSV gives no split.
        seed: seed of the patient-level split.
        open_images: read every image with the validating readers (slow).
        on_bad: ``skip`` or ``raise``.
        quiet: print nothing.

    Returns:
        The :class:`~common.data.sources.records.BuildSummary` (also printed).
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    root = Path(root).expanduser().resolve()
    log = BuildLog("folder", on_bad)
    images = find_images(root, dims)
    named: set[str] = set()
    candidates: list[Candidate] = []
    has_split = False
    if csv is not None:
        table = Path(csv).expanduser().resolve()
        columns, rows = read_csv(table)
        image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if image_column is None:
            raise DataContractError(table, f"no image column: expected one of {list(IMAGE_COLUMNS)}, got {columns}")
        has_split = "split" in columns
        patient_column = next((c for c in ("patient_id", "patient") if c in columns), None)
        chosen = [c for c in columns if c not in _RESERVED] if label_columns is None else list(label_columns)
        missing = [c for c in chosen if c not in columns]
        if missing:
            raise DataContractError(table, f"label column(s) {missing} not in the header {columns}")
        labels_of = {c: label_key(c) for c in chosen}
        first_row: dict[str, str] = {}
        for line, row in tqdm(rows, desc="folder: CSV rows", unit="row", disable=quiet):
            where = at(table, line)
            if not row[image_column]:
                log.problem(where, "CSV row without an image path")
                continue
            image = root / row[image_column]
            if not image.exists():
                log.problem(where, "CSV row whose image is not on disk", str(image))
                continue
            if _key(image) in first_row:
                log.problem(where, "second CSV row for one image", f"{image} (first at {first_row[_key(image)]})")
                continue
            first_row[_key(image)] = where
            named.add(_key(image))
            section = SPLIT_NAMES.get(row.get("split", "training").lower() or "training")
            if section is None:
                log.problem(where, "unknown split", f"{row['split']!r}; expected one of {sorted(SPLIT_NAMES)}")
                continue
            labels, problems = parse_labels(row, labels_of, uncertain, blank)
            if problems:
                log.problem(where, "label value other than 1/0/-1/blank", "; ".join(problems))
                continue
            report = row.get("report") or heading_report(
                (("FINDINGS", row.get("findings", "")), ("IMPRESSION", row.get("impression", "")))
            )
            meta: dict[str, Any] = {c: row[c] for c in columns if c not in _RESERVED and c not in labels_of and row[c]}
            record: dict[str, Any] = {"image": str(image)}
            if report:
                record["report"] = report
                if labels:
                    record["labels"] = labels
            else:
                log.note("CSV row(s) without a report: image-only record(s)")
                if labels:
                    meta["labels"] = labels
            if meta:
                record["meta"] = meta
            patient = row.get(patient_column, "") if patient_column else ""
            candidates.append(Candidate(record, patient or str(image.relative_to(root)), section, where))
    unnamed = [p for p in images if _key(p) not in named]
    if csv is not None:
        log.note("image(s) under root not in the CSV: image-only record(s)", len(unnamed))
    candidates += [Candidate({"image": str(p)}, str(p.relative_to(root)), "training", str(p)) for p in unnamed]
    if image_only_dir is not None:
        extra = Path(image_only_dir).expanduser().resolve()
        found = find_images(extra, dims)
        log.note(f"image-only scan(s) from {extra} (training)", len(found))
        candidates += [
            Candidate({"image": str(p)}, f"{extra.name}/{p.relative_to(extra)}", "training", str(p), movable=False)
            for p in found
        ]
    fractions = (0.0, 0.0) if has_split else (val_fraction, test_fraction)
    return write_datalist(
        candidates, out, log, dims=dims, val_fraction=fractions[0], test_fraction=fractions[1], seed=seed,
        open_images=open_images, name=root.name, description=f"images from {root}", quiet=quiet,
    )  # fmt: skip
