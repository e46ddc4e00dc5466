"""DINO projection head and the RAD-DINO backbone adapters (2D transformers ``Dinov2Model``, 3D EVA ViT).

Every backbone adapter has one interface: ``backbone(images, masks=None) -> (cls (B, D), patch tokens (B, N, D))``,
both after the final norm, with ``masks`` ``(B, N)`` bool replacing the masked patch embeddings by a learnable mask
token (iBOT). :class:`DinoClsEncoder` turns an adapter into the inference network ``image -> CLS embedding``.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", https://arxiv.org/abs/2304.07193;
Pérez-García et al., "Exploring scalable medical image encoders beyond text supervision" (RAD-DINO),
https://doi.org/10.1038/s42256-024-00965-w.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from common.data.contract import DataContractError
from common.networks.eva import EvaViT
from common.networks.hub import hub_file, hub_offline, load_hub_checkpoint
from common.networks.weights import WeightsError, load_weights

__all__ = [
    "DINOV2_SIZES",
    "DINOHead",
    "DinoClsEncoder",
    "DinoV2Backbone",
    "EvaDinoBackbone",
    "dinov2_backbone",
    "dinov2_config",
    "load_rad_dino_backbone",
]

#: Widths/depths/heads of the DINOv2 ViTs (``dinov2/models/vision_transformer.py``) and a CPU-demo ``tiny``.
DINOV2_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 3},
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}


class DINOHead(nn.Module):
    """MLP projector, L2 normalisation, then a weight-normalised linear layer onto ``out_dim`` prototypes.

    Follows DINOv2's ``dinov2/layers/dino_head.py``: ``nlayers`` linear layers with GELU (optionally BatchNorm)
    down to ``bottleneck_dim``, linear weights drawn from a truncated normal (std 0.02) with zero biases, the
    bottleneck L2-normalised, and a bias-free last layer whose weight norm ``g`` starts at 1. As in DINOv2 ``g``
    stays trainable (DINOv2 instead freezes the whole last layer during the first epoch, a trainer concern);
    ``norm_last_layer=True`` freezes ``g`` at 1, as DINO v1's option of that name did.

    Checkpoints saved with the legacy ``torch.nn.utils.weight_norm`` (keys ``last_layer.weight_g`` /
    ``last_layer.weight_v``, e.g. RAD-DINO's ``dino_head.safetensors``) load directly: torch's parametrised
    weight norm converts them on ``load_state_dict``.

    Args:
        in_dim: width of the backbone token fed to the head.
        out_dim: number of prototypes (DINOv2 and RAD-DINO: 65536).
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: width of the normalised bottleneck.
        nlayers: number of MLP layers (at least 1; 1 means a single linear map to the bottleneck).
        use_bn: insert ``BatchNorm1d`` after each hidden linear layer.
        mlp_bias: biases in the MLP's linear layers.
        norm_last_layer: freeze the last layer's weight norm at 1.

    Raises:
        ValueError: on a non-positive width or ``nlayers < 1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        mlp_bias: bool = True,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(
                f"widths must be positive, got in_dim={in_dim}, out_dim={out_dim}, "
                f"hidden_dim={hidden_dim}, bottleneck_dim={bottleneck_dim}"
            )
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.mlp = self._build_mlp(in_dim, hidden_dim, bottleneck_dim, nlayers, use_bn, mlp_bias)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _build_mlp(
        in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, use_bn: bool, bias: bool
    ) -> nn.Module:
        if nlayers == 1:
            return nn.Linear(in_dim, bottleneck_dim, bias=bias)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(nlayers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=bias))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
        return nn.Sequential(*layers)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens ``(B, in_dim)`` to prototype scores ``(B, out_dim)`` (unnormalised logits)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def dinov2_config(size: str = "base", **overrides: Any) -> Any:
    """A transformers ``Dinov2Config`` of DINOv2 size ``size`` (RAD-DINO: ``"base"``, 518 px, patch 14, 3 channels).

    ``overrides`` set any ``Dinov2Config`` field (e.g. ``image_size``, ``drop_path_rate``, ``layerscale_value``).
    """
    from transformers import Dinov2Config

    if size not in DINOV2_SIZES:
        raise ValueError(f"unknown DINOv2 size {size!r}; expected one of {sorted(DINOV2_SIZES)}")
    fields: dict[str, Any] = {"image_size": 518, "patch_size": 14, "num_channels": 3, **DINOV2_SIZES[size]}
    fields.update(overrides)
    return Dinov2Config(**fields)


class DinoV2Backbone(nn.Module):
    """2D RAD-DINO backbone: a transformers ``Dinov2Model`` behind the adapter interface.

    Grey-scale input ``(B, 1, H, W)`` is replicated to the model's ``num_channels`` (RAD-DINO: 3, as its processor
    does), so released RGB weights load unchanged. iBOT masks go to ``Dinov2Model``'s ``bool_masked_pos``.
    ``H`` and ``W`` must be multiples of the patch size; the position embeddings are interpolated for other sizes
    (local crops), as in DINOv2.

    Args:
        config: a ``Dinov2Config`` or a dict of its fields; ``None`` for ViT-B/14 at 518 px.
        size: DINOv2 size used when ``config`` is a dict or ``None`` (see :data:`DINOV2_SIZES`).
        grad_checkpointing: recompute each block's activations in the backward pass (less memory, ~20 % slower).
    """

    def __init__(self, config: Any = None, size: str = "base", grad_checkpointing: bool = False) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        if not isinstance(config, Dinov2Config):
            config = dinov2_config(size, **dict(config or {}))
        self.model = Dinov2Model(config)
        self.num_register_tokens = int(getattr(config, "num_register_tokens", 0) or 0)
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch activation checkpointing of the transformer blocks (non-reentrant, as in timm and DINOv2)."""
        if enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls (B, D), patches (B, N, D))`` of ``images`` ``(B, C, H, W)``; ``masks`` ``(B, N)`` bool or None."""
        channels = self.model.config.num_channels
        if images.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) images, got {tuple(images.shape)}")
        if images.shape[1] == 1 and channels != 1:
            images = images.expand(-1, channels, -1, -1)
        if any(s % self.patch_size for s in images.shape[2:]):
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of patch {self.patch_size}")
        out = self.model(pixel_values=images, bool_masked_pos=masks).last_hidden_state
        return out[:, 0], out[:, 1 + self.num_register_tokens :]


class EvaDinoBackbone(nn.Module):
    """3D (or 2D) RAD-DINO backbone: an :class:`~common.networks.eva.EvaViT` with one CLS token and a learnable
    mask token (the Primus family used by COLIPRI), behind the adapter interface.

    Args:
        kwargs: :class:`~common.networks.eva.EvaViT` arguments (``num_cls_tokens`` and ``learnable_mask_token``
            are fixed to 1 and True).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        kwargs["num_cls_tokens"] = 1
        kwargs["learnable_mask_token"] = True
        self.vit = EvaViT(**kwargs)
        nn.init.trunc_normal_(self.vit.mask_token, std=0.02)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls (B, D), patches (B, N, D))`` of ``images`` ``(B, C, *spatial)``; ``masks`` ``(B, N)`` or None."""
        out = self.vit.forward_tokens(images, mask=masks)
        return out["cls"][:, 0], out["tokens"]


class DinoClsEncoder(nn.Module):
    """Inference network: image ``(B, 1, *spatial)`` -> CLS embedding ``(B, D)`` of a backbone adapter.

    Args:
        backbone: a :class:`DinoV2Backbone` or :class:`EvaDinoBackbone` (the EMA teacher's, after training).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)[0]

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"cls": (B, D), "patches": (B, N, D)}`` for :func:`common.evaluation.extract.extract_features`."""
        cls, patches = self.backbone(images)
        return {"cls": cls, "patches": patches}


def _read_weights(source: str, local_files_only: bool) -> dict[str, torch.Tensor]:
    try:
        return load_hub_checkpoint(source, local_files_only, what="DINOv2 weights")
    except FileNotFoundError as err:  # hub_file's OSError for an uncached Hub id is not a FileNotFoundError
        raise WeightsError(source, "no model.safetensors (or pytorch_model.bin) in the weights folder") from err


def _is_explicit_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\"))


def load_rad_dino_backbone(
    path: str | os.PathLike, local_files_only: bool | None = None, **config_overrides: Any
) -> DinoV2Backbone:
    """Load Hugging Face ``Dinov2Model`` weights (``microsoft/rad-dino``, ``facebook/dinov2-base``, ...: a folder
    with ``config.json`` and ``model.safetensors``, or a Hub id) into a :class:`DinoV2Backbone`, requiring every
    key to match.

    Nothing is executed from the folder (no ``trust_remote_code``); ``config.json`` is read as data. Keys saved from a
    wrapping model (``dinov2.`` prefix) are accepted. A Hub id is read from the Hugging Face cache (downloaded
    unless ``HF_HUB_OFFLINE`` is set or ``local_files_only``).

    Args:
        path: the folder (e.g. a local snapshot of ``microsoft/rad-dino``) or a Hub id.
        local_files_only: never reach the network; ``None`` means "if HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set".
        config_overrides: ``Dinov2Config`` fields to change that do not affect shapes (e.g. ``drop_path_rate``).

    Raises:
        DataContractError: a missing or invalid ``config.json``; :class:`~common.networks.weights.WeightsError` (a
            ``DataContractError``) for missing or unreadable weights, or missing, unexpected or mis-shaped keys.
        OSError: a Hub id that is not cached (offline) or cannot be downloaded, naming the id.
    """
    from transformers import Dinov2Config

    source = os.path.expanduser(os.fspath(path))
    local = hub_offline() if local_files_only is None else bool(local_files_only)
    if os.path.isdir(source) or _is_explicit_path(source):
        config_file = Path(source) / "config.json"
        if not config_file.is_file():
            raise DataContractError(source, "no config.json: expected a Hugging Face Dinov2Model folder")
    else:
        config_file = Path(hub_file(source, "config.json", local, what="DINOv2 weights"))
    try:
        fields = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataContractError(config_file, f"not a valid JSON config ({err})") from err
    if fields.get("model_type", "dinov2") != "dinov2":
        raise DataContractError(config_file, f"model_type is {fields.get('model_type')!r}, expected 'dinov2'")
    config = Dinov2Config.from_dict({**fields, **config_overrides})
    backbone = DinoV2Backbone(config)
    load_weights(backbone.model, _read_weights(source, local), key_map={"dinov2.": ""}, where=source)
    return backbone


def dinov2_backbone(
    config: Any = None,
    size: str = "base",
    init_weights: str | os.PathLike | None = None,
    grad_checkpointing: bool = False,
) -> DinoV2Backbone:
    """The 2D RAD-DINO backbone, randomly initialised or loaded from published ``Dinov2Model`` weights.

    RAD-DINO was fine-tuned from ``facebook/dinov2-base`` (model card: "Finetuned from model: dinov2-base"), so its
    training config passes that id (or a local copy) as ``init_weights``. The architecture then comes from the
    weights' ``config.json``; of ``config`` only ``drop_path_rate`` (training-time, shape-free) is applied, and its
    ``patch_size``/``hidden_size`` must agree with the weights.

    Args:
        config: ``Dinov2Config`` fields (see :class:`DinoV2Backbone`).
        size: DINOv2 size for a random initialisation.
        init_weights: a folder or Hub id of ``Dinov2Model`` weights; ``None`` for a random initialisation.
        grad_checkpointing: activation checkpointing of the transformer blocks.

    Raises:
        ValueError: the weights' patch size or width differ from the requested ones.
    """
    if init_weights is None or not os.fspath(init_weights):
        return DinoV2Backbone(config, size=size, grad_checkpointing=grad_checkpointing)
    fields = dict(config or {}) if not hasattr(config, "to_dict") else config.to_dict()
    overrides = {"drop_path_rate": fields["drop_path_rate"]} if "drop_path_rate" in fields else {}
    backbone = load_rad_dino_backbone(init_weights, **overrides)
    width = fields.get("hidden_size", DINOV2_SIZES.get(size, {}).get("hidden_size"))
    wanted = {"patch_size": fields.get("patch_size"), "hidden_size": width}
    loaded = backbone.model.config
    for name, value in wanted.items():
        if value is not None and getattr(loaded, name) != value:
            raise ValueError(f"{init_weights}: {name} is {getattr(loaded, name)}, the config asks for {value}")
    backbone.set_grad_checkpointing(grad_checkpointing)
    return backbone
