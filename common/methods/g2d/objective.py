"""G2D pre-training objective: symmetric InfoNCE + pseudo-segmentation of attention-derived masks.

Liu et al., "G2D: From Global to Dense Radiography Representation Learning via Vision-Language Pre-training",
NeurIPS 2024, https://arxiv.org/abs/2312.01522. Every step (paper Eqs. 1-5):

1. the U-Net encoder's feature pyramid; its last map, projected to 128-d, is attention-pooled into the global image
   embedding ``v`` (the pooler returns its query attention over the grid);
2. ``L_VLA``: symmetric InfoNCE between ``v`` and the report's [CLS] embedding ``l`` at temperature 0.07, negatives
   gathered across ranks (:class:`~common.losses.clip_loss.ClipLoss`, fixed scale);
3. the pseudo-mask ``M`` of each image from that attention, without gradient (:mod:`common.networks.attention_masks`:
   head mean, upsampling, body mask, 85th percentile, smoothing);
4. ``L_PA = 1/2 (Dice + BCE)`` between the U-Net decoder's logits and ``M`` (MONAI ``DiceCELoss``, sigmoid);
5. ``L = L_VLA + L_PA``, the pixel term switched on after ``warmup_iterations`` contrastive-only steps (the release's
   200), in which the decoder does not run (run at weight 0 it was 4.4 of a 5.6 CPU-s step of the CT demo).

Deviations from the release (and why) are listed in the bundles' ``docs/README.md``: the Dice term is computed on
sigmoid probabilities (the release's Dice on raw logits is a bug), the contrastive loss averages its two directions
(the release sums them), and negatives are gathered across ranks (the release uses the per-GPU batch).

Image-only records (``has_report`` False; their share of each batch is the ``image_only_share`` knob of
:class:`~common.data.mixing.ImageOnlyShareSampler`, 0 in the paper configs) feed the pseudo-segmentation term only:
its masks come from the image's own attention pooling. The contrastive term uses the paired rows only.

The paper's two controls are switches: ``segmentation_weight=0`` (contrastive only) and a pseudo-mask module built with
``shuffle=True`` (Table 8: each image learns another image's mask).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from common.data.batch import paired_rows, report_mask, scatter_rows, trim_padding
from common.losses.clip_loss import ClipLoss
from common.networks.two_tower import TwoTowerModel

__all__ = ["G2DPretraining"]


class G2DPretraining(nn.Module):
    """Composes G2D's two objectives around a U-Net encoder (image tower) and its decoder.

    Args:
        model: image tower (backbone with ``features(x)`` returning the encoder's pyramid, e.g.
            :class:`~common.networks.unet.UNetEncoder`; a pooler that returns its attention) and text tower.
        decoder: ``pyramid -> (B, 1, *spatial)`` logits at input resolution (the U-Net decoder).
        pseudo_mask: ``(attention (B, heads, *grid), spatial_size, body_mask) -> (B, 1, *spatial)`` binary masks,
            parameter-free (:class:`~common.networks.attention_masks.AttentionPseudoMask`; ``shuffle=True`` for the
            Table 8 control).
        contrastive_weight, segmentation_weight: term weights; 0 switches a term off (not built, not logged).
        warmup_iterations: optimizer steps with the contrastive term only: the decoder does not run, the pixel term is
            logged as 0.
        temperature: InfoNCE temperature (0.07, fixed as in the paper); ``learnable_temperature`` learns it instead.
        dice_weight, bce_weight: the two halves of ``L_PA``.
        body_key: batch key of the optional body masks ``(B, 1, *spatial)``.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        decoder: nn.Module | None,
        pseudo_mask: Callable[..., torch.Tensor] | None,
        contrastive_weight: float = 1.0,
        segmentation_weight: float = 1.0,
        warmup_iterations: int = 200,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        dice_weight: float = 0.5,
        bce_weight: float = 0.5,
        body_key: str = "body",
    ) -> None:
        super().__init__()
        if contrastive_weight > 0 and model.text_encoder is None:
            raise ValueError("the contrastive term needs a text encoder")
        if segmentation_weight > 0 and (decoder is None or pseudo_mask is None):
            raise ValueError("segmentation_weight > 0 needs a decoder and a pseudo_mask")
        if warmup_iterations < 0 or temperature <= 0:
            raise ValueError(f"need warmup_iterations >= 0 and temperature > 0, got {warmup_iterations}, {temperature}")
        self.model = model
        self.decoder = decoder if segmentation_weight > 0 else None
        self.pseudo_mask = pseudo_mask
        self.weights = {"contrastive": float(contrastive_weight), "segmentation": float(segmentation_weight)}
        self.warmup_iterations = int(warmup_iterations)
        self.body_key = body_key
        self.clip_loss = (
            ClipLoss(init_logit_scale=1.0 / temperature, learnable=learnable_temperature)
            if contrastive_weight > 0
            else None
        )
        self.segmentation_loss = (
            DiceCELoss(sigmoid=True, batch=True, lambda_dice=dice_weight, lambda_ce=bce_weight)
            if segmentation_weight > 0
            else None
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)

    def before_iteration(self, step: int, max_steps: int | None = None) -> None:
        """Called by the trainer before optimizer step ``step`` (0-based): drives the contrastive-only warm-up."""
        self.step.fill_(int(step))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        tower = self.model.image_encoder
        pyramid = tower.backbone.features(image)
        patch_map = tower.project(pyramid[-1])
        if self.segmentation_loss is not None and self.pixel_term_on():  # the pseudo-masks need the pooling attention
            image_emb, attention = tower.pool(patch_map, return_attention=True)
        else:
            image_emb, attention = tower.pool(patch_map), None
        terms: dict[str, torch.Tensor] = {}
        if self.clip_loss is not None:
            terms["contrastive"] = self.weights["contrastive"] * self._contrastive_term(batch, image_emb)
        if self.segmentation_loss is not None:  # logged as 0 during the warm-up, where the decoder does not run
            terms["segmentation"] = (
                self.weights["segmentation"] * self._segmentation_term(batch, image, pyramid, attention)
                if self.pixel_term_on()
                else image_emb.new_zeros(())
            )
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms

    def pixel_term_on(self) -> bool:
        """Whether this step trains the decoder: after ``warmup_iterations`` contrastive-only steps. The warm-up skips
        the decoder (its masks would come from untrained attention), so DDP needs ``find_unused_parameters``."""
        return int(self.step) >= self.warmup_iterations

    def _contrastive_term(self, batch: Mapping[str, torch.Tensor], image_emb: torch.Tensor) -> torch.Tensor:
        has_report = report_mask(batch, image_emb)
        # text runs on the paired rows only; with none, one row still runs (masked out) so every parameter takes part
        rows = paired_rows(has_report)
        input_ids, attention_mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
        text = self.model.encode_text(input_ids, attention_mask)
        text_emb = scatter_rows(text.to(image_emb), rows, image_emb.shape[0])
        return self.clip_loss(image_emb, text_emb, valid=has_report)

    def masks(self, image: torch.Tensor, attention: torch.Tensor, body: torch.Tensor | None = None) -> torch.Tensor:
        """Pseudo-masks ``(B, 1, *spatial)`` of ``image`` from its pooling attention, without gradient."""
        with torch.no_grad():
            return self.pseudo_mask(attention.detach().float(), image.shape[2:], body)

    def _segmentation_term(
        self,
        batch: Mapping[str, torch.Tensor],
        image: torch.Tensor,
        pyramid: list[torch.Tensor],
        attention: torch.Tensor,
    ) -> torch.Tensor:
        body = batch.get(self.body_key)
        masks = self.masks(image, attention, None if body is None else body.to(image.device))
        logits = self.decoder(pyramid)
        return self.segmentation_loss(logits.float(), masks.to(torch.float32))

    @torch.no_grad()
    def visualize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images for TensorBoard (:class:`~common.engines.images.TrainingImageLogger`): ``pseudo_mask``, the input,
        its attention pseudo-mask (the pixel term's target) and the decoder's prediction, ``(B, 3, *spatial)``."""
        if self.segmentation_loss is None:
            return {}
        image = batch["image"]
        tower = self.model.image_encoder
        pyramid = tower.backbone.features(image)
        _, attention = tower.pool(tower.project(pyramid[-1]), return_attention=True)
        body = batch.get(self.body_key)
        masks = self.masks(image, attention, None if body is None else body.to(image.device))
        prediction = torch.sigmoid(self.decoder(pyramid).float())
        return {"pseudo_mask": torch.cat([image.float(), masks.float(), prediction], dim=1)}

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging besides the loss terms (the contrastive scale, if learned)."""
        if self.clip_loss is None:
            return {}
        return {"logit_scale": float(self.clip_loss.logit_scale.detach())}
