"""Frozen-embedding probes: multi-label logistic regression and DINO-style weighted kNN, scored by AUROC.

* Linear probe: one L2-regularised logistic regression per label on standardised features
  (``StandardScaler`` inside the pipeline, so each CV fold is scaled on its own training part). ``C`` is chosen per
  label by stratified k-fold cross-validation on the training set (folds fixed by ``seed``, score = AUROC), then
  the model is refitted on the whole training set.
* kNN probe: DINO's weighted k-NN classifier (Caron et al., 2021, https://arxiv.org/abs/2104.14294) on
  L2-normalised embeddings: the ``k`` nearest training cases by cosine similarity vote with weight
  ``exp(sim / T)``; for multi-label data each label is voted separately, giving
  ``score = sum_j w_j y_j / sum_j w_j``. Training cases whose label is unknown do not vote for that label.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.evaluation._arrays import as_numpy, as_tensor, to_2d_labels
from common.evaluation.metrics import multilabel_auroc

__all__ = ["DEFAULT_CS", "knn_probe", "knn_scores", "linear_probe", "linear_probe_scores"]

logger = logging.getLogger(__name__)

DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _check_split(train_X: Any, train_y: Any, test_X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_train = as_numpy(train_X, "train_X", ndim=2)
    x_test = as_numpy(test_X, "test_X", ndim=2)
    y_train = to_2d_labels(train_y, "train_y")
    if len(x_train) != len(y_train):
        raise ValueError(f"train_X has {len(x_train)} rows but train_y has {len(y_train)}")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train_X has {x_train.shape[1]} features but test_X has {x_test.shape[1]}")
    if not (np.isfinite(x_train).all() and np.isfinite(x_test).all()):
        raise ValueError("embeddings contain NaN/inf")
    return x_train, y_train, x_test


def linear_probe_scores(
    train_X: Any,
    train_y: Any,
    test_X: Any,
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    n_folds: int = 5,
    max_iter: int = 2000,
) -> tuple[np.ndarray, list[float | None]]:
    """Fit one logistic regression per label and return test probabilities and the chosen ``C`` per label.

    A label with a single known class in the training set cannot be fitted: its score column is all NaN
    (reported as "not evaluated") and its ``C`` is None. When the minority class has fewer cases than
    ``n_folds``, the number of folds shrinks to match; with a single minority case ``C = 1`` is used without CV.

    Returns:
        ``(scores (N_test, K), chosen C per label)``.
    """
    x_train, y_train, x_test = _check_split(train_X, train_y, test_X)
    scores = np.full((len(x_test), y_train.shape[1]), np.nan)
    chosen: list[float | None] = []
    for k in range(y_train.shape[1]):
        known = ~np.isnan(y_train[:, k])
        x, y = x_train[known], y_train[known, k].astype(int)
        minority = int(min((y == 0).sum(), (y == 1).sum()))
        if minority == 0:
            logger.warning("linear probe: label %d has a single class in training; not evaluated", k)
            chosen.append(None)
            continue
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=max_iter))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if minority >= 2:
                folds = StratifiedKFold(n_splits=min(n_folds, minority), shuffle=True, random_state=seed)
                search = GridSearchCV(
                    pipeline, {"logisticregression__C": list(Cs)}, scoring="roc_auc", cv=folds, refit=True
                )
                model = search.fit(x, y).best_estimator_
            else:
                model = pipeline.fit(x, y)
        chosen.append(float(model[-1].C))
        scores[:, k] = model.predict_proba(x_test)[:, 1]
    return scores, chosen


def linear_probe(
    train_X: Any,
    train_y: Any,
    test_X: Any,
    test_y: Any,
    names: Sequence[str] | None = None,
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    n_folds: int = 5,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Multi-label logistic-regression probe on frozen embeddings: AUROC per label and macro (bootstrap CIs).

    Args:
        train_X: ``(N_train, D)`` embeddings.
        train_y: ``(N_train, K)`` 0/1 labels, NaN for unknown.
        test_X: ``(N_test, D)`` embeddings.
        test_y: ``(N_test, K)`` 0/1 labels, NaN for unknown.
        names: ``K`` label names.
        seed: seeds the CV folds and the bootstrap.
        Cs: inverse regularisation strengths searched by CV.
        n_folds: CV folds on the training set.
        n_bootstrap: bootstrap resamples of the test set for the CIs.

    Returns:
        The :func:`~common.evaluation.metrics.multilabel_auroc` dict, with ``"C"`` added to each label's entry.
    """
    scores, chosen = linear_probe_scores(train_X, train_y, test_X, seed=seed, Cs=Cs, n_folds=n_folds)
    result = multilabel_auroc(scores, test_y, names, n_bootstrap=n_bootstrap, seed=seed)
    for entry, c in zip(result["per_label"].values(), chosen):
        entry["C"] = c
    return result


@torch.no_grad()
def knn_scores(
    train_X: Any,
    train_y: Any,
    test_X: Any,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> np.ndarray:
    """DINO-style weighted kNN vote per label on L2-normalised embeddings.

    Returns:
        ``(N_test, K)`` scores in [0, 1]; an all-NaN column for a label with no known training case.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x_train, y_train, x_test = _check_split(train_X, train_y, test_X)
    train = F.normalize(as_tensor(x_train, "train_X"), dim=-1)
    test = F.normalize(as_tensor(x_test, "test_X"), dim=-1)
    labels = torch.as_tensor(y_train, dtype=torch.float32)
    known = ~torch.isnan(labels)
    scores = torch.full((len(test), labels.shape[1]), float("nan"), dtype=torch.float64)
    complete = known.all(dim=0)
    for start in range(0, len(test), chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        rows = slice(start, start + sim.shape[0])
        if complete.any():  # one neighbour search serves every fully-labelled column
            scores[rows, complete] = _vote(sim, labels[:, complete], k, temperature)
        for j in torch.nonzero(~complete).flatten().tolist():
            if known[:, j].any():
                masked = sim.masked_fill(~known[:, j], float("-inf"))
                kk = min(k, int(known[:, j].sum()))
                scores[rows, j] = _vote(masked, labels[:, j : j + 1].nan_to_num(0.0), kk, temperature)[:, 0]
    return scores.numpy()


def _vote(sim: torch.Tensor, labels: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Weighted vote of the top-k neighbours: ``sum_j exp(s_j / T) y_j / sum_j exp(s_j / T)``."""
    top_sim, top_idx = sim.topk(min(k, sim.shape[1]), dim=1)
    weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)  # shift by the max: same ratio, no overflow
    return ((weights[..., None] * labels[top_idx]).sum(dim=1) / weights.sum(dim=1, keepdim=True)).double()


def knn_probe(
    train_X: Any,
    train_y: Any,
    test_X: Any,
    test_y: Any,
    names: Sequence[str] | None = None,
    k: int = 20,
    temperature: float = 0.07,
    seed: int = 0,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Weighted kNN probe (DINO defaults ``k=20``, ``T=0.07``): AUROC per label and macro with bootstrap CIs.

    Returns:
        The :func:`~common.evaluation.metrics.multilabel_auroc` dict plus ``"k"`` and ``"temperature"``.
    """
    scores = knn_scores(train_X, train_y, test_X, k=k, temperature=temperature)
    result = multilabel_auroc(scores, test_y, names, n_bootstrap=n_bootstrap, seed=seed)
    result.update(k=int(k), temperature=float(temperature))
    return result
