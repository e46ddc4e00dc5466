"""Long tasks show a progress bar: datalist validation, the preprocessing cache, phantom generation, inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from monai.transforms import Compose, ToTensord

from common.bundle_support import discover_bundles
from common.data.dataset import PretrainingDataset
from common.data.phantom import generate_dataset
from common.data.validate import main as validate_main


def test_datalist_validation_shows_progress(tmp_path, capsys):
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}],
                                    "test": [{"image": "c.nii.gz"}]}))  # fmt: skip
    validate_main(str(datalist), open_images=False)
    err = capsys.readouterr().err
    assert "datalist.json: records" in err and "3/3" in err


def test_cache_fill_shows_progress(capsys):
    records = [{"image": np.full(2, float(i), dtype=np.float32)} for i in range(3)]
    PretrainingDataset(records, Compose([ToTensord(keys="image")]), cache=True)
    err = capsys.readouterr().err
    assert "caching preprocessed records" in err and "3/3" in err
    PretrainingDataset(records, Compose([ToTensord(keys="image")]), cache=True, progress=False)
    assert "caching" not in capsys.readouterr().err


@pytest.mark.slow
def test_phantom_generation_shows_progress(tmp_path, capsys):
    generate_dataset(tmp_path, num_train=1, num_image_only=0, num_val=0, num_test=1, image_size_2d=32)
    err = capsys.readouterr().err
    assert "phantoms" in err and "2/2" in err


@pytest.mark.parametrize("bundle", discover_bundles(), ids=lambda b: b.name)
def test_inference_configs_show_progress(bundle):
    handlers = yaml.safe_load(bundle.config("inference").read_text())["handlers"]
    assert any(isinstance(h, dict) and h.get("_target_") == "ignite.handlers.ProgressBar" for h in handlers)
