"""The data-path sections of ``scripts/benchmark.py`` (``scripts/benchmark_data.py``) end to end on one small CT:
every library and pipeline is measured, outputs are compared, and JSON + Markdown carry the figures and the load."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_sections_on_a_small_ct(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_dir = tmp_path / "data"
    (data_dir / "ct").mkdir(parents=True)
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(48, 40, 24)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 8.0, 1.0])), data_dir / "ct" / "small.nii.gz")
    out = tmp_path / "bench"
    report = bench.run(out_dir=str(out), sections="decoding,store_format,data_path", repeats=2, data_dir=str(data_dir),
                       phantoms=0, loader_volumes=2)  # fmt: skip
    sections = report["sections"]

    decoding = sections["decoding"]["volumes"]["small.nii.gz"]["cases"]
    measured = {name: case for name, case in decoding.items() if "cpu_s" in case}
    assert "stdlib zlib (gzip)" in measured and all(case["cpu_s"] >= 0 for case in measured.values())
    assert all(case["identical"] for name, case in measured.items() if "identical" in case)
    backend = sections["decoding"]["gzip_backend"]
    assert decoding[f"read_volume ({backend})"]["identical_to_nibabel"] is True

    formats = sections["store_format"]["cases"]
    assert any(name.startswith("blosc2") for name in formats)
    assert all(case["lossless"] and case["ratio"] > 1 for case in formats.values() if "lossless" in case)

    path = sections["data_path"]["real CTs"]
    assert path["store_build"]["counts"] == {"records": 1, "reused": 0, "built": 1, "skipped": 0}
    assert path["agreement"]["store vs on the fly: bit-identical"] is True
    for workers in (1, 2):
        for pipeline in ("ours, on the fly", "ours, from the store"):
            case = path["cases"][f"{pipeline}, {workers} worker(s)"]
            assert case["volumes_per_s"] > 0 and case["cpu_s_per_volume"] > 0
            assert {"load_before", "load_after"} <= set(case)
            assert case["repeats"] == 2 and case["cpu_s_per_volume_min"] <= case["cpu_s_per_volume"]
            assert case["cpu_s_per_volume"] <= case["cpu_s_per_volume_max"]
    assert path["loader_items"] == 2  # the one input read twice per DataLoader case
    assert set(path["worker_start_cpu_s"]) == {"1", "2"} and all(c > 0 for c in path["worker_start_cpu_s"].values())
    assert path["cases"]["ours, on the fly, in a fresh process"]["cpu_s_per_volume"] > 0
    torchio = path["cases"]["release TorchIO processor, 1 worker(s)"]
    if "skipped" not in torchio:
        assert path["agreement"]["ours vs TorchIO: max |diff|"] < 0.01  # within 1 HU after the [-1, 1] window
        low, high = path["agreement"]["ours, on the fly / TorchIO, 1 worker(s): CPU s ratio, min-max"]
        assert low <= path["agreement"]["ours, on the fly / TorchIO, 1 worker(s): CPU s ratio"] <= high

    assert json.loads((out / "benchmark.json").read_text())["sections"].keys() == sections.keys()
    markdown = (out / "benchmark.md").read_text()
    for title in ("gzip decoding", "Store format", "on the fly vs store", "load average"):
        assert title in markdown
    assert all(len(sections[name]["load_average"]) == 2 for name in sections)
