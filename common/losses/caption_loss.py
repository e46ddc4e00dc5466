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
        positions, targets = self.targets(input_ids, attention_mask, valid)
        return self.selected(logits[positions], targets)

    def targets(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the loss looks: ``(B, L)`` bool of the positions whose next token is a target, and those ``(P,)``
        target ids in row-major order (feed the positions to ``ReportDecoder(..., positions=...)``).
        """
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            counted = input_ids[:, 1:] != self.pad_token_id
        else:
            counted = attention_mask[:, 1:] != 0
        if valid is not None:
            if valid.numel() != input_ids.shape[0]:
                raise ValueError(f"valid must have {input_ids.shape[0]} entries, got shape {tuple(valid.shape)}")
            counted = counted & valid.reshape(-1, 1).to(device=counted.device, dtype=torch.bool)
        positions = F.pad(counted, (0, 1), value=False)  # position t predicts token t + 1; the last predicts nothing
        return positions, input_ids[:, 1:][counted]

    def selected(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``(P, V)`` logits at the target positions against ``(P,)`` ids (0 when P = 0)."""
        if logits.ndim != 2 or logits.shape[0] != targets.numel():
            raise ValueError(f"logits must be (P, V) with P = {targets.numel()} targets, got {tuple(logits.shape)}")
        if targets.numel() == 0:
            return logits.sum() * 0.0  # attached to the graph, so every parameter still gets a (zero) gradient
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
