"""Infer tasks that run a bundle's inference ``network_def`` on one image and answer in the result JSON.

The network, the preprocessing and the inferer all come from the bundle's ``configs/inference.yaml`` (plus the
app's overlays and overrides): nothing about the model or its input pipeline is restated here. The weights are
``models/model.pt``, the flat state dict of ``network_def``, loaded strictly by the library's one weight loader
(:func:`common.networks.weights.load_weights`: ``weights_only``, every missing / unexpected key named).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from common.engines.preprocessing_record import check_preprocessing
from common.networks.weights import load_weights
from lib.configs import BundleSpec

logger = logging.getLogger(__name__)

__all__ = ["BundleEmbeddingInfer", "BundleFindingsInfer", "BundleNetworkInfer", "load_network"]


def load_network(spec: BundleSpec, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The bundle's inference ``network_def`` with ``models/model.pt`` loaded (strict), in eval mode.

    The preprocessing record beside the weights (``model.preprocessing.json``) is compared with the inference
    config's ``preprocessing_record``, as ``inference.yaml``'s ``initialize`` does: weights trained with other
    preprocessing are refused (no record: a warning).

    Raises:
        WeightsError: the file is unreadable, not a state dict, or its keys / shapes do not match ``network_def``.
        PreprocessingMismatchError: the weights were trained with other preprocessing than the config applies.
    """
    parser = spec.parser("inference")
    check_preprocessing(spec.model_path, parser.get_parsed_content("preprocessing_record", lazy=False))
    network = parser.get_parsed_content("network_def", lazy=False)
    return load_weights(network, spec.model_path).to(device).eval()


class BundleNetworkInfer(BasicInferTask):
    """Base task: bundle preprocessing -> bundle inferer -> ``self.head(network)`` -> JSON written by subclasses."""

    def __init__(
        self, spec: BundleSpec, type: InferType, labels: Sequence[str] | None, description: str, preload: bool = False
    ) -> None:
        self.spec = spec
        self.parser = spec.parser("inference")
        metadata = spec.metadata()
        super().__init__(
            path=str(spec.model_path),
            network=None,
            type=type,
            labels=list(labels) if labels is not None else None,
            dimension=spec.dims,
            description=description,
            load_strict=True,
            preload=preload,
        )
        self.version = metadata.get("version")
        self._preprocessing: Compose | None = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "bundle": self.spec.name, "version": self.version}

    def head(self, network: torch.nn.Module) -> torch.nn.Module:
        """The module that maps a batch of preprocessed images to this task's output."""
        return network

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        # One transform: the bundle's own Compose, so that its lazy resampling runs exactly as in the bundle.
        if self._preprocessing is None:
            preprocessing = self.parser.get_parsed_content("preprocessing", lazy=False)
            self._preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(preprocessing)
        return [self._preprocessing]

    def inferer(self, data: dict | None = None) -> Inferer:
        return self.parser.get_parsed_content("inferer", lazy=False)

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return []

    def _get_network(self, device: str, data: dict | None) -> torch.nn.Module:
        path = self.spec.model_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model for bundle {self.spec.name}")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached is not None and cached[1] == mtime:
            return cached[0]
        logger.info(f"{self.spec.name}: loading {path} on {device}")
        network = self.head(load_network(self.spec, device))
        self._networks[device] = (network, mtime)
        return network


class BundleFindingsInfer(BundleNetworkInfer):
    """Zero-shot findings: ``{"findings": {name: probability}, "prediction": [{idx, label, score}]}``.

    Names are the bundle metadata's ``network_data_format.outputs.pred.channel_def``, in channel order.
    """

    def __init__(self, spec: BundleSpec, preload: bool = False) -> None:
        pred = next(iter(spec.metadata()["network_data_format"]["outputs"].values()))
        channel_def = pred.get("channel_def") or {}
        names = [channel_def[k] for k in sorted(channel_def, key=int)]
        if not names:
            raise ValueError(f"{spec.metadata_path}: outputs.pred.channel_def names no findings")
        super().__init__(
            spec,
            InferType.CLASSIFICATION,
            names,
            f"{spec.name}: zero-shot finding probabilities (prompt pairs; no labels used)",
            preload,
        )

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[None, dict[str, Any]]:
        probs = torch.as_tensor(data[self.output_label_key]).detach().float().cpu().reshape(-1)
        if probs.numel() != len(self.labels):
            raise ValueError(f"{self.spec.name}: network gave {probs.numel()} outputs for {len(self.labels)} findings")
        scores = [float(p) for p in probs]
        return None, {
            "findings": dict(zip(self.labels, scores)),
            "prediction": [{"idx": i, "label": n, "score": s} for i, (n, s) in enumerate(zip(self.labels, scores))],
        }


class BundleEmbeddingInfer(BundleNetworkInfer):
    """Global image embedding: ``{"embedding": [...], "dimension": D, "norm": |e|}``.

    COLIPRI: the image tower of the zero-shot network (L2-normalised joint-space embedding). RAD-DINO: the bundle's
    inference network itself (the teacher's CLS token, not normalised, as the bundle's inference writes it).
    """

    def __init__(self, spec: BundleSpec, preload: bool = False) -> None:
        super().__init__(spec, InferType.OTHERS, None, f"{spec.name}: global image embedding", preload)

    def head(self, network: torch.nn.Module) -> torch.nn.Module:
        return getattr(network, "image_encoder", network)

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[None, dict[str, Any]]:
        embedding = torch.as_tensor(data[self.output_label_key]).detach().float().cpu().reshape(-1)
        return None, {
            "embedding": embedding.tolist(),
            "dimension": embedding.numel(),
            "norm": float(embedding.norm()),
        }
