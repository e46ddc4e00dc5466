"""ClipLoss against the InfoNCE formula written out, the valid mask, the scale clamp and simulated ranks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from common import distributed
from common.losses.clip_loss import ClipLoss

TOL = {"atol": 1e-6, "rtol": 1e-6}


def _embeddings(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=g)
    text = image + 0.8 * torch.randn(batch, dim, generator=g)  # related pairs: a non-trivial loss
    return image, text


def _reference(image: torch.Tensor, text: torch.Tensor, scale: float, smoothing: float = 0.0) -> torch.Tensor:
    """(1/2n) sum_i [CE_smoothed(row i of s*I T^T) + CE_smoothed(row i of s*T I^T)], cosine similarities, float64."""
    u = [r.double() / r.double().norm() for r in image]
    v = [r.double() / r.double().norm() for r in text]
    n = len(u)
    total = 0.0
    for anchors, candidates in ((u, v), (v, u)):
        for i in range(n):
            logits = [scale * float(anchors[i] @ candidates[j]) for j in range(n)]
            log_norm = math.log(sum(math.exp(z) for z in logits))
            nll = [log_norm - z for z in logits]
            total += (1 - smoothing) * nll[i] + smoothing * sum(nll) / n
    return torch.tensor(total / (2 * n), dtype=torch.float64)


@pytest.mark.parametrize("smoothing, init", list(itertools.product((0.0, 0.1), (1 / 0.07, 5.0))))
def test_matches_formula(smoothing: float, init: float) -> None:
    image, text = _embeddings(6, 8, seed=0)
    loss = ClipLoss(init_logit_scale=init, label_smoothing=smoothing)
    actual = loss(image, text)
    assert actual.ndim == 0
    torch.testing.assert_close(loss.logit_scale.item(), init, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(actual.double(), _reference(image, text, init, smoothing), **TOL)


def test_valid_mask_equals_subset_in_both_directions() -> None:
    image, text = _embeddings(7, 8, seed=1)
    valid = torch.tensor([True, False, True, True, False, True, True])
    loss = ClipLoss()
    torch.testing.assert_close(loss(image, text, valid), loss(image[valid], text[valid]), **TOL)
    # the image-only rows receive no gradient
    image.requires_grad_(True)
    loss(image, text, valid).backward()
    assert image.grad[~valid].abs().max() == 0 and image.grad[valid].abs().max() > 0


def test_no_valid_row_gives_connected_zero() -> None:
    image, text = _embeddings(3, 4, seed=2)
    image.requires_grad_(True)
    loss = ClipLoss()
    value = loss(image, text, torch.zeros(3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert image.grad is not None and not image.grad.any()


def test_logit_scale_clamp_and_gradient() -> None:
    image, text = _embeddings(4, 8, seed=3)
    loss = ClipLoss(init_logit_scale=50.0)
    loss(image, text).backward()
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad != 0
    with torch.no_grad():
        loss.log_logit_scale.fill_(math.log(400.0))
    assert loss.logit_scale.item() == 100.0
    torch.testing.assert_close(loss(image, text).double(), _reference(image, text, 100.0), **TOL)
    loss.zero_grad()
    loss(image, text).backward()
    assert loss.log_logit_scale.grad == 0  # clamped: no gradient beyond the cap


def test_fixed_scale_is_a_buffer() -> None:
    loss = ClipLoss(learnable=False)
    assert not list(loss.parameters()) and "log_logit_scale" in dict(loss.named_buffers())
    learnable = ClipLoss()
    assert [name for name, _ in learnable.named_parameters()] == ["log_logit_scale"]


def test_bad_arguments_and_shapes() -> None:
    for kwargs in ({"init_logit_scale": 0.0}, {"init_logit_scale": 200.0}, {"label_smoothing": 1.0}):
        with pytest.raises(ValueError):
            ClipLoss(**kwargs)
    loss = ClipLoss()
    with pytest.raises(ValueError):
        loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError):
        loss(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2, dtype=torch.bool))


def _simulate_rank(monkeypatch, full: dict[str, torch.Tensor], rank: int, world_size: int) -> None:
    """Make the facade's gathers return the whole batch, with this rank's slice being the caller's tensor."""

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        batch = tensor.shape[0]
        for whole in full.values():
            if whole.dtype == tensor.dtype and torch.equal(whole[rank * batch : (rank + 1) * batch], tensor):
                return torch.cat([whole[: rank * batch], tensor, whole[(rank + 1) * batch :]])
        raise AssertionError("unexpected tensor gathered")

    monkeypatch.setattr(distributed, "all_gather_with_grad", gather)
    monkeypatch.setattr(distributed, "all_gather_no_grad", lambda t: gather(t).detach())


@pytest.mark.parametrize("local_loss, masked", list(itertools.product((False, True), (False, True))))
def test_simulated_ranks_average_to_global_loss(monkeypatch, local_loss: bool, masked: bool) -> None:
    """Rank losses (local_loss: their mean) equal the single-process loss, even with uneven valid rows."""
    world_size, per_rank = 3, 4
    image, text = _embeddings(world_size * per_rank, 8, seed=4)
    valid = torch.ones(world_size * per_rank, dtype=torch.bool)
    if masked:
        valid[[0, 1, 2, 9]] = False
    expected = ClipLoss()(image, text, valid if masked else None)
    normalised = {
        "image": torch.nn.functional.normalize(image, dim=-1),
        "text": torch.nn.functional.normalize(text, dim=-1),
        "valid": valid.to(torch.uint8),
    }
    values = []
    for rank in range(world_size):
        _simulate_rank(monkeypatch, normalised, rank, world_size)
        loss = ClipLoss(local_loss=local_loss, rank=rank, world_size=world_size)
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        values.append(loss(image[part], text[part], valid[part] if masked else None))
        if not local_loss:
            torch.testing.assert_close(values[-1], expected, **TOL)
    torch.testing.assert_close(torch.stack(values).mean(), expected, **TOL)


def test_logits_stay_float32_under_autocast() -> None:
    image = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    text = torch.randn(16, 32, generator=torch.Generator().manual_seed(6))  # unrelated: a large loss
    loss = ClipLoss(init_logit_scale=100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(image, text)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), _reference(image, text, 100.0), **TOL)
