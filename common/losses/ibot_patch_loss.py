"""iBOT masked-patch self-distillation loss.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", https://arxiv.org/abs/2111.07832; DINOv2,
https://arxiv.org/abs/2304.07193. Re-implements the maths of DINOv2's ``dinov2/loss/ibot_patch_loss.py``
(reference commit b8931f7) on top of :mod:`common.distributed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import distributed
from common.losses.dino_clstoken_loss import sinkhorn_knopp

__all__ = ["IBOTPatchLoss"]


class IBOTPatchLoss(nn.Module):
    """Cross-entropy between teacher targets and student distributions on the masked patch tokens.

    Call order per step: teacher targets with :meth:`softmax_center_teacher` then :meth:`update_center`, or
    :meth:`sinkhorn_knopp_teacher`; then :meth:`forward_masked` (DINOv2's training path, on the gathered masked
    tokens) or :meth:`forward` (on full token grids with a mask).

    In both, each masked patch of image ``i`` weighs ``1 / n_i`` (``n_i`` its number of masked patches) and the
    weighted sum is divided by the number of images ``B`` (masked or not).

    The centre is the EMA of the per-group mean teacher logit, averaged over groups and ranks: for ``(B, N, K)``
    input each image is a group; DINOv2 passes the masked tokens as one ``(1, M, K)`` group per rank, which
    :meth:`update_center` also accepts as ``(M, K)``. The update is applied at once (see
    :class:`~common.losses.dino_clstoken_loss.DINOClsTokenLoss`).

    Args:
        patch_out_dim: number of prototypes ``K``.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher centre.

    Raises:
        ValueError: on a non-positive ``patch_out_dim`` or temperature, or a momentum outside ``[0, 1]``.
    """

    center: torch.Tensor

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if patch_out_dim < 1 or student_temp <= 0:
            raise ValueError(f"patch_out_dim and student_temp must be positive, got {patch_out_dim}, {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher targets ``softmax((t - center) / teacher_temp)`` for logits ``(..., K)`` (shape kept)."""
        return F.softmax((teacher_patch_tokens - self.center.reshape(-1)) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, *, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets ``(M, K)`` (float32) for the masked teacher tokens ``(M, K)``.

        DINOv2 also takes the number of masked patches and all-reduces it for the sample marginal ``B``; ``B``
        cancels in the result (see :func:`~common.losses.dino_clstoken_loss.sinkhorn_knopp`), so it is not needed.
        """
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations)

    def forward(
        self, student_patch_tokens: torch.Tensor, teacher_patch_tokens: torch.Tensor, student_masks_flat: torch.Tensor
    ) -> torch.Tensor:
        """Loss on full grids.

        Args:
            student_patch_tokens: ``(B, N, K)`` student logits.
            teacher_patch_tokens: ``(B, N, K)`` teacher probabilities.
            student_masks_flat: ``(B, N)``, true where the student's patch was masked.

        Returns:
            Scalar loss.
        """
        masks = student_masks_flat.to(student_patch_tokens.dtype)
        per_patch = (teacher_patch_tokens * F.log_softmax(student_patch_tokens / self.student_temp, dim=-1)).sum(-1)
        per_image = (per_patch * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return -per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss on the masked tokens only, gathered in the order of ``student_masks_flat[student_masks_flat]``.

        Args:
            student_patch_tokens_masked: ``(M', K)`` student logits (``M' >= M``; a padded buffer is allowed).
            teacher_patch_tokens_masked: ``(M', K)`` teacher probabilities.
            student_masks_flat: ``(B, N)`` masks of all images of this rank.
            n_masked_patches: keep only the first ``M`` rows (DINOv2's padded buffers).
            masks_weight: ``(M,)`` per-token weights; default ``1 / n_i`` for a token of image ``i``.

        Returns:
            Scalar loss.
        """
        masks = student_masks_flat.bool()
        per_token = (
            teacher_patch_tokens_masked * F.log_softmax(student_patch_tokens_masked / self.student_temp, dim=-1)
        ).sum(-1)
        if masks_weight is None:
            masks_weight = (1.0 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
        if n_masked_patches is not None:
            per_token = per_token[:n_masked_patches]
        return -(per_token * masks_weight).sum() / masks.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """EMA of the centre towards the mean over groups and ranks of each group's mean raw teacher logit.

        Args:
            teacher_patch_tokens: ``(G, N, K)`` groups of tokens, or ``(M, K)`` as a single group.
        """
        tokens = teacher_patch_tokens.detach().float()
        if tokens.ndim == 2:
            tokens = tokens.unsqueeze(0)
        group_means = tokens.mean(dim=1)
        stats = torch.cat([group_means.sum(dim=0), group_means.new_tensor([group_means.shape[0]])])
        distributed.all_reduce_sum(stats)
        batch_center = (stats[:-1] / stats[-1]).reshape_as(self.center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
