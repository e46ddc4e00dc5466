"""Hungarian matching of predicted sets to target sets, for a whole batch at once.

Set-prediction losses (DETR; PRIOR's sentence-prototype generation, Cheng et al., ICCV 2023) pair each target with
one prediction so that the summed cost is minimal. SciPy's ``linear_sum_assignment`` (Jonker-Volgenant) solves each
sample's square problem exactly in microseconds for PRIOR's 16 x 16 (or a CT report's 48 x 48) costs; what costs
time in the release is moving every sample's cost matrix to the host separately inside the training loop. Here the
batch's costs move in one transfer and the result comes back as one index tensor, which also fixes the release's
use of the assignment (``logit[col_ind]``, the *inverse* permutation: each target is compared with the prediction
assigned to another target unless the permutation is its own inverse).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["hungarian_match", "match_predictions"]


@torch.no_grad()
def hungarian_match(cost: torch.Tensor) -> torch.Tensor:
    """For costs ``(B, P, T)`` (``P >= T``: predictions x targets), the prediction matched to each target, ``(B, T)``.

    The matching minimises ``sum_t cost[b, match[b, t], t]`` per sample (exact, SciPy).
    """
    if cost.ndim != 3 or cost.shape[1] < cost.shape[2]:
        raise ValueError(f"cost must be (B, predictions, targets) with predictions >= targets, got {tuple(cost.shape)}")
    host = cost.detach().float().cpu().numpy()
    match = np.empty((host.shape[0], host.shape[2]), dtype=np.int64)
    for b, matrix in enumerate(host):
        if not np.isfinite(matrix).all():
            raise ValueError(f"cost matrix of sample {b} holds NaN or infinite values")
        rows, cols = linear_sum_assignment(matrix.T)  # rows: targets (all of them, sorted), cols: predictions
        match[b, rows] = cols
    return torch.from_numpy(match).to(cost.device)


def match_predictions(predictions: torch.Tensor, targets: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """``predictions`` ``(B, P, D)`` reordered so that row ``t`` is the prediction matched to ``targets[:, t]``,
    ``(B, T, D)``, under the ``L_p`` distance (PRIOR: L1)."""
    match = hungarian_match(torch.cdist(predictions.detach().float(), targets.detach().float(), p=p))
    return predictions.gather(1, match.unsqueeze(-1).expand(-1, -1, predictions.shape[-1]))
