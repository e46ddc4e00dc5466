"""Shared helpers of the bundle tests: build a bundle's ConfigWorkflow from its configs, a scratch bundle root. The
phantom datasets come from ``make_phantoms`` (``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bundle_workflow(bundle: str, configs: list[str], workflow_type: str | None, **override):
    """``ConfigWorkflow`` of ``bundles/<bundle>/configs/<configs...>`` (merged in order), initialised."""
    from monai.bundle import ConfigWorkflow

    root = REPO / "bundles" / bundle
    workflow = ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    return workflow


@pytest.fixture
def bundle_workflow() -> Callable[..., object]:
    """``bundle_workflow(bundle, configs, workflow_type, **override)`` -> an initialised ``ConfigWorkflow``."""
    return _bundle_workflow


@pytest.fixture
def scratch_bundle_root(tmp_path: Path) -> Callable[[str], Path]:
    """``scratch_bundle_root(bundle)``: a folder holding a copy of the bundle's metadata, for runs that write
    ``models/``, ``runs/`` and ``eval/`` outside the repository."""

    def make(bundle: str) -> Path:
        root = tmp_path / bundle
        (root / "configs").mkdir(parents=True, exist_ok=True)
        (root / "configs" / "metadata.json").write_text(
            (REPO / "bundles" / bundle / "configs" / "metadata.json").read_text()
        )
        return root

    return make
