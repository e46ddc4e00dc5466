"""RAD-DINO objective (DINOv2 meta-architecture), backbone adapters and rad-dino weight loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.data.contract import DataContractError
from common.engines.schedules import cosine_schedule, param_groups_lrd
from common.methods.rad_dino.objective import RadDinoPretraining
from common.networks.dino import (
    DinoClsEncoder,
    DinoV2Backbone,
    EvaDinoBackbone,
    dinov2_backbone,
    load_rad_dino_backbone,
)

HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


def _tiny_dinov2(**overrides) -> DinoV2Backbone:
    config = {"image_size": 28, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, **overrides}
    return DinoV2Backbone(config, size="tiny")


def _tiny_eva() -> EvaDinoBackbone:
    return EvaDinoBackbone(spatial_dims=3, img_size=16, patch_size=8, embed_dim=48, depth=2, num_heads=4)


def _batch(spatial: tuple[int, ...], local: tuple[int, ...], num_tokens: int, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, 2, num_tokens, dtype=torch.bool)
    masks[:, 0, : max(1, num_tokens // 3)] = True  # one masked global crop per sample, as DINOv2 at p=0.5
    return {
        "global_crops": torch.randn(b, 2, 1, *spatial, generator=g),
        "local_crops": torch.randn(b, 3, 1, *local, generator=g),
        "masks": masks,
    }


def _optimizer(objective: RadDinoPretraining) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups_lrd(objective.student, 0.04, 0.9), lr=1e-2)


CASES = {
    "2d": (_tiny_dinov2, (28, 28), (14, 14), 4, "centering"),
    "3d": (_tiny_eva, (16, 16, 16), (8, 8, 8), 8, "sinkhorn_knopp"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_finite_terms_and_ema(case: str):
    torch.manual_seed(0)
    make, spatial, local, tokens, centering = CASES[case]
    objective = RadDinoPretraining(make(), head=HEAD, centering=centering, warmup_teacher_temp_iters=4)
    objective.train()
    assert not objective.teacher.training and objective.student.training
    optimizer = _optimizer(objective)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized and not optimized & {id(p) for p in objective.teacher.parameters()}
    assert all(not p.requires_grad for p in objective.teacher.parameters())

    objective.before_iteration(0, 10)
    terms = objective(_batch(spatial, local, tokens))
    assert set(terms) == {"loss", "dino_local_crops", "dino_global_crops", "koleo", "ibot"}
    assert all(torch.isfinite(v.detach()) for v in terms.values())
    parts = sum(v for k, v in terms.items() if k != "loss")
    assert torch.allclose(terms["loss"], parts)
    terms["loss"].backward()
    assert all(p.grad is None for p in objective.teacher.parameters())

    teacher_before = [p.detach().clone() for p in objective.teacher.parameters()]
    optimizer.step()
    student_after = [p.detach().clone() for p in objective.student.parameters()]
    objective.after_optimizer_step(0, 10)
    momentum = float(cosine_schedule(0.992, 1.0, 10)[0])
    assert objective.momentum == pytest.approx(momentum)
    moved = 0
    for before, student, after in zip(teacher_before, student_after, objective.teacher.parameters()):
        torch.testing.assert_close(after, momentum * before + (1 - momentum) * student)
        moved += int(not torch.equal(after, before))
    assert moved > 0


def test_teacher_starts_as_student_and_schedules():
    objective = RadDinoPretraining(_tiny_dinov2(), head=HEAD, warmup_teacher_temp_iters=4)
    for s, t in zip(objective.student.state_dict().values(), objective.teacher.state_dict().values()):
        torch.testing.assert_close(s, t)
    temps = []
    for step in range(8):
        objective.before_iteration(step, 8)
        temps.append(objective.teacher_temp)
    assert temps[0] == pytest.approx(0.04) and temps[3] == pytest.approx(0.07) and temps[-1] == pytest.approx(0.07)
    assert np.all(np.diff(temps) >= 0)
    objective.after_optimizer_step(7, 8)
    assert objective.momentum == pytest.approx(1.0, abs=1e-3)


def test_ibot_only_masked_tokens_and_no_masks():
    torch.manual_seed(0)
    objective = RadDinoPretraining(_tiny_dinov2(), head=HEAD, ibot_separate_head=True)
    batch = _batch((28, 28), (14, 14), 4)
    batch["masks"][:] = False
    terms = objective(batch)
    assert float(terms["ibot"].detach()) == 0.0 and torch.isfinite(terms["loss"])
    assert "ibot_head" in objective.student and "ibot_head" in objective.teacher


def test_weight_zero_removes_terms_and_bad_centering():
    objective = RadDinoPretraining(_tiny_dinov2(), head=HEAD, koleo_loss_weight=0.0, ibot_loss_weight=0.0)
    terms = objective(_batch((28, 28), (14, 14), 4))
    assert set(terms) == {"loss", "dino_local_crops", "dino_global_crops"}
    with pytest.raises(ValueError, match="centering"):
        RadDinoPretraining(_tiny_dinov2(), head=HEAD, centering="mean")


def test_adapters_shapes_and_masking():
    torch.manual_seed(0)
    backbone = _tiny_dinov2().eval()
    images = torch.randn(2, 1, 28, 28)
    cls, patches = backbone(images)
    assert cls.shape == (2, 32) and patches.shape == (2, 4, 32)
    mask = torch.tensor([[True, False, False, False]] * 2)
    _, masked = backbone(images, mask)
    assert not torch.allclose(masked, patches)
    with pytest.raises(ValueError, match="multiple of patch"):
        backbone(torch.randn(1, 1, 27, 28))
    eva = _tiny_eva().eval()
    cls3, patches3 = eva(torch.randn(2, 1, 16, 16, 16))
    assert cls3.shape == (2, 48) and patches3.shape == (2, 8, 48)
    assert DinoClsEncoder(eva)(torch.randn(1, 1, 16, 16, 16)).shape == (1, 48)


def test_load_rad_dino_backbone_roundtrip(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    reference = Dinov2Model(config).eval()
    reference.save_pretrained(tmp_path / "rad-dino", safe_serialization=True)
    assert (tmp_path / "rad-dino" / "model.safetensors").is_file()

    backbone = load_rad_dino_backbone(tmp_path / "rad-dino").eval()
    expected = reference.state_dict()
    loaded = backbone.model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value)
    images = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        want = reference(pixel_values=images.expand(-1, 3, -1, -1)).last_hidden_state
        cls, patches = backbone(images)
    torch.testing.assert_close(cls, want[:, 0])
    torch.testing.assert_close(patches, want[:, 1:])


def test_load_rad_dino_backbone_rejects_mismatch(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    Dinov2Model(config).save_pretrained(tmp_path / "w", safe_serialization=True)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataContractError, match="missing"):
        load_rad_dino_backbone(tmp_path / "w")
    with pytest.raises(DataContractError, match="config.json"):
        load_rad_dino_backbone(tmp_path / "nothing")


def _save_tiny_dinov2(folder, seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    reference = Dinov2Model(config)
    reference.save_pretrained(folder, safe_serialization=True)
    return reference.state_dict()


def test_student_and_teacher_start_from_published_weights(tmp_path):
    """RAD-DINO is fine-tuned from dinov2-base: ``init_weights`` loads them into the student and its EMA teacher."""
    expected = _save_tiny_dinov2(tmp_path / "dinov2")
    config = {
        "image_size": 28,
        "patch_size": 14,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "drop_path_rate": 0.25,
    }
    backbone = dinov2_backbone(config, size="tiny", init_weights=tmp_path / "dinov2")
    assert backbone.model.config.drop_path_rate == 0.25  # the training config's stochastic depth is kept
    objective = RadDinoPretraining(backbone, head=HEAD)
    for part in (objective.student, objective.teacher):
        loaded = part["backbone"].model.state_dict()
        assert set(loaded) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value)
    random = dinov2_backbone(config, size="tiny", init_weights=None)
    assert not torch.equal(random.model.embeddings.cls_token, backbone.model.embeddings.cls_token)
    with pytest.raises(ValueError, match="patch_size is 14, the config asks for 16"):
        dinov2_backbone({**config, "patch_size": 16}, size="tiny", init_weights=tmp_path / "dinov2")


def test_activation_checkpointing_same_outputs_and_gradients(tmp_path):
    """``grad_checkpointing`` (config ``activation_checkpointing``) recomputes activations: same forward, same grads,
    for a random initialisation and for loaded weights alike; the EMA teacher step runs under no_grad with it on."""
    _save_tiny_dinov2(tmp_path / "dinov2")
    config = {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for init in (None, tmp_path / "dinov2"):
        torch.manual_seed(1)
        plain = dinov2_backbone(config, size="tiny", init_weights=init)
        torch.manual_seed(1)
        checkpointed = dinov2_backbone(config, size="tiny", init_weights=init, grad_checkpointing=True)
        assert checkpointed.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
        checkpointed.load_state_dict(plain.state_dict())
        grads = []
        for model in (plain, checkpointed):
            model.train()
            cls, patches = model(images)
            (cls.square().sum() + patches.mean()).backward()
            grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        torch.testing.assert_close(plain(images)[0], checkpointed(images)[0])
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
    objective = RadDinoPretraining(dinov2_backbone(config, size="tiny", grad_checkpointing=True), head=HEAD).train()
    objective.before_iteration(0, 10)
    terms = objective(_batch((28, 28), (14, 14), num_tokens=4, b=2))
    terms["loss"].backward()
    objective.after_optimizer_step(0, 10)
    assert torch.isfinite(terms["loss"]) and objective.student["backbone"].model.is_gradient_checkpointing


def test_uncached_hub_weights_name_the_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
    with pytest.raises(OSError, match="'facebook/dinov2-base' was not found in the local Hugging Face cache"):
        dinov2_backbone({"patch_size": 14}, init_weights="facebook/dinov2-base")


def test_cached_hub_weights_load_offline(tmp_path, monkeypatch):
    """A Hub id resolves through the Hugging Face cache layout (as after ``huggingface-cli download``)."""
    snapshot = tmp_path / "hub" / "models--org--tiny-dinov2" / "snapshots" / ("0" * 40)
    expected = _save_tiny_dinov2(snapshot, seed=1)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import
    backbone = load_rad_dino_backbone("org/tiny-dinov2")
    torch.testing.assert_close(backbone.model.embeddings.cls_token, expected["embeddings.cls_token"])


def test_batchnorm_heads_use_teacher_batch_statistics():
    torch.manual_seed(0)
    objective = RadDinoPretraining(_tiny_dinov2(), head={**HEAD, "use_bn": True}, warmup_teacher_temp_iters=4)
    objective.train()
    assert not objective.teacher["backbone"].training and objective.teacher["dino_head"].training
    bn = next(m for m in objective.teacher["dino_head"].modules() if isinstance(m, torch.nn.BatchNorm1d))
    before = bn.running_mean.clone()
    terms = objective(_batch((28, 28), (14, 14), 4))
    assert torch.isfinite(terms["loss"])
    assert not torch.equal(bn.running_mean, before)  # normalised with the teacher batch's own statistics
    # batch statistics remove what every image shares: two different batches give different teacher targets
    logits = objective.teacher["dino_head"](torch.randn(8, 32) + 100.0)
    assert logits.std(0).mean() > 10 * objective.teacher["dino_head"].eval()(torch.randn(8, 32) + 100.0).std(0).mean()
    single = _batch((28, 28), (14, 14), 4)
    single["masks"][:] = False
    single["masks"][0, 0, 0] = True  # one masked token: BatchNorm cannot normalise one row, the iBOT term is dropped
    terms = objective(single)
    assert torch.isfinite(terms["loss"]) and terms["ibot"].item() == 0.0
    objective.eval()
    assert not objective.teacher.training and not objective.student.training
