"""Evaluation report: one ``results.json`` with run metadata, TensorBoard scalars, PNG figures and a Markdown summary.

Layout written by :meth:`EvaluationReport.write` under ``output_dir``::

    results.json        {"meta": {...}, "results": {section: {...}}, "figures": {name: relative path}}
    per_case.csv        labels, zero-shot / probe scores and retrieval ranks per test case, when the harness set them
                        (:mod:`common.evaluation.per_case`: paired comparisons of two evaluations)
    summary.md          metadata, the metric table, the figures
    figures/*.png       whatever the sections plotted
    tensorboard/        every scalar of ``results`` as ``eval/<section>/<path>``, every figure as image ``eval/<name>``

Naming convention inside the results: a confidence interval of metric ``x`` is stored next to it as
``x_ci = [low, high]``; undefined values are ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai
import numpy as np
import sklearn
import torch
from PIL import Image

from common.evaluation.per_case import PER_CASE_FILE, write_per_case

__all__ = ["EvaluationReport", "flatten_scalars", "format_table", "machine_info", "to_jsonable"]


def machine_info() -> dict[str, Any]:
    """Software and hardware the evaluation ran on (no host name or user name)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy/torch values, paths and tuples to strict-JSON types; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.item()) if value.ndim == 0 else [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in results.json")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def flatten_scalars(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite numeric leaf as ``{"a/b/c": value}``; ``x_ci`` pairs become ``x_ci_low``/``x_ci_high``.

    Other lists (curves) and ``None`` values are skipped.
    """
    out: dict[str, float] = {}
    for key, value in results.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_scalars(value, f"{path}/"))
        elif str(key).endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            for side, bound in zip(("low", "high"), value):
                if _is_number(bound) and math.isfinite(bound):
                    out[f"{path}_{side}"] = float(bound)
        elif _is_number(value) and math.isfinite(value):
            out[path] = float(value)
    return out


def _rows(results: Mapping[str, Any], prefix: str, per_label: bool, counts: bool) -> list[tuple[str, str, str]]:
    rows = []
    for key, value in results.items():
        if str(key).endswith("_ci") or key in ("curve", "bootstrap", "prompts", "label_keys"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if per_label or key not in ("per_label", "per_class"):
                rows.extend(_rows(value, f"{path}/", per_label, counts))
            continue
        is_count = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if not (_is_number(value) or value is None) or (is_count and not counts):
            continue
        if is_count:
            shown = str(int(value))
        else:
            shown = "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
        ci = results.get(f"{key}_ci")
        ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci and all(_is_number(b) for b in ci) else ""
        rows.append((path, shown, ci_text))
    return rows


def format_table(
    results: Mapping[str, Any], per_label: bool = True, counts: bool = False, markdown: bool = False
) -> str:
    """Metric table of a results dict (``{section: {...}}`` or one section): metric path, value, 95% CI.

    Args:
        results: the dict returned by the harness, or any section of it.
        per_label: include per-label / per-class rows (otherwise only summary rows such as ``macro``).
        counts: include integer entries (``n_pos``, ``n_cases``, ...), not only metrics.
        markdown: a Markdown pipe table instead of aligned plain text.
    """
    rows = _rows(results, "", per_label, counts)
    header = ("metric", "value", "95% CI")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:<{widths[2]}}}"
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *rows])


class EvaluationReport:
    """Collects result sections and figures of one evaluation run and writes them out.

    Args:
        output_dir: directory receiving ``results.json``, ``summary.md``, ``figures/`` and ``tensorboard/``.
        bundle: bundle name (e.g. ``"chest_ct_colipri_pretraining"``).
        checkpoint: path or name of the evaluated checkpoint.
        seed: the evaluation seed.
        metadata: anything else to record under ``meta`` (dataset, split, prompt set...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        bundle: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.meta: dict[str, Any] = {
            "bundle": bundle,
            "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
            "seed": seed,
            **dict(metadata or {}),
        }
        self.sections: dict[str, dict[str, Any]] = {}
        self.figures: dict[str, Path] = {}
        self.per_case: tuple[list[str], dict[str, Any]] | None = None

    @property
    def figure_dir(self) -> Path:
        """Where sections should save their PNGs."""
        return self.output_dir / "figures"

    def add_section(self, name: str, results: Mapping[str, Any]) -> None:
        """Record a section (replacing one of the same name)."""
        self.sections[name] = dict(results)

    def add_figure(self, name: str, path: str | os.PathLike) -> None:
        """Record a saved figure under ``name``."""
        self.figures[name] = Path(path)

    def set_per_case(self, case_ids: list[str], columns: dict[str, Any]) -> None:
        """Per-case columns written to ``per_case.csv`` (:func:`common.evaluation.per_case.write_per_case`)."""
        self.per_case = (case_ids, columns)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        meta = {
            **self.meta,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
        }
        figures = {name: Path(os.path.relpath(path, self.output_dir)).as_posix() for name, path in self.figures.items()}
        return to_jsonable({"meta": meta, "results": self.sections, "figures": figures})

    def write(self, step: int = 0, tensorboard: bool = True) -> Path:
        """Write ``results.json``, ``summary.md`` and (optionally) TensorBoard scalars; returns the JSON path."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        content = self.to_dict()
        path = self.output_dir / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, indent=2, allow_nan=False), encoding="utf-8")
        tmp.replace(path)
        (self.output_dir / "summary.md").write_text(self._markdown(content), encoding="utf-8")
        if self.per_case is not None:
            write_per_case(self.output_dir / PER_CASE_FILE, *self.per_case)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported here: it loads the tensorboard package

            with SummaryWriter(log_dir=str(self.output_dir / "tensorboard")) as writer:
                for tag, value in flatten_scalars(content["results"]).items():
                    writer.add_scalar(f"eval/{tag}", value, global_step=step)
                for name, figure in self.figures.items():  # the PNGs as images too
                    with Image.open(figure) as image:
                        pixels = np.asarray(image.convert("RGB"))
                    writer.add_image(f"eval/{name}", pixels, global_step=step, dataformats="HWC")
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a ``results.json`` (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        return json.loads(path.read_text(encoding="utf-8"))

    @staticmethod
    def _markdown(content: Mapping[str, Any]) -> str:
        meta = content["meta"]
        lines = [f"# Evaluation: {meta.get('bundle') or 'unnamed bundle'}", ""]
        for key in ("checkpoint", "seed", "created_utc"):
            lines.append(f"- **{key}**: {meta.get(key)}")
        machine = meta["machine"]
        device = ", ".join(machine.get("gpus", [])) or "CPU"
        lines += [f"- **machine**: {device}; torch {machine['torch']}, MONAI {machine['monai']}", ""]
        for name, section in content["results"].items():
            lines += [f"## {name}", "", format_table(section, per_label=False, markdown=True), ""]
        if content["figures"]:
            lines += ["## Figures", ""]
            lines += [f"![{name}]({path})" for name, path in content["figures"].items()]
        return "\n".join(lines) + "\n"
