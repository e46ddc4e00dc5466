"""MPMA objective: paired masking, each switch removes its term, image-only rows, fused representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.losses.masked_token_loss import IGNORE_INDEX
from common.methods.mpma.objective import TERMS, MPMAPretraining
from common.networks.co_attention import CoAttentionFusion
from common.networks.decoders import MAEDecoder
from common.networks.eva import eva_tiny
from common.networks.mlm_head import masked_lm_head
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

WIDTH, VOCAB, LENGTH, SIZE = 32, 90, 10, 32
WEIGHTS = (
    "global_alignment_weight",
    "local_alignment_weight",
    "image_reconstruction_weight",
    "text_reconstruction_weight",
)


def _objective(memory_slots: int = 4, **kwargs) -> MPMAPretraining:
    torch.manual_seed(0)
    backbone = eva_tiny(spatial_dims=2, img_size=SIZE, patch_size=8, embed_dim=48, depth=1, num_heads=4)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=4, intermediate_size=2 * WIDTH
        ),
        add_pooling_layer=False,
    )
    model = TwoTowerModel(ImageTower(backbone, projection_dim=WIDTH, num_heads=4), TextTower(bert, num_heads=4))
    fusion = CoAttentionFusion(48, WIDTH, hidden_dim=32, depth=1, num_heads=4, num_memory_slots=memory_slots)
    mae = MAEDecoder(embed_dim=32, decoder_dim=32, depth=1, num_heads=4, patch_size=8, spatial_dims=2, img_size=SIZE)
    return MPMAPretraining(model, fusion, mae, masked_lm_head(32, VOCAB), **kwargs)


def _batch(has_report: list[bool]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = len(has_report)
    lengths = torch.tensor([LENGTH - i if r else 2 for i, r in enumerate(has_report)])
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    ids = torch.randint(5, VOCAB, (n, LENGTH), generator=g) * mask
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 1:3] = ids[:, 1:3]
    labels[~torch.tensor(has_report)] = IGNORE_INDEX
    masked = ids.clone()
    masked[labels != IGNORE_INDEX] = 4  # the [MASK] id of this toy vocabulary
    return {
        "image": torch.randn(n, 1, SIZE, SIZE, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "mlm_input_ids": masked,
        "mlm_labels": labels,
        "has_report": torch.tensor(has_report),
    }


def test_full_objective_returns_every_term_and_their_sum() -> None:
    out = _objective()(_batch([True, True, True]))
    assert set(out) == {*TERMS, "loss"}
    torch.testing.assert_close(out["loss"], sum(out[t] for t in TERMS))
    out["loss"].backward()


@pytest.mark.parametrize("weight", WEIGHTS)
def test_each_weight_switches_its_term_and_modules_off(weight: str) -> None:
    objective = _objective(**{weight: 0.0})
    term = weight.removesuffix("_weight")
    out = objective(_batch([True, True]))
    assert term not in out and set(out) == ({*TERMS} - {term}) | {"loss"}
    built = {
        "global_alignment": objective.clip_loss,
        "local_alignment": objective.local_loss,
        "image_reconstruction": objective.mae_decoder,
        "text_reconstruction": objective.mlm_head,
    }
    assert built[term] is None and all(m is not None for t, m in built.items() if t != term)


def test_weights_scale_terms_and_alignment_only_builds_no_fusion() -> None:
    base = _objective()
    torch.manual_seed(3)
    one = base(_batch([True, True]))
    doubled = _objective(global_alignment_weight=2.0)
    torch.manual_seed(3)
    two = doubled(_batch([True, True]))
    torch.testing.assert_close(two["global_alignment"], 2 * one["global_alignment"])
    alignment_only = _objective(image_reconstruction_weight=0.0, text_reconstruction_weight=0.0)
    assert alignment_only.fusion is None
    with pytest.raises(ValueError, match="nothing to train"):
        _objective(**dict.fromkeys(WEIGHTS, 0.0))


def test_memory_switch_removes_the_memory_slots() -> None:
    with_memory = {n for n, _ in _objective(memory_slots=4).named_parameters() if "memory" in n}
    assert with_memory and not any("memory" in n for n, _ in _objective(memory_slots=0).named_parameters())


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_image_mask_ratio_sets_the_visible_patches(ratio: float, monkeypatch) -> None:
    objective = _objective(image_mask_ratio=ratio)
    seen = []
    backbone = objective.model.image_encoder.backbone
    original = backbone.forward_tokens
    monkeypatch.setattr(
        backbone, "forward_tokens", lambda x, **kw: seen.append(kw.get("keep_indices")) or original(x, **kw)
    )
    objective(_batch([True, True]))
    assert seen[0].shape == (2, round(16 * (1 - ratio)))  # 4 x 4 patches at 32 px / 8


def test_image_only_rows_contribute_only_the_image_reconstruction() -> None:
    objective = _objective().eval()
    batch = _batch([True, True, False])
    torch.manual_seed(7)
    out = objective(batch)
    changed = dict(batch)
    # another empty report for the image-only row: the alignment and text terms must not move
    for key in ("input_ids", "mlm_input_ids"):
        changed[key] = batch[key].clone()
        changed[key][2, 1] = 7
    torch.manual_seed(7)
    again = objective(changed)
    for term in ("global_alignment", "local_alignment", "text_reconstruction"):
        torch.testing.assert_close(again[term], out[term])
    solo = objective(_batch([False, False]))
    assert float(solo["global_alignment"]) == 0.0 and float(solo["text_reconstruction"]) == 0.0
    assert float(solo["image_reconstruction"]) > 0.0


@pytest.mark.parametrize("masked_reports", [False, True])
def test_alignment_on_unmasked_views_runs_the_encoders_again(monkeypatch, masked_reports: bool) -> None:
    """Whole images: a second image pass without dropped patches; unmasked reports: a second text pass on
    ``input_ids`` (with masked reports the alignment reuses the reconstruction pass's ``mlm_input_ids`` states)."""
    objective = _objective(align_masked_images=False, align_masked_reports=masked_reports)
    backbone, text_tower = objective.model.image_encoder.backbone, objective.model.text_encoder
    image_calls, text_calls = [], []
    original_image, original_text = backbone.forward_tokens, text_tower.token_embeddings
    monkeypatch.setattr(backbone, "forward_tokens", lambda x, **kw: image_calls.append(kw) or original_image(x, **kw))
    monkeypatch.setattr(text_tower, "token_embeddings", lambda ids, m: text_calls.append(ids) or original_text(ids, m))
    batch = _batch([True, True])
    objective(batch)
    assert len(image_calls) == 2 and image_calls[1].get("keep_indices") is None
    width = text_calls[0].shape[1]
    assert torch.equal(text_calls[0], batch["mlm_input_ids"][:, :width])
    if masked_reports:
        assert len(text_calls) == 1
    else:
        assert len(text_calls) == 2 and torch.equal(text_calls[1], batch["input_ids"][:, :width])


def test_fused_embedding_and_logged_accuracy() -> None:
    objective = _objective().eval()
    batch = _batch([True, True])
    objective(batch)
    assert 0.0 <= objective.log_values()["masked_token_accuracy"] <= 1.0
    fused = objective.fused_embedding(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert fused.shape == (2, 64)
    with pytest.raises(RuntimeError, match="fusion"):
        _objective(image_reconstruction_weight=0.0, text_reconstruction_weight=0.0).fused_embedding(
            batch["image"], batch["input_ids"], batch["attention_mask"]
        )


def test_masked_token_summary_reports_the_constant_guess_beside_the_accuracy() -> None:
    from common.methods.mpma.evaluate import encode_pairs, masked_token_summary

    objective = _objective()
    batch = _batch([True, True, False])
    batch["labels_vector"] = torch.zeros(3, 2)
    constant = 7  # a head that always predicts one token: its accuracy is that token's share of the targets
    objective.mlm_head = torch.nn.Linear(32, VOCAB)
    with torch.no_grad():
        objective.mlm_head.weight.zero_()
        objective.mlm_head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(constant), VOCAB).float())
    encoded = encode_pairs(objective, [batch])
    targets = batch["mlm_labels"][batch["mlm_labels"] != IGNORE_INDEX]
    assert encoded["masked_targets"].tolist() == targets.tolist()
    assert set(encoded["masked_predictions"].tolist()) == {constant}
    rows = torch.arange(3)[:, None].expand_as(batch["mlm_labels"])  # each masked token's record in the loader
    assert encoded["masked_cases"].tolist() == rows[batch["mlm_labels"] != IGNORE_INDEX].tolist()
    summary = masked_token_summary(encoded["masked_targets"], encoded["masked_predictions"])
    assert summary["total"] == 4 and summary["distinct_predictions"] == 1
    assert summary["correct"] == int((targets == constant).sum())
    assert summary["most_frequent_target_share"] == max(targets.tolist().count(t) for t in targets.tolist()) / 4
    fixed = masked_token_summary(torch.tensor([3, 3, 5, 6]).numpy(), torch.tensor([3, 5, 5, 6]).numpy())
    assert fixed == {
        "correct": 3,
        "total": 4,
        "accuracy": 0.75,
        "most_frequent_target_share": 0.5,
        "distinct_predictions": 3,
    }
    assert masked_token_summary(torch.zeros(0).numpy(), torch.zeros(0).numpy())["accuracy"] == 0.0


def test_compare_masked_tokens_pairs_runs_on_the_same_masked_tokens(tmp_path) -> None:
    from common.methods.mpma.evaluate import compare_masked_tokens, read_masked_tokens, write_masked_tokens

    cases = np.array([0, 0, 0, 1, 2, 2])
    targets = np.array([5, 6, 7, 5, 8, 9])
    runs = {
        "full": np.array([5, 6, 0, 0, 8, 0]),  # 3 of 6
        "better": np.array([5, 6, 7, 5, 8, 0]),  # 5 of 6: +1 token in case 0, +1 in case 1
        "same": np.array([5, 0, 7, 0, 8, 0]),  # 3 of 6, other tokens right
    }
    for name, predictions in runs.items():
        (tmp_path / name).mkdir()
        write_masked_tokens(tmp_path / name / "masked_tokens.csv", cases, targets, predictions)
    assert read_masked_tokens(tmp_path / "full")["prediction"].tolist() == runs["full"].tolist()
    others = {"better": tmp_path / "better", "same": tmp_path / "same"}
    result = compare_masked_tokens(("full", tmp_path / "full"), others, n_bootstrap=500, seed=0)
    assert result["n_cases"] == 3 and result["n_tokens"] == 6
    assert result["accuracy"] == {"full": 0.5, "better": 5 / 6, "same": 0.5}
    better = result["differences"]["better"]
    assert better["difference"] == pytest.approx(2 / 6)
    low, high = better["difference_ci"]
    assert 0.0 <= low <= better["difference"] <= high <= 1.0  # no resample can make "better" worse
    assert result["differences"]["same"]["difference"] == 0.0

    write_masked_tokens(tmp_path / "other_seed.csv", cases, targets[::-1].copy(), runs["full"])
    with pytest.raises(ValueError, match="not the same masked tokens"):
        compare_masked_tokens(("full", tmp_path / "full"), {"other seed": tmp_path / "other_seed.csv"})
    (tmp_path / "broken.csv").write_text("case,target\n0,1\n")
    with pytest.raises(ValueError, match="broken.csv: cannot read the masked-token outputs"):
        read_masked_tokens(tmp_path / "broken.csv")
    (tmp_path / "empty.csv").write_text("")  # no header: an error, not zero tokens
    with pytest.raises(ValueError, match="empty.csv: cannot read the masked-token outputs"):
        read_masked_tokens(tmp_path / "empty.csv")
    write_masked_tokens(tmp_path / "none.csv", *(np.zeros(0, dtype=np.int64),) * 3)  # a run that masked nothing
    assert read_masked_tokens(tmp_path / "none.csv")["target"].size == 0
    with pytest.raises(ValueError, match="no masked tokens"):
        compare_masked_tokens(("none", tmp_path / "none.csv"), others)
