"""Do a bundle's report embeddings rank reports by their findings? Text-side diagnostics without any training.

Retrieval R@5 needs the report embedding to single out a report through what the image can know: its findings. For
each way of reading the reports (the bundle's own text preprocessing, and the same restricted to chosen sections),
this script embeds the training and test reports with the bundle's text tower (untrained: the pretrained backbone and
a freshly initialised projector; or trained: ``--model_path``) and measures, on the test reports:

* ``probe_auroc``: macro AUROC of one logistic regression per finding fitted on the training reports' embeddings
  (:func:`common.evaluation.probes.linear_probe_scores`): do the embeddings encode the findings at all?
* ``cosine_vs_jaccard``: Spearman correlation, over all test report pairs, of their cosine similarity and the Jaccard
  overlap of their finding sets: does "close" mean "same findings"?
* ``labels_to_report_R@5``: a ridge map from the 0/1 finding vector to the embedding, fitted on the training reports,
  retrieves each test report among all test reports from its own finding vector (cosine, pessimistic ties as
  :func:`common.evaluation.retrieval.retrieval_ranks`): the R@5 an image side that knew every finding exactly could
  reach against these report embeddings through a linear read-out (chance 5 / N);
* ``mean_cosine``: the mean off-diagonal cosine of the test reports (how crowded the embeddings are);
* ``tokens_median``: median token count of the text as read (before truncation at ``max_text_length``).

The ``backbone`` rows use the backbone's mask-averaged last hidden state (no projector); the ``tower`` rows the full
text tower (``encode_text``). Image->report retrieval itself needs the images: the evaluate workflow embeds the
reports with the same text preprocessing (``report_sections``) as training.

Usage::

    python scripts/report_embedding_diagnostics.py run \\
        --config_files "['bundles/g2d_ct/configs/train.yaml','bundles/g2d_ct/configs/demo.yaml']" \\
        --sections "{'as trained': None, 'impression only': ['impression']}" [--model_path OUT/models/g2d_model.pt]
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from common.data.contract import load_datalist
from common.evaluation.probes import linear_probe_scores
from common.evaluation.retrieval import retrieval_ranks
from common.networks.pooling import masked_mean
from common.networks.two_tower import encode_texts
from common.networks.weights import load_weights
from common.transforms.labels import LabelVectord
from common.transforms.text import FitReportToTokenBudgetd, SelectReportSectionsd

__all__ = ["diagnose", "run"]


def _read_reports(records: Sequence[dict], preprocessing: Sequence[Any], sections: Sequence[str] | None) -> list[str]:
    """Each record's report through the bundle's text preprocessing, its section choice (the token budget's and the
    selection's) replaced by ``sections`` when given."""
    out = []
    for record in records:
        d = {"report": record["report"], "labels": record["labels"]}
        for transform in preprocessing:
            if sections and isinstance(transform, (FitReportToTokenBudgetd, SelectReportSectionsd)):
                transform = copy.copy(transform)
                transform.sections = tuple(sections)
                if isinstance(transform, FitReportToTokenBudgetd):
                    transform.keep = tuple(s for s in transform.keep if s in sections)
            d = transform(d)
        out.append(d["report"])
    return out


@torch.no_grad()
def _backbone_embeddings(texts: Sequence[str], model: Any, tokenizer: Any, max_length: int) -> np.ndarray:
    backbone = model.text_encoder.backbone
    out = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(list(texts[start : start + 32]), padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")  # fmt: skip
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out.append(masked_mean(hidden, batch["attention_mask"].bool()).float().numpy())
    return np.concatenate(out)


def diagnose(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """The four figures of the module docstring for one set of embeddings (rows L2-normalised here)."""
    train_emb = train_emb / np.linalg.norm(train_emb, axis=1, keepdims=True)
    test_emb = test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True)
    scores, _ = linear_probe_scores(train_emb, train_y, test_emb)
    evaluable = [
        k for k in range(test_y.shape[1]) if 0 < test_y[:, k].sum() < len(test_y) and not np.isnan(scores[:, k]).any()
    ]
    probe = float(np.mean([roc_auc_score(test_y[:, k], scores[:, k]) for k in evaluable]))
    cos = test_emb @ test_emb.T
    inter = test_y @ test_y.T
    union = test_y.sum(1)[:, None] + test_y.sum(1)[None, :] - inter
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    upper = np.triu_indices(len(test_emb), k=1)
    rho = float(spearmanr(cos[upper], jaccard[upper]).statistic)
    ridge = Ridge(alpha=1.0).fit(train_y, train_emb)
    ranks = retrieval_ranks(ridge.predict(test_y), test_emb)
    return {
        "probe_auroc": probe,
        "cosine_vs_jaccard": rho,
        "labels_to_report_R@5": float((ranks <= 5).mean()),
        "mean_cosine": float(cos[upper].mean()),
    }


def _labels(records: Sequence[dict], findings: Sequence[Any]) -> np.ndarray:
    """``(N, K)`` 0/1 finding vectors through the bundles' :class:`LabelVectord` (a label key outside ``findings`` or a
    value other than 0/1 is a named error); unknown (null) labels count as absent."""
    vector = LabelVectord("labels", findings)
    rows = [vector({"labels": r["labels"], "image": r.get("image")})["labels_vector"].numpy() for r in records]
    return np.nan_to_num(np.stack(rows).astype(np.float64), nan=0.0)


def _paired_labelled(records: Sequence[dict], split: str) -> list[dict]:
    """The records with both a report and labels (the others are counted, not used)."""
    kept = [r for r in records if r.get("report") and r.get("labels")]
    if len(kept) < len(records):
        print(f"{split}: {len(records) - len(kept)} of {len(records)} record(s) without a report or labels skipped")
    return kept


def run(
    config_files: Sequence[str],
    sections: Mapping[str, Sequence[str] | None] | None = None,
    model_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: str | None = None,
) -> None:
    """Diagnose the bundle's text tower (trained when ``model_path`` is given) for every reading in ``sections``."""
    parser = ConfigParser()
    parser.read_config(list(config_files))
    for key, value in (overrides or {}).items():
        parser[key] = value
    torch.manual_seed(int(parser.get_parsed_content("seed")))
    model = parser.get_parsed_content("model")
    if model_path:
        load_weights(model, model_path)
    model.eval()
    tokenizer = parser.get_parsed_content("tokenizer")
    max_length = int(parser.get_parsed_content("max_text_length"))
    preprocessing = [t for t in parser.get_parsed_content("text_preprocessing")]
    findings = parser.get_parsed_content("findings")
    datalist = parser.get_parsed_content("datalist")
    train, test = (_paired_labelled(load_datalist(datalist, split), split) for split in ("training", "test"))
    train_y, test_y = _labels(train, findings), _labels(test, findings)
    results: dict[str, dict[str, float]] = {}
    for name, chosen in (sections or {"as trained": None}).items():
        train_text = _read_reports(train, preprocessing, chosen)
        test_text = _read_reports(test, preprocessing, chosen)
        lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in test_text]
        for side in ("backbone", "tower"):
            if side == "backbone":
                tr, te = (_backbone_embeddings(t, model, tokenizer, max_length) for t in (train_text, test_text))
            else:
                tr, te = (encode_texts(t, model, tokenizer, max_length=max_length) for t in (train_text, test_text))
            row = diagnose(tr, train_y, te, test_y)
            row["tokens_median"] = float(np.median(lengths))
            results[f"{name} / {side}"] = row
            print(f"{name} / {side}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print(f"chance labels_to_report_R@5 = {5 / len(test):.3f} ({len(test)} test reports)")
    if out:
        Path(out).write_text(json.dumps({"model_path": model_path, "results": results}, indent=2))


if __name__ == "__main__":
    fire.Fire({"run": run})
