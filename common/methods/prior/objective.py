"""PRIOR pre-training objective: global + local alignment, sentence prototypes, cross-modal conditional reconstruction.

Cheng et al., "PRIOR: Prototype Representation Joint Learning from Medical Images and Reports", ICCV 2023,
https://arxiv.org/abs/2307.14975; release QtacierP/PRIOR 086bf2e, ``prior/models/prior.py`` (``stage{1,2,3}_step``).
With ``V`` the projected local image tokens, ``S`` the report's sentence embeddings (mean of projected tokens per
sentence), ``g_v`` / ``g_t`` the global embeddings:

* stage 1: ``w_g L_g + w_li L_li + w_lt L_lt``: global InfoNCE (:class:`~common.losses.clip_loss.ClipLoss`,
  learnable scale from 1/0.01, no clamp, negatives gathered across ranks); SimSiam between ``V`` and the
  sentence-attended ``V~`` and InfoNCE among a report's sentences ``S`` / patch-attended ``S~``
  (:mod:`common.losses.local_alignment_loss`, sigmoid cross-attention :mod:`common.networks.local_attention`);
* stage 2: sentences replaced by their soft prototypes (:class:`~common.networks.prototypes.SentencePrototypeBank`)
  everywhere, plus ``w_proto L_proto`` (L1 between sentences and prototypes, weight 10);
* stage 3: sentences truncated to the decoder's ``num_queries``; plus image reconstruction ``L_rec`` (L1 between the
  decoder's output from ``[Dropout(V), V~]`` and the normalised input, resized to the output) and sentence-prototype
  generation: ``num_queries`` predictions matched to the (zero-padded) target prototypes by the Hungarian algorithm,
  ``L_spg`` (L1 over all slots, weight 10), ``L_kl`` (KL from the target sentences' prototype assignment to the
  matched predictions') and ``L_gpa`` (InfoNCE between the attention-pooled prototypes of the matched predictions and
  ``g_t``); the release weights ``L_g`` by 10 in this stage.

Image-only records (``has_report`` False; their share of each batch is the ``image_only_share`` knob of
:class:`~common.data.mixing.ImageOnlyShareSampler`, 0 in the paper configs, i.e. the paper's paired-only objective)
feed one term: stage 3's image reconstruction, with the sentence-attended half of the decoder input set to zero (no
text conditioning; the channel-dropped image features remain). Every other term needs a report (the SimSiam local
term compares image tokens with their sentence-attended context) and uses the paired rows only; in stages 1 and 2
image-only rows therefore feed nothing.

Modules a stage does not use (the bank in stage 1, both decoders before stage 3) are frozen, so every trainable
parameter receives a gradient (DDP without ``find_unused_parameters``) and every stage's checkpoint has the same keys.
Deviations from the release (spatial token flattening, matching permutation, deterministic inference prototypes,
per-sentence tokenisation) are listed in the bundles' ``docs/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from common.data.batch import paired_rows, report_mask, scatter_rows, trim_padding
from common.losses.clip_loss import ClipLoss
from common.losses.local_alignment_loss import LocalImageSimSiamLoss, LocalSentenceContrastiveLoss
from common.losses.prototype_generation_loss import PrototypeGenerationLoss
from common.networks.local_attention import LocalCrossAttention
from common.networks.sentence_pool import SentencePooler
from common.networks.two_tower import TwoTowerModel

__all__ = ["STAGE_WEIGHTS", "PRIORPretraining", "simsiam_predictor"]

#: the release's loss weights per stage (``stage{1,2,3}_step``); missing terms are off in that stage
STAGE_WEIGHTS: dict[int, dict[str, float]] = {
    1: {"global": 1.0, "local_image": 1.0, "local_text": 1.0},
    2: {"global": 1.0, "local_image": 1.0, "local_text": 1.0, "prototype": 10.0},
    3: {
        "global": 10.0,
        "local_image": 1.0,
        "local_text": 1.0,
        "prototype": 10.0,
        "image_reconstruction": 1.0,
        "sentence_generation": 10.0,
        "prototype_kl": 1.0,
        "prediction_alignment": 1.0,
    },
}


def simsiam_predictor(dim: int) -> nn.Sequential:
    """PRIOR's SimSiam predictor ``Linear(d, d/2) -> ReLU -> Linear(d/2, d)``, first layer N(0, d^-0.5)."""
    predictor = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))
    nn.init.normal_(predictor[0].weight, std=dim**-0.5)
    return predictor


def _init_projection(layer: nn.Linear) -> nn.Linear:
    nn.init.normal_(layer.weight, std=layer.in_features**-0.5)  # Prior.inititalize_parameters
    return layer


class PRIORPretraining(nn.Module):
    """Composes PRIOR's objectives for one training stage.

    Args:
        model: image tower (``backbone`` giving the last feature map; pool-then-project global embedding) and text
            tower whose pooler is a :class:`~common.networks.sentence_pool.SentencePooler` holding the prototype
            bank; token projection ``text_encoder.projector`` (the release's ``local_text_projection``).
        local_image_projection: backbone width -> joint width, applied to every local token.
        cross_attention: :class:`~common.networks.local_attention.LocalCrossAttention` at the joint width.
        predictor: the SimSiam predictor (:func:`simsiam_predictor`).
        image_decoder: ``(B, 2 D, *grid) -> (B, C, *grid * r)`` (stage 3); ``None`` before.
        sentence_decoder: image tokens ``(B, N, D)`` -> ``(B, Q, D)`` predictions (stage 3), with ``num_queries``.
        stage: 1, 2 or 3.
        weights: term weights overriding :data:`STAGE_WEIGHTS` for the stage (0 switches a term off).
        temperature: initial global temperature (0.01); ``local_temperature`` the sentence InfoNCE's (0.01).
        max_logit_scale: clamp of the global scale (the release: none).
        feature_dropout: channel dropout of the image features fed to the image decoder (0.5, the "masking").
    """

    def __init__(
        self,
        model: TwoTowerModel,
        local_image_projection: nn.Linear,
        cross_attention: LocalCrossAttention,
        predictor: nn.Module,
        image_decoder: nn.Module | None = None,
        sentence_decoder: nn.Module | None = None,
        stage: int = 1,
        weights: Mapping[str, float] | None = None,
        temperature: float = 0.01,
        local_temperature: float = 0.01,
        max_logit_scale: float = math.inf,
        feature_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if stage not in STAGE_WEIGHTS:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        unknown = set(weights or {}) - set(STAGE_WEIGHTS[3])
        if unknown:
            raise ValueError(f"unknown PRIOR loss terms {sorted(unknown)}; known: {sorted(STAGE_WEIGHTS[3])}")
        self.stage = int(stage)
        self.weights = {k: float(v) for k, v in {**STAGE_WEIGHTS[stage], **(weights or {})}.items()}
        self.weights = {k: v for k, v in self.weights.items() if v > 0 and k in STAGE_WEIGHTS[stage]}
        pooler = model.text_encoder.pooler if model.text_encoder is not None else None
        if not isinstance(pooler, SentencePooler):
            raise TypeError("PRIOR needs a text tower whose pooler is a SentencePooler")
        uses_bank = self.stage >= 2
        if uses_bank and pooler.prototypes is None:
            raise ValueError("stages 2 and 3 need the SentencePooler's prototype bank")
        if self.stage == 3 and (image_decoder is None or sentence_decoder is None):
            raise ValueError("stage 3 needs an image decoder and a sentence decoder")
        pooler.use_prototypes = uses_bank
        self.model = model
        self.local_image_projection = _init_projection(local_image_projection)
        _init_projection(model.text_encoder.projector)
        _init_projection(model.image_encoder.projector)
        self.cross_attention = cross_attention
        self.predictor = predictor
        self.image_decoder = image_decoder
        self.sentence_decoder = sentence_decoder
        dropout = nn.Dropout3d if model.image_encoder.spatial_dims == 3 else nn.Dropout2d
        self.feature_dropout = dropout(feature_dropout)
        self.clip_loss = ClipLoss(init_logit_scale=1.0 / temperature, max_logit_scale=max_logit_scale)
        self.local_image_loss = LocalImageSimSiamLoss()
        self.local_text_loss = LocalSentenceContrastiveLoss(init_logit_scale=math.log(1.0 / local_temperature))
        self.generation_loss = PrototypeGenerationLoss()
        frozen = [] if uses_bank else [pooler.prototypes]
        frozen += [] if self.stage == 3 else [image_decoder, sentence_decoder]
        for module in frozen:
            if module is not None:
                module.requires_grad_(False)

    @property
    def pooler(self) -> SentencePooler:
        return self.model.text_encoder.pooler

    def local_tokens(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Projected local tokens ``(B, N, D)``, the map flattened spatially (the release's channel-major ``view``
        is a bug: docs/README.md)."""
        return self.local_image_projection(feature_map.flatten(2).transpose(1, 2))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        tower = self.model.image_encoder
        feature_map = tower.backbone(image)
        image_emb = tower.pool(feature_map)
        local_image = self.local_tokens(feature_map)
        has_report = report_mask(batch, image_emb)
        if not bool(has_report.any()):
            raise ValueError("a PRIOR batch needs at least one paired record (lower image_only_share)")
        rows = paired_rows(has_report)  # the text-side terms see the paired rows only
        paired_image = local_image[rows]

        text = self.model.text_encoder
        input_ids, attention_mask = trim_padding(batch["input_ids"][rows], batch["attention_mask"][rows])
        sentence_index = batch["sentence_index"][rows][..., : input_ids.shape[-1]]
        tokens = text.projector(text.token_embeddings(input_ids, attention_mask))
        sentences, mask = self.pooler.sentences(tokens, attention_mask, sentence_index)
        if self.stage == 3:  # the decoder predicts at most num_queries sentences
            keep = self.sentence_decoder.num_queries
            sentences, mask = sentences[:, :keep], mask[:, :keep]
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every PRIOR training report needs at least one sentence (see min_sentences)")
        terms: dict[str, torch.Tensor] = {}
        bank_out = None
        if self.stage >= 2:
            sentences, bank_out = self.pooler.quantise(sentences, mask)
            terms["prototype"] = bank_out.loss
        text_emb = self.pooler.attention(sentences, mask)
        size = image.shape[0]
        terms["global"] = self.clip_loss(image_emb, scatter_rows(text_emb, rows, size), valid=has_report)

        attended = self.cross_attention(paired_image, sentences, text_mask=mask)
        terms["local_image"] = self.local_image_loss(
            self.predictor(paired_image), self.predictor(attended.image_context), paired_image, attended.image_context
        )
        terms["local_text"] = self.local_text_loss(sentences, attended.text_context, mask)
        if self.stage == 3:
            # image-only rows are reconstructed without text conditioning: their sentence-attended half is zero
            context = scatter_rows(attended.image_context, rows, size)
            terms["image_reconstruction"] = self._image_reconstruction(image, feature_map, local_image, context)
            terms.update(
                self._sentence_generation(paired_image, sentences, mask, bank_out.logits, text_emb, has_report)
            )
        out = {name: self.weights[name] * value for name, value in terms.items() if name in self.weights}
        out["loss"] = torch.stack(list(out.values())).sum()
        return out

    def _image_reconstruction(
        self, image: torch.Tensor, feature_map: torch.Tensor, local_image: torch.Tensor, image_context: torch.Tensor
    ) -> torch.Tensor:
        grid = feature_map.shape[2:]
        as_map = lambda tokens: tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        fused = torch.cat([self.feature_dropout(as_map(local_image)), as_map(image_context)], dim=1)
        reconstruction = self.image_decoder(fused).float()
        target = image.float()
        if target.shape[2:] != reconstruction.shape[2:]:
            mode = "trilinear" if target.ndim == 5 else "bilinear"
            target = F.interpolate(target, size=reconstruction.shape[2:], mode=mode, align_corners=True)
        return F.l1_loss(reconstruction, target)

    def _sentence_generation(
        self,
        local_image: torch.Tensor,
        prototypes: torch.Tensor,
        mask: torch.Tensor,
        target_logits: torch.Tensor,
        text_emb: torch.Tensor,
        has_report: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The stage-3 generation terms of the paired rows (``has_report``: where they sit in the batch, so that the
        alignment term is masked batch-wide as the global one; ``None``: every row is paired)."""
        generated = self.generation_loss(
            self.sentence_decoder(local_image), prototypes, mask, target_logits, self.pooler.prototypes.logits
        )
        predicted_prototypes, _ = self.pooler.quantise(generated.matched, generated.mask)
        return {
            "sentence_generation": generated.l1,
            "prototype_kl": generated.kl,
            "prediction_alignment": self._masked_clip_loss(
                self.pooler.attention(predicted_prototypes, generated.mask), text_emb, has_report
            ),
        }

    def _masked_clip_loss(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, has_report: torch.Tensor | None
    ) -> torch.Tensor:
        """Global InfoNCE of paired-row embeddings, placed back into the batch and masked where it has no report."""
        if has_report is None:
            return self.clip_loss(image_emb, text_emb)
        rows, size = paired_rows(has_report), has_report.numel()
        return self.clip_loss(scatter_rows(image_emb, rows, size), scatter_rows(text_emb, rows, size), valid=has_report)

    def log_values(self) -> dict[str, float]:
        """The learned global and local logit scales."""
        return {
            "logit_scale": float(self.clip_loss.logit_scale.detach()),
            "local_logit_scale": float(self.local_text_loss.logit_scale.detach().exp()),
        }
