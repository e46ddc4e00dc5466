"""Write a datalist from a dataset as published: ``python -m common.data.build <source> --root DIR --out FILE``.

Sources (one module each in :mod:`common.data.sources`; ``python -m common.data.build <source> --help`` lists the
knobs):

* ``ct_rate``: CT-RATE (``train_fixed/``, ``valid_fixed/``, reports, the 18 labels, metadata);
* ``mimic_cxr``: MIMIC-CXR-JPG with the MIMIC-CXR report files (official split, frontal views by default);
* ``chexpert_plus``: CheXpert Plus (its CSV of image paths and report sections);
* ``iu_xray``: IU X-ray (R2Gen-style ``annotation.json``, or the Indiana reports / projections CSVs);
* ``folder``: a folder of volumes or radiographs, an optional CSV of file -> report / labels / split, and an
  optional folder of image-only scans.

Each builder validates every record as it goes (with :mod:`common.data.validate`), shows a progress bar, and prints
what it wrote (per split, with and without report), what it skipped with the reason (the first few with file and
row), and the labels it found. ``--on_bad raise`` stops at the first problem instead. Example::

    python -m common.data.build ct_rate --root /data/CT-RATE/dataset --out /data/ct_rate/datalist.json
    python -m monai.bundle run --config_file bundles/colipri_ct/configs/train.yaml --dataset_dir /data/ct_rate
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from common.bundle_support import flag
from common.data.sources.chexpert_plus import build_chexpert_plus
from common.data.sources.ct_rate import build_ct_rate
from common.data.sources.folder import build_folder
from common.data.sources.iu_xray import build_iu_xray
from common.data.sources.mimic_cxr import build_mimic_cxr

__all__ = ["BUILDERS", "main"]

BUILDERS = {
    "ct_rate": build_ct_rate,
    "mimic_cxr": build_mimic_cxr,
    "chexpert_plus": build_chexpert_plus,
    "iu_xray": build_iu_xray,
    "folder": build_folder,
}


def _command(builder: Callable[..., Any]) -> Callable[..., None]:
    """``builder`` for fire: boolean knobs read with :func:`common.bundle_support.flag` (fire passes
    ``--image_only false`` as the text ``'false'``), the printed summary not returned (fire would print it again)."""
    parameters = inspect.signature(builder).parameters
    booleans = {name for name, p in parameters.items() if p.annotation in (bool, "bool")}

    @functools.wraps(builder)
    def run(*args: Any, **kwargs: Any) -> None:
        builder(*args, **{k: flag(v, k) if k in booleans else v for k, v in kwargs.items()})

    return run


def main() -> None:
    """The ``fire`` command line over :data:`BUILDERS`."""
    import fire

    fire.Fire({name: _command(builder) for name, builder in BUILDERS.items()})


if __name__ == "__main__":
    main()
