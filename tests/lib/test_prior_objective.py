"""PRIOR's objective and its parts: stages, term weights, frozen modules, set matching, decoders, sentences, zero-shot.

The release's formulas are re-stated here independently (per-report loops as in ``prior/models/prior.py``) and the
batched implementation is compared with them; the matching is checked against ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import math
from itertools import permutations

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from common.data.contract import DataContractError
from common.methods.prior.objective import STAGE_WEIGHTS, PRIORPretraining, simsiam_predictor
from common.networks.conv_decoder import UpsamplingDecoder
from common.networks.local_attention import LocalCrossAttention
from common.networks.pooling import PositionalAttentionPool
from common.networks.prototypes import SentencePrototypeBank
from common.networks.query_decoder import QueryDecoder
from common.networks.sentence_pool import SentencePooler, single_sentence_index
from common.networks.set_matching import hungarian_match, match_predictions
from common.networks.two_tower import ImageTower, TextTower, TwoTowerModel
from common.networks.unet import UNetEncoder
from common.networks.zero_shot import LocalDenseZeroShotHeads, LocalZeroShotClassifier
from common.transforms.sentences import TokenizeSentencesd, records_with_min_sentences, sentence_token_ids

D = 32


class _TinyBert(nn.Module):
    """A 2-layer BERT from ``transformers`` with random weights (no download)."""

    def __new__(cls):
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=64,
            hidden_size=D,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        return BertModel(config, add_pooling_layer=False)


def _objective(stage: int, dims: int = 2, **kwargs) -> PRIORPretraining:
    torch.manual_seed(0)
    backbone = UNetEncoder(dims, 1, "resnet10")
    image = ImageTower(
        backbone,
        projection_dim=D,
        project_tokens=False,
        pooler=PositionalAttentionPool(backbone.out_channels, (2,) * dims, 4),
    )
    pooler = SentencePooler(PositionalAttentionPool(D, None, 4), SentencePrototypeBank(D, 16))
    text = TextTower(_TinyBert(), projection_dim=D, projector=nn.Linear(D, D), project_tokens=True, pooler=pooler)
    return PRIORPretraining(
        TwoTowerModel(image, text),
        nn.Linear(backbone.out_channels, D),
        LocalCrossAttention(D),
        simsiam_predictor(D),
        UpsamplingDecoder(dims, 2 * D, num_blocks=4),
        QueryDecoder(D, num_queries=4, num_layers=1, num_heads=4, mlp_dim=64),
        stage=stage,
        **kwargs,
    )


def _batch(dims: int = 2, b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    length = 20
    sentence_index = torch.full((b, length), -1)
    counts = [2, 5, 3, 4][:b]
    for row, n in enumerate(counts):
        for k in range(n):
            sentence_index[row, 1 + 3 * k : 4 + 3 * k] = k + 1
    attention_mask = (torch.arange(length) < 2 + 3 * torch.tensor(counts)[:, None]).long()
    return {
        "image": torch.randn(b, 1, *(64,) * dims, generator=g),
        "input_ids": torch.randint(1, 64, (b, length), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        "sentence_index": sentence_index,
    }


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_terms_weights_and_gradients(stage: int):
    objective = _objective(stage)
    out = objective(_batch())
    assert set(out) - {"loss"} == set(STAGE_WEIGHTS[stage])
    assert torch.isclose(out["loss"], sum(v for k, v in out.items() if k != "loss"))
    out["loss"].backward()
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert all(objective.get_parameter(n).grad is not None for n in trainable), "a trainable parameter got no grad"
    bank = {n for n, _ in objective.named_parameters() if ".prototypes." in n}
    decoders = {n for n, _ in objective.named_parameters() if n.startswith(("image_decoder.", "sentence_decoder."))}
    assert bank and decoders
    assert (bank & trainable) == (bank if stage >= 2 else set())
    assert (decoders & trainable) == (decoders if stage == 3 else set())


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_stage_runs_under_bf16_autocast(stage: int):
    """The trainer's ``amp_dtype: bf16`` (paper config on GPU, demos on CPU): stage 3 quantises the matched float32
    predictions with a bank whose matmuls autocast to bf16, and mixing the two once failed (index_put dtypes)."""
    objective = _objective(stage)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(_batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in objective.parameters() if p.requires_grad)


def test_stage_checkpoints_share_keys_and_weights_override():
    assert _objective(1).state_dict().keys() == _objective(3).state_dict().keys()
    objective = _objective(3, weights={"image_reconstruction": 0.0, "global": 2.0})
    out = objective(_batch())
    assert "image_reconstruction" not in out and objective.weights["global"] == 2.0
    with pytest.raises(ValueError, match="unknown PRIOR loss terms"):
        _objective(1, weights={"contrastive": 1.0})


def test_stage1_global_and_local_terms_equal_release_formulas():
    """The release's stage-1 step written out per report (``global_alignment_loss``, ``local_alignment_loss``)."""
    objective = _objective(1).eval()
    batch = _batch()
    out = objective(batch)
    model, pooler = objective.model, objective.pooler
    fmap = model.image_encoder.backbone(batch["image"])
    g_v = F.normalize(
        model.image_encoder.projector(model.image_encoder.pooler(fmap.flatten(2).transpose(1, 2))), dim=-1
    )
    tokens = model.text_encoder.projector(
        model.text_encoder.token_embeddings(batch["input_ids"], batch["attention_mask"])
    )
    scale = math.exp(math.log(100.0))
    image_loss, text_loss, g_t = 0.0, 0.0, []
    for b in range(fmap.shape[0]):
        idx = batch["sentence_index"][b]
        s = torch.stack([tokens[b, idx == k].mean(0) for k in range(1, int(idx.max()) + 1)])
        g_t.append(pooler.attention(s[None])[0])
        v = objective.local_image_projection(fmap[b].flatten(1).t())  # spatial flatten (the release's bug fixed)
        a = objective.cross_attention(v, s)
        h = objective.predictor
        image_loss += -0.5 * (
            F.cosine_similarity(h(v), a.image_context.detach(), dim=-1).mean()
            + F.cosine_similarity(h(a.image_context), v.detach(), dim=-1).mean()
        )
        sa, sb = F.normalize(s, dim=-1), F.normalize(a.text_context, dim=-1)
        labels = torch.arange(len(s))
        text_loss += 0.5 * (F.cross_entropy(scale * sb @ sa.t(), labels) + F.cross_entropy(scale * sa @ sb.t(), labels))
    g_t = F.normalize(torch.stack(g_t), dim=-1)
    labels = torch.arange(len(g_t))
    global_loss = 0.5 * (
        F.cross_entropy(scale * g_v @ g_t.t(), labels) + F.cross_entropy(scale * g_t @ g_v.t(), labels)
    )
    n = fmap.shape[0]
    torch.testing.assert_close(out["global"], global_loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["local_image"], image_loss / n, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["local_text"], text_loss / n, rtol=1e-4, atol=1e-4)


def test_hungarian_match_is_scipy_optimum_and_not_the_release_inverse():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(20, 6, 6, generator=g)
    match = hungarian_match(cost)
    for b in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[b].numpy())
        best = cost[b].numpy()[rows, cols].sum()
        ours = cost[b, match[b], torch.arange(6)].sum().item()
        assert ours == pytest.approx(best, abs=1e-6)
        assert sorted(match[b].tolist()) == list(range(6))
    # a 3-cycle: the release's logit[col_ind] pairs each target with another target's prediction
    predictions = torch.eye(3)[[1, 2, 0]].unsqueeze(0)  # prediction i is target (i+1) % 3... as rows
    targets = torch.eye(3).unsqueeze(0)
    matched = match_predictions(predictions, targets)
    torch.testing.assert_close(matched, targets)
    _, col_ind = linear_sum_assignment(torch.cdist(predictions[0], targets[0], p=1).numpy())
    assert not torch.equal(predictions[0][col_ind], targets[0])


def test_hungarian_match_rectangular_and_bad_costs():
    cost = torch.tensor([[[0.0, 5.0], [5.0, 0.0], [1.0, 1.0]]])  # 3 predictions, 2 targets
    assert hungarian_match(cost).tolist() == [[0, 1]]
    assert min(sum(cost[0, p, t] for t, p in enumerate(perm)) for perm in permutations(range(3), 2)) == 0
    with pytest.raises(ValueError, match="NaN"):
        hungarian_match(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="predictions >= targets"):
        hungarian_match(torch.zeros(1, 2, 3))


def test_sentence_generation_terms_match_release_formulas():
    """``spg_loss`` (L1 over all slots, matched), ``SPB.cal_loss`` (KL from targets' assignment) and the GPA term."""
    objective = _objective(3).eval()  # eval: no dropout, deterministic prototypes
    torch.manual_seed(3)
    local = torch.randn(2, 8, D)
    prototypes = torch.randn(2, 3, D)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    prototypes = prototypes * mask[..., None]
    target_logits = objective.pooler.prototypes.logits(prototypes[mask])
    text_emb = F.normalize(torch.randn(2, D), dim=-1)
    terms = objective._sentence_generation(local, prototypes, mask, target_logits, text_emb)
    predictions = objective.sentence_decoder(local)
    q = predictions.shape[1]
    l1, matched_rows = 0.0, []
    for b in range(2):
        target = torch.zeros(q, D)
        target[:3] = prototypes[b]
        rows, cols = linear_sum_assignment(torch.cdist(predictions[b], target, p=1).detach().numpy())
        aligned = torch.empty_like(predictions[b])
        aligned[cols] = predictions[b][rows]  # target t gets the prediction assigned to it
        l1 += F.l1_loss(aligned, target)
        matched_rows.append(aligned[: int(mask[b].sum())])
    matched = torch.cat(matched_rows)
    kl = F.kl_div(
        F.log_softmax(matched @ objective.pooler.prototypes.embed.weight.T, -1),
        F.log_softmax(target_logits, -1),
        reduction="batchmean",
        log_target=True,
    )
    torch.testing.assert_close(terms["sentence_generation"], l1 / 2)
    torch.testing.assert_close(terms["prototype_kl"], kl)
    assert torch.isfinite(terms["prediction_alignment"])


def test_query_decoder_causal_switch():
    decoder = QueryDecoder(D, num_queries=5, num_layers=2, num_heads=4, mlp_dim=64, dropout=0.0).eval()
    memory = torch.randn(1, 7, D)
    base = decoder(memory)
    shift = torch.randn(D)  # not a constant: the embedding LayerNorm would remove it
    decoder.queries.data[0, 4] += shift  # change the last query only
    changed = decoder(memory)
    assert not torch.allclose(base[0, 0], changed[0, 0])  # bidirectional: the first query sees the last
    decoder.causal = True
    causal_a = decoder(memory)
    decoder.queries.data[0, 4] -= shift
    causal_b = decoder(memory)
    torch.testing.assert_close(causal_a[0, :4], causal_b[0, :4])  # causal: earlier queries do not
    assert decoder(memory, torch.tensor([[True] * 3 + [False] * 4])).shape == (1, 5, D)


@pytest.mark.parametrize("dims,blocks", [(2, 5), (3, 3)])
def test_upsampling_decoder_shapes(dims: int, blocks: int):
    decoder = UpsamplingDecoder(dims, 16, out_channels=1, num_blocks=blocks)
    out = decoder(torch.randn(2, 16, *(2,) * dims))
    assert out.shape == (2, 1, *(2 * 2**blocks,) * dims)


def test_tokenize_sentences_numbers_every_token_and_truncates_with_sep():
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(_minilm())
    ids, numbers = sentence_token_ids(["No effusion.", "Mild cardiomegaly is seen."], tokenizer, 64)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    first = tokenizer("No effusion.", add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(first)] == first and numbers[1 : 1 + len(first)] == [1] * len(first)
    assert set(numbers[1:-1]) == {1, 2} and numbers[0] == numbers[-1] == -1
    ids, numbers = sentence_token_ids(["a b c d e f g"] * 3, tokenizer, 10)
    assert len(ids) == 10 and ids[-1] == tokenizer.sep_token_id and numbers[-2] == 2
    d = TokenizeSentencesd(tokenizer=tokenizer, max_length=32)({"report": "No effusion. Heart normal."})
    assert d["input_ids"].shape == d["sentence_index"].shape == (32,)
    assert int(d["sentence_index"].max()) == 2 and int(d["attention_mask"].sum()) == len(
        sentence_token_ids(["No effusion.", "Heart normal."], tokenizer, 32)[0]
    )
    with pytest.raises(DataContractError, match="string"):
        TokenizeSentencesd(tokenizer=tokenizer)({"report": None, "image": "/data/x.png"})


def test_records_with_min_sentences_filter():
    records = [
        {"image": "a", "report": "One. Two. Three. Four."},
        {"image": "b", "report": "One. Two."},
        {"image": "c"},
    ]
    assert [r["image"] for r in records_with_min_sentences(records, 4)] == ["a"]
    assert [r["image"] for r in records_with_min_sentences(records, 2, keep_image_only=True)] == ["a", "b", "c"]
    with pytest.raises(DataContractError, match="at least 9 sentences"):
        records_with_min_sentences(records, 9)


def test_sentence_pooler_single_sentence_and_prototypes():
    assert single_sentence_index(torch.tensor([[1, 1, 1, 1, 0]])).tolist() == [[-1, 1, 1, -1, -1]]
    pooler = SentencePooler(PositionalAttentionPool(D, None, 4), SentencePrototypeBank(D, 8), use_prototypes=True)
    tokens, mask = torch.randn(2, 6, D), torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooler.eval()
    a, b = pooler(tokens, mask), pooler(tokens, mask)
    torch.testing.assert_close(a, b)  # eval: no Gumbel noise
    sentences, _ = pooler.sentences(tokens, mask)
    torch.testing.assert_close(sentences[0, 0], tokens[0, 1:3].mean(0))
    with pytest.raises(ValueError, match="prototype bank"):
        SentencePooler(PositionalAttentionPool(D, None, 4), None, use_prototypes=True)


def test_local_zero_shot_classifier_rule():
    objective = _objective(2).eval()
    model = objective.model

    class _Tokenizer:
        def __call__(self, texts, **_):
            ids = torch.tensor([[2, 3 + i % 5, 4 + i % 7, 5] for i in range(len(texts))])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    prompts = {
        "effusion": (["effusion", "fluid"], ["no effusion", "no fluid"]),
        "nodule": (["nodule"] * 2, ["none"] * 2),
    }
    clf = LocalZeroShotClassifier.from_model(
        model, _Tokenizer(), prompts, objective.local_image_projection, objective.cross_attention, local_weight=0.5
    )
    images = torch.randn(2, 1, 64, 64)
    probs = clf(images)
    assert probs.shape == (2, 2) and ((probs > 0) & (probs < 1)).all()
    clf.local_weight = 0.0
    global_only = clf(images)
    torch.testing.assert_close(global_only, clf.probabilities(model.image_encoder(images)))
    clf.local_weight = 0.5
    fmap = model.image_encoder.backbone(images)
    k, p, d = clf.prompt_sentences_pos.shape
    scores = []
    for sentences in (clf.prompt_sentences_pos, clf.prompt_sentences_neg):
        per = torch.zeros(2, k, p)
        for i in range(k):
            for j in range(p):
                v = clf.local_projection(fmap.flatten(2).transpose(1, 2))
                out = clf.cross_attention(v, sentences[i, j][None, None].expand(2, 1, d))
                per[:, i, j] = 0.5 * (out.image_attention.mean((1, 2)) + out.text_attention.mean((1, 2)))
        scores.append(per)
    local = torch.sigmoid(scores[0] - scores[1]).mean(-1)
    torch.testing.assert_close(probs, (global_only + 0.5 * local) / 1.5, rtol=1e-5, atol=1e-6)
    maps = clf.local_maps(images)  # sentence-patch maps on the input grid
    assert maps.shape == (2, 2, 64, 64) and maps.abs().max() <= 1
    v = clf.local_projection(fmap.flatten(2).transpose(1, 2))
    grid = []
    for i in range(k):
        diff = (
            sum(
                clf.cross_attention(v, clf.prompt_sentences_pos[i, j][None, None].expand(2, 1, d)).image_attention[
                    ..., 0
                ]
                - clf.cross_attention(v, clf.prompt_sentences_neg[i, j][None, None].expand(2, 1, d)).image_attention[
                    ..., 0
                ]
                for j in range(p)
            )
            / p
        )
        grid.append(diff.reshape(2, *fmap.shape[2:]))
    expected = F.interpolate(torch.stack(grid, 1), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    dense = LocalDenseZeroShotHeads(clf)(images)  # embed.yaml's network: one backbone pass for all three
    assert dense.keys() == {"embedding", "probabilities", "similarity"} and dense["similarity"].shape == (2, 2, 64, 64)
    torch.testing.assert_close(dense["embedding"], model.image_encoder(images))
    torch.testing.assert_close(dense["probabilities"], probs)
    torch.testing.assert_close(dense["similarity"], maps)


def test_released_resnet50_layout_loads_with_no_missing_or_unexpected_key(tmp_path):
    """``prior_resnet50.pt``: a TorchVision ResNet-50 with a 1-channel conv1 (random weights, saved that way)."""
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet50()
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    path = tmp_path / "prior_resnet50.pt"
    torch.save(net.state_dict(), path)
    encoder = UNetEncoder(2, 1, "resnet50", init_weights=str(path))
    torch.testing.assert_close(encoder.encoder.conv1.weight, net.conv1.weight)
    torch.testing.assert_close(encoder.encoder.layer4[2].conv3.weight, net.layer4[2].conv3.weight)
    x = torch.randn(1, 1, 64, 64)
    net.eval(), encoder.eval()
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    torch.testing.assert_close(encoder(x), stem(x), rtol=1e-4, atol=1e-4)


def _minilm() -> str:
    from common.networks.text_encoder import resolve_text_encoder

    return resolve_text_encoder("default")


def test_prototype_bank_initialised_from_sentence_kmeans():
    from sklearn.cluster import KMeans

    from common.methods.prior.prototype_init import initialise_prototypes_from_sentences

    objective = _objective(2)
    objective.pooler.prototypes = SentencePrototypeBank(D, 4)
    batch = _batch()
    count = initialise_prototypes_from_sentences(objective, [batch], seed=0)
    assert count == 10  # 2 + 5 + 3 sentences
    model = objective.model.eval()
    tokens = model.text_encoder.projector(
        model.text_encoder.token_embeddings(batch["input_ids"], batch["attention_mask"])
    )
    sentences, mask = objective.pooler.sentences(tokens, batch["attention_mask"], batch["sentence_index"])
    expected = KMeans(n_clusters=4, n_init=1, random_state=0).fit(sentences[mask].detach().numpy()).cluster_centers_
    torch.testing.assert_close(objective.pooler.prototypes.embed.weight, torch.as_tensor(expected, dtype=torch.float32))
    objective.pooler.prototypes = SentencePrototypeBank(D, 64)
    with pytest.raises(ValueError, match="cannot initialise 64 prototypes"):
        initialise_prototypes_from_sentences(objective, [batch])


def test_prototype_bank_initialised_from_sentence_directions_assigns_the_nearest_centre():
    from sklearn.cluster import KMeans

    from common.methods.prior.prototype_init import initialise_prototypes_from_sentences

    objective = _objective(2)
    objective.pooler.prototypes = SentencePrototypeBank(D, 4)
    batch = _batch()
    initialise_prototypes_from_sentences(objective, [batch], seed=0, directions=True)
    model = objective.model.eval()
    tokens = model.text_encoder.projector(
        model.text_encoder.token_embeddings(batch["input_ids"], batch["attention_mask"])
    )
    sentences, mask = objective.pooler.sentences(tokens, batch["attention_mask"], batch["sentence_index"])
    data = sentences[mask].detach()
    rows = objective.pooler.prototypes.embed.weight.detach()
    torch.testing.assert_close(rows.norm(dim=1), data.norm(dim=1).mean().expand(4))  # equal row norms
    units = torch.nn.functional.normalize(data, dim=1).numpy()
    centres = torch.as_tensor(KMeans(n_clusters=4, n_init=1, random_state=0).fit(units).cluster_centers_)
    torch.testing.assert_close(
        rows / rows.norm(dim=1, keepdim=True), torch.nn.functional.normalize(centres.float(), dim=1)
    )
    # with equal norms the bank's dot-product argmax is the nearest row
    assert torch.equal((data @ rows.T).argmax(-1), torch.cdist(data, rows).argmin(-1))


def _with_image_only_row(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` plus a last image-only row (an empty report: [CLS] [SEP], no sentence; ``has_report`` False)."""
    g = torch.Generator().manual_seed(5)
    ids, mask, index = (batch[k] for k in ("input_ids", "attention_mask", "sentence_index"))
    empty_mask = torch.zeros_like(mask[:1])
    empty_mask[0, :2] = 1
    return {
        "image": torch.cat([batch["image"], torch.randn(batch["image"][:1].shape, generator=g)]),
        "input_ids": torch.cat([ids, torch.randint(1, 64, ids[:1].shape, generator=g) * empty_mask]),
        "attention_mask": torch.cat([mask, empty_mask]),
        "sentence_index": torch.cat([index, torch.full_like(index[:1], -1)]),
        "has_report": torch.tensor([True] * ids.shape[0] + [False]),
    }


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_image_only_rows_feed_only_the_untexted_reconstruction(stage: int):
    """Issue 26: ``has_report`` all True is the paper's objective; with an image-only row every text-side term equals
    the paired rows' alone, its text changes nothing and its image changes only stage 3's image reconstruction."""
    objective = _objective(stage).eval()  # eval: no dropout, BatchNorm running statistics, deterministic prototypes
    paired = _batch()
    with torch.no_grad():
        paper = objective(paired)
        flagged = objective({**paired, "has_report": torch.ones(3, dtype=torch.bool)})
        assert all(torch.equal(flagged[k], paper[k]) for k in paper)
        mixed = _with_image_only_row(paired)
        out = objective(mixed)
        for name in set(paper) - {"loss", "image_reconstruction"}:
            torch.testing.assert_close(out[name], paper[name], msg=name)
        other_text = {**mixed, "input_ids": mixed["input_ids"].clone()}
        other_text["input_ids"][-1, 2:] = 7
        assert all(torch.equal(objective(other_text)[k], out[k]) for k in out)
        other_image = {**mixed, "image": mixed["image"].clone()}
        other_image["image"][-1] += 1.0
        changed = objective(other_image)
        image_side = {"image_reconstruction", "loss"} if stage == 3 else set()
        assert all(torch.equal(changed[k], out[k]) for k in set(out) - image_side)
        assert all(not torch.equal(changed[k], out[k]) for k in image_side)
    with pytest.raises(ValueError, match="at least one paired record"):
        objective({**mixed, "has_report": torch.zeros(4, dtype=torch.bool)})
