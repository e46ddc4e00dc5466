"""``scripts/benchmark.py``: the CLI end to end on CPU with tiny settings, section selection and skip notes; the
training-step section covers every bundle in ``bundles/`` that has a ``train.yaml``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.bundle_support import discover_bundles

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _small_ct(path: Path) -> Path:
    """A 40x36x12 volume at 4x4x10 mm (HU from air to bone) in an oblique-free, LPS-flipped affine."""
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 1400, size=(40, 36, 12)).astype(np.int16)
    affine = np.diag([-4.0, -4.0, 10.0, 1.0])
    affine[:3, 3] = (60.0, 50.0, -40.0)
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


def test_cli_tiny_cpu_run_writes_json_and_markdown(tmp_path: Path) -> None:
    pytest.importorskip("fire")
    pytest.importorskip("ignite")
    volume = _small_ct(tmp_path / "small_ct.nii.gz")
    out = tmp_path / "bench"
    cmd = [
        sys.executable, str(SCRIPT), "run", "--out_dir", str(out), "--device", "cpu",
        "--sections", "preprocessing,encoder,train_step", "--repeats", "1", "--warmup", "0",
        "--volume", str(volume), "--encoder", "eva_tiny", "--encoder_input", "32", "--train_batch", "2",
        "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    markdown = (out / "benchmark.md").read_text()

    machine = report["machine"]
    assert {"cpu", "cpu_cores", "torch", "gpu", "device"} <= set(machine)
    assert machine["device"] == "cpu" and machine["gpu"] is None and machine["cpu_cores"] >= 1
    assert report["settings"]["sections"] == ["preprocessing", "encoder", "train_step"]
    assert set(report["sections"]) == {"preprocessing", "encoder", "train_step"}

    pre = report["sections"]["preprocessing"]
    assert pre["volume"] == str(volume) and pre["input_shape"] == [40, 36, 12]
    for case in ("ours (cpu), with loading", "ours (cpu), in memory"):
        stats = pre["cases"][case]
        assert stats["median_s"] > 0 and math.isclose(stats["volumes_per_s"], 1 / stats["median_s"])
    if "official (TorchIO), with loading" in pre["cases"]:
        agreement = pre["agreement"]["ours (cpu)"]
        assert agreement["shape"] == [1, 192, 192, 192]
        assert agreement["max_abs_diff"] < 2e-3 + 1e-5  # whole-HU truncation of SimpleITK, see the parity tests
        assert agreement["mean_abs_diff"] < 1e-3
    else:
        assert "skipped" in pre["cases"]["official (TorchIO)"]

    enc = report["sections"]["encoder"]
    assert enc["encoder"] == "eva_tiny" and enc["input_size"] == 32 and enc["precision"] == "fp32"
    assert enc["cases"]["ours"]["median_s"] > 0
    if "median_s" in enc["cases"].get("official", {}):
        assert enc["weights_shared"] is True
        assert enc["embedding_max_abs_diff"] < 1e-4  # same weights, same computation
        assert enc["speedup_official_over_ours"] > 0
    else:
        assert "skipped" in enc["cases"]["official"]

    train = report["sections"]["train_step"]
    assert "paper configurations" in train["note"]  # ViT-B/14, Primus-M and EVA-B rows are CUDA-only
    bundles = [b.name for b in discover_bundles(ROOT / "bundles", configs=["train"])]
    assert len(bundles) >= 4 and [label.split()[:2] for label in train["cases"]] == [[b, "demo"] for b in bundles]
    for label, case in train["cases"].items():
        assert "error" not in case, f"{label}: {case}"
        assert case["bundle"] == label.split()[0] and case["configuration"] == "demo"
        assert case["batch_size"] == 2 and case["median_s"] > 0 and math.isfinite(case["last_loss"])
        assert 0 < case["parameters_m"] < 50  # the demo towers, not ViT-B / Primus-M / EVA-B

    assert "Machine:" in markdown and machine["torch"] in markdown
    for title in ("CT preprocessing", "Image encoder forward", "Training step"):
        assert title in markdown
    assert markdown.count("| case |") == 3


def test_sections_are_validated(bench) -> None:
    assert bench._sections("encoder, train_step") == ["encoder", "train_step"]
    assert bench._sections(("preprocessing",)) == ["preprocessing"]
    with pytest.raises(ValueError, match="unknown sections"):
        bench._sections("encoder,decoder")


def test_missing_dependency_is_a_skip_note(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench, "_try_import", lambda name: (None, f"{name} not importable (test)"))
    result = bench.bench_train_step(bench.torch.device("cpu"), repeats=1, warmup=0, batch_size=1)
    assert result == {"skipped": "ignite not importable (test)"}
    report = {
        "machine": bench.machine_info(bench.torch.device("cpu")),
        "settings": {"repeats": 1, "warmup": 0},
        "sections": {"train_step": result},
    }
    assert "ignite not importable (test)" in bench.to_markdown(report)


def test_missing_volume_is_an_error(bench, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bench.run(out_dir=str(tmp_path / "b"), sections="preprocessing", volume=str(tmp_path / "absent.nii.gz"))
