"""How far apart are the cases of a data set in a randomly initialised image tower, compared with augmented views?

For each bundle, builds the demo image tower (``train.yaml`` + an overlay, ``demo`` by default, + ``evaluate.yaml``)
with random weights (``torch.manual_seed(seed)`` first) and embeds ``num_cases`` records of the datalist's ``test``
section:

* ``views``: ``num_views`` augmented views per case, drawn from the bundle's own training pipeline with
  :class:`~common.data.dataset.PretrainingDataset` (seed ``seed``; view draws are its epochs 0, 1, ...). COLIPRI:
  ``image_preprocessing`` + ``augmentation`` (one view per draw). RAD-DINO: ``image_preprocessing`` + ``multicrop``,
  its **global crops** (the pair the DINO loss compares; two per draw, so views 0 and 1 are one training pair; the
  crops are smaller than the whole image and carry the view augmentations, e.g. blur, flips).
* ``clean``: the evaluation input (``evaluate#image_preprocessing``, else ``image_preprocessing``), one per case.

The feature is what evaluation probes: COLIPRI's projected, pooled, L2-normalised image embedding
(``ImageTower.forward``); RAD-DINO's CLS token of ``student_backbone`` (the teacher starts as its copy).
The same statistics are computed on the input voxels (the preprocessed view, flattened) as a model-free reference.

Statistics (:func:`spread_statistics`, features ``(N cases, V views, D)``; "centred" subtracts the mean of all
``N x V`` features, which removes the common component that dominates raw cosines):

* ``between_cosine`` / ``between_cosine_centred``: mean cosine between different cases (view 0 each). Centred,
  exchangeable cases give about ``-1/(N-1)``, so read it against ``view_cosine_centred``.
* ``view_cosine`` / ``view_cosine_centred``: mean cosine between views of one case.
* ``variance_ratio``: one-way random-effects ANOVA on the features, summed over dimensions: the between-case
  variance component ``var(case means) - within / V`` over the within-case variance ``within`` (mean over cases of
  the variance across views). 0: the cases are alike up to view noise; > 1: cases differ more than views do.
  ``f_statistic = V var(case means) / within`` is the classic F (about 1 for alike cases).
* ``view_retrieval_top1``: the fraction of cases whose view 0 has its own view 1 as the nearest (centred cosine)
  of all cases' view 1 (chance ``1/N``).

With 40 cases and 2 views the ratio moves by up to ~1 between seeds (v1 phantoms, colipri_cxr: 1.97 at seed 0, 0.85 at
seed 1): compare data sets at equal ``--seed`` and ``--num_views`` (4 halves the within-case noise), or over seeds.

Usage::

    python scripts/phantom_feature_spread.py --dataset_dir /tmp/phantoms_v2 --out_json /tmp/feature_spread_v2.json
    python scripts/phantom_feature_spread.py --bundles colipri_ct,raddino_ct --num_cases 20 --out_png spread.png
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, SelectItemsd
from torch.utils.data import DataLoader

from common.bundle_support import locate_bundle_root
from common.data.contract import load_datalist
from common.data.dataset import PretrainingDataset, pretraining_collate
from common.evaluation.extract import extract_features
from common.networks.dino import DinoClsEncoder

__all__ = ["bundle_spread", "main", "spread_statistics"]

BUNDLES = ("colipri_ct", "colipri_cxr", "raddino_ct", "raddino_cxr")
COLUMNS = (
    "between_cosine",
    "between_cosine_centred",
    "view_cosine",
    "view_cosine_centred",
    "variance_ratio",
    "f_statistic",
    "view_retrieval_top1",
)


def _mean_offdiag_cosine(x: np.ndarray) -> float:
    """Mean cosine over the pairs ``i != j`` of the rows of ``x`` (``(M, D)``, ``M >= 2``)."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    gram = unit @ unit.T
    m = len(x)
    return float((gram.sum() - np.trace(gram)) / (m * (m - 1)))


def spread_statistics(features: np.ndarray) -> dict[str, float]:
    """Between-case vs within-case spread of ``features`` ``(N cases, V views, D)`` (see the module docstring).

    With ``V == 1`` only the between-case cosines are returned.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2 cases, V views, D), got {x.shape}")
    n, v, d = x.shape
    centred = x - x.reshape(-1, d).mean(axis=0)
    out = {
        "between_cosine": _mean_offdiag_cosine(x[:, 0]),
        "between_cosine_centred": _mean_offdiag_cosine(centred[:, 0]),
    }
    if v < 2:
        return out
    out["view_cosine"] = float(np.mean([_mean_offdiag_cosine(case) for case in x]))
    out["view_cosine_centred"] = float(np.mean([_mean_offdiag_cosine(case) for case in centred]))
    within = float(x.var(axis=1, ddof=1).sum(axis=-1).mean())
    case_means = float(x.mean(axis=1).var(axis=0, ddof=1).sum())
    between = case_means - within / v
    out["between_variance"], out["within_variance"] = between, within
    out["variance_ratio"] = between / within if within > 0 else (math.inf if between > 0 else math.nan)
    out["f_statistic"] = v * case_means / within if within > 0 else math.nan
    unit = centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
    out["view_retrieval_top1"] = float(np.mean((unit[:, 0] @ unit[:, 1].T).argmax(axis=1) == np.arange(n)))
    return out


class _ViewStackEncoder(torch.nn.Module):
    """Encodes ``(B, K, C, *spatial)`` view stacks: ``{"embedding": (B, K, D), "voxels": (B, K, P)}``."""

    def __init__(self, encoder: torch.nn.Module, voxels: bool) -> None:
        super().__init__()
        self.encoder, self.voxels = encoder, voxels

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        b, k = views.shape[:2]
        out = {"embedding": self.encoder(views.flatten(0, 1).float()).unflatten(0, (b, k))}
        if self.voxels:
            out["voxels"] = views.flatten(2).float()
        return out


def _as_view_stack(key: str):
    """Last transform: ``{"image": (K, C, *spatial)}``; ``global_crops`` is a stack already, ``image`` one view."""

    def select(d: dict) -> dict:
        views = torch.as_tensor(d[key])
        return {"image": views if key == "global_crops" else views[None]}

    return select


def bundle_spread(
    bundle: str,
    dataset_dir: str | None = None,
    overlay: str | None = "demo",
    num_cases: int = 40,
    num_views: int = 2,
    seed: int = 0,
    voxels: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """:func:`spread_statistics` of the augmented views and of the clean evaluation input for one bundle."""
    if num_views < 2:
        raise ValueError(f"num_views must be >= 2, got {num_views}")
    start = time.time()
    configs = Path(locate_bundle_root(bundle)) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f"{name}.yaml") for name in ("train", overlay, "evaluate") if name])
    parser["dataset_dir"] = dataset_dir
    if "segmentation_probe" in parser:
        parser["segmentation_probe"] = False  # no mask through the evaluation preprocessing
    device = parser.get_parsed_content("device")
    colipri = "augmentation" in parser
    torch.manual_seed(seed)
    if colipri:
        encoder = parser.get_parsed_content("model#image_encoder")
        random, key, per_draw = parser.get_parsed_content("augmentation"), "image", 1
    else:
        encoder = DinoClsEncoder(parser.get_parsed_content("student_backbone"))
        random, key = parser.get_parsed_content("multicrop"), "global_crops"
        per_draw = random[0].num_global
    records = load_datalist(parser.get_parsed_content("datalist"), "test")[:num_cases]
    if len(records) < 2:
        raise ValueError(f"{bundle}: need at least 2 test records, got {len(records)}")
    preprocessing = list(parser.get_parsed_content("image_preprocessing"))
    clean = parser.get_parsed_content(
        "evaluate#image_preprocessing" if "evaluate#image_preprocessing" in parser else "image_preprocessing"
    )
    model = _ViewStackEncoder(encoder, voxels).to(device).eval()
    amp = torch.bfloat16 if device.type == "cuda" else None

    def embed(transforms: list, key: str, draws: int) -> dict[str, np.ndarray]:
        chain = Compose([*transforms, SelectItemsd(keys=[key]), _as_view_stack(key)])
        dataset = PretrainingDataset(records, chain, seed=seed, cache=True)
        parts = []
        for draw in range(draws):  # draw d = the dataset's epoch d: its own per-sample seeds
            dataset.set_epoch(draw)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pretraining_collate)
            parts.append(extract_features(model, loader, device, amp_dtype=amp, progress=False))
        return {
            name: np.concatenate([p[name] for p in parts], axis=1)
            for name in ("embedding", "voxels")
            if name in parts[0]
        }

    views = embed([*preprocessing, *random], key, math.ceil(num_views / per_draw))
    plain = embed(list(clean), "image", 1)
    result: dict[str, Any] = {
        "bundle": bundle,
        "overlay": overlay,
        "num_cases": len(records),
        "num_views": num_views,
        "seed": seed,
        "views": "image_preprocessing + augmentation" if colipri else "image_preprocessing + multicrop global crops",
        "feature_dim": int(views["embedding"].shape[-1]),
        "voxels_per_view": int(views["voxels"].shape[-1]) if voxels else None,
        "features": spread_statistics(views["embedding"][:, :num_views]),
        "clean_features": spread_statistics(plain["embedding"]),
    }
    if voxels:
        result["voxels"] = spread_statistics(views["voxels"][:, :num_views])
        result["clean_voxels"] = spread_statistics(plain["voxels"])
    result["seconds"] = round(time.time() - start, 1)
    return result


def format_spread_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per bundle and input (random-init features, input voxels)."""
    header = ["bundle", "input", "clean_between", *COLUMNS]
    rows = [header]
    for res in results:
        for name, stats, clean in (
            ("features", res["features"], res["clean_features"]),
            ("voxels", res.get("voxels"), res.get("clean_voxels")),
        ):
            if stats is not None:
                rows.append(
                    [
                        res["bundle"],
                        name,
                        f"{clean['between_cosine']:.4f}",
                        *(f"{stats[c]:.4f}" if c in stats else "-" for c in COLUMNS),
                    ]
                )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    n = results[0]["num_cases"] if results else 0
    lines.append(
        f"(centred cosines of exchangeable cases: about -1/(N-1) = {-1 / max(n - 1, 1):.4f}; "
        f"view_retrieval_top1 chance: 1/N = {1 / max(n, 1):.4f})"
    )
    return "\n".join(lines)


def plot_spread(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Bars of the between/within variance ratio per bundle, features and voxels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))
    xs = np.arange(len(results))
    for offset, name in ((-0.2, "features"), (0.2, "voxels")):
        values = [r.get(name, {}).get("variance_ratio", np.nan) for r in results]
        ax.bar(xs + offset, values, width=0.4, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(xs, [r["bundle"] for r in results])
    ax.set_ylabel("between / within variance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    bundles: str | Sequence[str] = BUNDLES,
    dataset_dir: str | None = None,
    overlay: str | None = "demo",
    num_cases: int = 40,
    num_views: int = 2,
    seed: int = 0,
    voxels: bool = True,
    out_json: str | None = "feature_spread.json",
    out_png: str | None = None,
) -> None:
    """Measure every bundle in ``bundles`` (comma-separated), print the table, write ``out_json`` (and ``out_png``).

    Args:
        bundles: bundle names, e.g. ``colipri_ct,raddino_cxr``.
        dataset_dir: a folder with ``datalist_3d.json``/``datalist_2d.json`` (or ``datalist.json``); None: the
            embedded phantoms (generated into the cache on first use).
        overlay: the bundle config laid over ``train.yaml`` (``demo``), or None for the paper settings.
        num_cases: first ``num_cases`` records of the ``test`` section.
        num_views: augmented views per case (>= 2).
        seed: weight initialisation and augmentation seed.
        voxels: also measure the input voxels (model-free reference).
    """
    names = [b.strip() for b in bundles.split(",")] if isinstance(bundles, str) else list(bundles)
    results = []
    for name in names:
        results.append(bundle_spread(name, dataset_dir, overlay, num_cases, num_views, seed, voxels))
        print(f"{name}: {results[-1]['seconds']} s", flush=True)
    report = {"dataset_dir": dataset_dir, "results": results}
    if dataset_dir:
        manifest = Path(dataset_dir) / "phantoms.json"
        if manifest.is_file():
            report["generator"] = json.loads(manifest.read_text(encoding="utf-8")).get("generator")
    print(format_spread_table(results))
    if out_json:
        Path(out_json).write_text(json.dumps(report, indent=1))
    if out_png:
        plot_spread(results, out_png)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
