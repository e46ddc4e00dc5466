"""embed.yaml end to end on a tiny random-init model: embeddings, zero-shot CSV, similarity maps on the input grid,
sliding windows (stitched at patch granularity) and their equality with the plain centre-crop path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose
from PIL import Image

from common.engines.handlers import case_id
from common.inferers import PatchSlidingWindowInferer
from common.transforms.patch_grid import PatchGridd, ResampleToOriginald, WindowGridPad, sliding_window_preprocessing

REPO = Path(__file__).resolve().parents[2]
SMALL = {3: {"spatial_size": 32, "pixdim": 12.0}, 2: {"spatial_size": 64}}  # 4^3 / 8^2 tokens of 8 voxels


@pytest.fixture(scope="module")
def phantoms(make_phantoms) -> Path:
    return make_phantoms(num_train=1, num_image_only=0, num_val=0, num_test=2, seed=5, image_size_2d=128)


def _test_image(phantoms: Path, dims: int) -> Path:
    """The first test case's volume or radiograph."""
    return phantoms / json.loads((phantoms / f"datalist_{dims}d.json").read_text())["test"][0]["image"]


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in ("train.yaml", "demo.yaml", *names)]


def _cases(phantoms: Path, out: Path, dims: int) -> list[dict]:
    """One case that fits the field of view and one that is longer than it along one axis."""
    records = json.loads((phantoms / f"datalist_{dims}d.json").read_text())["test"]
    fits, other = (phantoms / r["image"] for r in records[:2])
    if dims == 3:
        image = nib.load(fits)  # phantoms vary their field of view (350-500 mm): keep a central 360 mm cube
        keep = [min(n, int(360 // z)) for n, z in zip(image.shape, image.header.get_zooms())]
        box = tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(image.shape, keep))
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in box])
        fits = out / "fits_ct.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[box], affine), fits)
        src = nib.load(other)
        data = np.concatenate([np.asarray(src.dataobj)] * 2, axis=2)  # twice as long in z: > 384 mm
        long = out / "long_ct.nii.gz"
        nib.save(nib.Nifti1Image(data, src.affine), long)
    else:
        arr = np.asarray(Image.open(other))
        long = out / "long_cxr.png"
        Image.fromarray(arr[:, : arr.shape[1] * 5 // 8]).save(long)  # portrait: 128 x 80 px
    return [{"image": str(fits), "report": records[0]["report"]}, {"image": str(long), "report": records[1]["report"]}]


def _run_embed(bundle: str, dims: int, phantoms: Path, tmp_path: Path, monkeypatch) -> tuple[ConfigWorkflow, list]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    root = tmp_path / bundle
    (root / "models").mkdir(parents=True)
    records = _cases(phantoms, tmp_path, dims)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": records, "test": records}))
    workflow = ConfigWorkflow(
        config_file=_configs(bundle, "embed.yaml"),
        meta_file=str(REPO / "bundles" / bundle / "configs" / "metadata.json"),
        logging_file=str(REPO / "bundles" / bundle / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(datalist),
        max_text_length=32,
        **SMALL[dims],
    )
    # a random-init two-tower model written where train.yaml exports it
    torch.save(workflow.parser.get_parsed_content("model").state_dict(), root / "models" / "colipri_model.pt")
    workflow.initialize()
    workflow.run()
    return workflow, records


def _plain_preprocessing(parser) -> Compose:
    """inference.yaml's centre crop/pad preprocessing."""
    return Compose(parser.get_parsed_content("image_preprocessing", instantiate=True))


@pytest.mark.slow
@pytest.mark.parametrize("bundle,dims", [("colipri_ct", 3), ("colipri_cxr", 2)])
def test_embed_workflow(bundle: str, dims: int, phantoms: Path, tmp_path: Path, monkeypatch):
    workflow, records = _run_embed(bundle, dims, phantoms, tmp_path, monkeypatch)
    parser = workflow.parser
    out = Path(parser.get_parsed_content("embed_output_dir"))
    network = parser.get_parsed_content("network")
    encoder = network.image_encoder
    roi, patch = parser["spatial_size"], int(np.unique(parser.get_parsed_content("patch_size")).item())

    saved = np.load(out / "embeddings.npz")
    assert saved["ids"].tolist() == [case_id(r["image"]) for r in records]
    emb = saved["embeddings"]
    assert emb.shape == (2, parser["projection_dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    with torch.no_grad():
        # case 0 fits the field of view: one window == the plain centre crop/pad path of inference.yaml
        plain = _plain_preprocessing(parser)({"image": records[0]["image"]})["image"]
        sliding = Compose(parser.get_parsed_content("preprocessing").transforms[:-1])({"image": records[0]["image"]})
        assert torch.equal(sliding["image"].as_tensor(), plain.as_tensor())
        np.testing.assert_allclose(emb[0], encoder(plain[None]).numpy()[0], atol=1e-5)

        # case 1 is larger than the ROI: the same embedding as stitching the windows by hand on the patch grid
        image = Compose(parser.get_parsed_content("preprocessing").transforms[:-1])({"image": records[1]["image"]})
        image = image["image"].as_tensor()[None]
        spatial = image.shape[2:]
        assert max(spatial) > roi and all(s % patch == 0 for s in spatial)
        grid = [s // patch for s in spatial]
        total = torch.zeros(1, parser["projection_dim"], *grid)
        count = torch.zeros(1, 1, *grid)
        step = int(roi * (1 - parser["sw_overlap"]))
        starts = [sorted({*range(0, s - roi + 1, step), s - roi}) for s in spatial]
        assert max(len(s) for s in starts) > 1
        for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, dims):
            window = image[(slice(None), slice(None), *(slice(c, c + roi) for c in corner))]
            tokens = tuple(slice(c // patch, (c + roi) // patch) for c in corner)
            total[(slice(None), slice(None), *tokens)] += encoder.patch_embeddings(window)
            count[(slice(None), slice(None), *tokens)] += 1
        np.testing.assert_allclose(emb[1], encoder.pool(total / count).numpy()[0], atol=1e-5)

    keys = network.finding_keys
    assert json.loads((out / "findings.json").read_text())["channels"] == keys
    rows = list(csv.reader((out / "predictions.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(len(r) == 1 + len(keys) for r in rows)
    assert all(0.0 <= float(x) <= 1.0 for r in rows for x in r[1:])
    assert json.loads((out / "retrieval.json").read_text())["n_pairs"] == 2

    for record in records:
        original = nib.load(record["image"]) if dims == 3 else None
        saved_map = nib.load(out / f"{case_id(record['image'])}_similarity.nii.gz")
        data = np.asarray(saved_map.dataobj)
        if dims == 3:
            assert data.shape == (*original.shape, len(keys))
            np.testing.assert_allclose(saved_map.affine, original.affine, atol=1e-4)
        else:
            height, width = np.asarray(Image.open(record["image"])).shape[:2]
            assert data.shape[:2] == (height, width) and data.shape[-1] == len(keys)
        assert np.isfinite(data).all() and np.abs(data).max() <= 2.0 + 1e-5 and data.std() > 0


def _world_axis0(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinate along the first axis of every voxel centre of a grid."""
    rank = len(shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).reshape(rank, -1)
    return (affine[0, :rank] @ ijk + affine[0, -1]).reshape(shape)


@pytest.mark.parametrize("dims", [3, 2])
def test_maps_land_on_the_original_grid(dims: int, phantoms: Path, tmp_path: Path):
    """A token map equal to each token centre's world x resamples to each original voxel's own world x."""
    from common.transforms.ct import ct_preprocessing
    from common.transforms.xray import xray_preprocessing

    if dims == 3:
        src = nib.load(_test_image(phantoms, 3))
        path = tmp_path / "flipped.nii.gz"  # LPS-like storage and an offset origin: orientation must be undone
        affine = src.affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:3, 3] += [10.0, -7.0, 3.0]
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[::-1, ::-1].copy(), affine), path)
        shape, roi = src.shape, 32
        pre = sliding_window_preprocessing(ct_preprocessing(pixdim=12.0, spatial_size=roi), roi, 8)
    else:
        path = tmp_path / "landscape.png"  # 80 x 128 px: resized to 64 x 102, padded to 64 x 104, 2 windows
        Image.fromarray(np.asarray(Image.open(_test_image(phantoms, 2)))[24:104]).save(path)
        shape, roi = (80, 128), 64
        pre = sliding_window_preprocessing(xray_preprocessing(spatial_size=roi), roi, 8)
    image = Compose(pre)({"image": str(path)})["image"]
    affine = np.asarray(image.meta["original_affine"], dtype=np.float64) if dims == 2 else affine
    grid = tuple(s // 8 for s in image.shape[1:])
    token_affine = PatchGridd("m", "image", 8)({"m": torch.zeros(1, *grid), "image": image})["m"].affine.numpy()
    world_x = _world_axis0(token_affine, grid)
    voxels_x = torch.as_tensor(_world_axis0(image.affine.numpy(), tuple(image.shape[1:])))[None, None]
    pool = torch.nn.functional.avg_pool3d if dims == 3 else torch.nn.functional.avg_pool2d
    np.testing.assert_allclose(pool(voxels_x, 8)[0, 0].numpy(), world_x, atol=1e-6)  # token = centre of its patch
    placed = PatchGridd("m", "image", 8)({"m": torch.as_tensor(world_x[None]).float(), "image": image})
    restored = ResampleToOriginald("m")(placed)["m"]
    assert tuple(restored.shape[1:]) == tuple(shape)
    np.testing.assert_allclose(restored.affine.numpy(), affine, atol=1e-4)
    expected = _world_axis0(affine, tuple(shape))
    inside = (expected > world_x.min() + 1e-3) & (expected < world_x.max() - 1e-3)  # between outer token centres
    assert inside.mean() > 0.4
    np.testing.assert_allclose(restored[0].numpy()[inside], expected[inside], atol=1e-2)


def test_window_grid_and_inferer_checks():
    pad = WindowGridPad(32, 8)
    assert pad.compute_pad_width((20, 33, 64)) == ((0, 0), (6, 6), (4, 3), (0, 0))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        PatchSlidingWindowInferer(roi_size=32, patch_size=8, overlap=0.3)  # step 22
    inferer = PatchSlidingWindowInferer(roi_size=32, patch_size=8, overlap=0.5)
    with pytest.raises(ValueError, match="WindowGridPadd"):
        inferer(torch.zeros(1, 1, 32, 36, 32), network=None)
