"""MPMA's shared modules: memory-augmented cross-attention, co-attention fusion, FILIP alignment, MLM loss/head,
whole-word masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.losses.masked_token_loss import IGNORE_INDEX, MaskedTokenLoss, masked_token_accuracy
from common.losses.token_patch_alignment_loss import TokenPatchAlignmentLoss, late_interaction_similarities
from common.networks.co_attention import CoAttentionFusion
from common.networks.memory_attention import MemoryAugmentedCrossAttention
from common.networks.mlm_head import masked_lm_head

torch.set_num_threads(1)


def _manual_attention(module: MemoryAugmentedCrossAttention, x, context, allowed) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_h)) V per head over [context; memory], written out with loops."""
    heads, (b, length, dim) = module.num_heads, x.shape
    head_dim = dim // heads
    q = module.query(x)
    k, v = module.key(context), module.value(context)
    if module.num_memory_slots:
        k = torch.cat([k, module.memory_keys.expand(b, -1, -1)], dim=1)
        v = torch.cat([v, module.memory_values.expand(b, -1, -1)], dim=1)
        allowed = torch.cat([allowed, torch.ones(b, module.num_memory_slots, dtype=torch.bool)], dim=1)
    out = torch.zeros(b, length, dim)
    for i in range(b):
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            scores = q[i, :, sl] @ k[i, :, sl].T / math.sqrt(head_dim)
            scores = scores.masked_fill(~allowed[i][None], float("-inf"))
            out[i, :, sl] = scores.softmax(-1) @ v[i, :, sl]
    return module.out(out)


@pytest.mark.parametrize("slots", [0, 5])
def test_memory_attention_equals_hand_computation(slots: int) -> None:
    torch.manual_seed(0)
    module = MemoryAugmentedCrossAttention(16, 4, num_memory_slots=slots).eval()
    x, context = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    allowed = torch.ones(2, 7, dtype=torch.bool)
    allowed[1, 4:] = False
    keys, values = module.keys_values(context)
    assert keys.shape == values.shape == (2, 7 + slots, 16)  # the memory slots extend keys and values
    torch.testing.assert_close(module(x, context, allowed), _manual_attention(module, x, context, allowed))


def test_memory_slots_are_attended_and_masked_context_is_not() -> None:
    torch.manual_seed(0)
    module = MemoryAugmentedCrossAttention(16, 2, num_memory_slots=4).eval()
    x, context = torch.randn(1, 3, 16), torch.randn(1, 6, 16)
    allowed = torch.tensor([[True, True, True, False, False, False]])
    base = module(x, context, allowed)
    changed = context.clone()
    changed[:, 3:] = 100.0
    torch.testing.assert_close(module(x, changed, allowed), base)
    with torch.no_grad():
        module.memory_values.add_(1.0)
    assert not torch.allclose(module(x, context, allowed), base)


def test_co_attention_fusion_shapes_padding_and_memory_placement() -> None:
    torch.manual_seed(0)
    fusion = CoAttentionFusion(image_dim=24, text_dim=20, hidden_dim=32, depth=2, num_heads=4, num_memory_slots=3)
    fusion.eval()
    image, text = torch.randn(2, 9, 24), torch.randn(2, 6, 20)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    out = fusion(image, text, text_mask=mask)
    assert out.image.shape == (2, 9, 32) and out.text.shape == (2, 6, 32)
    changed = text.clone()
    changed[1, 3:] = 50.0  # padding of row 1 changes nothing that row 1's real tokens or its image see
    again = fusion(image, changed, text_mask=mask)
    torch.testing.assert_close(again.image, out.image)
    torch.testing.assert_close(again.text[1, :3], out.text[1, :3])
    assert all(layer.cross_attn.num_memory_slots == 3 for layer in fusion.text_layers)
    assert all(layer.cross_attn.num_memory_slots == 0 for layer in fusion.image_layers)
    no_memory = CoAttentionFusion(24, 20, 32, depth=1, num_heads=4, num_memory_slots=0)
    assert not any("memory" in name for name, _ in no_memory.named_parameters())


def test_co_attention_fusion_keeps_text_tokens_apart_at_initialisation() -> None:
    """M3AE initialises the modality-type embedding N(0, 0.02): it must not swamp the projected tokens.

    With nn.Embedding's N(0, 1) default the shared text-type vector (norm ~sqrt(hidden)) outweighed the token-specific
    part of projected MiniLM states ~7:1 and every fused text token started alike (mean cosine 0.98), the state in
    which mpma_cxr's MLM head only learned the unigram prior (issue 18).
    """
    torch.manual_seed(0)
    fusion = CoAttentionFusion(image_dim=16, text_dim=384, hidden_dim=128, depth=2, num_heads=4, num_memory_slots=4)
    assert fusion.modality_type.weight.std().item() == pytest.approx(0.02, rel=0.2)
    text = torch.randn(2, 12, 384) * 0.33  # per-dim spread of the MiniLM demo tower's last hidden states
    with torch.no_grad():
        fused = fusion(torch.randn(2, 9, 16), text).text.flatten(0, 1)
    unit = F.normalize(fused, dim=-1)
    mean_cosine = (unit @ unit.T).mean().item()
    assert mean_cosine < 0.8, f"fused text tokens start alike (mean cosine {mean_cosine:.3f})"


def test_late_interaction_similarity_and_loss_equal_a_hand_computation() -> None:
    torch.manual_seed(0)
    image, text = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    i2t, t2i = late_interaction_similarities(image, text, text_mask=text_mask)
    ni, nt = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    for a in range(3):
        for b in range(3):
            real = nt[b][text_mask[b]]
            cos = ni[a] @ real.T  # (patches, real tokens)
            assert math.isclose(float(i2t[a, b]), float(cos.max(1).values.mean()), rel_tol=1e-5)
            assert math.isclose(float(t2i[a, b]), float(cos.max(0).values.mean()), rel_tol=1e-5)
    loss_fn = TokenPatchAlignmentLoss(init_logit_scale=10.0)
    labels = torch.arange(3)
    expected = (F.cross_entropy(10 * i2t, labels) + F.cross_entropy(10 * t2i.T, labels)) / 2
    torch.testing.assert_close(loss_fn(image, text, text_mask=text_mask), expected)
    valid = torch.tensor([True, False, True])
    rows = valid.nonzero().flatten()
    sub = TokenPatchAlignmentLoss(init_logit_scale=10.0)(image[rows], text[rows], text_mask=text_mask[rows])
    torch.testing.assert_close(loss_fn(image, text, text_mask=text_mask, valid=valid), sub)
    zero = loss_fn(image, text, valid=torch.zeros(3, dtype=torch.bool))
    assert float(zero) == 0.0 and zero.requires_grad


def test_masked_token_loss_and_accuracy() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]])
    labels = torch.tensor([[0, IGNORE_INDEX, 1]])
    expected = (F.cross_entropy(logits[0, 0:1], labels[0, 0:1]) + F.cross_entropy(logits[0, 2:3], labels[0, 2:3])) / 2
    torch.testing.assert_close(MaskedTokenLoss()(logits, labels), expected)
    assert masked_token_accuracy(logits, labels) == (1, 2)
    nothing = MaskedTokenLoss()(logits.requires_grad_(), torch.full((1, 3), IGNORE_INDEX))
    assert float(nothing) == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="labels"):
        MaskedTokenLoss()(logits, labels[:, :2])


def _assert_bert_initialised(module: torch.nn.Module) -> None:
    """Every linear / attention projection / embedding weight N(0, 0.02), biases 0, LayerNorm 1/0 (M3AE, BERT)."""
    checked = 0
    for name, param in module.named_parameters():
        if "memory_" in name:  # MA-CMF slots: Meshed-Memory's initialisation, no M3AE counterpart
            continue
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, f"{name} is not zero"
        elif "norm" in name.lower():
            assert torch.all(param == 1), f"{name} is not 1"
        else:
            assert param.std().item() == pytest.approx(0.02, rel=0.15), f"{name} std {param.std().item():.4f}"
            assert abs(param.mean().item()) < 0.005, name
        checked += 1
    assert checked > 0


def test_co_attention_fusion_is_initialised_as_m3ae() -> None:
    """M3AE's ``init_weights`` on the fusion: PyTorch's defaults (e.g. Linear ~U(+-1/sqrt(fan_in)), MHA xavier,
    random biases) draw the demo width's layers ~2.5x wider."""
    torch.manual_seed(0)
    fusion = CoAttentionFusion(image_dim=144, text_dim=384, hidden_dim=128, depth=2, num_heads=4, num_memory_slots=4)
    _assert_bert_initialised(fusion)
    memory = fusion.text_layers[0].cross_attn.memory_keys
    assert memory.std().item() == pytest.approx(32**-0.5, rel=0.2)  # Meshed-Memory's N(0, 1/d_k) kept


def test_masked_lm_head_is_initialised_as_bert() -> None:
    """M3AE's MLM head: BERT's transform + decoder N(0, 0.02), output bias and LayerNorm bias 0."""
    torch.manual_seed(0)
    head = masked_lm_head(128, 1000)
    _assert_bert_initialised(head)
    assert head.decoder.bias is head.bias  # the output bias is the one zero-initialised parameter


def test_masked_lm_head_maps_states_to_the_vocabulary() -> None:
    head = masked_lm_head(32, 101)
    assert head(torch.randn(2, 5, 32)).shape == (2, 5, 101)
    assert head(torch.randn(7, 32)).shape == (7, 101)


@pytest.fixture(scope="module")
def tokenizer():
    from common.transforms.text import load_tokenizer

    return load_tokenizer("default")


def test_whole_word_masking_masks_whole_words_at_the_ratio(tokenizer) -> None:
    from common.transforms.mlm import RandWholeWordMaskd

    text = (
        "Moderate left pleural effusion with adjacent atelectasis. Cardiomegaly is unchanged. "
        "No pneumothorax. Degenerative changes of the thoracic spine. Calcification of the aortic knob."
    )
    encoded = tokenizer(text, padding="max_length", max_length=64, return_tensors="pt")
    ids, mask = encoded["input_ids"][0], encoded["attention_mask"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    words, word = [], -1
    for i, token in enumerate(tokens):
        word += 0 if token.startswith("##") else 1
        words.append(word)
    real = int(mask.sum())
    special = {0, real - 1}
    transform = RandWholeWordMaskd(tokenizer=tokenizer, mlm_probability=0.15)
    transform.set_random_state(0)
    counts, masks = [], set()
    for _ in range(50):
        out = transform({"input_ids": ids, "attention_mask": mask})
        chosen = (out["mlm_labels"] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert out["mlm_input_ids"].shape == ids.shape and out["mlm_labels"].shape == ids.shape
        assert not special & set(chosen) and all(i < real for i in chosen)  # never [CLS], [SEP] or padding
        for w in {words[i] for i in chosen}:  # every piece of a chosen word is chosen
            assert {i for i in range(real) if words[i] == w} <= set(chosen)
        assert torch.equal(out["mlm_labels"][chosen], ids[chosen])
        unchanged = [i for i in range(len(ids)) if i not in chosen]
        assert torch.equal(out["mlm_input_ids"][unchanged], ids[unchanged])
        counts.append(len(chosen))
        masks.add(tuple(chosen))
    target = round(0.15 * real)
    assert all(c <= target for c in counts) and sum(counts) / len(counts) >= target - 2
    assert len(masks) > 40  # a new mask every call
    again = RandWholeWordMaskd(tokenizer=tokenizer, mlm_probability=0.15)
    again.set_random_state(0)
    first = again({"input_ids": ids, "attention_mask": mask})
    transform.set_random_state(0)
    torch.testing.assert_close(transform({"input_ids": ids, "attention_mask": mask}), first)


def test_whole_word_masking_leaves_an_empty_report_alone(tokenizer) -> None:
    from common.transforms.mlm import RandWholeWordMaskd

    encoded = tokenizer("", padding="max_length", max_length=8, return_tensors="pt")
    out = RandWholeWordMaskd(tokenizer=tokenizer)(
        {"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0]}
    )
    assert bool((out["mlm_labels"] == IGNORE_INDEX).all())
    assert torch.equal(out["mlm_input_ids"], encoded["input_ids"][0])


def test_masked_token_log_prior_counts_report_tokens(tokenizer) -> None:
    """Log unigram frequencies of the reports' WordPiece tokens (special tokens not counted), add-k smoothed."""
    from common.networks.mlm_head import masked_token_log_prior

    reports = ["no effusion.", "small effusion. no pneumothorax.", ""]
    prior = masked_token_log_prior(reports, tokenizer, pseudo_count=0.01)
    assert prior.shape == (len(tokenizer),)
    assert prior.logsumexp(0).item() == pytest.approx(0.0, abs=1e-5)
    ids = tokenizer(reports[:2], add_special_tokens=False)["input_ids"]
    tokens = [t for row in ids for t in row]
    total = len(tokens) + 0.01 * len(tokenizer)
    for token in set(tokens):
        assert prior[token].item() == pytest.approx(math.log((tokens.count(token) + 0.01) / total), rel=1e-4)
    unseen = torch.ones(len(tokenizer), dtype=torch.bool)
    unseen[torch.tensor(tokens)] = False
    assert torch.allclose(prior[unseen], torch.tensor(math.log(0.01 / total)))  # special tokens included
    with pytest.raises(ValueError, match="no report text"):
        masked_token_log_prior(["", ""], tokenizer)


def test_masked_lm_head_takes_an_output_bias() -> None:
    """The given bias is the head's output bias: with zero states' transform the logits' ranking is the prior's."""
    prior = torch.log_softmax(torch.randn(50), dim=0)
    head = masked_lm_head(16, 50, output_bias=prior)
    torch.testing.assert_close(head.bias.detach(), prior)
    with torch.no_grad():
        head.decoder.weight.zero_()
    torch.testing.assert_close(head(torch.randn(3, 16)), prior.expand(3, -1))
    with pytest.raises(ValueError, match="output_bias"):
        masked_lm_head(16, 50, output_bias=torch.zeros(49))
