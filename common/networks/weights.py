"""The one strict weight loader: a file (or a state dict) into a module, every key accounted for.

Files are read with :mod:`safetensors` (``.safetensors``) or ``torch.load(weights_only=True)`` (anything else),
so loading never executes pickled code. A ``{"state_dict": ...}`` wrapper (Lightning, MONAI ``CheckpointSaver``
with one object) is unwrapped. Every failure (missing or unreadable file, missing / unexpected / mis-shaped keys) is
a :class:`WeightsError` that names the file and lists the keys.

Used by every loader in the library: published COLIPRI / RAD-DINO / DINOv2 weights, text encoders, the bundles'
exported ``models/*.pt``, the MONAI Label infer tasks and the Model Zoo export.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from common.data.contract import DataContractError

__all__ = ["WeightsError", "check_state_dict", "load_weights", "read_weights"]

logger = logging.getLogger(__name__)

#: non-persistent buffers that some ``transformers`` versions saved and others do not expect
DEFAULT_IGNORED_SUFFIXES: tuple[str, ...] = ("embeddings.position_ids",)


class WeightsError(DataContractError):
    """A weight file that is missing, unreadable or does not fit the model; names the file and the keys."""


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file or a torch file loaded with ``weights_only=True``.

    Raises:
        WeightsError: the file is missing, unreadable, needs unsafe unpickling or holds no state dict.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise WeightsError(path, "weight file does not exist (train first, or give its path)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch, safetensors and zipfile raise their own types on bad files
        raise WeightsError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(path, f"holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def _short(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def check_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike = "<state dict>"
) -> None:
    """Raise :class:`WeightsError` unless ``state`` has exactly ``module``'s keys with the same shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches {_short(mis_shaped)}")
    if problems:
        raise WeightsError(where, "weights do not match the model: " + "; ".join(problems))


def load_weights(
    module: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor] | None,
    key_map: Mapping[str, str] | Callable[[str], str | None] | None = None,
    ignore_prefixes: Iterable[str] = (),
    ignore_suffixes: Iterable[str] = DEFAULT_IGNORED_SUFFIXES,
    where: str | os.PathLike | None = None,
) -> nn.Module:
    """Load ``source`` into ``module`` strictly and return ``module``.

    Args:
        module: the model to fill.
        source: a weight file (see :func:`read_weights`) or an already-read state dict; ``None`` keeps the module's
            current (e.g. random) weights and logs a warning (evaluation baselines).
        key_map: renames file keys to module keys: a mapping of key prefixes (``{"dinov2.": ""}``), or a function
            returning the new key or ``None`` to drop it. Applied before the ignore rules.
        ignore_prefixes: file keys starting with one of these are dropped (e.g. ``text_encoder.`` for an image-only
            model).
        ignore_suffixes: file keys ending with one of these are dropped when the module has no such key.
        where: the name used in errors for a state-dict ``source``.

    Raises:
        WeightsError: unreadable file, or missing / unexpected / mis-shaped keys (all listed).
    """
    if source is None:
        logger.warning("no weights given: %s keeps its current (initial) weights", type(module).__name__)
        return module
    if isinstance(source, Mapping):
        state, origin = dict(source), where or "<state dict>"
    else:
        state, origin = read_weights(source), where or source
    if key_map is not None:
        state = _rename(state, key_map)
    prefixes, suffixes = tuple(ignore_prefixes), tuple(ignore_suffixes)
    expected = module.state_dict()
    state = _legacy_weight_norm(state, expected)
    state = {
        k: v
        for k, v in state.items()
        if not (prefixes and k.startswith(prefixes)) and not (suffixes and k.endswith(suffixes) and k not in expected)
    }
    check_state_dict(module, state, origin)
    module.load_state_dict(state, strict=True)
    return module


#: ``torch.nn.utils.weight_norm`` (legacy) names -> ``torch.nn.utils.parametrizations.weight_norm`` names
_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def _legacy_weight_norm(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename legacy weight-norm keys (``head.weight_g``) to the parametrized ones the module holds (as torch does)."""
    out = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        new = (f"{stem}." if stem else "") + _WEIGHT_NORM[leaf] if leaf in _WEIGHT_NORM else key
        out[new if key not in expected and new in expected else key] = value
    return out


def _rename(
    state: Mapping[str, torch.Tensor], key_map: Mapping[str, str] | Callable[[str], str | None]
) -> dict[str, torch.Tensor]:
    if callable(key_map):
        renamed = ((key_map(k), v) for k, v in state.items())
        return {k: v for k, v in renamed if k is not None}
    out = {}
    for key, value in state.items():
        for old, new in key_map.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
