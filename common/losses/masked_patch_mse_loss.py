"""Masked-autoencoder reconstruction loss: mean squared error on the hidden patches only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedPatchMSELoss"]


class MaskedPatchMSELoss(nn.Module):
    """Mean squared error over the elements of masked patches.

    Same value as nnssl's ``MAEMSELoss`` (sum of squared errors over hidden voxels divided by their count) and as
    MAE (He et al., https://arxiv.org/abs/2111.06377: per-patch mean, then mean over hidden patches), written on
    patch sequences. Note the mask convention: here ``True`` marks a *hidden* patch (MAE, DINOv2), whereas nnssl's
    voxel mask is 1 where the voxel is visible.

    Args:
        norm_pix_loss: normalise each target patch by its own mean and (unbiased) variance, as MAE's option of that
            name (off in nnssl's recipe).
    """

    def __init__(self, norm_pix_loss: bool = False) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of the hidden patches.

        Args:
            pred: ``(B, N, P)`` predicted patches.
            target: ``(B, N, P)`` original patches (e.g. :func:`common.networks.eva.patchify`).
            mask: ``(B, N)``, ``True`` (or 1) where the patch was hidden from the encoder.

        Returns:
            Scalar loss; 0 (still attached to the graph) when nothing is masked.

        Raises:
            ValueError: on mismatched shapes.
        """
        if pred.ndim != 3 or pred.shape != target.shape or mask.shape != pred.shape[:2]:
            raise ValueError(
                "expected pred and target (B, N, P) and mask (B, N), got "
                f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
            )
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)
        weights = mask.to(per_patch.dtype)
        return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)
