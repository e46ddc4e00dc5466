"""DINO / iBOT / KoLeo losses and the DINO head against explicit re-statements of the DINOv2 formulation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from common.losses.dino_clstoken_loss import DINOClsTokenLoss, sinkhorn_knopp
from common.losses.ibot_patch_loss import IBOTPatchLoss
from common.losses.koleo_loss import KoLeoLoss
from common.networks.dino import DINOHead

TOL = {"atol": 1e-6, "rtol": 1e-6}


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _probs(*shape: int, seed: int) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape, generator=_generator(seed)), dim=-1)


def _cross_entropy_row(target: torch.Tensor, logits: torch.Tensor, temp: float) -> torch.Tensor:
    """-sum_k p_k log q_k for one sample, q = softmax(logits / temp), written out in float64."""
    z = logits.double() / temp
    log_q = z - torch.log(torch.exp(z - z.max()).sum()) - z.max()
    return -(target.double() * log_q).sum()


def _reference_sinkhorn(scores: torch.Tensor, n_iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp, one prototype row and one sample column at a time (float64)."""
    q = torch.exp(scores.double()).t().clone()
    n_prototypes, n_samples = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        for k in range(n_prototypes):
            q[k] = q[k] / q[k].sum() / n_prototypes
        for b in range(n_samples):
            q[:, b] = q[:, b] / q[:, b].sum() / n_samples
    return (q * n_samples).t()


# ---------------------------------------------------------------- DINO class-token loss


@pytest.mark.parametrize("n_student, n_teacher", list(itertools.product((1, 3), (1, 2))))
def test_dino_forward_matches_explicit_pairs(n_student: int, n_teacher: int) -> None:
    batch, k, temp = 4, 16, 0.1
    students = [torch.randn(batch, k, generator=_generator(10 + i)) for i in range(n_student)]
    teachers = [_probs(batch, k, seed=20 + j) for j in range(n_teacher)]
    expected = torch.zeros((), dtype=torch.float64)
    for s in students:
        for t in teachers:
            expected += sum(_cross_entropy_row(t[b], s[b], temp) for b in range(batch)) / batch
    actual = DINOClsTokenLoss(k, student_temp=temp)(students, teachers)
    assert actual.ndim == 0
    torch.testing.assert_close(actual.double(), expected, **TOL)


def test_dino_swapped_teacher_excludes_same_view_pairs() -> None:
    """DINOv2's global-crop recipe: one stacked call with swapped teacher crops, * 2, is the i != j pair sum."""
    batch, k = 3, 8
    loss = DINOClsTokenLoss(k)
    s_a, s_b = (torch.randn(batch, k, generator=_generator(i)) for i in (1, 2))
    t_a, t_b = (_probs(batch, k, seed=i) for i in (3, 4))
    stacked = loss([torch.cat([s_a, s_b])], [torch.cat([t_b, t_a])]) * 2
    explicit = sum(
        _cross_entropy_row(t[b], s[b], loss.student_temp) / batch
        for (i, s), (j, t) in itertools.product(enumerate((s_a, s_b)), enumerate((t_a, t_b)))
        if i != j
        for b in range(batch)
    )
    torch.testing.assert_close(stacked.double(), explicit, **TOL)


def test_dino_softmax_center_teacher_and_center_ema() -> None:
    batch, k, momentum, temp = 5, 8, 0.9, 0.04
    loss = DINOClsTokenLoss(k, center_momentum=momentum)
    first, second = (torch.randn(2 * batch, k, generator=_generator(i)) for i in (5, 6))
    loss.update_center(first)
    center = (1 - momentum) * first.double().mean(0)
    torch.testing.assert_close(loss.center.double(), center[None], **TOL)
    targets = loss.softmax_center_teacher(second, temp)
    z = (second.double() - center) / temp
    torch.testing.assert_close(targets.double(), torch.exp(z) / torch.exp(z).sum(-1, keepdim=True), **TOL)
    loss.update_center(second.reshape(2, batch, k))  # crops stacked: same centre as flat
    center = momentum * center + (1 - momentum) * second.double().mean(0)
    torch.testing.assert_close(loss.center.double(), center[None], **TOL)
    assert "center" in loss.state_dict()


@pytest.mark.parametrize("n_iterations, temp", list(itertools.product((1, 3), (0.04, 0.07))))
def test_sinkhorn_matches_explicit_normalisation(n_iterations: int, temp: float) -> None:
    logits = torch.randn(6, 10, generator=_generator(7))
    actual = DINOClsTokenLoss(10).sinkhorn_knopp_teacher(logits, temp, n_iterations=n_iterations)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), _reference_sinkhorn(logits / temp, n_iterations), **TOL)


def test_sinkhorn_marginals_autocast_and_arguments() -> None:
    batch, k = 12, 6
    logits = torch.randn(batch, k, generator=_generator(8))
    q = sinkhorn_knopp(logits, 0.5, n_iterations=200)
    # every sample's row is a distribution; after convergence every prototype gets an equal share
    torch.testing.assert_close(q.sum(1), torch.ones(batch), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((k,), batch / k), atol=1e-4, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the normalisation must stay in float32
        under_autocast = sinkhorn_knopp(logits.bfloat16(), 0.5, n_iterations=3)
    expected = _reference_sinkhorn(logits.bfloat16().double() / 0.5, 3)
    torch.testing.assert_close(under_autocast.double(), expected, **TOL)
    with pytest.raises(ValueError):
        sinkhorn_knopp(logits, 0.5, n_iterations=0)


def test_dino_bad_arguments() -> None:
    for kwargs in ({"out_dim": 0}, {"out_dim": 4, "student_temp": 0.0}, {"out_dim": 4, "center_momentum": 1.5}):
        with pytest.raises(ValueError):
            DINOClsTokenLoss(**kwargs)
    with pytest.raises(ValueError):
        DINOClsTokenLoss(4)([], [torch.zeros(1, 4)])


# ---------------------------------------------------------------- iBOT patch loss


def _masks(batch: int, n: int, seed: int) -> torch.Tensor:
    masks = torch.rand(batch, n, generator=_generator(seed)) < 0.4
    masks[0] = False  # an unmasked image still counts in the batch
    masks[1, :3] = True
    return masks


def _reference_ibot(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, temp: float) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(masks.shape[0]):
        n_i = int(masks[i].sum())
        for p in range(masks.shape[1]):
            if masks[i, p]:
                total += _cross_entropy_row(teacher[i, p], student[i, p], temp) / n_i
    return total / masks.shape[0]


def test_ibot_forward_and_forward_masked_match_explicit_loops() -> None:
    batch, n, k, temp = 4, 9, 12, 0.1
    student = torch.randn(batch, n, k, generator=_generator(11))
    teacher = _probs(batch, n, k, seed=12)
    masks = _masks(batch, n, seed=13)
    loss = IBOTPatchLoss(k, student_temp=temp)
    expected = _reference_ibot(student, teacher, masks, temp)
    torch.testing.assert_close(loss(student, teacher, masks).double(), expected, **TOL)
    masked = loss.forward_masked(student[masks], teacher[masks], masks)
    torch.testing.assert_close(masked.double(), expected, **TOL)
    # DINOv2 pads the gathered tokens into a fixed-size buffer and passes the true count
    pad = torch.randn(5, k, generator=_generator(14))
    padded = loss.forward_masked(
        torch.cat([student[masks], pad]), torch.cat([teacher[masks], pad.softmax(-1)]), masks, int(masks.sum())
    )
    torch.testing.assert_close(padded.double(), expected, **TOL)
    weights = torch.rand(int(masks.sum()), generator=_generator(15))
    weighted = loss.forward_masked(student[masks], teacher[masks], masks, masks_weight=weights)
    explicit = sum(_cross_entropy_row(t, s, temp) * w for s, t, w in zip(student[masks], teacher[masks], weights))
    explicit = explicit / batch
    torch.testing.assert_close(weighted.double(), explicit, **TOL)


def test_ibot_teacher_side() -> None:
    batch, n, k, momentum, temp = 3, 5, 6, 0.9, 0.07
    loss = IBOTPatchLoss(k, center_momentum=momentum)
    grid = torch.randn(batch, n, k, generator=_generator(16))
    loss.update_center(grid)  # per-image mean, then mean over images
    center = (1 - momentum) * grid.double().mean(1).mean(0)
    torch.testing.assert_close(loss.center.double().reshape(-1), center, **TOL)
    masked = torch.randn(7, k, generator=_generator(17))
    loss.update_center(masked)  # DINOv2's call: all masked tokens of the rank as one group
    center = momentum * center + (1 - momentum) * masked.double().mean(0)
    torch.testing.assert_close(loss.center.double().reshape(-1), center, **TOL)
    targets = loss.softmax_center_teacher(masked, temp)
    assert targets.shape == masked.shape
    z = (masked.double() - center) / temp
    torch.testing.assert_close(targets.double(), torch.exp(z) / torch.exp(z).sum(-1, keepdim=True), **TOL)
    sk = loss.sinkhorn_knopp_teacher(masked, temp)
    torch.testing.assert_close(sk.double(), _reference_sinkhorn(masked / temp, 3), **TOL)


# ---------------------------------------------------------------- KoLeo


@pytest.mark.parametrize("batch, dim", [(2, 3), (7, 5)])
def test_koleo_matches_explicit_nearest_neighbours(batch: int, dim: int) -> None:
    x = 3 * torch.randn(batch, dim, generator=_generator(18))
    unit = [row.double() / row.double().norm() for row in x]
    expected = (
        -sum(math.log(min(float((unit[i] - unit[j]).norm()) for j in range(batch) if j != i)) for i in range(batch))
        / batch
    )
    x.requires_grad_(True)
    actual = KoLeoLoss()(x)
    assert actual.dtype == torch.float32 and actual.ndim == 0
    assert abs(actual.item() - expected) <= 1e-6 * max(1.0, abs(expected))
    actual.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_koleo_bad_input() -> None:
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.randn(1, 4))
    with pytest.raises(ValueError):
        KoLeoLoss(eps=-1.0)


# ---------------------------------------------------------------- DINO head


@pytest.mark.parametrize("nlayers, use_bn", list(itertools.product((1, 2, 3), (False, True))))
def test_dino_head_shapes_and_init(nlayers: int, use_bn: bool) -> None:
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16, nlayers=nlayers, use_bn=use_bn)
    linears = [m for m in head.mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == nlayers
    assert all(not m.bias.detach().any() for m in linears)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == (nlayers - 1 if use_bn else 0)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.requires_grad and torch.equal(magnitude, torch.ones(64, 1))
    with torch.no_grad():
        out = head(torch.randn(5, 32))
    assert out.shape == (5, 64)
    # unit prototypes times a unit bottleneck: cosine similarities
    assert float(out.abs().max()) <= 1.0 + 1e-5
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64))


def test_dino_head_weight_std_and_frozen_norm() -> None:
    torch.manual_seed(0)
    head = DINOHead(256, out_dim=8, hidden_dim=512, bottleneck_dim=8, norm_last_layer=True)
    assert abs(float(head.mlp[0].weight.detach().std()) - 0.02) < 0.002
    assert not head.last_layer.parametrizations.weight.original0.requires_grad


def test_dino_head_loads_legacy_weight_norm_keys() -> None:
    """Checkpoints from torch.nn.utils.weight_norm (DINOv2, RAD-DINO's dino_head) use weight_g / weight_v."""
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=6, hidden_dim=10, bottleneck_dim=4)
    legacy = {k: v for k, v in head.state_dict().items() if "parametrizations" not in k}
    g = torch.rand(6, 1) + 0.5
    v = torch.randn(6, 4)
    legacy["last_layer.weight_g"], legacy["last_layer.weight_v"] = g, v
    head.load_state_dict(legacy, strict=True)
    torch.testing.assert_close(head.last_layer.weight, g * v / v.norm(dim=1, keepdim=True))


def test_dino_head_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DINOHead(8, nlayers=0)
    with pytest.raises(ValueError):
        DINOHead(8, out_dim=0)
