"""COLIPRI pre-training objective: contrastive + report generation + masked autoencoding (+ opposite sentences).

Wald et al., "Comprehensive Language-Image Pre-training for 3D medical image understanding",
https://arxiv.org/abs/2510.15042. The released checkpoint ("COLIPRI-CRM") combines a contrastive (C), a report
generation (R) and a masked image modelling (M) objective and was trained on image-only and paired CT together.
The exact loss forms and weights are not public; the choices made here are listed in the bundles' docs/README.md.

A batch may mix image-only and paired records (``has_report``): every sample contributes to the masked
autoencoder, paired samples also to the contrastive, report and opposite-sentence terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from common.data.batch import paired_rows, trim_padding
from common.losses.caption_loss import CaptionLoss
from common.losses.clip_loss import ClipLoss
from common.losses.masked_patch_mse_loss import MaskedPatchMSELoss
from common.losses.opposite_sentence_loss import OppositeSentenceLoss
from common.networks.decoders import MAEDecoder, ReportDecoder
from common.networks.eva import patchify, random_keep_indices, unpatchify
from common.networks.two_tower import TwoTowerModel

__all__ = ["ColipriPretraining"]


class ColipriPretraining(nn.Module):
    """Composes the COLIPRI objectives around a :class:`~common.networks.two_tower.TwoTowerModel`.

    Args:
        model: image and text towers (the part that is exported).
        mae_decoder: pixel decoder for the vision-only objective; ``None`` with ``mae_weight=0``.
        report_decoder: causal text decoder cross-attending to image tokens; ``None`` with ``report_weight=0``.
        contrastive_weight, report_weight, mae_weight, osl_weight: term weights; 0 switches a term off.
        mask_ratio: fraction of patches hidden from the encoder in the masked autoencoder.
        init_logit_scale: initial contrastive logit scale (CLIP: 1/0.07), learnable, clamped at 100.
        pad_token_id: tokenizer pad id, ignored by the report loss.
        norm_pix_loss: MAE target normalised per patch (off in nnssl's recipe).
    """

    def __init__(
        self,
        model: TwoTowerModel,
        mae_decoder: MAEDecoder | None = None,
        report_decoder: ReportDecoder | None = None,
        contrastive_weight: float = 1.0,
        report_weight: float = 1.0,
        mae_weight: float = 1.0,
        osl_weight: float = 0.0,
        mask_ratio: float = 0.75,
        init_logit_scale: float = 1 / 0.07,
        pad_token_id: int = 0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if mae_weight > 0 and mae_decoder is None:
            raise ValueError("mae_weight > 0 needs a mae_decoder")
        if report_weight > 0 and report_decoder is None:
            raise ValueError("report_weight > 0 needs a report_decoder")
        if (contrastive_weight > 0 or report_weight > 0 or osl_weight > 0) and model.text_encoder is None:
            raise ValueError("paired objectives need a text encoder")
        self.model = model
        self.mae_decoder = mae_decoder if mae_weight > 0 else None
        self.report_decoder = report_decoder if report_weight > 0 else None
        self.weights = {
            "contrastive": contrastive_weight,
            "report": report_weight,
            "mae": mae_weight,
            "osl": osl_weight,
        }
        self.mask_ratio = mask_ratio
        self.clip_loss = (
            ClipLoss(init_logit_scale=init_logit_scale) if contrastive_weight > 0 or osl_weight > 0 else None
        )
        self.caption_loss = CaptionLoss(pad_token_id=pad_token_id) if report_weight > 0 else None
        self.mae_loss = MaskedPatchMSELoss(norm_pix_loss=norm_pix_loss) if mae_weight > 0 else None
        self.osl_loss = OppositeSentenceLoss() if osl_weight > 0 else None

    @property
    def needs_full_image_pass(self) -> bool:
        return any(self.weights[k] > 0 for k in ("contrastive", "report", "osl"))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        terms: dict[str, torch.Tensor] = {}
        if self.needs_full_image_pass:
            has_report = batch["has_report"].to(device=image.device, dtype=torch.bool).reshape(-1)
            terms.update(self._paired_terms(batch, image, has_report))
        if self.mae_loss is not None:
            terms["mae"] = self.weights["mae"] * self._mae_term(image)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms

    def _paired_terms(
        self, batch: Mapping[str, torch.Tensor], image: torch.Tensor, has_report: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        encoder = self.model.image_encoder
        patch_tokens = encoder.patch_embeddings(image)  # (B, D, *grid), projected
        image_emb = encoder.pool(patch_tokens)  # (B, D), L2-normalised
        terms: dict[str, torch.Tensor] = {}
        # text-side work runs on the paired rows only (image-only rows carry an empty report); with no paired row
        # one row still runs, masked out of every loss, so that all parameters take part (DDP/FSDP)
        rows = paired_rows(has_report)
        input_ids, attention_mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
        if self.weights["contrastive"] > 0:
            text_emb = image_emb.new_zeros(image_emb.shape[0], self.model.text_encoder.projection_dim)
            text_emb = text_emb.index_copy(0, rows, self.model.encode_text(input_ids, attention_mask).to(text_emb))
            terms["contrastive"] = self.weights["contrastive"] * self.clip_loss(image_emb, text_emb, valid=has_report)
        if self.report_decoder is not None:
            positions, targets = self.caption_loss.targets(input_ids, attention_mask, valid=has_report[rows])
            logits = self.report_decoder(patch_tokens[rows], input_ids, attention_mask, positions=positions)
            terms["report"] = self.weights["report"] * self.caption_loss.selected(logits, targets)
        if self.osl_loss is not None:
            terms["osl"] = self.weights["osl"] * self._osl_term(batch, image_emb, has_report)
        return terms

    def _osl_term(
        self, batch: Mapping[str, torch.Tensor], image_emb: torch.Tensor, has_report: torch.Tensor
    ) -> torch.Tensor:
        ids_true, mask_true = trim_padding(batch["osl_true_input_ids"], batch["osl_true_attention_mask"])  # (B, F, L)
        ids_false, mask_false = trim_padding(batch["osl_false_input_ids"], batch["osl_false_attention_mask"])
        b, f, length = ids_true.shape
        true_emb = self.model.encode_text(ids_true.reshape(b * f, length), mask_true.reshape(b * f, length))
        false_emb = self.model.encode_text(ids_false.reshape(b * f, length), mask_false.reshape(b * f, length))
        valid = has_report[:, None].expand(b, f)
        return self.osl_loss(
            image_emb, true_emb.reshape(b, f, -1), false_emb.reshape(b, f, -1), self.clip_loss.logit_scale, valid=valid
        )

    def _mae_prediction(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Random masking, encoder and pixel decoder: ``pred``, ``target`` ``(B, N, P)``, ``masked`` ``(B, N)``, grid."""
        backbone = self.model.image_encoder.backbone
        grid = tuple(backbone.grid_size(image.shape[2:]))
        num_tokens = int(torch.tensor(grid).prod())
        keep = random_keep_indices(image.shape[0], num_tokens, self.mask_ratio, image.device)
        encoded = backbone.forward_tokens(image, keep_indices=keep)["tokens"]  # (B, N_keep, C)
        pred = self.mae_decoder(encoded, keep, grid)  # (B, N, P)
        target = patchify(image, backbone.patch_size, backbone.spatial_dims)  # (B, N, P)
        masked = torch.ones(pred.shape[:2], dtype=torch.bool, device=image.device)
        masked.scatter_(1, keep, False)
        return pred, target, masked, grid

    def _mae_term(self, image: torch.Tensor) -> torch.Tensor:
        pred, target, masked, _ = self._mae_prediction(image)
        return self.mae_loss(pred, target, masked)

    @torch.no_grad()
    def visualize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images for TensorBoard (:class:`~common.engines.images.TrainingImageLogger`), ``(B', C, *spatial)``:

        * ``mae``: the input, what the encoder saw (masked patches zeroed) and the reconstruction (visible patches
          from the input, masked ones predicted; per-patch normalised predictions mapped back to the input's
          patch statistics as MAE's figures do);
        * ``similarity_map``: the paired rows' images and the cosine similarity of each token's joint-space
          embedding (:meth:`~common.networks.two_tower.ImageTower.dense_embeddings`) with the row's report.
        """
        image = batch["image"]
        out: dict[str, torch.Tensor] = {}
        backbone = self.model.image_encoder.backbone
        if self.mae_decoder is not None:
            pred, target, masked, grid = self._mae_prediction(image)
            pred = pred.float()
            if self.mae_loss.norm_pix_loss:
                pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
            hidden = masked[..., None]
            seen = unpatchify(target.masked_fill(hidden, 0.0), backbone.patch_size, grid)
            recon = unpatchify(torch.where(hidden, pred, target), backbone.patch_size, grid)
            out["mae"] = torch.cat([image.float(), seen, recon], dim=1)
        has_report = batch.get("has_report")
        if self.clip_loss is not None and has_report is not None and bool(has_report.any()):
            rows = has_report.to(torch.bool).reshape(-1).nonzero().flatten()
            tower = self.model.image_encoder
            dense = tower.dense_embeddings(tower.patch_embeddings(image[rows]))  # (B', D, *grid), unit norm
            input_ids, attention_mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
            text = self.model.encode_text(input_ids, attention_mask).to(dense)  # (B', D), unit norm
            similarity = torch.einsum("bd...,bd->b...", dense, text)[:, None]
            size = tuple(image.shape[2:])
            similarity = nn.functional.interpolate(similarity.float(), size=size, mode="nearest")
            out["similarity_map"] = torch.cat([image[rows].float(), similarity], dim=1)
        return out

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging besides the loss terms (the contrastive temperature)."""
        if self.clip_loss is None:
            return {}
        return {"logit_scale": float(self.clip_loss.logit_scale.detach())}
