"""g2d_cxr embed.yaml end to end on a random-init model: the similarity and pseudo-segmentation maps are written as
NIfTI and as 8-bit PNGs on the radiograph's own pixel grid (a portrait case checks the orientation)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from common.engines.handlers import case_id

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "g2d_cxr" / "configs"


@pytest.mark.slow
def test_embed_writes_png_and_nifti_maps(tmp_path: Path, make_phantoms, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    phantoms = make_phantoms(num_train=1, num_image_only=0, num_val=0, num_test=1, seed=5, image_size_2d=128)
    record = json.loads((phantoms / "datalist_2d.json").read_text())["test"][0]
    portrait = tmp_path / "portrait.png"
    pixels = np.asarray(Image.open(phantoms / record["image"]))
    Image.fromarray(pixels[:, : pixels.shape[1] * 5 // 8]).save(portrait)  # 128 x 80 px: rows != columns
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": str(portrait), "report": record["report"]}]}))

    torch.manual_seed(0)
    root = tmp_path / "g2d_cxr"
    (root / "models").mkdir(parents=True)
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / n) for n in ("train.yaml", "demo.yaml", "embed.yaml")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(datalist),
        max_text_length=32,
        spatial_size=64,
        resize_size=64,
    )
    parser = workflow.parser
    torch.save(parser.get_parsed_content("model").state_dict(), root / "models" / "g2d_model.pt")
    torch.save(parser.get_parsed_content("decoder").state_dict(), root / "models" / "g2d_decoder.pt")
    workflow.initialize()
    workflow.run()

    out, case = Path(parser.get_parsed_content("embed_output_dir")), case_id(str(portrait))
    keys = parser.get_parsed_content("network").finding_keys
    similarity = np.asarray(nib.load(out / f"{case}_similarity.nii.gz").dataobj)  # (rows, columns, 1, findings)
    segmentation = np.asarray(nib.load(out / f"{case}_segmentation.nii.gz").dataobj)
    assert similarity.shape[:2] == (128, 80) and segmentation.shape[:2] == (128, 80)
    similarity = similarity.reshape(128, 80, len(keys))
    for k, key in enumerate(keys):
        png = np.asarray(Image.open(out / f"{case}_similarity_{key}.png"))
        assert png.dtype == np.uint8 and png.shape == (128, 80)  # rows x columns, as the input
        np.testing.assert_allclose(png, np.clip((similarity[..., k] + 1) / 2, 0, 1) * 255, atol=1.01)
    png = np.asarray(Image.open(out / f"{case}_segmentation.png"))
    assert png.dtype == np.uint8 and png.shape == (128, 80)
    np.testing.assert_allclose(png, np.clip(segmentation.reshape(128, 80), 0, 1) * 255, atol=1.01)
