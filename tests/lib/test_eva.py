"""EvaViT: shapes (2D/3D), RoPE semantics, token dropping, mask tokens, gradient checkpointing, patchify."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.networks.layers import DropPath

from common.networks.eva import (
    PRIMUS_CONFIGS,
    EvaBlock,
    EvaViT,
    RotaryPositionEmbedding,
    eva_tiny,
    patchify,
    random_keep_indices,
    unpatchify,
)

torch.set_num_threads(1)


def _tiny(spatial_dims: int = 3, **kwargs) -> EvaViT:
    torch.manual_seed(0)
    size = 32 if spatial_dims == 3 else 64
    return eva_tiny(spatial_dims=spatial_dims, img_size=size, **kwargs).eval()


def _sharpen(model: EvaViT) -> EvaViT:
    """Make attention position-sensitive (the EVA init is nearly an identity map)."""
    with torch.no_grad():
        for block in model.eva.blocks:
            block.gamma_1.fill_(1.0)
            block.attn.q_proj.weight.mul_(20.0)
            block.attn.k_proj.weight.mul_(20.0)
            block.attn.proj.weight.mul_(20.0)
    return model


@pytest.mark.parametrize("spatial_dims, num_cls, abs_pos", list(itertools.product([2, 3], [0, 2], [False, True])))
def test_shapes(spatial_dims: int, num_cls: int, abs_pos: bool) -> None:
    model = _tiny(spatial_dims, num_cls_tokens=num_cls, use_abs_pos_embed=abs_pos)
    spatial = (16, 24, 32)[:spatial_dims] if spatial_dims == 3 else (48, 32)  # differs from img_size
    x = torch.randn(2, 1, *spatial)
    grid = tuple(s // 8 for s in spatial)
    feat = model(x)
    assert feat.shape == (2, model.embed_dim, *grid)
    out = model.forward_tokens(x)
    assert out["grid"] == grid
    assert out["tokens"].shape == (2, torch.Size(grid).numel(), model.embed_dim)
    assert torch.allclose(feat.flatten(2).transpose(1, 2), out["tokens"])
    if num_cls:
        assert out["cls"].shape == (2, num_cls, model.embed_dim)
    else:
        assert "cls" not in out


def test_primus_m_matches_release_configuration() -> None:
    assert PRIMUS_CONFIGS["M"] == {"embed_dim": 864, "depth": 16, "num_heads": 12}
    one_block = EvaViT(img_size=64, depth=1)  # Primus-M defaults, one block only (fast to build)
    block = one_block.eva.blocks[0]
    assert one_block.eva.rope.num_bands == 12  # rope dim 48 = head 72 / 1.5 -> 12 bands per axis
    assert block.mlp.fc1_g.out_features == 2304
    assert block.attn.k_proj.bias is None and block.attn.q_proj.bias is not None
    assert isinstance(block.attn.norm, torch.nn.LayerNorm) and isinstance(block.mlp.norm, torch.nn.LayerNorm)
    assert torch.equal(block.gamma_1, torch.full((864,), 0.1))
    keys = set(one_block.state_dict())
    assert {"mask_token", "down_projection.proj.weight", "eva.norm.weight", "eva.blocks.0.gamma_2"} <= keys
    assert not any("rope" in k for k in keys)
    per_block = sum(p.numel() for p in block.parameters())
    total = sum(p.numel() for p in one_block.parameters()) + 15 * per_block
    assert abs(total / 1e6 - 144.09) < 0.01  # the dossier's count for the release backbone


def test_permuted_keep_indices_give_permuted_tokens() -> None:
    """Attention is permutation-equivariant: with RoPE gathered at the true positions, order does not matter."""
    model = _sharpen(_tiny(num_cls_tokens=1))
    x = torch.randn(2, 1, 32, 32, 32)
    full = model.forward_tokens(x)
    perm = torch.stack([torch.randperm(64) for _ in range(2)])
    permuted = model.forward_tokens(x, keep_indices=perm)
    tokens = full["tokens"]
    assert torch.allclose(permuted["tokens"], tokens.gather(1, perm[..., None].expand_as(tokens)), atol=1e-5)
    assert torch.allclose(permuted["cls"], full["cls"], atol=1e-5)


def test_dropping_to_a_block_equals_encoding_the_crop() -> None:
    """RoPE is relative: keeping an off-origin sub-block must equal encoding that block cropped out."""
    model = _sharpen(_tiny())
    x = torch.randn(1, 1, 32, 32, 32)
    grid = torch.arange(64).reshape(4, 4, 4)
    keep = grid[2:4, 1:3, 0:4].reshape(1, -1)
    dropped = model.forward_tokens(x, keep_indices=keep)["tokens"]
    crop = model.forward_tokens(x[:, :, 16:32, 8:24, 0:32])["tokens"]
    assert torch.allclose(dropped, crop, atol=1e-4)
    # the test can tell: taking the first N_keep table rows instead of the kept positions' rows fails it
    table = model.eva.rope.get_embed((4, 4, 4))
    wrong_table = table.clone()
    wrong_table[keep[0]] = table[: keep.shape[1]]
    model.eva.rope._cache[((4, 4, 4), "cpu")] = wrong_table
    wrong = model.forward_tokens(x, keep_indices=keep)["tokens"]
    assert (wrong - crop).abs().max() > 1e-2


def test_mask_token_replaces_masked_patches() -> None:
    model = _tiny(learnable_mask_token=True)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(1, 1, 32, 32, 32)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :32] = True  # patches of the first half along the first axis
    y = x.clone()
    y[:, :, :16] = torch.randn_like(y[:, :, :16])  # change only masked content
    out_x = model.forward_tokens(x, mask=mask)["tokens"]
    assert torch.allclose(out_x, model.forward_tokens(y, mask=mask)["tokens"], atol=1e-6)
    assert not torch.allclose(out_x, model.forward_tokens(x)["tokens"], atol=1e-3)
    with torch.no_grad():
        model.mask_token.normal_()  # (a uniform shift would be cancelled by the LayerNorms)
    assert not torch.allclose(out_x, model.forward_tokens(x, mask=mask)["tokens"], atol=1e-3)


def test_mask_token_is_a_buffer_by_default() -> None:
    model = _tiny()
    assert "mask_token" not in dict(model.named_parameters())
    assert "mask_token" in model.state_dict()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grad_checkpointing_is_exact(spatial_dims: int) -> None:
    x = torch.randn(2, 1, *((32,) * spatial_dims))
    results = []
    for enable in (False, True):
        model = _tiny(spatial_dims, drop_path_rate=0.3, num_cls_tokens=1).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        out = model.forward_tokens(x)
        loss = out["tokens"].pow(2).mean() + out["cls"].sum()
        loss.backward()
        results.append((out["tokens"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-6), name


def test_drop_path_is_stochastic_in_training_only() -> None:
    model = _tiny(drop_path_rate=0.9)
    x = torch.randn(4, 1, 32, 32, 32)
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def _hand_written_drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """The library's stochastic depth before MONAI's ``DropPath``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def test_drop_path_is_monais_and_equals_the_hand_written_one() -> None:
    block = EvaBlock(24, 2, drop_path=0.4)
    assert isinstance(block.drop_path1, DropPath) and block.drop_path1.scale_by_keep
    assert not any("drop_path" in key for key in block.state_dict())  # no parameters: checkpoint keys unchanged
    x = torch.randn(64, 5, 24)
    for training in (True, False):
        block.drop_path1.train(training)
        torch.manual_seed(3)
        ours = block.drop_path1(x)
        torch.manual_seed(3)
        assert torch.equal(ours, _hand_written_drop_path(x, 0.4, training))
        dropped = (ours == 0).flatten(1).all(1)
        assert (0 < dropped.sum() < len(x)) if training else torch.equal(ours, x)  # eval: the identity
    assert isinstance(EvaBlock(24, 2, drop_path=0.0).drop_path1, torch.nn.Identity)


def test_rope_modes() -> None:
    absolute = RotaryPositionEmbedding(3, 24, (8, 8, 8), mode="absolute")
    scaled = RotaryPositionEmbedding(3, 24, (8, 8, 8), mode="scaled")
    assert torch.equal(absolute.get_embed((8, 8, 8)), scaled.get_embed((8, 8, 8)))
    small_abs, small_scaled = absolute.get_embed((4, 4, 4)), scaled.get_embed((4, 4, 4))
    assert small_abs.shape == (64, 48)
    assert torch.equal(small_abs, absolute.get_embed((8, 8, 8)).reshape(8, 8, 8, 48)[:4, :4, :4].reshape(64, 48))
    assert torch.allclose(
        small_scaled, absolute.get_embed((8, 8, 8)).reshape(8, 8, 8, 48)[::2, ::2, ::2].reshape(64, 48), atol=1e-6
    )
    sin, cos = small_abs.chunk(2, dim=-1)
    assert torch.allclose(sin.pow(2) + cos.pow(2), torch.ones_like(sin), atol=1e-6)
    assert torch.equal(small_abs[0], torch.cat((torch.zeros(24), torch.ones(24))))  # origin: no rotation


def test_patchify_roundtrip_and_layout() -> None:
    for spatial, patch in (((16, 24, 8), (8, 8, 4)), ((32, 16), (16, 8))):
        x = torch.randn(2, 3, *spatial)
        rows = patchify(x, patch)
        grid = tuple(s // p for s, p in zip(spatial, patch))
        assert rows.shape == (2, torch.Size(grid).numel(), torch.Size(patch).numel() * 3)
        assert torch.equal(unpatchify(rows, patch, grid, in_channels=3), x)
        first = x[(slice(None), slice(None)) + tuple(slice(0, p) for p in patch)]
        assert torch.equal(rows[:, 0], first.movedim(1, -1).reshape(2, -1))
        index = tuple(slice(0, p) for p in patch[:-1]) + (slice(patch[-1], 2 * patch[-1]),)
        second = x[(slice(None), slice(None)) + index]
        assert torch.equal(rows[:, 1], second.movedim(1, -1).reshape(2, -1))


def test_random_keep_indices() -> None:
    keep = random_keep_indices(3, 100, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (3, 25)
    assert torch.equal(keep, keep.sort(dim=1).values)
    assert all(len(set(row.tolist())) == 25 for row in keep)
    with pytest.raises(ValueError):
        random_keep_indices(1, 10, 1.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        EvaViT(embed_dim=100, num_heads=12, depth=1)
    with pytest.raises(ValueError, match="RoPE"):
        EvaViT(embed_dim=64, num_heads=4, depth=1)  # head 16 is not divisible by 6
    with pytest.raises(ValueError, match="img_size"):
        EvaViT(img_size=100, patch_size=8, embed_dim=96, num_heads=4, depth=1)
    with pytest.raises(ValueError, match="spatial_dims"):
        EvaViT(spatial_dims=1)
    model = _tiny()
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 30, 32, 32))
    with pytest.raises(ValueError, match="mask"):
        model.forward_tokens(torch.randn(1, 1, 32, 32, 32), mask=torch.zeros(1, 10, dtype=torch.bool))
