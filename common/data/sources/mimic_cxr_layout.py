"""Write a datalist's radiographs as a miniature MIMIC-CXR-JPG (the layout :mod:`common.data.sources.mimic_cxr` reads).

``python -m common.data.sources.mimic_cxr_layout DATALIST OUT_DIR`` (or :func:`write_mimic_cxr_layout`) writes::

    OUT_DIR/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg    one study of one subject per record, 8-bit JPEG
    OUT_DIR/files/pXX/pXXXXXXXX/sXXXXXXXX.txt               the record's report as it is (none: image-only)
    OUT_DIR/mimic-cxr-2.0.0-metadata.csv                    dicom_id, subject_id, study_id, ViewPosition, Rows, ...
    OUT_DIR/mimic-cxr-2.0.0-chexpert.csv                    subject_id, study_id, the label columns (1.0 / 0.0)
    OUT_DIR/mimic-cxr-2.0.0-split.csv                       the datalist's sections (train / validate / test)
    OUT_DIR/masks/<dicom_id>.png                            the records' masks, if any (side folder)
    OUT_DIR/sources.json                                    dicom_id -> the datalist's image (relative to its folder)

Images are stored as MIMIC-CXR-JPG stores them: 8-bit grey JPEG at quality 95. A 16-bit PNG is mapped to 8 bits
by the fixed linear map ``round(v / 257)`` (65535 -> 255), with no per-image stretch, so the readers' min-max scaling
(:func:`common.transforms.xray.xray_preprocessing`) sees the same image up to 8-bit quantisation and JPEG loss;
8-bit PNGs are only re-encoded and JPEGs are placed as they are. Labels are written under their CheXpert column
names (``pleural_effusion`` -> ``Pleural Effusion``); keys outside the 14 CheXpert labels need their column name
in ``extra_labels`` (e.g. the MIMIC-CXR-LT classes of the embedded phantoms), which the builder takes as
``--extra_labels``. Labels of image-only records (in ``meta["labels"]``) are written too; the builder puts them
back into ``meta``. ``meta`` itself is not part of the layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.contract import SECTIONS, DataContractError, load_datalist
from common.data.sources.ct_rate_layout import FILE_MODES, place_file, write_csv
from common.data.sources.mimic_cxr import CHEXPERT_LABELS, SPLIT_SECTIONS
from common.data.sources.records import label_key

__all__ = ["JPEG_QUALITY", "to_8bit_jpeg", "write_mimic_cxr_layout"]

#: MIMIC-CXR-JPG's JPEG quality factor
JPEG_QUALITY = 95
_FIRST_SUBJECT = 10_000_000
_FIRST_STUDY = 50_000_000
_SPLIT_OF_SECTION = {section: split for split, section in SPLIT_SECTIONS.items()}
_META_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
)  # fmt: skip


def to_8bit_jpeg(path: Path, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a grey PNG: 16 bits mapped to 8 by ``round(v / 257)``, 8 bits as they are.

    Raises:
        DataContractError: the file is not an 8- or 16-bit grey image.
    """
    from PIL import Image

    with Image.open(path) as image:
        mode = image.mode
        pixels = np.asarray(image)
    if mode.startswith("I;16") or (mode == "I" and pixels.min() >= 0 and pixels.max() <= 65535):
        pixels = np.rint(pixels.astype(np.float64) / 257.0).astype(np.uint8)
    elif mode != "L":
        raise DataContractError(path, f"image mode {mode!r}: an 8- or 16-bit grey radiograph is expected")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _dicom_id(number: int) -> str:
    """A MIMIC-style DICOM id (five groups of eight hex digits), fixed by the record number."""
    digest = hashlib.sha1(f"medvlp-mimic-{number}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _label_columns(records: list[dict[str, Any]], extra_labels: Sequence[str], datalist: Path) -> dict[str, str]:
    """``{label key: column name}`` of the keys the records use, in the order they first appear."""
    names = {label_key(name): name for name in (*CHEXPERT_LABELS, *extra_labels)}
    used = list(dict.fromkeys(key for record in records for key in _labels(record)))
    unknown = [key for key in used if key not in names]
    if unknown:
        raise DataContractError(
            datalist, f"label key(s) {unknown} are not CheXpert labels; name their columns in extra_labels"
        )
    return {key: names[key] for key in used}


def _labels(record: dict[str, Any]) -> dict[str, int]:
    labels = record.get("labels") or (record.get("meta") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def write_mimic_cxr_layout(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    files: str = "link",
    extra_labels: Sequence[str] = (),
    view: str = "PA",
) -> Path:
    """Write the radiographs, reports and labels of ``datalist`` in the MIMIC-CXR-JPG layout (module docstring).

    Args:
        datalist: a datalist of radiographs (PNG or JPEG).
        out_dir: the miniature MIMIC-CXR-JPG root (created; must not hold a previous layout).
        files: JPEGs and masks are linked (default), copied or moved (:data:`FILE_MODES`); other images are
            converted (:func:`to_8bit_jpeg`) and, with ``move``, their source removed.
        extra_labels: column names of label keys outside the 14 CheXpert labels.
        view: the ``ViewPosition`` of every image.

    Returns:
        ``out_dir``.

    Raises:
        DataContractError: an image that is not a grey PNG or JPEG, a label key without a column name, or an
            ``out_dir`` that already holds a layout.
        ValueError: an unknown ``files`` mode.
    """
    from PIL import Image

    if files not in FILE_MODES:
        raise ValueError(f"files must be one of {FILE_MODES}, got {files!r}")
    out, source = Path(out_dir), Path(datalist).resolve()
    if (out / "files").exists():
        raise DataContractError(out, "already holds a MIMIC-CXR-JPG layout; write into an empty folder")
    sections = {section: load_datalist(source, section) for section in SECTIONS}
    columns = _label_columns([r for records in sections.values() for r in records], extra_labels, source)
    tables: dict[str, list[dict[str, Any]]] = {"metadata": [], "chexpert": [], "split": []}
    sources: dict[str, str] = {}
    number = 0
    for section, records in sections.items():
        for record in records:
            number += 1
            image = Path(record["image"])
            subject, study, dicom = str(_FIRST_SUBJECT + number), str(_FIRST_STUDY + number), _dicom_id(number)
            folder = out / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True)
            target = folder / f"{dicom}.jpg"
            with Image.open(image) as opened:
                width, height = opened.size
            if image.name.lower().endswith((".jpg", ".jpeg")):
                place_file(image, target, files)
            else:
                target.write_bytes(to_8bit_jpeg(image))
                if files == "move":
                    image.unlink()
            if isinstance(record.get("report"), str):
                folder.with_suffix(".txt").write_text(record["report"], encoding="utf-8")
            if isinstance(record.get("mask"), str):
                mask = Path(record["mask"])
                (out / "masks").mkdir(exist_ok=True)
                suffix = ".nii.gz" if mask.name.endswith(".nii.gz") else mask.suffix
                place_file(mask, out / "masks" / f"{dicom}{suffix}", files)
            sources[dicom] = os.path.relpath(image.resolve(), source.parent)
            ids = {"subject_id": subject, "study_id": study}
            tables["metadata"].append({"dicom_id": dicom, **ids, "PerformedProcedureStepDescription": "CHEST (PA)",
                                       "ViewPosition": view, "Rows": height, "Columns": width})  # fmt: skip
            labels = _labels(record)
            if labels:
                tables["chexpert"].append({**ids, **{columns[k]: f"{float(v):.1f}" for k, v in labels.items()}})
            tables["split"].append({"dicom_id": dicom, **ids, "split": _SPLIT_OF_SECTION[section]})
    write_csv(out / "mimic-cxr-2.0.0-metadata.csv", _META_COLUMNS, tables["metadata"])
    write_csv(out / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id", *columns.values()), tables["chexpert"])
    write_csv(out / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"), tables["split"])
    (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    import fire

    fire.Fire(write_mimic_cxr_layout)
