"""The generic layers every method composes: the strict weight loader, optimizer groups, activation checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.data.contract import DataContractError
from common.engines.optim import param_groups
from common.engines.parallel import enable_activation_checkpointing, prepare_objective
from common.networks.weights import WeightsError, check_state_dict, load_weights, read_weights


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.cls_token = nn.Parameter(torch.zeros(2, 4))
        self.text_encoder = nn.Module()
        self.text_encoder.backbone = nn.Linear(4, 4)
        self.text_encoder.head = nn.Linear(4, 2)


def test_load_weights_is_strict_and_names_file_and_keys(tmp_path) -> None:
    source, target = _Net(), _Net()
    torch.save(source.state_dict(), tmp_path / "ok.pt")
    load_weights(target, tmp_path / "ok.pt")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())

    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    load_weights(_Net(), state, key_map={"model.": ""})  # prefix map
    load_weights(_Net(), state, key_map=lambda k: k[len("model.") :])  # function map

    wrong = dict(source.state_dict())
    wrong.pop("norm.bias")
    wrong["extra.weight"] = torch.zeros(1)
    wrong["encoder.weight"] = torch.zeros(5, 3)
    torch.save(wrong, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="bad.pt") as info:
        load_weights(_Net(), tmp_path / "bad.pt")
    message = str(info.value)
    assert "norm.bias" in message and "extra.weight" in message and "encoder.weight (5, 3)!=(4, 3)" in message
    with pytest.raises(WeightsError, match="unexpected keys"):
        check_state_dict(nn.Linear(3, 4), source.state_dict())
    load_weights(
        _Net(), {**source.state_dict(), "text_encoder.extra": torch.zeros(1)}, ignore_prefixes=("text_encoder.extra",)
    )
    assert load_weights(target, None) is target  # None keeps the current weights (random-init baselines)


def test_read_weights_refuses_pickles_truncation_and_non_state_dicts(tmp_path) -> None:
    with pytest.raises(DataContractError, match="does not exist"):
        read_weights(tmp_path / "missing.pt")
    torch.save({"state_dict": {"a": torch.ones(1)}}, tmp_path / "wrapped.pt")
    assert set(read_weights(tmp_path / "wrapped.pt")) == {"a"}
    torch.save({"a": object()}, tmp_path / "pickle.pt")
    with pytest.raises(WeightsError, match="cannot read"):
        read_weights(tmp_path / "pickle.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_weights(tmp_path / "list.pt")
    data = (tmp_path / "wrapped.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt"):
        read_weights(tmp_path / "cut.pt")
    from safetensors.torch import save_file

    save_file({"b": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights(tmp_path / "w.safetensors")["b"], torch.zeros(2))


def test_param_groups_decay_and_learning_rate_scales() -> None:
    net = _Net()
    net.text_encoder.head.weight.requires_grad_(False)
    groups = param_groups(net, weight_decay=0.05, lr_scales={"text_encoder.backbone": 0.1})
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert by_param[id(named["encoder.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["encoder.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["norm.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["cls_token"])]["weight_decay"] == 0.0  # tokens are not decayed (2-d here)
    assert by_param[id(named["text_encoder.backbone.weight"])]["lr_scale"] == 0.1
    assert by_param[id(named["text_encoder.head.bias"])]["lr_scale"] == 1.0
    assert id(named["text_encoder.head.weight"]) not in by_param  # frozen
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())
    # paths match whole module names: "encoder" is the top-level encoder, not "text_encoder"; "encode" matches nothing
    scaled = param_groups(net, 0.05, {"encoder": 0.5})
    assert {id(p) for g in scaled if g["lr_scale"] == 0.5 for p in g["params"]} == {
        id(named["encoder.weight"]),
        id(named["encoder.bias"]),
    }
    assert {g["lr_scale"] for g in param_groups(net, 0.05, {"encode": 0.5})} == {1.0}


class _Checkpointable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.inner = nn.Linear(2, 2)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.enabled = enable


def test_activation_checkpointing_reaches_every_outermost_tower() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    objective = nn.Module()
    objective.model = nn.Module()
    objective.model.image = _Checkpointable()
    objective.model.text = transformers.BertModel(config)
    objective.decoder = _Checkpointable()
    objective.loss = nn.Linear(1, 1)
    switched = enable_activation_checkpointing(objective)
    assert switched == ["model.image", "model.text", "decoder"]
    assert objective.model.image.enabled and objective.decoder.enabled
    assert objective.model.text.is_gradient_checkpointing
    plain = _Checkpointable()
    assert prepare_objective(plain, "cpu") is plain and not plain.enabled


def test_legacy_weight_norm_keys_load_into_parametrized_layers() -> None:
    legacy = torch.nn.utils.weight_norm(nn.Linear(4, 3))  # saves weight_g / weight_v (DINOv2, RAD-DINO heads)
    state = {k: v.detach().clone() for k, v in legacy.state_dict().items()}
    assert {"weight_g", "weight_v"} <= set(state)
    target = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    load_weights(target, state)
    x = torch.randn(2, 4)
    assert torch.allclose(target(x), legacy(x), atol=1e-6)
