"""Segmentation probe: a light decoder trained on FROZEN patch features, scored by Dice per class.

The default head is DINOv2's linear segmentation probe (Oquab et al., 2023, https://arxiv.org/abs/2304.07193):
BatchNorm over the feature channels, a 1x1(x1) convolution to class logits at the patch grid, and bilinear
(trilinear in 3D) upsampling of the logits to the label-map size. ``hidden_dim`` switches to a two-layer head
(3x3(x3) convolution + BatchNorm + ReLU, then 1x1(x1)) for a slightly stronger, still light probe.
Training uses :class:`monai.losses.DiceCELoss`; evaluation uses :class:`monai.metrics.DiceMetric` per class on
the argmax prediction at label resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.layers.factories import Conv, Norm
from torch import nn
from tqdm.auto import tqdm

from common.evaluation._arrays import label_names
from common.evaluation.dice import argmax_dice_table

__all__ = ["SegmentationProbe", "train_segmentation_probe"]

logger = logging.getLogger(__name__)


class SegmentationProbe(nn.Module):
    """Light decoder from a frozen patch-feature grid ``(B, C, *grid)`` to class logits ``(B, K, *out)``.

    Args:
        feature_dim: channels ``C`` of the patch features.
        num_classes: output classes ``K`` (background included).
        spatial_dims: 2 or 3.
        hidden_dim: None for the linear head (BN + 1x1 conv); otherwise the width of a 3x3 conv layer before it.
    """

    def __init__(self, feature_dim: int, num_classes: int, spatial_dims: int, hidden_dim: int | None = None):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if feature_dim < 1 or num_classes < 2:
            raise ValueError(f"need feature_dim >= 1 and num_classes >= 2, got {feature_dim}, {num_classes}")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive or None, got {hidden_dim}")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.spatial_dims = spatial_dims
        if hidden_dim is None:
            self.head = nn.Sequential(norm(feature_dim), conv(feature_dim, num_classes, kernel_size=1))
        else:
            self.head = nn.Sequential(
                conv(feature_dim, hidden_dim, kernel_size=3, padding=1, bias=False),
                norm(hidden_dim),
                nn.ReLU(inplace=True),
                conv(hidden_dim, num_classes, kernel_size=1),
            )

    def forward(self, features: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """Logits at the patch grid, or upsampled to ``output_size`` when given."""
        logits = self.head(features)
        if output_size is not None and tuple(output_size) != tuple(logits.shape[2:]):
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            logits = F.interpolate(logits, size=tuple(output_size), mode=mode, align_corners=False)
        return logits


def _as_features(value: Any, name: str) -> torch.Tensor:
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.float().cpu()
    if tensor.ndim not in (4, 5):
        raise ValueError(f"{name} must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contain NaN/inf")
    return tensor


def _as_masks(value: Any, name: str, features: torch.Tensor) -> torch.Tensor:
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    spatial_dims = features.ndim - 2
    if tensor.ndim == spatial_dims + 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != spatial_dims + 1 or tensor.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name} must be (B, *spatial) label maps matching {features.shape[0]} feature maps in "
            f"{spatial_dims}D, got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{name} must hold integer class indices")
    tensor = tensor.long().cpu()
    if tensor.min() < 0:
        raise ValueError(f"{name} contain negative class indices")
    return tensor


def train_segmentation_probe(
    features_train: Any,
    masks_train: Any,
    features_test: Any,
    masks_test: Any,
    epochs: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 8,
    weight_decay: float = 1e-4,
    hidden_dim: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    include_background: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train a :class:`SegmentationProbe` on frozen features and report Dice per class and mean.

    Features stay on the CPU and are moved to ``device`` one mini-batch at a time, so large 3D feature sets fit;
    the loss is taken on logits upsampled to the mask size, so lower ``batch_size`` for large 3D label maps.
    Optimiser: AdamW with a cosine learning-rate decay over all steps; ``seed`` fixes initialisation and batch order.

    Args:
        features_train: ``(B, C, *grid)`` frozen patch features.
        masks_train: ``(B, *spatial)`` integer label maps (``(B, 1, *spatial)`` accepted).
        features_test: ``(B', C, *grid)``.
        masks_test: ``(B', *spatial)``.
        epochs: passes over the training set.
        lr: peak learning rate.
        seed: random seed.
        batch_size: mini-batch size.
        weight_decay: AdamW weight decay.
        hidden_dim: see :class:`SegmentationProbe`.
        num_classes: number of classes incl. background (default: largest index in the masks + 1).
        class_names: names of the ``num_classes`` classes (default ``class_0..``).
        include_background: also report Dice of class 0.
        device: where to train (default: CUDA if available).

    Returns:
        ``{"per_class": {name: {"dice"}}, "mean_dice", "num_classes", "epochs", "final_train_loss"}``;
        a class's Dice averages the test cases whose label map contains it (MONAI's ``ignore_empty``); a class
        absent from every test mask has Dice ``None`` and is left out of the mean.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    x_train, y_train, x_test, y_test = _checked_inputs(features_train, masks_train, features_test, masks_test)
    found = int(max(y_train.max(), y_test.max())) + 1
    num_classes = found if num_classes is None else num_classes
    if found > num_classes:
        raise ValueError(f"masks contain class {found - 1} but num_classes={num_classes}")
    names = label_names(class_names, num_classes, "class_names")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG state
        torch.manual_seed(seed)
        probe = SegmentationProbe(x_train.shape[1], num_classes, x_train.ndim - 2, hidden_dim).to(device)
    epoch_loss = _fit(probe, x_train, y_train, epochs, lr, weight_decay, batch_size, seed, device)
    dice = _test_dice(probe, x_test, y_test, num_classes, include_background, batch_size, device)
    reported = names if include_background else names[1:]
    per_class = {n: {"dice": None if np.isnan(d) else float(d)} for n, d in zip(reported, dice)}
    finite = dice[np.isfinite(dice)]
    return {
        "per_class": per_class,
        "mean_dice": float(finite.mean()) if finite.size else None,
        "num_classes": int(num_classes),
        "epochs": int(epochs),
        "final_train_loss": epoch_loss,
    }


def _checked_inputs(
    features_train: Any, masks_train: Any, features_test: Any, masks_test: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features and label maps as tensors, with train and test shapes checked against each other."""
    x_train, x_test = _as_features(features_train, "features_train"), _as_features(features_test, "features_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train features {tuple(x_train.shape[1:])} != test features {tuple(x_test.shape[1:])}")
    y_train, y_test = _as_masks(masks_train, "masks_train", x_train), _as_masks(masks_test, "masks_test", x_test)
    if y_train.shape[1:] != y_test.shape[1:]:
        raise ValueError(f"train masks {tuple(y_train.shape[1:])} != test masks {tuple(y_test.shape[1:])}")
    return x_train, y_train, x_test, y_test


def _fit(
    probe: SegmentationProbe,
    features: torch.Tensor,
    masks: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> float:
    """AdamW + cosine decay with Dice + CE on logits upsampled to the mask size; returns the last epoch's mean loss."""
    out_size = tuple(masks.shape[1:])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(features) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc="segmentation probe", leave=False)
    for _ in bar:
        total = 0.0
        for batch in torch.randperm(len(features), generator=generator).split(batch_size):
            loss = loss_fn(probe(features[batch].to(device), out_size), masks[batch].to(device)[:, None])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
        epoch_loss = total / len(features)
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
    return epoch_loss


def _test_dice(
    probe: SegmentationProbe,
    features: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    include_background: bool,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Dice per class averaged over the test cases whose label map holds the class (NaN where none does)."""
    out_size = tuple(masks.shape[1:])
    probe.eval()
    per_case = argmax_dice_table(
        lambda batch: probe(features[batch].to(device), out_size),
        masks,
        num_classes=num_classes,
        include_background=include_background,
        batch_size=batch_size,
        device=device,
    )  # (B', classes), NaN where a case lacks the class
    dice = np.full(per_case.shape[1], np.nan)
    present = np.isfinite(per_case).any(axis=0)
    dice[present] = np.nanmean(per_case[:, present], axis=0)
    return dice
