"""Check a datalist before training: ``python -m common.data.validate datalist.json [--section training] [--dims 3]``.

Checks the schema of :mod:`common.data.contract` (top-level object, sections are lists, records are objects with an
``image``, no unknown keys, ``report`` a non-empty UTF-8 string of at most 20,000 characters, ``labels`` a mapping of
finding to 0/1, ``mask`` an existing file matching the image geometry, ``meta`` an object), a report with no words
once cleaned, label keys outside a finding vocabulary (``--findings colipri_ct`` or a list of keys), an empty
``training`` section, an image used twice in one split or in two splits (through any relative / absolute path or
symlink), and opens every image with :mod:`common.data.readers`. Every problem is reported, one line each, as
``<section>[<index>] <file>: <problem>``, followed by a summary; the exit status is 1 when there are problems.
Volumes that are probably not CTs in Hounsfield units (:func:`common.data.readers.ct_problems`) are printed as
``warning:`` lines, or counted as problems with ``--strict True``.

Example::

    python -m common.data.validate datalist.json --dims 2 --open_images False
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.bundle_support import flag
from common.data.contract import RECORD_KEYS, SECTIONS, DataContractError, resolve_record
from common.data.readers import ct_problems, read_radiograph, read_volume
from common.data.store import store_problems
from common.transforms.labels import unknown_label_problem
from common.transforms.text import clean_report, report_has_words

__all__ = ["MAX_REPORT_CHARS", "Problem", "finding_vocabulary", "main", "validate_datalist"]

# Marks a finding of readers.ct_problems ("is this really a CT in HU?"): a warning unless the check is strict.
CT_WARNING = "\0ct: "

#: Reports longer than this are rejected: a whole study dump or a concatenation bug, not one report.
MAX_REPORT_CHARS = 20_000


@dataclass(frozen=True)
class Problem:
    """One problem found in a datalist.

    Attributes:
        section: the datalist section (``""`` for problems with the file as a whole).
        index: the record's position in its section, or None.
        source: the offending file (image, mask or the datalist itself).
        problem: what is wrong.
    """

    section: str
    index: int | None
    source: str
    problem: str

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.section}[{self.index}] {self.source}: {self.problem}"
        return f"{self.section + ' ' if self.section else ''}{self.source}: {self.problem}"


def _load_json(path: Path) -> tuple[Any, list[Problem]]:
    def fail(message: str) -> tuple[None, list[Problem]]:
        return None, [Problem("", None, str(path), message)]

    if not path.is_file():
        return fail("datalist file does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1].hex()
        return fail(f"datalist is not valid UTF-8 (byte 0x{bad} at offset {err.start}); save it as UTF-8")
    try:
        return json.loads(text), []
    except json.JSONDecodeError as err:
        return fail(f"datalist is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})")


def _report_problems(report: Any) -> list[str]:
    if not isinstance(report, str):
        return [f"report must be a non-empty string, got {type(report).__name__}"]
    if not report:
        return ["report is empty (omit 'report' for an image-only record)"]
    if not report.strip():
        return ["report is only whitespace"]
    out = []
    if not report_has_words(clean_report(report)):
        shown = report if len(report) <= 60 else report[:57] + "..."
        out.append(f"report has no words once cleaned ({shown!r}); omit it for an image-only record")
    if len(report) > MAX_REPORT_CHARS:
        out.append(f"report is absurdly long ({len(report):,} characters > {MAX_REPORT_CHARS:,})")
    try:
        report.encode("utf-8")
    except UnicodeEncodeError as err:
        out.append(f"report is not valid UTF-8 (unpaired surrogate at character {err.start})")
    control = next((i for i, c in enumerate(report) if c not in "\n\r\t" and unicodedata.category(c) == "Cc"), None)
    if control is not None:
        out.append(f"report contains control character {report[control]!r} at character {control}")
    return out


def _label_problems(labels: Any, vocabulary: Sequence[str] | None) -> list[str]:
    if not isinstance(labels, dict):
        return [f"labels must be an object of finding -> 0/1, got {type(labels).__name__}"]
    out = []
    bad = {key: value for key, value in labels.items() if type(value) is not int or value not in (0, 1)}
    if bad:
        out.append(f"labels must be 0 or 1 (omit a finding whose label is unknown), got {bad}")
    unknown = unknown_label_problem(list(labels), vocabulary) if vocabulary is not None else None
    if unknown is not None:
        out.append(unknown)
    return out


def finding_vocabulary(findings: str | Sequence[str] | None) -> list[str] | None:
    """Label keys to check against: a bundle name (its config's ``findings``), a list of keys, a comma-separated
    string of keys, or None (no vocabulary check)."""
    if findings is None:
        return None
    if isinstance(findings, str):
        from common.bundle_support import discover_bundles

        bundle = next((b for b in discover_bundles() if b.name == findings), None)
        if bundle is None:
            return [key.strip() for key in findings.split(",") if key.strip()]
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(bundle.config(name)) for name in ("train", "evaluate") if bundle.config(name)])
        findings = parser.get_parsed_content("findings")
    return [getattr(f, "key", f) for f in findings]


def _mask_problems(mask: str, shape: tuple[int, ...], affine: np.ndarray | None) -> list[tuple[str, str]]:
    """(source, problem) pairs for a mask that cannot be read or is not on its image's grid (``affine``: 3D only)."""
    try:
        if affine is not None:
            mask_array, mask_affine = read_volume(mask)
        else:
            mask_array, mask_affine = read_radiograph(mask, allow_constant=True)[0], None
    except DataContractError as err:
        return [(err.source or mask, err.problem)]
    except Exception as err:  # noqa: BLE001 - the validator reports, it never stops at one record
        return [(mask, f"unexpected error while reading: {type(err).__name__}: {err}")]
    if mask_array.shape != shape:
        return [(mask, f"mask shape {mask_array.shape} does not match image shape {shape}")]
    if affine is not None and not np.allclose(affine, mask_affine, rtol=1e-4, atol=1e-2):
        return [(mask, "mask affine (voxel-to-world) does not match the image's")]
    return []


def _check_record(
    record: Any, base: Path, datalist: str, dims: int, open_images: bool, vocabulary: Sequence[str] | None
) -> list[tuple[str, str]]:
    """All (source, problem) pairs of one record."""
    if not isinstance(record, dict):
        return [(datalist, f"record must be an object, got {type(record).__name__}")]
    out: list[tuple[str, str]] = []
    resolved = resolve_record(record, base)
    image = resolved.get("image")
    has_image = isinstance(image, str) and bool(image)
    source = image if has_image else datalist
    if not has_image:
        out.append((datalist, "record has no 'image' path"))
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        out.append((source, f"unknown key(s) {unknown}; allowed: {sorted(RECORD_KEYS)}"))
    if "report" in record:
        out += [(source, p) for p in _report_problems(record["report"])]
    if "labels" in record:
        out += [(source, p) for p in _label_problems(record["labels"], vocabulary)]
    if "meta" in record and not isinstance(record["meta"], dict):
        out.append((source, f"meta must be an object, got {type(record['meta']).__name__}"))
    mask = resolved.get("mask")
    mask_ok = False
    if "mask" in record:
        if not isinstance(mask, str) or not mask:
            out.append((source, "mask must be a non-empty path"))
        elif not os.path.exists(mask):
            out.append((mask, "mask file does not exist"))
        else:
            mask_ok = True
    if not has_image:
        return out
    if not open_images:
        if not os.path.exists(image):
            out.append((image, "file or folder does not exist"))
        return out
    try:
        array, affine = read_volume(image) if dims == 3 else (read_radiograph(image)[0], None)
    except DataContractError as err:
        out.append((err.source or image, err.problem))
        return out
    except Exception as err:  # noqa: BLE001 - the validator reports, it never stops at one record
        out.append((image, f"unexpected error while reading: {type(err).__name__}: {err}"))
        return out
    if mask_ok:
        out += _mask_problems(mask, array.shape, affine)
    if dims == 3:
        out += [(image, CT_WARNING + problem) for problem in ct_problems(image, array)]
    return out


def _validate(
    path: str | os.PathLike,
    dims: int,
    open_images: bool,
    section: str | None,
    base_dir: str | os.PathLike | None,
    num_workers: int,
    vocabulary: Sequence[str] | None = None,
    strict: bool = False,
    warnings: list[Problem] | None = None,
    progress: bool = False,
    store_dir: str | os.PathLike | None = None,
) -> tuple[list[Problem], dict[str, int]]:
    warnings = [] if warnings is None else warnings
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    path = Path(path)
    content, problems = _load_json(path)
    if problems:
        return problems, {}
    datalist = str(path)
    if not isinstance(content, dict):
        problem = f"top level must be an object with {list(SECTIONS)} lists, got {type(content).__name__}"
        return [Problem("", None, datalist, problem)], {}
    for key, value in content.items():
        if key not in SECTIONS and isinstance(value, list):
            problems.append(Problem("", None, datalist, f"unknown section {key!r}; expected one of {list(SECTIONS)}"))
    if section is not None and section not in SECTIONS:
        problems.append(Problem("", None, datalist, f"unknown section {section!r}; expected one of {list(SECTIONS)}"))
        return problems, {}
    names = [section] if section is not None else [s for s in SECTIONS if s in content]
    if section is not None and section not in content:
        problems.append(Problem(section, None, datalist, f"section {section!r} is missing"))
    if not names and not problems:
        problems.append(Problem("", None, datalist, f"no records: none of the sections {list(SECTIONS)} is present"))
    base = Path(base_dir) if base_dir is not None else path.parent
    jobs: list[tuple[str, int, Any]] = []
    counts: dict[str, int] = {}
    for name in names:
        records = content.get(name, [])
        if not isinstance(records, list):
            problem = f"section {name!r} must be a list, got {type(records).__name__}"
            problems.append(Problem(name, None, datalist, problem))
            continue
        counts[name] = len(records)
        if name == "training" and not records:
            problems.append(Problem(name, None, datalist, "the 'training' section is empty: nothing to train on"))
        jobs += [(name, index, record) for index, record in enumerate(records)]

    def check(job: tuple[str, int, Any]) -> list[tuple[str, str]]:
        return _check_record(job[2], base, datalist, dims, open_images, vocabulary)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        checked = pool.map(check, jobs) if num_workers > 1 else map(check, jobs)
        bar = tqdm(checked, total=len(jobs), desc=f"{path.name}: records", unit="record", disable=not progress)
        found = list(bar)
    first_use: dict[str, tuple[str, int]] = {}
    for (name, index, record), record_problems in zip(jobs, found):
        for source, problem in record_problems:
            if problem.startswith(CT_WARNING):
                problem = problem.removeprefix(CT_WARNING)
                (problems if strict else warnings).append(Problem(name, index, source, problem))
            else:
                problems.append(Problem(name, index, source, problem))
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and image:
            resolved = resolve_record({"image": image}, base)["image"]
            other = first_use.setdefault(os.path.realpath(resolved), (name, index))
            if other[0] != name:
                problems.append(
                    Problem(name, index, resolved, f"same image as {other[0]}[{other[1]}]: it leaks between splits")
                )
            elif other[1] != index:
                problems.append(
                    Problem(name, index, resolved, f"same image as {other[0]}[{other[1]}]: a duplicate in one split")
                )
    if store_dir is not None and "training" in names and isinstance(content.get("training"), list):
        problems += _store_problems(store_dir, content["training"], base)
    return problems, counts


def _store_problems(store_dir: str | os.PathLike, records: list[Any], base: Path) -> list[Problem]:
    """The training records a preprocessed volume store (:mod:`common.data.store`) cannot serve."""
    images = [resolve_record(r, base).get("image") if isinstance(r, dict) else None for r in records]
    indexed = [(i, str(image)) for i, image in enumerate(images) if isinstance(image, str) and image]
    found = store_problems(store_dir, [image for _, image in indexed])
    return [
        Problem("training", None if at is None else indexed[at][0], source, problem) for at, source, problem in found
    ]


def validate_datalist(
    path: str | os.PathLike,
    dims: int = 3,
    open_images: bool = True,
    section: str | None = None,
    base_dir: str | os.PathLike | None = None,
    num_workers: int = 1,
    findings: str | Sequence[str] | None = None,
    strict: bool = False,
    warnings: list[Problem] | None = None,
    progress: bool = False,
    store_dir: str | os.PathLike | None = None,
) -> list[Problem]:
    """Every problem of a datalist; an empty list means it is ready for training.

    Args:
        path: the datalist JSON.
        dims: 3 for volumes (:func:`~common.data.readers.read_volume`), 2 for radiographs.
        open_images: read every image (and mask) with the validating readers; otherwise only check they exist.
        section: check only this section (default: every section present).
        base_dir: folder that relative paths resolve against (default: the datalist's folder).
        num_workers: threads used to open images.
        findings: the label vocabulary (a bundle name, a list of finding keys); label keys outside it are named.
        strict: volumes that are probably not CTs in HU (:func:`~common.data.readers.ct_problems`) are problems;
            otherwise they are appended to ``warnings`` (when given).
        warnings: a list that receives those findings when not ``strict``.
        progress: show a progress bar over the records (the command line does).
        store_dir: a preprocessed volume store (``python -m common.data.store build``) that must hold an entry for
            every training record.

    Returns:
        The problems, in datalist order; a problem with the file as a whole (not UTF-8, not JSON) comes alone.

    Raises:
        ValueError: ``dims`` is not 2 or 3.
    """
    vocabulary = finding_vocabulary(findings)
    return _validate(
        path, dims, open_images, section, base_dir, num_workers, vocabulary, strict, warnings, progress, store_dir
    )[0]


def main(
    datalist: str,
    section: str | None = None,
    dims: int = 3,
    open_images: bool = True,
    base_dir: str | None = None,
    num_workers: int = 1,
    findings: str | Sequence[str] | None = None,
    strict: bool = False,
    store_dir: str | None = None,
) -> None:
    """Print every problem of ``datalist`` and a summary; exit with status 1 when there are problems.

    Args:
        datalist: the datalist JSON.
        section: check only this section (training, validation or test).
        dims: 3 for CT volumes, 2 for radiographs.
        open_images: read every image with the validating readers (slow on large datasets); False only checks paths.
        base_dir: folder that relative paths resolve against (default: the datalist's folder).
        num_workers: threads used to open images.
        findings: label vocabulary: a bundle name (``colipri_ct``) or finding keys; unknown label keys are named.
        strict: volumes that are probably not CTs in HU count as problems, not warnings.
        store_dir: a preprocessed volume store that must hold every training record (``common.data.store``).
    """
    open_images = flag(open_images, "open_images")  # fire passes "false" through as text
    vocabulary = finding_vocabulary(findings)
    strict = flag(strict, "strict")
    warnings: list[Problem] = []
    problems, counts = _validate(
        datalist,
        int(dims),
        open_images,
        section,
        base_dir,
        int(num_workers),
        vocabulary,
        strict,
        warnings,
        True,
        store_dir,
    )
    for warning in warnings:
        print(f"warning: {warning}")
    for problem in problems:
        print(problem)
    checked = sum(counts.values())
    per_section = ", ".join(f"{name}: {n}" for name, n in counts.items())
    records = len({(p.section, p.index) for p in problems if p.index is not None})
    summary = f"{datalist}: checked {checked} record(s)" + (f" ({per_section})" if per_section else "")
    if warnings:
        summary += f"; {len(warnings)} warning(s) (--strict True makes them problems)"
    if problems:
        print(f"{summary}; {len(problems)} problem(s) in {records} record(s)")
        sys.exit(1)
    print(f"{summary}; no problems")


def cli() -> None:
    """``medvlp-validate`` / ``python -m common.data.validate``: :func:`main` on the command line."""
    import fire

    fire.Fire(main)


if __name__ == "__main__":
    cli()
