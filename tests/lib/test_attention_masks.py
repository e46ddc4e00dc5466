"""G2D pseudo-masks (common.networks.attention_masks) on hand-built attention maps whose mask is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.networks.attention_masks import (
    AttentionPseudoMask,
    _gaussian_kernel,
    attention_pseudo_mask,
    derangement,
    masked_quantile,
    shuffle_across_batch,
    smooth_binary_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_hot(grid: tuple[int, ...], hot: tuple[int, ...], value: float = 0.7, heads: int = 3) -> torch.Tensor:
    """(1, heads, *grid) attention rows summing to 1: ``value`` at ``hot``, the rest spread evenly."""
    n = int(np.prod(grid))
    att = torch.full((1, heads, *grid), (1.0 - value) / (n - 1))
    att[(0, slice(None), *hot)] = value
    return att


def _band(grid: tuple[int, ...], index: int, heads: int = 2) -> torch.Tensor:
    """Attention 1 on one grid column (2D: grid axis 1) or slab (3D: grid axis 0), 0.25 elsewhere. Dyadic values
    keep every interpolated value exact, so equal distances give exactly tied values (rows need not sum to 1)."""
    att = torch.full((1, heads, *grid), 0.25)
    return att.index_fill_(3 if len(grid) == 2 else 2, torch.tensor([index]), 1.0)


def test_nearest_one_hot_token_covers_exactly_its_block() -> None:
    att = _one_hot((4, 4), (1, 2))
    expected = torch.zeros(32, 32)
    expected[8:16, 16:24] = 1  # 6.25% of the image: the 85th percentile is the cold value, ties at the minimum drop
    for strict in (False, True):
        mask = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0, strict=strict)
        assert mask.shape == (1, 1, 32, 32)
        assert torch.equal(mask[0, 0], expected)


def test_bilinear_band_covers_the_columns_above_the_percentile() -> None:
    # A hot grid column 1 of 4 on 32 px: bilinear (align_corners=False) is a tent along x centred on pixel column
    # 11.5 with half-width 8; columns at distance 0.5, 1.5, 2.5 hold 18.75% of the pixels and the 85th percentile
    # (position 0.85 * 1023 = 869.55, 153.45 from the top) falls inside the tie at distance 2.5 (columns 9 and 14).
    att = _band((4, 4), 1)
    bilinear = attention_pseudo_mask(att, (32, 32), smooth_sigma=0)
    assert torch.equal(bilinear[0, 0].amax(0).nonzero().flatten(), torch.arange(9, 15))
    assert bool(bilinear[0, 0, :, 9:15].all())
    strict = attention_pseudo_mask(att, (32, 32), smooth_sigma=0, strict=True)  # the release's '>'
    assert torch.equal(strict[0, 0].amax(0).nonzero().flatten(), torch.arange(10, 14))
    nearest = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0)
    assert torch.equal(nearest[0, 0].amax(0).nonzero().flatten(), torch.arange(8, 16))
    # smoothing keeps straight edges (and the image border) where they are
    assert torch.equal(attention_pseudo_mask(att, (32, 32), smooth_sigma=0.25), bilinear)


def test_smoothing_rounds_the_block_corners_only() -> None:
    att = _one_hot((4, 4), (1, 2))
    block = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0)[0, 0]
    smooth = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0.25)[0, 0]  # sigma = 2 px
    assert bool((smooth <= block).all())
    assert bool(smooth[10:14, 18:22].all())  # the interior stays
    assert bool(smooth[8:16, 20].all()) and bool(smooth[12, 16:24].all())  # edge midpoints stay
    assert smooth[8, 16] == 0 and smooth[15, 23] == 0 and smooth[8, 23] == 0 and smooth[15, 16] == 0
    assert torch.equal(smooth[8:16, 16:24], smooth[8:16, 16:24].flip(0)) and torch.equal(
        smooth[8:16, 16:24], smooth[8:16, 16:24].flip(1)
    )


def test_body_mask_excludes_a_hot_region() -> None:
    att = torch.full((1, 2, 4, 4), 0.4 / 14)
    att[0, :, 1, 1] = 0.4  # hot, outside the body
    att[0, :, 2, 2] = 0.2  # warm, inside
    body = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    body[..., 8:16, 8:16] = False
    mask = attention_pseudo_mask(att, (32, 32), body, mode="nearest", smooth_sigma=0)
    expected = torch.zeros(32, 32)
    expected[16:24, 16:24] = 1
    assert torch.equal(mask[0, 0], expected)
    smooth = attention_pseudo_mask(att, (32, 32), body.float(), mode="nearest")
    assert not bool(smooth[0, 0, 8:16, 8:16].any())
    unmasked = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0)
    expected[8:16, 8:16] = 1  # without the body mask the hot block is foreground too
    assert torch.equal(unmasked[0, 0], expected)


def test_percentile_inside_the_body_or_over_the_image() -> None:
    # Body = left half (grid columns 0-1: 8 tokens of 64 px with distinct values v1 < ... < v8). Whole image: 512
    # zeros + 8 blocks, position 869.55 lies in v6 -> top 3 blocks. Inside the body: 512 px, position 434.35 lies in
    # v7 -> top 2 blocks.
    att = torch.zeros(1, 1, 4, 4)
    att[0, 0, :, :2] = torch.arange(1, 9, dtype=torch.float32).view(4, 2)
    att[0, 0, :, 2:] = 20.0  # outside the body: ignored
    att = att / att.sum()
    body = torch.zeros(1, 1, 32, 32)
    body[..., :16] = 1

    def blocks(mask: torch.Tensor) -> set[tuple[int, int]]:
        grid = mask[0, 0].view(4, 8, 4, 8).amax((1, 3))
        return {tuple(int(i) for i in ij) for ij in grid.nonzero()}

    inside = attention_pseudo_mask(att, (32, 32), body, mode="nearest", smooth_sigma=0)
    assert blocks(inside) == {(3, 1), (3, 0)}
    whole = attention_pseudo_mask(att, (32, 32), body, mode="nearest", smooth_sigma=0, percentile_in_body=False)
    assert blocks(whole) == {(3, 1), (3, 0), (2, 1)}
    with pytest.raises(ValueError, match="needs a body_mask"):
        attention_pseudo_mask(att, (32, 32), percentile_in_body=True)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_constant_attention_gives_an_empty_mask(mode: str) -> None:
    att = torch.full((2, 4, 4, 4), 1 / 16)
    assert not bool(attention_pseudo_mask(att, (32, 32), mode=mode).any())
    body = torch.zeros(2, 1, 32, 32)
    body[..., 4:28, 4:28] = 1
    assert not bool(attention_pseudo_mask(att, (32, 32), body, mode=mode).any())
    assert not bool(attention_pseudo_mask(att, (32, 32), body, mode=mode, percentile_in_body=False).any())


def test_3d_slab_trilinear_and_nearest() -> None:
    att = _band((4, 2, 2), 1)
    expected = {"trilinear": torch.arange(9, 15), "bilinear": torch.arange(9, 15), "nearest": torch.arange(8, 16)}
    for mode, rows in expected.items():
        for sigma in (0.0, 0.25):  # anisotropic cells (8 x 4 x 4 px): sigma 2 px along x, 1 px across
            mask = attention_pseudo_mask(att, (32, 8, 8), mode=mode, smooth_sigma=sigma)
            assert mask.shape == (1, 1, 32, 8, 8)
            assert torch.equal(mask[0, 0].amax((1, 2)).nonzero().flatten(), rows), (mode, sigma)
            assert bool(mask[0, 0, rows].all())
    corner = _one_hot((2, 2, 2), (0, 0, 0), value=0.5)
    octant = attention_pseudo_mask(corner, (16, 16, 16), mode="nearest", smooth_sigma=0)
    expected_octant = torch.zeros(16, 16, 16)
    expected_octant[:8, :8, :8] = 1
    assert torch.equal(octant[0, 0], expected_octant)


def test_release_pipeline_parity_on_random_maps() -> None:
    # The release: head mean, nearest Resize, numpy quantile per image, '>' (no body mask, no smoothing).
    gen = torch.Generator().manual_seed(0)
    att = torch.randn(3, 4, 8, 8, generator=gen).flatten(2).softmax(-1).view(3, 4, 8, 8)
    mask = attention_pseudo_mask(att, (64, 64), mode="nearest", strict=True, smooth_sigma=0)
    m = att.double().numpy().sum(1) / 4
    m = m.repeat(8, axis=1).repeat(8, axis=2)
    thr = np.quantile(m, 0.85, axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(mask[:, 0].numpy(), (m > thr).astype(np.float32))
    # the paper's '>=' adds at most the tied block(s) at the threshold
    paper = attention_pseudo_mask(att, (64, 64), mode="nearest", smooth_sigma=0)
    assert bool((paper >= mask).all()) and bool((paper.flatten(1).mean(1) >= 0.15).all())


def test_no_gradient_and_the_input_device_and_dtype() -> None:
    logits = torch.randn(2, 3, 16, requires_grad=True)
    att = logits.softmax(-1).view(2, 3, 4, 4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        mask = attention_pseudo_mask(att.to(dtype), (32, 32), torch.ones(2, 1, 32, 32, dtype=torch.uint8))
        assert mask.dtype == dtype and mask.device == att.device
        assert not mask.requires_grad and mask.grad_fn is None
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    module = AttentionPseudoMask()
    assert list(module.parameters()) == [] and list(module.buffers()) == [] and module.state_dict() == {}
    assert torch.equal(module(att, (32, 32)), attention_pseudo_mask(att, (32, 32)))
    assert "percentile=0.85" in repr(module)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_without_host_synchronisation() -> None:
    att = torch.randn(4, 3, 5, 5, 5, device="cuda").flatten(2).softmax(-1).view(4, 3, 5, 5, 5)
    body = torch.ones(4, 1, 40, 40, 40, device="cuda", dtype=torch.uint8)
    body[..., :4] = 0
    module = AttentionPseudoMask(shuffle=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask = module(att, (40, 40, 40), body, generator=torch.Generator().manual_seed(0))
        mask2d = attention_pseudo_mask(att[:, :, 0], (40, 40), mode="nearest", percentile_in_body=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert mask.is_cuda and mask.shape == (4, 1, 40, 40, 40) and mask2d.is_cuda
    reference = attention_pseudo_mask(att.cpu(), (40, 40, 40), body.cpu())
    perm = derangement(4, generator=torch.Generator().manual_seed(0))
    assert (mask.cpu() != reference[perm]).float().mean() < 1e-3  # float rounding at the threshold only


def test_masked_quantile_matches_torch_quantile() -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(4, 1000, generator=gen)
    valid = torch.rand(4, 1000, generator=gen) < torch.tensor([[0.9], [0.3], [0.01], [0.0]])
    valid[2, :3] = True
    for q in (0.0, 0.5, 0.85, 1.0):
        got = masked_quantile(values, q, valid)
        for row in range(3):
            assert torch.allclose(got[row], torch.quantile(values[row][valid[row]], q), rtol=0, atol=1e-7)
        assert got[3] == float("inf")
        assert torch.allclose(masked_quantile(values, q), torch.quantile(values, q, dim=1), rtol=0, atol=1e-7)


def test_gaussian_kernel_is_monais_erf_kernel() -> None:
    from monai.networks.layers.convutils import gaussian_1d

    for sigma in (0.3, 1.0, 2.5, 8.0):
        expected = gaussian_1d(torch.tensor(sigma), truncated=4.0, approx="erf", normalize=True)
        assert torch.allclose(_gaussian_kernel(sigma, torch.device("cpu")), expected, atol=1e-7)
    square = torch.zeros(1, 1, 9, 9)
    square[..., 2:7, 2:7] = 1
    assert torch.equal(smooth_binary_mask(square, [0.0, 0.0]), square)
    assert torch.equal(smooth_binary_mask(square, [0.0, 1.0]).amax(-1), square.amax(-1))


def test_shuffle_is_a_derangement() -> None:
    for n in range(2, 9):
        for seed in range(20):
            perm = derangement(n, generator=torch.Generator().manual_seed(seed))
            assert sorted(perm.tolist()) == list(range(n))
            assert not bool((perm == torch.arange(n)).any())
    seen = {tuple(derangement(3, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(40)}
    assert seen == {(1, 2, 0), (2, 0, 1)}  # both derangements of 3 occur
    assert torch.equal(
        derangement(5, generator=torch.Generator().manual_seed(7)),
        derangement(5, generator=torch.Generator().manual_seed(7)),
    )
    masks = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 4, 4)
    shuffled = shuffle_across_batch(masks, torch.Generator().manual_seed(3))
    assert torch.equal(shuffled[:, 0, 0, 0], derangement(5, generator=torch.Generator().manual_seed(3)).float())
    assert torch.equal(shuffle_across_batch(masks[:1]), masks[:1])
    assert derangement(1).tolist() == [0] and derangement(0).numel() == 0 and derangement(3, "cpu").device.type == "cpu"
    module = AttentionPseudoMask(shuffle=True, smooth_sigma=0, mode="nearest")
    att = torch.stack([_one_hot((4, 4), (i, i))[0] for i in range(4)])
    plain = attention_pseudo_mask(att, (32, 32), mode="nearest", smooth_sigma=0)
    perm = derangement(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(module(att, (32, 32), generator=torch.Generator().manual_seed(5)), plain[perm])


def test_invalid_arguments_are_named() -> None:
    att = _one_hot((4, 4), (0, 0))
    with pytest.raises(ValueError, match="body_mask must have shape"):
        attention_pseudo_mask(att, (32, 32), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="fraction"):
        attention_pseudo_mask(att, (32, 32), percentile=85)
    with pytest.raises(ValueError, match="mode"):
        attention_pseudo_mask(att, (32, 32), mode="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2D or 3D grid"):
        attention_pseudo_mask(att.flatten(2), (32, 32))
    with pytest.raises(ValueError, match="spatial_size"):
        attention_pseudo_mask(att, (32, 32, 32))
    with pytest.raises(ValueError, match="fraction"):
        AttentionPseudoMask(percentile=1.0)
