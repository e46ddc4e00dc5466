"""Symmetric image-text InfoNCE (CLIP) with negatives gathered across ranks.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
https://arxiv.org/abs/2103.00020. Distributed semantics (``gather_with_grad``, ``local_loss``) follow open_clip's
``ClipLoss``; the ``valid`` mask (image-only rows of a mixed batch) is our addition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common import distributed

__all__ = ["ClipLoss", "LogitScaled", "gather_features"]


def gather_features(
    features: torch.Tensor, *, gather_with_grad: bool, local_loss: bool, rank: int, world_size: int
) -> torch.Tensor:
    """Concatenate ``features`` ``(B, D)`` of every rank into ``(world_size * B, D)``.

    With ``gather_with_grad`` the gathered tensor carries gradients to every rank's slice (the backward pass
    sums them across ranks). Without it, the gathered copies are constants; unless ``local_loss`` is set, this
    rank's slice is put back as the local tensor so that its own rows still receive a gradient (open_clip's trick).

    Args:
        features: this rank's features.
        gather_with_grad: differentiate through the gather.
        local_loss: the caller only uses this rank's rows as anchors.
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        The gathered features, rank-major; ``features`` itself when ``world_size == 1``.
    """
    if world_size == 1:
        return features
    if gather_with_grad:
        return distributed.all_gather_with_grad(features)
    gathered = distributed.all_gather_no_grad(features)
    if local_loss:
        return gathered
    batch = features.shape[0]
    return torch.cat([gathered[: rank * batch], features, gathered[(rank + 1) * batch :]], dim=0)


class LogitScaled(nn.Module):
    """Base of the InfoNCE losses with a logit scale ``s`` kept in log space and clamped at ``max_logit_scale`` on use
    (``log_logit_scale``: a parameter when learnable, else a buffer)."""

    def _init_logit_scale(self, init_logit_scale: float, max_logit_scale: float, learnable: bool = True) -> None:
        if not 0 < init_logit_scale <= max_logit_scale:
            raise ValueError(f"init_logit_scale must be in (0, {max_logit_scale}], got {init_logit_scale}")
        log_scale = torch.tensor(math.log(init_logit_scale), dtype=torch.float32)
        if learnable:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.max_logit_scale = max_logit_scale

    @property
    def logit_scale(self) -> torch.Tensor:
        """The scale used in the logits (scalar tensor, clamped, differentiable)."""
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)


class ClipLoss(LogitScaled):
    """Symmetric InfoNCE between L2-normalised image and text embeddings with a learnable logit scale.

    ``loss = (CE(s * I T^T, y) + CE(s * T I^T, y)) / 2`` over the batch gathered from all ranks, ``y`` the
    diagonal. The scale ``s`` is kept in log space, initialised to ``init_logit_scale`` and clamped at
    ``max_logit_scale`` when used (CLIP clamps the parameter after each step; clamping on use gives the same
    forward value and zero gradient beyond the cap). Embeddings are L2-normalised here and the similarities are
    computed in (at least) float32 with autocast off (open_clip leaves them to autocast).

    Rows with ``valid=False`` (image-only samples of a mixed batch) are removed from both directions before the
    softmax: the result equals the loss computed on the valid subset alone.

    Distributed (see :func:`gather_features`): with the default ``gather_with_grad=True`` the loss and, after
    DDP's gradient averaging, the gradients equal those of one process on the concatenated batch. With
    ``local_loss=True`` each rank only uses its own rows as anchors against all gathered candidates (open_clip's
    memory-saving mode); its loss is scaled so that the mean over ranks is the global loss, which keeps the
    gradients exact even when ranks hold different numbers of valid rows. ``gather_with_grad=False`` reproduces
    open_clip's no-grad gather: each rank back-propagates only through its own rows.

    Args:
        init_logit_scale: initial value of the (linear) logit scale, CLIP's 1/0.07.
        learnable: optimise the scale; otherwise it is a buffer.
        gather_with_grad: differentiate through the cross-rank gather.
        local_loss: compute the loss for this rank's rows only.
        label_smoothing: passed to ``F.cross_entropy``.
        max_logit_scale: upper clamp of the scale.
        rank: this process's rank; ``None`` reads :func:`common.distributed.get_rank` at call time.
        world_size: number of processes; ``None`` reads :func:`common.distributed.get_world_size` at call time.

    Raises:
        ValueError: on a non-positive scale, a scale above the cap, or smoothing outside ``[0, 1)``.
    """

    def __init__(
        self,
        init_logit_scale: float = 1 / 0.07,
        learnable: bool = True,
        gather_with_grad: bool = True,
        local_loss: bool = False,
        label_smoothing: float = 0.0,
        max_logit_scale: float = 100.0,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self._init_logit_scale(init_logit_scale, max_logit_scale, learnable)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss
        self.label_smoothing = label_smoothing
        self.rank = rank
        self.world_size = world_size

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contrastive loss of this batch.

        Args:
            image_emb: ``(B, D)`` image embeddings (normalised here).
            text_emb: ``(B, D)`` text embeddings of the same samples.
            valid: ``(B,)`` bool, ``False`` for rows without a report. Pass it on every rank or on none.

        Returns:
            Scalar loss; 0 (still attached to the graph) when no row is valid.

        Raises:
            ValueError: on mismatched shapes.
        """
        if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
            raise ValueError(
                f"image_emb and text_emb must both be (B, D), got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
            )
        batch = image_emb.shape[0]
        if valid is not None:
            if valid.numel() != batch:
                raise ValueError(f"valid must have {batch} entries, got shape {tuple(valid.shape)}")
            valid = valid.reshape(batch).to(device=image_emb.device, dtype=torch.bool)
        rank = distributed.get_rank() if self.rank is None else self.rank
        world_size = distributed.get_world_size() if self.world_size is None else self.world_size
        if valid is None:
            all_valid = None
        elif world_size > 1:
            all_valid = distributed.all_gather_no_grad(valid.to(torch.uint8)).bool()
        else:
            all_valid = valid
        # logits up to 100 lose about 0.5 to bfloat16 rounding: keep them in float32 (cheap, B x B)
        with torch.autocast(device_type=image_emb.device.type, enabled=False):
            dtype = torch.promote_types(image_emb.dtype, torch.float32)
            image = F.normalize(image_emb.to(dtype), dim=-1)
            text = F.normalize(text_emb.to(dtype), dim=-1)
            scale = self.logit_scale.to(dtype)
            gather = {"gather_with_grad": self.gather_with_grad, "local_loss": self.local_loss}
            all_image = gather_features(image, rank=rank, world_size=world_size, **gather)
            all_text = gather_features(text, rank=rank, world_size=world_size, **gather)
            if self.local_loss and world_size > 1:
                return self._local_loss(image, text, all_image, all_text, valid, all_valid, scale, rank, world_size)
            return self._global_loss(all_image, all_text, all_valid, scale)

    def _global_loss(
        self, image: torch.Tensor, text: torch.Tensor, valid: torch.Tensor | None, scale: torch.Tensor
    ) -> torch.Tensor:
        if valid is not None:
            image, text = image[valid], text[valid]
        if image.shape[0] == 0:
            return self._zero(image, text, scale)
        logits_per_image = scale * image @ text.T
        labels = torch.arange(image.shape[0], device=image.device)
        return (
            F.cross_entropy(logits_per_image, labels, label_smoothing=self.label_smoothing)
            + F.cross_entropy(logits_per_image.T, labels, label_smoothing=self.label_smoothing)
        ) / 2

    def _local_loss(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        all_image: torch.Tensor,
        all_text: torch.Tensor,
        valid: torch.Tensor | None,
        all_valid: torch.Tensor | None,
        scale: torch.Tensor,
        rank: int,
        world_size: int,
    ) -> torch.Tensor:
        batch = image.shape[0]
        if all_valid is None:
            labels = torch.arange(batch, device=image.device) + rank * batch
            num_valid = batch * world_size
        else:
            # position of each of this rank's valid rows among all valid rows, rank-major
            positions = all_valid.long().cumsum(0) - 1
            labels = positions[rank * batch : (rank + 1) * batch][valid]
            image, text = image[valid], text[valid]
            all_image, all_text = all_image[all_valid], all_text[all_valid]
            num_valid = int(all_valid.sum())
        if image.shape[0] == 0:
            return self._zero(image, text, scale, all_image, all_text)
        summed = F.cross_entropy(
            scale * image @ all_text.T, labels, label_smoothing=self.label_smoothing, reduction="sum"
        ) + F.cross_entropy(scale * text @ all_image.T, labels, label_smoothing=self.label_smoothing, reduction="sum")
        # the mean of this quantity over ranks is the loss over all valid rows
        return summed * world_size / (2 * num_valid)

    @staticmethod
    def _zero(*tensors: torch.Tensor) -> torch.Tensor:
        """A zero that keeps every input in the graph (DDP expects gradients for all parameters)."""
        return sum(t.sum() * 0.0 for t in tensors)
