"""G2D's segmentation protocol, method-neutral: a FROZEN encoder's feature pyramid + a trained U-Net decoder, Dice.

G2D (Liu et al., NeurIPS 2024, https://arxiv.org/abs/2312.01522, section 4.1, appendix A.4, Table 1) scores
segmentation with a U-Net whose pre-trained encoder stays frozen, at 1 %, 10 % and 100 % of the labelled training
cases, in two variants:

``"encoder"``
    a newly initialised decoder (blocks and head) is trained on the frozen encoder's pyramid ("G2D (encoder)");
``"enc+dec"``
    the decoder blocks start from the pre-trained pseudo-mask decoder, the segmentation head is NEW (the pre-trained
    one has a single pseudo-mask channel) with ``num_classes`` outputs, and everything but the encoder is fine-tuned
    ("G2D (enc+dec)").

Any encoder with ``features(x) -> [maps]`` (:class:`common.networks.unet.UNetEncoder`) and any decoder
``decoder(maps) -> logits at the image size`` (:class:`common.networks.unet.UNetDecoder`) fit, so the controls
(contrastive-only pre-training, shuffled pseudo-masks, random init) run through the same code.

**Protocol choices** (the paper gives only AdamW, lr 2e-4, weight decay 0.05, batch size 8 / 16 and "up to 50 epochs
with early stopping", following MGCA):

* Loss :class:`monai.losses.DiceCELoss` (``to_onehot_y``, ``softmax``), by default **class-balanced**
  (``class_balanced``): Dice over the foreground classes only, pooled over the mini-batch (every class weighs the
  same whatever its size, and a class absent from a case does not reward an empty prediction), plus cross-entropy
  weighted by the inverse square root of each class's pixel frequency in the run's labelled cases
  (:func:`class_weights`; background 1). Plain ``DiceCELoss`` (background included, per case) lets a new decoder
  collapse to background on small lesions: every Dice in the demo protocol was ~0 with it.
* AdamW on every decoder parameter, cosine decay of the learning rate over ``steps`` optimiser steps, the same for
  every fraction (a per-epoch budget would leave the 1 % runs, a handful of cases, with a few dozen steps). Each step
  draws ``min(batch_size, n_train)`` cases from a stream of seeded permutations of the subset, so every case is seen
  equally often and every batch is full.
* **Early stopping** (the paper's "up to 50 epochs with early stopping", after MGCA) when validation cases are given
  (the datalist's ``validation`` split in the bundles): each run is scored (mean Dice, as the test) every
  ``eval_every`` steps and at its last one, stops after ``patience`` scores without improvement, and keeps the
  weights of its best score; ``steps`` is then the maximum. The selected step and its validation Dice are stored.
* Fraction ``f`` of ``N`` labelled training cases uses ``max(1, round(f * N))`` cases: the first ones of ONE seeded
  permutation, so the subsets are nested (the 1 % cases lie inside the 10 % ones) and both variants see the same
  cases; the indices are returned under ``"subsets"``.
* The encoder runs once, in eval mode without gradients, over the union of the subsets and the test cases; its
  pyramids are cached on the CPU in ``cache_dtype`` and moved to ``device`` one mini-batch at a time. No data
  augmentation (cached features), as the encoder is frozen anyway. The encoder's weights, buffers and train/eval
  mode are left as they were.
* Test: argmax of the logits, :class:`monai.metrics.DiceMetric` (``include_background=False``,
  ``reduction="none"``, ``ignore_empty=True``) per case and class. A class absent from a case's ground truth is not
  scored for that case (also when predicted: MONAI's ``ignore_empty``); a case's Dice is the mean over its present
  classes, and ``mean_dice`` the mean over cases that have any, with a case-resampling bootstrap interval
  (:func:`~common.evaluation.metrics.bootstrap_mean`). Per-case values are kept (test order) for paired comparisons
  between models (:func:`compare_per_case`).

**Memory** of the cache: ``sum_k c_k * prod(spatial / 2**k)`` values per case (k = 1..5): for a ResNet-50 pyramid
(64, 256, 512, 1024, 2048) about 46 values per pixel in 2D (224 x 224: 9.2 MB in float32) and about 13.3 per voxel in
3D (128^3: 112 MB); ``cache_dtype=torch.float16`` halves it. Training moves one mini-batch of pyramids (and their
decoder activations) to ``device``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from tqdm.auto import tqdm

from common.evaluation._arrays import label_names
from common.evaluation.dice import argmax_dice_table
from common.evaluation.metrics import bootstrap_mean, paired_mean_difference
from common.evaluation.report import to_jsonable
from common.networks.weights import load_weights, read_weights

__all__ = [
    "VARIANTS",
    "compare_per_case",
    "decoder_from_pretrained",
    "evaluate_decoder_probe",
    "fraction_key",
    "frozen_encoder_segmentation",
    "nested_subsets",
]

logger = logging.getLogger(__name__)

#: result keys of the two variants: new decoder / pre-trained decoder blocks with a new head
VARIANTS: tuple[str, str] = ("encoder", "enc+dec")


def fraction_key(fraction: float) -> str:
    """The results key of a training fraction: ``0.01 -> "0.01"``, ``1.0 -> "1"``."""
    return format(float(fraction), "g")


def nested_subsets(n_cases: int, fractions: Sequence[float], seed: int = 0) -> dict[str, list[int]]:
    """``{fraction_key: sorted case indices}``: ``max(1, round(f * n_cases))`` cases, prefixes of one seeded
    permutation, hence nested across fractions."""
    if n_cases < 1:
        raise ValueError("need at least one labelled training case")
    order = np.random.default_rng(seed).permutation(n_cases)
    return {
        fraction_key(f): sorted(int(i) for i in order[: max(1, min(n_cases, round(f * n_cases)))]) for f in fractions
    }


class _Cases:
    """Per-case access to images ``(N, C, *spatial)`` or masks ``(N, *spatial)`` / ``(N, 1, *spatial)``, given as one
    array/tensor or as a sequence of per-case arrays/tensors (kept as given; read a mini-batch at a time)."""

    def __init__(self, value: Any, name: str, masks: bool) -> None:
        self.value, self.name, self.masks = value, name, masks
        if isinstance(value, (torch.Tensor, np.ndarray)):
            per_case = value.ndim - 1
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            per_case = np.ndim(value[0]) if len(value) else 0
        else:
            raise TypeError(f"{name} must be an array/tensor or a sequence of per-case arrays, got {type(value)}")
        allowed = (2, 3, 4) if masks else (3, 4)  # masks: (*spatial) or (1, *spatial); images: (C, *spatial)
        if len(value) == 0 or per_case not in allowed:
            raise ValueError(
                f"{name} must hold at least one case of shape {'(1,) ' if masks else '(C, '}*spatial) in 2D/3D, "
                f"got {len(value)} cases of {per_case} dimensions"
            )

    def __len__(self) -> int:
        return len(self.value)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        items = []
        for i in indices:
            item = self.value[int(i)]
            items.append(item.detach().cpu() if isinstance(item, torch.Tensor) else torch.as_tensor(np.asarray(item)))
        try:
            batch = torch.stack(items)
        except RuntimeError as err:
            raise ValueError(f"{self.name}: cases differ in shape ({err})") from err
        return batch if self.masks else batch.float()


def _as_labels(masks: torch.Tensor, name: str, spatial: tuple[int, ...], num_classes: int) -> torch.Tensor:
    if masks.ndim == len(spatial) + 2 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape[1:]) != spatial:
        raise ValueError(f"{name} must be label maps of the image size {spatial}, got {tuple(masks.shape[1:])}")
    if masks.is_floating_point() and not torch.equal(masks, masks.round()):
        raise ValueError(f"{name} must hold integer class indices")
    masks = masks.long()
    if masks.numel() and (masks.min() < 0 or masks.max() >= num_classes):
        raise ValueError(f"{name} hold classes {int(masks.min())}..{int(masks.max())}, outside 0..{num_classes - 1}")
    return masks.to(torch.uint8 if num_classes <= 256 else torch.int64)


def _default_decoder_factory(encoder: nn.Module) -> Callable[[int], nn.Module]:
    from common.networks.unet import UNetDecoder

    if not (hasattr(encoder, "spatial_dims") and hasattr(encoder, "feature_channels")):
        raise ValueError("give make_decoder: the encoder has no spatial_dims / feature_channels for a UNetDecoder")
    return lambda out_channels: UNetDecoder(encoder.spatial_dims, encoder.feature_channels, out_channels)


def _seeded(make: Callable[..., nn.Module], num_classes: int, seed: int) -> nn.Module:
    """``make(out_channels=num_classes)`` under a fixed seed (so a ``functools.partial`` of a decoder class fits)."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG state
        torch.manual_seed(seed)
        return make(out_channels=num_classes)


def decoder_from_pretrained(
    make_decoder: Callable[[int], nn.Module],
    pretrained: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    num_classes: int,
    *,
    head_prefix: str = "segmentation_head.",
    seed: int = 0,
) -> nn.Module:
    """``make_decoder(num_classes)`` (seeded) with every weight and buffer outside ``head_prefix`` loaded from the
    pre-trained decoder (a module, a state dict or a weight file), strictly: a missing, unexpected or mis-shaped
    decoder key raises :class:`~common.networks.weights.WeightsError`. The head keeps its fresh initialisation."""
    if isinstance(pretrained, nn.Module):
        state, where = pretrained.state_dict(), "<pretrained decoder>"
    elif isinstance(pretrained, Mapping):
        state, where = dict(pretrained), "<pretrained decoder state dict>"
    else:
        state, where = read_weights(pretrained), pretrained
    decoder = _seeded(make_decoder, num_classes, seed)
    head = {k: v for k, v in decoder.state_dict().items() if k.startswith(head_prefix)}
    if not head:
        raise ValueError(f"the decoder has no keys under head_prefix={head_prefix!r}")
    body = {k: v.detach().clone() for k, v in state.items() if not k.startswith(head_prefix)}
    return load_weights(decoder, {**body, **head}, where=where)


def _encode(
    encoder: nn.Module,
    cases: _Cases,
    indices: Sequence[int],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    desc: str,
) -> list[torch.Tensor]:
    """The encoder's pyramid of ``cases[indices]`` as CPU tensors ``(len(indices), c_k, *s_k)`` in ``dtype``."""
    features = getattr(encoder, "features", encoder)
    cache: list[torch.Tensor] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, leave=False):
            chunk = indices[start : start + batch_size]
            pyramid = [f.detach() for f in features(cases.get(chunk).to(device))]
            if not cache:
                cache = [torch.empty((len(indices), *f.shape[1:]), dtype=dtype) for f in pyramid]
            for level, f in zip(cache, pyramid):
                level[start : start + len(chunk)] = f.to("cpu", dtype)
    return cache


def _batches(subset: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless full batches of ``min(batch_size, len(subset))`` cases from consecutive seeded permutations."""
    size = min(batch_size, len(subset))
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < size:
            pending = torch.cat([pending, subset[torch.randperm(len(subset), generator=generator)]])
        yield pending[:size]
        pending = pending[size:]


def class_weights(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``(num_classes,)``: inverse square root of each class's voxel frequency in
    ``masks``, scaled so that background weighs 1; classes absent from ``masks`` get weight 1 (never a target)."""
    counts = torch.bincount(masks.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    frequency = counts / counts.sum().clamp(min=1)
    weights = torch.where(counts > 0, frequency.clamp(min=1e-12).rsqrt(), torch.zeros_like(frequency))
    if counts[0] > 0:
        weights = weights / weights[0]
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


def _segmentation_loss(class_balanced: bool, weights: torch.Tensor | None) -> nn.Module:
    """Plain ``DiceCELoss`` (Dice over every class incl. background, per case), or the class-balanced one: Dice over
    the foreground classes pooled over the batch (each class counts equally whatever its size, and a class absent
    from a case is not scored as a perfect empty prediction) + cross-entropy weighted by :func:`class_weights`."""
    if not class_balanced:
        return DiceCELoss(to_onehot_y=True, softmax=True)
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, weight=weights)


def _train(
    decoder: nn.Module,
    cache: list[torch.Tensor],
    masks: torch.Tensor,
    subset: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    desc: str,
    loss_fn: nn.Module,
    validate: Callable[[nn.Module], float] | None = None,
    eval_every: int = 50,
    patience: int = 4,
) -> dict[str, Any]:
    """Train ``decoder`` in place. With ``validate`` (decoder -> validation mean Dice), score every ``eval_every``
    steps and at the end, stop after ``patience`` scores without improvement and restore the best weights.

    Returns ``{"final_train_loss"`` (mean loss of the last tenth of the steps run), ``"steps_run"``, ``"best_step"``,
    ``"val_dice"}`` (the last two ``None`` without ``validate``).
    """
    decoder.to(device).train()
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    stream = _batches(subset, batch_size, torch.Generator().manual_seed(seed))
    tail, losses = max(1, steps // 10), []
    best: dict[str, Any] = {"val_dice": None, "best_step": None, "state": None}
    stale, step = 0, 0
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False)
    for step in bar:
        batch = next(stream)
        pyramid = [level[batch].to(device, torch.float32) for level in cache]
        loss = loss_fn(decoder(pyramid), masks[batch].to(device).long()[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses = (losses + [float(loss.detach())])[-tail:]
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if validate is None or (step % eval_every and step != steps):
            continue
        score = validate(decoder)
        decoder.train()
        if best["val_dice"] is None or score > best["val_dice"]:
            state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
            best, stale = {"val_dice": score, "best_step": step, "state": state}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best["state"] is not None:
        decoder.load_state_dict(best["state"])
    return {
        "final_train_loss": float(np.mean(losses)),
        "steps_run": step,
        "best_step": best["best_step"],
        "val_dice": best["val_dice"],
    }


def _dice_table(
    decoder: nn.Module,
    cache: list[torch.Tensor],
    masks: torch.Tensor,
    *,
    num_classes: int,
    include_background: bool,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Per-case, per-class Dice ``(cases, classes)`` of the argmax prediction, NaN where a class is absent."""
    decoder.eval()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        logits = decoder([level[batch].to(device, torch.float32) for level in cache])
        if tuple(logits.shape[2:]) != tuple(masks.shape[1:]):
            raise ValueError(
                f"the decoder gives logits of size {tuple(logits.shape[2:])}, the masks are "
                f"{tuple(masks.shape[1:])}: it must predict at the image size"
            )
        return logits

    table = argmax_dice_table(
        predict,
        masks,
        num_classes=num_classes,
        include_background=include_background,
        batch_size=batch_size,
        device=device,
    )
    return table.astype(np.float64)


def _case_means(dice: np.ndarray) -> np.ndarray:
    """A case's Dice: the mean over its present classes (NaN for a case without any)."""
    scored = np.isfinite(dice).any(axis=1)
    per_case = np.full(len(dice), np.nan)
    per_case[scored] = np.nanmean(dice[scored], axis=1)
    return per_case


def _score(
    decoder: nn.Module,
    cache: list[torch.Tensor],
    masks: torch.Tensor,
    *,
    num_classes: int,
    names: list[str],
    include_background: bool,
    batch_size: int,
    n_bootstrap: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    dice = _dice_table(
        decoder,
        cache,
        masks,
        num_classes=num_classes,
        include_background=include_background,
        batch_size=batch_size,
        device=device,
    )
    reported = names if include_background else names[1:]
    per_class = {}
    for k, name in enumerate(reported):
        summary = bootstrap_mean(dice[:, k], n_bootstrap, seed)
        per_class[name] = {
            "dice": summary["mean"],
            "dice_ci": summary["mean_ci"],
            "n_cases": summary["n_cases"],
            "per_case": dice[:, k],
        }
    per_case = _case_means(dice)
    summary = bootstrap_mean(per_case, n_bootstrap, seed)
    class_dice = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    return {
        "mean_dice": summary["mean"],
        "mean_dice_ci": summary["mean_ci"],
        "n_cases_scored": summary["n_cases"],
        "macro_dice": float(np.mean(class_dice)) if class_dice else None,
        "per_class": per_class,
        "per_case": per_case,
    }


def frozen_encoder_segmentation(
    encoder: nn.Module,
    make_decoder: Callable[[int], nn.Module] | None,
    train_images: Any,
    train_masks: Any,
    test_images: Any,
    test_masks: Any,
    *,
    num_classes: int,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    pretrained_decoder: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 2e-4,
    weight_decay: float = 0.05,
    seed: int = 0,
    n_bootstrap: int = 1000,
    include_background: bool = False,
    head_prefix: str = "segmentation_head.",
    cache_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    val_images: Any = None,
    val_masks: Any = None,
    eval_every: int = 50,
    patience: int = 4,
    class_balanced: bool = True,
) -> dict[str, Any]:
    """G2D's segmentation protocol (Table 1) on a frozen encoder: decoder trained per fraction, Dice per class.

    See the module docstring for the protocol, the subset draw and the memory of the feature cache.

    Args:
        encoder: frozen image encoder with ``features(x) -> [maps]`` (or called directly when it has no ``features``).
        make_decoder: ``make_decoder(out_channels) -> decoder`` mapping the pyramid to logits at the image size;
            ``None``: a :class:`~common.networks.unet.UNetDecoder` with FlexibleUNet's widths for the encoder.
        train_images, test_images: ``(N, C, *spatial)`` arrays/tensors or sequences of ``(C, *spatial)`` cases
            (2D or 3D, preprocessed; spatial sides as the decoder needs, multiples of 32 for the U-Net).
        train_masks, test_masks: integer label maps ``(N, *spatial)`` (``(N, 1, *spatial)`` or per-case sequences
            accepted), classes ``0..num_classes-1``, 0 = background.
        num_classes: classes incl. background (the new head's outputs).
        fractions: fractions of the training cases, each in (0, 1].
        pretrained_decoder: the pre-trained decoder (module, state dict or weight file; keys of ``make_decoder``'s
            decoder) for the ``"enc+dec"`` variant; ``None`` runs only ``"encoder"``.
        class_names: ``num_classes`` names (default ``label_0..``).
        steps: optimiser steps of every run (every fraction and variant).
        batch_size: training (and encoding / scoring) mini-batch size.
        lr, weight_decay: AdamW's (the paper's 2e-4 and 0.05).
        seed: subset draw, decoder initialisation, batch order and bootstrap.
        n_bootstrap: resamples of the confidence intervals (0: none).
        include_background: also score class 0.
        head_prefix: the decoder keys NOT taken from ``pretrained_decoder``.
        cache_dtype: dtype of the cached pyramids (float16 halves the memory).
        device: where the encoder and the decoders run (default CUDA if available); the encoder is moved there for
            encoding and moved back.
        val_images, val_masks: validation cases (as the test ones) for early stopping: every run is scored on them
            every ``eval_every`` steps and at its last step, stops after ``patience`` scores without improvement
            and keeps its best weights (``steps`` is then the maximum); ``None``: a fixed ``steps``.
        eval_every, patience: the early-stopping schedule.
        class_balanced: the class-balanced loss (foreground Dice over the batch + cross-entropy weighted by
            :func:`class_weights` of the run's labelled cases) instead of plain ``DiceCELoss``.

    Returns:
        JSON-ready ``{"variants": {variant: {fraction_key: run}}, "subsets": {fraction_key: [train indices]},
        "class_names", "n_train_available", "n_test_cases", "test_fingerprint", "settings"}`` where a run is
        ``{"mean_dice", "mean_dice_ci", "n_cases_scored", "macro_dice", "per_class": {name: {"dice", "dice_ci",
        "n_cases", "per_case"}}, "per_case", "n_train_cases", "final_train_loss", "steps_run", "best_step",
        "val_dice"}``; ``per_case`` lists follow the test
        order with ``None`` for unscored cases; ``test_fingerprint`` hashes the test masks (see
        :func:`compare_per_case`). Bitwise reproducible for a seed on the CPU.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
    if steps < 1 or batch_size < 1 or lr < 0 or weight_decay < 0 or n_bootstrap < 0 or eval_every < 1 or patience < 1:
        raise ValueError(
            f"need steps, batch_size, eval_every, patience >= 1 and lr, weight_decay, n_bootstrap >= 0; "
            f"got {steps}, {batch_size}, {eval_every}, {patience}, {lr}, {weight_decay}, {n_bootstrap}"
        )
    if (val_images is None) != (val_masks is None):
        raise ValueError("give both val_images and val_masks, or neither")
    fractions = sorted({float(f) for f in fractions})
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be non-empty, each in (0, 1], got {fractions}")
    names = label_names(class_names, num_classes, "class_names")
    make_decoder = make_decoder or _default_decoder_factory(encoder)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    given = {"train": (train_images, train_masks), "test": (test_images, test_masks), "val": (val_images, val_masks)}
    given = {split: pair for split, pair in given.items() if pair[0] is not None}
    images = {split: _Cases(pair[0], f"{split}_images", masks=False) for split, pair in given.items()}
    labels = {split: _Cases(pair[1], f"{split}_masks", masks=True) for split, pair in given.items()}
    for split in given:
        if len(images[split]) != len(labels[split]):
            raise ValueError(f"{len(images[split])} {split} images but {len(labels[split])} {split} masks")
    subsets = nested_subsets(len(images["train"]), fractions, seed)
    used = subsets[fraction_key(fractions[-1])]  # the largest subset holds all the others
    position = {case: i for i, case in enumerate(used)}
    test_cases = list(range(len(images["test"])))

    spatial = tuple(images["train"].get(used[:1]).shape[2:])
    cases = {"train": used, "test": test_cases, "val": list(range(len(images["val"]))) if "val" in images else []}
    cases = {split: cases[split] for split in given}
    masks = {
        split: _as_labels(labels[split].get(idx), f"{split}_masks", spatial, num_classes)
        for split, idx in cases.items()
    }
    fingerprint = hashlib.sha256(str(tuple(masks["test"].shape)).encode())
    fingerprint.update(masks["test"].numpy().astype(np.int64).tobytes())

    was_training = encoder.training
    home = next(encoder.parameters(), torch.empty(0)).device
    encoder.eval().to(device)
    try:
        cache = {
            split: _encode(encoder, images[split], idx, batch_size, device, cache_dtype, f"encoding {split}")
            for split, idx in cases.items()
        }
    finally:
        encoder.to(home).train(was_training)
    size = sum(level.numel() * level.element_size() for split in cache.values() for level in split)
    logger.info(
        "cached %s feature pyramids on the CPU: %.1f MiB",
        " + ".join(f"{len(idx)} {split}" for split, idx in cases.items()),
        size / 2**20,
    )

    scoring = {
        "num_classes": num_classes,
        "include_background": include_background,
        "batch_size": batch_size,
        "device": device,
    }

    def validate(decoder: nn.Module) -> float:
        dice = _dice_table(decoder, cache["val"], masks["val"], **scoring)
        means = _case_means(dice)
        return float(np.nanmean(means)) if np.isfinite(means).any() else 0.0

    variants: dict[str, dict[str, Any]] = {VARIANTS[0]: {}}
    if pretrained_decoder is not None:
        variants[VARIANTS[1]] = {}
    for variant, runs in variants.items():
        for fraction in fractions:
            key = fraction_key(fraction)
            subset = torch.tensor([position[c] for c in subsets[key]], dtype=torch.long)
            if variant == VARIANTS[0]:
                decoder = _seeded(make_decoder, num_classes, seed)
            else:
                decoder = decoder_from_pretrained(
                    make_decoder, pretrained_decoder, num_classes, head_prefix=head_prefix, seed=seed
                )
            weights = class_weights(masks["train"][subset], num_classes) if class_balanced else None
            fit = _train(
                decoder,
                cache["train"],
                masks["train"],
                subset,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                seed=seed,
                device=device,
                desc=f"{variant} {key}",
                loss_fn=_segmentation_loss(class_balanced, weights),
                validate=validate if "val" in cache else None,
                eval_every=eval_every,
                patience=patience,
            )
            run = _score(
                decoder, cache["test"], masks["test"], names=names, n_bootstrap=n_bootstrap, seed=seed, **scoring
            )
            run.update(n_train_cases=len(subset), **fit)
            runs[key] = run
            logger.info("%s %s (%d cases): mean Dice %s", variant, key, len(subset), run["mean_dice"])
            del decoder
    return to_jsonable(
        {
            "variants": variants,
            "subsets": subsets,
            "class_names": names if include_background else names[1:],
            "n_train_available": len(images["train"]),
            "n_test_cases": len(test_cases),
            "test_fingerprint": fingerprint.hexdigest(),
            "settings": {
                "fractions": fractions,
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "seed": seed,
                "n_bootstrap": n_bootstrap,
                "num_classes": num_classes,
                "include_background": include_background,
                "cache_dtype": str(cache_dtype).removeprefix("torch."),
                "n_val_cases": len(cases.get("val", [])),
                "eval_every": eval_every,
                "patience": patience,
                "class_balanced": class_balanced,
            },
        }
    )


def _values(per_case: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in per_case], dtype=np.float64)


def compare_per_case(
    results: Mapping[str, Any],
    baseline_results: Mapping[str, Any],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of ``results - baseline_results`` (two :func:`frozen_encoder_segmentation` outputs) per variant
    and fraction that both contain: per-case mean Dice and per-class Dice
    (:func:`~common.evaluation.metrics.paired_mean_difference`; cases scored in both).

    Used for the controls (contrastive-only pre-training, shuffled pseudo-masks), e.g. at the smallest fraction.

    Returns:
        ``{variant: {fraction_key: {"mean_dice": {"difference", "difference_ci", "p_not_better", "n_cases"},
        "per_class": {name: {...}}}}}``.

    Raises:
        ValueError: the two were scored on different test masks (fingerprint), classes, or share no run.
    """
    if results["test_fingerprint"] != baseline_results["test_fingerprint"]:
        raise ValueError("the two results were scored on different test cases (test_fingerprint differs)")
    if list(results["class_names"]) != list(baseline_results["class_names"]):
        raise ValueError(f"class names differ: {results['class_names']} vs {baseline_results['class_names']}")
    wanted = None if fractions is None else {fraction_key(f) for f in fractions}
    out: dict[str, Any] = {}
    for variant, runs in results["variants"].items():
        base_runs = baseline_results["variants"].get(variant, {})
        for key, run in runs.items():
            if key not in base_runs or (wanted is not None and key not in wanted):
                continue
            base = base_runs[key]
            entry = {
                "mean_dice": paired_mean_difference(
                    _values(run["per_case"]), _values(base["per_case"]), n_bootstrap, seed
                ),
                "per_class": {
                    name: paired_mean_difference(
                        _values(value["per_case"]), _values(base["per_class"][name]["per_case"]), n_bootstrap, seed
                    )
                    for name, value in run["per_class"].items()
                },
            }
            out.setdefault(variant, {})[key] = entry
    if not out:
        raise ValueError("the two results share no variant and fraction")
    return to_jsonable(out)


def _stack_records(loader: Any, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Concatenate ``keys`` of every batch of ``loader`` (CPU tensors)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in loader:
        for key in keys:
            value = batch[key]
            out[key].append((value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _summary_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| variant | fraction | train cases | mean Dice [95% CI] |", "|---|---|---|---|"]
    for variant, runs in results["variants"].items():
        for key, run in runs.items():
            low, high = run["mean_dice_ci"]
            ci = "" if low is None else f" [{low:.3f}, {high:.3f}]"
            dice = "n/a" if run["mean_dice"] is None else f"{run['mean_dice']:.3f}"
            lines.append(f"| {variant} | {key} | {run['n_train_cases']} | {dice}{ci} |")
    return lines


def _read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Another model's ``segmentation.json``; a missing, unreadable or foreign file is a named error."""
    from common.data.contract import DataContractError

    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataContractError(path, f"cannot read a segmentation result ({type(err).__name__}: {err})") from err
    keys = ("variants", "class_names", "test_fingerprint", "settings")
    missing = [k for k in keys if k not in results] if isinstance(results, dict) else list(keys)
    if missing:
        raise DataContractError(path, f"not a segmentation.json of evaluate_decoder_probe (missing {missing})")
    return results


def evaluate_decoder_probe(
    encoder: nn.Module,
    train_records: Sequence[Mapping[str, Any]],
    test_records: Sequence[Mapping[str, Any]],
    transform: Callable,
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    pretrained_decoder: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    make_decoder: Callable[[int], nn.Module] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    baselines: Mapping[str, str | os.PathLike] | None = None,
    val_records: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`frozen_encoder_segmentation` on datalist records, written to ``output_dir/segmentation.json``.

    Args:
        encoder: the pre-trained encoder (``features(x)``), frozen here.
        train_records, test_records: records with ``mask``; training records without one are left out.
        transform: deterministic preprocessing producing ``image`` and ``mask`` (label map on the image grid).
        output_dir: where ``segmentation.json``, ``segmentation.md`` and ``segmentation_dice.png`` go.
        class_names: the label map's classes, background first.
        pretrained_decoder: adds the ``enc+dec`` variant (a module, state dict or weight file; ``None``: encoder only).
        baselines: ``{name: segmentation.json of another model}`` compared case by case (paired bootstrap), e.g. the
            paper's controls; written under ``"versus"``.
        val_records: records with ``mask`` for early stopping (records without one are left out; ``None`` or none
            with a mask: a fixed number of steps).
        kwargs: :func:`frozen_encoder_segmentation` options (``fractions``, ``steps``, ``lr``, ...).
    """
    from common.data.dataset import records_loader
    from common.evaluation.plots import plot_dice_fractions

    train = [r for r in train_records if r.get("mask")]
    if not train:
        raise ValueError("no training record has a mask: the segmentation protocol needs labelled cases")
    baseline_results = {name: _read_results(path) for name, path in (baselines or {}).items()}  # before the fits
    val = [r for r in (val_records or []) if r.get("mask")]
    splits = (("train", train), ("test", list(test_records)), ("val", val))
    arrays = {
        name: _stack_records(records_loader(records, transform, batch_size, num_workers), ("image", "mask"))
        for name, records in splits
        if records
    }
    validation = {"val_images": arrays["val"]["image"], "val_masks": arrays["val"]["mask"]} if val else {}
    results = frozen_encoder_segmentation(
        encoder,
        make_decoder,
        arrays["train"]["image"],
        arrays["train"]["mask"],
        arrays["test"]["image"],
        arrays["test"]["mask"],
        num_classes=len(class_names),
        class_names=class_names,
        pretrained_decoder=pretrained_decoder,
        **validation,
        **kwargs,
    )
    if baseline_results:
        results["versus"] = {
            name: compare_per_case(
                results, baseline, n_bootstrap=results["settings"]["n_bootstrap"], seed=results["settings"]["seed"]
            )
            for name, baseline in baseline_results.items()
        }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segmentation.json").write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False))
    (out / "segmentation.md").write_text(
        "\n".join(["# Segmentation protocol (frozen encoder)", "", *_summary_lines(results), ""])
    )
    plot_dice_fractions(results, out / "segmentation_dice.png")
    print("\n".join(_summary_lines(results)))
    return results
