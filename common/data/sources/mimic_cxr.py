"""MIMIC-CXR-JPG with the free-text reports of MIMIC-CXR (Johnson et al., 2019), as published.

Layout read::

    <root>/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg        images (MIMIC-CXR-JPG)
    <root>/mimic-cxr-2.0.0-metadata.csv[.gz]                  dicom_id, subject_id, study_id, ViewPosition, ...
    <root>/mimic-cxr-2.0.0-chexpert.csv[.gz]                  subject_id, study_id and the 14 CheXpert labels
    <root>/mimic-cxr-2.0.0-split.csv[.gz]                     dicom_id, study_id, subject_id, split
    <reports_root>/files/pXX/pXXXXXXXX/sXXXXXXXX.txt          reports (MIMIC-CXR; default: the first of <root>,
                                                              <root>/mimic-cxr-reports that holds files/)

One record per image of a selected view (``PA`` and ``AP`` by default: frontal), ``report`` the study's report file
as written (headed: the text pipeline finds its FINDINGS and IMPRESSION), ``labels`` the study's CheXpert labels
keyed in snake case (``pleural_effusion``) with ``1``/``0`` kept and ``-1`` / blank following the ``uncertain`` /
``blank`` policies, ``meta`` subject, study, dicom id and view. The official split gives the sections (``validate``
-> ``validation``); a subject found in two splits is moved whole to the more held-out one (counted).

Beyond the published layout, two side inputs: ``extra_labels`` names label columns the labels CSV may hold besides
the 14 (e.g. the MIMIC-CXR-LT / CXR-LT 2023 classes ``Emphysema``, ``Hernia``, ``Calcification of the Aorta``, as the
embedded phantoms' labels CSV does), and ``masks`` a folder of segmentation masks named ``<dicom_id>.png`` (or
``.jpg``, ``.nii.gz``) at any depth, given to the paired records as ``mask``.

Named problems (file and row; counted skips, or errors with ``on_bad="raise"``): an image missing on disk, a split
row without a metadata row, an unselected or missing view (counted as not selected), a label value other than
1/0/-1/blank (the study's images are skipped), two label rows for one study. A label CSV with columns other than
``subject_id``, ``study_id`` and the 14 CheXpert labels is an error for the file. A study without a report file
gives image-only records (counted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data.contract import DataContractError
from common.data.sources.records import (
    BuildLog,
    BuildSummary,
    Candidate,
    at,
    check_label_columns,
    index_masks,
    label_key,
    parse_labels,
    read_csv,
    write_datalist,
)

__all__ = ["CHEXPERT_LABELS", "FRONTAL_VIEWS", "SPLIT_SECTIONS", "build_mimic_cxr", "find_table"]

#: the 14 CheXpert labeller columns (MIMIC-CXR-JPG's chexpert.csv, CheXpert and CheXpert Plus)
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
    "Support Devices",
)  # fmt: skip
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")
#: the official split names -> datalist sections
SPLIT_SECTIONS: dict[str, str] = {"train": "training", "validate": "validation", "test": "test"}
_MASK_SUFFIXES = (".png", ".jpg", ".nii.gz", ".nii")


def find_table(root: Path, stem: str, required: bool = True) -> Path | None:
    """``root/<stem>.csv`` or ``.csv.gz``; None or (``required``) a named error when neither exists."""
    for suffix in (".csv", ".csv.gz"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    if required:
        raise DataContractError(root, f"no {stem}.csv or {stem}.csv.gz in this folder")
    return None


def _reports_root(root: Path, reports_root: str | os.PathLike | None) -> Path | None:
    if reports_root is not None:
        folder = Path(reports_root).expanduser().resolve()
        if not (folder / "files").is_dir():
            raise DataContractError(folder, "reports_root has no files/ folder (files/pXX/pXXXXXXXX/sXXXXXXXX.txt)")
        return folder
    for folder in (root, root / "mimic-cxr-reports"):
        if (folder / "files").is_dir() and next((folder / "files").glob("p*/p*/s*.txt"), None) is not None:
            return folder
    return None


def _study_labels(
    path: Path, uncertain: str, blank: str, log: BuildLog, names: Sequence[str] = CHEXPERT_LABELS
) -> dict[str, tuple[str, dict[str, int] | None]]:
    """``{study_id: (where, labels or None when bad)}`` of the CheXpert labels CSV (label columns among ``names``)."""
    columns, rows = read_csv(path, ("subject_id", "study_id"))
    check_label_columns(path, columns, names, ("subject_id", "study_id"))
    label_columns = {c: label_key(c) for c in columns if c in names}
    out: dict[str, tuple[str, dict[str, int] | None]] = {}
    for line, row in rows:
        where = at(path, line)
        values, problems = parse_labels(row, label_columns, uncertain, blank)
        study = row["study_id"]
        if study in out:
            log.row_problem(where, "second label row for one study", f"study {study} (first at {out[study][0]})")
            out[study] = (out[study][0], None)
        elif problems:
            log.row_problem(where, "label row with a value other than 1/0/-1/blank", "; ".join(problems))
            out[study] = (where, None)
        else:
            out[study] = (where, values)
    return out


def build_mimic_cxr(
    root: str | os.PathLike,
    out: str | os.PathLike,
    reports_root: str | None = None,
    views: Sequence[str] = FRONTAL_VIEWS,
    uncertain: str = "ignore",
    blank: str = "zeros",
    image_only: bool = True,
    extra_labels: Sequence[str] = (),
    masks: str | None = None,
    open_images: bool = False,
    on_bad: str = "skip",
    quiet: bool = False,
) -> BuildSummary:
    """Write a datalist of MIMIC-CXR-JPG and the MIMIC-CXR reports (layout and checks in the module docstring).

    Args:
        root: the MIMIC-CXR-JPG folder (``files/`` and the three CSVs).
        out: the datalist JSON to write.
        reports_root: the MIMIC-CXR folder holding ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` (default: found under
            ``root``; none found means image-only records, counted).
        views: ``ViewPosition`` values kept (default frontal: PA, AP; add ``LATERAL``, ``LL`` for laterals).
        uncertain: ``-1`` labels: ``ignore`` (unknown, omitted), ``zeros``, ``ones`` (the CheXpert U-policies).
        blank: blank labels (not mentioned): ``zeros`` (default, the usual reading) or ``ignore``, ``ones``.
        image_only: keep images of studies without a report as image-only records; False skips them (counted).
        extra_labels: label columns accepted besides the 14 CheXpert ones (e.g. CXR-LT's ``Emphysema``).
        masks: optional folder of masks named ``<dicom_id>.png`` / ``.jpg`` / ``.nii.gz`` (at any depth): a paired
            image with one gets it as ``mask``.
        open_images: read every image with the validating readers (slow).
        on_bad: ``skip`` or ``raise``.
        quiet: print nothing.

    Returns:
        The :class:`~common.data.sources.records.BuildSummary` (also printed).
    """
    root = Path(root).expanduser().resolve()
    log = BuildLog("mimic_cxr", on_bad)
    views = tuple(str(v).upper() for v in ((views,) if isinstance(views, str) else views))  # --views lateral too
    split_path = find_table(root, "mimic-cxr-2.0.0-split")
    metadata_path = find_table(root, "mimic-cxr-2.0.0-metadata")
    assert split_path is not None and metadata_path is not None  # required tables
    _, metadata_rows = read_csv(metadata_path, ("dicom_id", "ViewPosition"))
    view_of = {row["dicom_id"]: row["ViewPosition"].upper() for _, row in metadata_rows}
    label_path = find_table(root, "mimic-cxr-2.0.0-chexpert", required=False)
    extra = (extra_labels,) if isinstance(extra_labels, str) else tuple(str(name) for name in extra_labels)
    names = (*CHEXPERT_LABELS, *extra)
    labels = _study_labels(label_path, uncertain, blank, log, names) if label_path is not None else {}
    if label_path is None:
        log.note("no chexpert CSV: no labels")
    reports = _reports_root(root, reports_root)
    if reports is None:
        log.note("no report files found: every record is image-only")
    _, split_rows = read_csv(split_path, ("dicom_id", "study_id", "subject_id", "split"))
    mask_of = index_masks(Path(masks).expanduser().resolve(), view_of, log, _MASK_SUFFIXES) if masks else {}
    candidates = []
    for line, row in tqdm(split_rows, desc="mimic_cxr: images", unit="image", disable=quiet):
        where = at(split_path, line)
        subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
        section = SPLIT_SECTIONS.get(row["split"])
        if section is None:
            log.problem(where, "unknown split", f"{row['split']!r}; expected one of {list(SPLIT_SECTIONS)}")
            continue
        if dicom not in view_of:
            log.problem(where, "split row without a metadata row", f"dicom_id {dicom} is not in {metadata_path.name}")
            continue
        if view_of[dicom] not in views:
            log.note(f"image(s) of a view not selected ({', '.join(views)} kept)")
            continue
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        image = root / folder / f"{dicom}.jpg"
        if not image.is_file():
            log.problem(where, "image file missing", str(image))
            continue
        record: dict[str, Any] = {"image": str(image)}
        meta: dict[str, Any] = {"subject_id": subject, "study_id": study, "dicom_id": dicom, "view": view_of[dicom]}
        report_file = reports / folder.with_suffix(".txt") if reports is not None else None
        report = ""
        if report_file is not None and report_file.is_file():
            report = report_file.read_text(encoding="utf-8", errors="replace").strip()
        if report:
            record["report"] = report
            if dicom in mask_of:
                record["mask"] = str(mask_of[dicom])
        elif not image_only:
            log.problem(where, "study without a report (image_only=False)", str(report_file))
            continue
        else:
            log.note("image(s) of a study without a report: image-only record(s)", example=str(report_file))
        if study in labels:
            label_where, values = labels[study]
            if values is None:
                log.problem(where, "image of a study whose label row is bad", f"see {label_where}")
                continue
            if report:
                record["labels"] = values
            else:  # an image-only record carries no labels (contract); kept for evaluation, as the phantoms do
                meta["labels"] = values
        record["meta"] = meta
        candidates.append(Candidate(record, f"p{subject}", section, where))
    return write_datalist(
        candidates, out, log, dims=2, open_images=open_images, name="MIMIC-CXR-JPG", quiet=quiet,
        description=f"MIMIC-CXR-JPG from {root}, official split; views {list(views)}; labels: CheXpert "
        f"(uncertain -> {uncertain}, blank -> {blank})",
    )  # fmt: skip
