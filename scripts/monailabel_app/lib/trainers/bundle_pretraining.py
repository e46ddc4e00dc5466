"""Train task: the datastore's images (with their report text, when they have one) -> the bundle's train workflow.

MONAI Label's stock ``BundleTrainTask`` keeps only ``image``/``label`` pairs and needs a ``validate`` section;
pre-training needs every image, paired or not, and its report. This task writes those records as a datalist
(``common/data/contract.py``) and runs ``python -m monai.bundle run`` with the bundle's train config, the app's
overlays and overrides, and the datalist as ``dataset_dir``: exactly what a user would run by hand.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.configs import BundleSpec

logger = logging.getLogger(__name__)

__all__ = ["BundlePretrainTask", "client_overrides", "datastore_records", "training_fields"]

_ITERATION = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- (.*)")


def training_fields(image_id: str, info: dict[str, Any]) -> dict[str, Any]:
    """The datalist fields an image's info carries: ``report`` (non-blank text) and ``labels`` (finding -> 0|1).

    Raises:
        ValueError: ``report`` is not text or ``labels`` is not a mapping (named with the image id).
    """
    fields: dict[str, Any] = {}
    report = info.get("report")
    if report is not None:
        if not isinstance(report, str):
            raise ValueError(f"datastore image {image_id!r}: 'report' must be text, got {type(report).__name__}")
        if report.strip():
            fields["report"] = report
    labels = info.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            raise ValueError(f"datastore image {image_id!r}: 'labels' must map finding -> 0|1, got {labels!r}")
        fields["labels"] = labels
    return fields


def client_overrides(overrides: Any) -> dict[str, Any]:
    """A train request's ``overrides`` (a JSON object or its text), checked: every value a number, a boolean or a
    list of them.

    A config value can be a ``$`` expression (Python), an ``@`` / ``%`` reference or a path where the run writes, so
    a client's override could run code or write anywhere; values of that kind belong in the app's ``--conf
    overrides``, which the server's operator sets.

    Raises:
        ValueError: not a JSON object, or a value that is not plain (named with its config id).
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"train request 'overrides' is not valid JSON: {err}") from err
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"train request 'overrides' must be an object of config id -> value, got {overrides!r}")  # noqa: TRY004 (a bad request value)

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return isinstance(value, (bool, int, float))

    for key, value in overrides.items():
        if not plain(value):
            raise ValueError(
                f"train request override {key!r} = {value!r}: a client may set numbers and booleans only (no text, "
                "paths, $ expressions or objects); put other values in the app's --conf overrides"
            )
    return overrides


def datastore_records(datastore: Datastore) -> list[dict[str, Any]]:
    """One datalist record per datastore image: ``image`` plus ``report`` / ``labels`` from the image info.

    Attach a report when uploading (``PUT /datastore/image?image=<id>`` with ``params={"report": "..."}``) or later
    (``PUT /datastore/image/info?image=<id>`` with ``info={"report": "..."}``); images without one are image-only records.
    """
    return [
        {"image": datastore.get_image_uri(image_id), **training_fields(image_id, datastore.get_image_info(image_id))}
        for image_id in sorted(datastore.list_images())
    ]


class BundlePretrainTask(TrainTask):
    """Pre-train a bundle on the datastore (``python -m monai.bundle run`` in a subprocess, progress in ``stats()``).

    Request options: ``max_epochs`` (default: the config's), ``overrides`` (config id -> number or boolean, on top of
    the app's; see :func:`client_overrides`).
    """

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec
        metadata = spec.metadata()
        super().__init__(f"{spec.name}: pre-training on the datastore images and reports ({metadata.get('task', '')})")
        self.version = metadata.get("version")
        self.run_dir = spec.root / "runs" / "monailabel"

    @property
    def stats_path(self) -> Path:
        return self.run_dir / "train_stats.json"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "bundle": self.spec.name, "version": self.version}

    def config(self) -> dict[str, Any]:
        return {"max_epochs": self.spec.parser("train").get("max_epochs", 1), "overrides": {}}

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text()) if self.stats_path.is_file() else {}

    def command(self, request: dict[str, Any], datalist: Path) -> tuple[list[str], Path]:
        """The ``monai.bundle run`` command line and the ``--args_file`` it reads (written here)."""
        overrides = client_overrides(request.get("overrides"))
        args = {
            "config_file": [str(p) for p in self.spec.config_files("train")],
            "meta_file": str(self.spec.metadata_path),
            "bundle_root": str(self.spec.root),
            "dataset_dir": str(datalist),
            **self.spec.overrides,
            **overrides,
        }
        if self.spec.logging_path.is_file():
            args["logging_file"] = str(self.spec.logging_path)
        if request.get("max_epochs") is not None:
            args["max_epochs"] = int(request["max_epochs"])
        args_file = self.run_dir / "args.json"
        args_file.write_text(json.dumps(args, indent=2))
        return [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)], args_file

    def _write_stats(self, stats: dict[str, Any]) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=2))
        tmp.replace(self.stats_path)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        records = datastore_records(datastore)
        if not records:
            raise ValueError(f"{self.spec.name}: the datastore has no images to train on")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        datalist = self.run_dir / "datalist.json"
        datalist.write_text(json.dumps({"training": records}, indent=2))
        paired = sum("report" in r for r in records)
        logger.info(f"{self.spec.name}: {len(records)} training records ({paired} with a report) -> {datalist}")

        cmd, _ = self.command(request, datalist)
        logger.info(f"{self.spec.name}: running {' '.join(cmd)}")
        stats: dict[str, Any] = {
            "bundle": self.spec.name,
            "status": "RUNNING",
            "records": len(records),
            "paired": paired,
            "start_ts": time.time(),
        }
        self._write_stats(stats)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)  # MONAI Label shows the task's output as its progress log
                match = _ITERATION.search(line)
                if match:
                    epoch, epochs, iteration, iterations, metrics = match.groups()
                    stats.update(
                        epoch=int(epoch),
                        total_epochs=int(epochs),
                        iteration=int(iteration),
                        iterations_per_epoch=int(iterations),
                        last=metrics.strip(),
                    )
                    self._write_stats(stats)
        stats.update(
            status="DONE" if proc.returncode == 0 else "FAILED",
            returncode=proc.returncode,
            end_ts=time.time(),
            model=str(self.spec.model_path),
        )
        self._write_stats(stats)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.spec.name}: training failed (exit {proc.returncode}); see the log above")
        return stats
