"""Views of a collated batch that paired objectives share: the rows with a report, tokens without dead padding.

A batch may mix image-only and paired records (``has_report``, see ``common/README.md``): image terms use every
row, text terms only the paired ones.
"""

from __future__ import annotations

import torch

__all__ = ["paired_rows", "trim_padding"]


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
