"""An overlay's ``imports`` list replaces ``train.yaml``'s (MONAI merges configs key by key), so a torchrun overlay
that imports FSDP must also import every module ``train.yaml`` does: an expression of ``train.yaml`` that names a
module only ``train.yaml`` imports (``common.networks.mlm_head`` in MPMA's MLM prior bias) fails under torchrun
otherwise, and only when that knob is on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted((REPO / "bundles").glob("*/configs/*.yaml"))


def _imports(path: Path) -> list[str] | None:
    config = yaml.safe_load(path.read_text())
    return config.get("imports") if isinstance(config, dict) else None


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p.name != "train.yaml" and _imports(p) is not None
                                     and (p.parent / "train.yaml").is_file() and "train" in p.stem],
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")  # fmt: skip
def test_training_overlay_keeps_every_train_import(overlay: Path) -> None:
    missing = [i for i in _imports(overlay.parent / "train.yaml") or [] if i not in _imports(overlay)]
    assert not missing, f"{overlay} replaces train.yaml's imports without {missing}"
