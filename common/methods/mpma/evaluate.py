"""MPMA's multi-modal evaluation: a linear probe on the fused image + report representation beside image-only and
text-only probes, and the masked-token accuracy of the report reconstruction on held-out reports.

The abstract claims gains on "uni-modal, cross-modal and multi-modal" tasks; the uni- and cross-modal ones run through
the common harness (``common.evaluation.two_tower``); this is the multi-modal one on data we have: image + report ->
findings. The objective (with its fusion stack and MLM head) is the one training exports (``models/mpma_objective.pt``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from common.data.contract import DataContractError
from common.evaluation.metrics import multilabel_auroc, paired_auroc_difference, paired_ratio_difference
from common.evaluation.probes import linear_probe_scores
from common.evaluation.report import to_jsonable
from common.losses.masked_token_loss import IGNORE_INDEX
from common.methods.mpma.objective import MPMAPretraining

__all__ = [
    "compare_masked_tokens",
    "encode_pairs",
    "evaluate_multimodal",
    "masked_token_summary",
    "read_masked_tokens",
    "write_masked_tokens",
]

#: the per-token outputs of the report reconstruction beside ``multimodal.json`` (one row per masked token)
MASKED_TOKENS_FILE = "masked_tokens.csv"

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_pairs(objective: MPMAPretraining, loader: Any, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Image, text and fused embeddings, labels, and the masked tokens' targets, arg-max predictions and case rows
    (``masked_cases``: the record's position in ``loader``) of every paired record of ``loader``.

    Batches carry ``image``, ``input_ids``, ``attention_mask``, ``mlm_input_ids``, ``mlm_labels`` and
    ``labels_vector``. The text reconstruction sees the whole image and the masked report.
    """
    objective.eval()
    model = objective.model
    out: dict[str, list[np.ndarray]] = {"image": [], "text": [], "fused": [], "labels": []}
    targets: list[np.ndarray] = []
    predictions: list[np.ndarray] = []
    cases: list[np.ndarray] = []
    seen = 0
    for batch in loader:
        image = torch.as_tensor(batch["image"]).to(device)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out["image"].append(model.encode_image(image).cpu().numpy())
        out["text"].append(model.encode_text(ids, mask).cpu().numpy())
        out["fused"].append(objective.fused_embedding(image, ids, mask).cpu().numpy())
        out["labels"].append(torch.as_tensor(batch["labels_vector"]).float().numpy())
        if objective.mlm_head is not None:
            labels = batch["mlm_labels"].to(device)
            fused = objective.fuse(image, batch["mlm_input_ids"].to(device), mask)
            selected = labels != IGNORE_INDEX
            if bool(selected.any()):
                targets.append(labels[selected].cpu().numpy())
                predictions.append(objective.mlm_head(fused.text[selected]).argmax(dim=-1).cpu().numpy())
                rows = torch.arange(seen, seen + len(labels), device=labels.device)[:, None].expand_as(labels)
                cases.append(rows[selected].cpu().numpy())
        seen += len(image)
    result = {key: np.concatenate(parts) for key, parts in out.items()}
    result["masked_targets"] = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    result["masked_predictions"] = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    result["masked_cases"] = np.concatenate(cases) if cases else np.zeros(0, dtype=np.int64)
    return result


def masked_token_summary(targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """Masked-token accuracy beside the best constant guess (the share of the most frequent target token).

    ``distinct_predictions`` counts the different tokens predicted: 1 means the head always guesses one token, and
    its accuracy is that token's share of the targets, not reconstruction.
    """
    total = int(targets.size)
    correct = int((predictions == targets).sum())
    _, counts = np.unique(targets, return_counts=True)
    return {
        "correct": correct,
        "total": total,
        "accuracy": correct / max(total, 1),
        "most_frequent_target_share": float(counts.max() / total) if total else 0.0,
        "distinct_predictions": int(np.unique(predictions).size),
    }


def write_masked_tokens(
    path: str | os.PathLike, cases: np.ndarray, targets: np.ndarray, predictions: np.ndarray
) -> None:
    """One CSV row per masked token: the test case's row, the target token id and the predicted one (written to a
    temporary file and renamed, as ``per_case.csv``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "target", "prediction"])
        writer.writerows(zip(cases.tolist(), targets.tolist(), predictions.tolist()))
    tmp.replace(path)


def read_masked_tokens(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{"case", "target", "prediction"}`` integer arrays from :func:`write_masked_tokens`'s CSV (or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MASKED_TOKENS_FILE
    columns = ("case", "target", "prediction")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        if reader.fieldnames is None or not set(columns) <= set(reader.fieldnames):
            raise KeyError(f"columns {list(columns)} expected, header {reader.fieldnames}")
        return {key: np.asarray([int(r[key]) for r in rows], dtype=np.int64) for key in columns}
    except (OSError, KeyError, ValueError) as err:
        raise DataContractError(path, f"cannot read the masked-token outputs ({type(err).__name__}: {err})") from err


def compare_masked_tokens(
    reference: tuple[str, str | os.PathLike],
    others: Mapping[str, str | os.PathLike],
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Masked-token accuracy of several evaluations of the same masked reports, paired against ``reference``.

    The evaluate workflow masks the held-out reports with a fixed seed, so runs with the same data and seed predict
    the same masked positions; the difference ``accuracy(other) - accuracy(reference)`` is resampled over test cases
    (reports), each carrying all its masked tokens (:func:`~common.evaluation.metrics.paired_ratio_difference`:
    tokens of one report are not independent).

    Raises:
        ValueError: the reference has no masked tokens, or the runs did not mask the same tokens (another seed,
            datalist or masking ratio).
    """
    ref_name, ref_path = reference
    ref = read_masked_tokens(ref_path)
    if not ref["case"].size:
        raise ValueError(f"{ref_name}: no masked tokens in {ref_path} (a run without the text reconstruction?)")
    n_cases = int(ref["case"].max()) + 1
    tokens = np.bincount(ref["case"], minlength=n_cases)
    ref_correct = np.bincount(ref["case"], weights=ref["target"] == ref["prediction"], minlength=n_cases)
    result: dict[str, Any] = {
        "reference": ref_name,
        "n_cases": n_cases,
        "n_tokens": int(tokens.sum()),
        "accuracy": {ref_name: float(ref_correct.sum() / max(tokens.sum(), 1))},
        "differences": {},
    }
    for name, path in others.items():
        other = read_masked_tokens(path)
        if not (np.array_equal(other["case"], ref["case"]) and np.array_equal(other["target"], ref["target"])):
            raise ValueError(f"{name}: not the same masked tokens as {ref_name} (another seed, datalist or ratio?)")
        correct = np.bincount(other["case"], weights=other["target"] == other["prediction"], minlength=n_cases)
        result["accuracy"][name] = float(correct.sum() / max(tokens.sum(), 1))
        difference = paired_ratio_difference(correct, ref_correct, tokens, n_bootstrap, seed, ci_level)
        result["differences"][name] = {k: difference[k] for k in ("difference", "difference_ci")}
    return result


def evaluate_multimodal(
    objective: MPMAPretraining,
    train_records: Sequence[Mapping[str, Any]],
    test_records: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    output_dir: str | os.PathLike,
    findings: Sequence[Any],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Probe image-only, text-only and fused embeddings for the findings; write ``multimodal.json``.

    Args:
        objective: the trained MPMA objective (e.g. ``load_weights(objective_def, objective_path)``).
        train_records, test_records: paired records with ``labels`` (probe training / testing).
        transform: record -> ``image``, ``input_ids``, ``attention_mask``, ``mlm_input_ids``, ``mlm_labels``,
            ``labels_vector`` (preprocessing, tokenisation and :class:`common.transforms.mlm.RandWholeWordMaskd`).
        output_dir: where ``multimodal.json`` goes.
        findings: the label vocabulary (names in the output).
        device, batch_size, n_bootstrap, seed: as for the common harness.

    Returns:
        ``{"linear_probe": {"image"|"text"|"fused": macro AUROC dict}, "fused_vs_image": paired difference,
        "fused_vs_text": ..., "masked_token_accuracy": ...}``; the masked tokens themselves go to
        ``masked_tokens.csv`` (:func:`compare_masked_tokens` pairs two runs on them).
    """
    objective.to(device)
    names = [getattr(f, "name", str(f)) for f in findings]
    paired = lambda records: [r for r in records if r.get("report") and "labels" in r]
    loaders = {
        split: DataLoader(Dataset(paired(records), transform), batch_size=batch_size, num_workers=0)
        for split, records in (("train", train_records), ("test", test_records))
    }
    encoded = {split: encode_pairs(objective, loader, device) for split, loader in loaders.items()}
    train, test = encoded["train"], encoded["test"]
    scores = {
        view: linear_probe_scores(train[view], train["labels"], test[view], seed=seed)[0]
        for view in ("image", "text", "fused")
    }
    results: dict[str, Any] = {
        "n_train": len(train["labels"]),
        "n_test": len(test["labels"]),
        "linear_probe": {
            view: multilabel_auroc(s, test["labels"], names, n_bootstrap=n_bootstrap, seed=seed)
            for view, s in scores.items()
        },
    }
    for baseline in ("image", "text"):
        results[f"fused_vs_{baseline}"] = paired_auroc_difference(
            scores["fused"], scores[baseline], test["labels"], names, n_bootstrap=n_bootstrap, seed=seed
        )
    results["masked_token_accuracy"] = masked_token_summary(test["masked_targets"], test["masked_predictions"])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multimodal.json").write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False))
    write_masked_tokens(
        out / MASKED_TOKENS_FILE, test["masked_cases"], test["masked_targets"], test["masked_predictions"]
    )
    for view in ("image", "text", "fused"):
        macro = results["linear_probe"][view]["macro"]
        logger.info("linear probe on %s embeddings: macro AUROC %s", view, macro)
    summary = results["masked_token_accuracy"]
    logger.info(
        "masked-token accuracy on held-out reports: %d / %d (most frequent target's share %.3f, %d distinct predictions)",
        summary["correct"],
        summary["total"],
        summary["most_frequent_target_share"],
        summary["distinct_predictions"],
    )
    return results
