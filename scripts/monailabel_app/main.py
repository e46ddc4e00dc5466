"""MONAI Label app serving this repository's pre-training bundles (COLIPRI, RAD-DINO; 3D CT and 2D chest X-ray).

Start it from the label environment (``bash scripts/setup_label_env.sh``)::

    .venv-label/bin/python -m monailabel.main start_server --app scripts/monailabel_app --studies /data/studies \
        --conf bundles colipri_ct,raddino_cxr --conf overlays demo

Tasks per bundle (names are ``<bundle>_<task>``): ``findings`` (zero-shot per-finding probabilities; paired bundles),
``embedding`` (global image embedding; every bundle) and the train task ``<bundle>``. See README.md for the options.
"""

from __future__ import annotations

import logging
from typing import Any

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from lib.configs import BundleSpec, bundle_specs
from lib.infers import BundleEmbeddingInfer, BundleFindingsInfer
from lib.trainers import BundlePretrainTask

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
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medvlp-bundles: vision(-language) pre-training",
            description="Zero-shot findings, image embeddings and pre-training from COLIPRI / RAD-DINO bundles",
            version=monailabel.__version__,
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

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["bundles"] = {n: {"root": str(s.root), "overlays": [str(p) for p in s.overlays],
                               "overrides": dict(s.overrides)} for n, s in self.specs.items()}
        return info
