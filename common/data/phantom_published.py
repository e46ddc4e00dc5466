"""The embedded phantoms as published datasets: a miniature CT-RATE and a miniature MIMIC-CXR-JPG, read back by the
datalist builders, so the default dataset takes the path a user's CT-RATE or MIMIC-CXR takes.

:func:`write_published_phantoms` generates the phantoms (:func:`common.data.phantom.generate_dataset`), moves them into
the two layouts and builds the datalists with :func:`common.data.sources.ct_rate.build_ct_rate` and
:func:`common.data.sources.mimic_cxr.build_mimic_cxr`::

    OUT_DIR/ct_rate/          train_fixed/, valid_fixed/, radiology_text_reports/, multi_abnormality_labels/,
                              metadata/ (:mod:`common.data.sources.ct_rate_layout`); side files the CT-RATE release
                              does not have: masks/ (lesion maps, ``--masks``) and splits.csv (``--splits``)
    OUT_DIR/mimic_cxr/        files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg and sXXXXXXXX.txt, the metadata, CheXpert
                              and split CSVs (:mod:`common.data.sources.mimic_cxr_layout`); side folder masks/
                              (``--masks``); the labels CSV adds the three MIMIC-CXR-LT columns ``--extra_labels``
    OUT_DIR/datalist_3d.json  built by ``ct_rate`` (--splits, --masks; no validation patients drawn)
    OUT_DIR/datalist_2d.json  built by ``mimic_cxr`` (--masks, --extra_labels)
    OUT_DIR/cases.json        case id -> CT volume name, radiograph dicom_id, and the phantom's record ``meta``
                              (findings details, study settings, CT labels of the radiograph), which no layout holds
    OUT_DIR/phantoms.json     the generator's manifest, plus ``dataset`` (:data:`DATASET_VERSION`)

The records equal the phantom datalists' (:func:`~common.data.phantom.generate_dataset`) section by section and in
order: the same volumes (moved, byte for byte), reports and labels, masks on the paired records; image-only records
are CT-RATE volumes without a report row and MIMIC studies without a report file (no ``report``: ``has_report``
False), their labels in ``meta`` as before. What changes: the radiographs are 8-bit JPEG (quality 95) as in
MIMIC-CXR-JPG instead of 16-bit PNG, and ``meta`` is the builders' (the phantom ``meta`` is in ``cases.json``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from common.data.contract import DataContractError
from common.data.phantom import GENERATOR_VERSION, generate_dataset
from common.data.radiograph_findings import CXR_FINDINGS
from common.data.sources.ct_rate import build_ct_rate
from common.data.sources.ct_rate_layout import write_ct_rate_layout
from common.data.sources.mimic_cxr import CHEXPERT_LABELS, build_mimic_cxr
from common.data.sources.mimic_cxr_layout import write_mimic_cxr_layout

__all__ = ["DATASET_VERSION", "EXTRA_LABELS", "build_published_datalists", "write_published_phantoms"]

#: the default dataset's version: the ``phantoms-v2`` cases in the published layouts (the cache folder's name)
DATASET_VERSION = f"{GENERATOR_VERSION}.1"
#: radiograph label columns beyond the 14 CheXpert ones (MIMIC-CXR-LT names)
EXTRA_LABELS: tuple[str, ...] = tuple(f.name for f in CXR_FINDINGS if f.name not in CHEXPERT_LABELS)
_NATIVE = ".phantoms"  # where the phantoms are generated before they are moved into the layouts


def build_published_datalists(out_dir: str | os.PathLike) -> dict[int, Path]:
    """Build ``datalist_3d.json`` and ``datalist_2d.json`` of ``out_dir`` from its two layouts with the builders.

    Raises:
        DataContractError: a builder skipped a record (the embedded data must build cleanly).
    """
    out = Path(out_dir)
    ct, cxr = out / "ct_rate", out / "mimic_cxr"
    summaries = {
        3: build_ct_rate(ct, out / "datalist_3d.json", splits=str(ct / "splits.csv"), masks=str(ct / "masks"),
                         val_fraction=0.0, quiet=True),
        2: build_mimic_cxr(cxr, out / "datalist_2d.json", masks=str(cxr / "masks"), extra_labels=EXTRA_LABELS,
                           quiet=True),
    }  # fmt: skip
    for dims, summary in summaries.items():
        if summary.skipped:
            raise DataContractError(
                summary.out, f"the embedded phantoms did not build cleanly: {dict(summary.skipped)}"
            )
        content = json.loads(summary.out.read_text(encoding="utf-8"))
        source = "miniature CT-RATE" if dims == 3 else "miniature MIMIC-CXR-JPG"
        content["name"] = f"{DATASET_VERSION} {'CT' if dims == 3 else 'radiograph (DRR)'}"
        content["description"] = f"Embedded chest phantoms as a {source}, read by the builder; {content['description']}"
        content["description"] = content["description"].replace(str(out.resolve()), DATASET_VERSION)
        summary.out.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    return {dims: summary.out for dims, summary in summaries.items()}


def _cases(native: Path, out: Path) -> dict[str, dict]:
    """``{case id: {ct_volume, cxr_dicom_id, meta}}`` from the layouts' ``sources.json`` and the phantom datalists."""
    cases: dict[str, dict] = {}
    for dims, layout, key, modality in ((3, "ct_rate", "ct_volume", "ct"), (2, "mimic_cxr", "cxr_dicom_id", "cxr")):
        names = {source: name for name, source in json.loads((out / layout / "sources.json").read_text()).items()}
        for section in ("training", "validation", "test"):
            for record in json.loads((native / f"datalist_{dims}d.json").read_text())[section]:
                meta = dict(record["meta"])
                meta.pop("mask", None)
                case = cases.setdefault(meta["case_id"], {})
                case[key] = names[record["image"]]
                case.setdefault("meta", {})[modality] = meta
    return cases


def write_published_phantoms(
    out_dir: str | os.PathLike, seed: int = 0, image_size_2d: int = 256, num_workers: int = 1, **sizes: int
) -> Path:
    """Generate the phantoms into the CT-RATE and MIMIC-CXR-JPG layouts under ``out_dir`` and build their datalists.

    Args:
        out_dir: the dataset folder (module docstring: its layout).
        seed, image_size_2d, num_workers: as :func:`common.data.phantom.generate_dataset`.
        **sizes: ``num_train``, ``num_image_only``, ``num_val``, ``num_test`` of
            :func:`~common.data.phantom.generate_dataset` (its defaults where left out).

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    native = out / _NATIVE
    generate_dataset(native, seed=seed, image_size_2d=image_size_2d, num_workers=num_workers, **sizes)
    write_ct_rate_layout(native / "datalist_3d.json", out / "ct_rate", files="move")
    write_mimic_cxr_layout(native / "datalist_2d.json", out / "mimic_cxr", files="move", extra_labels=EXTRA_LABELS)
    cases = _cases(native, out)
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n", encoding="utf-8")
    build_published_datalists(out)
    manifest = json.loads((native / "phantoms.json").read_text(encoding="utf-8"))
    manifest["dataset"] = DATASET_VERSION
    manifest["layouts"] = {"3": "ct_rate (miniature CT-RATE)", "2": "mimic_cxr (miniature MIMIC-CXR-JPG, 8-bit JPEG)"}
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(native)
    return out


if __name__ == "__main__":
    import fire

    fire.Fire(write_published_phantoms)
