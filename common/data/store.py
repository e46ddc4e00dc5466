"""Preprocessed volume store: a bundle's deterministic image preprocessing applied once, read back at training time.

``python -m common.data.store build --config_file <bundle train.yaml> --datalist D --out S`` splits the bundle's
``train#preprocessing`` (a ``Compose``) where :class:`~common.data.dataset.PretrainingDataset`'s RAM cache splits it
(:func:`~common.data.dataset.first_random_index`): the deterministic prefix runs here once per record, the random
suffix stays for training. The prefix's array outputs (``image``, and masks where a bundle loads them: every value
with a channel and at least two spatial axes) are written, losslessly, one entry per record; the text transforms of
the prefix are cheap and are re-run at training time. Training takes the store with the ``store_dir`` knob
(:func:`store_preprocessing`): the prefix transforms that act on the stored keys are replaced by
:class:`LoadStoredd`, everything else runs as before, so a sample is the same as on the fly (bit for bit; tested).

**Format.** One folder per entry, ``entries/<id>/<key>.b2nd``: a Blosc2 NDArray (``blosc2``, C-Blosc2's Python
API), float32 as computed, chunked per 64 slices, Zstd level 5 with byte shuffle (lossless), opened memory-mapped
(``mmap_mode="r"``); the affine and the source path are in its variable-length metadata. ``store.json`` holds the
format version, the stored keys, the image preprocessing settings and their hash. The choice over zarr (measured with
``scripts/benchmark.py --sections store_format``: the same read speed and ratio) is the single file per key, which
makes an entry a folder that appears atomically (``os.replace``) and keeps 50,000 entries at 50,000 folders.

**Settings.** The store records the ``image`` section of the config's ``preprocessing_record``
(:mod:`common.engines.preprocessing_record`: the factory and every argument that shapes the values, defaults applied;
the record checkpoints carry) and its SHA-256. Training (and a resumed build) with other settings is refused:
:class:`StoreMismatchError` names both hashes and every differing setting with both values. The text settings are
not part of it: the text transforms run at training time.

**Building** is parallel (``workers`` processes, each parsing the config itself), shows a progress bar, resumes after
a kill (finished entries are kept, half-written ``.partial-*`` folders are removed and rebuilt) and names unreadable
inputs: they are counted, listed in ``skipped.csv`` (image, problem) and printed; at training time a record without
an entry is a :class:`~common.data.contract.DataContractError` naming it (``on_bad_sample: skip`` skips it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from common.data.contract import DataContractError, error_cause, load_datalist

__all__ = [
    "STORE_FORMAT",
    "LoadStoredd",
    "StoreMismatchError",
    "VolumeStore",
    "build",
    "entry_id",
    "signature_hash",
    "store_preprocessing",
    "store_problems",
]

#: Version of the on-disk layout (``store.json`` ``format``).
STORE_FORMAT = 1
MANIFEST = "store.json"
SKIPPED = "skipped.csv"
ENTRIES = "entries"
_PARTIAL = ".partial-"
_SUFFIX = ".b2nd"
#: Blosc2 settings of every stored array: lossless Zstd with byte shuffle, 64-slice chunks (measured in the benchmark).
_CLEVEL = 5
_CHUNK_SLICES = 64


class StoreMismatchError(DataContractError):
    """The store was built with other preprocessing settings than the configuration that reads it."""


# ------------------------------------------------------------------------------------------------- signature


def _acts_on(transform: Any, keys: Iterable[Hashable]) -> bool:
    return isinstance(transform, MapTransform) and bool(set(transform.keys) & set(keys))


def _image_settings(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``image`` section of a config's ``preprocessing_record`` (what the store's arrays depend on)."""
    if not isinstance(record, Mapping) or not isinstance(record.get("image"), Mapping):
        raise TypeError(
            "the config defines no preprocessing_record with an 'image' section "
            "(common.engines.preprocessing_record.describe_preprocessing); the store cannot check its settings"
        )
    return dict(record["image"])


def signature_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the image settings' canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------- entries


def entry_id(image: str | os.PathLike) -> str:
    """The entry name of a record: a hash of its image's real path (relative paths, symlinks: the same entry)."""
    return hashlib.sha256(os.path.realpath(image).encode()).hexdigest()[:24]


def _image_of(record: Mapping[str, Any]) -> str:
    image = record.get("image") if isinstance(record, Mapping) else None
    if not isinstance(image, (str, os.PathLike)) or not str(image):
        raise DataContractError(None, f"record has no image path ({str(record)[:200]})")
    return str(image)


class VolumeStore:
    """A built store: its manifest, entries and skip list.

    Raises:
        DataContractError: the folder holds no readable ``store.json`` of a known format.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise DataContractError(self.root, f"not a volume store: {MANIFEST} is missing (build it first)")
        try:
            self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataContractError(manifest, f"unreadable store manifest ({err})") from err
        if self.manifest.get("format") != STORE_FORMAT:
            raise DataContractError(
                manifest, f"store format {self.manifest.get('format')!r}; this code reads format {STORE_FORMAT}"
            )
        self.keys: list[str] = list(self.manifest["keys"])
        self.hash: str = self.manifest["hash"]
        self.settings: dict[str, Any] = self.manifest["preprocessing"]

    def entry_dir(self, image: str | os.PathLike) -> Path:
        return self.root / ENTRIES / entry_id(image)

    def has(self, image: str | os.PathLike) -> bool:
        return self.entry_dir(image).is_dir()

    def skipped(self) -> dict[str, str]:
        """``{image: problem}`` of the inputs the build could not read."""
        path = self.root / SKIPPED
        if not path.is_file():
            return {}
        with open(path, newline="", encoding="utf-8") as f:
            return {row["image"]: row["problem"] for row in csv.DictReader(f)}

    def check(self, record: Mapping[str, Any] | None) -> None:
        """Refuse a configuration whose ``preprocessing_record`` image settings differ from the store's."""
        from common.engines.preprocessing_record import preprocessing_differences

        settings = _image_settings(record)
        wanted = signature_hash(settings)
        if wanted != self.hash:
            differences = preprocessing_differences({"image": self.settings}, {"image": settings})
            listed = "; ".join(d.replace(": trained with ", ": store built with ") for d in differences)
            raise StoreMismatchError(
                self.root,
                f"built with other preprocessing settings (store hash {self.hash[:16]}, this configuration "
                f"{wanted[:16]}): {listed or 'settings differ'}; rebuild the store or use its settings",
            )

    def read(self, image: str | os.PathLike) -> dict[str, MetaTensor]:
        """The stored arrays of the record whose image is ``image``, as ``MetaTensor`` with their affines."""
        import blosc2

        folder = self.entry_dir(image)
        if not folder.is_dir():
            problem = self.skipped().get(str(image))
            reason = f"the build could not read it: {problem}" if problem else "it was not in the datalist built"
            raise DataContractError(image, f"no entry in the volume store {self.root} ({reason})")
        out = {}
        for key in self.keys:
            try:
                array = blosc2.open(str(folder / f"{key}{_SUFFIX}"), mode="r", mmap_mode="r")
                data, meta = array[:], array.schunk.vlmeta
                affine = torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64))
            except (OSError, RuntimeError, KeyError, ValueError) as err:
                raise DataContractError(folder / f"{key}{_SUFFIX}", f"unreadable store entry ({err})") from err
            out[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(data)), affine=affine)
        return out


def _write_entry(root: Path, image: str, sample: Mapping[Hashable, Any], keys: Sequence[str]) -> None:
    """Write one record's arrays into ``.partial-<id>`` and rename it to its entry folder (atomic)."""
    import blosc2

    final = root / ENTRIES / entry_id(image)
    partial = root / ENTRIES / f"{_PARTIAL}{final.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for key in keys:
        value = sample[key]
        data = np.ascontiguousarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)
        chunks = (*data.shape[:-1], min(_CHUNK_SLICES, data.shape[-1]))
        cparams = {"codec": blosc2.Codec.ZSTD, "clevel": _CLEVEL, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}
        array = blosc2.asarray(data, urlpath=str(partial / f"{key}{_SUFFIX}"), mode="w", chunks=chunks, cparams=cparams)
        affine = value.affine if isinstance(value, MetaTensor) else torch.eye(4)
        array.schunk.vlmeta["affine"] = np.asarray(affine, dtype=np.float64).tolist()
        array.schunk.vlmeta["image"] = image
    os.replace(partial, final)


# ------------------------------------------------------------------------------------------------- training side


class LoadStoredd(MapTransform):
    """Replace a record's image path by its stored arrays (``keys``, as ``MetaTensor``) from a :class:`VolumeStore`.

    Args:
        keys: the stored keys (the store's ``keys``).
        store_dir: the store folder.
    """

    def __init__(self, keys: KeysCollection, store_dir: str | os.PathLike) -> None:
        super().__init__(keys)
        self.store = VolumeStore(store_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d.update(self.store.read(_image_of(d)))
        return d


def store_preprocessing(
    preprocessing: Compose, store_dir: str | os.PathLike | None, record: Mapping[str, Any] | None = None
) -> Compose:
    """The training transform reading the deterministic image preprocessing from a store (``None``: unchanged).

    The prefix transforms of ``preprocessing`` that act on the store's keys are replaced by :class:`LoadStoredd`;
    the other prefix transforms (text, labels) and the random suffix run as before. ``record`` is the config's
    ``preprocessing_record``; its image settings must be the store's.

    Raises:
        StoreMismatchError: the store was built with other settings (both hashes and the differing keys named).
        ValueError: a prefix transform that is not a dictionary transform (its keys cannot be told).
    """
    if store_dir is None or str(store_dir) in ("", "None", "null"):
        return preprocessing
    from common.data.dataset import first_random_index

    store = VolumeStore(store_dir)
    transforms = list(preprocessing.transforms)
    first = first_random_index(preprocessing)
    prefix = transforms[:first]
    opaque = [type(t).__qualname__ for t in prefix if not isinstance(t, MapTransform)]
    if opaque:
        raise ValueError(f"cannot tell which keys these preprocessing transforms act on: {opaque}")
    store.check(record)
    kept = [t for t in prefix if not _acts_on(t, store.keys)]
    return Compose(
        [LoadStoredd(store.keys, store.root), *kept, *transforms[first:]],
        map_items=preprocessing.map_items,
        unpack_items=preprocessing.unpack_items,
        lazy=preprocessing.lazy,
        overrides=preprocessing.overrides,
    )


def store_problems(store_dir: str | os.PathLike, images: Sequence[str]) -> list[tuple[int | None, str, str]]:
    """``(record index or None, source, problem)`` for a store that cannot serve records with these images."""
    try:
        store = VolumeStore(store_dir)
    except DataContractError as err:
        return [(None, str(err.source), err.problem)]
    skipped = store.skipped()
    out = []
    for index, image in enumerate(images):
        if not store.has(image):
            why = f"the build could not read it: {skipped[image]}" if image in skipped else "not built"
            out.append((index, image, f"no entry in the volume store {store.root} ({why})"))
    return out


# ------------------------------------------------------------------------------------------------- building

_worker: dict[str, Any] = {}


def _parse(config_file: str | Sequence[str], overrides: Mapping[str, Any]) -> tuple[Compose, dict[str, Any]]:
    """The config's ``train#preprocessing`` and the image settings of its ``preprocessing_record``."""
    from monai.bundle import ConfigParser

    from common.engines.preprocessing_record import record_from_config

    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(dict(overrides))
    preprocessing = parser.get_parsed_content("train#preprocessing")
    if type(preprocessing) is not Compose:
        raise ValueError(f"train#preprocessing must be a Compose, got {type(preprocessing).__name__}")
    return preprocessing, _image_settings(record_from_config(parser))


def _init_worker(config_file: str | Sequence[str], overrides: Mapping[str, Any], root: str) -> None:
    from common.data.dataset import first_random_index

    torch.set_num_threads(1)
    preprocessing, _ = _parse(config_file, overrides)
    _worker.update(prefix=Compose(preprocessing.transforms[: first_random_index(preprocessing)]), root=Path(root))


def _array_keys(sample: Mapping[Hashable, Any]) -> list[str]:
    """Keys holding images: arrays with a channel and at least two spatial axes."""
    return sorted(str(k) for k, v in sample.items() if isinstance(v, (torch.Tensor, np.ndarray)) and np.ndim(v) >= 3)


def _build_one(record: Mapping[str, Any]) -> tuple[str, list[str] | None, str | None]:
    """Preprocess and write one record: ``(image, stored keys, None)`` or ``(image, None, problem)``."""
    from common.data.dataset import BAD_SAMPLE_ERRORS

    image = _image_of(record)
    try:
        sample = _worker["prefix"](dict(record))
    except Exception as err:  # classified: unreadable inputs are skipped and named, bugs raise
        cause = error_cause(err, BAD_SAMPLE_ERRORS)
        if cause is None:
            raise
        problem = cause.problem if isinstance(cause, DataContractError) else f"{type(cause).__name__}: {cause}"
        return image, None, problem
    keys = _array_keys(sample)
    _write_entry(_worker["root"], image, sample, keys)
    return image, keys, None


def _manifest(keys: list[str], settings: Mapping[str, Any], config_file: Any, counts: Mapping[str, int]) -> dict:
    import blosc2

    return {
        "format": STORE_FORMAT,
        "keys": keys,
        "hash": signature_hash(settings),
        "preprocessing": dict(settings),
        "config_file": config_file,
        "library": f"blosc2 {blosc2.__version__}",
        "codec": f"zstd clevel {_CLEVEL}, shuffle, chunks of {_CHUNK_SLICES} slices",
        "counts": dict(counts),
    }


def _write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _progress(items: Iterable[Any], total: int) -> Iterable[Any]:
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="store", unit="volume", file=sys.stderr)


def build(
    config_file: str | Sequence[str],
    datalist: str,
    out: str,
    workers: int = 1,
    split: str = "training",
    **overrides: Any,
) -> dict[str, Any]:
    """Apply a bundle's deterministic preprocessing to every record of ``datalist`` once and store the result.

    Args:
        config_file: the bundle's ``train.yaml`` (or a list of configs, e.g. with ``demo.yaml``).
        datalist: the datalist JSON.
        out: the store folder (created; an interrupted build there resumes).
        workers: processes preprocessing in parallel (1: in this process).
        split: the datalist section to build.
        overrides: config ids and values, e.g. ``--pixdim 1.5`` (the store records the resulting settings).

    Returns:
        Counts: ``built``, ``reused`` (finished before a resume), ``skipped`` (unreadable, listed in ``skipped.csv``).

    Raises:
        StoreMismatchError: ``out`` holds a store built with other settings.
    """
    root = Path(out)
    (root / ENTRIES).mkdir(parents=True, exist_ok=True)
    for partial in (root / ENTRIES).glob(f"{_PARTIAL}*"):  # half-written by a killed build: rebuilt below
        shutil.rmtree(partial, ignore_errors=True)
    records = load_datalist(datalist, split)
    _, settings = _parse(config_file, overrides)
    previous = VolumeStore(root) if (root / MANIFEST).is_file() else None
    todo = [r for r in records if not (root / ENTRIES / entry_id(_image_of(r))).is_dir()]
    counts = {"records": len(records), "reused": len(records) - len(todo), "built": 0, "skipped": 0}
    keys: list[str] | None = previous.keys if previous is not None else None
    skipped: dict[str, str] = {}

    def finish(image: str, built_keys: list[str] | None, problem: str | None) -> None:
        nonlocal keys
        if problem is not None:
            skipped[image] = problem
            return
        if keys is None:
            keys = built_keys
            _write_json(root / MANIFEST, _manifest(keys, settings, config_file, counts))
        elif built_keys != keys:
            raise DataContractError(image, f"preprocessing produced arrays {built_keys}, the store holds {keys}")
        counts["built"] += 1

    if previous is not None:
        previous.check({"image": settings})
    initargs = (config_file, overrides, str(root))
    if workers <= 1:
        _init_worker(*initargs)
        for record in _progress(todo, len(todo)):
            finish(*_build_one(record))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=initargs) as pool:
            for result in _progress(pool.map(_build_one, todo, chunksize=1), len(todo)):
                finish(*result)
    counts["skipped"] = len(skipped)
    with open(root / SKIPPED, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "problem"])
        writer.writerows(sorted(skipped.items()))
    if keys is not None:
        _write_json(root / MANIFEST, _manifest(keys, settings, config_file, counts))
    print(
        f"{root}: {counts['built']} built, {counts['reused']} already there, {counts['skipped']} unreadable "
        f"skipped" + (f" (listed in {root / SKIPPED})" if skipped else "")
    )
    for image, problem in sorted(skipped.items())[:10]:
        print(f"  skipped {image}: {problem}")
    return counts


def _cli_build(*args: Any, **kwargs: Any) -> None:
    build(*args, **kwargs)  # counts are printed; returning them would make fire print them again


def cli() -> None:
    """``medvlp-store`` / ``python -m common.data.store``: :func:`build` on the command line."""
    import functools

    import fire

    fire.Fire({"build": functools.wraps(build)(_cli_build)})


if __name__ == "__main__":
    cli()
