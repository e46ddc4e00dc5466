"""G2D objective: contrastive + pseudo-segmentation on attention-derived masks, warm-up, controls."""

from __future__ import annotations

import pytest
import torch

from common.losses.clip_loss import ClipLoss
from common.methods.g2d.objective import G2DPretraining
from common.networks.attention_masks import AttentionPseudoMask
from common.networks.pooling import FirstTokenPool, PositionalAttentionPool
from common.networks.projection import NonLinearProjection
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel
from common.networks.unet import UNetDecoder, UNetEncoder

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, WIDTH = 64, 32


def _objective(segmentation_weight: float = 1.0, warmup: int = 0, shuffle: bool = False) -> G2DPretraining:
    torch.manual_seed(0)
    encoder = UNetEncoder(spatial_dims=2, backbone="resnet18")
    tower = ImageTower(
        encoder,
        projection_dim=WIDTH,
        projector=NonLinearProjection(encoder.out_channels, WIDTH, spatial_dims=2),
        pooler=PositionalAttentionPool(WIDTH, grid_size=(SIZE // 32,) * 2, num_heads=4),
    )
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100, hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    )
    text = TextTower(
        bert,
        projection_dim=WIDTH,
        pooler=FirstTokenPool(),
        project_tokens=True,
        projector=NonLinearProjection(48, WIDTH, spatial_dims=0),
    )
    decoder = UNetDecoder(2, encoder.feature_channels, out_channels=1, decoder_channels=(32, 16, 16, 8, 8))
    return G2DPretraining(
        TwoTowerModel(tower, text),
        decoder,
        AttentionPseudoMask(shuffle=shuffle),
        segmentation_weight=segmentation_weight,
        warmup_iterations=warmup,
    )


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (n, 12))
    mask = torch.ones(n, 12, dtype=torch.long)
    mask[0, 8:] = 0
    return {
        "image": torch.randn(n, 1, SIZE, SIZE),
        "input_ids": ids,
        "attention_mask": mask,
        "has_report": torch.ones(n, dtype=torch.bool),
    }


def test_terms_gradients_and_the_paper_contrastive_term() -> None:
    objective, batch = _objective(), _batch()
    out = objective(batch)
    assert set(out) == {"loss", "contrastive", "segmentation"}
    assert torch.allclose(out["loss"], out["contrastive"] + out["segmentation"])
    out["loss"].backward()
    for name in (
        "model.image_encoder.backbone.encoder.conv1.weight",
        "model.image_encoder.pooler.positional_embedding",
        "model.text_encoder.projector.out_proj.weight",
        "decoder.decoder.blocks.0.convs.conv_0.conv.weight",
    ):
        param = dict(objective.named_parameters()).get(name)
        assert param is not None and param.grad is not None and param.grad.abs().sum() > 0, name
    # the contrastive term is InfoNCE at the fixed temperature 0.07 between the tower outputs
    objective.eval()
    with torch.no_grad():
        image_emb = objective.model.encode_image(batch["image"])
        text_emb = objective.model.encode_text(batch["input_ids"], batch["attention_mask"])
        expected = ClipLoss(init_logit_scale=1 / 0.07, learnable=False)(image_emb, text_emb)
        assert torch.allclose(objective(batch)["contrastive"], expected, atol=1e-5)
    assert not any(p.requires_grad for p in objective.clip_loss.parameters())


def test_warmup_is_contrastive_only_then_both() -> None:
    objective, batch = _objective(warmup=3), _batch()
    objective.before_iteration(2)
    early = objective(batch)
    assert float(early["segmentation"]) == 0.0
    early["loss"].backward()  # the decoder does not run in the warm-up: no gradient reaches it
    assert all(p.grad is None for p in objective.decoder.parameters())
    assert any(p.grad is not None for p in objective.model.image_encoder.parameters())
    objective.before_iteration(3)
    late = objective(batch)
    assert float(late["segmentation"]) > 0.0
    late["loss"].backward()
    assert all(p.grad is not None for p in objective.decoder.parameters() if p.requires_grad)


def test_targets_are_the_images_own_attention_masks_without_gradient() -> None:
    objective, batch = _objective(), _batch()
    tower = objective.model.image_encoder
    pyramid = tower.backbone.features(batch["image"])
    _, attention = tower.pool(tower.project(pyramid[-1]), return_attention=True)
    masks = objective.masks(batch["image"], attention)
    assert masks.shape == (4, 1, SIZE, SIZE) and not masks.requires_grad
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    fraction = masks.mean(dim=(1, 2, 3))
    assert bool(((fraction > 0.05) & (fraction < 0.4)).all())  # ~15 % above the 85th percentile, smoothed


def test_controls_contrastive_only_and_shuffled_masks() -> None:
    only = _objective(segmentation_weight=0.0)
    assert only.decoder is None and set(only(_batch())) == {"loss", "contrastive"}
    shuffled, plain, batch = _objective(shuffle=True), _objective(), _batch()
    tower = plain.model.image_encoder
    _, attention = tower.pool(tower.project(tower.backbone.features(batch["image"])[-1]), return_attention=True)
    own = plain.masks(batch["image"], attention)
    torch.manual_seed(3)
    other = shuffled.masks(batch["image"], attention)
    assert not torch.equal(own, other)
    assert sorted(m.sum().item() for m in own) == sorted(m.sum().item() for m in other)  # same masks, permuted


def test_dense_heads_add_the_decoders_pseudo_segmentation() -> None:
    from common.networks.zero_shot import DenseZeroShotHeads, ZeroShotClassifier

    objective = _objective().eval()
    tower = objective.model.image_encoder
    prompts = torch.nn.functional.normalize(torch.randn(3, 2, WIDTH), dim=-1)
    classifier = ZeroShotClassifier(tower, prompts, -prompts, temperature=0.07, finding_keys=["a", "b", "c"])
    x = _batch(2)["image"]
    with torch.no_grad():
        plain = DenseZeroShotHeads(classifier)(x)
        out = DenseZeroShotHeads(classifier, objective.decoder)(x)
        assert set(plain) == {"embedding", "probabilities", "similarity"}
        assert out["segmentation"].shape == (2, 1, SIZE, SIZE)
        assert bool(((out["segmentation"] >= 0) & (out["segmentation"] <= 1)).all())
        for key in plain:  # the same heads, from one pass over the pyramid
            torch.testing.assert_close(out[key], plain[key])
        torch.testing.assert_close(out["segmentation"], torch.sigmoid(objective.decoder(tower.backbone.features(x))))


def test_a_batch_of_one_trains_the_token_projection_batchnorm() -> None:
    objective = _objective().train()
    out = objective(_batch(2))  # BatchNorm statistics over every token position, not over [CLS] vectors alone
    tokens = objective.model.encode_text(_batch(1)["input_ids"], _batch(1)["attention_mask"], pool=False)
    assert tokens.shape == (1, 12, WIDTH) and torch.isfinite(out["loss"])


def test_paired_only_batch_equals_the_paper_path_and_image_only_rows_feed_only_the_pixel_term() -> None:
    """Issue 26: ``has_report`` all True is the paper's objective; an image-only row's text changes nothing, its image
    changes the pseudo-segmentation term only, and the contrastive term is the paired rows' alone."""
    objective = _objective().eval()  # eval: BatchNorm uses running statistics, so rows do not interact through it
    batch = _batch()
    with torch.no_grad():
        paper = objective({k: v for k, v in batch.items() if k != "has_report"})
        assert all(torch.equal(objective(batch)[k], paper[k]) for k in paper)
        mixed = {**batch, "has_report": torch.tensor([True, False, True, True])}
        out = objective(mixed)
        subset = objective({k: v[[0, 2, 3]] for k, v in batch.items()})
        torch.testing.assert_close(out["contrastive"], subset["contrastive"])
        assert not torch.allclose(out["contrastive"], paper["contrastive"])
        other_text = {**mixed, "input_ids": mixed["input_ids"].clone()}
        other_text["input_ids"][1] = torch.randint(5, 100, (12,))
        assert all(torch.equal(objective(other_text)[k], out[k]) for k in out)
        other_image = {**mixed, "image": mixed["image"].clone()}
        other_image["image"][1] = torch.randn(1, SIZE, SIZE)
        changed = objective(other_image)
        assert torch.equal(changed["contrastive"], out["contrastive"])
        assert not torch.equal(changed["segmentation"], out["segmentation"])
