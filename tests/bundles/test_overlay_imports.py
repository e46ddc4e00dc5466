"""An overlay's ``imports`` list replaces ``train.yaml``'s (MONAI merges configs key by key), so a training overlay
that needs more imports (the torchrun overlays' FSDP) appends them with MONAI's merge key ``+imports``; one that
replaces the list must repeat every module ``train.yaml`` imports: an expression of ``train.yaml`` that names a module
only ``train.yaml`` imports (``common.networks.mlm_head`` in MPMA's MLM prior bias) fails under torchrun otherwise, and
only when that knob is on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted((REPO / "bundles").glob("*/configs/*.yaml"))


def _config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    return config if isinstance(config, dict) else {}


def _sets_imports(path: Path) -> bool:
    return bool({"imports", "+imports"} & set(_config(path)))


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p.name != "train.yaml" and _sets_imports(p)
                                     and (p.parent / "train.yaml").is_file() and "train" in p.stem],
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")  # fmt: skip
def test_training_overlay_keeps_every_train_import(overlay: Path) -> None:
    parser = ConfigParser()
    parser.read_config([str(overlay.parent / "train.yaml"), str(overlay)])
    merged = parser.get("imports")
    missing = [i for i in _config(overlay.parent / "train.yaml").get("imports", []) if i not in merged]
    assert not missing, f"{overlay} replaces train.yaml's imports without {missing} (append with '+imports')"
    added = _config(overlay).get("+imports", [])
    assert all(i in merged for i in added), f"{overlay}: '+imports' did not reach the merged config"


def test_a_replacing_overlay_is_caught(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("imports: ['$import os', '$import common.networks.mlm_head']\n")
    (tmp_path / "multi_gpu_train.yaml").write_text("imports: ['$import common.engines.fsdp']\n")
    with pytest.raises(AssertionError, match="without"):
        test_training_overlay_keeps_every_train_import(tmp_path / "multi_gpu_train.yaml")
    (tmp_path / "multi_gpu_train.yaml").write_text("+imports: ['$import common.engines.fsdp']\n")
    test_training_overlay_keeps_every_train_import(tmp_path / "multi_gpu_train.yaml")
