"""PRIOR embed.yaml end to end on random-init models: the sentence-patch maps are written on the input's own grid
(NIfTI for CT; NIfTI and 8-bit PNGs for a portrait radiograph) and agree with the exported classifier."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from common.engines.handlers import case_id
from common.transforms.text import prompt_pairs

REPO = Path(__file__).resolve().parents[2]
TINY = {"max_text_length": 32, "embed_dim": 32, "pool_heads": 4, "sentence_pool_heads": 4, "num_prototypes": 16}


def _input_case(phantoms: Path, tmp_path: Path, dims: int) -> tuple[Path, tuple[int, ...], str]:
    """One phantom test case as the embed input: a 128 x 80 px portrait radiograph (rows != columns) or a volume."""
    record = json.loads((phantoms / f"datalist_{dims}d.json").read_text())["test"][0]
    if dims == 3:
        image = phantoms / record["image"]
        return image, tuple(nib.load(image).shape[:3]), record["report"]
    image = tmp_path / "portrait.png"
    pixels = np.asarray(Image.open(phantoms / record["image"]))
    Image.fromarray(pixels[:, : pixels.shape[1] * 5 // 8]).save(image)
    return image, (128, 80), record["report"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle,dims", [("prior_cxr", 2), ("prior_ct", 3)])
def test_embed_writes_sentence_patch_maps(bundle: str, dims: int, tmp_path: Path, make_phantoms, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    phantoms = make_phantoms(num_train=1, num_image_only=0, num_val=0, num_test=1, seed=5, image_size_2d=128)
    image, shape, report = _input_case(phantoms, tmp_path, dims)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": str(image), "report": report}]}))
    configs = REPO / "bundles" / bundle / "configs"
    root = tmp_path / bundle
    (root / "models").mkdir(parents=True)
    size = {"spatial_size": 32, "pixdim": 12.0} if dims == 3 else {"spatial_size": 64, "resize_size": 64}
    torch.manual_seed(0)
    workflow = ConfigWorkflow(
        config_file=[str(configs / n) for n in ("train.yaml", "stage3.yaml", "demo.yaml", "embed.yaml")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(datalist),
        **TINY,
        **size,
    )
    parser = workflow.parser
    model = parser.get_parsed_content("model").eval()
    findings = parser.get_parsed_content("findings")
    classifier = parser.get_parsed_content("build_classifier")(
        model, parser.get_parsed_content("tokenizer"), prompt_pairs(findings)
    )
    torch.save(model.state_dict(), root / "models" / "prior_model.pt")
    torch.save(classifier.state_dict(), root / "models" / "model.pt")  # what export_two_tower writes
    workflow.initialize()
    workflow.run()

    out, case = Path(parser.get_parsed_content("embed_output_dir")), case_id(str(image))
    keys = parser.get_parsed_content("network").finding_keys
    assert keys == [f.key for f in findings]
    maps = np.asarray(nib.load(out / f"{case}_similarity.nii.gz").dataobj)
    assert maps.shape[:dims] == shape and maps.size == np.prod(shape) * len(keys)
    maps = maps.reshape(*shape, len(keys))
    assert np.abs(maps).max() <= 1 and np.ptp(maps) > 0  # attention differences, not a constant

    # the probabilities and the maps are the exported classifier's on the preprocessed image
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        expected = classifier.eval()(item["image"][None].float())[0].numpy()
        preprocessed_maps = classifier.local_maps(item["image"][None].float())[0].numpy()
    with open(out / "predictions.csv") as f:
        row = next(csv.reader(f))
    np.testing.assert_allclose(np.asarray(row[1:], dtype=float), expected, rtol=1e-4, atol=1e-5)
    # resampling onto the input grid interpolates: no new extremes
    assert preprocessed_maps.min() - 1e-3 <= maps.min() and maps.max() <= preprocessed_maps.max() + 1e-3
    if dims == 2:
        for k, key in enumerate(keys):
            png = np.asarray(Image.open(out / f"{case}_similarity_{key}.png"))
            assert png.dtype == np.uint8 and png.shape == shape  # rows x columns, as the input
            np.testing.assert_allclose(png, np.clip((maps[..., k] + 1) / 2, 0, 1) * 255, atol=1.01)
