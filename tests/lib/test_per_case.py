"""Per-case evaluation outputs (per_case.csv) and the paired comparison of two evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError
from common.evaluation.harness import evaluate_embeddings
from common.evaluation.metrics import multilabel_auroc
from common.evaluation.per_case import compare_evaluations, read_per_case, write_per_case
from common.evaluation.report import EvaluationReport

NAMES = ["effusion", "nodule", "cardiomegaly"]


def _data(seed: int = 0, n: int = 60, d: int = 16) -> dict[str, np.ndarray]:
    """Labels, image embeddings that carry them, paired text embeddings, prompts, a probe training set."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(len(NAMES), d))

    def cases(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, (count, len(NAMES))).astype(float)
        return y, y @ basis + 0.7 * rng.normal(size=(count, d))

    labels, image = cases(n)
    labels[0, 1] = np.nan  # an unknown label survives the round trip
    train_labels, train_emb = cases(80)
    return {
        "labels": labels,
        "image": image,
        "text": image + 0.3 * rng.normal(size=image.shape),
        "train_labels": train_labels,
        "train_emb": train_emb,
        "pos": basis[:, None, :],
        "neg": -basis[:, None, :],
    }


def _evaluate(out: Path, data: dict, text: np.ndarray | None = None, ids: list[str] | None = None) -> dict:
    report = EvaluationReport(out, bundle="test", seed=0)
    results = evaluate_embeddings(
        data["image"],
        data["labels"],
        NAMES,
        train_emb=data["train_emb"],
        train_labels=data["train_labels"],
        test_text_emb=data["text"] if text is None else text,
        pos_prompt_emb=data["pos"],
        neg_prompt_emb=data["neg"],
        n_bootstrap=50,
        report=report,
        embedding_map=None,
        case_ids=ids or [f"/data/case_{i}.nii.gz" for i in range(len(data["labels"]))],
    )
    report.write(tensorboard=False)
    return results


def test_per_case_csv_reproduces_the_reported_metrics(tmp_path: Path):
    data = _data()
    results = _evaluate(tmp_path, data)
    ids, columns = read_per_case(tmp_path)
    assert ids == [f"/data/case_{i}.nii.gz" for i in range(60)]
    labels = np.stack([columns[f"label/{n}"] for n in NAMES], axis=1)
    np.testing.assert_array_equal(labels, data["labels"])  # NaN where unknown
    for section in ("zero_shot", "linear_probe", "knn_probe"):
        scores = np.stack([columns[f"{section}/{n}"] for n in NAMES], axis=1)
        again = multilabel_auroc(scores, labels, NAMES, n_bootstrap=0)["macro"]["auroc"]
        assert again == pytest.approx(results[section]["macro"]["auroc"], abs=1e-6)
    for direction in ("image_to_text", "text_to_image"):
        ranks = columns[f"retrieval/{direction}_rank"]
        assert (ranks <= 5).mean() == pytest.approx(results["retrieval"][direction]["R@5"])
        assert np.median(ranks) == results["retrieval"][direction]["median_rank"]


def test_compare_evaluations_pairs_the_cases(tmp_path: Path):
    data = _data()
    _evaluate(tmp_path / "good", data)
    shuffled = data["text"][np.random.default_rng(1).permutation(len(data["text"]))]
    _evaluate(tmp_path / "shuffled", data, text=shuffled)
    _evaluate(tmp_path / "same", data)
    result = compare_evaluations(
        ("good", tmp_path / "good"), {"shuffled": tmp_path / "shuffled", "same": tmp_path / "same"}, n_bootstrap=200
    )
    assert result["n_cases"] == 60
    r5 = result["sections"]["retrieval/image_to_text/R@5"]
    assert r5["models"]["good"]["mean"] > 0.5
    worse = r5["differences"]["shuffled"]
    assert worse["difference"] < 0 and worse["difference_ci"][1] < 0
    same = r5["differences"]["same"]
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0]
    zero_shot = result["sections"]["zero_shot"]["differences"]["same"]["macro"]
    assert zero_shot["difference"] == pytest.approx(0.0)
    assert {"zero_shot", "linear_probe", "knn_probe"} <= set(result["sections"])


def test_compare_evaluations_refuses_other_test_sets_and_missing_files(tmp_path: Path):
    data = _data()
    _evaluate(tmp_path / "a", data)
    other = _data(seed=2)
    _evaluate(tmp_path / "b", other)  # same case ids, other labels
    with pytest.raises(ValueError, match="disagree on the test labels"):
        compare_evaluations(("a", tmp_path / "a"), {"b": tmp_path / "b"}, n_bootstrap=10)
    _evaluate(tmp_path / "c", data, ids=[f"/elsewhere/{i}.nii.gz" for i in range(60)])
    with pytest.raises(ValueError, match="different test sets"):
        compare_evaluations(("a", tmp_path / "a"), {"c": tmp_path / "c"}, n_bootstrap=10)
    (tmp_path / "old").mkdir()
    with pytest.raises(DataContractError, match="old"):
        compare_evaluations(("a", tmp_path / "a"), {"old": tmp_path / "old"}, n_bootstrap=10)


def test_write_per_case_checks_its_columns(tmp_path: Path):
    with pytest.raises(ValueError, match="2 values for 3 cases"):
        write_per_case(tmp_path / "p.csv", ["a", "b", "c"], {"x/y": [1, 2]})
    with pytest.raises(ValueError, match="unique"):
        write_per_case(tmp_path / "p.csv", ["a", "a"], {"x/y": [1, 2]})
    (tmp_path / "bad.csv").write_text("case,x/y\na,1\nb\n")
    with pytest.raises(DataContractError, match="line 3"):
        read_per_case(tmp_path / "bad.csv")


def test_compare_cli_evaluations_prints_a_table(tmp_path: Path, capsys, script_module):
    script = script_module("compare_predictions")
    data = _data()
    _evaluate(tmp_path / "full", data)
    _evaluate(tmp_path / "ablated", data, text=data["text"][::-1].copy())
    out = tmp_path / "cmp.json"
    script.evaluations(
        f"full={tmp_path / 'full'}", {"ablated": str(tmp_path / "ablated")}, out=str(out), ks=(5,), n_bootstrap=50
    )
    printed = capsys.readouterr().out
    assert "| retrieval/text_to_image/R@5 (hit rate) | ablated |" in printed
    assert json.loads(out.read_text())["reference"] == "full"
