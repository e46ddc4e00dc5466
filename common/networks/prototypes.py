"""Sentence prototype bank (SPB) of PRIOR (Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.12577, §3.3).

A learnable codebook ``E`` of ``n_embed`` prototypes quantises sentence embeddings *softly*: each vector ``x`` scores
every prototype by a plain dot product (no normalisation), a Gumbel-softmax with temperature ``tau`` (``hard=False``)
turns the scores into mixing weights, and the prototype is their mixture ``x_hat = y E``. The prototype loss is
``mean |x_hat - x|`` over every element; its gradient reaches both the codebook and the sentence embeddings.

Release notes (``codes/prior/modules/spb.py``, QtacierP/PRIOR 086bf2e): the constructor takes ``decay=0.99`` and
``eps=1e-5`` but never uses them; there is no EMA / k-means codebook update, the codebook is trained by the gradient
of the losses only. The codebook is an ``nn.Embedding`` (standard-normal init), kept here under the same state-dict key
``embed.weight``. The release returns flattened ``(N, dim)`` prototypes; this module keeps the input's leading shape.
The Gumbel noise is drawn by ``torch.nn.functional.gumbel_softmax``, as in the release, so equal RNG states give
equal outputs. **Deviation:** in ``eval()`` mode the noise is left out (weights ``softmax(x E^T / tau)``), so that
inference and exported embeddings are deterministic; the release draws noise at zero-shot time too.

``assignment_scale`` ``s`` (1: the release) multiplies the scores before the noise and the temperature
(``softmax((s x E^T + g) / tau)``). The scores are unnormalised dot products, so how sharp the soft assignment is, and
how much the unit-scale Gumbel noise ``g`` (std 1.28) moves it, depend on the embeddings' norms: with the release's
``N(0, 1)`` rows, the scores of a sentence have a standard deviation equal to its norm. A small text tower (the CPU
demos' MiniLM projected to 256-d, sentence norms ~2, prototypes at the same scale) gives scores with a spread below
the noise's: every sentence is mapped to nearly the same mixture of the whole bank. ``s > 1`` restores a near-hard,
input-dependent assignment without changing the embeddings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrototypeOutput", "SentencePrototypeBank", "prototype_temperature"]


class PrototypeOutput(NamedTuple):
    """``prototypes`` (same shape as the input), ``loss`` (scalar L1), ``logits`` ``(..., n_embed)`` = ``s x E^T``
    (before noise; the target of PRIOR's stage-3 KL term), ``index`` ``(...)`` = argmax of the noisy soft assignment."""

    prototypes: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor
    index: torch.Tensor


def prototype_temperature(base: float, epoch: int, max_epoch: int, strategy: str = "fixed") -> float:
    """The release's temperature schedules (``SPB.set_temp``): ``fixed`` (PRIOR's configs), ``linear`` (down to
    ``0.1 base`` at ``max_epoch``), ``exp`` (``base * 0.1 ** (epoch / max_epoch)``)."""
    if strategy == "fixed":
        return base
    if strategy == "linear":
        return base - 0.9 * base * epoch / max_epoch
    if strategy == "exp":
        return base * math.pow(0.1, epoch / max_epoch)
    raise ValueError(f"unknown temperature strategy {strategy!r}; expected fixed, linear or exp")


class SentencePrototypeBank(nn.Module):
    """Soft vector quantisation of ``(..., dim)`` embeddings onto ``n_embed`` learnable prototypes.

    Args:
        dim: embedding width (PRIOR: 768).
        n_embed: number of prototypes (PRIOR: ``spb_k`` = 512).
        temperature: Gumbel-softmax temperature (PRIOR: 0.9, fixed); ``temperature`` attribute may be reassigned
            (see :func:`prototype_temperature`).
        assignment_scale: factor on the assignment scores ``x E^T`` (1: the release; see the module docstring).
    """

    def __init__(self, dim: int, n_embed: int, temperature: float = 0.9, assignment_scale: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if assignment_scale <= 0:
            raise ValueError(f"assignment_scale must be positive, got {assignment_scale}")
        self.dim = dim
        self.n_embed = n_embed
        self.temperature = temperature
        self.assignment_scale = float(assignment_scale)
        self.embed = nn.Embedding(n_embed, dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Assignment scores ``s x E^T``, ``(..., n_embed)``."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected embeddings with last dimension {self.dim}, got shape {tuple(x.shape)}")
        return self.assignment_scale * (x @ self.embed.weight.T)

    def forward(self, x: torch.Tensor) -> PrototypeOutput:
        logits = self.logits(x)
        flat = logits.reshape(-1, self.n_embed)
        if self.training:
            weights = F.gumbel_softmax(flat, tau=self.temperature, hard=False, dim=-1)
        else:  # deterministic at inference: the noise-free assignment softmax(x E^T / tau)
            weights = (flat / self.temperature).softmax(dim=-1)
        prototypes = (weights @ self.embed.weight).reshape(x.shape)
        loss = (prototypes - x).abs().mean()
        return PrototypeOutput(prototypes, loss, logits, weights.argmax(-1).reshape(x.shape[:-1]))
