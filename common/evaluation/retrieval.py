"""Cross-modal retrieval between paired image and report embeddings: recall@k, median rank, recall curve.

Row ``i`` of ``image_emb`` and of ``text_emb`` come from the same study; every other row is a distractor.
Ties are resolved pessimistically: the rank of the true match is the number of candidates whose similarity is
greater than **or equal to** it, so collapsed (constant) embeddings score rank N instead of an illusory rank 1,
and the result does not depend on the order of the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.evaluation._arrays import as_tensor

__all__ = ["retrieval_metrics", "retrieval_ranks", "retrieval_summary"]


@torch.no_grad()
def retrieval_ranks(queries: Any, keys: Any, chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of key ``i`` among all keys for query ``i`` (cosine similarity, pessimistic ties).

    Args:
        queries: ``(N, D)`` query embeddings.
        keys: ``(N, D)`` key embeddings; key ``i`` is the match of query ``i``.
        chunk_size: queries scored per matrix product (bounds memory at ``chunk_size * N``).

    Returns:
        ``(N,)`` int64 ranks in ``[1, N]``.
    """
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    q = F.normalize(as_tensor(queries, "queries", ndim=2, device=device), dim=-1)
    k = F.normalize(as_tensor(keys, "keys", ndim=2, device=device), dim=-1)
    if q.shape != k.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    ranks = []
    for start in range(0, q.shape[0], chunk_size):
        sim = q[start : start + chunk_size] @ k.T
        rows = torch.arange(sim.shape[0], device=device)
        true = sim[rows, rows + start]
        ranks.append((sim >= true[:, None]).sum(dim=1).cpu())
    return torch.cat(ranks).numpy().astype(np.int64)


def _summary(ranks: np.ndarray, ks: Sequence[int], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """R@k (with a percentile bootstrap CI over the queries, ``R@k_ci``), median and mean rank."""
    out: dict[str, Any] = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    if n_bootstrap > 0:
        rows = np.random.default_rng(seed).integers(0, len(ranks), size=(n_bootstrap, len(ranks)))
        resampled = ranks[rows]  # (n_bootstrap, N): the gallery stays whole, the queries are resampled
        for k in ks:
            low, high = np.percentile((resampled <= k).mean(axis=1), [2.5, 97.5])
            out[f"R@{k}_ci"] = [float(low), float(high)]
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    return out


def retrieval_metrics(
    image_emb: Any,
    text_emb: Any,
    ks: Sequence[int] = (1, 5, 10),
    curve_max_k: int = 100,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Image-to-report and report-to-image recall@k and median rank, plus recall curves for plotting.

    Args:
        image_emb: ``(N, D)`` image embeddings.
        text_emb: ``(N, D)`` report embeddings, row-aligned with ``image_emb``.
        ks: cut-offs reported as ``R@k``.
        curve_max_k: the recall curve covers ``k = 1 .. min(N, curve_max_k)``.
        n_bootstrap: resamples of the queries for the 95 % percentile intervals ``R@k_ci`` (0: none).
        seed: seed of the resampling.

    Returns:
        ``{"image_to_text": {"R@k", "R@k_ci", "median_rank", "mean_rank"}, "text_to_image": {...}, "n_pairs",
        "chance": {"R@k"}, "curve": {"k": [...], "image_to_text": [...], "text_to_image": [...]}}``.

    Raises:
        ValueError: on mismatched shapes, fewer than two pairs, or a non-positive k.
    """
    i2t = retrieval_ranks(image_emb, text_emb)
    t2i = retrieval_ranks(text_emb, image_emb)
    return retrieval_summary(i2t, t2i, ks, curve_max_k, n_bootstrap, seed)


def retrieval_summary(
    image_to_text_ranks: np.ndarray,
    text_to_image_ranks: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    curve_max_k: int = 100,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`retrieval_metrics` from ranks already computed (:func:`retrieval_ranks` in both directions)."""
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {list(ks)}")
    i2t, t2i = np.asarray(image_to_text_ranks), np.asarray(text_to_image_ranks)
    n = len(i2t)
    if n < 2 or len(t2i) != n:
        raise ValueError(f"retrieval needs at least 2 pairs ranked both ways, got {n} and {len(t2i)} ranks")
    curve_k = np.arange(1, min(n, curve_max_k) + 1)
    return {
        "image_to_text": _summary(i2t, ks, n_bootstrap, seed),
        "text_to_image": _summary(t2i, ks, n_bootstrap, seed),
        "n_pairs": n,
        "chance": {f"R@{k}": min(1.0, k / n) for k in ks},
        "curve": {
            "k": curve_k.tolist(),
            "image_to_text": [float((i2t <= k).mean()) for k in curve_k],
            "text_to_image": [float((t2i <= k).mean()) for k in curve_k],
        },
    }
