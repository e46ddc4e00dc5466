"""KoLeo regulariser: spreads features by penalising small nearest-neighbour distances.

Sablayrolles et al., "Spreading vectors for similarity search", https://arxiv.org/abs/1806.03198, as used in
DINOv2 (https://arxiv.org/abs/2304.07193, ``dinov2/loss/koleo_loss.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator ``-mean_i log(min_{j != i} ||x_i - x_j||)`` on L2-normalised rows.

    As in DINOv2: the nearest neighbour is found by the largest inner product (without gradient), the distance is
    ``F.pairwise_distance`` with ``eps`` added to the difference, and ``eps`` is also added inside the log. The loss
    is computed in float32 with autocast off and on this process's rows only (DINOv2 applies it per global crop).

    Args:
        eps: numerical guard of the normalisation, the distance and the log (DINOv2: 1e-8).

    Raises:
        ValueError: if ``eps`` is negative.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def forward(self, student_output: torch.Tensor) -> torch.Tensor:
        """KoLeo loss of ``student_output`` ``(B, D)``, ``B >= 2``.

        Raises:
            ValueError: on fewer than two rows or a non-2D input.
        """
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError(f"expected (B, D) with B >= 2, got {tuple(student_output.shape)}")
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-2.0)  # below any inner product of unit vectors
                neighbour = dots.argmax(dim=1)
            distances = F.pairwise_distance(x, x[neighbour], p=2, eps=self.eps)
            return -torch.log(distances + self.eps).mean()
