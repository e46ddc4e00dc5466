"""PRIOR's text-side parts against the official release (Cheng et al., ICCV 2023; ``reference_code/PRIOR/codes``).

Weight-name map, official ``SentenceAttentionPool(spacial_dim, D, heads, pos_embed=False)`` ->
``PositionalAttentionPool(D, grid_size=None, num_heads=heads)``: ``{q,k,v,c}_proj.{weight,bias}`` -> same names
(the unused ``spacial_dim`` has no counterpart; with ``pos_embed=False`` neither has ``positional_embedding``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.losses.local_alignment_loss import LocalImageSimSiamLoss, LocalSentenceContrastiveLoss
from common.networks.pooling import PositionalAttentionPool
from common.networks.sentence_pool import SentenceGather, gather_sentences

_CODES = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference_code" / "PRIOR" / "codes"


def _official(module: str):
    if not _CODES.is_dir():
        pytest.skip(f"official PRIOR code not found at {_CODES}")
    if str(_CODES) not in sys.path:
        sys.path.insert(0, str(_CODES))
    return pytest.importorskip(module)


def _sentence_index(lengths_per_report: list[list[int]], length: int) -> torch.Tensor:
    """Dataset layout (``prior/data/pretrain/mimiccxr.py``): -1, then sentence k's tokens numbered k, then -1."""
    index = torch.full((len(lengths_per_report), length), -1, dtype=torch.long)
    for row, lengths in enumerate(lengths_per_report):
        start = 1
        for k, n in enumerate(lengths):
            index[row, start : start + n] = k + 1
            start += n
    return index


def test_gather_matches_official() -> None:
    gather = _official("prior.modules.gather")
    torch.manual_seed(0)
    length, d = 24, 8
    index = _sentence_index([[3, 5, 2, 4], [6, 1], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]], length)
    index[0, 5:10] = -1  # sentence 2 of report 0 lost entirely: skipped, later ones move up
    index[2, 20:] = 11  # truncation: tokens at the end
    tokens = torch.randn(3, length, d, dtype=torch.float64, requires_grad=True)
    expected = gather.SentenceGather("avg", d)(tokens, {"text_meta": {"sentence_index": index}})
    sentences, mask = gather_sentences(tokens, index)
    assert sentences.shape == (3, max(e.shape[0] for e in expected), d)
    assert mask.sum(1).tolist() == [e.shape[0] for e in expected]
    for row, e in enumerate(expected):
        torch.testing.assert_close(sentences[row, : e.shape[0]], e)
        assert bool(mask[row, : e.shape[0]].all())
        assert bool((sentences[row, e.shape[0] :] == 0).all())
    # gradients agree too
    (g_ours,) = torch.autograd.grad((sentences * mask.unsqueeze(-1)).pow(2).sum(), tokens)
    (g_ref,) = torch.autograd.grad(sum(e.pow(2).sum() for e in expected), tokens)
    torch.testing.assert_close(g_ours, g_ref)
    # truncation to the first sentences (the release's ``trancated_sentence_stack``)
    cut, cut_mask = SentenceGather(max_sentences=2)(tokens, index)
    assert cut.shape == (3, 2, d) and bool(cut_mask.all())
    torch.testing.assert_close(cut, sentences[:, :2])


def test_gather_edge_cases() -> None:
    tokens = torch.randn(2, 5, 4)
    sentences, mask = gather_sentences(tokens, torch.tensor([[-1, 1, 1, 2, -1], [-1, -1, -1, -1, -1]]))
    assert sentences.shape == (2, 2, 4) and mask.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(sentences[0, 0], tokens[0, 1:3].mean(0))
    with pytest.raises(ValueError, match="sentence_index"):
        gather_sentences(tokens, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_sentences"):
        gather_sentences(tokens, torch.ones(2, 5, dtype=torch.long), max_sentences=0)


def test_sentence_attention_pool_matches_official() -> None:
    official_pool = _official("prior.modules.sentence_pool")
    torch.manual_seed(0)
    d, heads = 32, 8
    ref = official_pool.SentenceAttentionPool(16, d, heads, pos_embed=False).double().eval()
    ours = PositionalAttentionPool(d, None, num_heads=heads).double()
    assert "positional_embedding" not in ours.state_dict()
    ours.load_state_dict(ref.state_dict())  # same names: {q,k,v,c}_proj.{weight,bias}
    counts = [4, 7, 1]
    x = torch.randn(3, 7, d, dtype=torch.float64)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    padded = x.masked_fill(~mask.unsqueeze(-1), 123.0)  # padding must play no part
    pooled = ours(padded, mask)
    # the release pools each report's (unpadded) sentence set alone (``Prior.get_global_text_representation``)
    expected = torch.cat([ref(x[i : i + 1, :n]) for i, n in enumerate(counts)])
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(ours(x), ref(x))  # no mask: all tokens, any length
    torch.testing.assert_close(ours(x[:, :3]), ref(x[:, :3]))
    with pytest.raises(ValueError, match="positional embedding"):
        ours(x, grid_size=(7,))
    with pytest.raises(ValueError, match="positional embedding"):
        ours.position_embedding()


def _release_local_losses(v, vt, s_list, st_list, predictor, logit_scale):
    """The release's per-report loop (``Prior.local_alignment_loss``), written out plainly."""
    image_total, text_total = 0.0, 0.0
    for i in range(v.shape[0]):
        p_x, p_y = predictor(v[i]), predictor(vt[i])
        image_total = image_total - 0.5 * (
            F.cosine_similarity(p_x, vt[i].detach(), dim=-1).mean()
            + F.cosine_similarity(p_y, v[i].detach(), dim=-1).mean()
        )
        a, b = F.normalize(s_list[i], dim=-1), F.normalize(st_list[i], dim=-1)
        labels = torch.arange(b.shape[0])
        scale = logit_scale.exp()
        text_total = text_total + 0.5 * (
            F.cross_entropy(scale * b @ a.t(), labels) + F.cross_entropy(scale * a @ b.t(), labels)
        )
    return image_total / v.shape[0], text_total / v.shape[0]


def test_local_alignment_losses_match_release_loop() -> None:
    torch.manual_seed(0)
    bsz, tokens, d, counts = 3, 6, 16, [4, 2, 5]
    predictor = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.ReLU(), torch.nn.Linear(8, d)).double()
    v = torch.randn(bsz, tokens, d, dtype=torch.float64, requires_grad=True)
    vt = torch.randn(bsz, tokens, d, dtype=torch.float64, requires_grad=True)
    s = torch.randn(bsz, 5, d, dtype=torch.float64, requires_grad=True)
    st = torch.randn(bsz, 5, d, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    text_loss_fn = LocalSentenceContrastiveLoss(math.log(1 / 0.07)).double()
    image = LocalImageSimSiamLoss()(predictor(v), predictor(vt), v, vt)
    text = text_loss_fn(s.masked_fill(~mask.unsqueeze(-1), 7.0), st.masked_fill(~mask.unsqueeze(-1), -3.0), mask)
    s_list = [s[i, :n] for i, n in enumerate(counts)]
    st_list = [st[i, :n] for i, n in enumerate(counts)]
    ref_image, ref_text = _release_local_losses(v, vt, s_list, st_list, predictor, text_loss_fn.logit_scale)
    assert image.dtype == torch.float64
    torch.testing.assert_close(image, ref_image)
    torch.testing.assert_close(text.double(), ref_text)
    inputs = [v, vt, s, st, text_loss_fn.logit_scale, *predictor.parameters()]
    ours = torch.autograd.grad(image + text, inputs, allow_unused=True)
    ref = torch.autograd.grad(ref_image + ref_text, inputs, allow_unused=True)
    for g, r in zip(ours, ref, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r)
    # no mask == all sentences; errors
    full = text_loss_fn(s, st)
    torch.testing.assert_close(
        full.double(), _release_local_losses(v, vt, list(s), list(st), predictor, text_loss_fn.logit_scale)[1]
    )
    with pytest.raises(ValueError, match="at least one sentence"):
        text_loss_fn(s, st, torch.zeros(bsz, 5, dtype=torch.bool))
    assert LocalSentenceContrastiveLoss().logit_scale.item() == pytest.approx(math.log(100.0))
