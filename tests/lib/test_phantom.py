"""Tests of the embedded chest phantoms v2 (common.data.phantom*) and the default-dataset cache (common.data.default)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError, load_datalist
from common.data.default import default_datalist
from common.data.findings import FINDINGS
from common.data.phantom import (
    GENERATOR_VERSION,
    KEYS_TO_CLASS,
    LOBES,
    SIDES,
    TISSUES,
    generate_dataset,
    make_phantom,
    project_radiograph,
)
from common.data.phantom_published import write_published_phantoms
from common.data.radiograph_findings import CXR_FINDINGS

REPO = Path(__file__).resolve().parents[2]
KEYS = [f.key for f in FINDINGS]
NONE = {k: 0 for k in KEYS}
TINY = {"num_train": 2, "num_image_only": 1, "num_val": 1, "num_test": 1}


def _only(key: str) -> dict[str, int]:
    return {**NONE, key: 1}


def _hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, **TINY, seed=0)
    return out


# -- determinism --------------------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    generate_dataset(tmp_path / "again", **TINY, seed=0)
    first, second = _hashes(dataset), _hashes(tmp_path / "again")
    assert first == second
    assert {"datalist_3d.json", "datalist_2d.json", "phantoms.json"} <= set(first)
    assert len([k for k in first if k.startswith("ct/")]) == sum(TINY.values())
    assert json.loads((dataset / "phantoms.json").read_text())["generator"] == GENERATOR_VERSION == "phantoms-v2"


def test_seed_changes_files_and_splits_are_independent_of_sizes(dataset, tmp_path):
    generate_dataset(tmp_path / "other_seed", **{**TINY, "num_train": 1}, seed=1)
    other = _hashes(tmp_path / "other_seed")
    assert other["ct/test_00000.nii.gz"] != _hashes(dataset)["ct/test_00000.nii.gz"]
    generate_dataset(tmp_path / "fewer", **{**TINY, "num_train": 1}, seed=0)
    fewer, full = _hashes(tmp_path / "fewer"), _hashes(dataset)
    for name in ("ct/test_00000.nii.gz", "ct/val_00000.nii.gz", "cxr/unpaired_00000.png", "ct/train_00000.nii.gz"):
        assert fewer[name] == full[name], name


# -- geometry and inter-patient variation --------------------------------------------------------------------------
def test_nifti_is_ras_int16_with_varying_grids_and_covers_the_chest(dataset):
    import nibabel as nib

    spacings = []
    for record in load_datalist(dataset / "datalist_3d.json", "training"):
        image = nib.load(record["image"])
        assert image.get_data_dtype() == np.int16
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        sx, sy, sz = image.header.get_zooms()
        assert sx == pytest.approx(sy) and 2.4 <= sx <= 3.4 and sz in (2.5, 3.0, 4.0, 5.0)
        extent = np.array(image.shape) * np.array([sx, sy, sz])
        assert extent[0] >= 345 and extent[1] >= 345 and extent[2] >= 285
        np.testing.assert_allclose(image.affine[:3, :3], np.diag([sx, sy, sz]), atol=1e-4)
        assert record["meta"]["spacing"] == pytest.approx([sx, sy, sz], abs=1e-3)
        if "mask" in record:
            mask = nib.load(record["mask"])
            assert mask.get_data_dtype() == np.uint8 and mask.shape == image.shape
            np.testing.assert_allclose(mask.affine, image.affine)
        spacings.append((sx, sz))
    assert len(set(spacings)) == len(spacings)  # varies per case


@pytest.fixture(scope="module")
def population():
    return [make_phantom(3, "training", i, labels=NONE) for i in range(24)]


def test_patients_and_studies_vary(population):
    cases = population
    study = [c.study for c in cases]
    assert {s["contrast"] for s in study} == {True, False}
    assert {s["kernel"] for s in study} == {"soft tissue", "lung"}
    assert {s["sex"] for s in study} == {"female", "male"}
    assert len({s["slice_spacing_mm"] for s in study}) >= 3
    assert all(s["slice_thickness_mm"] >= s["slice_spacing_mm"] for s in study)
    for name in ("heart_scale", "body_scale", "fat_mm", "dome_right_mm"):
        values = np.array([c.geometry[name] for c in cases])
        assert values.std() > 0.04 * abs(values.mean()), name  # continuous, not a handful of levels
    lung_hu = [np.median(c.hu[c.tissue == TISSUES["lung"]]) for c in cases]
    assert np.ptp(lung_hu) > 30
    # IV contrast makes the aorta bright
    aorta = {bool(c.study["contrast"]): np.median(c.hu[c.tissue == TISSUES["aorta"]]) for c in cases}
    assert aorta[True] > 150 > 70 > aorta[False]


def test_arms_down_put_humerus_beside_the_chest_and_breasts_are_female(population):
    cases = population
    down = [c for c in cases if c.study["arms"] == "down"]
    assert down and np.mean([(c.tissue == TISSUES["humerus"]).any() for c in down]) >= 0.5  # may leave the FOV
    assert not any((c.tissue == TISSUES["humerus"]).any() for c in cases if c.study["arms"] == "up")
    for c in cases:
        assert (c.tissue == TISSUES["breast"]).any() == (c.study["sex"] == "female")


def test_saved_volume_equals_the_generated_phantom(dataset):
    import nibabel as nib

    record = load_datalist(dataset / "datalist_3d.json", "validation")[0]
    phantom = make_phantom(0, "validation", 0)
    np.testing.assert_array_equal(np.asanyarray(nib.load(record["image"]).dataobj), phantom.hu)
    np.testing.assert_array_equal(np.asanyarray(nib.load(record["mask"]).dataobj), phantom.mask)
    assert record["report"] == phantom.report and record["labels"] == phantom.labels
    assert record["meta"]["study"] == phantom.study


# -- intensities of structures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain():
    """A non-contrast, soft-kernel case without findings (nominal intensities)."""
    for index in range(40):
        phantom = make_phantom(0, "test", index, labels=NONE)
        plain = not phantom.study["contrast"] and phantom.study["kernel"] == "soft tissue"
        if plain and phantom.geometry["fat_mm"] > 15:
            return phantom
    raise AssertionError("no plain case")


@pytest.mark.parametrize(
    "tissue, low, high",
    [
        ("air", -1001, -990),
        ("subcutaneous_fat", -130, -70),
        ("muscle", 25, 70),
        ("mediastinal_fat", -120, -50),
        ("lung", -900, -760),
        ("heart", 20, 60),
        ("aorta", 20, 65),
        ("liver", 35, 75),
        ("vertebral_body", 300, 1000),
    ],
)
def test_structures_have_their_hounsfield_units(plain, tissue, low, high):
    from scipy.ndimage import binary_erosion

    core = binary_erosion(plain.tissue == TISSUES[tissue], iterations=1)  # away from blurred edges
    assert core.sum() > 20, tissue
    assert low <= float(np.median(plain.hu[core])) <= high


def test_bones_are_bright_and_values_in_range(plain):
    for tissue in ("rib", "cortical_bone"):
        values = plain.hu[plain.tissue == TISSUES[tissue]]
        assert values.size > 0 and np.percentile(values, 90) > 300, tissue
    assert plain.hu.min() >= -1024 and plain.hu.max() <= 3071
    assert (plain.hu[plain.tissue == TISSUES["air"]] == -1000).all()


# -- each finding changes the image where its mask says ------------------------------------------------------------
def _twins(key: str, index: int = 5) -> tuple:
    """The same anatomy with and without one finding (findings are drawn after the anatomy)."""
    positive = make_phantom(0, "training", index, labels=_only(key))
    negative = make_phantom(0, "training", index, labels=NONE)
    assert positive.labels == _only(key) and negative.labels == NONE
    np.testing.assert_array_equal(positive.affine, negative.affine)
    return positive, negative


def _mask_region(phantom, key: str) -> np.ndarray:
    region = phantom.mask == KEYS_TO_CLASS[key]
    assert region.any(), key
    return region


@pytest.mark.parametrize("key", KEYS)
def test_every_finding_changes_the_image_inside_its_mask_only(key):
    positive, negative = _twins(key)
    region = _mask_region(positive, key)
    assert set(np.unique(positive.mask)) <= {0, KEYS_TO_CLASS[key]}
    assert not negative.mask.any()
    changed = positive.tissue != negative.tissue
    if key != "cardiomegaly":  # an enlarged heart also moves its fat halo
        assert changed[region].mean() > 0.9 and region[changed].mean() > 0.5
    difference = np.abs(positive.hu.astype(int) - negative.hu.astype(int))[region]
    assert np.median(difference) > 50, (key, np.median(difference))
    assert positive.details.get(key)


@pytest.mark.parametrize("index", [5, 6, 7])
def test_effusion_is_dependent_fluid_on_the_reported_side(index):
    positive, negative = _twins("pleural_effusion", index)
    side = positive.details["pleural_effusion"]["side"]
    assert side in SIDES
    region = _mask_region(positive, "pleural_effusion")
    x, y, _ = positive.patient_axes()
    xs = x[np.nonzero(region)[0]]
    if side == "right":
        assert (xs > 0).mean() > 0.95
    elif side == "left":
        assert (xs < 0).mean() > 0.95
    else:
        assert 0.05 < (xs > 0).mean() < 0.95
    ys = y[np.nonzero(region)[1]]
    assert np.median(ys) < positive.geometry["cavity_center_y"]  # dependent: behind the cavity centre (supine)
    assert -30 < np.median(positive.hu[region]) < 60 and np.median(negative.hu[region]) < -500


def test_nodule_is_in_the_reported_lobe_and_size():
    found, sizes = 0, []
    for index in range(12):
        positive, negative = _twins("lung_nodule", index)
        detail = positive.details["lung_nodule"]
        assert detail["lobe"] in LOBES and 3 <= detail["size"] <= 30 and detail["kind"] in ("solid", "subsolid")
        x, _, _ = positive.patient_axes()
        centre = np.array(detail["center_mm"])
        assert (centre[0] > 0) == detail["lobe"].startswith("right")
        if detail["count"] == 1 and detail["size"] >= 10:
            region = _mask_region(positive, "lung_nodule")
            diameter = 2 * (3 * region.sum() * np.prod(positive.spacing) / (4 * np.pi)) ** (1 / 3)
            assert 0.5 * detail["size"] < diameter < 1.6 * detail["size"]
            found += 1
        sizes.append(detail["size"])
    assert np.median(sizes) < 13 and max(sizes) > 10  # mostly small, as in real archives


def test_cardiomegaly_enlarges_the_heart():
    positive, negative = _twins("cardiomegaly")
    heart = TISSUES["heart"]
    ratio = (positive.tissue == heart).sum() / (negative.tissue == heart).sum()
    assert ratio > 1.3
    assert (_mask_region(positive, "cardiomegaly") == (positive.tissue == heart)).all()
    assert positive.details["cardiomegaly"]["severity"] in ("mild", "moderate", "severe")


def test_emphysema_lowers_lung_attenuation():
    positive, negative = _twins("emphysema")
    region = _mask_region(positive, "emphysema")
    assert np.median(positive.hu[region]) < -900 < np.median(negative.hu[region])


def test_calcifications_are_bright_and_on_their_vessels():
    from scipy.ndimage import binary_dilation

    positive, negative = _twins("arterial_wall_calcification")
    region = _mask_region(positive, "arterial_wall_calcification")
    assert np.percentile(positive.hu[region], 75) > 400
    assert np.median(positive.hu[region].astype(int) - negative.hu[region]) > 300  # brighter than (enhanced) blood
    near_aorta = binary_dilation(negative.tissue == TISSUES["aorta"], iterations=2)
    assert near_aorta[region].mean() > 0.9
    positive, negative = _twins("coronary_artery_wall_calcification")
    region = _mask_region(positive, "coronary_artery_wall_calcification")
    near_heart = binary_dilation(negative.tissue == TISSUES["heart"], iterations=3)
    assert near_heart[region].mean() > 0.8


def test_devices_are_metal_or_radio_opaque():
    for index in range(4):
        positive, _ = _twins("medical_material", index)
        region = _mask_region(positive, "medical_material")
        assert np.percentile(positive.hu[region], 90) > 250
        assert set(positive.details["medical_material"]["devices"]) <= {
            "pacemaker",
            "central venous catheter",
            "sternotomy wires",
            "port catheter",
            "endotracheal tube",
        }


def test_labels_are_the_co_occurrence_models_draws():
    """Labels come from common.data.label_model (tested there against the real prevalences); a finding is only
    dropped when it finds no room."""
    from common.data.label_model import sample_labels
    from common.data.phantom import _case_rngs

    dropped = 0
    for index in range(12):
        drawn = sample_labels(_case_rngs(5, "training", index)[0])
        phantom = make_phantom(5, "training", index)
        assert all(phantom.labels[k] <= drawn[k] for k in KEYS)
        dropped += sum(drawn.values()) - sum(phantom.labels.values())
    assert dropped <= 2


# -- reports --------------------------------------------------------------------------------------------------------
def test_reports_are_the_writers_and_name_the_positives():
    from common.transforms.text import extract_sections

    for index in range(6):
        phantom = make_phantom(0, "validation", index)
        sections = extract_sections(phantom.report)
        assert sections["findings"] and sections["impression"], phantom.report
        assert len(phantom.report.split()) > 80  # real chest-CT reports walk every organ


# -- radiographs --------------------------------------------------------------------------------------------------
def test_radiograph_png_is_16_bit_with_a_projected_mask(dataset):
    from PIL import Image

    cxr_keys = {f.key for f in CXR_FINDINGS}
    records = load_datalist(dataset / "datalist_2d.json", "training")
    for record in records:
        with Image.open(record["image"]) as image:
            assert image.mode == "I;16" and image.size == (256, 256)
            pixels = np.array(image)
        assert pixels.dtype == np.uint16 and pixels.max() > 30000 and pixels.min() == 0
        assert record["meta"]["spacing"][0] == record["meta"]["spacing"][1] > 1.0
        mask_path = record.get("mask") or str(dataset / record["meta"]["mask"])
        with Image.open(mask_path) as mask:
            assert mask.mode == "L" and mask.size == (256, 256)
            assert set(np.unique(np.array(mask))) <= set(range(len(FINDINGS) + 1))
        labels = record.get("labels") or record["meta"]["labels"]
        assert set(labels) == cxr_keys and set(record["meta"]["ct_labels"]) == set(KEYS)


def test_radiograph_shows_devices_and_drops_ct_only_findings():
    phantom = make_phantom(0, "training", 5, labels={**NONE, "medical_material": 1, "mosaic_attenuation_pattern": 1})
    _, mask, _ = project_radiograph(phantom.hu, phantom.mask, phantom.spacing, size=128)
    assert (mask == KEYS_TO_CLASS["medical_material"]).any()
    assert not (mask == KEYS_TO_CLASS["mosaic_attenuation_pattern"]).any()


def test_radiograph_orientation_and_contrast():
    phantom = make_phantom(0, "training", 5, labels=_only("cardiomegaly"))
    image, mask, pixel = project_radiograph(phantom.hu, phantom.mask, phantom.spacing, size=128)
    assert image.shape == mask.shape == (128, 128) and pixel == pytest.approx(
        max(np.array(phantom.hu.shape)[[0, 2]] * np.array(phantom.spacing)[[0, 2]]) / 128
    )
    columns = np.nonzero(mask == KEYS_TO_CLASS["cardiomegaly"])[1]
    assert columns.mean() > 64  # the heart lies on the patient's left = the viewer's right on a PA film
    assert image[image > 0].mean() > 10000
    x, y, z = phantom.patient_axes()
    block = phantom.hu.copy()
    block[np.ix_(x > 60, np.ones(len(y), bool), z > 60)] = 1500
    brighter = project_radiograph(block, None, phantom.spacing, size=128)[0].astype(int) - image
    rows, cols = np.nonzero(brighter > 1000)
    assert len(rows) > 100 and rows.mean() < 64 and cols.mean() < 64


# -- datalists ----------------------------------------------------------------------------------------------------
def test_datalists_follow_the_contract(dataset):
    cxr_keys = {f.key for f in CXR_FINDINGS}
    for dims, keys in ((3, set(KEYS)), (2, cxr_keys)):
        path = dataset / f"datalist_{dims}d.json"
        raw = json.loads(path.read_text())
        training = load_datalist(path, "training")
        assert len(training) == TINY["num_train"] + TINY["num_image_only"]
        assert len(load_datalist(path, "validation")) == TINY["num_val"]
        assert len(load_datalist(path, "test")) == TINY["num_test"]
        for section in ("training", "validation", "test"):
            for record, resolved in zip(raw[section], load_datalist(path, section)):
                assert not Path(record["image"]).is_absolute() and Path(resolved["image"]).is_file()
                meta = record["meta"]
                assert meta["split"] == section and {"case_id", "spacing", "study"} <= set(meta)
                if meta["paired"]:
                    assert record["report"].startswith("FINDINGS:") and set(record["labels"]) == keys
                    assert Path(resolved["mask"]).is_file()
                else:
                    assert not {"report", "labels", "mask"} & set(record)
                    assert set(meta["labels"]) == keys and (dataset / meta["mask"]).is_file()
    three, two = (json.loads((dataset / f"datalist_{d}d.json").read_text()) for d in (3, 2))
    for a, b in zip(three["training"] + three["test"], two["training"] + two["test"]):
        assert a["meta"]["case_id"] == b["meta"]["case_id"]
        assert a["meta"].get("labels", a.get("labels")) == b["meta"]["ct_labels"]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, dims=4)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_train=-1)
    with pytest.raises(ValueError):
        make_phantom(0, "train")
    with pytest.raises(ValueError):
        make_phantom(0, "training", 0, labels={"pneumothorax": 1})
    with pytest.raises(ValueError):
        default_datalist(None, dims=1)


def test_cli_writes_a_dataset(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "common.data.phantom", "--out_dir", str(tmp_path), "--num_train", "1",
         "--num_image_only", "0", "--num_val", "0", "--num_test", "1", "--dims", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("datalist_2d.json")
    assert len(load_datalist(tmp_path / "datalist_2d.json", "test")) == 1


# -- default dataset cache -----------------------------------------------------------------------------------------
def test_default_datalist_prefers_the_users_dataset(tmp_path):
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    assert default_datalist(tmp_path) == str((tmp_path / "datalist.json").resolve())
    assert default_datalist(tmp_path / "datalist.json", dims=2) == str((tmp_path / "datalist.json").resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataContractError, match="no datalist.json"):
        default_datalist(tmp_path / "empty")
    with pytest.raises(DataContractError, match="does not exist"):
        default_datalist(tmp_path / "nowhere")


def test_default_datalist_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLP_CACHE", str(tmp_path))
    sizes = {"num_train": 1, "num_image_only": 1, "num_val": 0, "num_test": 1}
    path = Path(default_datalist(None, dims=3, **sizes))
    assert path.parent.parent == tmp_path.resolve() and path.name == "datalist_3d.json"
    assert path.parent.name == "phantoms-v2.1-1-1-0-1-seed0"  # not the phantoms-v2 cache of earlier versions
    training = load_datalist(path, "training")
    assert len(training) == 2 and all("/ct_rate/train_fixed/" in r["image"] for r in training)  # via the builder
    assert [("report" in r, r["meta"]["volume_name"]) for r in training] == [
        (True, "train_1_a_1"),
        (False, "train_2_a_1"),
    ]
    before = _hashes(path.parent)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr("common.data.phantom_published.write_published_phantoms", fail)
    assert Path(default_datalist("", dims=2, **sizes)) == path.parent / "datalist_2d.json"
    assert _hashes(path.parent) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_default_module_does_not_import_the_generator():
    """Inference bundles import common.data.default: the phantom generator loads only when phantoms are asked for."""
    code = (
        "import sys, common.data.default; "
        "print([m for m in sys.modules if 'phantom' in m or m.endswith(('report_writer', 'label_model'))])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_default_datalist_is_safe_when_processes_race(tmp_path):
    code = (
        "from common.data.default import default_datalist; "
        "print(default_datalist(None, dims=3, num_train=1, num_image_only=0, num_val=0, num_test=1))"
    )
    env = {**os.environ, "MEDVLP_CACHE": str(tmp_path)}
    racers = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = [racer.communicate(timeout=600)[0].strip() for racer in racers]  # generous: a loaded shared box
    assert [racer.returncode for racer in racers] == [0, 0]
    assert paths[0] == paths[1] and paths[0].endswith("datalist_3d.json")
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and len(load_datalist(paths[0], "test")) == 1


def test_publish_keeps_a_finished_dataset_and_replaces_a_broken_one(tmp_path):
    from common.data.default import _publish

    def staged(name: str) -> Path:
        folder = tmp_path / name
        write_published_phantoms(folder, num_train=1, num_image_only=0, num_val=0, num_test=0, image_size_2d=32)
        (folder / "marker").write_text(name)
        return folder

    target = staged("target")
    _publish(staged("late"), target)  # lost the race: the winner's files stay
    assert (target / "marker").read_text() == "target"
    (target / "phantoms.json").unlink()  # now incomplete
    _publish(staged("fresh"), target)
    assert (target / "marker").read_text() == "fresh" and (target / "phantoms.json").is_file()
