"""COLIPRI objective: mixed image-only/paired batches, padding trimming, switches."""

from __future__ import annotations

import pytest
import torch

from common.data.batch import trim_padding
from common.methods.colipri.objective import ColipriPretraining
from common.networks.decoders import MAEDecoder, ReportDecoder
from common.networks.eva import eva_tiny
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

WIDTH, VOCAB, LENGTH = 48, 120, 12


def _objective(**weights: float) -> ColipriPretraining:
    torch.manual_seed(0)
    backbone = eva_tiny(spatial_dims=3, img_size=32)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=4, intermediate_size=2 * WIDTH
        ),
        add_pooling_layer=False,
    )
    model = TwoTowerModel(ImageTower(backbone, projection_dim=WIDTH, num_heads=4), TextTower(bert, num_heads=4))
    mae = MAEDecoder(embed_dim=backbone.embed_dim, decoder_dim=48, depth=1, num_heads=4, patch_size=8, img_size=32)
    report = ReportDecoder(VOCAB, image_dim=WIDTH, hidden_size=32, num_layers=1, num_heads=4, max_length=64)
    return ColipriPretraining(model, mae, report, **weights)


def _batch(has_report: list[bool], pad_to: int = LENGTH) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = len(has_report)
    lengths = torch.tensor([LENGTH - 2 * i for i in range(n)])
    ids = torch.randint(3, VOCAB, (n, pad_to), generator=g)
    mask = (torch.arange(pad_to)[None] < lengths[:, None]).long()
    return {
        "image": torch.randn(n, 1, 32, 32, 32, generator=g),
        "input_ids": ids * mask,
        "attention_mask": mask,
        "has_report": torch.tensor(has_report),
    }


def test_trim_padding_drops_only_all_padding_columns() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    ids, trimmed = trim_padding(torch.arange(12).reshape(2, 6), mask)
    assert trimmed.tolist() == [[1, 1, 1], [1, 1, 0]] and ids.shape == (2, 3)
    _, none_valid = trim_padding(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    assert none_valid.shape == (2, 1)


def test_extra_padding_does_not_change_any_term() -> None:
    objective = _objective(mask_ratio=0.0).eval()
    short = _batch([True, True, False])
    long = {k: v.clone() for k, v in short.items()}
    extra = torch.zeros(3, 20, dtype=torch.long)
    long["input_ids"] = torch.cat([short["input_ids"], extra], dim=1)
    long["attention_mask"] = torch.cat([short["attention_mask"], extra], dim=1)
    torch.manual_seed(5)
    a = objective(short)
    torch.manual_seed(5)
    b = objective(long)
    assert set(a) == {"contrastive", "report", "mae", "loss"}
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_image_only_samples_feed_only_the_masked_autoencoder() -> None:
    objective = _objective()
    batch = _batch([True, True, False, False])
    out = objective(batch)
    out["loss"].backward()
    text_grads = [p.grad for p in objective.model.text_encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in text_grads)
    # changing an image-only sample's text cannot change the paired terms
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][2:] = torch.randint(3, VOCAB, other["input_ids"][2:].shape)
    objective.eval()
    torch.manual_seed(0)
    first = objective(batch)
    torch.manual_seed(0)
    second = objective(other)
    assert torch.allclose(first["contrastive"], second["contrastive"], atol=1e-6)
    assert torch.allclose(first["report"], second["report"], atol=1e-6)


def test_text_side_runs_on_paired_rows_only() -> None:
    objective = _objective(mae_weight=0.0).eval()
    batch = _batch([False, True, False, True])
    seen = []
    handle = objective.model.text_encoder.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    out = objective(batch)
    handle.remove()
    assert seen == [2]
    # equal to the same objective on the paired rows alone
    paired = {k: v[[1, 3]] for k, v in batch.items()}
    alone = objective(paired)
    for key in ("contrastive", "report"):
        assert torch.allclose(out[key], alone[key], atol=1e-5), key


def test_batch_without_reports_still_reaches_every_parameter() -> None:
    objective = _objective()
    out = objective(_batch([False, False, False]))
    assert out["contrastive"].item() == 0.0 and out["report"].item() == 0.0
    out["loss"].backward()
    assert all(p.grad is not None for p in objective.parameters() if p.requires_grad)


def test_weights_switch_terms_off() -> None:
    objective = _objective(contrastive_weight=0.0, report_weight=0.0)
    assert objective.clip_loss is None and objective.report_decoder is None
    out = objective(_batch([True, False]))
    assert set(out) == {"mae", "loss"}
    with pytest.raises(ValueError, match="mask_ratio"):
        _objective(mask_ratio=1.0)
