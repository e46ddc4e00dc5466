"""Fixtures shared by every test folder: the embedded phantoms as a user's data (in the published layouts), scripts
imported as modules (the Model Zoo exporter among them)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script_module(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script_module() -> Callable[[str], ModuleType]:
    """``script_module(name)``: ``scripts/<name>.py`` imported as a module."""
    return _script_module


@pytest.fixture(scope="session")
def exporter() -> ModuleType:
    """``scripts/export_zoo_bundle.py`` (the Model Zoo exporter) as a module."""
    return _script_module("export_zoo_bundle")


@pytest.fixture(scope="session")
def make_phantoms(tmp_path_factory) -> Callable[..., Path]:
    """``make_phantoms(**sizes)``: a folder of phantoms written as a miniature CT-RATE and MIMIC-CXR-JPG and read back
    by the ``ct_rate`` / ``mimic_cxr`` builders (:func:`common.data.phantom_published.write_published_phantoms`, the
    path of the default dataset and of a user's data), holding ``datalist_3d.json`` and ``datalist_2d.json``.

    ``sizes``: ``num_train``, ``num_image_only``, ``num_val``, ``num_test``, ``seed``, ``image_size_2d``. One folder per
    distinct ``sizes`` per session, shared by the tests that ask for it: treat it as read-only.
    """
    made: dict[tuple, Path] = {}

    def make(**sizes) -> Path:
        from common.data.phantom_published import write_published_phantoms

        key = tuple(sorted(sizes.items()))
        if key not in made:
            made[key] = write_published_phantoms(tmp_path_factory.mktemp("phantoms"), **sizes)
        return made[key]

    return make
