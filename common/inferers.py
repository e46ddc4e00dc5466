"""Inferers beyond MONAI's: sliding windows over a patch encoder, stitched token for token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple, ensure_tuple_rep
from torch import nn

__all__ = ["PatchSlidingWindowInferer"]


class PatchSlidingWindowInferer(SlidingWindowInferer):
    """MONAI sliding windows over a patch encoder, stitched at patch granularity, then the network's heads.

    ``network`` must expose ``patch_embeddings(x) -> (B, D, *grid)`` at ``1/patch_size`` resolution and
    ``heads(patch_map)`` (see :class:`common.networks.zero_shot.DenseZeroShotHeads`). Inputs must be padded to the
    patch grid and at least the ROI (:class:`common.transforms.patch_grid.WindowGridPadd`); windows then start on
    multiples of the patch size, where MONAI's scaled-output stitching places each window's tokens exactly. A ``(B, C, *roi)`` input is a single window (the plain path).

    Args:
        roi_size: window size in voxels (the training field of view, e.g. 192^3 at 2 mm).
        patch_size: the encoder's patch size.
        overlap: fraction of overlap between windows; ``roi * (1 - overlap)`` must be a multiple of the patch size.
        sw_batch_size: windows per forward pass.
        mode: blending of overlapping tokens (``"constant"``: mean).
        kwargs: other :class:`~monai.inferers.SlidingWindowInferer` arguments (``sw_device``, ``device``, ...).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        mode: str = "constant",
        **kwargs: Any,
    ) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, **kwargs)
        self.patch_size = patch_size
        rank = max(len(ensure_tuple(roi_size)), len(ensure_tuple(patch_size)))
        for roi, patch in zip(ensure_tuple_rep(roi_size, rank), ensure_tuple_rep(patch_size, rank)):
            interval = max(int(int(roi) * (1 - float(overlap))), 1)
            if int(roi) % int(patch) or interval % int(patch):
                raise ValueError(
                    f"roi_size {roi} and its window step {interval} (overlap {overlap}) must be multiples of the "
                    f"patch size {patch} so that windows start on the patch grid"
                )

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``network.heads`` of the stitched patch map of ``inputs`` ``(B, C, *spatial)``."""
        spatial = tuple(int(s) for s in inputs.shape[2:])
        rank = len(spatial)
        roi, patch = ensure_tuple_rep(self.roi_size, rank), ensure_tuple_rep(self.patch_size, rank)
        if any(n < r or n % p for n, r, p in zip(spatial, roi, patch)):
            raise ValueError(
                f"input spatial shape {spatial} must be at least the ROI {roi} and a multiple of the patch size "
                f"{patch}: pad with WindowGridPadd (sliding_window_preprocessing)"
            )
        # MONAI maps window start s to token int(s * (roi / patch) / roi): exact only if the float scale is
        for n, r, p in zip(spatial, roi, patch):
            scale = (r // p) / float(r)
            if any(int(k * p * scale) != k for k in range(n // p + 1)):
                raise ValueError(f"patch size {p} with ROI {r} cannot be stitched exactly by MONAI (float scale)")
        patch_map = super().__call__(inputs, network.patch_embeddings, *args, **kwargs)
        expected = tuple(n // p for n, p in zip(spatial, patch))
        if tuple(patch_map.shape[2:]) != expected:
            raise RuntimeError(f"stitched patch map {tuple(patch_map.shape[2:])} != patch grid {expected}")
        patch_map = patch_map.as_tensor() if isinstance(patch_map, MetaTensor) else patch_map
        return network.heads(patch_map)
