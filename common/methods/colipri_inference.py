"""COLIPRI embedding inference: global embeddings, zero-shot probabilities and finding similarity maps.

Used by ``configs/embed.yaml`` of both COLIPRI bundles (3D CT and 2D radiographs); only configs differ.

**Sliding-window encoding (our choice).** The release encodes one centre crop of the field of view
(192^3 voxels at 2 mm = 384 mm). Here the preprocessing keeps the whole scan (no centre crop; centred padding
up to at least the ROI and to a multiple of the patch size, see :class:`WindowGridPadd`) and
:class:`PatchSlidingWindowInferer` runs ``image_encoder.patch_embeddings`` over ROI-sized windows with MONAI's
:class:`~monai.inferers.SlidingWindowInferer`. Every window starts on the patch grid, so MONAI stitches the
``1/patch``-resolution outputs token for token (overlapping tokens are averaged). The global embedding is the
attention pool over all stitched tokens and the dense joint-space map is ``dense_embeddings`` of the stitched map.
A scan that fits the ROI is one window, i.e. exactly the plain (centre crop/pad) path.

**Similarity maps.** For finding ``k`` the map is ``mean_p [cos(patch, pos_kp) - cos(patch, neg_kp)]`` over the
``P`` prompt pairs (range [-2, 2]; > 0 where the patch is closer to the positive prompts). The patch-token grid
has its own world affine (token ``i`` sits at the centre of its patch); :class:`ResampleToOriginald` interpolates
it once, directly onto the voxels of the original scan (the loader's ``original_affine`` and ``spatial_shape``),
instead of upsampling to the preprocessed grid and then resampling a second time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform, Padd, SpatialResample, Transform
from monai.utils import convert_to_numpy, ensure_tuple, ensure_tuple_rep
from torch import nn

from common.networks.colipri import ColipriModel, ZeroShotClassifier
from common.transforms.ct import CentralCropd, CentralPad, CentralPadd, apply_pending_fast

__all__ = [
    "window_grid_size",
    "WindowGridPad",
    "WindowGridPadd",
    "sliding_window_preprocessing",
    "ColipriDenseHeads",
    "PatchSlidingWindowInferer",
    "PatchGridd",
    "ResampleToOriginald",
    "encode_texts",
    "EmbeddingWriter",
    "case_id",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".dcm")


def window_grid_size(spatial_shape: Sequence[int], roi_size: Sequence[int] | int, patch_size: Sequence[int] | int
                     ) -> tuple[int, ...]:
    """Per axis ``max(roi, ceil(n / patch) * patch)``: the padded size sliding windows tile on the patch grid."""
    rank = len(spatial_shape)
    roi, patch = ensure_tuple_rep(roi_size, rank), ensure_tuple_rep(patch_size, rank)
    return tuple(max(int(r), math.ceil(int(n) / int(p)) * int(p)) for n, r, p in zip(spatial_shape, roi, patch))


class WindowGridPad(CentralPad):
    """Centre-pad each axis to :func:`window_grid_size` (at least the ROI, a multiple of the patch size).

    Same fill, odd-voxel rule and inverse bookkeeping as :class:`~common.transforms.ct.CentralPad`, so a scan no
    larger than the ROI is padded exactly as the centre crop/pad preprocessing pads it.

    Args:
        roi_size: sliding-window size (the training field of view in voxels).
        patch_size: the encoder's patch size.
        value: fill value or ``"minimum"`` (the image's minimum).
        odd_voxel: side that gets the extra voxel of an odd deficit.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        value: float | Literal["minimum"] = "minimum",
        odd_voxel: Literal["start", "end"] = "start",
    ) -> None:
        super().__init__(roi_size, value, odd_voxel)
        if any(int(p) < 1 for p in ensure_tuple(patch_size)):
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.roi_size = roi_size
        self.patch_size = patch_size

    def compute_pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        target = window_grid_size(spatial_shape, self.roi_size, self.patch_size)
        return CentralPad(target, self.value, self.odd_voxel).compute_pad_width(spatial_shape)


class WindowGridPadd(Padd):
    """Dictionary wrapper of :class:`WindowGridPad` (always eager)."""

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        value: float | Literal["minimum"] = "minimum",
        odd_voxel: Literal["start", "end"] = "start",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, WindowGridPad(roi_size, patch_size, value, odd_voxel), "constant", allow_missing_keys)

    @property
    def requires_current_data(self) -> bool:
        return True

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        return super().__call__(data, lazy=False)


def sliding_window_preprocessing(
    transforms: Sequence[Transform],
    roi_size: Sequence[int] | int,
    patch_size: Sequence[int] | int,
    keys: KeysCollection = ("image",),
    value: float | Literal["minimum"] = "minimum",
) -> list[Transform]:
    """A bundle's deterministic preprocessing without its centre crop/pad, padded for sliding windows instead.

    Drops every :class:`~common.transforms.ct.CentralCropd` / :class:`~common.transforms.ct.CentralPadd` of
    ``transforms`` (``ct_preprocessing``: orientation, spacing and HU window remain; ``xray_preprocessing``: the
    shorter edge is still resized to the ROI) and appends :class:`WindowGridPadd`.
    """
    kept = [t for t in transforms if not isinstance(t, (CentralCropd, CentralPadd))]
    if len(kept) == len(transforms):
        raise ValueError("the preprocessing has no CentralCropd/CentralPadd to replace; is it a COLIPRI pipeline?")
    return [*kept, WindowGridPadd(keys, roi_size, patch_size, value=value)]


class ColipriDenseHeads(nn.Module):
    """Inference network for ``embed.yaml``: the image tower plus per-finding prompt embeddings.

    :meth:`patch_embeddings` is what the sliding windows run; :meth:`heads` turns a (stitched) patch map into
    ``embedding`` ``(B, D)``, ``probabilities`` ``(B, K)`` (as :class:`ZeroShotClassifier`) and ``similarity``
    ``(B, K, *grid)`` (mean over prompt pairs of positive-minus-negative cosine). ``forward`` is the plain path.

    Args:
        classifier: zero-shot classifier holding the image tower, the ``(K, P, D)`` prompt embeddings and the
            temperature (e.g. :meth:`ZeroShotClassifier.from_model`).
    """

    def __init__(self, classifier: ZeroShotClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.finding_keys = classifier.finding_keys

    @classmethod
    def from_model(
        cls, model: ColipriModel, tokenizer: Any, prompt_set: Any, max_length: int = 64
    ) -> ColipriDenseHeads:
        """Encode the prompts once with ``model``'s text tower (see :meth:`ZeroShotClassifier.from_model`)."""
        return cls(ZeroShotClassifier.from_model(model, tokenizer, prompt_set, max_length=max_length))

    @property
    def image_encoder(self) -> nn.Module:
        return self.classifier.image_encoder

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Projected patch map ``(B, D, *grid)`` of images ``(B, C, *spatial)``."""
        return self.image_encoder.patch_embeddings(x)

    def heads(self, patch_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global embedding, zero-shot probabilities and finding similarity maps from a patch map."""
        encoder, clf = self.image_encoder, self.classifier
        embedding = encoder.pool(patch_map)
        dense = encoder.dense_embeddings(patch_map)
        b, _, *grid = dense.shape
        contrast = (clf.prompt_embeddings_pos - clf.prompt_embeddings_neg).mean(dim=1).to(dense.dtype)  # (K, D)
        similarity = torch.einsum("bdn,kd->bkn", dense.flatten(2), contrast).reshape(b, -1, *grid)
        # the classifier's own probability rule (two-way softmax per prompt pair, mean over pairs)
        probabilities = clf.probabilities(embedding)
        return {"embedding": embedding, "probabilities": probabilities, "similarity": similarity}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.patch_embeddings(x))


class PatchSlidingWindowInferer(SlidingWindowInferer):
    """MONAI sliding windows over a patch encoder, stitched at patch granularity, then the network's heads.

    ``network`` must expose ``patch_embeddings(x) -> (B, D, *grid)`` at ``1/patch_size`` resolution and
    ``heads(patch_map)`` (see :class:`ColipriDenseHeads`). Inputs must be padded to the patch grid and at least the
    ROI (:class:`WindowGridPadd`); windows then start on multiples of the patch size, where MONAI's scaled-output
    stitching places each window's tokens exactly. A ``(B, C, *roi)`` input is a single window (the plain path).

    Args:
        roi_size: window size in voxels (the training field of view, e.g. 192^3 at 2 mm).
        patch_size: the encoder's patch size.
        overlap: fraction of overlap between windows; ``roi * (1 - overlap)`` must be a multiple of the patch size.
        sw_batch_size: windows per forward pass.
        mode: blending of overlapping tokens (``"constant"``: mean).
        kwargs: other :class:`~monai.inferers.SlidingWindowInferer` arguments (``sw_device``, ``device``, ...).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        overlap: float = 0.5,
        sw_batch_size: int = 1,
        mode: str = "constant",
        **kwargs: Any,
    ) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, **kwargs)
        self.patch_size = patch_size
        rank = max(len(ensure_tuple(roi_size)), len(ensure_tuple(patch_size)))
        for roi, patch in zip(ensure_tuple_rep(roi_size, rank), ensure_tuple_rep(patch_size, rank)):
            interval = max(int(int(roi) * (1 - float(overlap))), 1)
            if int(roi) % int(patch) or interval % int(patch):
                raise ValueError(
                    f"roi_size {roi} and its window step {interval} (overlap {overlap}) must be multiples of the "
                    f"patch size {patch} so that windows start on the patch grid"
                )

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``network.heads`` of the stitched patch map of ``inputs`` ``(B, C, *spatial)``."""
        spatial = tuple(int(s) for s in inputs.shape[2:])
        rank = len(spatial)
        roi, patch = ensure_tuple_rep(self.roi_size, rank), ensure_tuple_rep(self.patch_size, rank)
        if any(n < r or n % p for n, r, p in zip(spatial, roi, patch)):
            raise ValueError(
                f"input spatial shape {spatial} must be at least the ROI {roi} and a multiple of the patch size "
                f"{patch}: pad with WindowGridPadd (sliding_window_preprocessing)"
            )
        # MONAI maps window start s to token int(s * (roi / patch) / roi): exact only if the float scale is
        for n, r, p in zip(spatial, roi, patch):
            scale = (r // p) / float(r)
            if any(int(k * p * scale) != k for k in range(n // p + 1)):
                raise ValueError(f"patch size {p} with ROI {r} cannot be stitched exactly by MONAI (float scale)")
        patch_map = super().__call__(inputs, network.patch_embeddings, *args, **kwargs)
        expected = tuple(n // p for n, p in zip(spatial, patch))
        if tuple(patch_map.shape[2:]) != expected:
            raise RuntimeError(f"stitched patch map {tuple(patch_map.shape[2:])} != patch grid {expected}")
        patch_map = patch_map.as_tensor() if isinstance(patch_map, MetaTensor) else patch_map
        return network.heads(patch_map)


def _patch_grid_affine(affine: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """World affine of the token grid: token ``i`` sits at the centre of voxels ``[i*p, (i+1)*p)``."""
    rank = len(patch)
    scale = np.eye(rank + 1)
    for axis, p in enumerate(patch):
        scale[axis, axis] = p
        scale[axis, rank] = (p - 1) / 2.0
    out = np.array(affine, dtype=np.float64)
    nd = np.eye(rank + 1)
    nd[:rank, :rank], nd[:rank, rank] = out[:rank, :rank], out[:rank, -1]
    mapped = nd @ scale
    out[:rank, :rank], out[:rank, -1] = mapped[:rank, :rank], mapped[:rank, rank]
    return out


class PatchGridd(MapTransform):
    """Give a token-grid map ``(K, *grid)`` the meta data of its image ``ref_key`` and the token grid's affine.

    Args:
        keys: maps at patch resolution (e.g. ``similarity``).
        ref_key: the preprocessed image the map was computed from (a MetaTensor).
        patch_size: the encoder's patch size.
    """

    def __init__(self, keys: KeysCollection, ref_key: str, patch_size: Sequence[int] | int,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.patch_size = patch_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        if not isinstance(ref, MetaTensor):
            raise TypeError(f"{self.ref_key!r} must be a MetaTensor with an affine to place the map in space")
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key]).detach().float()
            rank = values.ndim - 1
            patch = ensure_tuple_rep(self.patch_size, rank)
            expected = tuple(int(n) // int(p) for n, p in zip(ref.shape[1:], patch))
            if tuple(values.shape[1:]) != expected:
                raise ValueError(f"{key!r} grid {tuple(values.shape[1:])} does not tile {self.ref_key!r} "
                                 f"{tuple(ref.shape[1:])} with patches {patch}")
            meta = {k: v for k, v in ref.meta.items() if k != "affine"}
            affine = _patch_grid_affine(convert_to_numpy(ref.affine, dtype=np.float64), patch)
            d[key] = MetaTensor(values.cpu(), affine=torch.as_tensor(affine), meta=meta)
        return d


class ResampleToOriginald(MapTransform):
    """Resample maps onto the original scan's voxel grid (the loader's ``original_affine`` and ``spatial_shape``).

    One interpolation (trilinear / bilinear, border values outside the map's extent) from the map's own affine;
    axis-aligned maps go through :func:`~common.transforms.ct.apply_pending_fast` (separable). The result's affine
    is the original one, so :class:`~monai.transforms.SaveImaged` writes a file that overlays the input scan.
    """

    def __init__(self, keys: KeysCollection, mode: str = "bilinear", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = mode
        self.resampler = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float32, lazy=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or "original_affine" not in img.meta or "spatial_shape" not in img.meta:
                raise ValueError(
                    f"{key!r} needs MetaTensor meta 'original_affine' and 'spatial_shape' (from the loader)"
                )
            shape = tuple(int(s) for s in convert_to_numpy(img.meta["spatial_shape"]))
            original = torch.as_tensor(convert_to_numpy(img.meta["original_affine"], dtype=np.float64))
            out = self.resampler(img, dst_affine=original, spatial_size=shape)
            if out.has_pending_operations:
                out = apply_pending_fast(out, mode=self.mode, padding_mode="border")
            out.affine = original
            d[key] = out
        return d


@torch.no_grad()
def encode_texts(texts: Sequence[str], model: ColipriModel, tokenizer: Any, max_length: int = 512,
                 batch_size: int = 32, device: torch.device | str = "cpu") -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of ``texts`` from ``model``'s text tower."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        emb = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out, axis=0)


def case_id(path: str | os.PathLike) -> str:
    """File name without its image suffix (``ct/case_01.nii.gz`` -> ``case_01``; a DICOM folder keeps its name)."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class EmbeddingWriter:
    """Ignite handler: collect each case's global embedding, write ``embeddings.npz`` and ``findings.json``.

    ``embeddings.npz`` holds ``ids`` (case ids, :func:`case_id`), ``paths`` (input files) and ``embeddings``
    ``(N, D)`` float32 (unit norm), in data order. ``findings.json`` names the channels of the similarity maps.
    When every case has a non-empty ``report`` and ``text_encoder`` is given, image<->report retrieval
    (:func:`common.evaluation.retrieval.retrieval_metrics`) goes to ``retrieval.json``.

    Args:
        output_dir: where the files go.
        finding_keys: the K channel names of the similarity maps.
        text_encoder: ``texts -> (N, D)`` embeddings (e.g. a ``functools.partial`` of :func:`encode_texts`).
        embedding_key, image_key, report_key: keys of the decollated outputs / batch items.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        finding_keys: Sequence[str],
        text_encoder: Callable[[list[str]], np.ndarray] | None = None,
        embedding_key: str = "embedding",
        image_key: str = "image",
        report_key: str = "report",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.finding_keys = list(finding_keys)
        self.text_encoder = text_encoder
        self.embedding_key, self.image_key, self.report_key = embedding_key, image_key, report_key
        self.reset()

    def reset(self) -> None:
        self.paths: list[str] = []
        self.embeddings: list[np.ndarray] = []
        self.reports: list[str | None] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Any) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, Mapping):
            raise TypeError("EmbeddingWriter needs decollated outputs (an evaluator with postprocessing)")
        for output, item in zip(outputs, batch):
            meta = getattr(item.get(self.image_key), "meta", {})
            self.paths.append(str(meta.get("filename_or_obj", f"case_{len(self.paths):05d}")))
            self.embeddings.append(convert_to_numpy(output[self.embedding_key], dtype=np.float32).reshape(-1))
            report = item.get(self.report_key)
            self.reports.append(report if isinstance(report, str) and report.strip() else None)

    def write(self, engine: Any | None = None) -> dict[str, Any] | None:
        """Write the files; returns the retrieval metrics when they were computed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ids = [case_id(p) for p in self.paths]
        if len(set(ids)) != len(ids):
            ids = [f"{i:05d}_{name}" for i, name in enumerate(ids)]
        embeddings = np.stack(self.embeddings) if self.embeddings else np.zeros((0, 0), np.float32)
        np.savez(self.output_dir / "embeddings.npz", ids=np.asarray(ids), paths=np.asarray(self.paths),
                 embeddings=embeddings)
        (self.output_dir / "findings.json").write_text(json.dumps({
            "channels": self.finding_keys,
            "similarity": "mean over prompt pairs of cos(patch, positive prompt) - cos(patch, negative prompt)",
        }, indent=2))
        logger.info("wrote %d embeddings to %s", len(ids), self.output_dir / "embeddings.npz")
        if self.text_encoder is None or len(ids) < 2 or any(r is None for r in self.reports):
            return None
        from common.evaluation.retrieval import retrieval_metrics

        results = retrieval_metrics(embeddings, self.text_encoder(list(self.reports)))
        results.pop("curve", None)
        (self.output_dir / "retrieval.json").write_text(json.dumps(results, indent=2))
        logger.info("retrieval over %d image/report pairs: %s", len(ids), results["image_to_text"])
        return results
