"""Inference skips too: with ``--on_bad_sample skip`` an unreadable input is left out of the predictions and listed
with its reason in ``skipped.csv``; with ``raise`` the run stops naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from torch.utils.data import DataLoader

from common.bundle_support import discover_bundles
from common.data.contract import DataContractError
from common.data.dataset import InferenceDataset, pretraining_collate
from common.data.readers import LoadVolumed
from common.transforms.text import prompt_pairs

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def thousand(tmp_path: Path, write_nifti) -> tuple[list[dict], Path]:
    """A thousand records, the 500th of them a corrupt file."""
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume" * 8)
    records = [{"image": str(good), "report": None, "labels": None} for _ in range(1000)]
    records[500] = {"image": str(bad), "labels": {"cardiomegaly": None}}
    return records, bad


def test_one_unreadable_scan_in_a_thousand(tmp_path: Path, thousand) -> None:
    records, bad = thousand
    skipped = tmp_path / "out" / "skipped.csv"
    dataset = InferenceDataset(records, LoadVolumed("image"), on_bad_sample="skip", skipped_file=skipped)
    loader = DataLoader(dataset, batch_size=7, collate_fn=pretraining_collate)
    n = sum(len(batch["image"]) for batch in loader)  # null report / labels never reach the collate
    assert n == 999
    assert _rows(skipped)[0] == ["image", "problem"]
    assert [row[0] for row in _rows(skipped)[1:]] == [str(bad)] and "cannot read the header" in _rows(skipped)[1][1]
    assert dataset.skipped == [(str(bad), _rows(skipped)[1][1])]


def test_raise_names_the_file_and_record(thousand) -> None:
    records, bad = thousand
    with pytest.raises(DataContractError, match=r"record 500: cannot read the header") as caught:
        list(InferenceDataset(records, LoadVolumed("image")))
    assert caught.value.source == str(bad)


def test_workers_share_the_records_and_the_skip_list(tmp_path: Path, thousand) -> None:
    records, bad = thousand
    records = records[495:505]
    skipped = tmp_path / "skipped.csv"
    dataset = InferenceDataset(records, LoadVolumed("image"), on_bad_sample="skip", skipped_file=skipped)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=pretraining_collate)
    assert sum(len(batch["image"]) for batch in loader) == 9
    assert [row[0] for row in _rows(skipped)[1:]] == [str(bad)]


def test_skipped_file_exists_only_when_records_were_skipped(tmp_path: Path, thousand) -> None:
    records, _ = thousand
    skipped = tmp_path / "skipped.csv"
    skipped.write_text("image,problem\nfrom,an earlier run\n")
    dataset = InferenceDataset(records[:3], LoadVolumed("image"), on_bad_sample="skip", skipped_file=skipped)
    assert not skipped.exists()  # a stale list is removed at construction
    assert len(list(dataset)) == 3 and not skipped.exists()


def test_nothing_readable_is_an_error_not_an_empty_success(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(DataContractError, match="all 2 record"):
        list(InferenceDataset([{"image": str(bad)}] * 2, LoadVolumed("image"), on_bad_sample="skip"))


def _inputs(folder: Path, dims: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        if dims == 3:
            import nibabel as nib

            path = folder / f"case_{i}.nii.gz"
            volume = (rng.normal(size=(40, 40, 24)) * 300 - 500).astype(np.int16)
            nib.save(nib.Nifti1Image(volume, np.diag([8.0, 8.0, 12.0, 1.0])), path)
        else:
            path = folder / f"case_{i}.png"
            Image.fromarray(rng.integers(0, 255, size=(64, 80)).astype(np.uint8)).save(path)
        files.append(path)
    files[1].write_bytes(b"garbage" * 10)
    (folder / "datalist.json").write_text(json.dumps({"test": [{"image": p.name} for p in files]}))
    return files


INFERENCE_BUNDLES = discover_bundles(configs=["inference", "demo"])


@pytest.mark.parametrize("bundle", INFERENCE_BUNDLES, ids=[b.name for b in INFERENCE_BUNDLES])
def test_bundle_inference_skips_and_lists(tmp_path: Path, bundle) -> None:
    """Each bundle's inference workflow (demo network, random weights) over three inputs, the second corrupt."""
    files = _inputs(tmp_path / "data", bundle.spatial_dims)
    parser = ConfigParser()
    parser.read_config([str(bundle.config("inference")), str(bundle.config("demo"))])
    parser["dataset_dir"] = str(tmp_path / "data")
    parser["output_dir"] = str(tmp_path / "out")
    parser["on_bad_sample"] = "skip"
    parser["handlers"] = [h for h in parser["handlers"] if "CheckpointLoader" not in str(h.get("_target_"))]
    parser.get_parsed_content("evaluator").run()
    written = {p.name: _rows(p) for p in (tmp_path / "out").glob("*.csv") if p.name != "skipped.csv"}
    assert len(written) == 1, written
    rows = next(iter(written.values()))
    assert [Path(row[0]).name for row in rows] == [files[0].name, files[2].name]
    skipped = _rows(tmp_path / "out" / "skipped.csv")
    assert [Path(row[0]).name for row in skipped[1:]] == [files[1].name] and skipped[1][1]

    parser["on_bad_sample"] = "raise"
    parser["output_dir"] = str(tmp_path / "out_raise")
    with pytest.raises(Exception) as caught:
        parser.get_parsed_content("evaluator", lazy=False).run()
    error = caught.value
    while error is not None and not isinstance(error, DataContractError):
        error = error.__cause__ or error.__context__
    assert error is not None and str(files[1]) in str(error), caught.value  # workers: the rebuilt message names it


EMBED_BUNDLES = discover_bundles(configs=["train", "demo", "embed"])


@pytest.mark.parametrize("bundle", EMBED_BUNDLES, ids=[b.name for b in EMBED_BUNDLES])
def test_bundle_embed_skips_and_lists(tmp_path: Path, bundle, monkeypatch) -> None:
    """embed.yaml (random-init model) over three inputs with reports, the second corrupt, with --on_bad_sample skip."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = _inputs(tmp_path / "data", bundle.spatial_dims)
    datalist = tmp_path / "data" / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": p.name, "report": "No effusion."} for p in files]}))
    parser = ConfigParser()
    parser.read_config([str(bundle.config(name)) for name in ("train", "demo", "embed")])
    parser.update({"dataset_dir": str(datalist), "bundle_root": str(tmp_path / "root"), "max_text_length": 32})
    parser["on_bad_sample"] = "skip"
    model_path = Path(parser.get_parsed_content("model_path"))
    model_path.parent.mkdir(parents=True)
    model = parser.get_parsed_content("model")
    if "build_classifier" in parser:  # PRIOR's embed.yaml also reads the exported zero-shot network (models/model.pt)
        prompts = prompt_pairs(parser.get_parsed_content("findings"))
        classifier = parser.get_parsed_content("build_classifier")(
            model, parser.get_parsed_content("tokenizer"), prompts
        )
        torch.save(classifier.state_dict(), parser.get_parsed_content("classifier_path"))
    torch.save(model.state_dict(), model_path)
    parser.get_parsed_content("evaluator").run()
    out = Path(parser.get_parsed_content("embed_output_dir"))
    ids = np.load(out / "embeddings.npz")["ids"].tolist()
    assert len(ids) == 2 and not any(files[1].stem.split(".")[0] in i for i in ids)
    skipped = _rows(out / "skipped.csv")
    assert [Path(row[0]).name for row in skipped[1:]] == [files[1].name] and skipped[1][1]
