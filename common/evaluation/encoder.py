"""Frozen image-encoder evaluation: linear and kNN probes on global embeddings, optionally against a baseline.

Takes any encoder ``images -> (B, D)`` (a DINO CLS encoder, an image tower); image-only methods (RAD-DINO) evaluate
with it, paired methods use :mod:`common.evaluation.two_tower`, which adds the text side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from common.data.dataset import records_loader
from common.data.findings import FINDINGS, Finding
from common.evaluation.extract import extract_features
from common.evaluation.harness import evaluate_embeddings
from common.evaluation.report import EvaluationReport, format_table

__all__ = ["evaluate_encoder", "finding_names", "global_features"]


def finding_names(findings: Sequence[Finding | str]) -> list[str]:
    """Display names of findings given as :class:`Finding` or plain strings."""
    return [f.name if isinstance(f, Finding) else str(f) for f in findings]


@torch.no_grad()
def global_features(
    encoder: torch.nn.Module,
    loaders: Sequence[Iterable],
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The encoder's global embeddings (``embedding``) and the batches' labels, one dict per loader (eval mode)."""
    encoder = encoder.to(device).eval()

    def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": encoder(images)}

    return [extract_features(encode, loader, device, amp_dtype=amp_dtype, progress=progress) for loader in loaders]


@torch.no_grad()
def evaluate_encoder(
    encoder: torch.nn.Module,
    train_records: list[dict],
    test_records: list[dict],
    transform: Callable,
    output_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    findings: Sequence[Finding | str] = FINDINGS,
    batch_size: int = 8,
    num_workers: int = 0,
    n_bootstrap: int = 1000,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    bundle: str = "",
    checkpoint: str | None = None,
    baseline_encoder: torch.nn.Module | None = None,
    baseline_name: str = "random_init",
) -> dict[str, Any]:
    """Frozen global embeddings -> linear probe and kNN probe (train records -> test records), written to ``output_dir``.

    Args:
        encoder: ``images -> (B, D)`` (eval mode is set here).
        train_records, test_records: datalist records with ``labels``.
        transform: deterministic preprocessing producing ``image`` and ``labels_vector``.
        output_dir: where ``results.json``, ``summary.md`` and figures go.
        baseline_encoder: optional second encoder (e.g. the random initialisation) probed the same way; the
            results then hold its probes and the paired-bootstrap AUROC differences (``*_vs_<baseline_name>``).
    """
    device = torch.device(device)
    loaders = [records_loader(records, transform, batch_size, num_workers) for records in (train_records, test_records)]
    features = {
        name: global_features(model, loaders, device, amp_dtype=amp_dtype)
        for name, model in (("model", encoder), (baseline_name, baseline_encoder))
        if model is not None
    }
    train, test = features["model"]
    baseline = features.get(baseline_name, [{}, {}])
    report = EvaluationReport(output_dir, bundle=bundle, checkpoint=checkpoint, seed=seed)
    results = evaluate_embeddings(
        test["embedding"],
        test["labels"],
        finding_names(findings),
        train_emb=train["embedding"],
        train_labels=train["labels"],
        baseline_train_emb=baseline[0].get("embedding"),
        baseline_test_emb=baseline[1].get("embedding"),
        baseline_name=baseline_name,
        n_bootstrap=n_bootstrap,
        seed=seed,
        report=report,
        case_ids=[str(record["image"]) for record in test_records],
    )
    report.write()
    print(format_table(results))
    return results
