"""The MONAI Label app end to end: train a tiny COLIPRI-CT through the app's train task, serve it with a real
``monailabel start_server``, upload a CT through the datastore REST API and check the findings and embedding tasks
against the bundle's own network_def + preprocessing run in this process.

Runs in ``.venv-label`` (``bash scripts/setup_label_env.sh``); skipped where monailabel is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

import httpx
import torch
from label_app import APP, BUNDLE, OVERRIDES, REPO, Server, app_conf, app_modules
from monai.bundle import ConfigParser


def _direct(bundles_dir: Path, image: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and image embedding from the bundle's config run in this process (no app code)."""
    configs = REPO / "bundles" / BUNDLE / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.yaml"), str(configs / "demo.yaml")])
    parser.update({"bundle_root": str(bundles_dir / BUNDLE), **OVERRIDES})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundles_dir / BUNDLE / "models" / "model.pt", weights_only=True))
    network.eval()
    batch = parser.get_parsed_content("preprocessing")({"image": str(image)})["image"][None]
    with torch.no_grad():
        return network(batch)[0], network.image_encoder(batch)[0]


def test_findings_and_embedding_through_the_server(server: Server, case0: str, bundles_dir: Path, ct_image: Path):
    info = httpx.get(f"{server.url}/info/", timeout=30).json()
    assert {f"{BUNDLE}_findings", f"{BUNDLE}_embedding"} <= set(info["models"])
    assert BUNDLE in info["trainers"]
    assert case0 in httpx.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]

    findings = httpx.post(
        f"{server.url}/infer/{BUNDLE}_findings", params={"image": case0, "output": "json"}, timeout=120
    )
    assert findings.status_code == 200, findings.text
    probs = findings.json()["findings"]
    metadata = json.loads((REPO / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [channel_def[k] for k in sorted(channel_def, key=int)]
    assert list(probs) == names
    served = torch.tensor([probs[n] for n in names])
    assert ((served >= 0) & (served <= 1)).all()

    embedding = httpx.post(
        f"{server.url}/infer/{BUNDLE}_embedding", params={"image": case0, "output": "json"}, timeout=120
    )
    assert embedding.status_code == 200, embedding.text
    vector = torch.tensor(embedding.json()["embedding"])
    demo = ConfigParser.load_config_file(str(REPO / "bundles" / BUNDLE / "configs" / "demo.yaml"))
    assert vector.shape == (demo["projection_dim"],)
    assert abs(float(vector.norm()) - 1.0) < 1e-4

    expected_probs, expected_embedding = _direct(bundles_dir, ct_image)
    torch.testing.assert_close(served, expected_probs.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(vector, expected_embedding.float(), atol=1e-4, rtol=0)


def test_conf_errors_name_the_option(tmp_path: Path):
    bundle_specs, _ = app_modules()
    with pytest.raises(ValueError, match="conf 'bundles'"):
        bundle_specs({"bundles": "nonexistent"})
    with pytest.raises(ValueError, match="conf 'overrides'"):
        bundle_specs({"bundles": BUNDLE, "overrides": "{not json"})
    with pytest.raises(ValueError, match="holds no bundle.*metadata.json"):
        bundle_specs({"bundles": BUNDLE, "bundles_dir": str(tmp_path)})
    spec = bundle_specs(
        {"bundles": BUNDLE, "overlays": "demo,raddino_ct:demo", "overrides": '{"colipri_ct": {"pixdim": 6}}'}
    )
    assert [p.name for p in spec[BUNDLE].overlays] == ["demo.yaml"] and spec[BUNDLE].overrides == {"pixdim": 6}


def test_a_bundle_folder_is_enough(tmp_path: Path):
    """Every folder with configs/metadata.json and configs/inference.yaml is served, under its folder name; a folder
    without an inference config is not, and per-bundle overrides follow the discovered names."""
    bundle_specs, _ = app_modules()
    assert set(bundle_specs({})) >= {p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/inference.yaml")}
    for name in ("new_method_ct", "train_only"):
        (tmp_path / name / "configs").mkdir(parents=True)
        for file in ("metadata.json", "inference.yaml", "demo.yaml"):
            if name == "new_method_ct" or file == "metadata.json":
                (tmp_path / name / "configs" / file).symlink_to(REPO / "bundles" / BUNDLE / "configs" / file)
    specs = bundle_specs({"bundles_dir": str(tmp_path), "overlays": "demo",
                          "overrides": '{"spatial_size": 32, "new_method_ct": {"pixdim": 12}}'})  # fmt: skip
    assert list(specs) == ["new_method_ct"]
    spec = specs["new_method_ct"]
    assert spec.root == tmp_path / "new_method_ct" and spec.overrides == {"spatial_size": 32, "pixdim": 12}
    assert [p.name for p in spec.overlays] == ["demo.yaml"]
    assert spec.parser("inference").get_parsed_content("spatial_size") == 32


def test_weights_trained_with_other_preprocessing_are_refused(bundles_dir: Path, tmp_path: Path):
    """The app's network loader checks the record the training run wrote beside model.pt, as inference.yaml does."""
    sys.path.insert(0, str(APP))
    try:
        from lib.infers.bundle_network import load_network
    finally:
        sys.path.remove(str(APP))
    from common.engines.preprocessing_record import PreprocessingMismatchError, _sha256, read_record, write_record

    bundle_specs, _ = app_modules()
    trained = bundles_dir / BUNDLE / "models"
    assert read_record(trained / "model.pt") is not None  # the app's train task wrote it
    load_network(bundle_specs(app_conf(bundles_dir))[BUNDLE])  # the served config matches the training run

    copy = tmp_path / BUNDLE
    (copy / "models").mkdir(parents=True)
    (copy / "configs").symlink_to(bundles_dir / BUNDLE / "configs", target_is_directory=True)
    shutil.copy(trained / "model.pt", copy / "models" / "model.pt")
    record = read_record(trained / "model.pt")
    record["image"] = {**record["image"], "pixdim": 0.5}
    record["sha256"] = _sha256(record)
    write_record(copy / "models" / "model.pt", record, lambda path, data: path.write_bytes(data))
    with pytest.raises(PreprocessingMismatchError, match="pixdim"):
        load_network(bundle_specs(app_conf(tmp_path))[BUNDLE])
