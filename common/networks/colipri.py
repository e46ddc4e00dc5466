"""COLIPRI networks: image tower, text tower, the two-tower model and the zero-shot inference network.

Wald et al., "Comprehensive language-image pre-training for 3D medical image understanding",
https://arxiv.org/abs/2510.15042; released code: PyPI ``colipri`` 0.1.3, weights ``microsoft/colipri``.

Module names reproduce the release, so its ``model.safetensors`` loads with no missing or unexpected key:
``image_encoder.backbone.*`` (Primus-M, :class:`~common.networks.eva.EvaViT`), ``image_encoder.projector.*``
(1x1 convolution 864 -> 768), ``image_encoder.pooler.attn.*``, ``text_encoder.backbone.*`` (a BERT without its
pooler), ``text_encoder.pooler.attn.*`` and the ``softmax_temperature`` buffer.

**Temperature.** The release keeps a fixed buffer ``softmax_temperature`` ``T`` and classifies with
``softmax(cos / T)``. Training instead learns a logit scale ``s`` (CLIP: initialised at 1/0.07, clamped at 100),
which lives in the contrastive loss (:class:`common.losses.clip_loss.ClipLoss`), not here, so that the exported
model holds no optimiser state. The two are the same quantity: ``T = 1 / s``; call
:meth:`ColipriModel.set_logit_scale` with the trained scale before exporting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.data.contract import DataContractError
from common.networks.eva import EvaViT
from common.networks.pooling import AttentionPool1D

__all__ = [
    "ColipriImageEncoder",
    "ColipriTextEncoder",
    "ColipriModel",
    "ZeroShotClassifier",
    "load_colipri_weights",
    "temperature_from_logit_scale",
]


def temperature_from_logit_scale(logit_scale: float | torch.Tensor, max_logit_scale: float = 100.0) -> float:
    """Softmax temperature ``1 / min(s, max_logit_scale)`` equivalent to a (linear) contrastive logit scale ``s``."""
    scale = float(logit_scale)
    if scale <= 0:
        raise ValueError(f"logit_scale must be positive, got {scale}")
    return 1.0 / min(scale, max_logit_scale)


class ColipriImageEncoder(nn.Module):
    """EVA backbone -> 1x1 convolution projector -> attention pooling -> L2 normalisation.

    Args:
        backbone: 2D or 3D :class:`EvaViT` (Primus-M for the release).
        projection_dim: joint embedding width.
        num_heads: heads of the attention pooler.
    """

    def __init__(self, backbone: EvaViT, projection_dim: int = 768, num_heads: int = 12) -> None:
        super().__init__()
        self.backbone = backbone
        conv = nn.Conv3d if backbone.spatial_dims == 3 else nn.Conv2d
        self.projector = conv(backbone.embed_dim, projection_dim, kernel_size=1)
        self.pooler = AttentionPool1D(projection_dim, num_heads)
        self.projection_dim = projection_dim

    @property
    def spatial_dims(self) -> int:
        return self.backbone.spatial_dims

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens ``(B, D, *grid)``: what the pooler attends over (and the report decoder reads)."""
        return self.projector(self.backbone(x))

    def pool(self, patch_map: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Global embedding ``(B, D)`` from a :meth:`patch_embeddings` map ``(B, D, *grid)``."""
        pooled = self.pooler(patch_map.flatten(2).transpose(1, 2))
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def dense_embeddings(self, patch_map: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Per-patch joint-space embeddings ``(B, D, *grid)`` from a :meth:`patch_embeddings` map (MaskCLIP trick)."""
        b, d, *grid = patch_map.shape
        dense = self.pooler.dense(patch_map.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, d, *grid)
        return F.normalize(dense, dim=1) if normalize else dense

    def encode(self, x: torch.Tensor, pool: bool = True, normalize: bool = True) -> torch.Tensor:
        """``(B, D)`` global embeddings, or with ``pool=False`` ``(B, D, *grid)`` dense joint-space embeddings."""
        patch_map = self.patch_embeddings(x)
        return self.pool(patch_map, normalize) if pool else self.dense_embeddings(patch_map, normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised global embeddings ``(B, D)`` of images ``(B, C, *spatial)``."""
        return self.encode(x)

    def forward_masked(self, x: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
        """Backbone tokens ``(B, N_keep, C)`` of the visible patches only (MAE encoder pass, no projection)."""
        return self.backbone.forward_tokens(x, keep_indices=keep_indices)["tokens"]


class ColipriTextEncoder(nn.Module):
    """BERT (pooler removed) -> attention pooling with the padding mask -> (optional linear) -> L2 normalisation.

    The release has no text projector (BERT-base width = joint width = 768). Give ``projection_dim`` to add a
    linear projection after pooling when the backbone width differs from the image side (e.g. MiniLM, 384).

    Args:
        backbone: a ``transformers.BertModel`` (or a model exposing one as ``.bert``, like CXR-BERT).
        num_heads: heads of the attention pooler.
        projection_dim: joint width; ``None`` or the backbone width means no projector.
    """

    def __init__(self, backbone: nn.Module, num_heads: int = 12, projection_dim: int | None = None) -> None:
        super().__init__()
        if not hasattr(backbone, "embeddings") and hasattr(backbone, "bert"):
            backbone = backbone.bert
        if not hasattr(backbone, "config") or not hasattr(backbone.config, "hidden_size"):
            raise ValueError(f"backbone must be a transformers BertModel-like model, got {type(backbone).__name__}")
        backbone.pooler = None  # COLIPRI pools with its own attention pooler
        self.backbone = backbone
        width = int(backbone.config.hidden_size)
        self.pooler = AttentionPool1D(width, num_heads)
        self.projector = (
            nn.Linear(width, projection_dim) if projection_dim is not None and projection_dim != width else None
        )
        self.projection_dim = width if self.projector is None else int(projection_dim)

    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``(B, L, width)``."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pool: bool = True,
        normalize: bool = True,
    ) -> torch.Tensor:
        """``(B, D)`` text embeddings; ``pool=False`` gives the ``(B, L, width)`` token states (projected if needed)."""
        tokens = self.token_embeddings(input_ids, attention_mask)
        if pool:
            tokens = self.pooler(tokens, attention_mask)
        if self.projector is not None:
            tokens = self.projector(tokens)
        return F.normalize(tokens, dim=-1) if normalize else tokens


class ColipriModel(nn.Module):
    """The exported two-tower model: image and (optional) text encoders plus the classification temperature.

    Args:
        image_encoder: image tower.
        text_encoder: text tower, ``None`` for an image-only model.
        temperature: initial ``softmax_temperature`` (the release stores its trained value).
    """

    def __init__(
        self,
        image_encoder: ColipriImageEncoder,
        text_encoder: ColipriTextEncoder | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if text_encoder is not None and text_encoder.projection_dim != image_encoder.projection_dim:
            raise ValueError(
                f"text width {text_encoder.projection_dim} differs from image width {image_encoder.projection_dim}; "
                "give ColipriTextEncoder a projection_dim"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.register_buffer("softmax_temperature", torch.tensor(float(temperature)))

    def encode_image(self, images: torch.Tensor, pool: bool = True, normalize: bool = True) -> torch.Tensor:
        """See :meth:`ColipriImageEncoder.encode`."""
        return self.image_encoder.encode(images, pool=pool, normalize=normalize)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """``(B, D)`` text embeddings; raises ``RuntimeError`` for an image-only model."""
        if self.text_encoder is None:
            raise RuntimeError("this ColipriModel is image-only (text_encoder=None)")
        return self.text_encoder(input_ids, attention_mask, normalize=normalize)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``image_embeddings`` and, when ``input_ids`` is given, ``text_embeddings`` (both L2-normalised)."""
        out = {"image_embeddings": self.encode_image(images)}
        if input_ids is not None:
            out["text_embeddings"] = self.encode_text(input_ids, attention_mask)
        return out

    def classify(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Softmax over the given prompts of ``cos / softmax_temperature``: ``(B, D) x (P, D) -> (B, P)``."""
        return (image_embeddings @ text_embeddings.t() / self.softmax_temperature).softmax(dim=-1)

    @torch.no_grad()
    def set_logit_scale(self, logit_scale: float | torch.Tensor, max_logit_scale: float = 100.0) -> None:
        """Store a trained contrastive logit scale ``s`` as ``softmax_temperature = 1 / s`` (for export)."""
        self.softmax_temperature.fill_(temperature_from_logit_scale(logit_scale, max_logit_scale))


def _short(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def load_colipri_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an official (or our own) COLIPRI checkpoint into ``model`` strictly.

    ``.safetensors`` files are read with :mod:`safetensors`; anything else with
    ``torch.load(weights_only=True)``. Non-persistent ``position_ids`` buffers that older ``transformers``
    versions saved are ignored, and so are ``text_encoder.*`` keys when ``model.text_encoder`` is ``None``.

    Args:
        model: a :class:`ColipriModel` (or any module whose keys match the file).
        path: checkpoint file.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        DataContractError: naming the file when it is missing, unreadable or does not match the model (listing the
            missing, unexpected and mis-shaped keys).
    """
    if not os.path.isfile(path):
        raise DataContractError(path, "checkpoint file does not exist")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
                state = state["state_dict"]
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise DataContractError(path, f"cannot read checkpoint ({err})") from err
    if not isinstance(state, Mapping):
        raise DataContractError(path, f"checkpoint holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    if getattr(model, "text_encoder", "absent") is None:
        state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys {_short(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
        if mis_shaped:
            problems.append(f"{len(mis_shaped)} shape mismatches {_short(mis_shaped)}")
        raise DataContractError(path, "checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def _prompt_pairs(prompt_set: Any) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Normalise a prompt set into keys, positive and negative prompt lists."""
    keys, positives, negatives = [], [], []
    items = prompt_set.items() if isinstance(prompt_set, Mapping) else [(f.key, f) for f in prompt_set]
    for key, value in items:
        if hasattr(value, "prompts_positive"):
            pos, neg = value.prompts_positive, value.prompts_negative
        else:
            pos, neg = value
        pos, neg = [pos] if isinstance(pos, str) else list(pos), [neg] if isinstance(neg, str) else list(neg)
        if not pos or len(pos) != len(neg):
            raise ValueError(
                f"finding {key!r}: need as many negative as positive prompts, got {len(pos)} and {len(neg)}"
            )
        keys.append(str(key))
        positives.append(pos)
        negatives.append(neg)
    if not keys:
        raise ValueError("prompt_set is empty")
    if len({len(p) for p in positives}) != 1:
        raise ValueError(f"every finding needs the same number of prompt pairs, got {[len(p) for p in positives]}")
    return keys, positives, negatives


class ZeroShotClassifier(nn.Module):
    """Image-only inference network: images -> per-finding probabilities ``(B, K)``.

    For finding ``k`` and prompt pair ``p`` the probability of presence is the two-way softmax of
    ``(cos(image, neg_kp), cos(image, pos_kp)) / T`` (as the release's README example does with a
    ("No X", "X") pair); the output is the **mean of these probabilities over the P prompt pairs**. Prompt
    embeddings are precomputed buffers, so the network holds no text tower and traces with ``torch.jit.trace``.

    Args:
        image_encoder: image tower.
        prompt_embeddings_pos: ``(K, P, D)`` embeddings of the positive prompts (normalised here).
        prompt_embeddings_neg: ``(K, P, D)`` embeddings of the paired negative prompts.
        temperature: softmax temperature (the model's ``softmax_temperature``).
        finding_keys: optional names of the K findings (kept as a plain attribute).
    """

    def __init__(
        self,
        image_encoder: ColipriImageEncoder,
        prompt_embeddings_pos: torch.Tensor,
        prompt_embeddings_neg: torch.Tensor,
        temperature: float | torch.Tensor = 1.0,
        finding_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if prompt_embeddings_pos.ndim != 3 or prompt_embeddings_pos.shape != prompt_embeddings_neg.shape:
            raise ValueError(
                f"prompt embeddings must both be (K, P, D), got {tuple(prompt_embeddings_pos.shape)} "
                f"and {tuple(prompt_embeddings_neg.shape)}"
            )
        if prompt_embeddings_pos.shape[-1] != image_encoder.projection_dim:
            raise ValueError(
                f"prompt width {prompt_embeddings_pos.shape[-1]} != image width {image_encoder.projection_dim}"
            )
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be positive, got {float(temperature)}")
        if finding_keys is not None and len(finding_keys) != prompt_embeddings_pos.shape[0]:
            raise ValueError(f"{len(finding_keys)} finding keys for {prompt_embeddings_pos.shape[0]} findings")
        self.image_encoder = image_encoder
        self.register_buffer("prompt_embeddings_pos", F.normalize(prompt_embeddings_pos.detach().float(), dim=-1))
        self.register_buffer("prompt_embeddings_neg", F.normalize(prompt_embeddings_neg.detach().float(), dim=-1))
        self.register_buffer("softmax_temperature", torch.as_tensor(temperature, dtype=torch.float32).detach().clone())
        self.finding_keys = list(finding_keys) if finding_keys is not None else None

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: ColipriModel, tokenizer: Any, prompt_set: Any, max_length: int = 64
    ) -> ZeroShotClassifier:
        """Build from a trained :class:`ColipriModel`, encoding every prompt once with its text tower.

        Args:
            model: model with a text encoder.
            tokenizer: a Hugging Face tokenizer (callable with ``return_tensors="pt"``).
            prompt_set: a sequence of :class:`~common.data.findings.Finding` (``key``, ``prompts_positive``,
                ``prompts_negative``) or a mapping ``key -> (positive prompts, negative prompts)``.
            max_length: tokenizer truncation length.
        """
        keys, positives, negatives = _prompt_pairs(prompt_set)
        k, p = len(keys), len(positives[0])
        device = model.softmax_temperature.device
        was_training = model.training
        model.eval()

        def embed(texts: list[str]) -> torch.Tensor:
            batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))

        pos = embed([t for group in positives for t in group]).reshape(k, p, -1)
        neg = embed([t for group in negatives for t in group]).reshape(k, p, -1)
        model.train(was_training)
        return cls(model.image_encoder, pos, neg, model.softmax_temperature, finding_keys=keys)

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-finding probabilities ``(B, K)`` from global joint-space embeddings ``(B, D)``."""
        return self._probabilities(embeddings, "bd,kpd->bkp")

    def _probabilities(self, embeddings: torch.Tensor, equation: str) -> torch.Tensor:
        pos = torch.einsum(equation, embeddings, self.prompt_embeddings_pos.to(embeddings.dtype))
        neg = torch.einsum(equation, embeddings, self.prompt_embeddings_neg.to(embeddings.dtype))
        # softmax over (neg, pos) of similarity / T == sigmoid((pos - neg) / T); then mean over prompt pairs
        return torch.sigmoid((pos - neg) / self.softmax_temperature).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-finding probabilities ``(B, K)`` for images ``(B, C, *spatial)``."""
        return self.probabilities(self.image_encoder(x))

    def dense_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch finding probabilities ``(B, K, *grid)`` from the dense joint-space embeddings."""
        dense = self.image_encoder.encode(x, pool=False)
        b, d, *grid = dense.shape
        probs = self._probabilities(dense.flatten(2), "bdn,kpd->bkpn")
        return probs.reshape(b, -1, *grid)

    def dense_similarity(self, x: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine maps ``(B, P, *grid)`` between per-patch embeddings of ``x`` and ``text_embeddings`` ``(P, D)``."""
        dense = self.image_encoder.encode(x, pool=False)
        text = F.normalize(text_embeddings.to(dense.dtype), dim=-1)
        b, d, *grid = dense.shape
        return torch.einsum("bdn,pd->bpn", dense.flatten(2), text).reshape(b, -1, *grid)
