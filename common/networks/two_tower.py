"""Image-text two-tower model, method-neutral: image tower, text tower, classification temperature.

Every paired method (COLIPRI, G2D, PRIOR, MPMA) builds its towers from these by configuration; its objective
(``common.methods.<method>``) reads the token-level outputs it needs (:meth:`ImageTower.patch_embeddings`,
:meth:`TextTower.token_embeddings`, pooling attention) and the exported model answers :meth:`TwoTowerModel.encode_image`
/ :meth:`TwoTowerModel.encode_text`, which is all the evaluation (``common.evaluation.two_tower``), the zero-shot
classifier (``common.networks.zero_shot``) and the embedding writer need.

**Module names reproduce the COLIPRI release** (PyPI ``colipri`` 0.1.3, weights ``microsoft/colipri``), so its
``model.safetensors`` loads with no missing or unexpected key and no key map: ``image_encoder.backbone.*``
(Primus-M), ``image_encoder.projector.*`` (1x1 convolution 864 -> 768), ``image_encoder.pooler.attn.*``,
``text_encoder.backbone.*`` (a BERT without its pooler), ``text_encoder.pooler.attn.*`` and the
``softmax_temperature`` buffer.

**Temperature.** The model keeps a fixed buffer ``softmax_temperature`` ``T`` and classifies with
``softmax(cos / T)`` (as the COLIPRI release does). Training learns a logit scale ``s`` (CLIP: initialised at 1/0.07,
clamped at 100) inside the method's contrastive loss (:class:`common.losses.clip_loss.ClipLoss`), so that the
exported model holds no training state and the released checkpoint keeps its keys. The two are the same quantity:
``T = 1 / s``; :meth:`TwoTowerModel.set_logit_scale` stores the trained scale before export.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.networks.pooling import AttentionPool1D

__all__ = ["ImageTower", "TextTower", "TwoTowerModel", "encode_texts", "temperature_from_logit_scale"]


def temperature_from_logit_scale(logit_scale: float | torch.Tensor, max_logit_scale: float = 100.0) -> float:
    """Softmax temperature ``1 / min(s, max_logit_scale)`` equivalent to a (linear) contrastive logit scale ``s``."""
    scale = float(logit_scale)
    if scale <= 0:
        raise ValueError(f"logit_scale must be positive, got {scale}")
    return 1.0 / min(scale, max_logit_scale)


def _feature_width(backbone: nn.Module) -> int:
    for name in ("embed_dim", "out_channels", "num_features", "feature_dim"):
        width = getattr(backbone, name, None)
        if isinstance(width, int):
            return width
    raise ValueError(f"cannot tell the feature width of {type(backbone).__name__}: pass feature_dim")


class ImageTower(nn.Module):
    """Backbone feature map -> projection -> pooling -> L2 normalisation (the image half of a two-tower model).

    The backbone maps images ``(B, C, *spatial)`` to a feature map ``(B, F, *grid)`` (a ViT's patch tokens on
    their grid, a CNN's last stage). With ``project_tokens`` (COLIPRI) a pointwise convolution projects every token
    to the joint width before the pooler; without it (CLIP / PRIOR style) the pooler runs at backbone width and a
    linear layer projects the pooled vector.

    Args:
        backbone: 2D or 3D feature-map encoder (e.g. :class:`~common.networks.eva.EvaViT`).
        projection_dim: joint embedding width.
        num_heads: heads of the default attention pooler.
        project_tokens: project tokens before pooling (True) or the pooled vector after it (False).
        feature_dim: backbone width when the backbone has no ``embed_dim`` / ``out_channels`` attribute.
        pooler: ``(B, N, W), mask -> (B, W')`` module; default :class:`AttentionPool1D` (masked-mean query).
        spatial_dims: 2 or 3 when the backbone has no ``spatial_dims`` attribute.
        projector: replaces the default projection (a pointwise convolution on the map with ``project_tokens``, a
            linear layer on the pooled vector otherwise), e.g. G2D's non-linear
            :class:`~common.networks.projection.NonLinearProjection`; it must output ``projection_dim`` channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection_dim: int = 768,
        num_heads: int = 12,
        project_tokens: bool = True,
        feature_dim: int | None = None,
        pooler: nn.Module | None = None,
        spatial_dims: int | None = None,
        projector: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self._spatial_dims = int(spatial_dims or getattr(backbone, "spatial_dims", 0))
        if self._spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self._spatial_dims}")
        width = int(feature_dim) if feature_dim is not None else _feature_width(backbone)
        self.project_tokens = bool(project_tokens)
        if projector is not None:
            self.projector = projector
        elif self.project_tokens:
            conv = nn.Conv3d if self._spatial_dims == 3 else nn.Conv2d
            self.projector = conv(width, projection_dim, kernel_size=1)
        else:
            self.projector = nn.Linear(width, projection_dim)
        pool_width = projection_dim if self.project_tokens else width
        self.pooler = pooler if pooler is not None else AttentionPool1D(pool_width, num_heads)
        # poolers with positional embeddings (PositionalAttentionPool) are told the token grid's shape
        self._pooler_takes_grid = "grid_size" in inspect.signature(self.pooler.forward).parameters
        self.projection_dim = int(projection_dim)

    @property
    def spatial_dims(self) -> int:
        return self._spatial_dims

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map ``(B, F, *grid)``."""
        return self.backbone(x)

    def project(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The token map the pooler attends over, from a backbone feature map (projected when ``project_tokens``)."""
        return self.projector(feature_map) if self.project_tokens else feature_map

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The token map ``(B, W, *grid)`` the pooler attends over (projected when ``project_tokens``)."""
        return self.project(self.feature_map(x))

    def pool(
        self, patch_map: torch.Tensor, normalize: bool = True, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Global embedding ``(B, D)`` from a :meth:`patch_embeddings` map ``(B, W, *grid)``.

        With ``return_attention`` also the pooler's attention over the tokens, ``(B, heads, *grid)``.
        """
        tokens = patch_map.flatten(2).transpose(1, 2)
        takes_grid = self._pooler_takes_grid and not torch.jit.is_tracing()  # a traced network keeps its grid
        grid = {"grid_size": tuple(patch_map.shape[2:])} if takes_grid else {}
        attention = None
        if return_attention:
            pooled, attention = self.pooler(tokens, return_attention=True, **grid)
            attention = attention.reshape(*attention.shape[:2], *patch_map.shape[2:])
        else:
            pooled = self.pooler(tokens, **grid)
        if not self.project_tokens:
            pooled = self.projector(pooled)
        pooled = F.normalize(pooled, dim=-1) if normalize else pooled
        return (pooled, attention) if return_attention else pooled

    def dense_embeddings(self, patch_map: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Per-token joint-space embeddings ``(B, D, *grid)`` from a :meth:`patch_embeddings` map (MaskCLIP trick).

        Needs a pooler with a ``dense`` method (:class:`AttentionPool1D`).
        """
        b, _, *grid = patch_map.shape
        dense = self.pooler.dense(patch_map.flatten(2).transpose(1, 2))
        if not self.project_tokens:
            dense = self.projector(dense)
        dense = dense.transpose(1, 2).reshape(b, -1, *grid)
        return F.normalize(dense, dim=1) if normalize else dense

    def encode(self, x: torch.Tensor, pool: bool = True, normalize: bool = True) -> torch.Tensor:
        """``(B, D)`` global embeddings, or with ``pool=False`` ``(B, D, *grid)`` dense joint-space embeddings."""
        patch_map = self.patch_embeddings(x)
        return self.pool(patch_map, normalize) if pool else self.dense_embeddings(patch_map, normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised global embeddings ``(B, D)`` of images ``(B, C, *spatial)``."""
        return self.encode(x)


class TextTower(nn.Module):
    """BERT-family encoder (pooler removed) -> pooling with the padding mask -> (optional linear) -> L2 norm.

    Without ``projection_dim`` (or equal to the backbone width) there is no projector, as in the COLIPRI release
    (BERT-base width = joint width = 768); give it when the widths differ (e.g. MiniLM, 384).

    Args:
        backbone: a ``transformers.BertModel`` (or a model exposing one as ``.bert``, like CXR-BERT).
        num_heads: heads of the default attention pooler.
        projection_dim: joint width; ``None`` or the backbone width means no projector.
        pooler: ``(B, L, W), mask -> (B, W)`` module; default :class:`AttentionPool1D`
            (:class:`~common.networks.pooling.FirstTokenPool` gives the ``[CLS]`` token).
        projector: replaces the linear projection (applied after pooling, or per token with ``pool=False``), e.g. a
            :class:`~common.networks.projection.NonLinearProjection`; it must output ``projection_dim`` channels.
        project_tokens: project every token ``(B, L, W)`` before pooling (G2D's release: the projection's BatchNorm
            then sees every token position of the batch) instead of the pooled vector.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_heads: int = 12,
        projection_dim: int | None = None,
        pooler: nn.Module | None = None,
        projector: nn.Module | None = None,
        project_tokens: bool = False,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "embeddings") and hasattr(backbone, "bert"):
            backbone = backbone.bert
        if not hasattr(backbone, "config") or not hasattr(backbone.config, "hidden_size"):
            raise ValueError(f"backbone must be a transformers BertModel-like model, got {type(backbone).__name__}")
        backbone.pooler = None  # pooled by ``pooler`` instead
        self.backbone = backbone
        width = int(backbone.config.hidden_size)
        self.width = width
        self.pooler = pooler if pooler is not None else AttentionPool1D(width, num_heads)
        if projector is not None and projection_dim is None:
            raise ValueError("a custom text projector needs its output width as projection_dim")
        if projector is None and projection_dim is not None and projection_dim != width:
            projector = nn.Linear(width, projection_dim)
        self.projector = projector
        self.project_tokens = bool(project_tokens) and projector is not None
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
        sentence_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, D)`` text embeddings; ``pool=False`` gives the ``(B, L, D)`` token states (projected if needed).

        ``sentence_index`` ``(B, L)`` (each token's sentence number, see :mod:`common.transforms.sentences`) is
        passed to poolers over sentences (:class:`~common.networks.sentence_pool.SentencePooler`).
        """
        tokens = self.token_embeddings(input_ids, attention_mask)
        if self.project_tokens:
            tokens = self.projector(tokens)
        if pool:
            extra = {} if sentence_index is None else {"sentence_index": sentence_index}
            tokens = self.pooler(tokens, attention_mask, **extra)
        if self.projector is not None and not self.project_tokens:
            tokens = self.projector(tokens)
        return F.normalize(tokens, dim=-1) if normalize else tokens


class TwoTowerModel(nn.Module):
    """The exported image-text model: image and (optional) text towers plus the classification temperature.

    Args:
        image_encoder: image tower (:class:`ImageTower` or any module with ``encode`` and ``projection_dim``).
        text_encoder: text tower, ``None`` for an image-only model.
        temperature: initial ``softmax_temperature`` (the COLIPRI release stores its trained value).
    """

    def __init__(
        self,
        image_encoder: ImageTower,
        text_encoder: TextTower | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if text_encoder is not None and text_encoder.projection_dim != image_encoder.projection_dim:
            raise ValueError(
                f"text width {text_encoder.projection_dim} differs from image width {image_encoder.projection_dim}; "
                "give the TextTower a projection_dim"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.register_buffer("softmax_temperature", torch.tensor(float(temperature)))

    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        return self.image_encoder.projection_dim

    def encode_image(self, images: torch.Tensor, pool: bool = True, normalize: bool = True) -> torch.Tensor:
        """See :meth:`ImageTower.encode`."""
        return self.image_encoder.encode(images, pool=pool, normalize=normalize)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        normalize: bool = True,
        pool: bool = True,
        sentence_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, D)`` text embeddings (``pool=False``: token states); raises ``RuntimeError`` if image-only."""
        if self.text_encoder is None:
            raise RuntimeError("this TwoTowerModel is image-only (text_encoder=None)")
        extra = {} if sentence_index is None else {"sentence_index": sentence_index}
        return self.text_encoder(input_ids, attention_mask, pool=pool, normalize=normalize, **extra)

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


@torch.no_grad()
def encode_texts(
    texts: Sequence[str],
    model: TwoTowerModel,
    tokenizer: Any,
    max_length: int = 512,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of ``texts`` from ``model.encode_text``, in batches.

    A text tower pooling over sentences (``pooler.pools_sentences``, PRIOR) gets each text's sentence numbers
    (:class:`common.transforms.sentences.TokenizeSentencesd`), as in training.
    """
    pooler = getattr(getattr(model, "text_encoder", None), "pooler", None)
    if getattr(pooler, "pools_sentences", False):
        return _encode_sentences(texts, model, tokenizer, max_length, batch_size, device)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=max_length,
            return_tensors="pt",
        )
        emb = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out, axis=0)


@torch.no_grad()
def _encode_sentences(
    texts: Sequence[str], model: TwoTowerModel, tokenizer: Any, max_length: int, batch_size: int,
    device: torch.device | str,
) -> np.ndarray:
    from common.transforms.sentences import TokenizeSentencesd  # transforms build on networks, not the reverse

    tokenize = TokenizeSentencesd("report", tokenizer=tokenizer, max_length=max_length)
    out = []
    for start in range(0, len(texts), batch_size):
        items = [tokenize({"report": text}) for text in texts[start : start + batch_size]]
        batch = {key: torch.stack([item[key] for item in items]).to(device) for key in items[0] if key != "report"}
        emb = model.encode_text(batch["input_ids"], batch["attention_mask"], sentence_index=batch["sentence_index"])
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out, axis=0)
