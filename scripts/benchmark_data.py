"""The data-path sections of ``scripts/benchmark.py``: gzip decoding, the store's format, preprocessing on the fly
vs from the store vs the release's TorchIO pipeline, and the DataLoader feeding a training step.

* ``decoding``: CPU seconds to inflate each real ``.nii.gz`` with the standard library (zlib), ISA-L (``isal``),
  zlib-ng (``zlib_ng``) and ``indexed_gzip`` (each where importable; identical bytes checked), and
  :func:`~common.data.readers.read_volume` with the readers' backend vs nibabel's own loader.
* ``store_format``: the paper-preprocessed volumes (2 mm, 192^3 float32) written and read back with blosc2 (the
  store's format) and zarr v3 (Blosc Zstd, the same chunks): write MB/s, read volumes/s (CPU), size.
* ``data_path``: volumes/s (wall) and CPU s/volume of colipri_ct's deterministic image preprocessing (paper
  settings) from each input file, in a fresh (spawned) process (best of two passes after a warm-up volume: what
  the preprocessing incl. loading costs; the memory history of a long benchmark process inflates the system time
  of page faults, for a memory-bound pipeline most) and through a DataLoader with 1 and 2 worker processes over
  at least ``loader_volumes`` volumes (the inputs in turn; this adds the transfer of every 192^3 float32 output
  through shared memory, the same for every pipeline, and the workers' start, also measured on its own). Each case
  runs ``repeats`` times, the pipelines taking turns; the median, min and max are reported. Each pipeline runs once in the main
  process first (lazy imports and first-call set-up, which persistent training workers pay once per run and forked
  benchmark workers would otherwise pay per case; the same for every pipeline): on the fly (read + preprocess),
  from a store built by ``common.data.store.build`` (time and CPU of the build reported), and the release's TorchIO
  processor (``colipri.get_processor(image_only=True)``); outputs compared (store vs on the fly, ours vs TorchIO).
  Inputs: the real CTs in ``shared/data/ct`` and CT-RATE-sized phantoms (512 x 512 x 300 int16 at 0.7 x 0.7 x 1.5 mm,
  phantom anatomy resampled to that grid, written with nibabel's gzip settings into a temporary folder).
* ``loader_feeding``: colipri_ct's demo workflow (its trainer, model and DataLoader) for a few iterations with the
  preprocessing on the fly vs from a store, 1 and 2 workers: seconds per iteration and the share of the iteration
  spent waiting for the batch (ignite ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``).

CPU seconds are the process's and its (joined) worker processes' user + system time (``getrusage``); every case
records the 1-minute load average before and after it, because a shared box's wall times are contended.
"""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DATA_SECTIONS",
    "bench_data_path",
    "bench_decoding",
    "bench_loader_feeding",
    "bench_store_format",
    "ct_rate_phantoms",
    "data_markdown",
    "real_ct_volumes",
]

DATA_SECTIONS = ("decoding", "store_format", "data_path", "loader_feeding")
ROOT = Path(__file__).resolve().parents[1]
COLIPRI_TRAIN = ROOT / "bundles" / "colipri_ct" / "configs" / "train.yaml"
COLIPRI_DEMO = ROOT / "bundles" / "colipri_ct" / "configs" / "demo.yaml"
#: CT-RATE's typical grid: 512 x 512 x ~300 at 0.7 x 0.7 x 1.5 mm
CT_RATE_SHAPE = (512, 512, 300)
CT_RATE_SPACING = (0.7, 0.7, 1.5)


# ------------------------------------------------------------------------------------------------ measuring


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its joined children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _timed(fn: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Wall and CPU seconds of ``fn()`` with the load average before and after."""
    load_before = _load()
    cpu, wall = _cpu_seconds(), time.perf_counter()
    out = fn()
    stats = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": _cpu_seconds() - cpu,
        "load_before": load_before,
        "load_after": _load(),
    }
    return stats, out


def _best_cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Smallest CPU seconds of ``repeats`` calls (CPU time is what contention inflates least) and the last output."""
    best, out = float("inf"), None
    for _ in range(repeats):
        stats, out = _timed(fn)
        best = min(best, stats["cpu_s"])
    return best, out


# ------------------------------------------------------------------------------------------------ inputs


def real_ct_volumes(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The real ``.nii.gz`` CTs of ``shared/data/ct`` (next to the checkout or inside it); empty when absent."""
    candidates = [Path(data_dir)] if data_dir else [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]
    for folder in candidates:
        if (folder / "ct").is_dir():
            return sorted(str(p) for p in (folder / "ct").glob("*.nii.gz"))
    return []


def ct_rate_phantoms(directory: str | os.PathLike, count: int) -> list[str]:
    """``count`` CT-RATE-sized phantoms (int16 HU, 512 x 512 x 300 at 0.7 x 0.7 x 1.5 mm) written as ``.nii.gz``."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from common.data.phantom import make_phantom

    paths = []
    for index in range(count):
        path = Path(directory) / f"ct_rate_sized_{index}.nii.gz"
        if not path.is_file():
            case = make_phantom(seed=0, split="training", index=index)
            factors = [n / s for n, s in zip(CT_RATE_SHAPE, case.hu.shape)]
            hu = zoom(case.hu.astype(np.float32), factors, order=1).round().astype(np.int16)
            affine = np.diag([*CT_RATE_SPACING, 1.0])
            affine[:3, 3] = -0.5 * np.asarray(CT_RATE_SHAPE) * np.asarray(CT_RATE_SPACING)
            nib.save(nib.Nifti1Image(hu, affine), path)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------------ decoding


def _inflaters() -> dict[str, Callable[[bytes], bytes] | str]:
    """Name -> ``bytes -> bytes`` inflater, or the reason it is unavailable."""
    out: dict[str, Callable[[bytes], bytes] | str] = {"stdlib zlib (gzip)": gzip.decompress}
    try:
        from isal import igzip

        out["isal (ISA-L)"] = igzip.decompress
    except ImportError as err:
        out["isal (ISA-L)"] = f"not installed ({err})"
    try:
        from zlib_ng import gzip_ng

        out["zlib-ng"] = gzip_ng.decompress
    except ImportError as err:
        out["zlib-ng"] = f"not installed ({err})"
    try:
        import indexed_gzip

        def indexed(data: bytes) -> bytes:
            with tempfile.NamedTemporaryFile(suffix=".gz") as f:  # indexed_gzip reads files, not bytes
                f.write(data)
                f.flush()
                with indexed_gzip.IndexedGzipFile(f.name) as g:
                    return g.read()

        out["indexed_gzip"] = indexed
    except ImportError as err:
        out["indexed_gzip"] = f"not installed ({err})"
    return out


def bench_decoding(volumes: Sequence[str], repeats: int = 3) -> dict[str, Any]:
    """CPU seconds per volume to inflate each ``.nii.gz`` with each library, and to read it (array out)."""
    import nibabel as nib

    from common.data import readers

    result: dict[str, Any] = {"gzip_backend": readers.GZIP_BACKEND, "volumes": {}}
    for volume in volumes:
        raw = Path(volume).read_bytes()
        reference = gzip.decompress(raw)
        cases: dict[str, Any] = {}
        for name, inflate in _inflaters().items():
            if isinstance(inflate, str):
                cases[name] = {"skipped": inflate}
                continue
            cpu, out = _best_cpu(lambda inflate=inflate, raw=raw: inflate(raw), repeats)
            cases[name] = {"cpu_s": cpu, "identical": out == reference, "load": _load()}
        cpu, ours = _best_cpu(lambda volume=volume: readers.read_volume(volume)[0], repeats)
        cases[f"read_volume ({readers.GZIP_BACKEND})"] = {"cpu_s": cpu, "load": _load()}
        cpu, theirs = _best_cpu(lambda volume=volume: nib.load(volume).get_fdata(dtype=np.float32), repeats)
        cases["nibabel.load + get_fdata (stdlib)"] = {"cpu_s": cpu, "load": _load()}
        cases[f"read_volume ({readers.GZIP_BACKEND})"]["identical_to_nibabel"] = bool(np.array_equal(ours, theirs))
        result["volumes"][os.path.basename(volume)] = {
            "compressed_mb": len(raw) / 1e6,
            "uncompressed_mb": len(reference) / 1e6,
            "cases": cases,
        }
    return result


# ------------------------------------------------------------------------------------------------ store format


def _paper_preprocessing(loader: bool = True) -> Any:
    """colipri_ct's ``image_preprocessing`` at its paper settings (2 mm, 192^3), as a Compose."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(COLIPRI_TRAIN))
    transforms = parser.get_parsed_content("image_preprocessing")
    return Compose(transforms if loader else transforms[1:])


def bench_store_format(volumes: Sequence[str], directory: str | os.PathLike, repeats: int = 2) -> dict[str, Any]:
    """blosc2 vs zarr v3 on the paper-preprocessed volumes: write MB/s (CPU), read volumes/s (CPU), size."""
    import blosc2

    preprocess = _paper_preprocessing()
    arrays = [preprocess({"image": v})["image"].numpy() for v in volumes]
    raw = sum(a.nbytes for a in arrays)
    chunks = (1, 192, 192, 64)
    result: dict[str, Any] = {"volumes": [os.path.basename(v) for v in volumes], "raw_mb": raw / 1e6, "cases": {}}
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}

    def blosc2_write(folder: Path) -> None:
        for i, a in enumerate(arrays):
            blosc2.asarray(a, urlpath=str(folder / f"{i}.b2nd"), mode="w", chunks=chunks, cparams=cparams)

    def blosc2_read(folder: Path) -> list[np.ndarray]:
        return [blosc2.open(str(folder / f"{i}.b2nd"), mode="r", mmap_mode="r")[:] for i in range(len(arrays))]

    writers: dict[str, tuple[Callable[[Path], None], Callable[[Path], list[np.ndarray]]] | str] = {
        f"blosc2 {blosc2.__version__} (Zstd 5, shuffle, mmap)": (blosc2_write, blosc2_read)
    }
    try:
        import zarr
        from zarr.codecs import BloscCodec

        def zarr_write(folder: Path) -> None:
            codec = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
            for i, a in enumerate(arrays):
                z = zarr.create_array(store=str(folder / f"{i}.zarr"), shape=a.shape, chunks=chunks, dtype=a.dtype,
                                      compressors=[codec], overwrite=True)  # fmt: skip
                z[:] = a

        def zarr_read(folder: Path) -> list[np.ndarray]:
            return [zarr.open_array(str(folder / f"{i}.zarr"), mode="r")[:] for i in range(len(arrays))]

        writers[f"zarr {zarr.__version__} (Blosc Zstd 5, shuffle)"] = (zarr_write, zarr_read)
    except ImportError as err:
        writers["zarr"] = f"not installed ({err})"
    for name, pair in writers.items():
        if isinstance(pair, str):
            result["cases"][name] = {"skipped": pair}
            continue
        write, read = pair
        folder = Path(tempfile.mkdtemp(dir=directory))
        write_cpu, _ = _best_cpu(lambda write=write, folder=folder: write(folder), 1)
        read_cpu, out = _best_cpu(lambda read=read, folder=folder: read(folder), repeats)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        result["cases"][name] = {
            "write_mb_per_cpu_s": raw / 1e6 / write_cpu,
            "read_volumes_per_cpu_s": len(arrays) / read_cpu,
            "size_mb": size / 1e6,
            "ratio": raw / size,
            "lossless": all(np.array_equal(a, b) for a, b in zip(arrays, out)),
            "load": _load(),
        }
    return result


# ------------------------------------------------------------------------------------------------ data path


class _Mapped(torch.utils.data.Dataset):
    """``fn(item)`` over a list (a DataLoader source)."""

    def __init__(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> None:
        self.items, self.fn = list(items), fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.fn(self.items[index])


def _through_loader(
    items: Sequence[Any], fn: Callable[[Any], Any], workers: int, keep: int
) -> tuple[dict[str, float], list]:
    """Wall and CPU seconds of ``fn`` over ``items`` through a DataLoader with ``workers`` forked workers, and the
    first ``keep`` outputs (the others are dropped as they arrive, as a training step drops its batch)."""

    def run() -> list:
        loader = torch.utils.data.DataLoader(
            _Mapped(items, fn), batch_size=None, num_workers=workers, worker_init_fn=_one_thread
        )
        return [torch.as_tensor(x) for i, x in enumerate(loader) if i < keep]  # as received (no copy)

    stats, outputs = _timed(run)
    stats.update(volumes_per_s=len(items) / stats["wall_s"], cpu_s_per_volume=stats["cpu_s"] / len(items))
    return stats, outputs


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _ours(preprocess: Any) -> Callable[[str], torch.Tensor]:
    return lambda path: preprocess({"image": path})["image"].as_tensor()


def _torchio_processor() -> tuple[Callable[[str], torch.Tensor] | None, str | None]:
    try:
        import colipri

        processor = colipri.get_processor(image_only=True)
    except Exception as err:  # noqa: BLE001 - not installed or not loadable: the comparison is skipped with why
        return None, f"colipri/torchio not usable ({type(err).__name__}: {err})"
    return (lambda path: processor.process_images(path)[0].data.float()), None


def _build_store(volumes: Sequence[str], directory: Path, workers: int) -> tuple[Path, dict[str, Any]]:
    from common.data.store import build

    datalist = directory / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": v} for v in volumes]}))
    out = directory / "store"
    stats, counts = _timed(
        lambda: build(str(COLIPRI_TRAIN), str(datalist), str(out), workers=workers, text_encoder_name="default")
    )
    size = sum(p.stat().st_size for p in out.rglob("*.b2nd"))
    stats.update(counts=counts, workers=workers, size_mb=size / 1e6, volumes_per_s=len(volumes) / stats["wall_s"])
    return out, stats


#: The pipelines of the ``data_path`` section, in the order they are measured.
DATA_PATH_PIPELINES = ("ours, on the fly", "ours, from the store", "release TorchIO processor")


def _pipeline(name: str, store_dir: str) -> Callable[[str], torch.Tensor] | str:
    """The data-path pipeline ``name`` (one of :data:`DATA_PATH_PIPELINES`), or why it cannot run (a string)."""
    from common.data.store import VolumeStore

    if name == "ours, on the fly":
        return _ours(_paper_preprocessing())
    if name == "ours, from the store":
        store = VolumeStore(store_dir)
        return lambda path: store.read(path)["image"].as_tensor()
    fn, missing = _torchio_processor()
    return fn if fn is not None else str(missing)


def _fresh_process_cpu(name: str, store_dir: str, volumes: Sequence[str]) -> float:
    """CPU s per volume of pipeline ``name`` in this (fresh) process: one warm-up volume, then the best of two
    passes; run in a spawned process so that no other case's memory history (page faults) colours it."""
    torch.set_num_threads(1)
    fn = _pipeline(name, store_dir)
    if not callable(fn):  # why the pipeline cannot run
        raise RuntimeError(fn)  # noqa: TRY004 - not a type error: the pipeline is unavailable (the string says why)
    fn(volumes[0])
    cpu, _ = _best_cpu(lambda: [fn(v) for v in volumes], repeats=2)
    return cpu / len(volumes)


def _worker_start(workers: int) -> float:
    """CPU seconds of starting (forking) and joining ``workers`` DataLoader workers from this process, nothing loaded:
    the part of a through-loader case that a training run pays once per run (persistent workers), not per volume."""
    stats, _ = _timed(lambda: list(torch.utils.data.DataLoader(_Mapped(range(workers), torch.zeros), batch_size=None,
                                                               num_workers=workers)))  # fmt: skip
    return stats["cpu_s"]


def _summary(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Median (and min / max) over the repeats of one case; the load before the first and after the last."""
    summary: dict[str, Any] = {"repeats": len(runs), "load_before": runs[0]["load_before"],
                               "load_after": runs[-1]["load_after"]}  # fmt: skip
    for key in ("cpu_s_per_volume", "volumes_per_s"):
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = statistics.median(values)
            summary[f"{key}_min"], summary[f"{key}_max"] = min(values), max(values)
    return summary


def bench_data_path(
    inputs: dict[str, Sequence[str]],
    directory: str | os.PathLike,
    workers: Iterable[int] = (1, 2),
    repeats: int = 1,
    loader_volumes: int = 12,
) -> dict[str, Any]:
    """On the fly vs store vs the release's TorchIO processor, per input set and DataLoader worker count.

    Every case runs ``repeats`` times, the pipelines taking turns within each repeat (so that a change of the
    box's load falls on all of them); a case reports the median CPU s per volume with its min and max, a ratio the
    median of the per-repeat ratios with their min and max. A DataLoader case cycles through the inputs until it has
    read at least ``loader_volumes`` volumes, so that the workers' start (measured on its own:
    ``worker_start_cpu_s``) is spread over many volumes, as in a training epoch, rather than over three.
    """
    workers = tuple(workers)
    result: dict[str, Any] = {"settings": "colipri_ct image_preprocessing, paper settings (RAS, 2 mm, 192^3)",
                              "repeats": repeats, "loader_volumes": loader_volumes}  # fmt: skip
    for label, volumes in inputs.items():
        folder = Path(tempfile.mkdtemp(dir=directory))
        store_dir, build_stats = _build_store(volumes, folder, workers=max(workers))
        pipelines = {name: _pipeline(name, str(store_dir)) for name in DATA_PATH_PIPELINES}
        for fn in pipelines.values():
            if callable(fn):
                fn(volumes[0])  # warm-up in this process: the forked workers inherit imports and set-up
        items = list(volumes) * math.ceil(loader_volumes / len(volumes))
        runs: dict[str, list[dict[str, float]]] = {}
        outputs: dict[str, list] = {}
        for _ in range(repeats):
            for name, fn in pipelines.items():
                if isinstance(fn, str):
                    continue
                load_before = _load()
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                    cpu = fresh.submit(_fresh_process_cpu, name, str(store_dir), list(volumes)).result()
                runs.setdefault(f"{name}, in a fresh process", []).append(
                    {"cpu_s_per_volume": cpu, "load_before": load_before, "load_after": _load()}
                )
                for count in workers:
                    stats, outputs[name] = _through_loader(items, fn, count, keep=len(volumes))
                    runs.setdefault(f"{name}, {count} worker(s)", []).append(stats)
        cases: dict[str, Any] = {key: _summary(r) for key, r in runs.items()}
        for name, fn in pipelines.items():
            if isinstance(fn, str):
                cases.update({f"{name}, {count} worker(s)": {"skipped": fn} for count in workers})
        agreement: dict[str, Any] = {}
        if "ours, from the store" in outputs:
            pairs = zip(outputs["ours, on the fly"], outputs["ours, from the store"])
            agreement["store vs on the fly: bit-identical"] = all(torch.equal(a, b) for a, b in pairs)
        if "release TorchIO processor" in outputs:
            diffs = [(a - b).abs() for a, b in zip(outputs["ours, on the fly"], outputs["release TorchIO processor"])]
            agreement["ours vs TorchIO: max |diff|"] = max(float(d.max()) for d in diffs)
            agreement["ours vs TorchIO: mean |diff|"] = statistics.fmean(float(d.mean()) for d in diffs)
            for count in [*(f"{c} worker(s)" for c in workers), "in a fresh process"]:
                theirs = runs[f"release TorchIO processor, {count}"]
                for name in ("ours, on the fly", "ours, from the store"):
                    ratios = [t["cpu_s_per_volume"] / o["cpu_s_per_volume"]
                              for t, o in zip(theirs, runs[f"{name}, {count}"])]  # fmt: skip
                    agreement[f"{name} / TorchIO, {count}: CPU s ratio"] = statistics.median(ratios)
                    agreement[f"{name} / TorchIO, {count}: CPU s ratio, min-max"] = [min(ratios), max(ratios)]
        result[label] = {"volumes": [os.path.basename(v) for v in volumes], "store_build": build_stats,
                         "loader_items": len(items), "cases": cases, "agreement": agreement,
                         "worker_start_cpu_s": {str(count): _worker_start(count) for count in workers}}  # fmt: skip
        store_cpu = cases["ours, from the store, 1 worker(s)"]["cpu_s_per_volume"]
        result[label]["store_volumes_per_s_per_16_cores_estimate"] = 16 / store_cpu
    return result


# ------------------------------------------------------------------------------------------------ loader feeding


def bench_loader_feeding(
    datalist: str, directory: str | os.PathLike, iterations: int, workers: Iterable[int] = (1, 2)
) -> dict[str, Any]:
    """colipri_ct's demo workflow for ``iterations`` steps, on the fly vs from a store: s/iteration, data-wait share."""
    from monai.bundle import ConfigWorkflow

    from common.data.store import build

    configs = [str(COLIPRI_TRAIN), str(COLIPRI_DEMO)]
    store_dir = Path(directory) / "feeding_store"
    build(configs, datalist, str(store_dir), workers=max(workers))
    result: dict[str, Any] = {"workflow": "colipri_ct train.yaml + demo.yaml (CPU demo network)", "cases": {}}
    for source in ("on the fly", "from the store"):
        for count in workers:
            workflow = ConfigWorkflow(
                config_file=configs,
                meta_file=str(ROOT / "bundles" / "colipri_ct" / "configs" / "metadata.json"),
                workflow_type="train",
                bundle_root=str(Path(tempfile.mkdtemp(dir=directory))),
                dataset_dir=datalist,
                store_dir=str(store_dir) if source == "from the store" else None,
                cache_preprocessed=False,
                num_workers=count,
                max_epochs=1,
            )
            workflow.initialize()
            case = _feeding(workflow.parser.get_parsed_content("train#trainer"), iterations)
            case["batch_size"] = int(workflow.parser.get_parsed_content("batch_size"))
            result["cases"][f"{source}, {count} worker(s)"] = case
    return result


def _feeding(trainer: Any, iterations: int) -> dict[str, Any]:
    """Run ``trainer`` for ``iterations`` steps; time each wait for a batch."""
    from ignite.engine import Events

    waits: list[float] = []
    clock: dict[str, float] = {}
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: clock.update(t=time.perf_counter()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: waits.append(time.perf_counter() - clock["t"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), lambda e: e.terminate())
    stats, _ = _timed(trainer.run)
    steps = trainer.state.iteration
    return {
        **stats,
        "cpu_note": "this process and joined children; persistent DataLoader workers are not joined yet: not counted",
        "iterations": steps,
        "s_per_iteration": stats["wall_s"] / steps,
        "data_wait_share": sum(waits) / stats["wall_s"],
        "first_batch_wait_s": waits[0] if waits else None,
    }


# ------------------------------------------------------------------------------------------------ markdown


def _f(value: Any, digits: int = 3) -> str:
    if isinstance(value, (list, tuple)):
        return " - ".join(_f(v, digits) for v in value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| case | " + " | ".join(h for _, h in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        if "skipped" in row or "error" in row:
            lines.append(f"| {name} | " + (row.get("skipped") or row.get("error", "")) + " |" * len(columns))
        else:
            lines.append(f"| {name} | " + " | ".join(_f(row.get(k)) for k, _ in columns) + " |")
    return lines


def data_markdown(sections: dict[str, Any]) -> list[str]:
    """Markdown lines of the data sections present in ``sections``."""
    lines: list[str] = []
    if "decoding" in sections:
        sec = sections["decoding"]
        lines += ["", f"## gzip decoding (readers' backend: {sec.get('gzip_backend')})", ""]
        for volume, entry in sec.get("volumes", {}).items():
            lines += [f"`{volume}`: {entry['compressed_mb']:.1f} MB -> {entry['uncompressed_mb']:.1f} MB", ""]
            lines += _table(entry["cases"], [("cpu_s", "CPU s"), ("identical", "identical bytes"),
                                             ("identical_to_nibabel", "array = nibabel's"), ("load", "load avg")])  # fmt: skip
            lines.append("")
    if "store_format" in sections:
        sec = sections["store_format"]
        lines += ["", "## Store format (paper-preprocessed 192^3 float32 volumes)", ""]
        if "cases" in sec:
            lines.append(f"{len(sec['volumes'])} volumes, {sec['raw_mb']:.0f} MB raw.")
            lines += [""] + _table(sec["cases"], [("write_mb_per_cpu_s", "write MB/CPU s"),
                                                  ("read_volumes_per_cpu_s", "read volumes/CPU s"),
                                                  ("ratio", "ratio"), ("lossless", "lossless"), ("load", "load avg")])  # fmt: skip
    if "data_path" in sections:
        sec = sections["data_path"]
        lines += ["", "## Preprocessing incl. loading: on the fly vs store vs the release's TorchIO", ""]
        lines.append(str(sec.get("settings", sec.get("error", ""))))
        columns = [("volumes_per_s", "volumes/s (wall)"), ("cpu_s_per_volume", "CPU s/volume (median)"),
                   ("cpu_s_per_volume_min", "min"), ("cpu_s_per_volume_max", "max"), ("repeats", "repeats"),
                   ("load_before", "load before"), ("load_after", "load after")]  # fmt: skip
        for label, entry in sec.items():
            if not isinstance(entry, dict) or "cases" not in entry:
                continue
            build = entry["store_build"]
            lines += ["", f"### {label}: {', '.join(entry['volumes'])}", ""]
            lines.append(f"Store build ({build['workers']} workers): {build['wall_s']:.1f} s wall, "
                         f"{build['cpu_s']:.1f} CPU s, {build['size_mb']:.1f} MB, load {build['load_before']} -> "
                         f"{build['load_after']}.")  # fmt: skip
            lines.append(f"DataLoader cases: {entry['loader_items']} volumes per case (the inputs in turn).")
            lines += [""] + _table(entry["cases"], columns) + [""]
            starts = ", ".join(f"{n}: {_f(c)}" for n, c in entry["worker_start_cpu_s"].items())
            lines.append(f"* worker start (CPU s per DataLoader, by worker count; once per training run): {starts}")
            lines += [f"* {k}: {_f(v)}" for k, v in entry["agreement"].items()]
            estimate = entry["store_volumes_per_s_per_16_cores_estimate"]
            lines.append(f"* store volumes/s per 16-core node (16 / CPU s per volume, an estimate): {estimate:.0f}")
    if "loader_feeding" in sections:
        sec = sections["loader_feeding"]
        lines += ["", "## DataLoader feeding a training step", ""]
        if "cases" in sec:
            lines.append(sec["workflow"] + ".")
            lines += [""] + _table(sec["cases"], [("s_per_iteration", "s/iteration"),
                                                  ("data_wait_share", "data-wait share"),
                                                  ("first_batch_wait_s", "first batch s"),
                                                  ("cpu_s", "CPU s (trainer process)"),
                                                  ("load_before", "load before"), ("load_after", "load after")])  # fmt: skip
        else:
            lines.append(str(sec.get("skipped") or sec.get("error")))
    return lines
