"""Finding sets for zero-shot classification, chosen by name: the bundles' ``--finding_set`` knob.

* ``phantom``: the vocabulary the bundle trains on: the 18 CT-RATE findings for 3D, the radiograph vocabulary
  (:data:`common.data.radiograph_findings.CXR_FINDINGS`, CheXpert names) for 2D;
* ``ct_rate``: the 18 CT-RATE abnormalities (:data:`common.data.findings.FINDINGS`) with their prompt pairs;
* a ``.yaml`` / ``.yml`` / ``.json`` file: the user's findings with their own prompts::

      findings:                           # or the list alone at the top level
        - name: Pneumothorax
          positive: [There is a pneumothorax., Pneumothorax is present.]
          negative: [There is no pneumothorax., Pneumothorax is not present.]
        - name: Pleural effusion          # no prompts: a known finding's own, else the templates

  ``positive[i]`` and ``negative[i]`` are twins (:func:`common.transforms.text.build_prompts` adds the template pairs
  to every finding and keeps the same number of pairs for all);
* anything else: comma-separated finding names (known ones bring their prompts, others get the templates).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common.data.contract import DataContractError
from common.data.findings import FINDINGS, Finding

__all__ = ["NAMED_SETS", "finding_set", "read_finding_file"]

NAMED_SETS: tuple[str, ...] = ("phantom", "ct_rate")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _strings(value: Any, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataContractError(where, f"{field!r} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _finding(entry: Any, where: str) -> Finding | str:
    if isinstance(entry, str) and entry.strip():
        return entry.strip()
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise DataContractError(where, "a finding must be a name or an object with a non-empty 'name'")
    unknown = sorted(set(entry) - {"name", "key", "positive", "negative"})
    if unknown:
        raise DataContractError(where, f"unknown field(s) {unknown}; allowed: name, key, positive, negative")
    positive = _strings(entry.get("positive"), where, "positive")
    negative = _strings(entry.get("negative"), where, "negative")
    if len(positive) != len(negative):
        raise DataContractError(
            where, f"positive and negative prompts pair up by position: got {len(positive)} and {len(negative)}"
        )
    name = entry["name"].strip()
    if not positive:
        return name
    key = entry.get("key") or "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return Finding(
        key=str(key), name=name, positive=(), negative=(), prompts_positive=positive, prompts_negative=negative
    )


def read_finding_file(path: str | os.PathLike) -> list[Finding | str]:
    """The findings of a YAML / JSON file (format in the module docstring).

    Raises:
        DataContractError: naming the file (and the entry) for unreadable text, a wrong structure, unpaired prompts
            or two findings with one key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise DataContractError(path, f"cannot read the finding file ({err})") from err
    entries = content.get("findings") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DataContractError(path, "expected a non-empty list of findings (top level or under 'findings')")
    findings = [_finding(entry, f"{path} [finding {i}]") for i, entry in enumerate(entries)]
    keys = [f.key if isinstance(f, Finding) else f.lower() for f in findings]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DataContractError(path, f"finding(s) listed twice: {repeated}")
    return findings


def finding_set(name: str | os.PathLike | Sequence[str], dims: int = 3) -> list[Finding | str]:
    """The findings of a named set, a finding file, or a list of finding names (see the module docstring).

    Args:
        name: ``phantom``, ``ct_rate``, a ``.yaml``/``.yml``/``.json`` path, comma-separated names or a list of names.
        dims: 3 (CT) or 2 (radiographs): what ``phantom`` means.

    Raises:
        DataContractError: a finding file that is missing or malformed.
        ValueError: an empty name or bad ``dims``.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if not isinstance(name, (str, os.PathLike)):
        return list(name)
    text = os.fspath(name).strip()
    if not text:
        raise ValueError("finding_set is empty: use phantom, ct_rate, a YAML/JSON file or finding names")
    if text == "ct_rate" or (text == "phantom" and dims == 3):
        return list(FINDINGS)
    if text == "phantom":
        from common.data.radiograph_findings import CXR_FINDINGS

        return list(CXR_FINDINGS)
    if text.lower().endswith(_FILE_SUFFIXES):
        if not os.path.isfile(text):
            raise DataContractError(text, "finding file does not exist")
        return read_finding_file(text)
    return [part.strip() for part in text.split(",") if part.strip()]
