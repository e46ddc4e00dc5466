"""Zero-shot classification from a (negative, positive) prompt pair per finding, scored by AUROC.

This is the CT-CLIP / COLIPRI protocol: for each finding the image embedding is compared with the embedding of
"{finding} is present." and of its negation, and the probability of presence is the softmax over the two
temperature-scaled cosine similarities. With several prompt pairs per finding the pair probabilities are
averaged (Merlin's maintainers recommend ensembling prompts; averaging text embeddings instead, as CLIP does,
is the alternative, obtained by passing the mean embedding as a single pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.evaluation._arrays import as_tensor
from common.evaluation.metrics import multilabel_auroc

__all__ = ["zero_shot_auroc", "zero_shot_scores"]


def _prompt_tensor(value: Any, name: str, device: torch.device) -> torch.Tensor:
    tensor = as_tensor(value, name, device=device)
    if tensor.ndim == 2:  # (K, D): one prompt pair per finding
        tensor = tensor[:, None]
    if tensor.ndim != 3:
        raise ValueError(f"{name} must be (K, P, D) or (K, D), got shape {tuple(tensor.shape)}")
    return tensor


def zero_shot_scores(
    image_emb: Any, pos_prompt_emb: Any, neg_prompt_emb: Any, temperature: float, normalize: bool = True
) -> np.ndarray:
    """Probability that each finding is present, from paired positive/negative prompt embeddings.

    ``p[n, k] = mean_p softmax([s(n, neg[k, p]), s(n, pos[k, p])] / temperature)[1]`` where ``s`` is the cosine
    similarity (dot product if ``normalize`` is False). Computed as ``sigmoid((s_pos - s_neg) / T)``, which is the
    same value without overflow. Runs on the device of ``image_emb``.

    Args:
        image_emb: ``(N, D)`` image embeddings (projected into the joint space).
        pos_prompt_emb: ``(K, P, D)`` embeddings of P "present" prompts per finding, or ``(K, D)``.
        neg_prompt_emb: ``(K, P, D)`` embeddings of the paired "absent" prompts, or ``(K, D)``.
        temperature: softmax temperature (the model's, e.g. COLIPRI's ``softmax_temperature``; CLIP's is 0.01).
        normalize: L2-normalise embeddings first (cosine similarity).

    Returns:
        ``(N, K)`` float64 probabilities in [0, 1].

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = image_emb.device if isinstance(image_emb, torch.Tensor) else torch.device("cpu")
    image = as_tensor(image_emb, "image_emb", ndim=2, device=device)
    pos = _prompt_tensor(pos_prompt_emb, "pos_prompt_emb", device)
    neg = _prompt_tensor(neg_prompt_emb, "neg_prompt_emb", device)
    if pos.shape != neg.shape:
        raise ValueError(f"pos_prompt_emb {tuple(pos.shape)} and neg_prompt_emb {tuple(neg.shape)} must match")
    if pos.shape[-1] != image.shape[-1]:
        raise ValueError(f"prompt dim {pos.shape[-1]} != image embedding dim {image.shape[-1]}")
    if normalize:
        image, pos, neg = F.normalize(image, dim=-1), F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)
    with torch.no_grad():
        margin = torch.einsum("nd,kpd->nkp", image, pos - neg) / temperature
        probs = torch.sigmoid(margin.double()).mean(dim=-1)
    return probs.cpu().numpy()


def zero_shot_auroc(
    scores: Any, labels: Any, names: Sequence[str] | None = None, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """AUROC per finding and macro, with 95% percentile bootstrap CIs over resampled cases; NaN labels masked.

    See :func:`common.evaluation.metrics.multilabel_auroc` for the returned structure.
    """
    return multilabel_auroc(scores, labels, names, n_bootstrap=n_bootstrap, seed=seed)
