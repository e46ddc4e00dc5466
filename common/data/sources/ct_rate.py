"""CT-RATE as published (Hamamci et al., 2024): volumes, reports, the 18 abnormality labels and metadata.

Layout read (under ``root``, the dataset folder)::

    train_fixed/ valid_fixed/            volumes <split>_<patient>_<scan>_<reconstruction>.nii.gz, at any depth
                                         (the release nests them as train_1/train_1_a/train_1_a_1.nii.gz)
    radiology_text_reports/*.csv         VolumeName, Findings_EN, Impressions_EN (ClinicalInformation_EN,
                                         Technique_EN when present)
    multi_abnormality_labels/*.csv       VolumeName and the 18 label columns (0/1)
    metadata/*.csv                       VolumeName, XYSpacing, ZSpacing, RescaleSlope, RescaleIntercept, ...

Records: one per volume kept, ``report`` headed (``INDICATION: / TECHNIQUE: / FINDINGS: / IMPRESSION:``, empty
sections left out), ``labels`` keyed as :data:`common.data.findings.FINDING_KEYS`, ``meta`` with the patient, scan,
reconstruction and the metadata row's spacing and rescale values. ``train_fixed`` feeds training and validation
(patient level), ``valid_fixed`` is the ``test`` split. By default one reconstruction per scan is kept: the lowest
reconstruction number whose header and rows pass the checks.

Checks, each a named problem (file and row) and a counted skip, or an error with ``on_bad="raise"``: a file name
not in the CT-RATE pattern, a volume whose NIfTI header cannot be read, a report / label / metadata row naming a
volume that is not on disk (counted, the row is unused), two rows for one volume, a label value other than 0/1
(the record is skipped), a metadata spacing that contradicts the volume header (the unfixed ``train/`` volumes of
the first release have unit spacing in their headers: read the ``*_fixed`` folders). A label CSV with columns other
than ``VolumeName`` and the 18 labels is an error for the whole file. The metadata's rescale slope/intercept are
kept in ``meta``; the ``*_fixed`` volumes store Hounsfield units, so the readers do not apply them again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.data.contract import DataContractError
from common.data.findings import FINDINGS
from common.data.readers import _nifti_header
from common.data.sources.records import (
    SPLIT_NAMES,
    BuildLog,
    BuildSummary,
    Candidate,
    at,
    check_label_columns,
    csv_files,
    heading_report,
    index_masks,
    parse_labels,
    read_csv,
    write_datalist,
)

__all__ = ["LABEL_COLUMNS", "RECONSTRUCTIONS", "VOLUME_NAME", "build_ct_rate"]

#: ``<split>_<patient>_<scan>_<reconstruction>.nii.gz``
VOLUME_NAME = re.compile(
    r"^(?P<split>train|valid)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<reconstruction>\d+)\.nii(?:\.gz)?$"
)
#: CT-RATE label column -> datalist key (the 18 findings of :mod:`common.data.findings`)
LABEL_COLUMNS: dict[str, str] = {f.name: f.key for f in FINDINGS}
#: ``first``: one reconstruction per scan (the lowest number that passes the checks); ``all``: every one
RECONSTRUCTIONS: tuple[str, ...] = ("first", "all")
_VOLUME_FOLDERS: dict[str, str] = {"train_fixed": "training", "valid_fixed": "test"}
_REPORT_SECTIONS = (
    ("INDICATION", "ClinicalInformation_EN"),
    ("TECHNIQUE", "Technique_EN"),
    ("FINDINGS", "Findings_EN"),
    ("IMPRESSION", "Impressions_EN"),
)
_SPACING_TOLERANCE = 1e-3  # relative


def _index_volumes(root: Path, folders: dict[str, str], log: BuildLog, quiet: bool) -> dict[str, tuple[Path, str]]:
    """``{volume name without suffix: (path, source section)}``."""
    found: dict[str, tuple[Path, str]] = {}
    present = [name for name in folders if (root / name).is_dir()]
    if not present:
        raise DataContractError(root, f"no volume folder: expected {' and/or '.join(folders)} under the CT-RATE root")
    for folder in present:
        files = sorted(p for p in (root / folder).rglob("*") if p.name.endswith((".nii.gz", ".nii")))
        for path in tqdm(files, desc=f"ct_rate: indexing {folder}", unit="volume", disable=quiet):
            match = VOLUME_NAME.match(path.name)
            if match is None:
                log.problem(str(path), "volume file name not <split>_<patient>_<scan>_<reconstruction>.nii.gz")
                continue
            name = path.name.split(".nii")[0]
            if name in found:
                log.problem(str(path), "volume found twice", f"also at {found[name][0]}")
                continue
            found[name] = (path, folders[folder])
    return found


def _rows_by_volume(
    files: Sequence[Path],
    required: Sequence[str],
    volumes: dict[str, Any],
    what: str,
    log: BuildLog,
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, tuple[str, dict[str, str]]], list[str]]:
    """``({volume: (where, row)}, columns)`` of CSV rows; rows of absent volumes and repeated rows are counted.

    With ``labels``, a file holding columns other than those and ``required`` is an error.
    """
    rows: dict[str, tuple[str, dict[str, str]]] = {}
    columns: list[str] = []
    for path in files:
        file_columns, file_rows = read_csv(path, required)
        if labels is not None:
            check_label_columns(path, file_columns, labels, required)
        columns += [c for c in file_columns if c not in columns]
        for line, row in file_rows:
            where = at(path, line)
            name = row["VolumeName"].split(".nii")[0]
            if not name:
                log.row_problem(where, f"{what} row without a VolumeName")
            elif name not in volumes:
                log.note(f"{what} row(s) without a volume on disk (row unused)", example=f"{where}: {name}")
            elif name in rows:
                log.row_problem(where, f"second {what} row for one volume", f"{name} (first at {rows[name][0]})")
                rows[name] = (rows[name][0], {})  # neither row is trusted: the volume is skipped below
            else:
                rows[name] = (where, row)
    return rows, columns


def _fixed_splits(path: Path, volumes: dict[str, Any], log: BuildLog) -> dict[str, str]:
    """``{volume name: section}`` of a split CSV (``VolumeName``, ``split``)."""
    rows, _ = _rows_by_volume([path], ("VolumeName", "split"), volumes, "split", log)
    out = {}
    for name, (where, row) in rows.items():
        section = SPLIT_NAMES.get(row.get("split", "").lower()) if row else None
        if section is None:
            log.row_problem(where, "unknown split", f"{row.get('split')!r}; expected one of {sorted(SPLIT_NAMES)}")
        else:
            out[name] = section
    return out


def _natural_order(name: str) -> tuple[str, int, str, int]:
    """CT-RATE order: split, patient number, scan, reconstruction number (``train_2`` before ``train_10``)."""
    split, patient, scan, reconstruction = name.split("_")
    return split, int(patient), scan, int(reconstruction)


def _float(text: str) -> float:
    return float(text.strip().strip("[]()"))


def _metadata_spacing(row: dict[str, str]) -> tuple[float, float, float]:
    """``(x, y, z)`` mm from ``XYSpacing`` (``"[0.75, 0.75]"`` or one number) and ``ZSpacing``."""
    xy = [_float(v) for v in re.split(r"[,\s]+", row["XYSpacing"].strip().strip("[]()")) if v]
    if len(xy) == 1:
        xy = xy * 2
    if len(xy) != 2:
        raise ValueError(f"XYSpacing {row['XYSpacing']!r} is not one or two numbers")
    return xy[0], xy[1], _float(row["ZSpacing"])


def _check_header(path: Path, meta_row: tuple[str, dict[str, str]] | None, meta: dict[str, Any]) -> str | None:
    """A problem of the volume header (or its metadata row), else None; adds the metadata to ``meta``."""
    try:
        header = _nifti_header(path)
    except DataContractError as err:
        return err.problem
    if len(header.get_data_shape()) != 3:
        return f"volume is not 3D (shape {header.get_data_shape()})"
    if meta_row is None:
        return None
    where, row = meta_row
    if not row:
        return f"two metadata rows ({where})"
    try:
        spacing = _metadata_spacing(row)
        meta["spacing"] = list(spacing)
        for column in ("RescaleSlope", "RescaleIntercept"):
            if row.get(column):
                meta[column] = _float(row[column])
    except ValueError as err:
        return f"metadata row {where}: unreadable spacing or rescale value ({err})"
    pixdim = np.abs(np.asarray(header["pixdim"][1:4], dtype=np.float64))
    if not np.allclose(pixdim, spacing, rtol=_SPACING_TOLERANCE, atol=0.0):
        hint = " (unit spacing: an unfixed volume; read the *_fixed folders)" if np.allclose(pixdim, 1.0) else ""
        header_spacing = tuple(round(float(v), 4) for v in pixdim)
        return f"metadata row {where} gives spacing {spacing}, the header {header_spacing}{hint}"
    return None


def build_ct_rate(
    root: str | os.PathLike,
    out: str | os.PathLike,
    reconstructions: str = "first",
    splits: str | None = None,
    masks: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_only: bool = True,
    check_headers: bool = True,
    open_images: bool = False,
    on_bad: str = "skip",
    quiet: bool = False,
) -> BuildSummary:
    """Write a datalist of CT-RATE as published (layout and checks in the module docstring).

    Args:
        root: the CT-RATE dataset folder (holding ``train_fixed/``, ``valid_fixed/``, ``radiology_text_reports/``,
            ``multi_abnormality_labels/``, ``metadata/``; the last three optional).
        out: the datalist JSON to write.
        reconstructions: ``first`` (one per scan) or ``all``.
        splits: optional CSV of ``VolumeName`` -> ``split`` (train / val / test; Merlin-style fixed splits): listed
            volumes keep that split (a patient listed in two goes whole to the more held-out one), the others
            follow the default rule.
        masks: optional folder of segmentation masks named like the volumes (``<VolumeName>``, at any depth): a
            paired volume with one gets it as ``mask`` (checked against the image by ``--open_images``).
        val_fraction: fraction of ``train_fixed`` patients put in ``validation``.
        seed: seed of the patient-level split.
        image_only: keep volumes without a report (or with empty findings and impression) as image-only records;
            False skips them (counted).
        check_headers: read every NIfTI header (cheap): unreadable headers and spacings that contradict the
            metadata are problems.
        open_images: read every volume with the validating readers (slow; catches corrupt voxel data).
        on_bad: ``skip`` (count and go on) or ``raise`` (stop at the first problem).
        quiet: print nothing.

    Returns:
        The :class:`~common.data.sources.records.BuildSummary` (also printed).

    Raises:
        DataContractError: no volume folder, a label CSV with unknown columns, a CSV without its required columns;
            with ``on_bad="raise"`` any problem.
        ValueError: bad ``reconstructions`` / ``on_bad`` / fractions.
    """
    if reconstructions not in RECONSTRUCTIONS:
        raise ValueError(f"reconstructions must be one of {RECONSTRUCTIONS}, got {reconstructions!r}")
    root = Path(root).expanduser().resolve()
    log = BuildLog("ct_rate", on_bad)
    volumes = _index_volumes(root, _VOLUME_FOLDERS, log, quiet)

    def optional(folder: str, what: str) -> list[Path]:
        return csv_files(root / folder, what) if (root / folder).is_dir() else []

    reports, _ = _rows_by_volume(
        optional("radiology_text_reports", "report"), ("VolumeName", "Findings_EN", "Impressions_EN"), volumes,
        "report", log,
    )  # fmt: skip
    label_files = optional("multi_abnormality_labels", "label")
    labels, label_columns = _rows_by_volume(label_files, ("VolumeName",), volumes, "label", log, tuple(LABEL_COLUMNS))
    metadata, _ = _rows_by_volume(
        optional("metadata", "metadata"), ("VolumeName", "XYSpacing", "ZSpacing"), volumes, "metadata", log
    )
    if not reports:
        log.note("volume(s) and no report CSV: every record is image-only")
    fixed_split = _fixed_splits(Path(splits).expanduser(), volumes, log) if splits else {}
    mask_of = index_masks(Path(masks).expanduser().resolve(), volumes, log, (".nii.gz", ".nii")) if masks else {}

    candidates: dict[tuple[str, str], list[Candidate]] = {}
    for name in tqdm(sorted(volumes, key=_natural_order), desc="ct_rate: volumes", unit="volume", disable=quiet):
        path, section = volumes[name]
        match = VOLUME_NAME.match(path.name)
        assert match is not None  # indexed names match
        patient = f"{match['split']}_{match['patient']}"
        meta: dict[str, Any] = {
            "volume_name": name, "patient_id": patient, "scan": match["scan"],
            "reconstruction": int(match["reconstruction"]),
        }  # fmt: skip
        record: dict[str, Any] = {"image": str(path)}
        if check_headers:
            problem = _check_header(path, metadata.get(name), meta)
            if problem is not None:
                log.problem(str(path), "volume header unreadable or contradicting its metadata", problem)
                continue
        report_row = reports.get(name)
        if report_row is not None and not report_row[1]:
            log.problem(str(path), "two report rows for the volume", f"first at {report_row[0]}")
            continue
        report = (
            heading_report((header, report_row[1].get(column, "")) for header, column in _REPORT_SECTIONS)
            if report_row
            else ""
        )
        if report_row is not None:
            findings, impression = report_row[1]["Findings_EN"], report_row[1]["Impressions_EN"]
            if not findings and not impression:
                report = ""
                log.note("report row(s) with empty findings and impression", example=report_row[0])
            elif not impression:
                log.note("report(s) with an empty impression (findings only)")
            elif not findings:
                log.note("report(s) with empty findings (impression only)")
        if report:
            record["report"] = report
            if name in mask_of:
                record["mask"] = str(mask_of[name])
        elif not image_only:
            log.problem(str(path), "volume without a report (image_only=False)")
            continue
        else:
            log.note("volume(s) without a report: image-only record(s)", example=str(path))
        label_row = labels.get(name)
        if label_row is not None:
            where, row = label_row
            if not row:
                log.problem(str(path), "two label rows for the volume", f"first at {where}")
                continue
            columns = {c: LABEL_COLUMNS[c] for c in label_columns if c in LABEL_COLUMNS}
            values, problems = parse_labels(row, columns, uncertain="error", blank="error")
            if problems:
                log.problem(where, "label row with a value other than 0/1", "; ".join(problems))
                continue
            if report:
                record["labels"] = values
            else:  # an image-only record carries no labels (contract); kept for evaluation, as the phantoms do
                meta["labels"] = values
        record["meta"] = meta
        section = fixed_split.get(name, section)
        candidate = Candidate(record, patient, section, str(path), movable=name not in fixed_split)
        candidates.setdefault((patient, match["scan"]), []).append(candidate)

    kept = []
    for scan in candidates.values():
        scan.sort(key=lambda c: c.record["meta"]["reconstruction"])
        if reconstructions == "first":
            log.note("extra reconstruction(s) of a scan left out (reconstructions=all keeps them)", len(scan) - 1)
            scan = scan[:1]
        kept += scan
    return write_datalist(
        kept, out, log, dims=3, val_fraction=val_fraction, seed=seed, open_images=open_images, name="CT-RATE",
        description=f"CT-RATE from {root} (train_fixed: training/validation by patient; valid_fixed: test); "
        "labels follow common.data.findings.FINDINGS", quiet=quiet,
    )  # fmt: skip
