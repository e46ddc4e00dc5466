"""Finding labels as fixed-order vectors, so a batch of records collates into ``(B, K)``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.data.contract import DataContractError
from common.data.findings import FINDINGS, Finding

__all__ = ["LabelVectord"]


class LabelVectord(MapTransform):
    """Turn a ``{finding_key: 0|1}`` dict into a float vector ``(K,)`` in ``findings`` order (NaN = unknown).

    Records without labels (image-only data) get an all-NaN vector, so mixed batches still collate.

    Args:
        keys: the labels key (``"labels"``).
        findings: the finding order (``Finding`` objects or keys).
        output_key: where the vector goes (default ``"<key>_vector"``).
    """

    def __init__(
        self,
        keys: KeysCollection = "labels",
        findings: Sequence[Finding | str] = FINDINGS,
        output_key: str | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.finding_keys = [f.key if isinstance(f, Finding) else str(f) for f in findings]
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            labels = d.get(key) or {}
            if not isinstance(labels, Mapping):
                raise DataContractError(d.get("image"), f"'{key}' must be a dict of finding -> 0/1, got {labels!r}")
            values = []
            for name in self.finding_keys:
                value = labels.get(name)
                if value is not None and value not in (0, 1):
                    raise DataContractError(d.get("image"), f"label {name!r} must be 0 or 1, got {value!r}")
                values.append(float("nan") if value is None else float(value))
            d[self.output_key or f"{key}_vector"] = torch.tensor(values, dtype=torch.float32)
        return d
