"""RAD-DINO bundle workflow steps too long for a config line: export, weight loading, frozen-encoder evaluation.

Both ``raddino_cxr`` (2D) and ``raddino_ct`` (3D) call these; only their configs differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from common.data.dataset import PretrainingDataset, pretraining_collate
from common.data.findings import FINDINGS, Finding
from common.engines.checkpoint import export_inference_weights
from common.evaluation import EvaluationReport, evaluate_embeddings, format_table
from common.evaluation.extract import extract_features
from common.networks.dino import DinoClsEncoder

__all__ = [
    "teacher_encoder", "export_rad_dino", "load_encoder_weights", "records_loader", "cls_features", "evaluate_rad_dino"
]

logger = logging.getLogger(__name__)


def teacher_encoder(objective: torch.nn.Module) -> DinoClsEncoder:
    """The inference network around the EMA teacher's backbone (DINOv2 evaluates the teacher)."""
    objective = getattr(objective, "module", objective)  # DDP
    return DinoClsEncoder(objective.teacher["backbone"])


def export_rad_dino(objective: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the teacher's :class:`~common.networks.dino.DinoClsEncoder` as a flat state dict (``models/model.pt``)."""
    out = export_inference_weights(teacher_encoder(objective), path)
    logger.info("exported the teacher encoder to %s", out)
    return out


def load_encoder_weights(encoder: torch.nn.Module, path: str | os.PathLike | None) -> torch.nn.Module:
    """Load a flat state dict strictly (``weights_only``/safetensors); ``path=None`` keeps the random initialisation.

    Raises:
        FileNotFoundError: ``path`` is given but does not exist.
    """
    if path is None:
        logger.warning("no weights given: evaluating a randomly initialised encoder (baseline)")
        return encoder
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights; train first (configs/train.yaml) or give --model_path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state, strict=True)
    return encoder


def records_loader(records: list[dict], transform: Callable, batch_size: int, num_workers: int) -> DataLoader:
    """An ordered, unshuffled loader over datalist records (frozen-encoder feature extraction)."""
    dataset = PretrainingDataset(records, transform, seed=0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=pretraining_collate)


@torch.no_grad()
def cls_features(
    encoder: torch.nn.Module,
    loaders: Sequence[Iterable],
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The encoder's CLS embeddings (``embedding``) and the batches' labels, one dict per loader (eval mode)."""
    encoder = encoder.to(device).eval()

    def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": encoder(images)}

    return [extract_features(encode, loader, device, amp_dtype=amp_dtype, progress=progress) for loader in loaders]


@torch.no_grad()
def evaluate_rad_dino(
    encoder: DinoClsEncoder,
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
    bundle: str = "raddino",
    checkpoint: str | None = None,
    baseline_encoder: DinoClsEncoder | None = None,
    baseline_name: str = "random_init",
) -> dict[str, Any]:
    """Frozen CLS embeddings -> linear probe and kNN probe (train records -> test records), written to ``output_dir``.

    Args:
        encoder: the inference network (eval mode is set here).
        train_records, test_records: datalist records with ``labels``.
        transform: deterministic preprocessing producing ``image`` and ``labels_vector``.
        output_dir: where ``results.json``, ``summary.md`` and figures go.
        baseline_encoder: optional second encoder (e.g. the random initialisation) probed the same way; the
            results then hold its probes and the paired-bootstrap AUROC differences (``*_vs_<baseline_name>``).
    """
    device = torch.device(device)
    loaders = [records_loader(records, transform, batch_size, num_workers) for records in (train_records, test_records)]
    features = {
        name: cls_features(model, loaders, device, amp_dtype=amp_dtype)
        for name, model in (("model", encoder), (baseline_name, baseline_encoder))
        if model is not None
    }
    train, test = features["model"]
    baseline = features.get(baseline_name, [{}, {}])
    names = [f.name if isinstance(f, Finding) else str(f) for f in findings]
    report = EvaluationReport(output_dir, bundle=bundle, checkpoint=checkpoint, seed=seed)
    results = evaluate_embeddings(
        test["embedding"], test["labels"], names, train_emb=train["embedding"], train_labels=train["labels"],
        baseline_train_emb=baseline[0].get("embedding"), baseline_test_emb=baseline[1].get("embedding"),
        baseline_name=baseline_name, n_bootstrap=n_bootstrap, seed=seed, report=report,
    )
    report.write()
    print(format_table(results))
    return results
