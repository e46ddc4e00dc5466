"""Helpers that bundle configs call (where the bundle lives, which schema its metadata follows), and the one way
the repository's tools find its bundles: :func:`discover_bundles`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "META_SCHEMA_PATH",
    "BundleInfo",
    "component_arguments",
    "discover_bundles",
    "flag",
    "locate_bundle_root",
]

CONFIG_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")

#: The Model Zoo metadata schema (vendored so that ``verify_metadata`` needs no download).
META_SCHEMA_PATH: str = str(Path(__file__).parent / "resources" / "meta_schema_20240725.json")


def locate_bundle_root(name: str) -> str:
    """Return the directory of bundle ``name`` for configs run without ``--bundle_root``.

    Looks, in order, at the bundle that holds this package (a Model Zoo export vendors it as ``<bundle>/scripts``),
    the working directory (run from inside the bundle), ``./bundles/<name>`` (run from the repository root, the
    documented way) and the repository copy next to this package. An explicit ``--bundle_root`` on the command line
    always wins over this default.
    """
    vendoring_bundle = Path(__file__).resolve().parents[1]
    if (vendoring_bundle / "configs" / "metadata.json").is_file():
        return str(vendoring_bundle)
    cwd = Path.cwd()
    candidates = [cwd, cwd / "bundles" / name, Path(__file__).resolve().parents[1] / "bundles" / name]
    for candidate in candidates:
        if (candidate / "configs" / "metadata.json").is_file() and (candidate.name == name or candidate != cwd):
            return os.path.relpath(candidate) if candidate.is_relative_to(cwd) else str(candidate)
    return str(cwd)


#: The spellings of a boolean knob on the command line (case-insensitive); fire passes ``true`` through as text.
FLAG_WORDS: dict[str, bool] = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def flag(value: Any, name: str, path_allowed: bool = False) -> bool | str:
    """A boolean knob as the command line gives it: ``True``/``False``, ``1``/``0`` or ``true``/``false``/``yes``/
    ``no`` in any case (``python -m monai.bundle run --resume true`` arrives as the text ``'true'``).

    Configs apply it where the knob is consumed: ``resume: "$common.bundle_support.flag(@resume, 'resume', True)"``.

    Args:
        value: the knob's value after fire's parsing and config evaluation.
        name: the knob's config id, named in the error.
        path_allowed: any other text is returned unchanged (a knob that also takes a path, such as ``resume``).

    Raises:
        ValueError: a value that is not one of the spellings above (naming the knob and the value).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in FLAG_WORDS:
            return FLAG_WORDS[word]
        if path_allowed and value.strip():
            return value
    choices = "true/false, True/False, 1/0" + (" or a path" if path_allowed else "")
    raise ValueError(f"knob {name!r} (--{name}) must be {choices}, got {value!r}")


class BundleInfo:
    """A bundle folder: ``configs/metadata.json`` plus configs, found by :func:`discover_bundles`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.name = self.root.name

    def __repr__(self) -> str:
        return f"BundleInfo({str(self.root)!r})"

    def config(self, name: str) -> Path | None:
        """``configs/<name>.yaml`` (or ``.yml`` / ``.json``), None when the bundle has no such config."""
        for suffix in CONFIG_SUFFIXES:
            path = self.root / "configs" / f"{name}{suffix}"
            if path.is_file() and path.name != "metadata.json":
                return path
        return None

    def metadata(self) -> dict[str, Any]:
        return json.loads((self.root / "configs" / "metadata.json").read_text())

    @property
    def spatial_dims(self) -> int:
        """2 or 3: the length of the first network input's ``spatial_shape`` in the metadata."""
        inputs = self.metadata()["network_data_format"]["inputs"]
        return len(next(iter(inputs.values()))["spatial_shape"])


def discover_bundles(bundles_dir: str | os.PathLike | None = None, configs: Sequence[str] = ()) -> list[BundleInfo]:
    """Every bundle in ``bundles_dir`` (a sub-folder holding ``configs/metadata.json``) that has all of ``configs``
    (config names such as ``inference``, ``train``, ``multi_gpu_train``), sorted by name.

    The MONAI Label app, the benchmark and the tests find bundles this way: adding a bundle folder is enough.
    Default ``bundles_dir``: ``bundles/`` of the repository holding this package (none in a Model Zoo export).
    """
    folder = Path(bundles_dir) if bundles_dir is not None else Path(__file__).resolve().parents[1] / "bundles"
    if not folder.is_dir():
        return []
    found = (BundleInfo(p) for p in sorted(folder.iterdir()) if (p / "configs" / "metadata.json").is_file())
    return [b for b in found if all(b.config(name) is not None for name in configs)]


def component_arguments(config: Any, names: Sequence[str]) -> dict[str, str]:
    """``{config id: name}`` for every argument in ``names`` that a component of ``config`` (a dict with a dotted
    ``_target_``) accepts, set or not: ``text_backbone#backbone#pretrained`` and the like (to switch such arguments
    off across a bundle's configs, e.g. downloads in tests and benchmarks)."""
    import contextlib
    import inspect
    import pydoc

    found: dict[str, str] = {}

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, dict):
            target = value.get("_target_")
            component = pydoc.locate(target) if isinstance(target, str) and "." in target else None
            if component is not None:
                with contextlib.suppress(TypeError, ValueError):  # builtins without a signature
                    parameters = inspect.signature(component).parameters
                    found.update({"#".join([*path, n]): n for n in names if n in parameters})
            for key, item in value.items():
                walk(item, [*path, str(key)])
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, [*path, str(index)])

    walk(config, [])
    return found
