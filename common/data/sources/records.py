"""What every datalist builder shares: CSV rows with line numbers, label policies, patient-level splits, named
problems (an error, or a counted skip), and the datalist writer with its printed summary.

A builder turns a source into :class:`Candidate` records (a contract record, its patient, the split the source
gives it if any, and where it came from), reports bad input to a :class:`BuildLog`, and hands the candidates to
:func:`write_datalist`, which checks every record with the datalist validator (:mod:`common.data.validate`), assigns
the splits at patient level and writes the JSON with paths relative to it.

Split rules (:func:`assign_sections`): a patient whose records the source puts in more than one split is moved whole
to the most held-out of them (test, then validation, then training) and counted; ``training`` records are then
moved to ``validation`` / ``test`` by a hash of the patient id (seeded, independent of record order and of the other
patients), so all scans of one patient stay in one split; a patient with a pinned record (``movable=False``) stays in
training.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data.contract import SECTIONS, DataContractError
from common.data.validate import validate_datalist

__all__ = [
    "LABEL_POLICIES",
    "ON_BAD",
    "SPLIT_NAMES",
    "BuildLog",
    "BuildSummary",
    "Candidate",
    "assign_sections",
    "at",
    "check_label_columns",
    "csv_files",
    "heading_report",
    "index_masks",
    "label_key",
    "parse_label",
    "parse_labels",
    "patient_fraction",
    "read_csv",
    "write_datalist",
]

#: what a builder does with a bad row or file: count it and go on, or stop with the named error
ON_BAD: tuple[str, ...] = ("skip", "raise")
#: what an uncertain (-1) or blank label becomes: omitted (unknown), 0 or 1; ``error`` makes it a bad value
LABEL_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones", "error")
_POLICY_VALUE: dict[str, int | None] = {"ignore": None, "zeros": 0, "ones": 1}
_EXAMPLES = 3
#: split names in user CSVs -> datalist sections
SPLIT_NAMES: dict[str, str] = {
    "train": "training", "training": "training", "val": "validation", "valid": "validation",
    "validation": "validation", "test": "test",
}  # fmt: skip


def at(path: str | os.PathLike, line: int | None = None) -> str:
    """``"<path>, line <n>"``: where a problem is, for messages."""
    return f"{path}, line {line}" if line is not None else str(path)


class BuildLog:
    """Counts what a builder skipped (with the reason) and what it noticed, or raises at the first problem.

    Args:
        source: the builder's name, for messages.
        on_bad: ``"skip"`` (count the problem, print the first few with file and row, go on) or ``"raise"``
            (:class:`~common.data.contract.DataContractError` naming the file and row).

    Raises:
        ValueError: for another ``on_bad``.
    """

    def __init__(self, source: str, on_bad: str = "skip") -> None:
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
        self.source = source
        self.on_bad = on_bad
        self.skipped: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def problem(self, where: str, reason: str, detail: str = "") -> None:
        """Bad input at ``where`` (file and row): raise, or count one skipped record under ``reason``."""
        message = f"{reason}: {detail}" if detail else reason
        if self.on_bad == "raise":
            raise DataContractError(where, message)
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES:
            examples.append(f"{where}: {detail}" if detail else where)

    def row_problem(self, where: str, reason: str, detail: str = "") -> None:
        """A bad row that is not itself a record (the records it concerns are skipped as their own problem): raise,
        or count it as an unusable row."""
        if self.on_bad == "raise":
            raise DataContractError(where, f"{reason}: {detail}" if detail else reason)
        self.note(f"unusable row(s): {reason}", example=f"{where}: {detail}" if detail else where)

    def note(self, what: str, count: int = 1, example: str | None = None) -> None:
        """Count something that changed records without dropping them (e.g. "no report: image-only record")."""
        if count:
            self.notes[what] += count
            examples = self.examples.setdefault(what, [])
            if example is not None and len(examples) < _EXAMPLES:
                examples.append(example)


@dataclass
class Candidate:
    """A record on its way to the datalist.

    Attributes:
        record: the contract record (absolute ``image`` path; ``report``, ``labels``, ``meta`` when known).
        patient: the id that keeps a patient's records in one split.
        section: the split the source gives (``training``, ``validation``, ``test``); ``training`` may still be
            moved to validation/test by :func:`assign_sections`.
        where: file and row the record comes from, for messages.
        movable: False pins a ``training`` record (and its patient) to training (e.g. image-only pre-training data).
    """

    record: dict[str, Any]
    patient: str
    section: str
    where: str
    movable: bool = True


@dataclass
class BuildSummary:
    """What a builder wrote: per-section counts, paired / image-only, skips and notes, and label counts."""

    out: Path
    sections: dict[str, int]
    paired: int
    image_only: int
    skipped: Counter[str]
    notes: Counter[str]
    examples: dict[str, list[str]]
    labels: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(self.sections.values())

    def lines(self, source: str) -> list[str]:
        """The printed summary."""
        per_section = ", ".join(f"{name} {count}" for name, count in self.sections.items())
        out = [
            (
                f"{source}: wrote {self.written} record(s) to {self.out} ({per_section}; "
                f"{self.paired} with a report, {self.image_only} image-only)"
            )
        ]
        total = sum(self.skipped.values())
        out.append(f"skipped {total} record(s)" + (":" if total else ""))
        for reason, count in self.skipped.most_common():
            out.append(f"  {count} {reason}")
            out += [f"      e.g. {example}" for example in self.examples.get(reason, [])]
        for what, count in self.notes.most_common():
            out.append(f"note: {count} {what}")
            out += [f"      e.g. {example}" for example in self.examples.get(what, [])]
        if self.labels:
            out.append(f"labels found ({len(self.labels)}; positive / negative / unknown):")
            out += [f"  {key}: {pos} / {neg} / {unknown}" for key, (pos, neg, unknown) in self.labels.items()]
        else:
            out.append("labels found: none")
        return out


# ----------------------------------------------------------------------------------------------------------------
# CSV files
# ----------------------------------------------------------------------------------------------------------------


def read_csv(
    path: str | os.PathLike, required: Sequence[str] = ()
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The columns and rows of a CSV (``.csv`` or ``.csv.gz``, UTF-8), each row with the line it starts on.

    Args:
        path: the file.
        required: columns that must be present.

    Returns:
        ``(columns, [(line, {column: text}), ...])``; missing trailing cells are ``""``.

    Raises:
        DataContractError: naming the file for a missing file, a missing column, a row with more cells than the
            header, or text that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataContractError(path, "CSV file does not exist")
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, restval="", restkey="\0extra")
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataContractError(path, f"missing column(s) {missing}; the header has {columns}")
            start = reader.line_num + 1
            for row in reader:
                if "\0extra" in row:
                    raise DataContractError(at(path, start), f"row has more cells than the header's {len(columns)}")
                rows.append((start, {k: (v or "").strip() for k, v in row.items()}))
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise DataContractError(path, f"not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from err
    except (OSError, EOFError, csv.Error) as err:
        raise DataContractError(path, f"cannot read the CSV ({err})") from err
    return columns, rows


def check_label_columns(path: Path, columns: Sequence[str], labels: Sequence[str], others: Sequence[str]) -> None:
    """A label CSV may hold only the source's ``labels`` and ``others`` (ids): a named error for the whole file."""
    unknown = [c for c in columns if c not in labels and c not in others]
    if unknown:
        raise DataContractError(path, f"unknown label column(s) {unknown}; this source's labels are {list(labels)}")


def index_masks(folder: Path, names: Container[str], log: BuildLog, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{name: mask file}`` of a side folder of masks named like the images (``<name><suffix>``, at any depth).

    A mask whose name is not among ``names`` is counted as unused; a second mask for one name is a bad row.

    Raises:
        DataContractError: the folder does not exist.
    """
    if not folder.is_dir():
        raise DataContractError(folder, "mask folder does not exist")
    out: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)):
        name = path.name[: -len(next(s for s in suffixes if path.name.lower().endswith(s)))]
        if name not in names:
            log.note("mask file(s) without an image (unused)", example=str(path))
        elif name in out:
            log.row_problem(str(path), "second mask file for one image", f"first at {out[name]}")
        else:
            out[name] = path
    return out


def csv_files(folder: Path, what: str) -> list[Path]:
    """The ``*.csv`` / ``*.csv.gz`` files of ``folder``, sorted; a named error when there are none."""
    files = sorted(p for p in folder.glob("*.csv*") if p.name.endswith((".csv", ".csv.gz")))
    if not files:
        raise DataContractError(folder, f"no {what} CSV files (*.csv, *.csv.gz) in this folder")
    return files


# ----------------------------------------------------------------------------------------------------------------
# Labels and reports
# ----------------------------------------------------------------------------------------------------------------


def label_key(name: str) -> str:
    """The datalist key of a label column: ``"Pleural Effusion"`` -> ``"pleural_effusion"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def parse_label(value: str, uncertain: str = "ignore", blank: str = "ignore") -> int | None:
    """A label cell as 0, 1 or None (unknown: omit it from the record).

    ``1``/``0`` (also ``1.0``/``0.0``) are kept; ``-1`` (uncertain) and a blank cell (``""``, ``nan``) follow their
    policy in :data:`LABEL_POLICIES`.

    Raises:
        ValueError: for any other value, a value whose policy is ``error``, or an unknown policy.
    """
    if uncertain not in LABEL_POLICIES or blank not in LABEL_POLICIES:
        raise ValueError(f"label policies must be among {list(LABEL_POLICIES)}, got {uncertain!r} / {blank!r}")
    text = value.strip()
    number = math.nan
    if text == "" or text.lower() == "nan":
        kind, policy = "blank", blank
    else:
        try:
            number = float(text)
        except ValueError:
            pass
        kind, policy = "uncertain (-1)", uncertain
    if number in (0.0, 1.0):
        return int(number)
    if number == -1.0 or kind == "blank":
        if policy == "error":
            raise ValueError(f"label value is {kind}, which this source does not allow")
        return _POLICY_VALUE[policy]
    raise ValueError(f"label value {value!r} is not 1, 0, -1 or blank")


def parse_labels(
    row: Mapping[str, str], columns: Mapping[str, str], uncertain: str = "ignore", blank: str = "ignore"
) -> tuple[dict[str, int], list[str]]:
    """``({key: 0|1}, problems)`` from the label ``columns`` (column -> key) of one CSV row."""
    labels: dict[str, int] = {}
    problems = []
    for column, key in columns.items():
        try:
            value = parse_label(row.get(column, ""), uncertain, blank)
        except ValueError as err:
            problems.append(f"column {column!r}: {err}")
            continue
        if value is not None:
            labels[key] = value
    return labels, problems


def heading_report(sections: Iterable[tuple[str, str]]) -> str:
    """A headed report (``"FINDINGS: ...\\nIMPRESSION: ..."``) from ``(header, text)`` pairs; empty texts left out.

    Headed text is what :func:`common.transforms.text.extract_sections` parses without guessing.
    """
    return "\n".join(f"{header}: {text.strip()}" for header, text in sections if text and text.strip())


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------


def patient_fraction(patient: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by the patient id and the seed (SHA-256), the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_sections(
    candidates: Sequence[Candidate], val_fraction: float, test_fraction: float, seed: int, log: BuildLog
) -> None:
    """Put every candidate's patient in one split (rules in the module docstring); updates ``section`` in place.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more, or an unknown section.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1), sum < 1")
    by_patient: dict[str, set[str]] = {}
    pinned: set[str] = set()
    for candidate in candidates:
        if candidate.section not in SECTIONS:
            raise ValueError(f"{candidate.where}: unknown section {candidate.section!r}")
        by_patient.setdefault(candidate.patient, set()).add(candidate.section)
        if not candidate.movable:
            pinned.add(candidate.patient)
    final: dict[str, str] = {}
    for patient, sections in by_patient.items():
        section = max(sections, key=SECTIONS.index)
        if len(sections) > 1:
            log.note(f"patient(s) in more than one split of the source, moved whole to {section}", example=patient)
        elif section == "training" and patient not in pinned:
            draw = patient_fraction(patient, seed)
            section = (
                "test" if draw < test_fraction else "validation" if draw < test_fraction + val_fraction else section
            )
        final[patient] = section
    for candidate in candidates:
        candidate.section = final[candidate.patient]


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _relative(record: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(record)
    for key in ("image", "mask"):
        if isinstance(out.get(key), str):
            out[key] = os.path.relpath(out[key], base)
    return out


def _label_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int, int]]:
    records = list(records)
    keys = list(dict.fromkeys(key for r in records for key in r.get("labels", {})))
    counts = {}
    for key in keys:
        values = Counter(r.get("labels", {}).get(key) for r in records)
        counts[key] = (values[1], values[0], len(records) - values[1] - values[0])
    return counts


_CHECK_CHUNK = 512  # records validated per call (the progress bar's step)


def _validation_problems(
    records: list[dict[str, Any]], folder: Path, dims: int, open_images: bool, log: BuildLog
) -> dict[int, list[str]]:
    """``{index: problems}`` of ``records`` by :func:`common.data.validate.validate_datalist` (a temporary file);
    its warnings (a volume that may not be a CT in HU) become notes of ``log``."""
    warnings: list[Any] = []
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-check-") as tmp:
        path = Path(tmp) / "candidates.json"
        path.write_text(json.dumps({"training": records}), encoding="utf-8")
        found = validate_datalist(
            path, dims=dims, open_images=open_images, section="training", base_dir=folder, warnings=warnings
        )
    for warning in warnings:
        log.note("validator warning(s), record kept", example=f"{warning.source}: {warning.problem}")
    out: dict[int, list[str]] = {}
    for problem in found:
        if problem.index is not None:
            out.setdefault(problem.index, []).append(f"{problem.source}: {problem.problem}")
    return out


def write_datalist(
    candidates: Sequence[Candidate],
    out: str | os.PathLike,
    log: BuildLog,
    *,
    dims: int,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    open_images: bool = False,
    name: str = "",
    description: str = "",
    quiet: bool = False,
) -> BuildSummary:
    """Check the candidates, assign splits, write the datalist JSON and print the summary.

    Every record goes through the datalist validator (:func:`common.data.validate.validate_datalist`: report, labels,
    meta, the image exists and is not listed twice, and with ``open_images`` is read by the validating readers); a
    record with problems is a named problem of ``log`` (counted skip or error). Paths are written relative to the
    datalist's folder.

    Args:
        candidates: the builder's records.
        out: the datalist JSON to write (its folder is created).
        log: the builder's log (skips so far; this adds the validator's).
        dims: 3 for volumes, 2 for radiographs.
        val_fraction: fraction of ``training`` patients moved to ``validation``.
        test_fraction: fraction of ``training`` patients moved to ``test``.
        seed: seed of the patient hash.
        open_images: read every image (slow); otherwise only check that it exists.
        name: the datalist's ``name``.
        description: its ``description``.
        quiet: print nothing (the summary is returned).

    Returns:
        The :class:`BuildSummary`.

    Raises:
        DataContractError: with ``on_bad="raise"``, for the first record with a problem; or when no record is left.
    """
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    chunks = range(0, len(candidates), _CHECK_CHUNK)
    for start in tqdm(chunks, desc=f"{log.source}: checking records", unit="chunk", disable=quiet or not chunks):
        chunk = candidates[start : start + _CHECK_CHUNK]
        problems = _validation_problems([c.record for c in chunk], out.parent, dims, open_images, log)
        for index, candidate in enumerate(chunk):
            if index in problems:
                log.problem(candidate.where, "record failed validation", "; ".join(problems[index]))
            else:
                kept.append(candidate)
    if not kept:
        raise DataContractError(out, f"{log.source}: no record left to write ({sum(log.skipped.values())} skipped)")
    assign_sections(kept, val_fraction, test_fraction, seed, log)
    sections = {s: [_relative(c.record, out.parent) for c in kept if c.section == s] for s in SECTIONS}
    content: dict[str, Any] = {"name": name or log.source}
    if description:
        content["description"] = description
    content.update(sections)
    out.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    paired = sum("report" in c.record for c in kept)
    summary = BuildSummary(
        out=out,
        sections={s: len(records) for s, records in sections.items()},
        paired=paired,
        image_only=len(kept) - paired,
        skipped=log.skipped,
        notes=log.notes,
        examples=log.examples,
        labels=_label_counts(c.record for c in kept),
    )
    if not quiet:
        print("\n".join(summary.lines(log.source)))
    return summary
