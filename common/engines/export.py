"""Export of a paired method: the trained two-tower model (with its learned temperature) and its zero-shot classifier.

Any objective holding ``model`` (a :class:`~common.networks.two_tower.TwoTowerModel`) and, optionally, ``clip_loss``
(its logit scale becomes the model's ``softmax_temperature``) is exported this way (COLIPRI, G2D, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from common.data.findings import FINDINGS, Finding
from common.engines.checkpoint import export_inference_weights
from common.engines.trainer import unwrap_module
from common.networks.two_tower import TwoTowerModel
from common.networks.zero_shot import ZeroShotClassifier
from common.transforms.text import prompt_pairs

__all__ = ["export_two_tower"]

logger = logging.getLogger(__name__)


def export_two_tower(
    objective: torch.nn.Module,
    tokenizer: Any,
    model_path: str | os.PathLike,
    classifier_path: str | os.PathLike,
    findings: Sequence[Finding | str] = FINDINGS,
    build_classifier: Callable[..., torch.nn.Module] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """Write the trained two-tower model and the zero-shot inference network (flat state dicts).

    The contrastive loss' (learned or fixed) logit scale becomes the model's ``softmax_temperature`` (``T = 1 / s``).
    ``classifier_path`` (``models/model.pt``) is what ``inference.yaml``, MONAI Label and the Model Zoo load;
    ``build_classifier(model, tokenizer, prompt_set)`` builds it (default :meth:`ZeroShotClassifier.from_model`).
    ``preprocessing`` (the config's ``preprocessing_record``) is written beside both files.
    """
    objective = unwrap_module(objective)
    model: TwoTowerModel = objective.model
    clip_loss = getattr(objective, "clip_loss", None)
    if clip_loss is not None:
        model.set_logit_scale(clip_loss.logit_scale.detach(), clip_loss.max_logit_scale)
    export_inference_weights(model, model_path, preprocessing)
    build = build_classifier if build_classifier is not None else ZeroShotClassifier.from_model
    classifier = build(model, tokenizer, prompt_pairs(findings))
    export_inference_weights(classifier, classifier_path, preprocessing)
    logger.info("exported %s and %s", model_path, classifier_path)
    return classifier
