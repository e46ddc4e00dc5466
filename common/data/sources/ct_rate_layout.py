"""Write a datalist's volumes as a miniature CT-RATE (the layout :mod:`common.data.sources.ct_rate` reads).

``python -m common.data.sources.ct_rate_layout DATALIST OUT_DIR`` (or :func:`write_ct_rate_layout`) writes::

    OUT_DIR/train_fixed/train_<n>/train_<n>_a/train_<n>_a_1.nii.gz     training and validation records
    OUT_DIR/valid_fixed/valid_<n>/valid_<n>_a/valid_<n>_a_1.nii.gz     test records
    OUT_DIR/radiology_text_reports/{train,validation}_reports.csv      the reports' sections (Findings_EN, ...)
    OUT_DIR/multi_abnormality_labels/{train,valid}_predicted_labels.csv  the 18 labels, where a record has all 18
    OUT_DIR/metadata/{train,validation}_metadata.csv                    spacing from the NIfTI header
    OUT_DIR/masks/<volume name>.nii.gz                                   the records' masks, if any (side folder)
    OUT_DIR/splits.csv                                                   volume name -> the datalist's section
    OUT_DIR/sources.json                                                 volume name -> the datalist's image (as
                                                                         a path relative to the datalist's folder)

Volumes and masks are symbolic links to the datalist's files (``files="link"``, the default), copies, or moved
there (``"move"``: the embedded phantoms are generated once and re-homed, :mod:`common.data.phantom_published`).

It is how the embedded phantoms (or any datalist of NIfTI volumes) go through the path a CT-RATE user takes. What
the CT-RATE layout cannot hold is left out: ``meta`` (and the masks of image-only records, which sit in it). The
sections are kept by ``splits.csv`` and the masks by ``masks/``, side files CT-RATE itself does not have (``python -m
common.data.build ct_rate --splits OUT_DIR/splits.csv --masks OUT_DIR/masks``; without ``--splits`` the builder draws
validation patients from ``train_fixed``). Image-only records are volumes without a report row (CT-RATE has none);
their labels (in ``meta["labels"]``, as the phantoms keep them) are written to the label CSV, and the builder puts
them back into ``meta``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.contract import SECTIONS, DataContractError, load_datalist
from common.data.findings import FINDINGS
from common.data.readers import _nifti_header
from common.transforms.text import extract_sections

__all__ = ["FILE_MODES", "place_file", "write_csv", "write_ct_rate_layout"]

_REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
_META_COLUMNS = ("VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept")
_FILES = {
    "train": ("train_fixed", "train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv"),
    "valid": ("valid_fixed", "validation_reports.csv", "valid_predicted_labels.csv", "validation_metadata.csv"),
}


#: how :func:`place_file` puts a datalist's file into a layout
FILE_MODES: tuple[str, ...] = ("link", "copy", "move")


def place_file(source: Path, target: Path, files: str) -> None:
    """Put ``source`` at ``target``: a symbolic link, a copy or a move (``files`` in :data:`FILE_MODES`)."""
    if files == "link":
        os.symlink(source.resolve(), target)
    elif files == "copy":
        shutil.copyfile(source, target)
    elif files == "move":
        os.replace(source, target)
    else:
        raise ValueError(f"files must be one of {FILE_MODES}, got {files!r}")


def write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """A UTF-8 CSV with ``columns`` as header (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def _labels(record: dict[str, Any]) -> dict[str, int] | None:
    labels = record.get("labels") or (record.get("meta") or {}).get("labels")
    if not isinstance(labels, dict) or any(f.key not in labels for f in FINDINGS):
        return None
    return {f.name: int(labels[f.key]) for f in FINDINGS}


def write_ct_rate_layout(datalist: str | os.PathLike, out_dir: str | os.PathLike, files: str = "link") -> Path:
    """Write the volumes, reports, labels and metadata of ``datalist`` in the CT-RATE layout (module docstring).

    Args:
        datalist: a datalist of NIfTI volumes (``training`` / ``validation`` -> ``train_fixed``, ``test`` ->
            ``valid_fixed``).
        out_dir: the miniature CT-RATE root (created; must not hold a previous layout).
        files: ``link`` (default), ``copy`` or ``move`` the volumes and masks (:data:`FILE_MODES`).

    Returns:
        ``out_dir``.

    Raises:
        DataContractError: a record whose image is not a NIfTI file, or an ``out_dir`` that already holds a layout.
        ValueError: an unknown ``files`` mode.
    """
    if files not in FILE_MODES:
        raise ValueError(f"files must be one of {FILE_MODES}, got {files!r}")
    out = Path(out_dir)
    if any((out / folder).exists() for folder, *_ in _FILES.values()):
        raise DataContractError(out, "already holds a CT-RATE layout; write into an empty folder")
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"report": [], "label": [], "meta": []} for s in _FILES}
    sources: dict[str, str] = {}
    split_rows: list[dict[str, Any]] = []
    counters = {"train": 0, "valid": 0}
    for section in SECTIONS:
        split = "valid" if section == "test" else "train"
        for record in load_datalist(datalist, section):
            image = Path(record["image"])
            if not image.name.endswith((".nii.gz", ".nii")):
                raise DataContractError(image, "not a NIfTI volume: the CT-RATE layout holds .nii.gz files")
            counters[split] += 1
            name = f"{split}_{counters[split]}_a_1"
            target = out / _FILES[split][0] / f"{split}_{counters[split]}" / f"{split}_{counters[split]}_a"
            target = target / f"{name}.nii.gz"
            target.parent.mkdir(parents=True)
            zooms = [abs(float(z)) for z in _nifti_header(image).get_zooms()[:3]]
            place_file(image, target, files)
            if isinstance(record.get("mask"), str):
                (out / "masks").mkdir(exist_ok=True)
                place_file(Path(record["mask"]), out / "masks" / f"{name}.nii.gz", files)
            sources[name] = os.path.relpath(image.resolve(), Path(datalist).resolve().parent)
            split_rows.append({"VolumeName": f"{name}.nii.gz", "split": section})
            volume = f"{name}.nii.gz"
            if isinstance(record.get("report"), str):
                parts = extract_sections(record["report"])
                rows[split]["report"].append({"VolumeName": volume, "ClinicalInformation_EN": "",
                                              "Technique_EN": parts["other"], "Findings_EN": parts["findings"],
                                              "Impressions_EN": parts["impression"]})  # fmt: skip
            labels = _labels(record)
            if labels is not None:
                rows[split]["label"].append({"VolumeName": volume, **labels})
            rows[split]["meta"].append({"VolumeName": volume, "XYSpacing": f"[{zooms[0]}, {zooms[1]}]",
                                        "ZSpacing": zooms[2], "RescaleSlope": 1, "RescaleIntercept": 0})  # fmt: skip
    for split, (_, reports, labels, metadata) in _FILES.items():
        write_csv(out / "radiology_text_reports" / reports, _REPORT_COLUMNS, rows[split]["report"])
        write_csv(
            out / "multi_abnormality_labels" / labels, ("VolumeName", *(f.name for f in FINDINGS)), rows[split]["label"]
        )
        write_csv(out / "metadata" / metadata, _META_COLUMNS, rows[split]["meta"])
    write_csv(out / "splits.csv", ("VolumeName", "split"), split_rows)
    (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n", encoding="utf-8")
    return out


def cli() -> None:
    """``medvlp-ct-rate-layout`` / ``python -m common.data.sources.ct_rate_layout``: :func:`write_ct_rate_layout`."""
    import fire

    fire.Fire(write_ct_rate_layout)


if __name__ == "__main__":
    cli()
