"""PRIOR's local alignment terms, batched over reports with different sentence counts.

Cheng et al., "PRIOR: Prototype Representation Joint Learning from Medical Images and Reports", ICCV 2023,
https://arxiv.org/abs/2307.14975; release ``prior/models/prior.py::local_alignment_loss`` (a per-report loop over
``simsiam_loss_func`` and ``text_local_loss_fn``). With ``V`` a report's local image tokens, ``S`` its sentence
embeddings and ``V~`` / ``S~`` their cross-attended counterparts (patches attending to sentences / sentences
attending to patches):

* image side, SimSiam without negatives: ``-1/2 [cos(h(V), sg(V~)) + cos(h(V~), sg(V))]`` averaged over tokens
  (:class:`LocalImageSimSiamLoss`, ``h`` the predictor, applied by the caller);
* text side, InfoNCE among the sentences of the same report only (CUT-style negatives):
  ``1/2 [CE(s S~ S^T, I) + CE(s S S~^T, I)]`` on L2-normalised rows (:class:`LocalSentenceContrastiveLoss`).

Both are averaged per report, then over the batch, as the release does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalImageSimSiamLoss", "LocalSentenceContrastiveLoss"]


class LocalImageSimSiamLoss(nn.Module):
    """``-1/2 [mean cos(p_a, sg(z_b)) + mean cos(p_b, sg(z_a))]`` over all ``(B, N)`` tokens.

    ``p_a = h(z_a)``, ``p_b = h(z_b)`` are the predictor outputs. Every report has the same number of image tokens,
    so the flat mean equals the release's per-report mean averaged over the batch.
    """

    def forward(
        self, pred_a: torch.Tensor, pred_b: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor
    ) -> torch.Tensor:
        if not pred_a.shape == pred_b.shape == target_a.shape == target_b.shape:
            raise ValueError("predictions and targets must all have the same shape")
        dt = torch.promote_types(pred_a.dtype, torch.float32)  # at least float32
        ab = F.cosine_similarity(pred_a.to(dt), target_b.detach().to(dt), dim=-1).mean()
        ba = F.cosine_similarity(pred_b.to(dt), target_a.detach().to(dt), dim=-1).mean()
        return -0.5 * (ab + ba)


class LocalSentenceContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between each report's sentences ``S`` and their image-attended versions ``S~``.

    Negatives are the other sentences of the same report (padding excluded); each report's loss is the mean over
    its sentences, the batch loss the mean over reports. The scale ``s = exp(logit_scale)`` is learnable and, as in
    the release (``local_logit_scale``, temperature 0.01), not clamped.

    Args:
        init_logit_scale: initial ``log s`` (default ``log(1 / 0.01)``).
    """

    def __init__(self, init_logit_scale: float = math.log(1 / 0.01)) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(
        self, sentences: torch.Tensor, attended: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sentences`` ``S`` and ``attended`` ``S~`` ``(B, n, D)``; ``mask`` ``(B, n)`` nonzero at real sentences.

        Raises:
            ValueError: shapes disagree or a report has no sentence.
        """
        if sentences.shape != attended.shape or sentences.ndim != 3:
            raise ValueError(f"sentences and attended must both be (B, n, D); got {sentences.shape}, {attended.shape}")
        b, n, _ = sentences.shape
        if mask is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=sentences.device)
        else:
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
            valid = mask.to(device=sentences.device, dtype=torch.bool)
        if not torch.jit.is_tracing() and not bool(valid.any(dim=1).all()):
            raise ValueError("every report needs at least one sentence")
        dt = torch.promote_types(sentences.dtype, torch.float32)  # at least float32
        s = F.normalize(sentences.to(dt), dim=-1)
        t = F.normalize(attended.to(dt), dim=-1)
        logits = self.logit_scale.to(dt).exp() * t @ s.transpose(1, 2)  # (B, n, n): rows S~_i, columns S_j
        # padding rows keep their diagonal only (a finite zero loss, no NaN gradient), then are dropped
        pair = (valid.unsqueeze(1) & valid.unsqueeze(2)) | torch.eye(n, dtype=torch.bool, device=valid.device)
        counts = valid.sum(dim=1).to(logits.dtype)

        def directed(scores: torch.Tensor) -> torch.Tensor:
            scores = scores.masked_fill(~pair, float("-inf"))
            diagonal = scores.diagonal(dim1=1, dim2=2)
            rows = (torch.logsumexp(scores, dim=-1) - diagonal) * valid
            return rows.sum(dim=1) / counts  # per report

        per_report = 0.5 * (directed(logits) + directed(logits.transpose(1, 2)))
        return per_report.mean()
