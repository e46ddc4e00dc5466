"""MONAI Label app serving this repository's pre-training bundles (COLIPRI, RAD-DINO; 3D CT and 2D chest X-ray).

Start it from the label environment (``bash scripts/setup_label_env.sh``)::

    .venv-label/bin/python -m monailabel.main start_server --app scripts/monailabel_app --studies /data/studies \
        --conf bundles colipri_ct,raddino_cxr --conf overlays demo

Tasks per bundle (names are ``<bundle>_<task>``): ``findings`` (zero-shot per-finding probabilities; paired bundles),
``embedding`` (global image embedding; every bundle) and the train task ``<bundle>``. The app serves its datastore
and nothing else (``lib/datastore.py``, ``lib/request_images.py``) and answers a refused request with a status and a
reason (``lib/errors.py``). See README.md for the options and the security model.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import monailabel
from lib.configs import BundleSpec, bundle_specs
from lib.datastore import ConfinedDatastore
from lib.errors import Refused, client_errors, shown_id
from lib.infers import BundleEmbeddingInfer, BundleFindingsInfer
from lib.request_images import RequestImages
from lib.trainers import BundlePretrainTask
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)


def has_zero_shot_head(spec: BundleSpec) -> bool:
    """Paired (vision-language) bundles: their inference output is per-finding probabilities."""
    pred = next(iter(spec.metadata()["network_data_format"]["outputs"].values()))
    return pred.get("type") == "probabilities" and bool(pred.get("channel_def"))


class MedVlpApp(MONAILabelApp):
    """Zero-shot findings, embeddings and pre-training for the bundles chosen with ``--conf bundles``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.specs = bundle_specs(conf)
        logger.info(f"Bundles: {', '.join(f'{n} ({s.root})' for n, s in self.specs.items())}")
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", "1024")) * 2**20)
        # MONAI Label stores a file uploaded with /infer or /datastore under tempfile's folder for the request: a
        # private one, so that a path under it names an upload and not any file in /tmp.
        self.upload_dir = Path(tempfile.mkdtemp(prefix="medvlp-label-uploads-"))
        tempfile.tempdir = str(self.upload_dir)
        atexit.register(shutil.rmtree, self.upload_dir, ignore_errors=True)
        logger.info(f"Request upload folder: {self.upload_dir}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medvlp-bundles: vision(-language) pre-training",
            description="Zero-shot findings, image embeddings and pre-training from COLIPRI / RAD-DINO bundles",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # remote (DICOMweb, XNAT, DSA): the remote server's own access rules
        return ConfinedDatastore(
            self.studies,
            dims={spec.dims for spec in self.specs.values()},
            max_upload_bytes=self.max_upload_bytes,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        preload = strtobool(self.conf.get("preload", "false"))
        infers: dict[str, InferTask] = {}
        for name, spec in self.specs.items():
            if not spec.model_path.is_file():
                logger.info(f"--- {name}: no {spec.model_path}; infer tasks skipped (train one or copy model.pt)")
                continue
            if has_zero_shot_head(spec):
                infers[f"{name}_findings"] = BundleFindingsInfer(spec, preload=preload)
            infers[f"{name}_embedding"] = BundleEmbeddingInfer(spec, preload=preload)
        logger.info(f"+++ Infer tasks: {list(infers)}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: dict[str, TrainTask] = {name: BundlePretrainTask(spec) for name, spec in self.specs.items()}
        logger.info(f"+++ Train tasks: {list(trainers)}")
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def request_images(self) -> RequestImages:
        sessions = self.sessions()
        return RequestImages(
            upload_dir=self.upload_dir,
            session_dir=Path(sessions.store_path) if sessions is not None else None,
            allow_absolute_paths=strtobool(self.conf.get("allow_absolute_paths", "false")),
        )

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer on a checked image: unknown model 404, unknown image 404, server path 403, unreadable
        or wrong-kind image 422 with the reader's message; a refused upload is removed."""
        model = request.get("model")
        images = self.request_images()
        image = request.get("image")
        with client_errors(f"infer {shown_id(model)}") as shown:
            try:
                if model not in self._infers:
                    raise Refused(404, f"unknown model {shown_id(model)}; this server serves {sorted(self._infers)}")
                path, name = images.resolve(image, datastore or self.datastore())
                shown[str(path)] = name
                return super().infer({**request, "image": str(path)}, datastore)
            except Exception:
                if isinstance(image, str) and image and images.is_upload(image):
                    Path(image).unlink(missing_ok=True)  # a refused request's background clean-up does not run
                raise

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["bundles"] = {
            n: {"root": str(s.root), "overlays": [str(p) for p in s.overlays], "overrides": dict(s.overrides)}
            for n, s in self.specs.items()
        }
        return info
