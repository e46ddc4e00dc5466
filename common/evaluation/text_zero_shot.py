"""Text-side zero-shot: score real, labelled report text against finding prompts with a model's text tower.

No image is involved: each report embedding plays the role of the image embedding in
:func:`~common.evaluation.zero_shot.zero_shot_scores`. It checks that the text tower and the prompts separate
reports with and without each finding, which is a cheap sanity check of a checkpoint and of prompt wording.

The expected CSV is the CT-CLIP report-classifier format (e.g. ``chest_ct_reports_labeled.csv``):
``AccessionNo, report_text, <18 label columns>, split``. Its label columns are already the CT-RATE display names
("Lung nodule", "Arterial wall calcification", ...), the spelling :mod:`common.data.findings` uses too;
:func:`label_key` maps them to that module's snake_case keys ("lung_nodule", ...). By default the prompts are
those of :func:`common.transforms.text.build_prompts`, the same as the image-side zero-shot of the bundles.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.contract import DataContractError
from common.data.findings import FINDING_NAMES
from common.evaluation._arrays import as_numpy
from common.evaluation.metrics import multilabel_auroc
from common.evaluation.zero_shot import zero_shot_scores
from common.transforms.text import build_prompts

__all__ = [
    "CT_RATE_LABELS",
    "PromptBuilder",
    "TextEncoder",
    "label_key",
    "read_labelled_reports",
    "text_zero_shot_from_csv",
]

#: The 18 CT-RATE abnormality labels, in CT-CLIP's order (also the column order of the labelled report CSV).
CT_RATE_LABELS: tuple[str, ...] = FINDING_NAMES

#: ``encode_text(list of N strings) -> (N, D)`` array or tensor.
TextEncoder = Callable[[list[str]], Any]
#: ``prompt_builder(display name) -> (positive prompts, negative prompts)``, paired by index.
PromptBuilder = Callable[[str], tuple[Sequence[str], Sequence[str]]]

_NON_LABEL_COLUMNS = frozenset({"accessionno", "volumename", "report_text", "split", "findings", "impressions"})


def label_key(name: str) -> str:
    """snake_case key of a display name: ``"Lung nodule" -> "lung_nodule"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _parse_label(value: str, where: str, column: str) -> float:
    text = value.strip().lower()
    if text in ("", "nan", "na", "none"):
        return math.nan
    problem = f"label column {column!r} must be 0, 1 or empty, got {value!r}"
    try:
        number = float(text)
    except ValueError:
        raise DataContractError(where, problem) from None
    if number not in (0.0, 1.0):
        raise DataContractError(where, problem)
    return number


def read_labelled_reports(
    csv_path: str | os.PathLike,
    label_columns: Sequence[str] | None = None,
    split: str | None = "val",
    max_reports: int | None = None,
    text_column: str = "report_text",
) -> tuple[list[str], np.ndarray, list[str]]:
    """Read report texts and binary labels from a labelled report CSV.

    Args:
        csv_path: the CSV file.
        label_columns: label columns to read (default: the CT-RATE labels if all present, else every column
            other than ``AccessionNo``/``VolumeName``/``report_text``/``split``).
        split: keep rows whose ``split`` column equals this; None keeps every row.
        max_reports: keep the first ``max_reports`` rows of the split, in file order.
        text_column: column holding the report text.

    Returns:
        ``(texts, labels (N, K) float with NaN for empty cells, label column names)``.

    Raises:
        DataContractError: missing file or columns, an unknown split, an empty report, or a label other than 0/1.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataContractError(path, "labelled report CSV does not exist")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataContractError(path, f"not a readable UTF-8 CSV ({err})") from err
    if text_column not in columns:
        raise DataContractError(path, f"no {text_column!r} column; columns are {columns}")
    if label_columns is None:
        if all(name in columns for name in CT_RATE_LABELS):
            label_columns = list(CT_RATE_LABELS)
        else:
            label_columns = [c for c in columns if c.lower() not in _NON_LABEL_COLUMNS and c != text_column]
    label_columns = list(label_columns)
    missing = [c for c in label_columns if c not in columns]
    if missing or not label_columns:
        raise DataContractError(path, f"label columns {missing or '(none)'} not found; columns are {columns}")
    if split is not None:
        if "split" not in columns:
            raise DataContractError(path, f"split={split!r} requested but the CSV has no 'split' column")
        available = sorted({row["split"] for row in rows})
        if split not in available:
            raise DataContractError(path, f"no rows with split={split!r}; splits are {available}")
        rows = [row for row in rows if row["split"] == split]
    if max_reports is not None:
        rows = rows[: max(0, int(max_reports))]
    texts, labels = [], []
    for line, row in enumerate(rows):
        where = f"{path}[{split or 'all'}][{line}]"
        text = (row.get(text_column) or "").strip()
        if not text:
            raise DataContractError(where, f"empty {text_column!r}")
        texts.append(text)
        labels.append([_parse_label(row.get(c) or "", where, c) for c in label_columns])
    return texts, np.asarray(labels, dtype=np.float64).reshape(len(texts), len(label_columns)), label_columns


def _encode(encode_text: TextEncoder, texts: list[str], batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        emb = as_numpy(encode_text(batch), "encode_text output", ndim=2)
        if len(emb) != len(batch):
            raise ValueError(f"encode_text returned {len(emb)} embeddings for {len(batch)} texts")
        chunks.append(emb)
    return np.concatenate(chunks)


def text_zero_shot_from_csv(
    csv_path: str | os.PathLike,
    encode_text: TextEncoder,
    prompt_builder: PromptBuilder | None = None,
    label_columns: Sequence[str] | None = None,
    split: str | None = "val",
    max_reports: int | None = None,
    temperature: float = 0.01,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Text-side zero-shot AUROC per label: report embeddings scored against each label's prompt pairs.

    Args:
        csv_path: labelled report CSV (see :func:`read_labelled_reports`).
        encode_text: ``list[str] -> (N, D)`` embeddings in the joint space (e.g. a model's projected text tower).
        prompt_builder: display name -> (positive prompts, negative prompts), paired by index; None uses
            :func:`common.transforms.text.build_prompts` over all labels (the same P templates for every label).
        label_columns: labels to score (default: the 18 CT-RATE labels).
        split: CSV split to score (None: all rows).
        max_reports: cap on the number of reports (first ones of the split).
        temperature: softmax temperature of the prompt pair (matters only when averaging several pairs).
        batch_size: texts per ``encode_text`` call.
        n_bootstrap: bootstrap resamples for the CIs.
        seed: bootstrap seed.

    Returns:
        The :func:`~common.evaluation.metrics.multilabel_auroc` dict (keyed by display name) plus
        ``"label_keys"`` (display name -> snake_case key), ``"split"``, ``"source"`` and ``"prompts"``.
    """
    texts, labels, columns = read_labelled_reports(csv_path, label_columns, split, max_reports)
    if not texts:
        raise DataContractError(csv_path, f"no reports selected (split={split!r}, max_reports={max_reports})")
    prompts: dict[str, tuple[list[str], list[str]]] = {}
    if prompt_builder is None:
        prompt_set = build_prompts(columns)
        prompts = {n: (list(p), list(q)) for n, p, q in zip(columns, prompt_set.positive, prompt_set.negative)}
    else:
        for name in columns:
            positive, negative = (list(p) for p in prompt_builder(name))
            if not positive or len(positive) != len(negative):
                raise ValueError(f"prompt_builder({name!r}) must return equally long, non-empty lists of pairs")
            prompts[name] = (positive, negative)
    all_prompts = [p for pos, neg in prompts.values() for p in pos + neg]
    prompt_emb = _encode(encode_text, all_prompts, batch_size)
    report_emb = _encode(encode_text, texts, batch_size)
    scores = np.empty(labels.shape)
    offset = 0
    for k, (positive, negative) in enumerate(prompts.values()):
        n = len(positive)
        pos, neg = prompt_emb[offset : offset + n], prompt_emb[offset + n : offset + 2 * n]
        offset += 2 * n
        scores[:, k] = zero_shot_scores(report_emb, pos[None], neg[None], temperature)[:, 0]
    result = multilabel_auroc(scores, labels, columns, n_bootstrap=n_bootstrap, seed=seed)
    result.update(
        label_keys={name: label_key(name) for name in columns},
        split=split,
        source=str(csv_path),
        prompts={name: {"positive": pos, "negative": neg} for name, (pos, neg) in prompts.items()},
    )
    return result
