"""scripts/report_embedding_diagnostics.py: do report embeddings rank reports by their findings?"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def diagnostics(script_module):
    return script_module("report_embedding_diagnostics")


def _labels(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 18)) < 0.25).astype(float)


def test_embeddings_made_of_the_findings_score_high_and_unrelated_ones_at_chance(diagnostics):
    rng = np.random.default_rng(0)
    train_y, test_y = _labels(300, 1), _labels(120, 2)
    basis = rng.normal(size=(18, 64))

    def findings_embedding(y: np.ndarray) -> np.ndarray:  # the findings plus a little report-specific noise
        return y @ basis + 0.3 * rng.normal(size=(len(y), 64))

    good = diagnostics.diagnose(findings_embedding(train_y), train_y, findings_embedding(test_y), test_y)
    unrelated = diagnostics.diagnose(rng.normal(size=(300, 64)), train_y, rng.normal(size=(120, 64)), test_y)
    assert good["probe_auroc"] > 0.95 and unrelated["probe_auroc"] < 0.65
    assert good["cosine_vs_jaccard"] > 0.5 and abs(unrelated["cosine_vs_jaccard"]) < 0.1
    assert good["labels_to_report_R@5"] > 0.5 and unrelated["labels_to_report_R@5"] < 0.15
