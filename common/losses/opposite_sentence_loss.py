"""Opposite-sentence loss: the image must prefer a true finding sentence over its negated twin.

COLIPRI (Wald et al., https://arxiv.org/abs/2510.15042) lists an "OSL" (Opposite Sentence Loss) among its
abbreviations but does not publish its form. This module is OUR READING of that name, not the paper's definition:
a two-way softmax, with the contrastive logit scale, between the image's similarity to a sentence that holds for it
("Lung nodules present") and to the opposite sentence ("No lung nodules present"). It trains exactly the decision
made by the two-prompt zero-shot protocol of the released COLIPRI model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OppositeSentenceLoss"]


class OppositeSentenceLoss(nn.Module):
    """Cross-entropy of choosing the true statement among {true, negated}, with cosine similarities.

    For image ``b`` and finding ``f``: ``logits = s * [cos(v_b, t_bf), cos(v_b, n_bf)]``, target index 0, mean over
    the valid (image, finding) pairs. ``s`` is the shared contrastive logit scale, passed at call time so that
    the loss has no state of its own (gradients reach the scale unless the caller detaches it).

    Args:
        label_smoothing: passed to ``F.cross_entropy``.

    Raises:
        ValueError: if ``label_smoothing`` is outside ``[0, 1)``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(
        self,
        image_emb: torch.Tensor,
        true_emb: torch.Tensor,
        negated_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean two-way cross-entropy over the valid pairs.

        Args:
            image_emb: ``(B, D)`` image embeddings (normalised here).
            true_emb: ``(B, F, D)`` embeddings of sentences that hold for each image.
            negated_emb: ``(B, F, D)`` embeddings of their negated twins.
            logit_scale: scalar multiplying the cosine similarities.
            valid: ``(B, F)`` bool, ``False`` for padding findings or image-only rows.

        Returns:
            Scalar loss; 0 (still attached to the graph) when no pair is valid.

        Raises:
            ValueError: on mismatched shapes.
        """
        if image_emb.ndim != 2 or true_emb.ndim != 3 or true_emb.shape != negated_emb.shape:
            raise ValueError(
                "expected image_emb (B, D) and true_emb, negated_emb (B, F, D), got "
                f"{tuple(image_emb.shape)}, {tuple(true_emb.shape)}, {tuple(negated_emb.shape)}"
            )
        if true_emb.shape[0] != image_emb.shape[0] or true_emb.shape[2] != image_emb.shape[1]:
            raise ValueError(f"true_emb {tuple(true_emb.shape)} does not match image_emb {tuple(image_emb.shape)}")
        image = F.normalize(image_emb, dim=-1).unsqueeze(1)
        similarity_true = (image * F.normalize(true_emb, dim=-1)).sum(-1)
        similarity_negated = (image * F.normalize(negated_emb, dim=-1)).sum(-1)
        logits = logit_scale * torch.stack([similarity_true, similarity_negated], dim=-1)  # (B, F, 2)
        if valid is not None:
            if valid.shape != true_emb.shape[:2]:
                raise ValueError(f"valid must be {tuple(true_emb.shape[:2])}, got {tuple(valid.shape)}")
            logits = logits[valid.to(device=logits.device, dtype=torch.bool)]
        logits = logits.reshape(-1, 2)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
