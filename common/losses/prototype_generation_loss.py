"""PRIOR's sentence-prototype generation terms: matched L1 and prototype-assignment KL.

Cheng et al., "PRIOR: Prototype Representation Joint Learning from Medical Images and Reports", ICCV 2023,
https://arxiv.org/abs/2307.14975; release ``prior/models/prior.py::spg_loss`` and ``prior/modules/spb.py::cal_loss``.
A decoder predicts a report as a set of ``Q`` sentence prototypes; each target prototype (zero-padded to ``Q``) is
paired with one prediction by the Hungarian algorithm on their L1 distances
(:func:`common.networks.set_matching.match_predictions`), then

* ``L_spg = mean |P_matched - T|`` over all ``Q`` slots, padding included (the empty slots learn to predict zeros);
* ``L_kl = KL(softmax(x E^T) || softmax(P_matched E^T))`` over the real sentences, ``x`` the sentence embeddings
  before quantisation and ``E`` the prototype bank (``F.kl_div(log_pred, log_target, log_target=True,
  reduction='batchmean')``, as the release).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.networks.set_matching import match_predictions

__all__ = ["PrototypeGenerationLoss", "PrototypeGenerationOutput"]


class PrototypeGenerationOutput(NamedTuple):
    """``l1`` and ``kl`` (scalars), ``matched`` ``(B, Q, D)`` (row ``t``: the prediction paired with target ``t``)
    and ``mask`` ``(B, Q)`` (True at real target sentences)."""

    l1: torch.Tensor
    kl: torch.Tensor
    matched: torch.Tensor
    mask: torch.Tensor


class PrototypeGenerationLoss(nn.Module):
    """Matched L1 and KL between predicted and target sentence prototypes (no parameters; the bank is passed in)."""

    def forward(
        self,
        predictions: torch.Tensor,
        prototypes: torch.Tensor,
        mask: torch.Tensor,
        target_logits: torch.Tensor,
        bank_logits: Callable[[torch.Tensor], torch.Tensor],
    ) -> PrototypeGenerationOutput:
        """``predictions`` ``(B, Q, D)``; target ``prototypes`` ``(B, S, D)`` with ``mask`` ``(B, S)``, ``S <= Q``;
        ``target_logits`` ``(M, K)``: the bank's scores of the ``M`` real sentences (row-major order of ``mask``);
        ``bank_logits``: ``(..., D) -> (..., K)`` scores against the bank (``SentencePrototypeBank.logits``)."""
        b, q, d = predictions.shape
        if prototypes.shape[1] > q:
            raise ValueError(f"{prototypes.shape[1]} target sentences for {q} queries: truncate the targets first")
        targets = prototypes.new_zeros(b, q, d)
        targets[:, : prototypes.shape[1]] = prototypes
        target_mask = torch.zeros(b, q, dtype=torch.bool, device=mask.device)
        target_mask[:, : mask.shape[1]] = mask
        matched = match_predictions(predictions, targets, p=1.0)
        l1 = F.l1_loss(matched.float(), targets.float())
        kl = F.kl_div(
            F.log_softmax(bank_logits(matched[target_mask]).float(), dim=-1),
            F.log_softmax(target_logits.float(), dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return PrototypeGenerationOutput(l1, kl, matched, target_mask)
