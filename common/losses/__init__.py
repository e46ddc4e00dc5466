"""Training objectives, one per file; each ``forward`` returns a scalar and the composer applies the weights.

Import a loss from its own module (``from common.losses.clip_loss import ClipLoss``): this package re-exports
nothing, so that importing one loss (or exporting one method's bundle) does not load every other method's.

* :mod:`~common.losses.clip_loss`: symmetric InfoNCE with a learnable temperature, gathered across ranks.
* :mod:`~common.losses.caption_loss`: report generation (token cross-entropy).
* :mod:`~common.losses.masked_patch_mse_loss`: MAE reconstruction of masked patches.
* :mod:`~common.losses.opposite_sentence_loss`: opposite-sentence contrast.
* :mod:`~common.losses.dino_clstoken_loss`, :mod:`~common.losses.ibot_patch_loss`, :mod:`~common.losses.koleo_loss`:
  the DINOv2 terms.
"""

from __future__ import annotations
