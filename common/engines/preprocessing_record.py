"""The preprocessing a model was trained with: recorded with every checkpoint and export, checked where it is used.

A record is a JSON-able dict ``{"image": {...}, "text": {...}, "sha256": "..."}`` (as nnssl stores its plan with each
checkpoint). ``image`` holds every argument of the deterministic preprocessing factory that shapes the values the
network sees (``common.transforms.ct.ct_preprocessing``: orientation, pixdim, spatial_size (crop / pad), hu_range,
out_range, pad_value; ``common.transforms.xray.xray_preprocessing``: resize_size, spatial_size, intensity_range,
mean, std, num_channels, mode), defaults applied, plus the factory's name within the library
(``transforms.ct.ct_preprocessing``, the same in a Model Zoo export); ``text`` the tokenizer and the text length.
``sha256`` hashes the canonical JSON of both.

Every bundle's ``train.yaml`` builds its record as the config id ``preprocessing_record``
(:func:`describe_preprocessing`); ``inference.yaml`` builds its own from its own ids. Training checkpoints store it
(:class:`PreprocessingState`, a ``state_dict`` object for :class:`~common.engines.checkpoint.CheckpointHandler`), the
exports write it beside the weights (``models/model.pt`` -> ``models/model.preprocessing.json``,
:func:`write_record`), and inference, evaluate and embed call :func:`check_preprocessing` in ``initialize``: a value
that differs is refused with both values named, unless ``--allow_preprocessing_mismatch true``. Weights without a
record (written before records existed, or released elsewhere) are used with a warning, since nothing can be checked.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import pydoc
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from common.data.contract import DataContractError

__all__ = [
    "OVERRIDE_KNOB",
    "RECORD_SUFFIX",
    "PreprocessingMismatchError",
    "PreprocessingState",
    "check_preprocessing",
    "describe_preprocessing",
    "preprocessing_differences",
    "read_record",
    "record_from_config",
    "record_path",
    "write_record",
]

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".preprocessing.json"
#: the knob (config id) that lets inference / evaluate / embed run despite a mismatch
OVERRIDE_KNOB = "allow_preprocessing_mismatch"
#: factory arguments that say where or how the transforms run, not what values they produce
_NOT_RECORDED = frozenset({"keys", "label_keys", "loader", "lazy", "device"})
#: this library's top-level package (``common``; ``scripts`` in a Model Zoo export), left out of recorded names
_LIBRARY = __name__.split(".")[0]


class PreprocessingMismatchError(DataContractError):
    """The weights were trained with other preprocessing than this config applies (the message names both values)."""


# --------------------------------------------------------------------------------------------------------- records
def _canonical(value: Any) -> Any:
    """JSON-able value with one spelling per meaning: tuples -> lists, numpy -> python, 2.0 -> 2."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_canonical(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, str):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        return int(number) if number.is_integer() else number
    raise TypeError(f"preprocessing value {value!r} ({type(value).__name__}) cannot be recorded")


def _sha256(record: Mapping[str, Any]) -> str:
    body = {k: record[k] for k in ("image", "text") if k in record}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe_preprocessing(
    image_transform: Callable[..., Any] | str,
    image: Mapping[str, Any] | None = None,
    text: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved preprocessing record of a config.

    Args:
        image_transform: the deterministic preprocessing factory the config calls, or its dotted name (e.g.
            ``common.transforms.ct.ct_preprocessing``); its defaults fill the arguments ``image`` leaves out.
        image: the arguments the config passes to it (``{pixdim: "@pixdim", ...}``).
        text: the text side, e.g. ``{tokenizer: "@text_encoder_name", max_length: "@max_text_length"}`` (``None``:
            an image-only model).

    Raises:
        TypeError: an argument the factory does not take, a value that is not a number, string, list or None, or
            a dotted name that does not resolve to a callable.
    """
    if isinstance(image_transform, str):
        name, image_transform = image_transform, pydoc.locate(image_transform)
        if not callable(image_transform):
            raise TypeError(f"image_transform {name!r} does not name a preprocessing function")
    bound = inspect.signature(image_transform).bind_partial(**dict(image or {}))
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k not in _NOT_RECORDED and not callable(v)}
    name = f"{image_transform.__module__}.{image_transform.__qualname__}".removeprefix(_LIBRARY + ".")
    record: dict[str, Any] = {"image": {"transform": name, **_canonical(values)}}
    if text is not None:
        record["text"] = _canonical(dict(text))
    record["sha256"] = _sha256(record)
    return record


def record_from_config(config: Any) -> dict[str, Any] | None:
    """The record a bundle config resolves (its ``preprocessing_record`` id), from a ``monai.bundle.ConfigParser``
    or a raw config dict; ``None`` when the config defines none."""
    from monai.bundle import ConfigParser

    parser = config if isinstance(config, ConfigParser) else ConfigParser(dict(config))
    return parser.get_parsed_content("preprocessing_record") if "preprocessing_record" in parser else None


def preprocessing_differences(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``section.key: trained with A, this config B`` for every value the two records both define and that differs
    (a section only one side has, e.g. the text of a model whose inference needs no text, is not compared)."""
    differences = []
    for section in ("image", "text"):
        if section not in stored or section not in expected:
            continue
        for key in sorted(set(stored[section]) | set(expected[section])):
            old, new = stored[section].get(key, "<not recorded>"), expected[section].get(key, "<not recorded>")
            if _canonical_or_self(old) != _canonical_or_self(new):
                differences.append(f"{section}.{key}: trained with {old!r}, this config {new!r}")
    return differences


def _canonical_or_self(value: Any) -> Any:
    try:
        return _canonical(value)
    except TypeError:
        return value


# ------------------------------------------------------------------------------------------------------ sidecars
def record_path(weights: str | os.PathLike) -> Path:
    """``models/model.pt`` -> ``models/model.preprocessing.json`` (any weight suffix)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + RECORD_SUFFIX)


def record_json(record: Mapping[str, Any]) -> bytes:
    """The record as written beside weights (indented, keys sorted, the hash recomputed)."""
    record = {**_canonical(dict(record)), "sha256": _sha256(record)}
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def write_record(weights: str | os.PathLike, record: Mapping[str, Any], write: Callable[[Path, bytes], Any]) -> Path:
    """Write ``record`` beside ``weights`` with ``write(path, data)`` (the caller's atomic writer); returns the path."""
    path = record_path(weights)
    write(path, record_json(record))
    return path


def read_record(weights: str | os.PathLike) -> dict[str, Any] | None:
    """The record beside ``weights``, ``None`` if there is none.

    Raises:
        DataContractError: the record exists but is not valid JSON, or its hash does not match its content.
    """
    path = record_path(weights)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataContractError(path, f"unreadable preprocessing record: {err}") from err
    if not isinstance(record, dict) or record.get("sha256") != _sha256(record):
        raise DataContractError(path, "preprocessing record was edited or damaged (its sha256 does not match)")
    return record


# -------------------------------------------------------------------------------------------------------- checks
def check_preprocessing(
    weights: str | os.PathLike | None, expected: Mapping[str, Any], allow_mismatch: bool = False
) -> dict[str, Any] | None:
    """Compare the record beside ``weights`` with this config's ``expected`` record; returns the stored record.

    ``weights=None`` (e.g. a random-initialisation baseline) checks nothing. No record: a warning (nothing to
    check). A mismatch: :class:`PreprocessingMismatchError` naming each differing value on both sides, or a warning
    with ``allow_mismatch``.
    """
    if weights is None:
        return None
    stored = read_record(weights)
    if stored is None:
        logger.warning(
            "%s has no preprocessing record (%s; weights written before records existed, or released elsewhere): "
            "cannot check that this config's preprocessing %s is the one they were trained with",
            weights,
            record_path(weights).name,
            json.dumps({k: expected[k] for k in ("image", "text") if k in expected}, sort_keys=True),
        )
        return None
    differences = preprocessing_differences(stored, expected)
    if not differences:
        return stored
    message = (
        f"was trained with other preprocessing than this config applies (record {record_path(weights).name}, "
        f"sha256 {stored['sha256'][:12]} vs {expected.get('sha256', '?')[:12]}): " + "; ".join(differences)
    )
    if allow_mismatch:
        logger.warning("%s %s (running anyway: --%s true)", weights, message, OVERRIDE_KNOB)
        return stored
    raise PreprocessingMismatchError(
        weights, f"{message}. Use the training values, or --{OVERRIDE_KNOB} true to run anyway"
    )


class PreprocessingState:
    """``state_dict`` object for training checkpoints: stores the run's record; on resume, a checkpoint written with
    other preprocessing is refused (:class:`PreprocessingMismatchError`), one without a record is resumed with a
    warning."""

    def __init__(self, record: Mapping[str, Any], source: str | os.PathLike = "<checkpoint>") -> None:
        self.record = dict(record)
        self.source = source

    def state_dict(self) -> dict[str, Any]:
        return {**_canonical(self.record), "sha256": _sha256(self.record)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            logger.warning(
                "%s has no preprocessing record: cannot check that it was trained like this run", self.source
            )
            return
        differences = preprocessing_differences(state, self.record)
        if differences:
            raise PreprocessingMismatchError(
                self.source,
                "was written with other preprocessing than this run applies: "
                + "; ".join(differences)
                + ". Resume with the checkpoint's values, or start a new run initialised from its weights",
            )
