"""Local token-patch alignment: FILIP's late-interaction contrastive loss.

Yao et al., "FILIP: Fine-grained Interactive Language-Image Pre-Training", ICLR 2022,
https://arxiv.org/abs/2111.07783, Eqs. 4-5: the similarity of image ``i`` and text ``j`` is, image to text, the mean
over ``i``'s patches of each patch's best cosine with ``j``'s tokens, and text to image the mean over ``j``'s tokens of
each token's best cosine with ``i``'s patches; each direction is an InfoNCE over the batch with a learnable scale.
Padding tokens and hidden patches are left out of both the max and the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.losses.clip_loss import LogitScaled

__all__ = ["TokenPatchAlignmentLoss", "late_interaction_similarities"]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def late_interaction_similarities(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    image_mask: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP similarities ``(B_img, B_txt)``, image-to-text and text-to-image, from L2-normalised tokens.

    Args:
        image_tokens: ``(B_img, N, D)``.
        text_tokens: ``(B_txt, L, D)``.
        image_mask: ``(B_img, N)`` bool, True for patches that take part.
        text_mask: ``(B_txt, L)`` bool, True for real tokens.
    """
    image = F.normalize(image_tokens, dim=-1)
    text = F.normalize(text_tokens, dim=-1)
    if image_mask is None:
        image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
    if text_mask is None:
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    image_mask, text_mask = image_mask.to(torch.bool), text_mask.to(torch.bool)
    cosine = torch.einsum("ind,jld->ijnl", image, text)  # (B_img, B_txt, N, L)
    low = torch.finfo(cosine.dtype).min
    best_token = cosine.masked_fill(~text_mask[None, :, None, :], low).amax(dim=3)  # (B_img, B_txt, N)
    best_patch = cosine.masked_fill(~image_mask[:, None, :, None], low).amax(dim=2)  # (B_img, B_txt, L)
    image_to_text = _masked_mean(best_token, image_mask[:, None, :], dim=2)
    text_to_image = _masked_mean(best_patch, text_mask[None, :, :], dim=2)
    return image_to_text, text_to_image


class TokenPatchAlignmentLoss(LogitScaled):
    """Symmetric InfoNCE on FILIP's late-interaction similarities, learnable logit scale.

    ``loss = (CE(s * S_i2t, y) + CE(s * S_t2i^T, y)) / 2``, ``y`` the diagonal, over the rows with ``valid``.
    Negatives come from this rank's batch (FILIP gathers token features across ranks; we do not, see the MPMA
    bundles' docs/README.md).

    Args:
        init_logit_scale: initial (linear) scale, 1/0.07 as CLIP.
        max_logit_scale: clamp on use.
    """

    def __init__(self, init_logit_scale: float = 1 / 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        self._init_logit_scale(init_logit_scale, max_logit_scale)

    def forward(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss over the batch; ``valid`` ``(B,)`` bool drops rows (image-only records) before the softmax."""
        if image_tokens.ndim != 3 or text_tokens.ndim != 3 or image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(
                f"expected (B, N, D) and (B, L, D) tokens, got {tuple(image_tokens.shape)}, {tuple(text_tokens.shape)}"
            )
        if valid is not None:
            valid = valid.reshape(-1).to(device=image_tokens.device, dtype=torch.bool)
            image_tokens, text_tokens = image_tokens[valid], text_tokens[valid]
            image_mask = None if image_mask is None else image_mask[valid]
            text_mask = None if text_mask is None else text_mask[valid]
        scale = self.logit_scale
        if image_tokens.shape[0] == 0:
            return image_tokens.sum() * 0.0 + text_tokens.sum() * 0.0 + scale * 0.0
        with torch.autocast(device_type=image_tokens.device.type, enabled=False):
            i2t, t2i = late_interaction_similarities(image_tokens.float(), text_tokens.float(), image_mask, text_mask)
            labels = torch.arange(i2t.shape[0], device=i2t.device)
            return (F.cross_entropy(scale * i2t, labels) + F.cross_entropy(scale * t2i.T, labels)) / 2
