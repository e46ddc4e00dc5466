"""MAE pixel decoder and report decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.networks.decoders import MAEDecoder, ReportDecoder, pooled_grid
from common.networks.eva import eva_tiny, patchify, random_keep_indices

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def _mae(spatial_dims: int = 3, depth: int = 2) -> MAEDecoder:
    torch.manual_seed(0)
    return MAEDecoder(96, 48, depth, 2, 8, spatial_dims, 1, 32).eval()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mae_decoder_shapes(spatial_dims: int) -> None:
    decoder = _mae(spatial_dims)
    grid = (4,) * spatial_dims
    n = 4**spatial_dims
    keep = random_keep_indices(2, n, 0.75)
    out = decoder(torch.randn(2, keep.shape[1], 96), keep, grid)
    assert out.shape == (2, n, 8**spatial_dims)
    assert decoder(torch.randn(2, n, 96), None, grid).shape == (2, n, 8**spatial_dims)


def test_mae_decoder_places_tokens_at_their_positions() -> None:
    decoder = _mae(depth=0)  # no blocks: every token is decoded independently
    keep = torch.tensor([[3, 10, 42], [0, 1, 63]])
    tokens = torch.randn(2, 3, 96)
    out = decoder(tokens, keep, (4, 4, 4))
    per_token = decoder.pred(decoder.decoder.norm(decoder.decoder_embed(tokens)))
    assert torch.allclose(out.gather(1, keep[..., None].expand(-1, -1, out.shape[-1])), per_token, atol=1e-6)
    hidden = torch.ones(2, 64, dtype=torch.bool)
    hidden.scatter_(1, keep, False)
    masked_rows = out[hidden]
    assert torch.allclose(masked_rows, masked_rows[:1].expand_as(masked_rows), atol=1e-6)  # all = mask token


def test_mae_decoder_is_permutation_equivariant() -> None:
    decoder = _mae()
    keep = random_keep_indices(1, 64, 0.5, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(1, keep.shape[1], 96)
    perm = torch.randperm(keep.shape[1])
    permuted = decoder(tokens[:, perm], keep[:, perm], (4, 4, 4))
    assert torch.allclose(decoder(tokens, keep, (4, 4, 4)), permuted, atol=1e-5)


def test_mae_pipeline_learns_and_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    encoder, decoder = eva_tiny(img_size=32).train(), _mae().train()
    images = torch.randn(2, 1, 32, 32, 32)
    keep = random_keep_indices(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(6):
        out = encoder.forward_tokens(images, keep_indices=keep)
        loss = F.mse_loss(decoder(out["tokens"], keep, out["grid"]), patchify(images, 8))
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None for p in decoder.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_mae_decoder_bad_arguments() -> None:
    decoder = _mae()
    with pytest.raises(ValueError, match="cover the grid"):
        decoder(torch.randn(1, 10, 96), None, (4, 4, 4))
    with pytest.raises(ValueError, match="keep_indices"):
        decoder(torch.randn(1, 10, 96), torch.arange(5)[None], (4, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        MAEDecoder(96, 50, 1, 4)


def test_pooled_grid() -> None:
    assert pooled_grid((24, 24, 24), 256) == (6, 6, 6)
    assert pooled_grid((32, 32), 256) == (16, 16)
    assert pooled_grid((4, 4, 4), 256) == (4, 4, 4)
    assert torch.Size(pooled_grid((30, 17, 9), 100)).numel() <= 100


def _report(max_image_tokens: int | None = 8) -> ReportDecoder:
    torch.manual_seed(0)
    return ReportDecoder(
        120, image_dim=24, hidden_size=32, num_layers=2, num_heads=4, max_length=64, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, max_image_tokens=max_image_tokens, dropout_rate=0.0,
    ).eval()


def test_report_decoder_is_causal_and_reads_the_image() -> None:
    decoder = _report()
    image = torch.randn(2, 24, 4, 4, 4)
    ids = torch.randint(4, 120, (2, 10))
    logits = decoder(image, ids, torch.ones_like(ids))
    assert logits.shape == (2, 10, 120)
    future = ids.clone()
    future[:, 6:] = torch.randint(4, 120, (2, 4))
    assert torch.allclose(decoder(image, future)[:, :6], logits[:, :6], atol=1e-5)
    assert not torch.allclose(decoder(torch.randn_like(image), ids)[:, 0], logits[:, 0], atol=1e-4)


def test_report_decoder_head_at_selected_positions_equals_full_logits() -> None:
    from common.losses.caption_loss import CaptionLoss

    decoder = _report()
    image = torch.randn(3, 24, 4, 4, 4)
    ids = torch.randint(4, 120, (3, 10))
    mask = (torch.arange(10)[None] < torch.tensor([[10], [7], [4]])).long()
    ids = ids * mask
    loss = CaptionLoss(pad_token_id=0, label_smoothing=0.1)
    valid = torch.tensor([True, True, False])
    positions, targets = loss.targets(ids, mask, valid)
    assert positions.shape == ids.shape and int(positions.sum()) == targets.numel() == 9 + 6
    full = decoder(image, ids, mask)
    picked = decoder(image, ids, mask, positions=positions)
    assert torch.allclose(picked, full[positions], atol=1e-5)
    assert torch.allclose(loss.selected(picked, targets), loss(full, ids, mask, valid), atol=1e-6)
    with pytest.raises(ValueError):
        decoder(image, ids, mask, positions=positions[:, :4])


def test_report_decoder_image_memory_pooling() -> None:
    decoder = _report(max_image_tokens=8)
    image = torch.randn(2, 24, 4, 4, 4)
    memory = decoder.image_memory(image)
    assert memory.shape == (2, 8, 32)  # 4^3 -> 2^3
    tokens = image.flatten(2).transpose(1, 2)
    assert torch.allclose(decoder.image_memory(tokens, grid=(4, 4, 4)), memory, atol=1e-6)
    expected = decoder.image_proj(F.avg_pool3d(image, 2).flatten(2).transpose(1, 2))
    assert torch.allclose(memory, expected, atol=1e-6)
    assert decoder.image_memory(tokens).shape == (2, 8, 32)  # no grid: pooled along the sequence
    assert _report(max_image_tokens=None).image_memory(image).shape == (2, 64, 32)


def test_report_decoder_generate_is_greedy() -> None:
    decoder = _report()
    image = torch.randn(2, 24, 4, 4, 4)
    generated = decoder.generate(image, max_new_tokens=6)
    assert generated.shape[0] == 2 and 2 <= generated.shape[1] <= 7
    assert bool((generated[:, 0] == 2).all())
    for step in range(1, generated.shape[1]):
        prefix = generated[:, :step]
        expected = decoder(image, prefix)[:, -1].argmax(-1)
        finished = (prefix == 3).any(dim=1)
        assert torch.equal(generated[~finished, step], expected[~finished])
        assert bool((generated[finished, step] == 0).all())


def test_report_decoder_from_tokenizer_and_checkpointing(tmp_path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "effusion", "."]) + "\n")
    tokenizer = transformers.BertTokenizer(str(vocab))
    decoder = ReportDecoder.from_tokenizer(
        tokenizer, image_dim=24, hidden_size=32, num_layers=2, num_heads=4, dropout_rate=0.0
    )
    assert decoder.lm.config.vocab_size == len(tokenizer)
    assert (decoder.bos_token_id, decoder.eos_token_id, decoder.pad_token_id) == (2, 3, 0)
    batch = tokenizer(["no effusion ."], return_tensors="pt")
    image = torch.randn(1, 24, 2, 2, 2)
    decoder.train()
    grads = []
    for enable in (False, True):
        decoder.set_grad_checkpointing(enable)
        decoder.zero_grad()
        decoder(image, batch["input_ids"], batch["attention_mask"]).logsumexp(-1).sum().backward()
        grads.append(decoder.image_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
