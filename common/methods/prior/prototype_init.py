"""Initialising PRIOR's sentence prototype bank from sentence embeddings (k-means), a documented alternative.

The release initialises the bank with random normal rows (``nn.Embedding``) and lets the stage-2 losses organise it.
On small data (the CPU demos: 54 stage-2 steps) that bank stays a poor codebook and the global text embedding, pooled
from its soft prototypes, loses what stage 1 learned. Initialising a codebook from k-means centres of the data's own
vectors is the usual remedy in vector quantisation (e.g. Esser et al., Taming Transformers; Zeghidour et al.,
SoundStream); here the vectors are the stage-1 model's sentence embeddings of the training reports.

The bank assigns by dot product (``x E^T``, the release), which equals the nearest-centre rule only when every row has
the same norm; with plain k-means centres (unequal norms) the argmax favours long rows. ``directions=True`` clusters
the sentences' directions (k-means of the L2-normalised embeddings) and gives every row the sentences' mean norm, so
that the dot-product assignment picks the nearest centre.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from sklearn.cluster import KMeans

from common.data.batch import trim_padding
from common.engines.trainer import unwrap_module

__all__ = ["initialise_prototypes_from_sentences"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def initialise_prototypes_from_sentences(
    objective: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    max_batches: int = 50,
    seed: int = 0,
    directions: bool = False,
) -> int:
    """Set the bank's rows to the k-means centres of the sentence embeddings of ``batches`` (``n_embed`` centres).

    Args:
        objective: a :class:`~common.methods.prior.objective.PRIORPretraining` (its text tower and bank).
        batches: training batches (``input_ids``, ``attention_mask``, ``sentence_index``).
        max_batches: batches read at most.
        seed: k-means seed.
        directions: cluster the L2-normalised embeddings and set every row to its centre's direction times the
            embeddings' mean norm (equal row norms: the dot-product assignment picks the nearest centre).

    Returns:
        The number of sentence embeddings clustered.

    Raises:
        ValueError: fewer sentences than prototypes.
    """
    objective = unwrap_module(objective)
    text, pooler = objective.model.text_encoder, objective.pooler
    bank = pooler.prototypes
    device = bank.embed.weight.device
    was_training = text.training
    text.eval()
    vectors = []
    for index, batch in enumerate(batches):
        if index >= max_batches:
            break
        input_ids, attention_mask = trim_padding(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        sentence_index = batch["sentence_index"][..., : input_ids.shape[-1]].to(device)
        tokens = text.projector(text.token_embeddings(input_ids, attention_mask))
        sentences, mask = pooler.sentences(tokens, attention_mask, sentence_index)
        vectors.append(sentences[mask].float().cpu())
    text.train(was_training)
    data = torch.cat(vectors) if vectors else torch.empty(0, bank.dim)
    if len(data) < bank.n_embed:
        raise ValueError(f"{len(data)} sentences cannot initialise {bank.n_embed} prototypes; read more batches")
    points = torch.nn.functional.normalize(data, dim=1) if directions else data
    centres = KMeans(n_clusters=bank.n_embed, n_init=1, random_state=seed).fit(points.numpy()).cluster_centers_
    centres = torch.as_tensor(centres, dtype=torch.float32)
    if directions:
        centres = torch.nn.functional.normalize(centres, dim=1) * data.norm(dim=1).mean()
    bank.embed.weight.copy_(centres.to(dtype=bank.embed.weight.dtype, device=device))
    what = "directions" if directions else "embeddings"
    logger.info("sentence prototype bank initialised from k-means of %d sentence %s", len(data), what)
    return len(data)
