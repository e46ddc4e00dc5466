"""DINO projection head (and, from the networks engineer, the RAD-DINO backbones).

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", https://arxiv.org/abs/2304.07193;
Pérez-García et al., "Exploring scalable medical image encoders beyond text supervision" (RAD-DINO),
https://doi.org/10.1038/s42256-024-00965-w.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """MLP projector, L2 normalisation, then a weight-normalised linear layer onto ``out_dim`` prototypes.

    Follows DINOv2's ``dinov2/layers/dino_head.py``: ``nlayers`` linear layers with GELU (optionally BatchNorm)
    down to ``bottleneck_dim``, linear weights drawn from a truncated normal (std 0.02) with zero biases, the
    bottleneck L2-normalised, and a bias-free last layer whose weight norm ``g`` starts at 1. As in DINOv2 ``g``
    stays trainable (DINOv2 instead freezes the whole last layer during the first epoch, a trainer concern);
    ``norm_last_layer=True`` freezes ``g`` at 1, as DINO v1's option of that name did.

    Checkpoints saved with the legacy ``torch.nn.utils.weight_norm`` (keys ``last_layer.weight_g`` /
    ``last_layer.weight_v``, e.g. RAD-DINO's ``dino_head.safetensors``) load directly: torch's parametrised
    weight norm converts them on ``load_state_dict``.

    Args:
        in_dim: width of the backbone token fed to the head.
        out_dim: number of prototypes (DINOv2 and RAD-DINO: 65536).
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: width of the normalised bottleneck.
        nlayers: number of MLP layers (at least 1; 1 means a single linear map to the bottleneck).
        use_bn: insert ``BatchNorm1d`` after each hidden linear layer.
        mlp_bias: biases in the MLP's linear layers.
        norm_last_layer: freeze the last layer's weight norm at 1.

    Raises:
        ValueError: on a non-positive width or ``nlayers < 1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        mlp_bias: bool = True,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(
                f"widths must be positive, got in_dim={in_dim}, out_dim={out_dim}, "
                f"hidden_dim={hidden_dim}, bottleneck_dim={bottleneck_dim}"
            )
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.mlp = self._build_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers, use_bn, mlp_bias)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _build_mlp(
        in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, use_bn: bool, bias: bool
    ) -> nn.Module:
        if nlayers == 1:
            return nn.Linear(in_dim, bottleneck_dim, bias=bias)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(nlayers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=bias))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
        return nn.Sequential(*layers)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens ``(B, in_dim)`` to prototype scores ``(B, out_dim)`` (unnormalised logits)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
