"""Next-token cross-entropy for report generation (causal language modelling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CaptionLoss"]


class CaptionLoss(nn.Module):
    """Cross-entropy of the logits at position ``t`` against the token at ``t + 1``, averaged over real tokens.

    Padding is recognised from ``attention_mask`` when given (so an end-of-text token that doubles as the pad
    token is still learned where it is attended), otherwise from ``pad_token_id``. Rows with ``valid=False``
    (image-only samples) contribute nothing. The mean is taken over the target tokens of this process, as in
    open_clip's ``CoCaLoss`` and Hugging Face causal LMs.

    Args:
        pad_token_id: id of the padding token.
        label_smoothing: passed to ``F.cross_entropy``.

    Raises:
        ValueError: if ``label_smoothing`` is outside ``[0, 1)``.
    """

    def __init__(self, pad_token_id: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.pad_token_id = int(pad_token_id)
        self.label_smoothing = label_smoothing

    def forward(
        self,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy.

        Args:
            logits: ``(B, L, V)`` decoder outputs aligned with ``input_ids`` (position ``t`` predicts ``t + 1``).
            input_ids: ``(B, L)`` token ids fed to the decoder.
            attention_mask: ``(B, L)``, 0 at padding; overrides ``pad_token_id`` when given.
            valid: ``(B,)`` bool, ``False`` for rows without a report.

        Returns:
            Scalar loss; 0 (still attached to the graph) when there is no target token.

        Raises:
            ValueError: on mismatched shapes.
        """
        if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
            raise ValueError(
                "logits must be (B, L, V) with input_ids (B, L), "
                f"got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        targets = input_ids[:, 1:]
        if attention_mask is None:
            ignored = targets == self.pad_token_id
        else:
            ignored = attention_mask[:, 1:] == 0
        if valid is not None:
            if valid.numel() != input_ids.shape[0]:
                raise ValueError(f"valid must have {input_ids.shape[0]} entries, got shape {tuple(valid.shape)}")
            ignored = ignored | ~valid.reshape(-1, 1).to(device=ignored.device, dtype=torch.bool)
        targets = targets.masked_fill(ignored, -100)
        summed = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        return summed / (~ignored).sum().clamp(min=1)
