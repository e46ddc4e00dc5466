"""The preprocessed volume store (common/data/store.py): round trip equal to on-the-fly preprocessing, settings
mismatch refused, resume after an interrupted build, unreadable inputs skipped and named, the validator's check, and
colipri_ct and g2d_ct training an epoch from a store."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from common.data import store
from common.data.contract import DataContractError, error_cause
from common.data.phantom import generate_dataset

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [str(REPO / "bundles" / "colipri_ct" / "configs" / c) for c in ("train.yaml", "demo.yaml")]
#: tiny settings: 32^3 at 12 mm, short reports
TINY = {"spatial_size": 32, "pixdim": 12.0, "max_text_length": 32, "text_encoder_name": "default"}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four phantom CTs (three paired, one image-only) and one unreadable file, as a training datalist."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, num_train=3, num_image_only=1, num_val=0, num_test=1, seed=5, dims=3)
    content = json.loads((out / "datalist_3d.json").read_text())
    (out / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    content["training"].append(dict(content["training"][0], image="broken.nii.gz"))
    path = out / "with_broken.json"
    path.write_text(json.dumps(content))
    return path


def _parser(datalist: Path, **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({**TINY, "dataset_dir": str(datalist), "on_bad_sample": "skip", **override})
    return parser


def _samples(datalist: Path, **override) -> list[dict]:
    dataset = _parser(datalist, **override).get_parsed_content("train#dataset")
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_samples(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            if isinstance(x[key], torch.Tensor):  # bit for bit (NaN: unknown labels)
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, equal_nan=True, check_dtype=True)
            else:
                assert x[key] == y[key], key


@pytest.fixture(scope="module")
def built(datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("store") / "S"
    counts = store.build(CONFIGS, str(datalist), str(out), workers=1, **TINY)
    return out, counts


def test_round_trip_bit_identical_to_on_the_fly(datalist: Path, built: tuple[Path, dict]) -> None:
    root, counts = built
    assert counts == {"records": 5, "reused": 0, "built": 4, "skipped": 1}
    manifest = json.loads((root / "store.json").read_text())
    assert manifest["keys"] == ["image"] and manifest["counts"]["built"] == 4
    on_the_fly = _samples(datalist)  # random augmentation on top, seeded per (seed, epoch, index)
    from_store = _samples(datalist, store_dir=str(root))
    _assert_same_samples(on_the_fly, from_store)
    assert on_the_fly[0]["image"].shape == (1, 32, 32, 32)


def test_store_entries_equal_the_deterministic_prefix(datalist: Path, built: tuple[Path, dict]) -> None:
    from monai.transforms import Compose

    from common.data.dataset import first_random_index

    root, _ = built
    parser = _parser(datalist)
    preprocessing = parser.get_parsed_content("train#preprocessing")
    prefix = Compose(preprocessing.transforms[: first_random_index(preprocessing)])
    record = parser.get_parsed_content("train_records")[1]
    expected = prefix(dict(record))["image"]
    stored = store.VolumeStore(root).read(record["image"])["image"]
    assert stored.dtype == torch.float32
    assert torch.equal(stored.as_tensor(), expected.as_tensor())
    assert torch.equal(stored.affine, expected.affine)


def test_other_settings_refused_naming_hashes_and_keys(datalist: Path, built: tuple[Path, dict]) -> None:
    root, _ = built
    parser = _parser(datalist, store_dir=str(root), pixdim=10.0)
    with pytest.raises(Exception) as caught:  # MONAI wraps it: the cause is checked
        parser.get_parsed_content("train#dataset")
    mismatch = error_cause(caught.value, (store.StoreMismatchError,))
    assert mismatch is not None, caught.value
    message = str(mismatch)
    built_hash = json.loads((root / "store.json").read_text())["hash"]
    wanted_hash = store.signature_hash(parser.get_parsed_content("preprocessing_record")["image"])
    assert built_hash != wanted_hash and built_hash[:16] in message and wanted_hash[:16] in message
    assert "image.pixdim: store built with 12, this config 10" in message
    assert "spatial_size" not in message  # only what differs
    # the text settings are not part of the image store: another report length still trains from it
    _parser(datalist, store_dir=str(root), max_text_length=40).get_parsed_content("train#dataset")


def test_unreadable_input_skipped_and_named(datalist: Path, built: tuple[Path, dict], capsys) -> None:
    root, _ = built
    with open(root / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image"]).name for r in rows] == ["broken.nii.gz"]
    assert "header" in rows[0]["problem"] or "gzip" in rows[0]["problem"]
    parser = _parser(datalist, store_dir=str(root), on_bad_sample="raise", cache_preprocessed=False)
    dataset = parser.get_parsed_content("train#dataset")
    with pytest.raises(DataContractError, match=r"broken\.nii\.gz.*no entry in the volume store.*could not read"):
        dataset[4]


def test_resume_after_interrupted_build(datalist: Path, built: tuple[Path, dict], tmp_path: Path, monkeypatch) -> None:
    root, _ = built
    out = tmp_path / "S"
    real_replace = os.replace
    entries_written = []

    def killed_on_third_entry(src, dst):
        if Path(src).name.startswith(".partial-"):
            if len(entries_written) == 2:
                raise KeyboardInterrupt  # killed after writing the third entry's arrays, before its rename
            entries_written.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", killed_on_third_entry)
    with pytest.raises(KeyboardInterrupt):
        store.build(CONFIGS, str(datalist), str(out), workers=1, **TINY)
    monkeypatch.undo()
    assert len(list((out / "entries").glob(".partial-*"))) == 1  # the half-done entry
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "entries").iterdir() if not p.name.startswith(".")}
    assert len(finished) == 2

    counts = store.build(CONFIGS, str(datalist), str(out), workers=2, **TINY)
    assert counts == {"records": 5, "reused": 2, "built": 2, "skipped": 1}
    assert not list((out / "entries").glob(".partial-*"))
    for name, mtime in finished.items():
        assert (out / "entries" / name).stat().st_mtime_ns == mtime  # done entries were not rewritten
    fresh, resumed = store.VolumeStore(root), store.VolumeStore(out)
    assert resumed.hash == fresh.hash
    assert sorted(p.name for p in (out / "entries").iterdir()) == sorted(p.name for p in (root / "entries").iterdir())
    records = _parser(datalist).get_parsed_content("train_records")[:4]
    for record in records:
        assert torch.equal(fresh.read(record["image"])["image"], resumed.read(record["image"])["image"])


def test_build_refuses_other_settings_in_an_existing_store(datalist: Path, built: tuple[Path, dict]) -> None:
    root, _ = built
    with pytest.raises(store.StoreMismatchError, match="image.spatial_size: store built with 32, this config 24"):
        store.build(CONFIGS, str(datalist), str(root), workers=1, **{**TINY, "spatial_size": 24})


def test_validator_checks_the_store(datalist: Path, built: tuple[Path, dict], tmp_path: Path) -> None:
    from common.data.validate import validate_datalist

    root, _ = built
    problems = validate_datalist(datalist, section="training", open_images=False, store_dir=root)
    assert [(p.index, Path(p.source).name) for p in problems] == [(4, "broken.nii.gz")]
    assert "no entry in the volume store" in problems[0].problem
    missing = validate_datalist(datalist, section="training", open_images=False, store_dir=tmp_path / "nothing")
    assert len(missing) == 1 and "store.json is missing" in missing[0].problem


def _train_one_epoch(bundle: str, configs: list[str], datalist: Path, tmp_path: Path, **settings) -> int:
    """``bundle`` trains one epoch through its own configs with ``settings`` (e.g. ``store_dir``); its steps."""
    from monai.bundle import ConfigWorkflow

    meta = REPO / "bundles" / bundle / "configs" / "metadata.json"
    bundle_root = tmp_path / bundle
    (bundle_root / "configs").mkdir(parents=True)
    (bundle_root / "configs" / "metadata.json").write_text(meta.read_text())
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(meta),
        workflow_type="train",
        bundle_root=str(bundle_root),
        dataset_dir=str(datalist),
        on_bad_sample="skip",
        max_epochs=1,
        batch_size=2,
        **settings,
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == len(workflow.parser.get_parsed_content("train#dataloader")) >= 1
    assert torch.isfinite(torch.tensor(trainer.state.output["loss"]))
    return trainer.state.iteration


def test_bundle_trains_from_a_store(datalist: Path, built: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = built
    assert _train_one_epoch("colipri_ct", CONFIGS, datalist, tmp_path, store_dir=str(root), **TINY) >= 2


def _store_round_trip(bundle: str, tiny: dict, datalist: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """Build ``bundle``'s store at ``tiny`` settings; its samples equal the on-the-fly ones. Its configs and store."""
    from monai.bundle import ConfigParser

    configs = [str(REPO / "bundles" / bundle / "configs" / c) for c in ("train.yaml", "demo.yaml")]
    root = tmp_path / "S"
    counts = store.build(configs, str(datalist), str(root), workers=1, **tiny)
    assert counts["built"] == 4 and counts["skipped"] == 1

    def samples(**override) -> list[dict]:
        parser = ConfigParser()
        parser.read_config(configs)
        parser.update({**tiny, "dataset_dir": str(datalist), "on_bad_sample": "skip", **override})
        dataset = parser.get_parsed_content("train#dataset")
        reads_store = isinstance(dataset.transform.transforms[0], store.LoadStoredd)
        assert reads_store == ("store_dir" in override)  # the knob reaches the dataset
        return [dataset[i] for i in range(len(dataset))]

    _assert_same_samples(samples(), samples(store_dir=str(root)))
    return configs, root


def test_g2d_ct_trains_an_epoch_from_a_store(datalist: Path, tmp_path: Path) -> None:
    """The knob in a bundle with its own sampler (G2D): samples equal on the fly, and an epoch trains from it."""
    tiny = {"spatial_size": 64, "pixdim": 12.0, "max_text_length": 32, "warmup_iterations": 0}
    configs, root = _store_round_trip("g2d_ct", tiny, datalist, tmp_path)
    _train_one_epoch("g2d_ct", configs, datalist, tmp_path, store_dir=str(root), **tiny)


def test_raddino_ct_round_trip(datalist: Path, tmp_path: Path) -> None:
    """A multi-crop bundle: the DINO views drawn from the store equal those drawn on the fly."""
    tiny = {"spatial_size": 32, "pixdim": 12.0, "global_crop_size": 24, "local_crop_size": 12}
    _store_round_trip("raddino_ct", tiny, datalist, tmp_path)
