"""``scripts/label_load.py``: a short bounded run against the test server counts every request per task, and the
script refuses hosts that are not loopback and runs beyond its bounds."""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytest.importorskip("monailabel")

from label_app import BUNDLE, REPO, Server


def _load_module():
    spec = importlib.util.spec_from_file_location("label_load", REPO / "scripts" / "label_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_short_run_counts_every_request(server: Server, case0: str):
    result = _load_module().run_load(server.url, clients=2, duration=3, images=[case0, "no_such_image"])
    tasks = result["tasks"]
    assert set(tasks) >= {f"{BUNDLE}_findings", f"{BUNDLE}_embedding"}
    assert result["requests"] == sum(t["requests"] for t in tasks.values()) >= 2
    # every other request names an unknown id: those are the failures, all 404
    assert result["failures"] == sum(t["statuses"].get("404", 0) for t in tasks.values()) >= 1
    answered = [t for t in tasks.values() if t["statuses"].get("200")]
    assert answered and all(0 < t["p50_ms"] <= t["p95_ms"] for t in answered)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"url": "http://8.8.8.8:8000"}, "not a loopback address"),
        ({"clients": 17}, "--clients 17"),
        ({"duration": 601}, "--duration 601"),
    ],
)
def test_bounds(kwargs: dict, phrase: str):
    args = {"url": "http://127.0.0.1:9", "clients": 1, "duration": 1, **kwargs}
    with pytest.raises(ValueError, match=phrase):
        _load_module().run_load(**args)
