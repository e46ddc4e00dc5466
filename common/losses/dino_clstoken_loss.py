"""DINO self-distillation loss on the class token, with centring or Sinkhorn-Knopp teacher targets.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", https://arxiv.org/abs/2104.14294;
Oquab et al., "DINOv2", https://arxiv.org/abs/2304.07193. Re-implements the maths of DINOv2's
``dinov2/loss/dino_clstoken_loss.py`` (reference commit b8931f7) on top of :mod:`common.distributed`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common import distributed

__all__ = ["DINOClsTokenLoss", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments of samples to prototypes (SwAV/DINOv2 Sinkhorn-Knopp), over all ranks.

    DINOv2 rescales ``Q = exp(t / teacher_temp)^T`` in turn so that every prototype (row) holds ``1/K`` of the mass
    and every sample (column) ``1/B``, then multiplies by ``B`` so that each sample's assignment sums to 1.
    Here ``Q`` is kept as ``diag(b) E diag(a)`` with ``E = exp(t / teacher_temp)`` and only the scaling vectors
    are updated: ``a = 1 / (E^T b)`` up to scale, with the prototype sums all-reduced across ranks, then
    ``b = 1 / (E a)``. The assignments are the same, since the constants ``K``, ``B`` and DINOv2's initial division
    by the total cancel, with about a third of the passes over the ``(B, K)`` matrix and no sample count.
    ``n`` ranks holding parts of a batch get the rows that one process would compute on the whole batch (up to
    rounding). Runs in float32 with autocast off.

    Args:
        teacher_output: ``(B_local, K)`` teacher logits.
        teacher_temp: teacher temperature.
        n_iterations: number of (prototype, sample) normalisation rounds (DINOv2: 3).

    Returns:
        ``(B_local, K)`` float32 assignments, each row summing to 1.

    Raises:
        ValueError: if ``n_iterations < 1``.
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    with torch.autocast(device_type=teacher_output.device.type, enabled=False):
        assignments = (teacher_output.float() / teacher_temp).exp_()  # E, (B_local, K)
        sample_scale = assignments.new_ones(assignments.shape[0])
        for _ in range(n_iterations):
            prototype_mass = torch.mv(assignments.t(), sample_scale)
            distributed.all_reduce_sum(prototype_mass)
            prototype_scale = prototype_mass.reciprocal_()
            prototype_scale /= prototype_scale.sum()  # the overall scale cancels; fixing it stops drift
            sample_scale = torch.mv(assignments, prototype_scale).reciprocal_()
        return assignments.mul_(prototype_scale).mul_(sample_scale[:, None])


class DINOClsTokenLoss(nn.Module):
    """Cross-entropy between teacher targets and student class-token distributions over prototypes.

    Call order per step (as in DINOv2's meta-architecture): teacher targets with :meth:`softmax_center_teacher`
    (uses the current centre) then :meth:`update_center` with the same raw teacher logits, or
    :meth:`sinkhorn_knopp_teacher` (no centre); then :meth:`forward` on the student logits.

    :meth:`forward` sums, over every (student crop, teacher crop) pair given, the batch mean of
    ``-sum_k p_t log softmax(s / student_temp)``; it does *not* skip same-view pairs. DINOv2 excludes them in the
    meta-architecture: local crops are paired with both teacher global crops, and the two global crops are passed
    as one student tensor against the teacher tensor with its two crops swapped (then ``* 2`` and divided by the
    number of pairs). The composer reproduces that.

    The centre update is applied at once (synchronous all-reduce). DINOv2 starts the all-reduce asynchronously and
    applies it at the next :meth:`softmax_center_teacher`, which gives the same centre at every use; applying it
    eagerly also keeps checkpoints taken between steps up to date. The batch size of each rank is summed with the
    centre, so ranks may hold different batch sizes.

    Args:
        out_dim: number of prototypes ``K``.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher centre.

    Raises:
        ValueError: on a non-positive ``out_dim`` or temperature, or a momentum outside ``[0, 1]``.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1 or student_temp <= 0:
            raise ValueError(f"out_dim and student_temp must be positive, got {out_dim}, {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher targets ``softmax((t - center) / teacher_temp)`` for logits ``(..., K)``."""
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, *, n_iterations: int = 3
    ) -> torch.Tensor:
        """Teacher targets ``(B, K)`` (float32) from :func:`sinkhorn_knopp`; the centre is not used."""
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations)

    def forward(
        self,
        student_output_list: Sequence[torch.Tensor] | torch.Tensor,
        teacher_out_softmaxed_centered_list: Sequence[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """Sum over all (student, teacher) pairs of the batch-mean cross-entropy.

        Args:
            student_output_list: student logits, one ``(B, K)`` tensor per crop (or a stacked ``(S, B, K)``).
            teacher_out_softmaxed_centered_list: teacher probabilities, one ``(B, K)`` tensor per crop.

        Returns:
            Scalar loss.

        Raises:
            ValueError: if either list is empty.
        """
        if len(student_output_list) == 0 or len(teacher_out_softmaxed_centered_list) == 0:
            raise ValueError("student_output_list and teacher_out_softmaxed_centered_list must not be empty")
        total = student_output_list[0].new_zeros(())
        for student in student_output_list:
            log_probs = F.log_softmax(student / self.student_temp, dim=-1)
            for teacher in teacher_out_softmaxed_centered_list:
                total = total - (teacher * log_probs).sum(dim=-1).mean()
        return total

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the centre towards the mean raw teacher logit ``(..., K)`` over all ranks."""
        flat = teacher_output.detach().float().reshape(-1, self.center.shape[-1])
        stats = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
        distributed.all_reduce_sum(stats)
        batch_center = (stats[:-1] / stats[-1]).reshape_as(self.center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
