"""``common.data.label_model``: the Gaussian-copula model of the 18 CT-RATE labels and its fitting script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from common.data import label_model
from common.data.label_model import CORRELATION, FINDING_KEYS, PREVALENCE, sample_label_matrix, sample_labels

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fit_label_model.py"
_CSV_NAME = Path("data") / "reports" / "chest_ct_reports_labeled.csv"
CSV = next(
    (p for p in (ROOT.parent / "shared" / _CSV_NAME, ROOT / "shared" / _CSV_NAME) if p.is_file()),
    None,
)
needs_csv = pytest.mark.skipif(CSV is None, reason="labelled chest-CT reports (shared/data) not available")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("fit_label_model_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conditional(joint: np.ndarray) -> np.ndarray:
    """``P(k | j)`` (row ``j``) from a matrix of both-present probabilities whose diagonal holds the marginals."""
    return joint / np.diag(joint)[:, None]


def test_constants_are_consistent() -> None:
    assert len(FINDING_KEYS) == 18 == len(set(FINDING_KEYS))
    assert FINDING_KEYS[0] == "medical_material" and FINDING_KEYS[4] == "coronary_artery_wall_calcification"
    assert tuple(PREVALENCE) == FINDING_KEYS
    assert all(0.0 < p < 1.0 for p in PREVALENCE.values())
    assert sum(label_model.SOURCE_NUM_POSITIVES) == 689


def test_correlation_is_a_positive_definite_correlation_matrix() -> None:
    assert CORRELATION.shape == (18, 18)
    np.testing.assert_array_equal(CORRELATION, CORRELATION.T)
    np.testing.assert_array_equal(np.diag(CORRELATION), np.ones(18))
    assert np.linalg.eigvalsh(CORRELATION).min() > 0
    np.linalg.cholesky(CORRELATION)
    assert np.abs(CORRELATION).max() <= 1.0
    assert not CORRELATION.flags.writeable


def test_sampling_is_deterministic_in_the_generator() -> None:
    a = sample_labels(np.random.default_rng(7), n=50)
    b = sample_labels(np.random.default_rng(7), n=50)
    assert a == b
    rng = np.random.default_rng(7)
    one_by_one = [sample_labels(rng) for _ in range(50)]
    assert one_by_one == a  # one draw of 18 normals per case, whatever the batching
    assert sample_labels(np.random.default_rng(8), n=50) != a
    case = one_by_one[0]
    assert list(case) == list(FINDING_KEYS)
    assert all(type(v) is int and v in (0, 1) for v in case.values())


def test_marginals_match_the_prevalences() -> None:
    labels = sample_label_matrix(np.random.default_rng(0), 20_000)
    assert labels.shape == (20_000, 18) and labels.dtype == np.int64
    expected = np.array([PREVALENCE[k] for k in FINDING_KEYS])
    assert np.abs(labels.mean(axis=0) - expected).max() < 0.015


def test_conditional_cooccurrence_matches_the_model() -> None:
    """Sampled ``P(k | j)`` agrees with the copula's bivariate-normal expectation from the stored constants."""
    expected = label_model.expected_joint()
    np.testing.assert_allclose(np.diag(expected), [PREVALENCE[k] for k in FINDING_KEYS])
    np.testing.assert_allclose(expected, expected.T)
    labels = sample_label_matrix(np.random.default_rng(1), 100_000).astype(np.float64)
    sampled = (labels.T @ labels) / len(labels)
    assert np.abs(_conditional(sampled) - _conditional(expected)).max() < 0.03
    # The correlations carry real structure: e.g. pleural effusion makes atelectasis far more likely.
    j, k = FINDING_KEYS.index("pleural_effusion"), FINDING_KEYS.index("atelectasis")
    assert _conditional(expected)[j, k] > 2 * PREVALENCE["atelectasis"]


def test_prevalence_scale_and_overrides() -> None:
    rng = np.random.default_rng(2)
    assert label_model.sample_label_matrix(rng, 100, scale=0.0).sum() == 0
    forced = sample_labels(rng, n=200, prevalence={"cardiomegaly": 1.0, "emphysema": 0.0})
    assert all(case["cardiomegaly"] == 1 and case["emphysema"] == 0 for case in forced)
    doubled = sample_label_matrix(np.random.default_rng(3), 20_000, scale=2.0).mean(axis=0)
    expected = np.minimum(2 * np.array([PREVALENCE[k] for k in FINDING_KEYS]), 1.0)
    assert np.abs(doubled - expected).max() < 0.02
    with pytest.raises(KeyError, match="unknown finding"):
        sample_labels(rng, prevalence={"not_a_finding": 0.5})
    with pytest.raises(ValueError, match="scale"):
        sample_labels(rng, scale=-1.0)


def test_tetrachoric_recovers_a_known_correlation() -> None:
    rng = np.random.default_rng(4)
    rho = 0.6
    latent = rng.standard_normal((200_000, 2)) @ np.linalg.cholesky([[1.0, rho], [rho, 1.0]]).T
    labels = (latent < [-1.0, -0.5]).astype(np.int64)
    assert label_model.tetrachoric_correlation(labels)[0, 1] == pytest.approx(rho, abs=0.02)


def test_nearest_correlation_repairs_an_indefinite_matrix() -> None:
    bad = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(bad).min() < 0
    fixed = label_model.nearest_correlation(bad)
    np.testing.assert_allclose(np.diag(fixed), 1.0)
    np.testing.assert_allclose(fixed, fixed.T)
    assert np.linalg.eigvalsh(fixed).min() > 0
    good = np.array([[1.0, 0.3], [0.3, 1.0]])
    np.testing.assert_array_equal(label_model.nearest_correlation(good), good)


@needs_csv
def test_stored_constants_reproduce_from_the_csv(script) -> None:
    labels = script.read_labels(CSV)
    prevalence, correlation = label_model.fit_label_model(labels)
    np.testing.assert_allclose(prevalence, [PREVALENCE[k] for k in FINDING_KEYS], atol=1e-9)
    # 2-decimal rounding may flip at a ...5 boundary across scipy versions: allow one unit of the last decimal.
    assert np.abs(correlation - CORRELATION).max() <= 0.01 + 1e-9
    assert tuple(np.bincount(labels.sum(axis=1))) == label_model.SOURCE_NUM_POSITIVES


@needs_csv
def test_fit_script_prints_the_block_and_writes_json(script, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fit.json"
    script.fit(csv=str(CSV), samples=20_000, seed=0, out_json=str(out))
    printed = capsys.readouterr().out
    assert "PREVALENCE: dict[str, float] = {" in printed and "prevalence max abs error" in printed
    report = json.loads(out.read_text())
    assert report["reports"] == 689 and report["module_constants_match"] in (True, False)
    assert report["prevalence_max_abs_error"] < 0.015
    assert report["conditional_cooccurrence_max_abs_error"] < 0.08
    assert report["num_positives"]["real_counts"][:14] == list(label_model.SOURCE_NUM_POSITIVES)
    block = script.format_constants(
        np.array([PREVALENCE[k] for k in FINDING_KEYS]), CORRELATION, np.array(label_model.SOURCE_NUM_POSITIVES)
    )
    assert block in (ROOT / "common" / "data" / "label_model.py").read_text()  # the module holds the printed form


def test_prevalences_agree_with_the_finding_vocabulary():
    """The fitted prevalences and the ones the vocabulary carries (report_writer.random_case) are the same numbers."""
    from common.data.findings import FINDINGS
    from common.data.label_model import PREVALENCE

    assert PREVALENCE == {f.key: f.prevalence for f in FINDINGS}
