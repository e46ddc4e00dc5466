"""The datalist contract shared by every bundle.

A datalist is a MONAI-style JSON file::

    {
      "name": "optional dataset name",
      "training":   [record, ...],
      "validation": [record, ...],
      "test":       [record, ...]
    }

Each record is a dict with

* ``image`` (required): a file (NIfTI ``.nii``/``.nii.gz``, ``.mha``/``.mhd``, ``.nrrd``, DICOM ``.dcm``,
  PNG/JPEG) or a directory holding one DICOM series; relative paths resolve against the datalist's folder
  (or ``base_dir``);
* ``report`` (optional): free-text report, a non-empty string; records without it are image-only;
* ``labels`` (optional): ``{finding_key: 0 | 1}``;
* ``mask`` (optional): a label map aligned with ``image`` (for the segmentation probe);
* ``meta`` (optional): a dict of anything else (patient id, study date, ...), passed through untouched.

Image-only and paired records may be mixed in one list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD_KEYS",
    "SECTIONS",
    "DataContractError",
    "error_cause",
    "load_datalist",
    "record_source",
    "resolve_record",
]

RECORD_KEYS: frozenset[str] = frozenset({"image", "report", "labels", "mask", "meta"})
SECTIONS: tuple[str, ...] = ("training", "validation", "test")


class DataContractError(ValueError):
    """Bad input: names the offending file or record and what is wrong with it.

    ``DataContractError(message)`` (one argument, no source) is what PyTorch's DataLoader rebuilds from a worker's
    error text, whose message still names the file; pickling keeps ``source`` and ``problem``.
    """

    def __init__(self, source: str | os.PathLike | None, problem: str | None = None):
        if problem is None:
            source, problem = None, "" if source is None else str(source)
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

    def __reduce__(self) -> tuple[type[DataContractError], tuple[str | None, str]]:
        return type(self), (self.source, self.problem)


def error_cause(
    err: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``types`` in ``err``'s cause / context chain (``err`` itself first), or None.

    MONAI's ``Compose`` re-raises a transform's error as the cause of a ``RuntimeError``; this finds the reader's
    :class:`DataContractError` (or any other type) behind it.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def record_source(data: Mapping[Hashable, Any], image_key: str | None = "image") -> str:
    """A name for a record in error messages: its image path (also after loading, from a ``MetaTensor``'s
    ``filename_or_obj``), else an id from its ``meta``; never a tensor dump."""
    image = data.get(image_key) if image_key is not None else None
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    meta = getattr(image, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    record_meta = data.get("meta")
    if isinstance(record_meta, Mapping):
        for key in ("id", "case_id", "study_id", "patient_id", "accession"):
            if key in record_meta:
                return f"record {key}={record_meta[key]}"
    return "record without an image path"


def resolve_record(record: Mapping[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    """Return a copy of ``record`` whose relative ``image``/``mask`` paths are made absolute against ``base_dir``."""
    out = dict(record)
    for key in ("image", "mask"):
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            out[key] = os.path.normpath(os.path.join(base_dir, value))
    return out


def load_datalist(
    path: str | os.PathLike, section: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Load one section of a datalist with paths resolved; raises :class:`DataContractError` on a bad file.

    Only the structure is checked here (cheaply, at start-up); ``python -m common.data.validate`` also opens every file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataContractError(path, "datalist file does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataContractError(path, f"not a valid UTF-8 JSON datalist ({err})") from err
    if not isinstance(content, dict):
        raise DataContractError(
            path, f"top level must be an object with {list(SECTIONS)} lists, got {type(content).__name__}"
        )
    if section not in SECTIONS:
        raise DataContractError(path, f"unknown section {section!r}; expected one of {list(SECTIONS)}")
    records = content.get(section, [])
    if not isinstance(records, list):
        raise DataContractError(path, f"section {section!r} must be a list, got {type(records).__name__}")
    if section == "training" and not records:
        state = "empty" if section in content else "missing"
        raise DataContractError(path, f"the 'training' section is {state}: there is nothing to train on")
    base = Path(base_dir) if base_dir is not None else path.parent
    out = []
    for index, record in enumerate(records):
        where = f"{path}[{section}][{index}]"
        if not isinstance(record, dict):
            raise DataContractError(where, f"record must be an object, got {type(record).__name__}")
        if not isinstance(record.get("image"), str) or not record["image"]:
            raise DataContractError(where, "record has no 'image' path")
        unknown = set(record) - RECORD_KEYS
        if unknown:
            raise DataContractError(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(RECORD_KEYS)}")
        out.append(resolve_record(record, base))
    return out
