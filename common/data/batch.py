"""Views of a collated batch that paired objectives share: the rows with a report, tokens without dead padding.

A batch may mix image-only and paired records (``has_report``, see ``common/README.md``): image terms use every
row, text terms only the paired ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["paired_rows", "report_mask", "scatter_rows", "trim_padding"]


def report_mask(batch: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The batch's ``has_report`` as a ``(B,)`` bool on ``like``'s device; all True when the key is absent (a
    paired-only pipeline), ``B`` being ``like``'s first dimension."""
    flags = batch.get("has_report")
    if flags is None:
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
    return flags.to(device=like.device, dtype=torch.bool).reshape(-1)


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` computed on ``rows`` of a batch placed back into a zero ``(size, ...)`` tensor (the identity when
    ``rows`` is every row in order), so that batch-wide losses can mask the other rows."""
    if rows.numel() == size and bool((rows == torch.arange(size, device=rows.device)).all()):
        return values
    return values.new_zeros(size, *values.shape[1:]).index_copy(0, rows, values)


def paired_rows(has_report: torch.Tensor) -> torch.Tensor:
    """Indices of the rows with a report; ``[0]`` when there is none (that row is then masked out of the losses)."""
    rows = has_report.nonzero().flatten()
    return rows if rows.numel() > 0 else torch.zeros(1, dtype=torch.long, device=has_report.device)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (fixed-length tokenisation, right padding).

    Results are unchanged (padded positions are masked everywhere); the text tower and any text decoder then cost
    what the longest report in the batch needs, not ``max_length``.
    """
    valid = attention_mask.reshape(-1, attention_mask.shape[-1]).any(dim=0)
    length = int(valid.nonzero().max()) + 1 if bool(valid.any()) else 1
    return input_ids[..., :length], attention_mask[..., :length]
