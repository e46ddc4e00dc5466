"""MPMA pre-training objective: paired masking, joint image-text reconstruction, alignment, memory-augmented fusion.

Zhang et al., "Multi-task Paired Masking with Alignment Modeling for Medical Vision-Language Pre-training", IEEE TMM
2023, https://arxiv.org/abs/2305.07920. Only the abstract is public; this is our reading of it on its verified
ancestor M3AE (Chen et al., MICCAI 2022). Every choice the abstract leaves open is a row in the MPMA bundles'
``docs/README.md``. On every step, for each image-report pair:

* **paired masking**: ``image_mask_ratio`` of the image patches are dropped before the image encoder (MAE) and the
  report arrives whole-word masked (``mlm_input_ids`` / ``mlm_labels``, :class:`common.transforms.mlm.RandWholeWordMaskd`);
* **joint reconstruction** from the fused representation (:class:`~common.networks.co_attention.CoAttentionFusion`):
  normalised-pixel MSE of the hidden patches by an MAE decoder on the fused image tokens
  (:class:`~common.losses.masked_patch_mse_loss.MaskedPatchMSELoss`), and cross-entropy of the masked tokens by an
  MLM head on the fused text tokens (:class:`~common.losses.masked_token_loss.MaskedTokenLoss`);
* **GLA** on the same forward pass, before fusion: global InfoNCE between the pooled image and text embeddings
  (:class:`~common.losses.clip_loss.ClipLoss`, learnable scale, negatives gathered across ranks) and FILIP's local
  token-patch alignment (:class:`~common.losses.token_patch_alignment_loss.TokenPatchAlignmentLoss`);
* **MA-CMF**: the fusion's text stream cross-attends to the image tokens extended by learnable memory slots.

Image-only records (``has_report`` False) contribute the image reconstruction only. A weight of 0 switches a term
off and its modules are not built (both reconstruction weights 0: no fusion stack).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from common.data.batch import trim_padding
from common.losses.clip_loss import ClipLoss
from common.losses.masked_patch_mse_loss import MaskedPatchMSELoss
from common.losses.masked_token_loss import IGNORE_INDEX, MaskedTokenLoss, masked_token_accuracy
from common.losses.token_patch_alignment_loss import TokenPatchAlignmentLoss
from common.networks.co_attention import CoAttentionFusion, FusedTokens
from common.networks.decoders import MAEDecoder
from common.networks.eva import patchify, random_keep_indices
from common.networks.two_tower import TwoTowerModel

__all__ = ["TERMS", "MPMAPretraining"]

#: loss terms, in the order they are reported
TERMS = ("global_alignment", "local_alignment", "image_reconstruction", "text_reconstruction")


def _as_map(tokens: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``(B, N, C)`` tokens as a ``(B, C, N, 1[, 1])`` map, for pointwise projections and the token pooler."""
    return tokens.transpose(1, 2).reshape(*tokens.shape[::2], tokens.shape[1], *([1] * (spatial_dims - 1)))


class MPMAPretraining(nn.Module):
    """Composes MPMA's terms around an exported :class:`~common.networks.two_tower.TwoTowerModel`.

    Args:
        model: image tower (an EVA/ViT backbone with ``forward_tokens(keep_indices=...)``, token projection and
            attention pooler) and text tower (BERT-family, projection to the joint width).
        fusion: the co-attention stack (with the MA-CMF memory); ``None`` when both reconstruction weights are 0.
        mae_decoder: pixel decoder over the fused image tokens; ``None`` with ``image_reconstruction_weight=0``.
        mlm_head: ``(B, L, H) -> (B, L, V)`` over the fused text tokens; ``None`` with ``text_reconstruction_weight=0``.
        global_alignment_weight, local_alignment_weight, image_reconstruction_weight, text_reconstruction_weight:
            term weights; 0 switches a term off.
        image_mask_ratio: fraction of patches hidden (M3AE: 0.75).
        norm_pix_loss: per-patch normalised pixel target (M3AE: on).
        init_logit_scale: initial scale of both alignment terms (1/0.07).
        align_masked_images: compute GLA on the visible patches of the reconstruction pass (True, one image pass);
            False runs the image encoder again on the whole image for the alignment terms.
        align_masked_reports: compute GLA on the whole-word-masked report of the reconstruction pass (True, one text
            pass); False runs the text encoder again on the unmasked report for the alignment terms.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        fusion: CoAttentionFusion | None = None,
        mae_decoder: MAEDecoder | None = None,
        mlm_head: nn.Module | None = None,
        global_alignment_weight: float = 1.0,
        local_alignment_weight: float = 1.0,
        image_reconstruction_weight: float = 1.0,
        text_reconstruction_weight: float = 1.0,
        image_mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        init_logit_scale: float = 1 / 0.07,
        align_masked_images: bool = True,
        align_masked_reports: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in [0, 1), got {image_mask_ratio}")
        weights = dict(
            zip(
                TERMS,
                (
                    global_alignment_weight,
                    local_alignment_weight,
                    image_reconstruction_weight,
                    text_reconstruction_weight,
                ),
            )
        )
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("every MPMA loss weight is 0: nothing to train")
        if model.text_encoder is None:
            raise ValueError("MPMA needs a text tower")
        reconstructs = "image_reconstruction" in self.weights or "text_reconstruction" in self.weights
        for needed, module, term in (
            (reconstructs, fusion, "reconstruction needs a fusion stack"),
            (
                "image_reconstruction" in self.weights,
                mae_decoder,
                "image_reconstruction_weight > 0 needs a mae_decoder",
            ),
            ("text_reconstruction" in self.weights, mlm_head, "text_reconstruction_weight > 0 needs an mlm_head"),
        ):
            if needed and module is None:
                raise ValueError(term)
        self.model = model
        self.fusion = fusion if reconstructs else None
        self.mae_decoder = mae_decoder if "image_reconstruction" in self.weights else None
        self.mlm_head = mlm_head if "text_reconstruction" in self.weights else None
        self.image_mask_ratio = float(image_mask_ratio)
        self.align_masked_images = bool(align_masked_images)
        self.align_masked_reports = bool(align_masked_reports)
        self.clip_loss = ClipLoss(init_logit_scale=init_logit_scale) if "global_alignment" in self.weights else None
        self.local_loss = (
            TokenPatchAlignmentLoss(init_logit_scale=init_logit_scale) if "local_alignment" in self.weights else None
        )
        self.mae_loss = MaskedPatchMSELoss(norm_pix_loss=norm_pix_loss) if self.mae_decoder is not None else None
        self.mlm_loss = MaskedTokenLoss() if self.mlm_head is not None else None
        self._accuracy = (0, 0)

    @property
    def aligns(self) -> bool:
        return self.clip_loss is not None or self.local_loss is not None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        has_report = batch["has_report"].to(device=image.device, dtype=torch.bool).reshape(-1)
        backbone = self.model.image_encoder.backbone
        grid = backbone.grid_size(image.shape[2:])
        keep = random_keep_indices(image.shape[0], math.prod(grid), self.image_mask_ratio, image.device)
        visible = backbone.forward_tokens(image, keep_indices=keep)["tokens"]  # (B, N_keep, C)
        text_key = "mlm_input_ids" if self.mlm_head is not None else "input_ids"
        input_ids, attention_mask = trim_padding(batch[text_key], batch["attention_mask"])
        text_states = self.model.text_encoder.token_embeddings(input_ids, attention_mask)  # (B, L, W)
        terms: dict[str, torch.Tensor] = {}
        if self.aligns:
            align_image = visible if self.align_masked_images else backbone.forward_tokens(image)["tokens"]
            align_text, align_mask = text_states, attention_mask
            if not self.align_masked_reports and text_key != "input_ids":
                full_ids, align_mask = trim_padding(batch["input_ids"], batch["attention_mask"])
                align_text = self.model.text_encoder.token_embeddings(full_ids, align_mask)
            terms.update(self._alignment(align_image, align_text, align_mask, has_report))
        if self.fusion is not None:
            fused = self.fusion(visible, text_states, text_mask=attention_mask.to(torch.bool))
            if self.mae_decoder is not None:
                terms["image_reconstruction"] = self._image_reconstruction(image, fused.image, keep, grid)
            if self.mlm_head is not None:
                terms["text_reconstruction"] = self._text_reconstruction(batch, fused.text, has_report)
        out = {name: self.weights[name] * value for name, value in terms.items()}
        out["loss"] = torch.stack(list(out.values())).sum()
        return out

    def _alignment(
        self,
        image_tokens: torch.Tensor,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor,
        has_report: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """GLA: global InfoNCE of the pooled embeddings, FILIP alignment of the projected tokens."""
        image_tower, text_tower = self.model.image_encoder, self.model.text_encoder
        patch_map = image_tower.project(_as_map(image_tokens, image_tower.spatial_dims))  # (B, D, N, 1[, 1])
        terms: dict[str, torch.Tensor] = {}
        if self.clip_loss is not None:
            image_emb = image_tower.pool(patch_map)
            text_emb = text_tower.pooler(text_states, attention_mask)
            if text_tower.projector is not None:
                text_emb = text_tower.projector(text_emb)
            terms["global_alignment"] = self.clip_loss(image_emb, text_emb, valid=has_report)
        if self.local_loss is not None:
            text_tokens = text_states if text_tower.projector is None else text_tower.projector(text_states)
            terms["local_alignment"] = self.local_loss(
                patch_map.flatten(2).transpose(1, 2), text_tokens, text_mask=attention_mask, valid=has_report
            )
        return terms

    def _image_reconstruction(
        self, image: torch.Tensor, fused_image: torch.Tensor, keep: torch.Tensor, grid: tuple[int, ...]
    ) -> torch.Tensor:
        backbone = self.model.image_encoder.backbone
        pred = self.mae_decoder(fused_image, keep, grid)  # (B, N, P)
        target = patchify(image, backbone.patch_size, backbone.spatial_dims)
        hidden = torch.ones(pred.shape[:2], dtype=torch.bool, device=image.device).scatter(1, keep, False)
        return self.mae_loss(pred.float(), target.float(), hidden)

    def _text_reconstruction(
        self, batch: Mapping[str, torch.Tensor], fused_text: torch.Tensor, has_report: torch.Tensor
    ) -> torch.Tensor:
        """MLM cross-entropy; the vocabulary head runs on the masked positions only (the rest carry no loss)."""
        labels = batch["mlm_labels"][:, : fused_text.shape[1]].to(fused_text.device)
        labels = labels.masked_fill(~has_report[:, None], IGNORE_INDEX)
        selected = labels != IGNORE_INDEX
        if not bool(selected.any()):  # keep the head in the graph (DDP) with a zero loss
            return self.mlm_head(fused_text[:, :1]).sum() * 0.0
        logits = self.mlm_head(fused_text[selected])  # (N_masked, V)
        self._accuracy = masked_token_accuracy(logits, labels[selected])
        return self.mlm_loss(logits, labels[selected])

    def fuse(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FusedTokens:
        """Fused tokens of whole images (no patch dropped) and the given (masked or unmasked) reports."""
        if self.fusion is None:
            raise RuntimeError("this MPMA objective has no fusion stack (both reconstruction weights are 0)")
        image_tokens = self.model.image_encoder.backbone.forward_tokens(image)["tokens"]
        text_states = self.model.text_encoder.token_embeddings(input_ids, attention_mask)
        return self.fusion(image_tokens, text_states, text_mask=attention_mask.to(torch.bool))

    @torch.no_grad()
    def fused_embedding(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The multi-modal representation ``(B, 2 H)`` of whole images and unmasked reports.

        The mean of the fused image tokens next to the fused first ([CLS]) text token (M3AE concatenates the two
        modality poolers' outputs).
        """
        fused = self.fuse(image, *trim_padding(input_ids, attention_mask))
        return torch.cat([fused.image.mean(dim=1), fused.text[:, 0]], dim=-1)

    def log_values(self) -> dict[str, float]:
        """Learned scales and the masked-token accuracy of the last step (with the text reconstruction on)."""
        values = {}
        if self.clip_loss is not None:
            values["logit_scale"] = float(self.clip_loss.logit_scale.detach())
        if self.local_loss is not None:
            values["local_logit_scale"] = float(self.local_loss.logit_scale.detach())
        if self.mlm_head is not None:
            correct, total = self._accuracy
            values["masked_token_accuracy"] = correct / max(total, 1)
        return values
