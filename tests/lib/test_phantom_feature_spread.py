"""``scripts/phantom_feature_spread.py``: between/within-case statistics on synthetic features (no bundle builds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    path = ROOT / "scripts" / "phantom_feature_spread.py"
    spec = importlib.util.spec_from_file_location("phantom_feature_spread", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _features(rng, n, v, d, case_scale, view_scale, offset=0.0):
    common = offset * np.ones(d)
    cases = case_scale * rng.standard_normal((n, 1, d))
    return common + cases + view_scale * rng.standard_normal((n, v, d))


def test_identical_cases_give_a_ratio_near_zero(script):
    stats = script.spread_statistics(_features(np.random.default_rng(0), 60, 4, 64, 0.0, 1.0, offset=20.0))
    assert abs(stats["variance_ratio"]) < 0.1
    assert stats["f_statistic"] == pytest.approx(1.0, abs=0.15)
    assert stats["between_cosine"] > 0.99  # the common component dominates the raw cosine
    assert abs(stats["between_cosine_centred"]) < 0.05 and abs(stats["view_cosine_centred"]) < 0.05
    assert stats["view_retrieval_top1"] < 0.2


def test_well_separated_cases_give_a_large_ratio(script):
    stats = script.spread_statistics(_features(np.random.default_rng(1), 30, 2, 32, 1.0, 0.05, offset=5.0))
    assert stats["variance_ratio"] > 100 and stats["f_statistic"] > 100
    assert stats["view_cosine_centred"] > 0.99
    assert stats["between_cosine_centred"] == pytest.approx(-1 / 29, abs=0.05)
    assert stats["view_retrieval_top1"] == 1.0


def test_variance_components_match_the_generating_scales(script):
    stats = script.spread_statistics(_features(np.random.default_rng(2), 400, 3, 16, 2.0, 1.0))
    assert stats["within_variance"] == pytest.approx(16 * 1.0, rel=0.1)
    assert stats["between_variance"] == pytest.approx(16 * 4.0, rel=0.2)
    assert stats["variance_ratio"] == pytest.approx(4.0, rel=0.2)


def test_cosines_are_bounded_and_single_view_gives_between_only(script):
    rng = np.random.default_rng(3)
    stats = script.spread_statistics(rng.standard_normal((10, 3, 8)))
    for key in ("between_cosine", "between_cosine_centred", "view_cosine", "view_cosine_centred"):
        assert -1.0 <= stats[key] <= 1.0
    assert script.spread_statistics(np.ones((5, 2, 4)))["between_cosine"] == pytest.approx(1.0)
    single = script.spread_statistics(rng.standard_normal((5, 1, 8)))
    assert set(single) == {"between_cosine", "between_cosine_centred"}
    with pytest.raises(ValueError):
        script.spread_statistics(rng.standard_normal((1, 2, 8)))


def test_table_lists_features_and_voxels(script):
    stats = script.spread_statistics(_features(np.random.default_rng(4), 5, 2, 8, 1.0, 0.1))
    row = {
        "bundle": "b",
        "num_cases": 5,
        "features": stats,
        "clean_features": stats,
        "voxels": stats,
        "clean_voxels": stats,
    }
    table = script.format_spread_table([row])
    assert "features" in table and "voxels" in table and "-0.2500" in table
