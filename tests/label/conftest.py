"""Fixtures for the MONAI Label app tests: a tiny COLIPRI-CT trained through the app's train task and a real
``monailabel start_server`` on 127.0.0.1, both started once per session.

The server's studies folder and working directory are set up the way the bad-request tests need them: a link
``outside.nii.gz`` to a CT outside the studies folder, a truncated ``broken.nii.gz`` placed there by hand, and a
readable CT in the server's working directory (which MONAI Label alone would read for ``image=cwd_image.nii.gz``).

The tests run in ``.venv-label`` (``bash scripts/setup_label_env.sh``); each test module skips where monailabel is
not installed, and nothing here imports it at collection time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from label_app import APP, BUNDLE, REAL_CT, Server, app_conf, app_modules, bundle_folder


@pytest.fixture(scope="session")
def phantoms(make_phantoms) -> Path:
    """The CT datalist of 4 paired and 1 image-only phantoms (a miniature CT-RATE read by its builder)."""
    return make_phantoms(num_train=4, num_image_only=1, num_val=0, num_test=0, seed=5) / "datalist_3d.json"


@pytest.fixture(scope="session")
def ct_image(phantoms: Path) -> Path:
    """A real chest CT (``shared/data/ct/chest_cta_cropped.nii.gz``), or a phantom where it is absent."""
    return REAL_CT if REAL_CT.is_file() else phantoms.parent / json.loads(phantoms.read_text())["training"][0]["image"]


@pytest.fixture(scope="session")
def train_datastore(tmp_path_factory, phantoms: Path):
    """MONAI Label's stock ``LocalDatastore`` holding the phantoms' training volumes, each paired one with its report
    in the image info (as a client uploads it); the image-only volume has none."""
    from monailabel.datastore.local import LocalDatastore  # the stock datastore: the training images are ours

    studies = tmp_path_factory.mktemp("train_studies")
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), auto_reload=False)
    for record in json.loads(phantoms.read_text())["training"]:
        image = phantoms.parent / record["image"]
        info = {"report": record["report"]} if "report" in record else {}
        datastore.add_image(image.name.replace(".nii.gz", ""), str(image), info)
    return datastore


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory, train_datastore) -> Path:
    """A bundles folder whose colipri_ct (the repository's configs) gets its model.pt from the app's train task."""
    root = bundle_folder(tmp_path_factory.mktemp("bundles"), BUNDLE)
    datastore = train_datastore
    bundle_specs, BundlePretrainTask = app_modules()
    task = BundlePretrainTask(bundle_specs(app_conf(root))[BUNDLE])
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


@pytest.fixture(scope="session")
def server(bundles_dir: Path, ct_image: Path, tmp_path_factory):
    """A real ``monailabel start_server`` on 127.0.0.1; stopped (its whole process group) at teardown."""
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    studies = tmp_path_factory.mktemp("studies")
    outside = tmp_path_factory.mktemp("outside") / "secret_ct.nii.gz"
    shutil.copy(ct_image, outside)
    (studies / "outside.nii.gz").symlink_to(outside)
    (studies / "broken.nii.gz").write_bytes(ct_image.read_bytes()[:20000])
    cwd = tmp_path_factory.mktemp("server_cwd")
    shutil.copy(ct_image, cwd / "cwd_image.nii.gz")
    log = tmp_path_factory.mktemp("server_log") / "server.log"
    # `python -m monailabel.main` is what the `monailabel` script runs, minus its word splitting of arguments
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies",
           str(studies), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    for key, value in app_conf(bundles_dir).items():
        cmd += ["--conf", key, value]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
           "MONAI_LABEL_SESSION_PATH": str(tmp_path_factory.mktemp("sessions"))}  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
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
        yield Server(url=url, studies=studies, cwd=cwd, log=log, outside=outside)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def case0(server: Server, ct_image: Path) -> str:
    """``case0``: the CT uploaded through the datastore API with a report."""
    import httpx

    with open(ct_image, "rb") as fh:
        put = httpx.put(f"{server.url}/datastore/image", params={"image": "case0"}, timeout=60,
                        files={"file": (ct_image.name, fh)}, data={"params": json.dumps({"report": "No effusion."})})  # fmt: skip
    assert put.status_code == 200, put.text
    return "case0"
