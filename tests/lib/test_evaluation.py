"""Tests of the frozen-encoder evaluation harness (common/evaluation): small synthetic data and the real report CSV."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from common.data.contract import DataContractError
from common.evaluation.harness import evaluate_embeddings
from common.evaluation.metrics import auroc_rows, multilabel_auroc, paired_ratio_difference
from common.evaluation.plots import plot_dice_bars, plot_embedding_map, plot_recall_curve, plot_roc_curves
from common.evaluation.probes import knn_probe, knn_scores, linear_probe
from common.evaluation.report import EvaluationReport, flatten_scalars, format_table, to_jsonable
from common.evaluation.retrieval import retrieval_metrics, retrieval_ranks
from common.evaluation.seg_probe import SegmentationProbe, train_segmentation_probe
from common.evaluation.text_zero_shot import CT_RATE_LABELS, read_labelled_reports, text_zero_shot_from_csv
from common.evaluation.zero_shot import zero_shot_auroc, zero_shot_scores

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _single_blas_thread():
    """Tiny problems: BLAS threads only add contention on the shared 2-core CI box (10x slower L-BFGS here)."""
    with threadpool_limits(limits=1):
        yield


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _labels(rng: np.random.Generator, n: int, k: int, prevalence: float = 0.35) -> np.ndarray:
    return (rng.random((n, k)) < prevalence).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# AUROC with bootstrap CIs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, truth", [("perfect", 1.0), ("inverted", 0.0), ("random", 0.5)], ids=["perfect", "inverted", "random"]
)
def test_auroc_perfect_inverted_random(kind: str, truth: float) -> None:
    rng = np.random.default_rng(1)
    labels = _labels(rng, 1000, 3)  # the AUROC of random scores has a standard deviation of ~0.02 here
    noise = rng.random(labels.shape)
    scores = {"perfect": labels + 0.5 * noise, "inverted": -labels - 0.5 * noise, "random": noise}[kind]
    result = zero_shot_auroc(scores, labels, ["a", "b", "c"], n_bootstrap=300, seed=0)
    for entry in [*result["per_label"].values(), result["macro"]]:
        low, high = entry["auroc_ci"]
        assert low <= entry["auroc"] <= high
        assert entry["auroc"] == pytest.approx(truth, abs=0.08)
        if kind != "random":  # exact: every resample is perfectly (in)separable
            assert low == high == truth
        else:  # a real interval, not a degenerate point (its coverage is tested below)
            assert high - low > 0.02


def test_auroc_ci_covers_chance_for_random_scores() -> None:
    """Coverage of the 95% percentile interval over 40 independent random-score data sets (expected ~0.95)."""
    rng = np.random.default_rng(21)
    covered = []
    for trial in range(40):
        labels = _labels(rng, 150, 1)
        result = multilabel_auroc(rng.random(labels.shape), labels, n_bootstrap=200, seed=trial)
        low, high = result["macro"]["auroc_ci"]
        covered.append(low <= 0.5 <= high)
    assert np.mean(covered) >= 0.85


def test_auroc_masks_unknown_labels_and_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    labels = _labels(rng, 120, 2)
    scores = labels + rng.normal(0, 1.0, labels.shape)
    labels[::5, 1] = np.nan
    result = multilabel_auroc(scores, labels, ["a", "b"], n_bootstrap=0)
    known = ~np.isnan(labels[:, 1])
    assert result["per_label"]["b"]["auroc"] == pytest.approx(roc_auc_score(labels[known, 1], scores[known, 1]))
    assert result["per_label"]["b"]["n_unknown"] == int((~known).sum())
    assert result["per_label"]["a"]["n_pos"] + result["per_label"]["a"]["n_neg"] == 120
    expected_macro = np.mean([result["per_label"][n]["auroc"] for n in "ab"])
    assert result["macro"]["auroc"] == pytest.approx(expected_macro)
    assert result["macro"]["auroc_ci"] == [None, None]  # n_bootstrap=0


def test_vectorised_bootstrap_auroc_equals_sklearn_with_ties_and_masks() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(30, 50)).astype(float)  # many ties
    labels = (rng.random((30, 50)) < 0.4).astype(float)
    valid = rng.random((30, 50)) < 0.8
    fast = auroc_rows(scores, labels, valid)
    for row in range(30):
        y, s = labels[row, valid[row]], scores[row, valid[row]]
        assert fast[row] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_single_class_label_is_left_out() -> None:
    rng = np.random.default_rng(4)
    labels = _labels(rng, 60, 2)
    labels[:, 1] = 0.0
    scores = labels + rng.random(labels.shape)
    result = multilabel_auroc(scores, labels, ["ok", "constant"], n_bootstrap=50)
    assert result["per_label"]["constant"]["auroc"] is None
    assert result["macro"]["n_labels"] == 1
    assert result["macro"]["auroc"] == pytest.approx(result["per_label"]["ok"]["auroc"])
    assert result["bootstrap"]["n_used_macro"] > 0


def test_auroc_bootstrap_is_deterministic_and_seeded() -> None:
    rng = np.random.default_rng(5)
    labels = _labels(rng, 80, 2)
    scores = labels + rng.normal(0, 1, labels.shape)
    first = multilabel_auroc(scores, labels, n_bootstrap=100, seed=7)
    assert first == multilabel_auroc(scores, labels, n_bootstrap=100, seed=7)
    assert first["macro"]["auroc_ci"] != multilabel_auroc(scores, labels, n_bootstrap=100, seed=8)["macro"]["auroc_ci"]


def test_auroc_rejects_bad_input() -> None:
    labels = np.array([[0.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match="non-finite"):
        multilabel_auroc(np.array([[0.1], [np.nan], [0.3]]), labels)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        multilabel_auroc(np.zeros((3, 1)), np.array([[0.0], [2.0], [1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        multilabel_auroc(np.zeros((3, 2)), labels)


# ---------------------------------------------------------------------------------------------------------------
# Zero-shot scores
# ---------------------------------------------------------------------------------------------------------------


def test_zero_shot_scores_equal_mean_of_pairwise_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(5, 8, generator=gen)
    pos, neg = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 4, 8, generator=gen)
    temperature = 0.05
    probs = zero_shot_scores(image, pos, neg, temperature)
    n_img, n_pos, n_neg = (torch.nn.functional.normalize(t, dim=-1) for t in (image, pos, neg))
    logits = torch.stack([torch.einsum("nd,kpd->nkp", n_img, n_neg), torch.einsum("nd,kpd->nkp", n_img, n_pos)], -1)
    expected = torch.softmax(logits / temperature, dim=-1)[..., 1].mean(-1)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, expected.double().numpy(), atol=1e-6)
    single = zero_shot_scores(image.numpy(), pos[:, 0].numpy(), neg[:, 0].numpy(), temperature)  # (K, D) prompts
    np.testing.assert_allclose(single, zero_shot_scores(image, pos[:, :1], neg[:, :1], temperature), atol=1e-12)


def test_zero_shot_scores_separate_embedded_findings() -> None:
    rng = np.random.default_rng(6)
    labels = _labels(rng, 200, 4)
    pos, neg = rng.normal(size=(4, 2, 16)), rng.normal(size=(4, 2, 16))
    # an image embedding leans towards the "present" or the "absent" prompts of each finding
    image = np.einsum("nk,kd->nd", labels, pos.mean(1)) + np.einsum("nk,kd->nd", 1 - labels, neg.mean(1))
    image += rng.normal(0, 0.5, image.shape)
    result = zero_shot_auroc(zero_shot_scores(image, pos, neg, 0.01), labels, n_bootstrap=100)
    assert result["macro"]["auroc"] > 0.95


def test_zero_shot_scores_reject_bad_arguments() -> None:
    image, prompts = np.zeros((2, 4)), np.ones((3, 1, 4))
    with pytest.raises(ValueError, match="temperature"):
        zero_shot_scores(image, prompts, prompts, 0.0)
    with pytest.raises(ValueError, match="must match"):
        zero_shot_scores(image, prompts, np.ones((3, 2, 4)), 0.1)
    with pytest.raises(ValueError, match="dim"):
        zero_shot_scores(image, np.ones((3, 1, 5)), np.ones((3, 1, 5)), 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------


def test_retrieval_identical_embeddings_is_perfect() -> None:
    x = np.random.default_rng(7).normal(size=(64, 16))
    result = retrieval_metrics(x, x)
    for direction in ("image_to_text", "text_to_image"):
        assert result[direction]["R@1"] == 1.0
        assert result[direction]["median_rank"] == 1.0
    assert result["curve"]["image_to_text"][0] == 1.0
    assert len(result["curve"]["k"]) == 64


def test_retrieval_shuffled_pairs_are_at_chance() -> None:
    rng = np.random.default_rng(8)
    n = 400
    x = rng.normal(size=(n, 32))
    result = retrieval_metrics(x, x[rng.permutation(n)], ks=(1, 10, 50))
    for direction in ("image_to_text", "text_to_image"):
        for k in (10, 50):
            p = k / n
            assert abs(result[direction][f"R@{k}"] - p) < 4 * np.sqrt(p * (1 - p) / n) + 1 / n
            low, high = result[direction][f"R@{k}_ci"]  # the bootstrap interval brackets the estimate and chance
            assert low <= result[direction][f"R@{k}"] <= high and low - 0.01 <= p <= high + 0.01
            assert high - low == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.35)
        assert abs(result[direction]["median_rank"] - n / 2) < 0.15 * n
    assert result["chance"]["R@10"] == pytest.approx(10 / n)


def test_retrieval_ties_are_pessimistic_and_chunking_is_invisible() -> None:
    collapsed = np.ones((10, 4))
    assert (retrieval_ranks(collapsed, collapsed) == 10).all()  # a constant encoder does not get rank 1
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    np.testing.assert_array_equal(retrieval_ranks(a, b, chunk_size=7), retrieval_ranks(a, b))
    sim = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    brute = (sim >= np.diag(sim)[:, None] - 1e-6).sum(1)
    np.testing.assert_array_equal(retrieval_ranks(a, b), brute)
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(a, b[:40])


# ---------------------------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------------------------


def _separable(rng: np.random.Generator, n: int, k: int = 3, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    labels = _labels(rng, n, k, 0.4)
    directions = rng.normal(size=(k, dim))
    return labels @ directions * 2.0 + rng.normal(0, 0.5, (n, dim)), labels


def test_linear_probe_separable_data() -> None:
    rng = np.random.default_rng(10)
    x, y = _separable(rng, 240)
    result = linear_probe(x[:160], y[:160], x[160:], y[160:], ["a", "b", "c"], n_bootstrap=100)
    assert result["macro"]["auroc"] > 0.97
    assert all(entry["C"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0) for entry in result["per_label"].values())
    again = linear_probe(x[:160], y[:160], x[160:], y[160:], ["a", "b", "c"], n_bootstrap=100)
    assert again == result


def test_linear_probe_random_labels_near_chance_and_unfittable_label() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 10))
    y = _labels(rng, 200, 2)
    y[:120, 1] = 0.0  # no positive in the training part
    result = linear_probe(x[:120], y[:120], x[120:], y[120:], n_bootstrap=0)
    assert abs(result["per_label"]["label_0"]["auroc"] - 0.5) < 0.2
    assert result["per_label"]["label_1"]["auroc"] is None and result["per_label"]["label_1"]["C"] is None


def test_knn_probe_matches_brute_force_vote_and_separates() -> None:
    rng = np.random.default_rng(12)
    x, y = _separable(rng, 200)
    scores = knn_scores(x[:150], y[:150], x[150:], k=5, temperature=0.1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit[150:] @ unit[:150].T
    for i in (0, 7, 33):
        top = np.argsort(-sim[i])[:5]
        w = np.exp(sim[i, top] / 0.1)
        np.testing.assert_allclose(scores[i], (w[:, None] * y[top]).sum(0) / w.sum(), atol=1e-5)
    result = knn_probe(x[:150], y[:150], x[150:], y[150:], k=20, n_bootstrap=100)
    assert result["macro"]["auroc"] > 0.9 and result["k"] == 20


def test_knn_probe_ignores_unknown_training_labels() -> None:
    rng = np.random.default_rng(13)
    x, y = _separable(rng, 120, k=2)
    y_missing = y.copy()
    y_missing[:80, 1] = np.nan
    scores = knn_scores(x[:100], y_missing[:100], x[100:], k=5)
    expected = knn_scores(x[80:100], y[80:100, 1:], x[100:], k=5)[:, 0]  # only the known cases vote
    np.testing.assert_allclose(scores[:, 1], expected, atol=1e-6)
    np.testing.assert_allclose(scores[:, 0], knn_scores(x[:100], y[:100, :1], x[100:], k=5)[:, 0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation probe
# ---------------------------------------------------------------------------------------------------------------


def _toy_segmentation(n: int, seed: int, dims: int, informative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectangles of classes 1 and 2 on a patch grid of 8; channels 0-2 one-hot encode the class (plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    grid, scale = 8, (4 if dims == 2 else 2)
    maps = torch.zeros((n,) + (grid,) * dims, dtype=torch.long)
    for i in range(n):
        for c in (1, 2):
            lo, size = torch.randint(0, grid - 4, (dims,), generator=gen), torch.randint(3, 5, (dims,), generator=gen)
            maps[(i,) + tuple(slice(int(a), int(a + b)) for a, b in zip(lo, size))] = c
    onehot = torch.nn.functional.one_hot(maps, 3).movedim(-1, 1).float()
    if not informative:
        onehot = onehot[torch.randperm(n, generator=gen)]
    features = torch.cat([onehot, torch.zeros_like(onehot)], 1)
    features += 0.2 * torch.randn(features.shape, generator=gen)
    masks = torch.nn.functional.interpolate(maps[:, None].float(), scale_factor=scale, mode="nearest")[:, 0].long()
    return features, masks


def test_segmentation_probe_learns_class_channel_2d() -> None:
    train, test = _toy_segmentation(16, 0, 2), _toy_segmentation(8, 1, 2)
    options = {"epochs": 60, "lr": 3e-2, "seed": 0, "device": "cpu"}
    result = train_segmentation_probe(*train, *test, class_names=["bg", "a", "b"], **options)
    assert set(result["per_class"]) == {"a", "b"}
    assert all(entry["dice"] > 0.9 for entry in result["per_class"].values())
    assert result["mean_dice"] > 0.9
    control = train_segmentation_probe(*_toy_segmentation(16, 0, 2, informative=False), *test, **options)
    assert control["mean_dice"] < result["mean_dice"] - 0.2  # features without the class carry no segmentation


def test_segmentation_probe_3d_two_layer_head() -> None:
    train, test = _toy_segmentation(12, 2, 3), _toy_segmentation(4, 3, 3)
    result = train_segmentation_probe(*train, *test, epochs=25, lr=1e-2, seed=0, hidden_dim=8, device="cpu")
    assert result["mean_dice"] > 0.85
    assert result["num_classes"] == 3


def test_segmentation_probe_shapes_and_bad_arguments() -> None:
    probe = SegmentationProbe(feature_dim=6, num_classes=3, spatial_dims=3)
    assert probe(torch.randn(2, 6, 4, 4, 4), output_size=(16, 16, 16)).shape == (2, 3, 16, 16, 16)
    assert probe(torch.randn(2, 6, 4, 4, 4)).shape == (2, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="spatial_dims"):
        SegmentationProbe(6, 3, spatial_dims=1)
    features, masks = _toy_segmentation(4, 0, 2)
    with pytest.raises(ValueError, match="label maps"):
        train_segmentation_probe(features, masks[:3], features, masks, epochs=1)
    with pytest.raises(ValueError, match="num_classes"):
        train_segmentation_probe(features, masks, features, masks, epochs=1, num_classes=2)


# ---------------------------------------------------------------------------------------------------------------
# Plots, report, harness
# ---------------------------------------------------------------------------------------------------------------


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_pngs(tmp_path) -> None:
    rng = np.random.default_rng(14)
    labels = _labels(rng, 60, 3)
    labels[:5, 0] = np.nan
    scores = labels + rng.random(labels.shape)
    scores = np.nan_to_num(scores)
    names = ["Lung nodule", "Emphysema", "Cardiomegaly"]
    paths = [
        plot_roc_curves(scores, labels, names, tmp_path / "roc.png"),
        plot_recall_curve(retrieval_metrics(scores, scores + 0.1), tmp_path / "recall.png"),
        plot_embedding_map(rng.normal(size=(60, 8)), labels, names, tmp_path / "pca.png"),
        plot_embedding_map(rng.normal(size=(60, 8)), labels, names, tmp_path / "tsne.png", method="tsne"),
        plot_dice_bars({"per_class": {"a": {"dice": 0.8}, "b": {"dice": None}}, "mean_dice": 0.8}, tmp_path / "d.png"),
    ]
    assert all(_is_png(p) for p in paths)


def test_report_json_round_trip_tensorboard_and_summary(tmp_path) -> None:
    rng = np.random.default_rng(15)
    labels = _labels(rng, 50, 2)
    section = multilabel_auroc(labels + rng.random(labels.shape), labels, ["a", "b"], n_bootstrap=50)
    section["odd"] = {"nan": float("nan"), "array": np.arange(3), "tensor": torch.tensor(0.5), "int": np.int64(3)}
    report = EvaluationReport(tmp_path / "eval", bundle="demo_bundle", checkpoint="models/model.pt", seed=0)
    report.add_section("zero_shot", section)
    figure = plot_dice_bars({"per_class": {"a": {"dice": 0.5}}, "mean_dice": 0.5}, report.figure_dir / "dice.png")
    report.add_figure("dice", figure)
    path = report.write()
    loaded = EvaluationReport.load(path.parent)
    assert loaded["results"] == json.loads(json.dumps(to_jsonable(report.sections)))
    assert loaded["results"]["zero_shot"]["odd"] == {"nan": None, "array": [0, 1, 2], "tensor": 0.5, "int": 3}
    assert loaded["meta"]["bundle"] == "demo_bundle" and loaded["meta"]["seed"] == 0
    assert loaded["meta"]["machine"]["torch"] == torch.__version__
    assert (path.parent / loaded["figures"]["dice"]).is_file()
    assert "NaN" not in path.read_text()  # strict JSON
    assert list((path.parent / "tensorboard").glob("events.out.tfevents.*"))
    summary = (path.parent / "summary.md").read_text()
    assert "demo_bundle" in summary and "macro/auroc" in summary and "figures/dice.png" in summary


def test_format_table_and_flatten_scalars() -> None:
    macro = {"auroc": 0.75, "auroc_ci": [0.7, 0.8], "n_labels": 2}
    results = {"zero_shot": {"macro": macro, "per_label": {"a": {"auroc": None}}}}
    assert flatten_scalars(results) == {
        "zero_shot/macro/auroc": 0.75,
        "zero_shot/macro/auroc_ci_low": 0.7,
        "zero_shot/macro/auroc_ci_high": 0.8,
        "zero_shot/macro/n_labels": 2.0,
    }
    table = format_table(results)
    assert re.search(r"zero_shot/macro/auroc\s+0\.7500\s+\[0\.7000, 0\.8000\]", table)
    assert "zero_shot/per_label/a/auroc" in table and "n/a" in table
    assert "n_labels" not in table and "n_labels" in format_table(results, counts=True)
    assert "per_label" not in format_table(results, per_label=False)


def test_evaluate_embeddings_runs_sections_with_inputs(tmp_path) -> None:
    rng = np.random.default_rng(16)
    x, y = _separable(rng, 160, k=2, dim=16)
    names = ["Lung nodule", "Emphysema"]
    pos, neg = rng.normal(size=(2, 1, 16)), rng.normal(size=(2, 1, 16))
    report = EvaluationReport(tmp_path, bundle="demo")
    features, masks = _toy_segmentation(6, 0, 2)
    results = evaluate_embeddings(
        x[100:],
        y[100:],
        names,
        train_emb=x[:100],
        train_labels=y[:100],
        test_text_emb=x[100:] + 0.01,
        pos_prompt_emb=pos,
        neg_prompt_emb=neg,
        train_patch_features=features,
        train_masks=masks,
        test_patch_features=features,
        test_masks=masks,
        segmentation_kwargs={"epochs": 2, "device": "cpu"},
        n_bootstrap=50,
        report=report,
    )
    assert set(results) == {"zero_shot", "retrieval", "linear_probe", "knn_probe", "segmentation"}
    assert results["linear_probe"]["macro"]["auroc"] > 0.9
    assert results["retrieval"]["image_to_text"]["R@1"] == 1.0
    report.write(tensorboard=False)
    written = EvaluationReport.load(tmp_path)
    assert set(written["results"]) == set(results)
    assert all(_is_png(tmp_path / p) for p in written["figures"].values())
    assert "embedding_map" in written["figures"]
    only_retrieval = evaluate_embeddings(x, test_text_emb=x)
    assert set(only_retrieval) == {"retrieval"}
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_embeddings(x)
    with pytest.raises(ValueError, match="one row per test_labels row"):
        evaluate_embeddings(x[:10], y[:11], test_text_emb=x[:10])


# ---------------------------------------------------------------------------------------------------------------
# Text-side zero-shot on labelled reports
# ---------------------------------------------------------------------------------------------------------------

# Keyword stems of each CT-RATE label: a transparent "encoder" that a working pipeline must score above chance.
_STEMS = {
    "Medical material": ["catheter", "stent", "pacemaker", "prosthe", "clip", "port", "tube", "wire"],
    "Arterial wall calcification": ["calcif", "atheroscl", "atherom"],
    "Cardiomegaly": ["cardiomegal", "heart enlarg", "enlarged heart", "increased heart"],
    "Pericardial effusion": ["pericardial effusion", "pericardial fluid"],
    "Coronary artery wall calcification": ["coronar"],
    "Hiatal hernia": ["hiatal", "hiatus"],
    "Lymphadenopathy": ["lymphadenopath", "lymph node"],
    "Emphysema": ["emphysem", "bulla", "bullous"],
    "Atelectasis": ["atelecta"],
    "Lung nodule": ["nodul"],
    "Lung opacity": ["opacit", "ground glass", "ground-glass", "infiltrat"],
    "Pulmonary fibrotic sequela": ["fibrot", "fibrosis", "sequela"],
    "Pleural effusion": ["pleural effusion", "pleural fluid"],
    "Mosaic attenuation pattern": ["mosaic"],
    "Peribronchial thickening": ["peribronch"],
    "Consolidation": ["consolidat"],
    "Bronchiectasis": ["bronchiecta"],
    "Interlobular septal thickening": ["septal", "interlobular"],
}
_VOCAB = [stem for stems in _STEMS.values() for stem in stems] + ["normal"]


def _keyword_encoder(texts: list[str]) -> np.ndarray:
    return np.array([[text.lower().count(stem) for stem in _VOCAB] for text in texts], dtype=float)


def _hashed_bag_of_words(texts: list[str], dim: int = 256) -> np.ndarray:
    out = np.zeros((len(texts), dim))
    for i, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    return out


@pytest.fixture
def reports_csv(real_data_dir):
    path = real_data_dir / "reports" / "chest_ct_reports_labeled.csv"
    if not path.is_file():
        pytest.skip("real labelled report CSV (shared/data/reports) not available")
    return path


def test_text_zero_shot_real_reports_bag_of_words(reports_csv) -> None:
    result = text_zero_shot_from_csv(reports_csv, _hashed_bag_of_words, split="val", n_bootstrap=100)
    assert list(result["per_label"]) == list(CT_RATE_LABELS)
    for name, entry in result["per_label"].items():
        assert entry["auroc"] is not None and 0.0 <= entry["auroc"] <= 1.0, name
        assert entry["n_pos"] > 0 and entry["n_neg"] > 0
    assert result["n_cases"] == len(read_labelled_reports(reports_csv, split="val")[0])
    assert result["label_keys"]["Lung nodule"] == "lung_nodule"
    assert len(result["prompts"]["Lung nodule"]["positive"]) >= 1


def test_text_zero_shot_real_reports_keyword_encoder_beats_chance(reports_csv) -> None:
    def builder(name: str) -> tuple[list[str], list[str]]:
        return [" ".join(_STEMS[name])], ["normal"]

    result = text_zero_shot_from_csv(reports_csv, _keyword_encoder, builder, split="val", n_bootstrap=200)
    assert result["macro"]["n_labels"] == 18
    assert result["macro"]["auroc_ci"][0] > 0.5  # the whole interval is above chance
    capped = text_zero_shot_from_csv(
        reports_csv,
        _keyword_encoder,
        builder,
        label_columns=["Lung nodule"],
        split="train",
        max_reports=40,
        n_bootstrap=0,
    )
    assert capped["n_cases"] == 40 and list(capped["per_label"]) == ["Lung nodule"]


def test_read_labelled_reports_errors_name_the_file(tmp_path) -> None:
    good = tmp_path / "reports.csv"
    good.write_text('report_text,Cardiomegaly,split\n"Heart enlarged.",1,val\n"Normal.",,val\n"x",0,train\n')
    texts, labels, columns = read_labelled_reports(good)
    assert texts == ["Heart enlarged.", "Normal."] and columns == ["Cardiomegaly"]
    assert labels[0, 0] == 1.0 and np.isnan(labels[1, 0])
    bad_value = tmp_path / "bad_value.csv"
    bad_value.write_text("report_text,Cardiomegaly,split\nabc,maybe,val\n")
    with pytest.raises(DataContractError, match="bad_value.csv.*must be 0, 1 or empty"):
        read_labelled_reports(bad_value)
    with pytest.raises(DataContractError, match="no rows with split='test'"):
        read_labelled_reports(good, split="test")
    with pytest.raises(DataContractError, match=r"\['Emphysema'\] not found"):
        read_labelled_reports(good, label_columns=["Emphysema"])
    with pytest.raises(DataContractError, match="does not exist"):
        read_labelled_reports(tmp_path / "missing.csv")


def test_paired_auroc_difference_point_ci_and_symmetry() -> None:
    from sklearn.metrics import roc_auc_score

    from common.evaluation.metrics import paired_auroc_difference

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(150, 3)).astype(float)
    labels[:5, 2] = np.nan
    good = labels + rng.normal(0, 0.8, labels.shape)
    weak = labels + rng.normal(0, 3.0, labels.shape)
    good, weak = np.nan_to_num(good), np.nan_to_num(weak)
    out = paired_auroc_difference(good, weak, labels, ["a", "b", "c"], n_bootstrap=300, seed=1)
    known = ~np.isnan(labels[:, 2])
    expected_c = roc_auc_score(labels[known, 2], good[known, 2]) - roc_auc_score(labels[known, 2], weak[known, 2])
    assert out["per_label"]["c"]["difference"] == pytest.approx(expected_c, abs=1e-12)
    low, high = out["macro"]["difference_ci"]
    assert 0 < low <= out["macro"]["difference"] <= high and out["macro"]["p_not_better"] < 0.01
    swapped = paired_auroc_difference(weak, good, labels, ["a", "b", "c"], n_bootstrap=300, seed=1)
    assert swapped["macro"]["difference"] == pytest.approx(-out["macro"]["difference"])
    assert swapped["macro"]["difference_ci"] == pytest.approx([-high, -low])
    same = paired_auroc_difference(good, good, labels, n_bootstrap=50)
    assert same["macro"]["difference"] == 0.0 and same["macro"]["difference_ci"] == [0.0, 0.0]
    assert same["macro"]["p_not_better"] == 1.0
    with pytest.raises(ValueError):
        paired_auroc_difference(good[:, :2], weak, labels)


def test_paired_ratio_difference_pools_units_and_resamples_whole_cases() -> None:
    totals = np.array([3, 1, 2])
    reference = np.array([2, 0, 1])  # 3 of 6
    better = np.array([3, 1, 1])  # 5 of 6: never worse in any case
    result = paired_ratio_difference(better, reference, totals, n_bootstrap=500, seed=0)
    assert result["difference"] == pytest.approx(2 / 6) and result["n_cases"] == 3
    low, high = result["difference_ci"]
    assert 0.0 <= low <= result["difference"] <= high <= 1.0
    # the pooled rate, not the mean of per-case rates (2/3 here)
    assert paired_ratio_difference([1, 0], [0, 0], [1, 99], n_bootstrap=0)["difference"] == pytest.approx(0.01)
    assert paired_ratio_difference([1, 0], [0, 0], [1, 99], n_bootstrap=0)["difference_ci"] == [None, None]
    with pytest.raises(ValueError, match="same length"):
        paired_ratio_difference([1, 2], [1], [3, 3])
