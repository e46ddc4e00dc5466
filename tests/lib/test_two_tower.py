"""Image and text towers, two-tower model, zero-shot classifier (incl. torch.jit.trace) and weight loading."""

from __future__ import annotations

import pytest
import torch

from common.data.contract import DataContractError
from common.data.findings import FINDINGS
from common.networks.eva import eva_tiny
from common.networks.pooling import AttentionPool1D
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel, temperature_from_logit_scale
from common.networks.weights import WeightsError, load_weights
from common.networks.zero_shot import ZeroShotClassifier

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

WIDTH = 48


def _bert(hidden: int = WIDTH, vocab: int = 200) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden
    )
    return transformers.BertModel(config)


def _model(spatial_dims: int = 3, text: bool = True, temperature: float = 1.0) -> TwoTowerModel:
    torch.manual_seed(0)
    backbone = eva_tiny(spatial_dims=spatial_dims, img_size=32)
    image = ImageTower(backbone, projection_dim=WIDTH, num_heads=4)
    text_encoder = TextTower(_bert(), num_heads=4) if text else None
    return TwoTowerModel(image, text_encoder, temperature=temperature).eval()


def _images(spatial_dims: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, *((32,) * spatial_dims))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_image_encoder_outputs(spatial_dims: int) -> None:
    model = _model(spatial_dims)
    encoder = model.image_encoder
    x = _images(spatial_dims)
    emb = encoder(x)
    assert emb.shape == (2, WIDTH)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    patch_map = encoder.patch_embeddings(x)
    assert patch_map.shape == (2, WIDTH, *((4,) * spatial_dims))
    assert torch.allclose(encoder.pool(patch_map), emb, atol=1e-6)
    dense = encoder.encode(x, pool=False)
    assert dense.shape == patch_map.shape
    assert torch.allclose(dense.norm(dim=1), torch.ones(dense.shape[:1] + dense.shape[2:]), atol=1e-5)
    pooled, attention = encoder.pool(patch_map, return_attention=True)
    assert torch.allclose(pooled, encoder.pool(patch_map), atol=1e-6)
    assert attention.shape == (2, 4, *patch_map.shape[2:])  # per head, on the token grid
    assert torch.allclose(attention.flatten(2).sum(-1), torch.ones(2, 4), atol=1e-5)


def test_attention_pool_returns_its_attention() -> None:
    torch.manual_seed(0)
    pool = AttentionPool1D(16, 4).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled, attention = pool(x, mask, return_attention=True)
    assert torch.allclose(pooled, pool(x, mask), atol=1e-6)
    assert attention.shape == (2, 4, 6)
    assert torch.all(attention[0, :, 4:] == 0)  # no weight on padding
    assert torch.allclose(attention.sum(-1), torch.ones(2, 4), atol=1e-6)
    # the pooled vector is the out-projection of the attention-weighted values
    d = 16
    values = torch.nn.functional.linear(x, pool.attn.in_proj_weight[2 * d :], pool.attn.in_proj_bias[2 * d :])
    heads = values.reshape(2, 6, 4, d // 4)
    mixed = torch.einsum("bhn,bnhc->bhc", attention, heads).reshape(2, d)
    assert torch.allclose(pool.attn.out_proj(mixed), pooled, atol=1e-5)


def test_pool_then_project_tower() -> None:
    torch.manual_seed(0)
    tower = ImageTower(eva_tiny(spatial_dims=2, img_size=32), projection_dim=24, num_heads=4, project_tokens=False)
    assert isinstance(tower.projector, torch.nn.Linear) and tower.pooler.embed_dim == tower.backbone.embed_dim
    x = torch.randn(2, 1, 32, 32)
    emb = tower(x)
    assert emb.shape == (2, 24) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tower.encode(x, pool=False).shape[1] == 24


def test_attention_pool_masking_and_dense() -> None:
    torch.manual_seed(0)
    pool = AttentionPool1D(16, 4).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    masked = pool(x, mask)
    assert torch.allclose(masked[0], pool(x[:1, :4])[0], atol=1e-6)  # padding ignored entirely
    assert torch.allclose(masked[1], pool(x[1:])[0], atol=1e-6)
    assert not torch.allclose(masked[0], pool(x[:1])[0], atol=1e-4)
    # with a single valid token the attention weight is 1, so pooling equals the dense (value -> out) map
    single = torch.zeros(2, 6, dtype=torch.long)
    single[:, 2] = 1
    assert torch.allclose(pool(x, single), pool.dense(x)[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="valid"):
        pool(x, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="shape"):
        pool(x, torch.ones(2, 5))


def test_text_encoder_ignores_padding_and_removes_pooler() -> None:
    model = _model()
    assert model.text_encoder.backbone.pooler is None
    ids = torch.randint(5, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    emb = model.encode_text(ids, mask)
    assert emb.shape == (2, WIDTH)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    other = ids.clone()
    other[0, 6:] = torch.randint(5, 200, (3,))
    assert torch.allclose(model.encode_text(other, mask), emb, atol=1e-5)
    assert torch.allclose(model.encode_text(ids[:1, :6], mask[:1, :6]), emb[:1], atol=1e-5)


def test_text_projector_when_widths_differ() -> None:
    torch.manual_seed(0)
    image = ImageTower(eva_tiny(img_size=32), projection_dim=WIDTH, num_heads=4)
    with pytest.raises(ValueError, match="projection_dim"):
        TwoTowerModel(image, TextTower(_bert(hidden=32), num_heads=4))
    model = TwoTowerModel(image, TextTower(_bert(hidden=32), num_heads=4, projection_dim=WIDTH)).eval()
    assert model.encode_text(torch.randint(5, 200, (3, 7))).shape == (3, WIDTH)
    assert "text_encoder.projector.weight" in model.state_dict()


def test_model_forward_and_temperature_mapping() -> None:
    model = _model()
    out = model(_images(), torch.randint(5, 200, (2, 7)), torch.ones(2, 7, dtype=torch.long))
    assert set(out) == {"image_embeddings", "text_embeddings"}
    scale = 42.0
    model.set_logit_scale(scale)
    assert model.softmax_temperature.item() == pytest.approx(1 / scale)
    cos = out["image_embeddings"] @ out["text_embeddings"].t()
    assert torch.allclose(model.classify(out["image_embeddings"], out["text_embeddings"]), (scale * cos).softmax(-1))
    assert temperature_from_logit_scale(1000.0) == pytest.approx(0.01)  # clamped at 100
    with pytest.raises(RuntimeError, match="image-only"):
        _model(text=False).encode_text(torch.ones(1, 3, dtype=torch.long))


def _tokenizer(tmp_path):
    prompts = [p for f in FINDINGS for p in f.prompts_positive + f.prompts_negative]
    words = sorted({w for p in prompts for w in p.lower().replace(".", " .").split()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return transformers.BertTokenizer(str(vocab))


def test_zero_shot_classifier_matches_model_classify(tmp_path) -> None:
    model = _model(temperature=0.05)
    tokenizer = _tokenizer(tmp_path)
    findings = FINDINGS[:3]
    classifier = ZeroShotClassifier.from_model(model, tokenizer, findings).eval()
    num_pairs = len(findings[0].prompts_positive)
    assert classifier.prompt_embeddings_pos.shape == (3, num_pairs, WIDTH)
    assert classifier.finding_keys == [f.key for f in findings]
    x = _images()
    probs = classifier(x)
    assert probs.shape == (2, 3) and bool(((probs > 0) & (probs < 1)).all())
    image_emb = model.encode_image(x)
    for k, finding in enumerate(findings):
        expected = torch.zeros(2)
        for pos, neg in zip(finding.prompts_positive, finding.prompts_negative):
            batch = tokenizer([neg, pos], padding=True, return_tensors="pt")
            text_emb = model.encode_text(batch["input_ids"], batch["attention_mask"])
            expected += model.classify(image_emb, text_emb)[:, 1] / num_pairs
        assert torch.allclose(probs[:, k], expected, atol=1e-5)
    dense = classifier.dense_probabilities(x)
    assert dense.shape == (2, 3, 4, 4, 4)
    sim = classifier.dense_similarity(x, torch.randn(5, WIDTH))
    assert sim.shape == (2, 5, 4, 4, 4) and bool((sim.abs() <= 1 + 1e-5).all())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_zero_shot_classifier_traces() -> None:
    model = _model()
    torch.manual_seed(1)
    classifier = ZeroShotClassifier(model.image_encoder, torch.randn(4, 2, WIDTH), torch.randn(4, 2, WIDTH), 0.1).eval()
    x, y = _images(), _images()
    with torch.no_grad():
        traced = torch.jit.trace(classifier, x)
        assert torch.allclose(traced(x), classifier(x), atol=1e-6)
        assert torch.allclose(traced(y), classifier(y), atol=1e-6)
    assert {"prompt_embeddings_pos", "prompt_embeddings_neg", "softmax_temperature"} <= set(classifier.state_dict())


def test_zero_shot_classifier_bad_arguments() -> None:
    encoder = _model().image_encoder
    with pytest.raises(ValueError, match="K, P, D"):
        ZeroShotClassifier(encoder, torch.randn(3, 2, WIDTH), torch.randn(3, 1, WIDTH))
    with pytest.raises(ValueError, match="width"):
        ZeroShotClassifier(encoder, torch.randn(3, 2, 8), torch.randn(3, 2, 8))
    with pytest.raises(ValueError, match="same number"):
        ZeroShotClassifier.from_model(_model(), None, {"a": (["x"], ["y"]), "b": (["x", "z"], ["y", "w"])})


def test_load_weights_roundtrip_and_errors(tmp_path) -> None:
    from safetensors.torch import save_file

    source = _model()
    with torch.no_grad():
        source.softmax_temperature.fill_(0.02)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = TwoTowerModel(
        ImageTower(eva_tiny(img_size=32), projection_dim=WIDTH, num_heads=4),
        TextTower(_bert(), num_heads=4),
    )
    load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    image_only = _model(text=False)
    with pytest.raises(WeightsError, match="unexpected keys"):  # an image-only model must say what it drops
        load_weights(image_only, path)
    load_weights(image_only, path, ignore_prefixes=("text_encoder.",))
    assert image_only.softmax_temperature.item() == pytest.approx(0.02)

    state = source.state_dict()
    state.pop("image_encoder.projector.bias")
    state["image_encoder.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(WeightsError, match="bad.safetensors") as info:
        load_weights(target, bad)
    assert "image_encoder.projector.bias" in str(info.value) and "image_encoder.extra" in str(info.value)
    with pytest.raises(DataContractError, match="does not exist"):  # WeightsError is a DataContractError
        load_weights(target, tmp_path / "missing.safetensors")
    torch.save(source.state_dict(), tmp_path / "model.pt")
    load_weights(target, tmp_path / "model.pt")
