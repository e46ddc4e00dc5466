"""Bad requests against a real server: the app serves its datastore and nothing else, refuses with a status and the
reason (the reader's message for a bad image), never with a traceback, and stores only readable uploads.

The table of these requests, statuses and messages is in ``scripts/monailabel_app/README.md``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel")

import httpx
from label_app import APP, BUNDLE, MAX_UPLOAD_MB, Server

FINDINGS = f"{BUNDLE}_findings"


def _refused(response: httpx.Response, status: int, *phrases: str) -> str:
    """Assert the status and that the JSON ``detail`` holds each phrase and no traceback or server temp path."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for phrase in phrases:
        assert phrase in detail, (phrase, detail)
    assert "Traceback" not in response.text and "medvlp-label-uploads" not in response.text
    return detail


def _infer(server: Server, image: str, model: str = FINDINGS, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/infer/{model}", params={"image": image, "output": "json"}, timeout=120, **kwargs)


def _upload(server: Server, image_id: str | None, name: str, content: bytes, **params) -> httpx.Response:
    query = {"image": image_id} if image_id is not None else {}
    return httpx.put(f"{server.url}/datastore/image", params=query, files={"file": (name, content)},
                     data={"params": json.dumps(params)}, timeout=60)  # fmt: skip


def _objects(server: Server) -> dict:
    return httpx.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]


def test_unknown_model_and_unknown_image_are_404(server: Server, case0: str):
    _refused(_infer(server, case0, model="no_such_model"), 404, "unknown model 'no_such_model'", FINDINGS)
    _refused(_infer(server, "no_such_image"), 404, "unknown image id 'no_such_image'")
    _refused(httpx.get(f"{server.url}/datastore/image", params={"image": "no_such_image"}, timeout=30), 404)
    _refused(httpx.get(f"{server.url}/datastore/image/info", params={"image": "no_such_image"}, timeout=30), 404)


@pytest.mark.parametrize(
    "query",
    [
        "image=../../etc/passwd",
        "image=%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",  # URL-encoded: the server decodes it once, to ../../etc/passwd
        "image=%252E%252E%252Fetc%252Fpasswd",  # double-encoded: the id is the literal %2E%2E%2F... text
        "image=cwd_image.nii.gz",  # a readable CT in the server's working directory (MONAI Label alone reads it)
        "image=outside",  # a link in the studies folder to a CT outside it
    ],
)
def test_ids_that_escape_the_datastore_are_404(server: Server, query: str):
    response = httpx.post(f"{server.url}/infer/{FINDINGS}?{query}&output=json", timeout=120)
    _refused(response, 404, "unknown image id")


def test_server_paths_are_403_also_through_params(server: Server, case0: str):
    _refused(_infer(server, str(server.outside)), 403, "server path", "allow_absolute_paths")
    _refused(_infer(server, "/etc/hostname"), 403, "server path")
    params = {"params": json.dumps({"image": str(server.cwd / "cwd_image.nii.gz")})}
    _refused(_infer(server, case0, data=params), 403, "server path")


def test_over_long_query_is_414(server: Server):
    # 64 KiB of query, sent with the standard library (httpx refuses to build a URL that long)
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", f"/infer/{FINDINGS}?output=json&image={'a' * 65536}")
    answer = connection.getresponse()
    body = answer.read().decode()
    connection.close()
    response = httpx.Response(answer.status, content=body, headers={"content-type": "application/json"})
    _refused(response, 414, "65536 characters long")
    _refused(_upload(server, "a" * 300, "x.nii.gz", b"0"), 414, "300 characters long")


def test_unreadable_datastore_image_is_422_with_the_readers_message(server: Server):
    detail = _refused(_infer(server, "broken"), 422, "image 'broken': truncated or corrupt image data")
    assert str(server.studies) not in detail  # the client sees its id, the server log the path
    log = server.log.read_text()
    assert f"{server.studies.resolve() / 'broken.nii.gz'}: truncated or corrupt image data" in log


def test_corrupt_or_wrong_kind_upload_to_infer_is_422(server: Server, tmp_path: Path):
    import nibabel as nib

    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32), np.eye(4)), flat)
    with open(flat, "rb") as fh:
        response = _infer(server, "", files={"file": ("slice.nii.gz", fh)})
    _refused(response, 422, "uploaded file (.nii.gz): image is 2D (shape (32, 32)); a 3D volume is expected")
    response = _infer(server, "", files={"file": ("scan.nii.gz", gzip.compress(b"not an image"))})
    _refused(response, 422, "uploaded file (.nii.gz): cannot read the header")
    upload_dir = _upload_dir(server)
    assert not any(upload_dir.iterdir()), list(upload_dir.iterdir())  # refused uploads are removed


def _upload_dir(server: Server) -> Path:
    """The app's private upload folder, as the server logged it."""
    for line in server.log.read_text().splitlines():
        if "Request upload folder:" in line:
            return Path(line.rsplit("Request upload folder:", 1)[1].strip())
    raise AssertionError("the server did not log its upload folder")


@pytest.mark.parametrize(
    ("image_id", "name", "content", "status", "phrase"),
    [
        ("empty", "empty.nii.gz", b"", 422, "upload 'empty' (.nii.gz file): cannot read the header: truncated file"),
        ("text", "notes.txt", b"hello", 422, "upload 'text': unsupported file type '.txt'"),
        ("textgz", "notes.nii.gz", b"hello", 422, "cannot read the header: truncated or corrupt file"),
        ("big", "big.nii.gz", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1), 413, f"the limit is {MAX_UPLOAD_MB * 2**20}"),
        ("../escaped", "x.nii.gz", b"0", 422, "image id '../escaped' is not a plain name"),
        ("%2E%2E%2Fescaped", "x.nii.gz", b"0", 422, "is not a plain name"),
        (None, "../../escaped.nii.gz", b"", 422, "upload 'escaped'"),  # id from the file name: its base name
        ("outside", "x.nii.gz", b"0", 422, "names a link out of the datastore"),
    ],
)
def test_bad_uploads_are_refused_and_not_stored(server: Server, image_id, name, content, status, phrase):
    before = _objects(server)
    _refused(_upload(server, image_id, name, content), status, phrase)
    assert _objects(server).keys() == before.keys()
    assert not (server.studies.parent / "escaped.nii.gz").exists()
    assert not any(server.studies.parent.glob("escaped*"))


def test_truncated_gzip_upload_is_refused(server: Server, ct_image: Path):
    truncated = ct_image.read_bytes()[: ct_image.stat().st_size // 2]
    _refused(
        _upload(server, "half", "half.nii.gz", truncated), 422, "upload 'half' (.nii.gz file): truncated or corrupt"
    )
    assert "half" not in _objects(server)


def test_report_must_be_text(server: Server, ct_image: Path):
    _refused(_upload(server, "rep", "rep.nii.gz", ct_image.read_bytes(), report=5), 422, "'report' must be text")
    response = httpx.put(f"{server.url}/datastore/image/info", params={"image": "no_such_image"},
                         data={"info": json.dumps({"report": "x"})}, timeout=30)  # fmt: skip
    _refused(response, 404, "unknown image id")


def test_the_link_out_of_the_studies_is_never_read_written_or_removed(server: Server):
    target = server.outside.read_bytes()
    _refused(httpx.get(f"{server.url}/datastore/image", params={"image": "outside"}, timeout=30), 404)
    _refused(httpx.delete(f"{server.url}/datastore/image", params={"id": "outside"}, timeout=30), 404)
    assert server.outside.read_bytes() == target


def test_label_tags_stay_inside_labels(server: Server, case0: str):
    response = httpx.put(f"{server.url}/datastore/label", params={"image": case0, "tag": "../../escaped"},
                         files={"label": ("l.nii.gz", b"0")}, timeout=30)  # fmt: skip
    _refused(response, 422, "label tag '../../escaped' is not a plain name")
    assert not any(server.studies.parent.glob("escaped*"))


def test_a_good_upload_is_stored_and_served(server: Server, ct_image: Path):
    """The refusals above are specific: a readable CT under a plain id is stored, listed and inferred on."""
    assert _upload(server, "good.1", ct_image.name, ct_image.read_bytes(), report="Normal.").status_code == 200
    assert _objects(server)["good.1"]["image"]["info"]["report"] == "Normal."
    response = _infer(server, "good.1")
    assert response.status_code == 200, response.text
    assert len(response.json()["findings"]) > 0


def test_absolute_paths_only_with_the_knob(tmp_path: Path, ct_image: Path):
    """``allow_absolute_paths`` (off by default) reads a server path as given; uploads and sessions are accepted."""
    sys.path.insert(0, str(APP))
    try:
        from fastapi import HTTPException
        from lib.request_images import RequestImages
    finally:
        sys.path.remove(str(APP))
    uploads, sessions = tmp_path / "uploads", tmp_path / "sessions"
    uploads.mkdir()
    (sessions / "s1").mkdir(parents=True)
    (uploads / "tmpab.nii.gz").write_bytes(b"x")
    (sessions / "s1" / "image.nii.gz").write_bytes(b"x")
    images = RequestImages(upload_dir=uploads, session_dir=sessions)
    assert images.is_upload(uploads / "tmpab.nii.gz") and not images.is_upload("tmpab.nii.gz")
    assert images.resolve(str(uploads / "tmpab.nii.gz"), datastore=None)[1] == "uploaded file (.nii.gz)"
    assert images.resolve(str(sessions / "s1" / "image.nii.gz"), datastore=None)[1] == "session image (.nii.gz)"
    with pytest.raises(HTTPException) as err:
        images.resolve(str(ct_image), datastore=None)
    assert err.value.status_code == 403
    with pytest.raises(HTTPException) as err:  # ../ out of the upload folder is not an upload
        images.resolve(str(uploads / ".." / "sessions" / ".." / "elsewhere.nii.gz"), datastore=None)
    assert err.value.status_code == 403
    trusted = RequestImages(upload_dir=uploads, allow_absolute_paths=True)
    assert trusted.resolve(str(ct_image), datastore=None) == (ct_image.resolve(), str(ct_image))
    with pytest.raises(HTTPException) as err:
        trusted.resolve(str(tmp_path / "missing.nii.gz"), datastore=None)
    assert err.value.status_code == 404


def test_train_overrides_from_a_client_are_plain_values(server: Server, tmp_path: Path):
    """A ``$`` expression in a train request's overrides would run as Python in the training process: refused, and
    the task fails before training starts (MONAI Label runs train requests in a subprocess, so the refusal is in the
    task's status and log rather than in the POST answer)."""
    sys.path.insert(0, str(APP))
    try:
        from lib.trainers.bundle_pretraining import client_overrides
    finally:
        sys.path.remove(str(APP))
    assert client_overrides('{"max_epochs": 2, "lr": 1e-4, "amp": false, "pixdim": [8, 8, 8]}')["pixdim"] == [8, 8, 8]
    for bad in ({"max_epochs": "$1"}, {"bundle_root": "/tmp/elsewhere"}, {"network_def": {"_target_": "x"}}):
        with pytest.raises(ValueError, match="numbers and booleans only"):
            client_overrides(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        client_overrides("{max_epochs")

    marker = tmp_path / "code_ran"
    expression = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 1"
    posted = httpx.post(f"{server.url}/train/{BUNDLE}", json={"overrides": {"max_epochs": expression}}, timeout=60)
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 300
    status = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            break
        time.sleep(2)
    assert status.get("status") == "ERROR", status
    assert "numbers and booleans only" in "\n".join(status.get("details", [])), status
    assert not marker.exists()
