"""The dataset a bundle uses when the user gives none: the embedded chest phantoms, generated once into a cache.

``default_datalist(dataset_dir)`` returns ``dataset_dir``'s datalist when one is given; otherwise it generates the
embedded phantoms as a miniature CT-RATE and a miniature MIMIC-CXR-JPG and builds their datalists with the ``ct_rate``
and ``mimic_cxr`` builders (:mod:`common.data.phantom_published`), into ``$MEDVLP_CACHE/phantoms-v2.1`` (named after
:data:`~common.data.phantom_published.DATASET_VERSION`; default cache root ``~/.cache/medvlp``) the first time, and
returns the cached datalist afterwards. Generation writes into a temporary sibling folder that is renamed into place
only when complete, under a file lock (:class:`filelock.FileLock`), so concurrent processes (e.g. all ranks of a
``torchrun`` job) generate once and never see a half-written dataset. The generator is imported only when the
phantoms are asked for, so an inference bundle given its own data never loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from filelock import FileLock

from common.data.contract import DataContractError

__all__ = ["DEFAULT_SIZES", "default_cache_root", "default_datalist"]

DEFAULT_SIZES: dict[str, int] = {"num_train": 300, "num_image_only": 100, "num_val": 60, "num_test": 120}
_DATALIST_NAMES = ("datalist.json", "datalist_{dims}d.json")


def default_cache_root() -> Path:
    """``$MEDVLP_CACHE`` if set, else ``~/.cache/medvlp``."""
    root = os.environ.get("MEDVLP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "medvlp"


def default_datalist(
    dataset_dir: str | os.PathLike | None = None,
    dims: int = 3,
    *,
    cache_root: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int = 1,
    **sizes: int,
) -> str:
    """Path of the datalist to train on: the user's, or the embedded phantoms' (generated on first use, in the
    published layouts, read by the builders).

    Args:
        dataset_dir: a folder holding ``datalist.json`` (or ``datalist_{dims}d.json``), or a datalist file itself.
            None or empty: use the phantoms.
        dims: 3 for CT volumes, 2 for radiographs.
        cache_root: where phantom datasets are cached; default :func:`default_cache_root`.
        seed: phantom seed.
        num_workers: processes used if the phantoms have to be generated.
        **sizes: override :data:`DEFAULT_SIZES` (``num_train``, ``num_image_only``, ``num_val``, ``num_test``);
            non-default sizes or seeds are cached in their own folder.

    Returns:
        Absolute path of a datalist JSON file.

    Raises:
        DataContractError: ``dataset_dir`` is given but holds no datalist.
        ValueError: bad ``dims`` or unknown size names.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if dataset_dir not in (None, ""):
        return _user_datalist(Path(dataset_dir), dims)
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"unknown dataset sizes {sorted(unknown)}; expected some of {list(DEFAULT_SIZES)}")
    published = _phantom_generator()
    sizes = {**DEFAULT_SIZES, **sizes}
    name = published.DATASET_VERSION
    if sizes != DEFAULT_SIZES or seed != 0:
        name += "-" + "-".join(str(sizes[k]) for k in DEFAULT_SIZES) + f"-seed{seed}"
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    target = root / name
    datalist = target / f"datalist_{dims}d.json"
    if _complete(target):
        return str(datalist.resolve())
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{name}.lock"):
        if not _complete(target):  # another process may have finished while we waited
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
            try:
                published.write_published_phantoms(staging, seed=seed, num_workers=num_workers, **sizes)
                _publish(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return str(datalist.resolve())


def _user_datalist(path: Path, dims: int) -> str:
    if path.is_file():
        return str(path.resolve())
    if not path.is_dir():
        raise DataContractError(path, "dataset_dir does not exist")
    for pattern in _DATALIST_NAMES:
        candidate = path / pattern.format(dims=dims)
        if candidate.is_file():
            return str(candidate.resolve())
    names = " or ".join(p.format(dims=dims) for p in _DATALIST_NAMES)
    raise DataContractError(path, f"no {names} in dataset_dir (see common/data/contract.py for the format)")


def _phantom_generator() -> ModuleType:
    """:mod:`common.data.phantom_published`, imported on demand; an exported inference bundle ships without it.

    Raises:
        DataContractError: the generator is not installed (e.g. a Model Zoo inference export) and no data were given.
    """
    try:
        from common.data import phantom_published
    except ImportError as err:
        raise DataContractError(
            "dataset_dir", "no dataset_dir given, and the embedded phantom generator is not part of this installation"
        ) from err
    return phantom_published


def _complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished phantom dataset of this dataset version."""
    version = _phantom_generator().DATASET_VERSION
    manifest = folder / "phantoms.json"
    if not (manifest.is_file() and (folder / "datalist_3d.json").is_file() and (folder / "datalist_2d.json").is_file()):
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("dataset") == version
    except (OSError, json.JSONDecodeError):
        return False


def _publish(staging: Path, target: Path) -> None:
    """Atomically move a finished dataset into place; if another process won the race, keep theirs."""
    try:
        os.rename(staging, target)
    except OSError:
        if not _complete(target):
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            os.rename(target, stale)  # an incomplete leftover (e.g. a killed run that used another tool)
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(staging, target)


#: image files an inference folder may hold
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".dcm", ".png", ".jpg", ".jpeg")


def inference_records(dataset_dir: str | os.PathLike | None = None, dims: int = 3, section: str = "test") -> list[dict]:
    """Records to run inference on: every image file in ``dataset_dir`` (sorted), a datalist's ``section``, or
    (``None``) the ``section`` of the embedded phantom dataset."""
    from common.data.contract import load_datalist

    if dataset_dir is None or Path(dataset_dir).is_file():
        return load_datalist(default_datalist(dataset_dir, dims=dims), section)
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise DataContractError(folder, "dataset_dir does not exist")
    for name in ("datalist.json", f"datalist_{dims}d.json"):
        if (folder / name).is_file():
            return load_datalist(folder / name, section)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataContractError(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) and no datalist.json")
    return [{"image": str(p)} for p in files]
