"""Tests of the embedded chest phantoms (common.data.phantom) and the default-dataset cache (common.data.default)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError, load_datalist
from common.data.default import default_datalist
from common.data.findings import FINDINGS
from common.data.phantom import (
    LOBES,
    SIDES,
    TISSUES,
    generate_dataset,
    make_phantom,
    project_radiograph,
)

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


def test_seed_changes_files_and_splits_are_independent_of_sizes(dataset, tmp_path):
    generate_dataset(tmp_path / "other_seed", **{**TINY, "num_train": 1}, seed=1)
    other = _hashes(tmp_path / "other_seed")
    assert other["ct/test_00000.nii.gz"] != _hashes(dataset)["ct/test_00000.nii.gz"]
    generate_dataset(tmp_path / "fewer", **{**TINY, "num_train": 1}, seed=0)
    fewer, full = _hashes(tmp_path / "fewer"), _hashes(dataset)
    for name in ("ct/test_00000.nii.gz", "ct/val_00000.nii.gz", "cxr/unpaired_00000.png", "ct/train_00000.nii.gz"):
        assert fewer[name] == full[name], name


# -- geometry -----------------------------------------------------------------------------------------------------
def test_nifti_is_ras_int16_anisotropic_and_covers_the_chest(dataset):
    import nibabel as nib

    spacings = []
    for record in load_datalist(dataset / "datalist_3d.json", "training"):
        image = nib.load(record["image"])
        assert image.get_data_dtype() == np.int16
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        sx, sy, sz = image.header.get_zooms()
        assert sx == pytest.approx(sy) and 2.5 <= sx <= 3.5 and 4.0 <= sz <= 6.0
        extent = np.array(image.shape) * np.array([sx, sy, sz])
        assert extent[0] >= 375 and extent[1] >= 375 and extent[2] >= 285
        np.testing.assert_allclose(image.affine[:3, :3], np.diag([sx, sy, sz]), atol=1e-4)
        assert record["meta"]["spacing"] == pytest.approx([sx, sy, sz], abs=1e-3)
        if "mask" in record:
            mask = nib.load(record["mask"])
            assert mask.get_data_dtype() == np.uint8 and mask.shape == image.shape
            np.testing.assert_allclose(mask.affine, image.affine)
        spacings.append((sx, sz))
    assert len(set(spacings)) == len(spacings)  # varies per case
    for record in load_datalist(dataset / "datalist_3d.json", "test"):
        assert np.abs(nib.load(record["image"]).affine[:3, 3]).max() < 300  # small, case-specific origin


def test_saved_volume_equals_the_generated_phantom(dataset):
    import nibabel as nib

    record = load_datalist(dataset / "datalist_3d.json", "validation")[0]
    phantom = make_phantom(0, "validation", 0)
    np.testing.assert_array_equal(np.asanyarray(nib.load(record["image"]).dataobj), phantom.hu)
    np.testing.assert_array_equal(np.asanyarray(nib.load(record["mask"]).dataobj), phantom.mask)
    assert record["report"] == phantom.report and record["labels"] == phantom.labels


# -- intensities of structures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def everything():
    return make_phantom(0, "test", 3, labels={k: 1 for k in KEYS})


@pytest.mark.parametrize(
    "tissue, low, high",
    [
        ("air", -1001, -990),
        ("subcutaneous_fat", -130, -70),
        ("muscle", 25, 70),
        ("mediastinal_fat", -120, -50),
        ("lung", -900, -780),
        ("emphysema", -990, -900),
        ("heart", 20, 60),
        ("aorta", 20, 65),
        ("liver", 35, 75),
        ("vertebral_body", 300, 1000),
        ("effusion", -10, 40),
        ("consolidation", -20, 70),
    ],
)
def test_structures_have_their_hounsfield_units(everything, tissue, low, high):
    from scipy.ndimage import binary_erosion

    core = binary_erosion(everything.tissue == TISSUES[tissue], iterations=1)  # away from blurred edges
    assert core.sum() > 20, tissue
    assert low <= float(np.median(everything.hu[core])) <= high


def test_bones_and_calcifications_are_bright(everything):
    for tissue in ("rib", "cortical_bone", "calcification"):
        values = everything.hu[everything.tissue == TISSUES[tissue]]
        assert values.size > 0 and np.percentile(values, 90) > 400, tissue
    assert everything.hu.min() >= -1024 and everything.hu.max() <= 3071


# -- each finding changes the image where it is claimed -------------------------------------------------------------
def _twins(key: str, index: int = 5) -> tuple:
    """The same anatomy with and without one finding (findings are drawn after the anatomy)."""
    positive = make_phantom(0, "training", index, labels=_only(key))
    negative = make_phantom(0, "training", index, labels=NONE)
    assert positive.labels == _only(key) and negative.labels == NONE
    np.testing.assert_array_equal(positive.affine, negative.affine)
    return positive, negative


def _mask_region(phantom, key: str) -> np.ndarray:
    region = phantom.mask == KEYS.index(key) + 1
    assert region.any(), key
    return region


@pytest.mark.parametrize("index", [5, 6, 7])
def test_effusion_is_dependent_fluid_on_the_reported_side(index):
    positive, negative = _twins("pleural_effusion", index)
    side = positive.details["pleural_effusion"]["side"]
    assert side in SIDES and f"{side} pleural" in positive.report
    x, y, _ = positive.patient_axes()
    posterior = (y < positive.geometry["cavity_center_y"])[None, :, None]
    pleural = np.isin(negative.tissue, [TISSUES[k] for k in ("lung", "vessel")]) & posterior  # the twin's lung
    fluid = lambda p: (p.hu > -20) & (p.hu < 40) & pleural  # noqa: E731
    gain = {}
    for name, half in (("right", x > 0), ("left", x < 0)):
        gain[name] = int(fluid(positive)[half].sum()) - int(fluid(negative)[half].sum())
    voxel_ml = np.prod(positive.spacing) / 1000
    for name in ("left", "right"):
        if side in (name, "bilateral"):
            assert gain[name] * voxel_ml > 40, gain  # > 40 ml of new ~10 HU fluid behind the cavity centre
        else:
            assert abs(gain[name]) * voxel_ml < 10, gain
    region = _mask_region(positive, "pleural_effusion")
    assert np.median(positive.hu[region]) > -100 and np.median(negative.hu[region]) < -600


def test_nodule_is_a_bright_sphere_in_aerated_lung_of_the_reported_lobe():
    from scipy.ndimage import binary_dilation

    positive, negative = _twins("lung_nodule")
    detail = positive.details["lung_nodule"]
    assert detail["lobe"] in LOBES and f"{detail['size']} mm" in positive.report and detail["lobe"] in positive.report
    region = _mask_region(positive, "lung_nodule")
    shell = binary_dilation(region, iterations=2) & ~region
    assert np.mean(positive.hu[region]) - np.mean(positive.hu[shell]) > 400
    assert np.mean(negative.hu[region]) < -500  # the twin has aerated lung there
    diameter = 2 * (3 * region.sum() * np.prod(positive.spacing) / (4 * np.pi)) ** (1 / 3)
    assert 0.6 * detail["size"] < diameter < 1.4 * detail["size"]
    x, _, _ = positive.patient_axes()
    centre_x = x[np.nonzero(region)[0]].mean()
    assert (centre_x > 0) == detail["lobe"].startswith("right")  # RAS: patient's right is +x


def test_cardiomegaly_enlarges_the_heart():
    positive, negative = _twins("cardiomegaly")
    heart = TISSUES["heart"]
    ratio = (positive.tissue == heart).sum() / (negative.tissue == heart).sum()
    assert ratio > 1.8  # 1.3-1.5x in each direction, partly clipped by the chest wall
    width = lambda p: np.ptp(np.nonzero((p.tissue == heart).any(axis=(1, 2)))[0])  # noqa: E731
    assert width(positive) > 1.2 * width(negative)
    assert (_mask_region(positive, "cardiomegaly") == (positive.tissue == heart)).all()
    assert not (negative.mask == KEYS.index("cardiomegaly") + 1).any()


def test_emphysema_lowers_lung_attenuation():
    positive, negative = _twins("emphysema")
    region = _mask_region(positive, "emphysema")
    assert np.median(positive.hu[region]) < -920 < np.median(negative.hu[region])
    assert (positive.tissue == TISSUES["bulla"]).sum() > 0


def test_consolidation_fills_part_of_the_reported_lobe():
    positive, negative = _twins("consolidation")
    region = _mask_region(positive, "consolidation")
    assert region.sum() * np.prod(positive.spacing) >= 25_000  # at least 25 ml
    assert -50 < np.median(positive.hu[region]) < 80 and np.median(negative.hu[region]) < -600
    lobe = positive.details["consolidation"]["lobe"]
    x, _, _ = positive.patient_axes()
    assert (x[np.nonzero(region)[0]].mean() > 0) == lobe.startswith("right") and lobe in positive.report


def test_calcification_puts_bright_plaques_on_the_aorta():
    from scipy.ndimage import binary_dilation

    positive, negative = _twins("arterial_wall_calcification")
    region = _mask_region(positive, "arterial_wall_calcification")
    assert np.percentile(positive.hu[region], 75) > 600 and np.percentile(negative.hu[region], 75) < 200
    near_aorta = binary_dilation(negative.tissue == TISSUES["aorta"], iterations=2)
    assert near_aorta[region].mean() > 0.95


# -- reports ------------------------------------------------------------------------------------------------------
_FILL = {
    "{size}": r"(?P<size>\d+)",
    "{lobe}": "(?P<lobe>" + "|".join(LOBES) + ")",
    "{side}": "(?P<side>" + "|".join(SIDES) + ")",
}


def _pattern(template: str) -> re.Pattern:
    text = re.escape(template[:1].upper() + template[1:])
    for placeholder, group in _FILL.items():
        text = text.replace(re.escape(placeholder), group)
    return re.compile(text)


def _parse(findings_text: str, finding) -> tuple[int, dict]:
    """(1, fields) if a positive phrasing of ``finding`` occurs, (0, {}) if a negative one does; exactly one must."""
    hits = [(1, m.groupdict()) for t in finding.positive if (m := _pattern(t).search(findings_text))]
    hits += [(0, {}) for t in finding.negative if _pattern(t).search(findings_text)]
    assert len(hits) == 1, (finding.key, findings_text)
    return hits[0]


_IMPRESSION_KEYWORD = {
    "lung_nodule": "nodule",
    "pleural_effusion": "effusion",
    "cardiomegaly": "(cardiomegaly|enlarged heart)",
    "emphysema": "emphysema",
    "consolidation": "consolidation",
    "arterial_wall_calcification": "calci",
}


def test_reports_state_and_negate_findings_consistently_with_labels():
    from common.data.phantom import _NORMAL_SENTENCES

    templates = [t for f in FINDINGS for t in f.positive + f.negative]
    phrasings, orders = set(), set()
    for index in range(10):
        phantom = make_phantom(0, "validation", index)
        match = re.fullmatch(r"FINDINGS: (.+)\nIMPRESSION: (.+)", phantom.report)
        assert match, phantom.report
        findings_text, impression = match.groups()
        for finding in FINDINGS:
            present, fields = _parse(findings_text, finding)
            assert present == phantom.labels[finding.key], (finding.key, phantom.report)
            for field, value in fields.items():
                assert str(phantom.details[finding.key][field]) == value
            mentioned = re.search(_IMPRESSION_KEYWORD[finding.key], impression, re.IGNORECASE) is not None
            assert mentioned == bool(present), (finding.key, impression)
        assert (impression == "No acute cardiopulmonary abnormality.") == (sum(phantom.labels.values()) == 0)
        sentences = re.split(r"(?<=\.) ", findings_text)
        normal = [s for s in sentences if not any(_pattern(t).fullmatch(s) for t in templates)]
        assert 2 <= len(normal) <= 4 and set(normal) <= set(_NORMAL_SENTENCES), normal
        phrasings.update(sentences)
        orders.add(tuple(KEYS[i] for i in np.argsort([_first_mention(findings_text, f) for f in FINDINGS])))
    assert len(orders) > 5 and len(phrasings) > 40  # order and wording vary


def _first_mention(text: str, finding) -> int:
    positions = [m.start() for t in finding.positive + finding.negative if (m := _pattern(t).search(text))]
    return min(positions)


# -- radiographs --------------------------------------------------------------------------------------------------
def test_radiograph_png_is_16_bit_with_a_projected_mask(dataset):
    from PIL import Image

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


def test_radiograph_orientation_and_contrast():
    phantom = make_phantom(0, "training", 5, labels=_only("cardiomegaly"))
    image, mask, pixel = project_radiograph(phantom.hu, phantom.mask, phantom.spacing, size=128)
    assert image.shape == mask.shape == (128, 128) and pixel == pytest.approx(
        max(np.array(phantom.hu.shape)[[0, 2]] * np.array(phantom.spacing)[[0, 2]]) / 128
    )
    columns = np.nonzero(mask == KEYS.index("cardiomegaly") + 1)[1]
    assert columns.mean() > 64  # the heart lies on the patient's left = the viewer's right on a PA film
    assert image[image > 0].mean() > 10000
    # a dense block added at the patient's right and head end shows up bright at the film's top left
    x, y, z = phantom.patient_axes()
    block = phantom.hu.copy()
    block[np.ix_(x > 60, np.ones(len(y), bool), z > 60)] = 1500
    brighter = project_radiograph(block, None, phantom.spacing, size=128)[0].astype(int) - image
    rows, cols = np.nonzero(brighter > 1000)
    assert len(rows) > 100 and rows.mean() < 64 and cols.mean() < 64


# -- datalists ----------------------------------------------------------------------------------------------------
def test_datalists_follow_the_contract(dataset):
    for dims in (3, 2):
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
                assert meta["split"] == section and {"case_id", "spacing"} <= set(meta)
                if meta["paired"]:
                    assert record["report"].startswith("FINDINGS:") and set(record["labels"]) == set(KEYS)
                    assert Path(resolved["mask"]).is_file()
                else:
                    assert not {"report", "labels", "mask"} & set(record)
                    assert set(meta["labels"]) == set(KEYS) and (dataset / meta["mask"]).is_file()
    three, two = (json.loads((dataset / f"datalist_{d}d.json").read_text()) for d in (3, 2))
    for a, b in zip(three["training"] + three["test"], two["training"] + two["test"]):
        assert a["meta"]["case_id"] == b["meta"]["case_id"] and a.get("report") == b.get("report")
        assert a.get("labels") == b.get("labels")


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
    assert len(load_datalist(path, "training")) == 2
    before = _hashes(path.parent)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr("common.data.default.generate_dataset", fail)
    assert Path(default_datalist("", dims=2, **sizes)) == path.parent / "datalist_2d.json"
    assert _hashes(path.parent) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


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
    paths = [racer.communicate(timeout=120)[0].strip() for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0]
    assert paths[0] == paths[1] and paths[0].endswith("datalist_3d.json")
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and len(load_datalist(paths[0], "test")) == 1


def test_publish_keeps_a_finished_dataset_and_replaces_a_broken_one(tmp_path):
    from common.data.default import _publish

    def staged(name: str) -> Path:
        folder = tmp_path / name
        generate_dataset(folder, num_train=0, num_image_only=0, num_val=0, num_test=1)
        (folder / "marker").write_text(name)
        return folder

    target = staged("target")
    _publish(staged("late"), target)  # lost the race: the winner's files stay
    assert (target / "marker").read_text() == "target"
    (target / "phantoms.json").unlink()  # now incomplete
    _publish(staged("fresh"), target)
    assert (target / "marker").read_text() == "fresh" and (target / "phantoms.json").is_file()


# -- learnability at the bundles' 6 mm resolution -------------------------------------------------------------------
_PLEURAL = [TISSUES[k] for k in ("lung", "emphysema", "bulla", "vessel", "effusion", "consolidation", "nodule")]
_MEDIASTINUM = [
    TISSUES[k] for k in ("heart", "aorta", "calcification", "mediastinal_fat", "airway", "airway_wall", "oesophagus")
]
_BONE = [TISSUES[k] for k in ("vertebral_body", "cortical_bone", "rib", "sternum", "disc")]


def _at_6mm(phantom) -> tuple[np.ndarray, np.ndarray]:
    """HU (linear) and tissue (nearest) on the bundles' default grid: 64^3 voxels of 6 mm around the volume centre."""
    from scipy.ndimage import map_coordinates

    centre = (np.arange(64) - 31.5) * 6.0
    shape, spacing = np.array(phantom.hu.shape), np.array(phantom.spacing)
    grid = np.meshgrid(*[centre / spacing[i] + (shape[i] - 1) / 2 for i in range(3)], indexing="ij")
    hu = map_coordinates(phantom.hu.astype(np.float32), grid, order=1, cval=-1000.0)
    return hu, map_coordinates(phantom.tissue, grid, order=0, cval=0)


def _blobness(hu: np.ndarray, region: np.ndarray, sigma: float = 0.8) -> float:
    """Strongest bright-blob response (all Hessian eigenvalues negative) inside ``region``."""
    from scipy.ndimage import gaussian_filter

    candidates = region & (hu > -500)
    if not candidates.any():
        return 0.0
    h = {}
    for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        order = [0, 0, 0]
        order[a] += 1
        order[b] += 1
        h[a, b] = h[b, a] = gaussian_filter(hu, sigma, order=order)[candidates]
    hessian = np.stack([np.stack([h[a, b] for b in range(3)], -1) for a in range(3)], -2)
    return float(np.max(-np.linalg.eigvalsh(hessian)[:, 2]))


def _features(hu: np.ndarray, tissue: np.ndarray) -> list[float]:
    """Hand-crafted image features; the tissue map only says where to look (pleural space, mediastinum, aorta)."""
    from scipy.ndimage import binary_dilation, binary_erosion, label, sum_labels

    pleural, mediastinum = np.isin(tissue, _PLEURAL), np.isin(tissue, _MEDIASTINUM)
    aerated, dense = pleural & (hu < -500), pleural & (hu > -150)
    # fluid layers at the back and bottom of the pleural space: no aerated lung behind (supine) or below it
    dependent = dense & (np.cumsum(pleural & ~dense, axis=1) == 0) & (np.cumsum(pleural & ~dense, axis=2) == 0)
    labels, n = label(dense & ~dependent)
    sizes = sum_labels(np.ones_like(hu), labels, index=np.arange(1, n + 1)) if n else np.zeros(1)
    aorta = binary_dilation(np.isin(tissue, [TISSUES["aorta"], TISSUES["calcification"]])) & ~np.isin(tissue, _BONE)
    return [
        float(hu[aerated].mean()),  # emphysema
        float(dependent.sum()),  # effusion
        float(sizes[sizes >= 20].sum()),  # consolidation
        _blobness(hu, binary_erosion(pleural)),  # nodule
        float((mediastinum & (hu > -30) & (hu < 120)).sum()),  # cardiomegaly
        float(np.sort(hu[aorta])[-5:].mean()),  # calcification
    ]


def test_every_finding_is_learnable_at_6mm():
    """Logistic regression on six hand-crafted features separates every finding on held-out phantoms (AUROC > 0.8)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for index in range(64):
        phantom = make_phantom(7, "training", index)
        features.append(_features(*_at_6mm(phantom)))
        labels.append([phantom.labels[k] for k in KEYS])
    features, labels = np.array(features), np.array(labels)
    prevalence = labels.mean(axis=0)
    assert np.all(prevalence > 0.2) and np.all(prevalence < 0.6), prevalence  # drawn with probability 0.4 each
    aurocs = {}
    for k, key in enumerate(KEYS):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        folds = StratifiedKFold(4, shuffle=True, random_state=0)
        scores = cross_val_predict(model, features, labels[:, k], cv=folds, method="decision_function")
        aurocs[key] = roc_auc_score(labels[:, k], scores)
    assert min(aurocs.values()) > 0.8, aurocs
