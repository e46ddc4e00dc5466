"""Non-linear projection head: pointwise layer -> BatchNorm without affine -> ReLU -> pointwise layer.

G2D (Liu et al., NeurIPS 2024, https://arxiv.org/abs/2312.01522, §3.1 and A.3) projects the image feature map
(``P_v``, before attention pooling) and the text tokens (``P_l``) into a 128-d joint space with this head, as
SimCLR-style projectors do (Chen et al. 2020, https://arxiv.org/abs/2002.05709). The same module acts on
channel-last vectors ``(..., C)`` (``spatial_dims=0``: ``Linear`` + ``BatchNorm1d``, statistics over every leading
position, e.g. all tokens of a batch ``(B, L, C)``) and on channel-first maps ``(B, C, *grid)`` (``spatial_dims``
1/2/3: 1x1 convolutions + ``BatchNorm{1,2,3}d``, statistics over batch and grid).

In training mode BatchNorm needs more than one value per channel (a single vector fails), and over text tokens its
statistics include padding positions unless the caller removes them (as G2D's release does).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["NonLinearProjection"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class NonLinearProjection(nn.Sequential):
    """``in_proj`` (no bias) -> ``norm`` (BatchNorm, ``affine=False``) -> ``act`` (ReLU) -> ``out_proj`` (bias).

    Args:
        in_dim: input channels.
        out_dim: output channels (G2D: 128).
        hidden_dim: width between the two layers (default ``out_dim``, as in G2D).
        spatial_dims: 0 for channel-last vectors ``(..., C)``; 1, 2 or 3 for maps ``(B, C, *grid)``.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, spatial_dims: int = 0) -> None:
        if spatial_dims not in _NORM:
            raise ValueError(f"spatial_dims must be 0 (vectors), 1, 2 or 3, got {spatial_dims}")
        hidden = int(hidden_dim) if hidden_dim is not None else int(out_dim)

        def layer(cin: int, cout: int, bias: bool) -> nn.Module:
            if spatial_dims == 0:
                return nn.Linear(cin, cout, bias=bias)
            return _CONV[spatial_dims](cin, cout, kernel_size=1, bias=bias)

        super().__init__(
            OrderedDict(
                in_proj=layer(in_dim, hidden, bias=False),
                norm=_NORM[spatial_dims](hidden, affine=False),
                act=nn.ReLU(inplace=True),
                out_proj=layer(hidden, out_dim, bias=True),
            )
        )
        self.in_dim, self.out_dim, self.hidden_dim = int(in_dim), int(out_dim), hidden
        self.spatial_dims = int(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., C)`` vectors (``spatial_dims=0``) or ``(B, C, *grid)`` maps."""
        if self.spatial_dims == 0 and x.ndim > 2:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_dim)
        return super().forward(x)
