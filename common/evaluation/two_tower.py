"""Frozen two-tower evaluation for any paired method: zero-shot AUROC, retrieval, probes, segmentation probe.

Takes any model exposing ``encode_image`` / ``encode_text`` and ``softmax_temperature``
(:class:`common.networks.two_tower.TwoTowerModel`); the segmentation probe additionally reads the image tower's
token map (``model.image_encoder.patch_embeddings`` and ``pool``), and is skipped for a model without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from common.data.dataset import records_loader
from common.data.findings import FINDINGS, Finding
from common.evaluation.encoder import finding_names
from common.evaluation.extract import extract_features
from common.evaluation.harness import evaluate_embeddings
from common.evaluation.report import EvaluationReport, format_table
from common.networks.two_tower import encode_texts
from common.transforms.text import prompt_pairs

__all__ = ["evaluate_two_tower", "prompt_embeddings"]


def _image_encoder(model: Any, segmentation: bool) -> tuple[Callable[[torch.Tensor], dict[str, torch.Tensor]], bool]:
    """``images -> {"embedding", ["patches"]}``; the flag says whether token maps are available."""
    tower = getattr(model, "image_encoder", None)
    if segmentation and hasattr(tower, "patch_embeddings") and hasattr(tower, "pool"):

        def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
            patches = tower.patch_embeddings(images)
            return {"embedding": tower.pool(patches), "patches": patches}

        return encode, True
    return (lambda images: {"embedding": model.encode_image(images)}), False


@torch.no_grad()
def prompt_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    findings: Sequence[Finding | str] = FINDINGS,
    max_text_length: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """``(K, P, D)`` embeddings of the P "present" and the P paired "absent" prompts of each of K findings."""
    pairs = prompt_pairs(findings)
    keys = list(pairs)
    num_prompts = len(next(iter(pairs.values()))[0])

    def embed(side: int) -> np.ndarray:
        texts = [t for k in keys for t in pairs[k][side]]
        emb = encode_texts(texts, model, tokenizer, max_length=max_text_length, device=device)
        return emb.reshape(len(keys), num_prompts, -1)

    return embed(0), embed(1)


def evaluate_two_tower(
    model: torch.nn.Module,
    tokenizer: Any,
    train_records: list[dict],
    test_records: list[dict],
    image_transform: Callable,
    output_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    findings: Sequence[Finding | str] = FINDINGS,
    batch_size: int = 4,
    num_workers: int = 0,
    max_text_length: int = 512,
    segmentation: bool = True,
    segmentation_kwargs: dict | None = None,
    n_bootstrap: int = 1000,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    bundle: str = "",
    checkpoint: str | None = None,
    report_transform: Callable | None = None,
) -> dict[str, Any]:
    """Zero-shot AUROC, report<->image retrieval, linear/kNN probes and (optionally) a segmentation probe.

    Args:
        model: trained two-tower model (eval mode is set here).
        tokenizer: the text tower's tokenizer.
        train_records, test_records: datalist records with ``labels`` (and ``report`` for retrieval, ``mask``
            for the segmentation probe); the probes fit on ``train_records`` and score on ``test_records``.
        image_transform: deterministic preprocessing producing ``image`` (and ``mask`` on the patch grid's
            input space), ``labels_vector`` and ``report``.
        output_dir: where ``results.json``, ``summary.md``, figures and TensorBoard logs go.
        report_transform: applied to a copy of each test record before its ``report`` is embedded for retrieval
            (the training text preprocessing: cleaning, token budget that keeps the impression, sections);
            None embeds the raw report, truncated at ``max_text_length``.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    encode, has_patches = _image_encoder(model, segmentation)
    train = extract_features(
        encode, records_loader(train_records, image_transform, batch_size, num_workers), device, amp_dtype=amp_dtype
    )
    test = extract_features(
        encode, records_loader(test_records, image_transform, batch_size, num_workers), device, amp_dtype=amp_dtype
    )

    def embed_texts(texts: list[str]) -> np.ndarray:
        return encode_texts(texts, model, tokenizer, max_length=max_text_length, device=device)

    pos, neg = prompt_embeddings(model, tokenizer, findings, max_text_length, device)
    reports = [r.get("report") for r in test_records]
    if report_transform is not None and all(isinstance(r, str) and r.strip() for r in reports):
        reports = [report_transform(dict(record))["report"] for record in test_records]
    text_emb = embed_texts(reports) if all(isinstance(r, str) and r.strip() for r in reports) else None
    names = finding_names(findings)

    seg_inputs: dict[str, Any] = {}
    if has_patches and "mask" in train and "mask" in test:
        seg_inputs = {
            "train_patch_features": train["patches"],
            "train_masks": train["mask"][:, 0].astype(np.int64),
            "test_patch_features": test["patches"],
            "test_masks": test["mask"][:, 0].astype(np.int64),
            "segmentation_kwargs": {
                "num_classes": len(names) + 1,
                "class_names": ["background", *names],
                **(segmentation_kwargs or {}),
            },
        }
    report = EvaluationReport(output_dir, bundle=bundle, checkpoint=checkpoint, seed=seed)
    results = evaluate_embeddings(
        test["embedding"],
        test["labels"],
        names,
        train_emb=train["embedding"],
        train_labels=train["labels"],
        test_text_emb=text_emb,
        pos_prompt_emb=pos,
        neg_prompt_emb=neg,
        temperature=float(model.softmax_temperature),
        n_bootstrap=n_bootstrap,
        seed=seed,
        report=report,
        case_ids=[str(record["image"]) for record in test_records],
        **seg_inputs,
    )
    report.write()
    print(format_table(results))
    return results
