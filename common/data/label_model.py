"""Joint model of the 18 CT-RATE chest-CT abnormality labels, for the phantom cases' findings.

The labels are drawn from a **Gaussian copula** (multivariate probit): a case has a latent standard-normal
vector ``z ~ N(0, R)`` and finding ``k`` is present when ``z_k < Φ⁻¹(p_k)``, so finding ``k`` has prevalence
``p_k`` and two findings co-occur as often as the tetrachoric correlation ``R_jk`` of their latent variables
implies (``P(j and k) = Φ₂(Φ⁻¹(p_j), Φ⁻¹(p_k); R_jk)``). The model reproduces the prevalences and all pairwise
co-occurrences of the source archive; higher-order structure (e.g. the number of findings per case) follows from
the copula and is only approximately that of the source.

Provenance of the constants (:data:`PREVALENCE`, :data:`CORRELATION`, :data:`SOURCE_NUM_POSITIVES`):

* source: ``chest_ct_reports_labeled.csv``, 689 labelled chest-CT reports with the 18 binary CT-RATE label
  columns (CC BY-NC-SA, so only these summary statistics are stored here, no per-report rows);
* fitted on 2026-12-06 with ``scripts/fit_label_model.py`` (:func:`fit_label_model`): prevalences are the label
  means (3 decimals); correlations are pairwise tetrachoric estimates (the ``ρ`` whose bivariate-normal CDF at
  the two thresholds equals the observed both-positive fraction, found by root finding), repaired to the
  nearest positive-definite correlation matrix (eigenvalues clipped, then rescaled to a unit diagonal) and
  rounded to 2 decimals. Rerun the script to reproduce them and to compare the model with the source.

Usage::

    rng = np.random.default_rng(seed)
    labels = sample_labels(rng)              # {"medical_material": 0, "arterial_wall_calcification": 1, ...}
    batch = sample_labels(rng, n=100)        # list of 100 such dicts
    sicker = sample_labels(rng, scale=1.5)   # every prevalence x1.5 (clipped to [0, 1])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.special import ndtri

from common.data.findings import FINDING_KEYS, FINDING_NAMES

__all__ = [
    "CORRELATION",
    "FINDING_KEYS",
    "FINDING_NAMES",
    "PREVALENCE",
    "SOURCE_NUM_POSITIVES",
    "expected_joint",
    "fit_label_model",
    "nearest_correlation",
    "sample_label_matrix",
    "sample_labels",
    "tetrachoric_correlation",
    "thresholds",
]

# --- fitted constants (scripts/fit_label_model.py prints this block) -------------------------------------------
# PREVALENCE: fraction of source reports with each finding. _CORRELATION_ROWS: the latent correlation matrix
# (CORRELATION). SOURCE_NUM_POSITIVES: source reports with 0, 1, 2, ... positive findings (for comparisons).
# fmt: off
PREVALENCE: dict[str, float] = {
    "medical_material": 0.134,
    "arterial_wall_calcification": 0.276,
    "cardiomegaly": 0.123,
    "pericardial_effusion": 0.073,
    "coronary_artery_wall_calcification": 0.228,
    "hiatal_hernia": 0.158,
    "lymphadenopathy": 0.292,
    "emphysema": 0.219,
    "atelectasis": 0.250,
    "lung_nodule": 0.415,
    "lung_opacity": 0.316,
    "pulmonary_fibrotic_sequela": 0.282,
    "pleural_effusion": 0.144,
    "mosaic_attenuation_pattern": 0.089,
    "peribronchial_thickening": 0.096,
    "consolidation": 0.165,
    "bronchiectasis": 0.093,
    "interlobular_septal_thickening": 0.081,
}
_CORRELATION_ROWS = (
    (1.00, 0.37, 0.40, 0.38, 0.40, 0.09, 0.26, 0.24, 0.40, -0.14, 0.14, 0.04, 0.51, 0.15, 0.30, 0.39, 0.13, 0.33),
    (0.37, 1.00, 0.69, 0.34, 0.91, 0.39, 0.42, 0.39, 0.48, 0.08, 0.18, 0.17, 0.33, 0.36, 0.44, 0.25, 0.30, 0.30),
    (0.40, 0.69, 1.00, 0.43, 0.62, 0.11, 0.45, -0.03, 0.48, -0.21, 0.21, 0.01, 0.58, 0.55, 0.37, 0.23, -0.07, 0.43),
    (0.38, 0.34, 0.43, 1.00, 0.39, 0.26, 0.39, 0.19, 0.54, 0.01, 0.00, 0.00, 0.56, 0.04, 0.30, 0.30, 0.08, 0.12),
    (0.40, 0.91, 0.62, 0.39, 1.00, 0.42, 0.39, 0.38, 0.42, 0.07, 0.15, 0.17, 0.38, 0.42, 0.40, 0.21, 0.23, 0.29),
    (0.09, 0.39, 0.11, 0.26, 0.42, 1.00, 0.12, 0.28, 0.18, 0.13, 0.08, 0.29, 0.07, 0.15, 0.27, 0.00, 0.04, 0.17),
    (0.26, 0.42, 0.45, 0.39, 0.39, 0.12, 1.00, 0.14, 0.36, 0.01, 0.31, 0.22, 0.37, 0.31, 0.31, 0.41, 0.28, 0.34),
    (0.24, 0.39, -0.03, 0.19, 0.38, 0.28, 0.14, 1.00, 0.24, 0.24, -0.01, 0.14, 0.15, -0.22, 0.17, 0.06, 0.17, 0.14),
    (0.40, 0.48, 0.48, 0.54, 0.42, 0.18, 0.36, 0.24, 1.00, 0.01, 0.18, -0.08, 0.58, 0.25, 0.22, 0.20, 0.09, 0.15),
    (-0.14, 0.08, -0.21, 0.01, 0.07, 0.13, 0.01, 0.24, 0.01, 1.00, -0.08, 0.15, -0.17, 0.04, 0.10, -0.24, 0.12, -0.11),
    (0.14, 0.18, 0.21, 0.00, 0.15, 0.08, 0.31, -0.01, 0.18, -0.08, 1.00, 0.08, 0.33, 0.07, 0.12, 0.55, 0.00, 0.39),
    (0.04, 0.17, 0.01, 0.00, 0.17, 0.29, 0.22, 0.14, -0.08, 0.15, 0.08, 1.00, 0.05, 0.14, 0.20, 0.07, 0.29, -0.17),
    (0.51, 0.33, 0.58, 0.56, 0.38, 0.07, 0.37, 0.15, 0.58, -0.17, 0.33, 0.05, 1.00, 0.28, 0.36, 0.55, -0.08, 0.47),
    (0.15, 0.36, 0.55, 0.04, 0.42, 0.15, 0.31, -0.22, 0.25, 0.04, 0.07, 0.14, 0.28, 1.00, 0.33, -0.17, -0.16, 0.15),
    (0.30, 0.44, 0.37, 0.30, 0.40, 0.27, 0.31, 0.17, 0.22, 0.10, 0.12, 0.20, 0.36, 0.33, 1.00, 0.26, 0.49, 0.19),
    (0.39, 0.25, 0.23, 0.30, 0.21, 0.00, 0.41, 0.06, 0.20, -0.24, 0.55, 0.07, 0.55, -0.17, 0.26, 1.00, 0.20, 0.34),
    (0.13, 0.30, -0.07, 0.08, 0.23, 0.04, 0.28, 0.17, 0.09, 0.12, 0.00, 0.29, -0.08, -0.16, 0.49, 0.20, 1.00, 0.21),
    (0.33, 0.30, 0.43, 0.12, 0.29, 0.17, 0.34, 0.14, 0.15, -0.11, 0.39, -0.17, 0.47, 0.15, 0.19, 0.34, 0.21, 1.00),
)
SOURCE_NUM_POSITIVES: tuple[int, ...] = (87, 137, 93, 83, 56, 71, 55, 42, 26, 20, 10, 7, 1, 1)
# fmt: on
# --- end of fitted constants ----------------------------------------------------------------------------------

CORRELATION: np.ndarray = np.array(_CORRELATION_ROWS, dtype=np.float64)
"""``(18, 18)`` latent (tetrachoric) correlation matrix, symmetric positive definite with a unit diagonal."""
CORRELATION.setflags(write=False)

_CHOLESKY = np.linalg.cholesky(CORRELATION)
_PREVALENCE_VECTOR = np.array([PREVALENCE[key] for key in FINDING_KEYS], dtype=np.float64)


def _prevalence_vector(prevalence: Mapping[str, float] | None, scale: float) -> np.ndarray:
    """:data:`PREVALENCE` with ``prevalence``'s entries replaced, times ``scale``, clipped to ``[0, 1]``."""
    values = _PREVALENCE_VECTOR.copy()
    if prevalence:
        unknown = sorted(set(prevalence) - set(FINDING_KEYS))
        if unknown:
            raise KeyError(f"unknown finding keys {unknown}; expected some of {FINDING_KEYS}")
        for key, value in prevalence.items():
            values[FINDING_KEYS.index(key)] = float(value)
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite non-negative number, got {scale!r}")
    return np.clip(values * float(scale), 0.0, 1.0)


def thresholds(prevalence: Mapping[str, float] | None = None, scale: float = 1.0) -> np.ndarray:
    """Latent thresholds ``Φ⁻¹(p_k)`` (``(18,)``; ``-inf`` for ``p = 0``, ``+inf`` for ``p = 1``).

    Args:
        prevalence: per-key overrides of :data:`PREVALENCE` (a subset of :data:`FINDING_KEYS`).
        scale: factor applied to every prevalence (after the overrides), the result clipped to ``[0, 1]``.
    """
    return ndtri(_prevalence_vector(prevalence, scale))


def sample_label_matrix(
    rng: np.random.Generator, n: int, scale: float = 1.0, prevalence: Mapping[str, float] | None = None
) -> np.ndarray:
    """``(n, 18)`` int64 matrix of 0/1 labels in :data:`FINDING_KEYS` order, one copula draw per row.

    Row ``i`` uses the ``i``-th block of 18 ``rng.standard_normal`` values, so ``n`` rows equal ``n`` calls with
    ``n=1`` on the same generator; the result is a deterministic function of the generator's state.

    Args:
        rng: numpy generator (advanced by ``18 * n`` standard normals).
        n: number of cases.
        scale: factor applied to every prevalence (clipped to ``[0, 1]``); correlations are unchanged.
        prevalence: per-key overrides of :data:`PREVALENCE`.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    latent = rng.standard_normal((int(n), len(FINDING_KEYS))) @ _CHOLESKY.T
    return (latent < thresholds(prevalence, scale)).astype(np.int64)


def sample_labels(
    rng: np.random.Generator,
    n: int | None = None,
    scale: float = 1.0,
    prevalence: Mapping[str, float] | None = None,
) -> dict[str, int] | list[dict[str, int]]:
    """Draw the 18 CT-RATE labels of one case (``n=None``) or of ``n`` cases from the copula.

    Args:
        rng: numpy generator; one case consumes 18 standard normals (see :func:`sample_label_matrix`).
        n: ``None`` for one case, else the number of cases.
        scale: factor applied to every prevalence (``> 1``: more abnormal cases), clipped to ``[0, 1]``.
        prevalence: per-key overrides of :data:`PREVALENCE`, applied before ``scale``.

    Returns:
        ``{finding_key: 0 | 1}`` in :data:`FINDING_KEYS` order, or a list of ``n`` such dicts.
    """
    matrix = sample_label_matrix(rng, 1 if n is None else n, scale=scale, prevalence=prevalence)
    cases = [dict(zip(FINDING_KEYS, map(int, row))) for row in matrix]
    return cases[0] if n is None else cases


def _bivariate_normal_cdf(h: float, k: float, rho: float) -> float:
    """``P(X < h, Y < k)`` for standard normals with correlation ``rho``."""
    from scipy.stats import multivariate_normal

    if not (np.isfinite(h) and np.isfinite(k)):
        from scipy.special import ndtr

        return float(0.0 if min(h, k) == -np.inf else ndtr(min(h, k)))
    return float(multivariate_normal.cdf([h, k], mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]]))


def expected_joint(
    prevalence: Mapping[str, float] | None = None, correlation: np.ndarray | None = None, scale: float = 1.0
) -> np.ndarray:
    """``(18, 18)`` model probabilities that findings ``j`` and ``k`` are both present (diagonal: prevalences).

    ``P(k | j) = joint[j, k] / joint[j, j]``. Defaults to the stored constants.
    """
    p = _prevalence_vector(prevalence, scale)
    corr = CORRELATION if correlation is None else np.asarray(correlation, dtype=np.float64)
    tau = ndtri(p)
    joint = np.diag(p)
    for j in range(len(p)):
        for k in range(j + 1, len(p)):
            joint[j, k] = joint[k, j] = _bivariate_normal_cdf(tau[j], tau[k], corr[j, k])
    return joint


def _tetrachoric_pair(both: float, p_j: float, p_k: float, bound: float = 0.999) -> float:
    """The ``ρ`` with ``Φ₂(Φ⁻¹(p_j), Φ⁻¹(p_k); ρ) = both`` (clipped to ``±bound`` when out of reach)."""
    from scipy.optimize import brentq

    h, k = ndtri(p_j), ndtri(p_k)

    def gap(rho: float) -> float:
        return _bivariate_normal_cdf(h, k, rho) - both

    low, high = gap(-bound), gap(bound)
    if low >= 0:
        return -bound
    if high <= 0:
        return bound
    return float(brentq(gap, -bound, bound, xtol=1e-8))


def tetrachoric_correlation(labels: np.ndarray) -> np.ndarray:
    """Pairwise tetrachoric correlations of the columns of a ``(cases, K)`` 0/1 matrix (unit diagonal).

    Each pair's ``ρ`` matches the bivariate-normal probability of "both present" at the two columns' thresholds
    to the observed fraction. Columns that are constant get correlation 0 with every other column.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be a (cases, K) matrix of 0/1")
    p = y.mean(axis=0)
    both = (y.T @ y) / len(y)
    corr = np.eye(y.shape[1])
    for j in range(y.shape[1]):
        for k in range(j + 1, y.shape[1]):
            if 0.0 < p[j] < 1.0 and 0.0 < p[k] < 1.0:
                corr[j, k] = corr[k, j] = _tetrachoric_pair(both[j, k], p[j], p[k])
    return corr


def nearest_correlation(matrix: np.ndarray, min_eigenvalue: float = 1e-3) -> np.ndarray:
    """Repair a symmetric matrix into a positive-definite correlation matrix.

    Eigenvalues below ``min_eigenvalue`` are raised to it, then the matrix is rescaled to a unit diagonal
    (``D^-1/2 A D^-1/2``). A matrix that already qualifies is returned unchanged (up to symmetrisation).
    """
    a = (np.asarray(matrix, dtype=np.float64) + np.asarray(matrix, dtype=np.float64).T) / 2
    values, vectors = np.linalg.eigh(a)
    if values.min() >= min_eigenvalue:
        return a
    a = (vectors * np.maximum(values, min_eigenvalue)) @ vectors.T
    scale = 1.0 / np.sqrt(np.diag(a))
    a = a * scale[:, None] * scale[None, :]
    np.fill_diagonal(a, 1.0)
    return (a + a.T) / 2


def fit_label_model(
    labels: np.ndarray, prevalence_decimals: int = 3, correlation_decimals: int = 2, min_eigenvalue: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the copula to a ``(cases, K)`` 0/1 label matrix: rounded prevalences and correlation matrix.

    The tetrachoric matrix is repaired with :func:`nearest_correlation` and rounded; if rounding breaks positive
    definiteness, the repair is redone with a larger eigenvalue floor until the rounded matrix is positive
    definite.

    Returns:
        ``(prevalence (K,), correlation (K, K))``, rounded to the given decimals.
    """
    y = np.asarray(labels)
    prevalence = np.round(y.mean(axis=0), prevalence_decimals)
    raw = tetrachoric_correlation(y)
    floor = min_eigenvalue
    for _ in range(20):
        corr = np.round(nearest_correlation(raw, floor), correlation_decimals)
        np.fill_diagonal(corr, 1.0)
        if np.linalg.eigvalsh(corr).min() > 0:
            return prevalence, corr + 0.0  # + 0.0 turns -0.0 into 0.0
        floor *= 2
    raise ValueError("could not make the rounded correlation matrix positive definite")
