"""NonLinearProjection (common.networks.projection) and PositionalAttentionPool (common.networks.pooling) against
straightforward reference implementations written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.networks.pooling import FirstTokenPool, MeanTokenPool, PositionalAttentionPool, token_pool
from common.networks.projection import NonLinearProjection

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- NonLinearProjection


@pytest.mark.parametrize("spatial_dims", [0, 1, 2, 3])
def test_projection_layers_and_shapes(spatial_dims: int) -> None:
    proj = NonLinearProjection(48, 16, spatial_dims=spatial_dims)
    assert list(dict(proj.named_children())) == ["in_proj", "norm", "act", "out_proj"]
    assert proj.in_proj.bias is None and proj.out_proj.bias is not None
    # BatchNorm without affine: running statistics only, no parameters
    assert not proj.norm.affine and list(proj.norm.parameters()) == []
    assert {n for n, _ in proj.norm.named_buffers()} == {"running_mean", "running_var", "num_batches_tracked"}
    assert sorted(n for n, _ in proj.named_parameters()) == ["in_proj.weight", "out_proj.bias", "out_proj.weight"]
    assert sum(p.numel() for p in proj.parameters()) == 48 * 16 + 16 * 16 + 16
    x = torch.randn(3, 48, *(4,) * spatial_dims)
    assert proj(x).shape == (3, 16, *(4,) * spatial_dims)


def test_projection_hidden_dim_and_bad_dims() -> None:
    proj = NonLinearProjection(8, 4, hidden_dim=6, spatial_dims=2)
    assert proj.in_proj.weight.shape == (6, 8, 1, 1) and proj.out_proj.weight.shape == (4, 6, 1, 1)
    with pytest.raises(ValueError, match="spatial_dims"):
        NonLinearProjection(8, 4, spatial_dims=4)


def _reference_projection(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Per-token MLP with batch statistics over every token of the batch (``(T, C)`` rows)."""
    h = x @ w1.t()
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
    return torch.relu(h) @ w2.t() + b2


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_projection_on_maps_is_the_vector_projection_per_token(spatial_dims: int) -> None:
    torch.manual_seed(0)
    maps = NonLinearProjection(12, 8, spatial_dims=spatial_dims)
    vectors = NonLinearProjection(12, 8, spatial_dims=0)
    vectors.in_proj.weight.data.copy_(maps.in_proj.weight.flatten(1))
    vectors.out_proj.weight.data.copy_(maps.out_proj.weight.flatten(1))
    vectors.out_proj.bias.data.copy_(maps.out_proj.bias)
    x = torch.randn(2, 12, *(3,) * spatial_dims)
    tokens = x.flatten(2).transpose(1, 2).reshape(-1, 12)
    out = maps(x)  # training mode: statistics over batch and grid
    flat = out.flatten(2).transpose(1, 2).reshape(-1, 8)
    torch.testing.assert_close(flat, vectors(tokens))
    reference = _reference_projection(tokens, vectors.in_proj.weight, vectors.out_proj.weight, vectors.out_proj.bias)
    torch.testing.assert_close(flat, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.norm.running_mean, vectors.norm.running_mean)
    maps.eval(), vectors.eval()
    torch.testing.assert_close(maps(x).flatten(2).transpose(1, 2).reshape(-1, 8), vectors(tokens))


# ----------------------------------------------------------------------------------------- PositionalAttentionPool


def _reference_pool(pool: PositionalAttentionPool, grid_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit CLIP pooling of a channel-first map: per head ``softmax(q k^T / sqrt(d_h)) v``; returns the pooled
    vector ``(B, D')`` and the attention ``(B, heads, N + 1)`` (mean token first)."""
    d = grid_map.shape[1]
    x = grid_map.flatten(2).transpose(1, 2)  # (B, N, D), row-major over the grid
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding
    q, k, v = pool.q_proj(x[:, 0]), pool.k_proj(x), pool.v_proj(x)
    dh = d // pool.num_heads
    heads, weights = [], []
    for h in range(pool.num_heads):
        sl = slice(h * dh, (h + 1) * dh)
        scores = torch.einsum("bc,bnc->bn", q[:, sl], k[:, :, sl]) / math.sqrt(dh)
        attn = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        attn = attn / attn.sum(dim=1, keepdim=True)
        heads.append(torch.einsum("bn,bnc->bc", attn, v[:, :, sl]))
        weights.append(attn)
    return pool.c_proj(torch.cat(heads, dim=1)), torch.stack(weights, dim=1)


def _clip_forward(pool: PositionalAttentionPool, grid_map: torch.Tensor) -> torch.Tensor:
    """CLIP's ``AttentionPool2d.forward`` (sequence-first ``F.multi_head_attention_forward``), any grid rank."""
    x = grid_map.flatten(2).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=x[:1],
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return out.squeeze(0)


@pytest.mark.parametrize("grid", [(5,), (3, 4), (2, 3, 2)], ids=["1d", "2d", "3d"])
def test_pool_matches_reference(grid: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    pool = PositionalAttentionPool(32, grid, num_heads=4, output_dim=24).double()
    grid_map = torch.randn(3, 32, *grid, dtype=torch.float64)
    tokens = grid_map.flatten(2).transpose(1, 2)
    pooled, attention = pool(tokens, return_attention=True)
    expected, expected_attention = _reference_pool(pool, grid_map)
    assert pooled.shape == (3, 24) and attention.shape == (3, 4, math.prod(grid))
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(pool(tokens), expected)
    torch.testing.assert_close(pooled, _clip_forward(pool, grid_map))
    # the mean token's column is dropped and the rest is not renormalised
    torch.testing.assert_close(attention, expected_attention[:, :, 1:])
    torch.testing.assert_close(attention.sum(-1), 1 - expected_attention[:, :, 0])
    assert bool((attention.sum(-1) < 1).all())


def test_pool_mask() -> None:
    torch.manual_seed(0)
    pool = PositionalAttentionPool(16, (2, 3), num_heads=2)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]])
    pooled, attention = pool(x, mask, return_attention=True)
    assert bool((attention[1, :, [1, 4]] == 0).all()) and bool((attention[0] > 0).all())
    changed = x.clone()
    changed[1, [1, 4]] = 100.0
    torch.testing.assert_close(pool(changed, mask), pooled)  # masked tokens play no part, not even in the mean
    torch.testing.assert_close(pool(x, torch.ones(2, 6)), pool(x))
    with pytest.raises(ValueError, match="at least one valid"):
        pool(x, torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]))


def test_mean_token_pool_averages_the_unpadded_tokens() -> None:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    pooled = MeanTokenPool()(x, mask)
    torch.testing.assert_close(pooled[0], x[0].mean(0))
    torch.testing.assert_close(pooled[1], x[1, :2].mean(0))  # padding is left out
    torch.testing.assert_close(MeanTokenPool()(x), x.mean(1))
    with pytest.raises(ValueError, match="at least one valid"):
        MeanTokenPool()(x, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))


def test_token_pool_by_name() -> None:
    assert isinstance(token_pool("cls"), FirstTokenPool) and isinstance(token_pool("mean"), MeanTokenPool)
    with pytest.raises(ValueError, match="'max'"):
        token_pool("max")


def test_pool_grid_sizes() -> None:
    torch.manual_seed(0)
    pool = PositionalAttentionPool(16, (4, 4), num_heads=4)
    assert pool.num_tokens == 16 and pool.positional_embedding.shape == (17, 16)
    assert pool.position_embedding() is pool.positional_embedding
    assert pool.position_embedding((4, 4)) is pool.positional_embedding
    with pytest.raises(ValueError, match=r"9 tokens do not fill the grid \(4, 4\)"):
        pool(torch.randn(2, 9, 16))
    with pytest.raises(ValueError, match="do not fill the grid"):
        pool(torch.randn(2, 9, 16), grid_size=(2, 4))
    with pytest.raises(ValueError, match="dimensions"):
        pool.position_embedding((3, 3, 1))
    # another grid: the grid part is bilinearly resized, the mean token's entry is kept
    resized = pool.position_embedding((3, 5))
    grid_part = pool.positional_embedding[1:].t().reshape(1, 16, 4, 4)
    expected = F.interpolate(grid_part, size=(3, 5), mode="bilinear", align_corners=False).reshape(16, 15).t()
    torch.testing.assert_close(resized[0], pool.positional_embedding[0])
    torch.testing.assert_close(resized[1:], expected)
    assert pool(torch.randn(2, 15, 16), grid_size=(3, 5)).shape == (2, 16)
    # a 3D embedding constant over the grid stays constant (trilinear)
    pool3 = PositionalAttentionPool(8, (2, 2, 2), num_heads=2)
    with torch.no_grad():
        pool3.positional_embedding[1:] = torch.arange(8.0)
    resized3 = pool3.position_embedding((3, 4, 5))
    assert resized3.shape == (61, 8)
    torch.testing.assert_close(resized3[1:], torch.arange(8.0).expand(60, 8))


def test_pool_heads_init_and_keys() -> None:
    with pytest.raises(ValueError, match=r"embed_dim \(128\) must be divisible by num_heads \(3\)"):
        PositionalAttentionPool(128, (8, 8), num_heads=3)
    with pytest.raises(ValueError, match="grid_size"):
        PositionalAttentionPool(128, (2, 2, 2, 2))
    torch.manual_seed(0)
    pool = PositionalAttentionPool(128, (8, 8))  # G2D release: 256 px, stride 32, 4 heads, 128 -> 128
    assert pool.num_heads == 4 and pool.output_dim == 128
    assert set(pool.state_dict()) == {
        "positional_embedding",
        *(f"{p}_proj.{t}" for p in "qkvc" for t in ("weight", "bias")),
    }
    assert pool.positional_embedding.shape == (65, 128)
    assert abs(pool.positional_embedding.std().item() - 128**-0.5) < 0.05 * 128**-0.5
    assert abs(pool.q_proj.weight.std().item() - 128**-0.5) < 0.05 * 128**-0.5


def test_pool_dense() -> None:
    torch.manual_seed(0)
    pool = PositionalAttentionPool(16, (2, 2), num_heads=4, output_dim=8)
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(pool.dense(x), pool.c_proj(pool.v_proj(x)))
    assert pool.dense(torch.randn(2, 9, 16)).shape == (2, 9, 8)  # no positional embedding: any grid
    # one token and no positional embedding: the pooled vector is the token's dense embedding
    single = PositionalAttentionPool(16, (1, 1), num_heads=4, output_dim=8)
    with torch.no_grad():
        single.positional_embedding.zero_()
    token = torch.randn(3, 1, 16)
    torch.testing.assert_close(single(token), single.dense(token)[:, 0])
