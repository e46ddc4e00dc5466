"""PRIOR's sentence prototype bank and local cross-attention against the official release (QtacierP/PRIOR 086bf2e).

The release's ``codes/prior/modules`` import only torch; the parity tests skip when ``../shared`` is absent.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

from common.networks.local_attention import LocalCrossAttention, map_release_state_dict
from common.networks.prototypes import SentencePrototypeBank, prototype_temperature

RELEASE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference_code" / "PRIOR" / "codes"
EXACT = {"atol": 0.0, "rtol": 0.0}
CLOSE = {"atol": 1e-6, "rtol": 1e-5}


def _release(module: str):
    if not (RELEASE / "prior" / "modules").is_dir():
        pytest.skip("PRIOR reference code (../shared/reference_code/PRIOR) is not available")
    if str(RELEASE) not in sys.path:
        sys.path.insert(0, str(RELEASE))
    return importlib.import_module(f"prior.modules.{module}")


# ---------------------------------------------------------------- sentence prototype bank


def test_prototype_bank_init_matches_embedding() -> None:
    torch.manual_seed(0)
    bank = SentencePrototypeBank(64, 512)
    torch.manual_seed(0)
    reference = torch.nn.Embedding(512, 64)
    torch.testing.assert_close(bank.embed.weight, reference.weight, **EXACT)
    assert list(bank.state_dict()) == ["embed.weight"]


@pytest.mark.parametrize("shape", [(7, 32), (3, 5, 32)])
def test_prototype_bank_matches_release(shape: tuple[int, ...]) -> None:
    spb = _release("spb")
    torch.manual_seed(1)
    official = spb.SPB(32, 16)
    ours = SentencePrototypeBank(32, 16)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(shape) * 3
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    torch.manual_seed(123)
    ref_out, ref_loss, ref_index = official(x_ref)
    torch.manual_seed(123)
    out = ours(x_ours)

    torch.testing.assert_close(out.prototypes.reshape(-1, 32), ref_out, **EXACT)
    torch.testing.assert_close(out.loss, ref_loss, **EXACT)
    torch.testing.assert_close(out.index.reshape(-1), ref_index, **EXACT)
    torch.testing.assert_close(out.logits.reshape(-1, 16), official.dist, **CLOSE)
    weight = torch.randn(shape)
    (ref_loss + (ref_out * weight.reshape(-1, 32)).sum()).backward()
    (out.loss + (out.prototypes * weight).sum()).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **CLOSE)
    torch.testing.assert_close(ours.embed.weight.grad, official.embed.weight.grad, **CLOSE)


def test_prototype_bank_noise_and_temperature() -> None:
    torch.manual_seed(2)
    bank = SentencePrototypeBank(8, 4, temperature=0.5)
    x = torch.randn(6, 8)
    first, second = bank(x), bank(x)
    assert not torch.equal(first.prototypes, second.prototypes)  # fresh Gumbel noise per call
    torch.testing.assert_close(first.logits, x @ bank.embed.weight.T)
    # each prototype is a convex combination of codebook rows
    weights = torch.linalg.lstsq(bank.embed.weight.T, first.prototypes.T).solution.T
    torch.testing.assert_close(weights.sum(-1), torch.ones(6), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="last dimension 8"):
        bank(torch.randn(2, 7))
    with pytest.raises(ValueError, match="positive"):
        SentencePrototypeBank(8, 4, temperature=0.0)


def test_prototype_bank_assignment_scale_sharpens_the_assignment() -> None:
    torch.manual_seed(3)
    bank = SentencePrototypeBank(16, 32, assignment_scale=1.0).eval()
    with torch.no_grad():
        bank.embed.weight.mul_(0.1)  # small scores, as the CPU demos' embeddings give: a near-uniform mixture
    x = torch.randn(50, 16) * 0.3
    soft = bank(x)
    bank.assignment_scale = 1.0e6
    sharp = bank(x)
    torch.testing.assert_close(sharp.logits, 1.0e6 * (x @ bank.embed.weight.T))
    nearest_row = bank.embed.weight[(x @ bank.embed.weight.T).argmax(-1)]
    torch.testing.assert_close(sharp.prototypes, nearest_row, atol=1e-4, rtol=0)  # the top row, nothing else
    assert (soft.prototypes - nearest_row).abs().mean() > 10 * (sharp.prototypes - nearest_row).abs().mean()
    with pytest.raises(ValueError, match="assignment_scale must be positive"):
        SentencePrototypeBank(8, 4, assignment_scale=0.0)


def test_prototype_temperature_schedules_match_release() -> None:
    spb = _release("spb")
    official = spb.SPB(4, 2, temp=0.9)
    for strategy in ("fixed", "linear", "exp"):
        for epoch in (0, 7, 30):
            official.set_temp(epoch, 30, strategy)
            assert math.isclose(prototype_temperature(0.9, epoch, 30, strategy), official.curr_temp, rel_tol=1e-12)
    with pytest.raises(ValueError, match="strategy"):
        prototype_temperature(0.9, 1, 2, "cosine")


# ---------------------------------------------------------------- local cross-attention


def _pair(dim: int) -> tuple[torch.nn.Module, LocalCrossAttention]:
    module = _release("local_attention")
    torch.manual_seed(3)
    official = module.LocalCrossAttention(dim)
    ours = LocalCrossAttention(dim)
    ours.load_state_dict(map_release_state_dict(official.state_dict()), strict=True)
    return official, ours


@pytest.mark.parametrize(("batch", "patches", "sentences", "dim"), [(1, 49, 5, 32), (3, 16, 1, 8), (2, 7, 11, 24)])
def test_local_attention_matches_release(batch: int, patches: int, sentences: int, dim: int) -> None:
    official, ours = _pair(dim)
    image = torch.randn(batch, patches, dim)
    text = torch.randn(batch, sentences, dim)
    image_ours, text_ours = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    out = ours(image_ours, text_ours)
    probe = [torch.randn_like(t) for t in out]
    (sum((t * p).sum() for t, p in zip(out, probe))).backward()

    image_ref, text_ref = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    total = 0.0
    for b in range(batch):
        ref = official(image_ref[b], text_ref[b])
        for ours_t, ref_t in zip(out, ref):
            torch.testing.assert_close(ours_t[b], ref_t, **CLOSE)
        total = total + sum((t * p[b]).sum() for t, p in zip(ref, probe))
    total.backward()
    torch.testing.assert_close(image_ours.grad, image_ref.grad, **CLOSE)
    torch.testing.assert_close(text_ours.grad, text_ref.grad, **CLOSE)
    ours_params = dict(ours.named_parameters())
    for name, param in official.named_parameters():
        mapped = next(iter(map_release_state_dict({name: param})))
        torch.testing.assert_close(ours_params[mapped].grad, param.grad, **CLOSE)


def test_local_attention_masks_match_release_on_unpadded_sample() -> None:
    dim = 16
    official, ours = _pair(dim)
    lengths_text, lengths_image = [4, 2], [9, 6]
    image, text = torch.randn(2, 9, dim), torch.randn(2, 4, dim)
    text_mask = torch.arange(4) < torch.tensor(lengths_text)[:, None]
    image_mask = torch.arange(9) < torch.tensor(lengths_image)[:, None]
    out = ours(image, text, image_mask=image_mask, text_mask=text_mask)
    for b, (n_t, n_i) in enumerate(zip(lengths_text, lengths_image)):
        ref = official(image[b, :n_i], text[b, :n_t])
        torch.testing.assert_close(out.image_context[b, :n_i], ref[0], **CLOSE)
        torch.testing.assert_close(out.image_attention[b, :n_i, :n_t], ref[1], **CLOSE)
        torch.testing.assert_close(out.text_context[b, :n_t], ref[2], **CLOSE)
        torch.testing.assert_close(out.text_attention[b, :n_t, :n_i], ref[3], **CLOSE)
        # padded keys get weight exactly 0, as an additive -inf mask in the release does
        assert torch.all(out.image_attention[b, :, n_t:] == 0) and torch.all(out.text_attention[b, :, n_i:] == 0)
        additive = torch.zeros(n_i, 4).masked_fill(~text_mask[b], float("-inf"))
        ref_masked = official(image[b, :n_i], text[b], attention_mask2=additive)
        torch.testing.assert_close(out.image_context[b, :n_i], ref_masked[0], **CLOSE)


def test_local_attention_is_sigmoid_not_softmax() -> None:
    torch.manual_seed(4)
    attention = LocalCrossAttention(8)
    image, text = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out = attention(image, text)
    scores = attention.image_query(image) @ attention.text_key(text).transpose(-2, -1) / math.sqrt(8)
    torch.testing.assert_close(out.image_attention, torch.sigmoid(scores))
    assert out.image_attention.shape == (2, 5, 3) and out.text_attention.shape == (2, 3, 5)
    assert not torch.allclose(out.image_attention.sum(-1), torch.ones(2, 5))  # rows need not sum to 1
    with pytest.raises(ValueError, match="text_tokens"):
        attention(torch.randn(5, 8), torch.randn(3, 7))
    with pytest.raises(KeyError, match="unexpected key"):
        map_release_state_dict({"proj.weight": torch.zeros(1)})
