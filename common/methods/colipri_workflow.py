"""COLIPRI bundle workflow steps that are too long for a config line: export and frozen-encoder evaluation.

Both the 3D (``colipri_ct``) and 2D (``colipri_cxr``) bundles call these; only configs differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.dataset import PretrainingDataset, pretraining_collate
from common.data.findings import FINDINGS, Finding
from common.engines.checkpoint import export_inference_weights
from common.evaluation import EvaluationReport, evaluate_embeddings, format_table
from common.evaluation.extract import extract_features
from common.methods.colipri import ColipriPretraining
from common.methods.colipri_inference import encode_texts
from common.networks.colipri import ColipriModel, ZeroShotClassifier
from common.transforms.text import build_prompts

__all__ = ["prompt_pairs", "prepare_objective", "param_groups", "export_colipri", "load_model_weights", "evaluate_colipri"]

logger = logging.getLogger(__name__)


def prompt_pairs(findings: Sequence[Finding | str] = FINDINGS, num_prompts: int | None = None) -> dict[str, tuple]:
    """``{finding_key: (positive prompts, negative prompts)}`` from :func:`common.transforms.text.build_prompts`."""
    prompts = build_prompts(findings, num_prompts=num_prompts)
    return {key: (list(pos), list(neg)) for key, pos, neg in zip(prompts.keys, prompts.positive, prompts.negative)}


def prepare_objective(
    objective: ColipriPretraining, device: torch.device | str, activation_checkpointing: bool = False
) -> ColipriPretraining:
    """Move ``objective`` to ``device`` and switch activation checkpointing on every tower that supports it."""
    if activation_checkpointing:
        objective.model.image_encoder.backbone.set_grad_checkpointing(True)
        text = objective.model.text_encoder
        if text is not None and hasattr(text.backbone, "gradient_checkpointing_enable"):
            text.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for decoder in (objective.mae_decoder, objective.report_decoder):
            if decoder is not None:
                decoder.set_grad_checkpointing(True)
    return objective.to(device)


def param_groups(objective: torch.nn.Module, weight_decay: float, text_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, scales and tokens; the text backbone at ``text_lr_scale``."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in objective.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or "token" in name.split(".")[-1]
        is_text = ".text_encoder.backbone." in f".{name}"
        groups.setdefault((no_decay, is_text), []).append(param)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
         "lr_scale": text_lr_scale if is_text else 1.0}
        for (no_decay, is_text), params in sorted(groups.items())
    ]


def export_colipri(
    objective: ColipriPretraining | torch.nn.Module,
    tokenizer: Any,
    model_path: str | os.PathLike,
    classifier_path: str | os.PathLike,
    findings: Sequence[Finding | str] = FINDINGS,
) -> ZeroShotClassifier:
    """Write the trained two-tower model and the zero-shot inference network (flat state dicts).

    The contrastive loss' learned logit scale becomes the model's ``softmax_temperature`` (``T = 1 / s``).
    ``classifier_path`` (``models/model.pt``) is what ``inference.yaml``, MONAI Label and the Model Zoo load.
    """
    objective = getattr(objective, "module", objective)  # DDP
    model: ColipriModel = objective.model
    if getattr(objective, "clip_loss", None) is not None:
        model.set_logit_scale(objective.clip_loss.logit_scale.detach())
    export_inference_weights(model, model_path)
    classifier = ZeroShotClassifier.from_model(model, tokenizer, prompt_pairs(findings))
    export_inference_weights(classifier, classifier_path)
    logger.info("exported %s and %s", model_path, classifier_path)
    return classifier


def load_model_weights(module: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a flat state dict (``.pt`` via ``weights_only=True`` or ``.safetensors``) strictly into ``module``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights; train first (configs/train.yaml) or give --model_path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module


def _loader(records: list[dict], transform: Callable, batch_size: int, num_workers: int) -> DataLoader:
    dataset = PretrainingDataset(records, transform, seed=0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=pretraining_collate)


def evaluate_colipri(
    model: ColipriModel,
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
    bundle: str = "colipri",
    checkpoint: str | None = None,
    report_transform: Callable | None = None,
) -> dict[str, Any]:
    """Frozen-encoder evaluation: zero-shot AUROC, retrieval, linear/kNN probes and (optionally) a segmentation probe.

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
    encoder = model.image_encoder

    def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = encoder.patch_embeddings(images)
        out = {"embedding": encoder.pool(patches)}
        if segmentation:
            out["patches"] = patches
        return out

    train = extract_features(encode, _loader(train_records, image_transform, batch_size, num_workers), device,
                             amp_dtype=amp_dtype)
    test = extract_features(encode, _loader(test_records, image_transform, batch_size, num_workers), device,
                            amp_dtype=amp_dtype)

    @torch.no_grad()
    def embed_texts(texts: list[str]) -> np.ndarray:
        return encode_texts(texts, model, tokenizer, max_length=max_text_length, device=device)

    pairs = prompt_pairs(findings)
    keys = list(pairs)
    num_prompts = len(next(iter(pairs.values()))[0])
    pos = embed_texts([t for k in keys for t in pairs[k][0]]).reshape(len(keys), num_prompts, -1)
    neg = embed_texts([t for k in keys for t in pairs[k][1]]).reshape(len(keys), num_prompts, -1)
    reports = [r.get("report") for r in test_records]
    if report_transform is not None and all(isinstance(r, str) and r.strip() for r in reports):
        reports = [report_transform(dict(record))["report"] for record in test_records]
    text_emb = embed_texts(reports) if all(isinstance(r, str) and r.strip() for r in reports) else None
    names = [f.name if isinstance(f, Finding) else str(f) for f in findings]

    seg_inputs: dict[str, Any] = {}
    if segmentation and "mask" in train and "mask" in test:
        seg_inputs = dict(
            train_patch_features=train["patches"], train_masks=train["mask"][:, 0].astype(np.int64),
            test_patch_features=test["patches"], test_masks=test["mask"][:, 0].astype(np.int64),
            segmentation_kwargs={"num_classes": len(names) + 1, "class_names": ["background", *names],
                                 **(segmentation_kwargs or {})},
        )
    report = EvaluationReport(output_dir, bundle=bundle, checkpoint=checkpoint, seed=seed)
    results = evaluate_embeddings(
        test["embedding"], test["labels"], names,
        train_emb=train["embedding"], train_labels=train["labels"],
        test_text_emb=text_emb, pos_prompt_emb=pos, neg_prompt_emb=neg,
        temperature=float(model.softmax_temperature), n_bootstrap=n_bootstrap, seed=seed, report=report,
        **seg_inputs,
    )
    report.write()
    print(format_table(results))
    return results
