"""Numerical parity with the official ``colipri`` 0.1.3 package (and DNA Primus / timm RoPE) in fp32.

The official model is built with random weights (``get_model(pretrained=False, input_size=64)``: Primus-M at full
width and depth on a 8^3 token grid). Its text tower normally comes from the Hugging Face Hub (CXR-BERT); here
``transformers.AutoModel.from_pretrained`` is patched to return a randomly initialised BERT-base of the same
sizes, wrapped like CXR-BERT (``.bert``). Its state dict must load strictly into our :class:`TwoTowerModel`, and the
embeddings must agree. Skipped when the reference packages are not installed.
"""

from __future__ import annotations

import time

import pytest
import torch

from common.networks.eva import RotaryPositionEmbedding, primus_m
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel

pytestmark = pytest.mark.reference
torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")
timm_pos = pytest.importorskip("timm.layers.pos_embed_sincos")
dna_eva = pytest.importorskip("dynamic_network_architectures.building_blocks.eva")

TOLERANCE = 1e-5


def _cxr_bert_config() -> object:
    """BiomedVLP-CXR-BERT-specialized sizes (BERT-base, vocabulary 30,522)."""
    return transformers.BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    )


class _CXRBertLike(torch.nn.Module):
    """Stands in for CXR-BERT's remote-code model, which exposes its ``BertModel`` as ``.bert``."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = transformers.BertModel(_cxr_bert_config())


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, TwoTowerModel]:
    try:
        import colipri
    except Exception as err:  # noqa: BLE001 - colipri pulls torchio/torchvision/hydra; any failure means skip
        pytest.skip(f"colipri not importable: {err}")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: _CXRBertLike())
        official = colipri.get_model(pretrained=False, input_size=64).eval()
    ours = TwoTowerModel(
        ImageTower(primus_m(img_size=64), projection_dim=768, num_heads=12),
        TextTower(transformers.BertModel(_cxr_bert_config()), num_heads=12),
    ).eval()
    result = ours.load_state_dict(official.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return official, ours


@pytest.mark.slow
def test_state_dict_keys_match_release(models) -> None:
    official, ours = models
    assert set(official.state_dict()) == set(ours.state_dict())
    assert not any(k.startswith("image_encoder.backbone.up_projection") for k in ours.state_dict())


class _Cached(torch.nn.Module):
    """Replays a precomputed backbone output, so the official heads run without a second backbone pass."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.output


@pytest.mark.slow
def test_image_embeddings_match(models) -> None:
    official, ours = models
    torch.manual_seed(1)
    x = torch.rand(1, 1, 64, 64, 64) * 2 - 1
    with torch.no_grad():
        start = time.perf_counter()
        ref_map = official.encode_image(x)  # Primus backbone features (B, 864, 8, 8, 8)
        ref_time = time.perf_counter() - start
        start = time.perf_counter()
        our_map = ours.image_encoder.backbone(x)
        our_time = time.perf_counter() - start
        backbone = official.image_encoder.backbone
        official.image_encoder.backbone = _Cached(ref_map)
        try:
            ref_emb = official.encode_image(x, project=True, pool=True, normalize=True)
            ref_dense = official.encode_image(x, project=True, pool=False, normalize=True)
        finally:
            official.image_encoder.backbone = backbone
        projected = ours.image_encoder.projector(our_map)
        our_emb = ours.image_encoder.pool(projected)
        our_dense = ours.image_encoder.dense_embeddings(projected)
    diffs = {
        "backbone": (ref_map - our_map).abs().max().item(),
        "pooled": (ref_emb - our_emb).abs().max().item(),
        "dense": (ref_dense - our_dense).abs().max().item(),
    }
    print(f"\nimage parity max|diff| {diffs}; backbone CPU forward official {ref_time:.2f}s, ours {our_time:.2f}s")
    assert our_map.shape == ref_map.shape == (1, 864, 8, 8, 8)
    assert all(d < TOLERANCE for d in diffs.values()), diffs


@pytest.mark.slow
def test_text_embeddings_match(models) -> None:
    official, ours = models
    torch.manual_seed(2)
    ids = torch.randint(1000, 30000, (2, 12))
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = official.encode_text(ids, mask)
        our = ours.encode_text(ids, mask)
    diff = (ref - our).abs().max().item()
    print(f"\ntext parity max|diff| {diff:.2e}")
    assert diff < TOLERANCE


def test_rope_table_matches_dna_at_192() -> None:
    """At the release grid (24^3) our table is bit-identical to the one DNA's Eva builds (timm RotaryEmbeddingCat)."""
    reference = dna_eva.Eva(embed_dim=864, depth=0, num_heads=12, ref_feat_shape=(24, 24, 24), use_abs_pos_emb=False)
    ours = RotaryPositionEmbedding(3, 72, (24, 24, 24))
    assert torch.equal(reference.rope.get_embed(), ours.get_embed((24, 24, 24)))


def test_rope_2d_and_scaled_mode_match_timm() -> None:
    rope_cat = timm_pos.RotaryEmbeddingCat
    fixed = rope_cat(64, in_pixels=False, feat_shape=[14, 14], ref_feat_shape=[14, 14])
    assert torch.equal(fixed.get_embed(), RotaryPositionEmbedding(2, 64, (14, 14)).get_embed((14, 14)))
    # timm's resizable mode (bands cached, positions rescaled to the reference grid) == our "scaled" mode
    resizable = rope_cat(48, in_pixels=False, feat_shape=None, ref_feat_shape=[24, 24, 24])
    ours = RotaryPositionEmbedding(3, 72, (24, 24, 24), mode="scaled")
    assert torch.equal(resizable.get_embed(shape=[16, 20, 8]), ours.get_embed((16, 20, 8)))
