"""The MONAI Label app end to end: train a tiny COLIPRI-CT through the app's train task, serve it with a real
``monailabel start_server``, upload a CT through the datastore REST API and check the findings and embedding tasks
against the bundle's own network_def + preprocessing run in this process.

Runs in ``.venv-label`` (``bash scripts/setup_label_env.sh``); skipped where monailabel is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

import httpx  # noqa: E402  (a monailabel requirement)
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "scripts" / "monailabel_app"
BUNDLE = "colipri_ct"
REAL_CT = REPO.parent / "shared" / "data" / "ct" / "chest_cta_cropped.nii.gz"
# Demo overlay plus smaller volumes: the whole module stays well under two minutes on two CPU cores.
OVERRIDES = {"spatial_size": 32, "pixdim": 12.0, "batch_size": 4, "max_text_length": 32, "num_workers": 0}


def _app_modules():
    """``lib.*`` of the app, imported the way MONAI Label imports it (the app folder on ``sys.path``)."""
    sys.path.insert(0, str(APP))
    try:
        from lib.configs import bundle_specs
        from lib.trainers import BundlePretrainTask
    finally:
        sys.path.remove(str(APP))
    return bundle_specs, BundlePretrainTask


def _conf(bundles_dir: Path) -> dict[str, str]:
    return {"bundles": BUNDLE, "bundles_dir": str(bundles_dir), "overlays": "demo", "overrides": json.dumps(OVERRIDES)}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from common.data.phantom import generate_dataset

    out = tmp_path_factory.mktemp("phantoms")
    return Path(generate_dataset(out, num_train=4, num_image_only=1, num_val=0, num_test=0, seed=5, dims=3))


@pytest.fixture(scope="module")
def bundles_dir(tmp_path_factory, phantoms: Path) -> Path:
    """A bundles folder whose colipri_ct (the repository's configs) gets its model.pt from the app's train task."""
    from monailabel.datastore.local import LocalDatastore

    root = tmp_path_factory.mktemp("bundles")
    (root / BUNDLE).mkdir()
    (root / BUNDLE / "configs").symlink_to(REPO / "bundles" / BUNDLE / "configs", target_is_directory=True)
    studies = tmp_path_factory.mktemp("train_studies")
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)
    for record in json.loads(phantoms.read_text())["training"]:
        image = phantoms.parent / record["image"]
        info = {"report": record["report"]} if "report" in record else {}
        datastore.add_image(image.name.replace(".nii.gz", ""), str(image), info)

    bundle_specs, BundlePretrainTask = _app_modules()
    task = BundlePretrainTask(bundle_specs(_conf(root))[BUNDLE])
    with pytest.MonkeyPatch.context() as mp:  # the training subprocess inherits these
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        stats = task({"max_epochs": 1}, datastore)
    datalist = json.loads((task.run_dir / "datalist.json").read_text())["training"]
    assert len(datalist) == 5 and sum("report" in r for r in datalist) == 4  # paired and image-only records
    assert stats["status"] == "DONE" and stats["epoch"] == stats["total_epochs"] == 1  # progress parsed from the log
    assert stats["iteration"] == stats["iterations_per_epoch"] >= 1
    assert task.stats()["status"] == "DONE"
    assert (root / BUNDLE / "models" / "model.pt").is_file()
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundles_dir: Path, tmp_path_factory):
    """A real ``monailabel start_server`` on 127.0.0.1; stopped (its whole process group) at teardown."""
    port = _free_port()
    studies = tmp_path_factory.mktemp("studies")
    log = tmp_path_factory.mktemp("server_log") / "server.log"
    # `python -m monailabel.main` is what the `monailabel` script runs, minus its word splitting of arguments
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies",
           str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in _conf(bundles_dir).items():
        cmd += ["--conf", key, value]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
           "MONAI_LABEL_SESSION_PATH": str(tmp_path_factory.mktemp("sessions"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monailabel server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"monailabel server did not answer in 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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


def test_findings_and_embedding_through_the_server(server: str, bundles_dir: Path, phantoms: Path):
    image = REAL_CT if REAL_CT.is_file() else phantoms.parent / json.loads(phantoms.read_text())["training"][0]["image"]
    info = httpx.get(f"{server}/info/", timeout=30).json()
    assert {f"{BUNDLE}_findings", f"{BUNDLE}_embedding"} <= set(info["models"])
    assert BUNDLE in info["trainers"]

    with open(image, "rb") as fh:
        put = httpx.put(f"{server}/datastore/image", params={"image": "case0"}, timeout=60,
                        files={"file": (image.name, fh)}, data={"params": json.dumps({"report": "No effusion."})})
    assert put.status_code == 200, put.text
    assert "case0" in httpx.get(f"{server}/datastore/?output=all", timeout=30).json()["objects"]

    findings = httpx.post(f"{server}/infer/{BUNDLE}_findings", params={"image": "case0", "output": "json"},
                          timeout=120)
    assert findings.status_code == 200, findings.text
    probs = findings.json()["findings"]
    metadata = json.loads((REPO / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [channel_def[k] for k in sorted(channel_def, key=int)]
    assert list(probs) == names
    served = torch.tensor([probs[n] for n in names])
    assert ((served >= 0) & (served <= 1)).all()

    embedding = httpx.post(f"{server}/infer/{BUNDLE}_embedding", params={"image": "case0", "output": "json"},
                           timeout=120)
    assert embedding.status_code == 200, embedding.text
    vector = torch.tensor(embedding.json()["embedding"])
    demo = ConfigParser.load_config_file(str(REPO / "bundles" / BUNDLE / "configs" / "demo.yaml"))
    assert vector.shape == (demo["projection_dim"],)
    assert abs(float(vector.norm()) - 1.0) < 1e-4

    expected_probs, expected_embedding = _direct(bundles_dir, image)
    torch.testing.assert_close(served, expected_probs.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(vector, expected_embedding.float(), atol=1e-4, rtol=0)


def test_conf_errors_name_the_option(tmp_path: Path):
    bundle_specs, _ = _app_modules()
    with pytest.raises(ValueError, match="conf 'bundles'"):
        bundle_specs({"bundles": "nonexistent"})
    with pytest.raises(ValueError, match="conf 'overrides'"):
        bundle_specs({"bundles": BUNDLE, "overrides": "{not json"})
    with pytest.raises(ValueError, match="holds no bundle.*metadata.json"):
        bundle_specs({"bundles": BUNDLE, "bundles_dir": str(tmp_path)})
    spec = bundle_specs({"bundles": BUNDLE, "overlays": "demo,raddino_ct:demo", "overrides": '{"colipri_ct": {"pixdim": 6}}'})
    assert [p.name for p in spec[BUNDLE].overlays] == ["demo.yaml"] and spec[BUNDLE].overrides == {"pixdim": 6}


def test_a_bundle_folder_is_enough(tmp_path: Path):
    """Every folder with configs/metadata.json and configs/inference.yaml is served, under its folder name; a folder
    without an inference config is not, and per-bundle overrides follow the discovered names."""
    bundle_specs, _ = _app_modules()
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
