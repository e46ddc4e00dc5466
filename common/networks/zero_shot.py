"""Zero-shot findings classification from any two-tower model: the inference ``network_def`` of paired methods.

:class:`ZeroShotClassifier` holds the image tower and the per-finding prompt embeddings (encoded once by the text
tower), so the exported network needs no text tower and traces with ``torch.jit.trace``.
:class:`DenseZeroShotHeads` adds the global embedding and per-finding similarity maps for sliding-window inference
(:class:`common.inferers.PatchSlidingWindowInferer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.networks.two_tower import TwoTowerModel

__all__ = ["DenseZeroShotHeads", "LocalDenseZeroShotHeads", "LocalZeroShotClassifier", "ZeroShotClassifier"]


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
    ``(cos(image, neg_kp), cos(image, pos_kp)) / T`` (as the COLIPRI release's README example does with a
    ("No X", "X") pair); the output is the **mean of these probabilities over the P prompt pairs**. Prompt
    embeddings are precomputed buffers, so the network holds no text tower and traces with ``torch.jit.trace``.

    Args:
        image_encoder: image tower (``encode(x, pool=...)`` and ``projection_dim``, e.g. an ``ImageTower``).
        prompt_embeddings_pos: ``(K, P, D)`` embeddings of the positive prompts (normalised here).
        prompt_embeddings_neg: ``(K, P, D)`` embeddings of the paired negative prompts.
        temperature: softmax temperature (the model's ``softmax_temperature``).
        finding_keys: optional names of the K findings (kept as a plain attribute).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
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
        cls, model: TwoTowerModel, tokenizer: Any, prompt_set: Any, max_length: int = 64
    ) -> ZeroShotClassifier:
        """Build from a trained :class:`~common.networks.two_tower.TwoTowerModel`, encoding every prompt once with its text tower.

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
        b, _, *grid = dense.shape
        probs = self._probabilities(dense.flatten(2), "bdn,kpd->bkpn")
        return probs.reshape(b, -1, *grid)

    def dense_similarity(self, x: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine maps ``(B, P, *grid)`` between per-patch embeddings of ``x`` and ``text_embeddings`` ``(P, D)``."""
        dense = self.image_encoder.encode(x, pool=False)
        text = F.normalize(text_embeddings.to(dense.dtype), dim=-1)
        b, _, *grid = dense.shape
        return torch.einsum("bdn,pd->bpn", dense.flatten(2), text).reshape(b, -1, *grid)


class DenseZeroShotHeads(nn.Module):
    """Inference network for sliding-window embedding (``embed.yaml``): a zero-shot classifier's image tower and prompts.

    :meth:`patch_embeddings` is what the sliding windows run; :meth:`heads` turns a (stitched) patch map into
    ``embedding`` ``(B, D)``, ``probabilities`` ``(B, K)`` (as :class:`ZeroShotClassifier`) and ``similarity``
    ``(B, K, *grid)`` (mean over prompt pairs of positive-minus-negative cosine). ``forward`` is the plain path.

    With a ``decoder`` (G2D's pre-trained U-Net decoder) the plain path also returns ``segmentation``
    ``(B, 1, *spatial)``: the decoder's sigmoid on the image tower's feature pyramid (``backbone.features``), i.e. the
    pseudo-segmentation the method learned; sliding windows (:meth:`heads`) do not produce it.

    Args:
        classifier: zero-shot classifier holding the image tower, the ``(K, P, D)`` prompt embeddings and the
            temperature (e.g. :meth:`ZeroShotClassifier.from_model`).
        decoder: optional ``pyramid -> logits`` decoder at input resolution.
    """

    def __init__(self, classifier: ZeroShotClassifier, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.decoder = decoder
        self.finding_keys = classifier.finding_keys

    @classmethod
    def from_model(
        cls,
        model: TwoTowerModel,
        tokenizer: Any,
        prompt_set: Any,
        max_length: int = 64,
        decoder: nn.Module | None = None,
    ) -> DenseZeroShotHeads:
        """Encode the prompts once with ``model``'s text tower (see :meth:`ZeroShotClassifier.from_model`)."""
        return cls(ZeroShotClassifier.from_model(model, tokenizer, prompt_set, max_length=max_length), decoder)

    @property
    def image_encoder(self) -> nn.Module:
        return self.classifier.image_encoder

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Projected patch map ``(B, D, *grid)`` of images ``(B, C, *spatial)``."""
        return self.image_encoder.patch_embeddings(x)

    def heads(self, patch_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global embedding, zero-shot probabilities and finding similarity maps from a patch map."""
        encoder, clf = self.image_encoder, self.classifier
        embedding = encoder.pool(patch_map)
        dense = encoder.dense_embeddings(patch_map)
        b, _, *grid = dense.shape
        contrast = (clf.prompt_embeddings_pos - clf.prompt_embeddings_neg).mean(dim=1).to(dense.dtype)  # (K, D)
        similarity = torch.einsum("bdn,kd->bkn", dense.flatten(2), contrast).reshape(b, -1, *grid)
        # the classifier's own probability rule (two-way softmax per prompt pair, mean over pairs)
        probabilities = clf.probabilities(embedding)
        return {"embedding": embedding, "probabilities": probabilities, "similarity": similarity}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            return self.heads(self.patch_embeddings(x))
        pyramid = self.image_encoder.backbone.features(x)
        out = self.heads(self.image_encoder.project(pyramid[-1]))
        out["segmentation"] = torch.sigmoid(self.decoder(pyramid))
        return out


class LocalZeroShotClassifier(ZeroShotClassifier):
    """Zero-shot findings from the global embedding **and** a local image-prompt attention score (PRIOR's rule).

    PRIOR's zero-shot inference (Cheng et al., ICCV 2023; release ``downstream/zero_classification_model.py``) adds to
    the softmax of the global prompt logits ``0.5 x`` the softmax of a local score: the mean sigmoid cross-attention
    (:class:`~common.networks.local_attention.LocalCrossAttention`) between the image's local tokens and the prompt's
    sentence (prototype) embedding, averaged over both directions. For a finding with (negative, positive) prompt
    pairs the two-way version is ``p = (p_global + w p_local) / (1 + w)`` with ``p_global`` as
    :class:`ZeroShotClassifier` and ``p_local`` the two-way softmax of (negative, positive) local scores, each
    averaged over the prompt pairs; dividing by ``1 + w`` keeps ``p`` a probability (the release ranks classes by
    the unnormalised sum). The local scores are means of sigmoids in ``[0, 1]``, so ``p_local`` stays close to 0.5
    by construction, as in the release; ``local_weight=0`` gives the global rule.

    Args:
        image_encoder, prompt_embeddings_pos, prompt_embeddings_neg, temperature, finding_keys: as
            :class:`ZeroShotClassifier`.
        local_projection: backbone width -> joint width, applied to each local token (PRIOR's
            ``local_image_projection``).
        cross_attention: the trained local cross-attention.
        prompt_sentences_pos, prompt_sentences_neg: ``(K, P, D)`` sentence (prototype) embeddings of the prompts.
        local_weight: ``w`` (the release: 0.5).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_embeddings_pos: torch.Tensor,
        prompt_embeddings_neg: torch.Tensor,
        local_projection: nn.Module,
        cross_attention: nn.Module,
        prompt_sentences_pos: torch.Tensor,
        prompt_sentences_neg: torch.Tensor,
        temperature: float | torch.Tensor = 1.0,
        finding_keys: Sequence[str] | None = None,
        local_weight: float = 0.5,
    ) -> None:
        super().__init__(image_encoder, prompt_embeddings_pos, prompt_embeddings_neg, temperature, finding_keys)
        if (
            prompt_sentences_pos.ndim != 3
            or prompt_sentences_pos.shape[:2] != prompt_embeddings_pos.shape[:2]
            or prompt_sentences_pos.shape != prompt_sentences_neg.shape
        ):
            raise ValueError(
                f"prompt sentences must both be (K, P, D) for {tuple(prompt_embeddings_pos.shape[:2])} prompts, got "
                f"{tuple(prompt_sentences_pos.shape)} and {tuple(prompt_sentences_neg.shape)}"
            )
        if local_weight < 0:
            raise ValueError(f"local_weight must be >= 0, got {local_weight}")
        self.local_projection = local_projection
        self.cross_attention = cross_attention
        self.register_buffer("prompt_sentences_pos", prompt_sentences_pos.detach().float().clone())
        self.register_buffer("prompt_sentences_neg", prompt_sentences_neg.detach().float().clone())
        self.local_weight = float(local_weight)

    @classmethod
    @torch.no_grad()
    def from_model(  # type: ignore[override]
        cls,
        model: TwoTowerModel,
        tokenizer: Any,
        prompt_set: Any,
        local_projection: nn.Module,
        cross_attention: nn.Module,
        local_weight: float = 0.5,
        max_length: int = 64,
    ) -> LocalZeroShotClassifier:
        """Encode every prompt once: its global embedding and its sentence (prototype) embedding.

        ``model``'s text pooler must pool over sentences (:class:`~common.networks.sentence_pool.SentencePooler`);
        each prompt is one sentence, quantised when the pooler uses prototypes, as the release does.
        """
        glob = ZeroShotClassifier.from_model(model, tokenizer, prompt_set, max_length=max_length)
        keys, positives, negatives = _prompt_pairs(prompt_set)
        k, p = len(keys), len(positives[0])
        text = model.text_encoder
        device = model.softmax_temperature.device
        was_training = model.training
        model.eval()

        def sentences(texts: list[str]) -> torch.Tensor:
            batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            mask = batch["attention_mask"].to(device)
            tokens = text.projector(text.token_embeddings(batch["input_ids"].to(device), mask))
            embedded, valid = text.pooler.sentences(tokens, mask)
            if text.pooler.use_prototypes:
                embedded, _ = text.pooler.quantise(embedded, valid)
            return embedded[:, 0]

        pos = sentences([t for group in positives for t in group]).reshape(k, p, -1)
        neg = sentences([t for group in negatives for t in group]).reshape(k, p, -1)
        model.train(was_training)
        return cls(
            glob.image_encoder,
            glob.prompt_embeddings_pos,
            glob.prompt_embeddings_neg,
            local_projection,
            cross_attention,
            pos,
            neg,
            glob.softmax_temperature,
            keys,
            local_weight,
        )

    def _prompt_sentences(self) -> torch.Tensor:
        """The ``2 K P`` prompt sentences ``(2 K P, D)``: every positive prompt, then every negative one."""
        return torch.cat([self.prompt_sentences_pos, self.prompt_sentences_neg]).reshape(
            -1, self.prompt_sentences_pos.shape[-1]
        )

    def _attend(self, feature_map: torch.Tensor, sentences: torch.Tensor):
        """Cross-attention between each image's projected local tokens and each of ``M`` sentences, one at a time:
        ``image_attention`` ``(B, M, N, 1)``, ``text_attention`` ``(B, M, 1, N)``."""
        tokens = self.local_projection(feature_map.flatten(2).transpose(1, 2))  # (B, N, D)
        return self.cross_attention(tokens.unsqueeze(1), sentences.to(tokens.dtype)[None, :, None])

    def local_scores(self, feature_map: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """Mean sigmoid attention ``(B, M)`` between each image's local tokens and ``M`` sentences ``(M, D)``."""
        out = self._attend(feature_map, sentences)
        return 0.5 * (out.image_attention.mean(dim=(-2, -1)) + out.text_attention.mean(dim=(-2, -1)))

    def local_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Sentence-patch maps ``(B, K, *spatial)`` on the input grid: for each finding, the sigmoid attention of every
        local token to the positive prompts' sentences minus that to the negative ones (mean over prompt pairs), in
        ``[-1, 1]``, upsampled (bi/trilinear) from the token grid to the input size."""
        return self._maps(self.image_encoder.backbone(x), x.shape[2:])

    def _maps(self, feature_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        b = feature_map.shape[0]
        k, p, _ = self.prompt_sentences_pos.shape
        attention = self._attend(feature_map, self._prompt_sentences()).image_attention
        pos, neg = attention[..., 0].reshape(b, 2, k, p, -1).unbind(dim=1)  # (B, K, P, N) each
        maps = (pos - neg).mean(dim=2).reshape(b, k, *feature_map.shape[2:])
        mode = "trilinear" if maps.ndim == 5 else "bilinear"
        return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)

    def _combined_probabilities(self, feature_map: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        probabilities = self.probabilities(embedding)
        if self.local_weight == 0:
            return probabilities
        k, p, _ = self.prompt_sentences_pos.shape
        pos, neg = self.local_scores(feature_map, self._prompt_sentences()).reshape(-1, 2, k, p).unbind(dim=1)
        local = torch.sigmoid(pos - neg).mean(dim=2)
        return (probabilities + self.local_weight * local) / (1.0 + self.local_weight)

    def dense_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One backbone pass: ``embedding`` ``(B, D)``, ``probabilities`` ``(B, K)`` (as :meth:`forward`) and the
        sentence-patch maps ``similarity`` ``(B, K, *spatial)`` (as :meth:`local_maps`)."""
        feature_map = self.image_encoder.backbone(x)
        embedding = self.image_encoder.pool(feature_map)
        return {
            "embedding": embedding,
            "probabilities": self._combined_probabilities(feature_map, embedding),
            "similarity": self._maps(feature_map, x.shape[2:]),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-finding probabilities ``(B, K)`` for images ``(B, C, *spatial)``."""
        feature_map = self.image_encoder.backbone(x)
        return self._combined_probabilities(feature_map, self.image_encoder.pool(feature_map))


class LocalDenseZeroShotHeads(nn.Module):
    """The embedding network (``embed.yaml``) of a :class:`LocalZeroShotClassifier` (PRIOR): images ->
    ``{"embedding", "probabilities", "similarity"}``, the last being the sentence-patch maps on the input grid
    (:meth:`LocalZeroShotClassifier.dense_outputs`). The classifier's ``forward`` stays the inference path.

    Args:
        classifier: the trained (exported) classifier.
    """

    def __init__(self, classifier: LocalZeroShotClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.finding_keys = classifier.finding_keys

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classifier.dense_outputs(x)
