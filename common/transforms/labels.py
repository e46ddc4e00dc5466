"""Finding labels as fixed-order vectors, so a batch of records collates into ``(B, K)``."""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.data.contract import DataContractError, record_source
from common.data.findings import FINDINGS, Finding

__all__ = ["LabelVectord", "unknown_label_problem"]


def unknown_label_problem(keys: Sequence[str], vocabulary: Sequence[str]) -> str | None:
    """What is wrong with label ``keys`` outside ``vocabulary`` (closest known spellings suggested), or None."""
    unknown = [key for key in keys if key not in vocabulary]
    if not unknown:
        return None
    shown = []
    for key in unknown:
        close = difflib.get_close_matches(str(key).lower().replace(" ", "_"), vocabulary, n=1, cutoff=0.6)
        shown.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"label key(s) outside the {len(vocabulary)}-finding vocabulary: {', '.join(shown)}; "
        f"known keys: {', '.join(vocabulary)}"
    )


class LabelVectord(MapTransform):
    """Turn a ``{finding_key: 0|1}`` dict into a float vector ``(K,)`` in ``findings`` order (NaN = unknown).

    Records without labels (image-only data) and ``null`` labels or values get NaN, so mixed batches still collate.
    A key outside ``findings`` (unknown or misspelt) would silently become "unknown": it is a
    :class:`~common.data.contract.DataContractError` naming the record's file, unless ``unknown_keys="ignore"``.

    Args:
        keys: the labels key (``"labels"``).
        findings: the finding order (``Finding`` objects or keys).
        output_key: where the vector goes (default ``"<key>_vector"``).
        unknown_keys: ``"raise"`` (default) or ``"ignore"`` for label keys outside ``findings``.
        image_key: key used to name the record in errors (a path or a loaded image's ``filename_or_obj``).
    """

    def __init__(
        self,
        keys: KeysCollection = "labels",
        findings: Sequence[Finding | str] = FINDINGS,
        output_key: str | None = None,
        allow_missing_keys: bool = True,
        unknown_keys: str = "raise",
        image_key: str | None = "image",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if unknown_keys not in ("raise", "ignore"):
            raise ValueError(f"unknown_keys must be 'raise' or 'ignore', got {unknown_keys!r}")
        self.finding_keys = [f.key if isinstance(f, Finding) else str(f) for f in findings]
        self.output_key = output_key
        self.unknown_keys = unknown_keys
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            labels = d.get(key) or {}
            if not isinstance(labels, Mapping):
                problem = f"{key!r} must be an object of finding -> 0/1, got {type(labels).__name__}"
                raise DataContractError(record_source(d, self.image_key), problem)
            if self.unknown_keys == "raise":
                problem = unknown_label_problem(list(labels), self.finding_keys)
                if problem is not None:
                    raise DataContractError(record_source(d, self.image_key), problem)
            values = []
            for name in self.finding_keys:
                value = labels.get(name)
                if value is not None and value not in (0, 1):
                    problem = f"label {name!r} must be 0 or 1 (null: unknown), got {value!r}"
                    raise DataContractError(record_source(d, self.image_key), problem)
                values.append(float("nan") if value is None else float(value))
            d[self.output_key or f"{key}_vector"] = torch.tensor(values, dtype=torch.float32)
        return d
