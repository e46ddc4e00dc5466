"""Training objectives, one per file; each ``forward`` returns a scalar and the composer applies the weights."""

from __future__ import annotations

from common.losses.caption_loss import CaptionLoss
from common.losses.clip_loss import ClipLoss
from common.losses.dino_clstoken_loss import DINOClsTokenLoss
from common.losses.ibot_patch_loss import IBOTPatchLoss
from common.losses.koleo_loss import KoLeoLoss
from common.losses.masked_patch_mse_loss import MaskedPatchMSELoss
from common.losses.opposite_sentence_loss import OppositeSentenceLoss

__all__ = [
    "CaptionLoss",
    "ClipLoss",
    "DINOClsTokenLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MaskedPatchMSELoss",
    "OppositeSentenceLoss",
]
