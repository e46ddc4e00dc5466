"""COLIPRI's auxiliary losses: report generation (CaptionLoss), MAE (MaskedPatchMSELoss), opposite sentences."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from common.losses.caption_loss import CaptionLoss
from common.losses.masked_patch_mse_loss import MaskedPatchMSELoss
from common.losses.opposite_sentence_loss import OppositeSentenceLoss
from common.networks.eva import patchify, unpatchify

TOL = {"atol": 1e-6, "rtol": 1e-6}
PAD = 0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _nll(logits_row: torch.Tensor, target: int, smoothing: float = 0.0) -> float:
    z = [float(v) for v in logits_row.double()]
    log_norm = math.log(sum(math.exp(v) for v in z))
    nll = [log_norm - v for v in z]
    return (1 - smoothing) * nll[target] + smoothing * sum(nll) / len(nll)


# ---------------------------------------------------------------- CaptionLoss


def _tokens() -> torch.Tensor:
    return torch.tensor([[5, 7, 3, 9, PAD, PAD], [4, 4, 8, 2, 6, 1], [6, 2, PAD, PAD, PAD, PAD]])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_caption_matches_explicit_next_token_nll(smoothing: float) -> None:
    ids = _tokens()
    logits = torch.randn(*ids.shape, 11, generator=_generator(0))
    valid = torch.tensor([True, True, False])
    terms = [
        _nll(logits[b, t], int(ids[b, t + 1]), smoothing)
        for b in range(ids.shape[0])
        for t in range(ids.shape[1] - 1)
        if valid[b] and ids[b, t + 1] != PAD
    ]
    actual = CaptionLoss(PAD, label_smoothing=smoothing)(logits, ids, valid=valid)
    assert actual.ndim == 0
    torch.testing.assert_close(actual.double(), torch.tensor(sum(terms) / len(terms), dtype=torch.float64), **TOL)


def test_caption_attention_mask_keeps_eos_that_equals_pad() -> None:
    """GPT-style tokenizers pad with the end-of-text id; the attended end token must still be a target."""
    eos = 1
    ids = torch.tensor([[5, 7, eos, eos, eos], [6, 3, 2, 8, eos]])
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logits = torch.randn(2, 5, 10, generator=_generator(1))
    terms = [_nll(logits[b, t], int(ids[b, t + 1])) for b in range(2) for t in range(4) if attention[b, t + 1]]
    actual = CaptionLoss(pad_token_id=eos)(logits, ids, attention)
    torch.testing.assert_close(actual.double(), torch.tensor(sum(terms) / len(terms), dtype=torch.float64), **TOL)
    assert len(terms) == 6  # 2 targets of row 0 (one is the end token) + 4 of row 1
    without_mask = CaptionLoss(pad_token_id=eos)(logits, ids)
    assert not torch.allclose(actual, without_mask)


def test_caption_no_target_is_connected_zero_and_shape_errors() -> None:
    ids = _tokens()
    logits = torch.randn(*ids.shape, 11, generator=_generator(2), requires_grad=True)
    loss = CaptionLoss(PAD)
    value = loss(logits, ids, valid=torch.zeros(3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None and not logits.grad.any()
    with pytest.raises(ValueError):
        loss(logits[:, :-1], ids)
    with pytest.raises(ValueError):
        loss(logits, ids, torch.ones(3, 5))
    with pytest.raises(ValueError):
        CaptionLoss(PAD, label_smoothing=-0.1)


# ---------------------------------------------------------------- MaskedPatchMSELoss


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_masked_mse_matches_explicit_loops(norm_pix_loss: bool) -> None:
    batch, n, p = 2, 5, 4
    pred = torch.randn(batch, n, p, generator=_generator(3))
    target = torch.randn(batch, n, p, generator=_generator(4))
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    errors = []
    for b, i in itertools.product(range(batch), range(n)):
        if mask[b, i]:
            t = [float(v) for v in target[b, i].double()]
            if norm_pix_loss:
                mean = sum(t) / p
                std = math.sqrt(sum((v - mean) ** 2 for v in t) / (p - 1) + 1e-6)
                t = [(v - mean) / std for v in t]
            errors.append(sum((float(pred[b, i, j]) - t[j]) ** 2 for j in range(p)) / p)
    actual = MaskedPatchMSELoss(norm_pix_loss=norm_pix_loss)(pred, target, mask)
    assert actual.ndim == 0
    torch.testing.assert_close(actual.double(), torch.tensor(sum(errors) / len(errors), dtype=torch.float64), **TOL)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_masked_mse_equals_nnssl_voxel_definition(spatial_dims: int) -> None:
    """nnssl MAEMSELoss: sum((out - img)^2 * hidden) / sum(hidden) on voxels, with hidden = masked patches."""
    patch, grid = 2, (3,) * spatial_dims
    shape = (2, 1, *(g * patch for g in grid))
    image = torch.randn(shape, generator=_generator(5))
    output = torch.randn(shape, generator=_generator(6), requires_grad=True)
    mask = torch.rand(2, math.prod(grid), generator=_generator(7)) < 0.6
    hidden = unpatchify(mask[..., None].float().expand(-1, -1, patch**spatial_dims), patch, grid)
    expected = ((output - image) ** 2 * hidden).sum() / hidden.sum()
    actual = MaskedPatchMSELoss()(patchify(output, patch, spatial_dims), patchify(image, patch, spatial_dims), mask)
    torch.testing.assert_close(actual, expected, **TOL)
    actual.backward()
    assert not output.grad[hidden == 0].any() and output.grad[hidden == 1].abs().sum() > 0


def test_masked_mse_empty_mask_and_shapes() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = MaskedPatchMSELoss()
    value = loss(pred, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and pred.grad is not None
    with pytest.raises(ValueError):
        loss(pred, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        loss(pred, torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------- OppositeSentenceLoss


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def test_osl_matches_explicit_two_way_softmax() -> None:
    batch, findings, dim, scale = 3, 4, 6, 12.5
    image = torch.randn(batch, dim, generator=_generator(8))
    true = torch.randn(batch, findings, dim, generator=_generator(9))
    negated = torch.randn(batch, findings, dim, generator=_generator(10))
    valid = torch.tensor([[True, True, False, True], [False, False, False, False], [True, False, True, True]])
    terms = [
        _nll(torch.tensor([scale * _cos(image[b], true[b, f]), scale * _cos(image[b], negated[b, f])]), 0)
        for b in range(batch)
        for f in range(findings)
        if valid[b, f]
    ]
    actual = OppositeSentenceLoss()(image, true, negated, torch.tensor(scale), valid)
    torch.testing.assert_close(actual.double(), torch.tensor(sum(terms) / len(terms), dtype=torch.float64), **TOL)


def test_osl_prefers_true_statement_and_trains_the_scale() -> None:
    image = torch.randn(2, 8, generator=_generator(11))
    true = image[:, None] + 0.1 * torch.randn(2, 3, 8, generator=_generator(12))
    negated = -true
    scale = torch.tensor(10.0, requires_grad=True)
    loss = OppositeSentenceLoss()
    right, wrong = loss(image, true, negated, scale), loss(image, negated, true, scale)
    assert right.item() < math.log(2) < wrong.item()
    right.backward()
    assert scale.grad is not None and scale.grad < 0  # a sharper softmax helps when the image is right


def test_osl_no_valid_pair_and_shapes() -> None:
    image = torch.randn(2, 4, requires_grad=True)
    true, negated = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    loss = OppositeSentenceLoss()
    value = loss(image, true, negated, 5.0, torch.zeros(2, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and image.grad is not None
    with pytest.raises(ValueError):
        loss(image, true, negated[:, :2], 5.0)
    with pytest.raises(ValueError):
        loss(image, true, negated, 5.0, torch.ones(2, 2, dtype=torch.bool))
