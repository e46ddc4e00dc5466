"""Helpers shared by the MONAI Label app tests (``conftest.py`` holds the fixtures): paths, the app's conf, the
app's ``lib`` modules imported as MONAI Label imports them, and the running server's description.

Importing this module needs nothing beyond the standard library, so the main environment (without monailabel)
collects ``tests/label`` and skips it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "scripts" / "monailabel_app"
BUNDLE = "colipri_ct"
REAL_CT = REPO.parent / "shared" / "data" / "ct" / "chest_cta_cropped.nii.gz"
# Demo overlay plus smaller volumes: the whole module stays well under two minutes on two CPU cores.
OVERRIDES = {"spatial_size": 32, "pixdim": 12.0, "batch_size": 4, "max_text_length": 32, "num_workers": 0}
MAX_UPLOAD_MB = 5


def app_modules():
    """``lib.*`` of the app, imported the way MONAI Label imports it (the app folder on ``sys.path``)."""
    sys.path.insert(0, str(APP))
    try:
        from lib.configs import bundle_specs
        from lib.trainers import BundlePretrainTask
    finally:
        sys.path.remove(str(APP))
    return bundle_specs, BundlePretrainTask


def app_conf(
    bundles_dir: Path, bundle: str = BUNDLE, overlays: str = "demo", overrides: dict | None = None
) -> dict[str, str]:
    """The ``--conf`` options of the test server (and of the train task run in the test process): by default
    :data:`BUNDLE` with the demo overlay and :data:`OVERRIDES`."""
    return {
        "bundles": bundle,
        "bundles_dir": str(bundles_dir),
        "overlays": overlays,
        "overrides": json.dumps(OVERRIDES if overrides is None else overrides),
        "max_upload_mb": str(MAX_UPLOAD_MB),
    }


def bundle_folder(root: Path, bundle: str) -> Path:
    """``root`` holding ``bundle`` with the repository's configs (linked) and its own ``models/`` and ``runs/``."""
    (root / bundle).mkdir()
    (root / bundle / "configs").symlink_to(REPO / "bundles" / bundle / "configs", target_is_directory=True)
    return root


@dataclass(frozen=True)
class Server:
    """A running server: its URL, studies folder, working directory, log file and the CT linked from outside."""

    url: str
    studies: Path
    cwd: Path
    log: Path
    outside: Path
