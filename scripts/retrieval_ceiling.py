"""How much whole-report retrieval can an image side that knows each finding only so well support?

Retrieval R@5 asks the image embedding to single out its own report among all test reports, which it can only do
through the findings it encodes. This script answers, on a test set's real label sets, what R@5 to expect from an
image side whose evidence on finding ``k`` separates present from absent with AUROC ``a_k``, and a report side that
knows its findings exactly (an upper bound on the text tower):

* image evidence, binormal with equal variance: ``s_k = d_k y_k + N(0, 1)`` with ``d_k = sqrt(2) Phi^-1(a_k)`` (so
  that ``AUROC = Phi(d_k / sqrt(2))``);
* the best possible ranking given that evidence: reports for image ``i`` by the likelihood ``log p(s_i | y_j) =
  sum_k d_k y_jk (s_ik - d_k / 2) + const_i``, images for report ``j`` by the posterior (that likelihood over its mean
  across reports); no ranker that sees only this evidence does better on average;
* ranks with pessimistic ties as :func:`common.evaluation.retrieval.retrieval_ranks`, averaged over ``draws`` noise
  draws (the interval spans the draws' 2.5-97.5 percentiles).

It sweeps one AUROC level shared by every finding, and, given evaluation directories, uses each run's measured
per-finding zero-shot (and linear-probe) AUROCs. If a run's expected R@5 is at chance, its measured R@5 at chance says
nothing against the method: its image side does not know enough findings yet.

Usage::

    python scripts/retrieval_ceiling.py run --datalist ~/.cache/medvlp/phantoms-v2.1/datalist_3d.json --dims 3 \\
        --evaluations "{'g2d_ct demo': 'runs/g2d_ct/runs/evaluation'}" --out_dir ceiling
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from common.data.contract import load_datalist
from common.data.finding_sets import finding_set
from common.evaluation.report import EvaluationReport
from common.transforms.labels import LabelVectord

__all__ = ["expected_recall", "run", "split_labels"]


def split_labels(datalist: str, dims: int = 3, split: str = "test") -> tuple[np.ndarray, list[str]]:
    """``(N, K)`` 0/1 labels of the split's labelled records (unknown as absent) and the K finding names (the phantom
    vocabulary: CT-RATE's 18 findings for ``dims`` 3, the radiograph findings for 2)."""
    vocabulary = finding_set("phantom", dims=dims)
    to_vector = LabelVectord(findings=vocabulary)
    rows = [to_vector(r)["labels_vector"].numpy() for r in load_datalist(datalist, split) if r.get("labels")]
    if len(rows) < 6:
        raise ValueError(f"{datalist}: {len(rows)} labelled {split} records; retrieval needs more than 5")
    return np.nan_to_num(np.stack(rows).astype(np.float64)), [f.name for f in vocabulary]


def _ranks(log_likelihood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks (pessimistic ties) of the true match: image -> report and report -> image.

    ``log_likelihood[i, j]`` is ``log p(evidence_i | report_j)`` up to a per-image constant. Given image ``i`` the
    posterior over reports is proportional to the likelihood (rows rank as they are); given report ``j`` the posterior
    over images divides each image's likelihood by its mean over all reports (the columns rank after a per-row
    log-sum-exp normalisation).
    """
    true = np.diag(log_likelihood)
    image_to_text = (log_likelihood >= true[:, None]).sum(axis=1)
    posterior = log_likelihood - logsumexp(log_likelihood, axis=1, keepdims=True)
    text_to_image = (posterior >= np.diag(posterior)[None, :]).sum(axis=0)
    return image_to_text, text_to_image


def expected_recall(
    labels: np.ndarray, aurocs: Sequence[float], k: int = 5, draws: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Mean R@k over noise draws, both directions, with the draws' 95 % range (see the module docstring)."""
    a = np.clip(np.asarray(aurocs, dtype=np.float64), 0.5, 1 - 1e-6)
    if a.shape != (labels.shape[1],):
        raise ValueError(f"{a.size} AUROCs for {labels.shape[1]} findings")
    d = np.sqrt(2.0) * norm.ppf(a)
    rng = np.random.default_rng(seed)
    weights = labels * d  # (N, K): d_k y_jk of every report
    offsets = (weights * d / 2).sum(axis=1)  # sum_k d_k^2 y_jk / 2
    hits = {"image_to_text": [], "text_to_image": []}
    for _ in range(draws):
        evidence = labels * d + rng.standard_normal(labels.shape)
        similarity = evidence @ weights.T - offsets[None, :]
        for name, ranks in zip(hits, _ranks(similarity)):
            hits[name].append(float((ranks <= k).mean()))
    out: dict[str, Any] = {"k": k, "draws": draws}
    for name, values in hits.items():
        low, high = np.percentile(values, [2.5, 97.5])
        out[name] = {"mean": float(np.mean(values)), "range": [float(low), float(high)]}
    return out


def _measured_aurocs(directory: str, names: list[str]) -> dict[str, list[float]]:
    """Per-finding AUROCs of the zero-shot and linear-probe sections that score every finding of ``names``."""
    results = EvaluationReport.load(directory)["results"]
    out = {}
    for section in ("zero_shot", "linear_probe"):
        per_label = results.get(section, {}).get("per_label", {})
        if all(per_label.get(n, {}).get("auroc") is not None for n in names):
            out[section] = [max(0.5, per_label[n]["auroc"]) for n in names]  # below 0.5: no usable evidence
    if not out:
        raise ValueError(
            f"{directory}: no zero_shot or linear_probe section scores all {len(names)} findings of this finding set "
            "(another --dims, or an evaluation without those sections?)"
        )
    return out


def run(
    datalist: str,
    dims: int = 3,
    evaluations: Mapping[str, str] | None = None,
    levels: Sequence[float] = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99),
    k: int = 5,
    draws: int = 200,
    seed: int = 0,
    out_dir: str = "retrieval_ceiling",
) -> dict[str, Any]:
    """Write ``retrieval_ceiling.json`` and ``retrieval_ceiling.png`` and print a Markdown table."""
    labels, names = split_labels(datalist, dims)
    n = len(labels)
    result: dict[str, Any] = {"n_cases": n, "chance": min(1.0, k / n), "k": k, "levels": {}, "evaluations": {}}
    for level in levels:
        result["levels"][f"{level:.2f}"] = expected_recall(labels, [level] * len(names), k, draws, seed)
    for run_name, directory in (evaluations or {}).items():
        for section, aurocs in _measured_aurocs(directory, names).items():
            entry = expected_recall(labels, aurocs, k, draws, seed)
            entry["mean_auroc"] = float(np.mean(aurocs))
            result["evaluations"][f"{run_name} ({section})"] = entry
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_ceiling.json").write_text(json.dumps(result, indent=2))
    _plot(result, out / "retrieval_ceiling.png")
    lines = [
        f"{n} test cases, chance R@{k} {result['chance']:.3f}; image side with the given per-finding AUROC, report "
        + "side exact, best possible ranking",
        "",
        f"| image evidence | expected R@{k} image->report [draws' 95 % range] | report->image |",
        "|---|---|---|",
    ]
    rows = [(f"every finding at AUROC {level}", entry) for level, entry in result["levels"].items()]
    rows += [(f"{name}, mean {entry['mean_auroc']:.3f}", entry) for name, entry in result["evaluations"].items()]
    for label, entry in rows:
        cells = [
            f"{entry[d]['mean']:.3f} [{entry[d]['range'][0]:.3f}, {entry[d]['range'][1]:.3f}]"
            for d in ("image_to_text", "text_to_image")
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines))
    return result


def _plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [float(level) for level in result["levels"]]
    means = [entry["image_to_text"]["mean"] for entry in result["levels"].values()]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(levels, means, marker="o", label="every finding at this AUROC")
    for name, entry in result["evaluations"].items():
        ax.scatter([entry["mean_auroc"]], [entry["image_to_text"]["mean"]], marker="x", label=name)
    ax.axhline(result["chance"], color="grey", linestyle="--", label="chance")
    ax.set_xlabel("per-finding AUROC of the image side")
    ax.set_ylabel(f"expected image->report R@{result['k']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run})
