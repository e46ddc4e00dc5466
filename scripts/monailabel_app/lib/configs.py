"""Which bundles the app serves and how their configs are assembled (inference/train config + overlays + overrides).

The app serves every bundle of ``bundles_dir`` that has an ``inference`` config (found by
:func:`common.bundle_support.discover_bundles`: adding a bundle folder is enough). The app's ``--conf`` options
(strings, as MONAI Label passes them) are parsed here once into :class:`BundleSpec` objects; infer and train tasks
only ever see a spec.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from common.bundle_support import discover_bundles

logger = logging.getLogger(__name__)

__all__ = ["BundleSpec", "bundle_specs", "default_bundles_dir", "servable_bundles"]


def default_bundles_dir() -> Path:
    """``bundles/`` of the repository this app lives in (``scripts/monailabel_app`` -> ``../../bundles``)."""
    return Path(__file__).resolve().parents[3] / "bundles"


def servable_bundles(bundles_dir: str | Path | None = None) -> list[str]:
    """Names of the bundles in ``bundles_dir`` that the app can serve: those with an ``inference`` config."""
    return [b.name for b in discover_bundles(bundles_dir or default_bundles_dir(), configs=["inference"])]


@dataclass(frozen=True)
class BundleSpec:
    """One bundle as the app serves it.

    Attributes:
        name: bundle name, e.g. ``colipri_ct``.
        root: bundle folder (``configs/``, ``models/``); passed to every config as ``bundle_root``.
        overlays: config files merged after the base config, in order (e.g. ``configs/demo.yaml``).
        overrides: config id -> value, applied last (e.g. ``{"spatial_size": 32}``).
    """

    name: str
    root: Path
    overlays: tuple[Path, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metadata_path(self) -> Path:
        return self.root / "configs" / "metadata.json"

    @property
    def logging_path(self) -> Path:
        return self.root / "configs" / "logging.conf"

    @property
    def model_path(self) -> Path:
        """The flat state dict of the inference ``network_def``."""
        return self.root / "models" / "model.pt"

    def metadata(self) -> dict[str, Any]:
        return json.loads(self.metadata_path.read_text())

    @property
    def dims(self) -> int:
        """Spatial dimensions of the network input (metadata ``network_data_format.inputs``): 3 for CT, 2 for X-ray."""
        image_format = next(iter(self.metadata()["network_data_format"]["inputs"].values()))
        return len(image_format.get("spatial_shape") or (0, 0, 0))

    def config_files(self, base: str) -> list[Path]:
        """``configs/<base>.yaml`` (or ``.json``) followed by the overlays."""
        for suffix in (".yaml", ".json"):
            path = self.root / "configs" / f"{base}{suffix}"
            if path.is_file():
                return [path, *self.overlays]
        raise FileNotFoundError(f"{self.root / 'configs'}: no {base}.yaml or {base}.json")

    def parser(self, base: str) -> ConfigParser:
        """A parsed-on-demand config: base config + overlays, ``bundle_root`` and the overrides set."""
        parser = ConfigParser()
        parser.read_meta(str(self.metadata_path))
        parser.read_config([str(p) for p in self.config_files(base)])
        parser.update({"bundle_root": str(self.root), **self.overrides})
        return parser


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _overlay_paths(root: Path, names: list[str]) -> tuple[Path, ...]:
    """Overlay names -> files of this bundle; ``name`` (all bundles) or ``bundle:name`` (one bundle)."""
    paths = []
    for entry in names:
        bundle, _, name = entry.rpartition(":")
        if bundle and bundle != root.name:
            continue
        path = Path(name)
        if not path.is_absolute():
            path = root / "configs" / (name if path.suffix else f"{name}.yaml")
        if path.is_file():
            paths.append(path)
        elif bundle:
            raise FileNotFoundError(f"overlay {entry!r}: {path} does not exist")
        else:
            logger.info(f"{root.name}: no overlay {name!r} ({path}); not applied")
    return tuple(paths)


def _overrides_for(name: str, overrides: Mapping[str, Any], bundles: list[str]) -> dict[str, Any]:
    """Overrides that apply to every bundle plus those nested under the bundle's own name (``bundles``: every
    bundle name, whose keys are per-bundle objects, not config ids)."""
    shared = {k: v for k, v in overrides.items() if k not in bundles}
    own = overrides.get(name, {})
    if not isinstance(own, Mapping):
        raise ValueError(f"conf 'overrides': the value for bundle {name!r} must be a mapping, got {own!r}")  # noqa: TRY004 (a bad conf value)
    return {**shared, **own}


def bundle_specs(conf: Mapping[str, str]) -> dict[str, BundleSpec]:
    """Parse the app's conf into the bundles to serve.

    Options (all strings):
        ``bundles``: comma-separated names (default: every bundle of ``bundles_dir`` with an inference config).
        ``bundles_dir``: folder holding ``<name>/configs`` and ``<name>/models`` (default: the repository's).
        ``overlays``: comma-separated overlay names or files, ``demo`` or ``colipri_ct:demo``; an overlay a bundle
            does not have is skipped for that bundle.
        ``overrides``: JSON object of config id -> value for every bundle, with optional per-bundle objects under a
            bundle's name, e.g. ``{"spatial_size": 32, "colipri_ct": {"pixdim": 12.0}}``.
    """
    bundles_dir = Path(conf.get("bundles_dir") or default_bundles_dir()).expanduser().resolve()
    known = servable_bundles(bundles_dir)
    names = _split(conf.get("bundles")) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"conf 'bundles': unknown bundle(s) {unknown}; {bundles_dir} holds {known or 'no bundle'} (a bundle is a "
            "folder with configs/metadata.json and configs/inference.yaml)"
        )
    try:
        overrides = json.loads(conf.get("overrides") or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"conf 'overrides' is not valid JSON: {err}") from err
    if not isinstance(overrides, dict):
        raise ValueError(f"conf 'overrides' must be a JSON object, got {overrides!r}")  # noqa: TRY004 (a bad conf value)
    specs = {}
    for name in names:
        root = bundles_dir / name
        specs[name] = BundleSpec(
            name=name,
            root=root,
            overlays=_overlay_paths(root, _split(conf.get("overlays"))),
            overrides=_overrides_for(name, overrides, known),
        )
    return specs
