"""A generated adversarial suite (hypothesis, derandomised so CI is reproducible): header fields, dtypes, shapes,
byte mutations, report strings, label dicts and datalist structures, through the readers, the validator, the
text and label transforms, a training step and inference.

Every property is the collection's contract: an input is either read correctly or refused with a
``DataContractError`` naming it (never another exception type, never silently), and memory stays bounded by the
file, not by what its header claims.
"""

from __future__ import annotations

import gzip
import json
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from monai.transforms import Compose, Resized, SelectItemsd
from PIL import Image
from torch.utils.data import DataLoader

from common.data.contract import DataContractError
from common.data.dataset import InferenceDataset, PretrainingDataset, pretraining_collate
from common.data.findings import FINDING_KEYS
from common.data.readers import LoadVolumed, read_radiograph, read_volume
from common.data.validate import _label_problems, _report_problems, validate_datalist
from common.transforms.labels import LabelVectord
from common.transforms.text import CleanReportd, EnsureReportd, report_has_words

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning", "ignore::UserWarning"),
]

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MIB = 2**20


def _outcome(call: Callable[[], Any], path: Path, stored_bytes: int) -> Any:
    """Run a reader: it returns, or raises a DataContractError naming ``path``; its peak allocation stays within a
    fixed margin plus a small multiple of the bytes the file really holds."""
    tracemalloc.start()
    try:
        result = call()
    except DataContractError as err:
        assert err.source is not None and Path(err.source) == path, err
        event(f"refused: {err.problem.split('(')[0].split(':')[0][:48]}")  # --hypothesis-show-statistics
        result = None
    else:
        event("read")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 48 * MIB + 24 * stored_bytes, f"{peak / MIB:.0f} MiB for {stored_bytes} stored bytes"
    return result


# ---------------------------------------------------------------------------------------------------- NIfTI headers
DATATYPE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
ODD_DATATYPES = {32: 8, 128: 3, 1792: 16, 2304: 4, 9999: 4}  # complex64, RGB24, complex128, RGBA32, unknown
ODD_FLOATS = [0.0, -1.0, float("nan"), float("inf"), 1e30, 1e-30]


def _mostly(good: Any, odd: list) -> st.SearchStrategy:
    """``good`` seven times in eight, else one of ``odd``: hostile, yet often enough a readable file."""
    return st.integers(0, 7).flatmap(lambda k: st.just(good) if k else st.sampled_from(odd))


@st.composite
def nifti_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """Raw NIfTI-1 bytes with hostile header fields and a data block of any length; returns (file bytes, stored)."""
    header = nib.Nifti1Header()
    ndim = draw(_mostly(3, [1, 2, 4, 5]))
    dims = [draw(st.integers(2, 9).flatmap(lambda d: _mostly(d, [0, 1, 30000, 32767]))) for _ in range(ndim)]
    datatype = draw(st.sampled_from(sorted(DATATYPE_BYTES)).flatmap(lambda t: _mostly(t, sorted(ODD_DATATYPES))))
    itemsize = {**DATATYPE_BYTES, **ODD_DATATYPES}[datatype]
    header["dim"] = [ndim, *dims, *([1] * (7 - ndim))]
    header["datatype"] = datatype
    header["bitpix"] = draw(_mostly(itemsize * 8, [8, 16, 128]))
    header["pixdim"] = [1.0, *(draw(_mostly(abs(0.5 + k), ODD_FLOATS)) for k in range(3)), 1, 1, 1, 1]
    header["vox_offset"] = draw(_mostly(352.0, [0.0, 348.0, 1000.0, 1e9]))
    header["scl_slope"] = draw(_mostly(1.0, [float("nan"), 0.0, -2.0, float("inf"), 1e38]))
    header["scl_inter"] = draw(_mostly(0.0, [-1024.0, float("nan"), 1e38]))
    header["qform_code"], header["sform_code"] = draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([0, 1, 2]))
    header["srow_x"] = [draw(_mostly(1.0, ODD_FLOATS)), 0, 0, 0]
    header["srow_y"] = [0, 1, 0, 0]
    header["srow_z"] = [0, 0, draw(_mostly(1.0, [0.0, float("nan")])), 0]
    voxels = int(np.prod(dims, dtype=np.int64))
    wanted = min(voxels * itemsize, 1 << 16)
    length = draw(_mostly(wanted, [0, wanted // 2, wanted * 2, 7]))
    seed = draw(st.binary(min_size=8, max_size=64))
    data = (seed * (length // len(seed) + 1))[:length]
    block = bytes(header.binaryblock) + b"\0" * 4 + data
    return block, len(block)


@settings(SETTINGS, max_examples=120)
@given(file=nifti_files(), compress=st.sampled_from(["none", "gzip", "cut_gzip"]))
def test_nifti_header_fuzz(tmp_path_factory, file: tuple[bytes, int], compress: str) -> None:
    block, stored = file
    folder = tmp_path_factory.mktemp("nii")
    path = folder / ("v.nii" if compress == "none" else "v.nii.gz")
    packed = block if compress == "none" else gzip.compress(block)
    path.write_bytes(packed[: len(packed) // 2] if compress == "cut_gzip" else packed)
    result = _outcome(lambda: read_volume(path), path, stored)
    if result is not None:
        array, affine = result
        assert array.dtype == np.float32 and array.ndim == 3 and np.isfinite(array).all()
        assert np.isfinite(affine).all()


# ----------------------------------------------------------------------------------------------- byte mutations
def _valid_files(folder: Path, write_dicom) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    volume = (rng.normal(size=(8, 9, 10)) * 300 - 300).astype(np.int16)
    files = {
        "nii": folder / "v.nii",
        "nii.gz": folder / "v.nii.gz",
        "mha": folder / "v.mha",
        "nrrd": folder / "v.nrrd",
        "png": folder / "x.png",
        "dcm": folder / "x.dcm",
    }
    nib.save(nib.Nifti1Image(volume, np.eye(4)), files["nii"])
    nib.save(nib.Nifti1Image(volume, np.eye(4)), files["nii.gz"])
    sitk.WriteImage(sitk.GetImageFromArray(volume.transpose(2, 1, 0).copy()), str(files["mha"]))
    sitk.WriteImage(sitk.GetImageFromArray(volume.transpose(2, 1, 0).copy()), str(files["nrrd"]), useCompression=True)
    Image.fromarray(rng.integers(0, 255, size=(12, 14)).astype(np.uint8)).save(files["png"])
    write_dicom(files["dcm"], rng.integers(0, 4000, size=(12, 14)).astype(np.uint16), modality="DX")
    return files


@settings(SETTINGS, max_examples=150)
@given(
    kind=st.sampled_from(["nii", "nii.gz", "mha", "nrrd", "png", "dcm"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    keep=st.one_of(st.just(1.0), st.floats(0, 1)),
)
def test_byte_mutations(tmp_path_factory, write_dicom, kind: str, flips: list, keep: float) -> None:
    folder = tmp_path_factory.mktemp("mut")
    source = _valid_files(folder, write_dicom)[kind]
    raw = bytearray(source.read_bytes())
    for where, value in flips:
        raw[int(where * len(raw))] = value
    raw = raw[: max(1, int(len(raw) * keep))]
    path = folder / f"mutated.{kind}"
    path.write_bytes(bytes(raw))
    stored = len(raw) if not kind.endswith("gz") else len(gzip.decompress(source.read_bytes()))
    reader = read_radiograph if kind in ("png", "dcm") else read_volume
    result = _outcome(lambda: reader(path), path, max(stored, len(raw)))
    if result is not None:
        assert result[0].dtype == np.float32 and np.isfinite(result[0]).all()


# ----------------------------------------------------------------------------------------- reports and labels
REPORT_TOKENS = st.sampled_from(
    ["FINDINGS:", "IMPRESSION:", "Impression", "...", ",", " - ", "XXXX", "___", "[** **]", "\n", "\n\n", " ", "()",
     "•", "\u200b", "\x00", "\x07", "normal", "No effusion.", "5 mm", "Ⅳ", "é", "😀", '"', "?!"]
)  # fmt: skip
REPORTS = st.one_of(st.text(max_size=40), st.lists(REPORT_TOKENS, max_size=8).map("".join))


@settings(SETTINGS, max_examples=400)
@given(report=st.one_of(REPORTS, st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2)))
def test_reports_are_paired_with_words_image_only_or_named(report: Any) -> None:
    record = {"image": "/data/case.nii.gz", "report": report}
    pipeline = Compose([EnsureReportd(), CleanReportd()], map_items=False)
    try:
        out = pipeline(record)
    except Exception as err:  # noqa: BLE001 - the kind of error is the property
        cause = err
        while cause is not None and not isinstance(cause, DataContractError):
            cause = cause.__cause__ or cause.__context__
        assert cause is not None and cause.source == "/data/case.nii.gz", repr(err)
        if "no words once cleaned" in cause.problem:
            assert _report_problems(report), "the validator must name what training refuses"
        return
    assert out["has_report"] is True and report_has_words(out["report"])
    image_only = CleanReportd(empty="image_only")(EnsureReportd()(record))
    assert image_only["has_report"] is report_has_words(image_only["report"])


LABEL_KEYS = st.one_of(st.sampled_from(list(FINDING_KEYS)), st.sampled_from(["cardiomegally", "Cardiomegaly", ""]))
LABEL_VALUES = st.one_of(
    st.sampled_from([0, 1, None, True, 2, -1, 0.5, float("nan"), "1", [1]]), st.integers(), st.floats()
)


@settings(SETTINGS, max_examples=300)
@given(labels=st.one_of(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=5), st.none(), st.lists(st.integers())))
def test_labels_become_a_vector_or_a_named_error(labels: Any) -> None:
    record = {"image": "/data/case.nii.gz", "labels": labels}
    try:
        vector = LabelVectord(findings=FINDING_KEYS)(record)["labels_vector"]
    except DataContractError as err:
        assert err.source == "/data/case.nii.gz" and "tensor" not in err.problem
        if isinstance(labels, dict):
            assert _label_problems(labels, FINDING_KEYS), "the validator must name what the transform refuses"
        return
    assert vector.shape == (len(FINDING_KEYS),)
    assert all(math.isnan(v) or v in (0.0, 1.0) for v in vector.tolist())


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
RECORDS = st.dictionaries(st.sampled_from(["image", "report", "labels", "mask", "meta", "extra"]), JSON, max_size=5)


@settings(SETTINGS, max_examples=150)
@given(
    content=st.one_of(
        JSON, st.dictionaries(st.sampled_from(["training", "test", "tests"]), st.lists(RECORDS, max_size=4))
    )
)
def test_validator_reports_any_datalist_structure(tmp_path_factory, content: Any) -> None:
    path = tmp_path_factory.mktemp("dl") / "datalist.json"
    path.write_text(json.dumps(content))
    problems = validate_datalist(path, open_images=False, findings=list(FINDING_KEYS))
    assert all(p.source for p in problems)


# ------------------------------------------------------------------------------- a training step and inference
KINDS = ["good", "truncated", "header_lies", "eight_bit", "missing", "empty_report", "unknown_label"]


def _make(folder: Path, index: int, kind: str) -> dict[str, Any]:
    path = folder / f"r{index}_{kind}.nii.gz"
    volume = (np.random.default_rng(index).normal(size=(16, 17, 18)) * 250 - 300).astype(np.float32)
    record: dict[str, Any] = {"image": str(path), "report": "No pleural effusion.", "labels": {"atelectasis": 1}}
    if kind == "eight_bit":
        volume = np.round((volume + 1024) / 12).clip(0, 255)
    if kind != "missing":
        nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "header_lies":
        header = nib.Nifti1Header()
        header.set_data_shape((900, 900, 900))
        path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    elif kind == "empty_report":
        record["report"] = "FINDINGS: ..."
    elif kind == "unknown_label":
        record["labels"] = {"pleural_efusion": 1}
    return record


def _training_transform() -> Compose:
    return Compose(
        [
            LoadVolumed("image", ct_checks="error"),
            LabelVectord("labels", findings=FINDING_KEYS),
            EnsureReportd(),
            CleanReportd(),
            Resized("image", spatial_size=(8, 8, 8)),
            SelectItemsd(["image", "labels_vector", "has_report"]),
        ]
    )


class _TinyObjective(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8**3, 1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": self.linear(batch["image"].flatten(1)).pow(2).mean()}


@settings(SETTINGS, max_examples=12)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6).map(lambda ks: ["good", *ks]))
def test_training_step_and_inference_skip_exactly_the_bad_records(tmp_path_factory, kinds: list[str]) -> None:
    from common.engines.trainer import PretrainingTrainer

    folder = tmp_path_factory.mktemp("train")
    records = [_make(folder, i, kind) for i, kind in enumerate(kinds)]
    bad = {i for i, kind in enumerate(kinds) if kind != "good"}
    dataset = PretrainingDataset(records, _training_transform(), on_bad_sample="skip", max_consecutive_bad=len(kinds))
    loader = DataLoader(dataset, batch_size=2, collate_fn=pretraining_collate)
    objective = _TinyObjective()
    trainer = PretrainingTrainer(
        "cpu", 1, loader, objective, torch.optim.SGD(objective.parameters(), lr=0.01), progress=False
    )
    trainer.run()
    assert set(dataset._known_bad) == bad
    assert trainer.counters["skipped_records"] >= len(bad)

    images_only = Compose([LoadVolumed("image", ct_checks="error"), Resized("image", spatial_size=(8, 8, 8))])
    inference = InferenceDataset(records, images_only, on_bad_sample="skip")
    produced = [Path(s["image"].meta["filename_or_obj"]).name for s in inference]
    image_bad = {i for i in bad if kinds[i] not in ("empty_report", "unknown_label")}  # inference reads images only
    assert produced == [Path(r["image"]).name for i, r in enumerate(records) if i not in image_bad]
    assert [Path(s).name for s, _ in inference.skipped] == [Path(records[i]["image"]).name for i in sorted(image_bad)]
