"""Helpers that bundle configs call: where the bundle lives, which schema its metadata follows."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["META_SCHEMA_PATH", "locate_bundle_root"]

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
