"""Model Zoo export (scripts/export_zoo_bundle.py): every bundle in ``bundles/`` exports, passes the Zoo checks and
runs inference with this repository NOT importable (editable-install finder and repo paths removed, cwd outside the
repo); an inference-only export carries only what inference needs and runs too."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from common.bundle_support import discover_bundles
from common.engines.preprocessing_record import read_record, record_from_config, write_record

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {b.name: b for b in discover_bundles(REPO / "bundles", configs=["inference"])}  # every bundle


@pytest.fixture(scope="module")
def inputs(make_phantoms) -> Path:
    """Phantoms as a miniature CT-RATE and MIMIC-CXR-JPG with one test case each (a training case the layouts
    need), and their datalists (``datalist_3d.json``, ``datalist_2d.json``): inference reads the test section."""
    return make_phantoms(num_train=1, num_image_only=0, num_val=0, num_test=1, seed=5, image_size_2d=128)


def _editable_finders() -> list[str]:
    """Modules of the editable install's import hooks that map this checkout (``__editable___*_finder.py``)."""
    names = []
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        for finder in Path(folder).glob("__editable__*finder.py"):
            if str(REPO) in finder.read_text():
                names.append(finder.stem)
    return names


# Runs `python -m monai.bundle <command> ...` for every exported bundle in ONE interpreter (importing MONAI costs
# 10-30 s on the 2-core CI box), after removing every way this checkout could be imported. Each bundle runs from its
# own root with its own `scripts` package (the previous one is dropped from sys.modules); a JSON report per bundle.
_ISOLATED = r"""
import importlib, json, os, runpy, sys, time, traceback
spec = json.loads(sys.argv[1])
repo = os.path.realpath(spec["repo"])
def serves_repo(entry):  # a path entry from which this checkout's package would be imported
    package = os.path.realpath(os.path.join(entry or os.getcwd(), "common"))
    return os.path.exists(package) and (package + os.sep).startswith(repo + os.sep)
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", "") not in spec["finders"]]
sys.path_hooks[:] = [h for h in sys.path_hooks if getattr(h, "__module__", "") not in spec["finders"]]
sys.path[:] = [p for p in sys.path if not serves_repo(p) and "__editable__" not in p]
sys.path_importer_cache.clear()
try:
    import common
    import_common = common.__file__
except ModuleNotFoundError:
    import_common = None
reports = {}
for bundle_dir, commands in spec["bundles"].items() if import_common is None else []:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p not in spec["bundles"]]
    os.chdir(bundle_dir)
    importlib.invalidate_caches()
    report = reports[bundle_dir] = {"cwd": os.getcwd(), "seconds": {}, "error": None}
    for args in commands:
        sys.argv, start = ["monai.bundle", *args], time.perf_counter()
        try:
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        except SystemExit as err:
            if err.code not in (0, None):
                report["error"] = f"monai.bundle {args[0]} exited with {err.code}"
        except BaseException:
            report["error"] = f"monai.bundle {args[0]} failed:\n" + traceback.format_exc()[-3000:]
        if report["error"]:
            break
        report["seconds"][args[0]] = round(time.perf_counter() - start, 2)
    report["scripts"] = getattr(sys.modules.get("scripts"), "__file__", None)
    report["common_modules"] = sorted(m for m in sys.modules if m == "common" or m.startswith("common."))
print("ZOO-REPORT " + json.dumps({"import_common": import_common, "bundles": reports}))
"""


def _run_isolated(runs: dict[Path, list[list[str]]], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MEDVLP_CACHE=str(cwd / "medvlp_cache"))
    spec = json.dumps(
        {"repo": str(REPO), "finders": _editable_finders(), "bundles": {str(k): v for k, v in runs.items()}}
    )
    proc = subprocess.run(
        [sys.executable, "-c", _ISOLATED, spec],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ZOO-REPORT ")]
    assert proc.returncode == 0 and lines, log
    report = json.loads(lines[-1][len("ZOO-REPORT ") :])
    for bundle_dir, result in report["bundles"].items():
        print(f"{Path(bundle_dir).name}: seconds per command (the first includes importing MONAI): {result['seconds']}")
    return report


def _library_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        found += [n for n in names if n == "common" or n.startswith("common.")]
    return found


def _export_kwargs(bundle: str) -> dict:
    """Random weights and, when the bundle has one, the demo overlay (the network a CPU demo trains)."""
    return {"random_init": True, "changelog": "test export",
            **({"overlay": "demo"} if BUNDLES[bundle].config("demo") else {})}  # fmt: skip


def _inference_input(inputs: Path, bundle: str) -> Path:
    return inputs / f"datalist_{BUNDLES[bundle].spatial_dims}d.json"


@pytest.fixture(scope="module")
def zoo_exports(exporter, inputs: Path, tmp_path_factory) -> dict[str, tuple[Path, dict, dict]]:
    """Export each bundle twice (all configs; inference only), then run the Zoo checks and an inference on every
    full export, and the inference on every inference-only export, in one interpreter that cannot import the
    repository: ``bundle`` / ``bundle:inference`` -> (exported root, export summary, run report)."""
    root = tmp_path_factory.mktemp("zoo")
    meta_args = ["--meta_file", "configs/metadata.json"]
    net_args = ["network_def", *meta_args, "--config_file", "configs/inference.yaml"]
    exports, runs = {}, {}
    for bundle in BUNDLES:
        run = ["run", "--config_file", "configs/inference.yaml", *meta_args, "--logging_file", "configs/logging.conf",
               "--dataset_dir", str(_inference_input(inputs, bundle))]  # fmt: skip
        out = root / f"{bundle}_zoo"  # not the bundle's name: the bundle root must not be found by name
        summary = exporter.export(bundle, str(out), **_export_kwargs(bundle))
        trace = ["--use_trace", "True", "--input_shape", str(summary["input_shape"])]
        runs[out] = [
            ["verify_metadata", *meta_args, "--filepath", "scripts/resources/meta_schema_20240725.json"],
            ["verify_net_in_out", *net_args, "--device", "cpu"],
            [
                "ckpt_export",
                *net_args,
                "--filepath",
                "models/model.ts",
                "--ckpt_file",
                "models/model.pt",
                *(trace if summary["torchscript"] == "trace" else []),
            ],
            run,
        ]
        exports[bundle] = (out, summary)
        out = root / f"{bundle}_inference_zoo"
        exports[f"{bundle}:inference"] = (out, exporter.export(bundle, str(out), configs="inference",
                                                               **_export_kwargs(bundle)))  # fmt: skip
        runs[out] = [run]
    report = _run_isolated(runs, cwd=root)
    assert report["import_common"] is None, f"the repository is still importable: {report['import_common']}"
    return {b: (out, summary, report["bundles"][str(out)]) for b, (out, summary) in exports.items()}


def _prediction_rows(out: Path) -> list[list[str]]:
    """The one CSV the inference wrote into ``eval/`` (bundle_root = the export, not the repository)."""
    (written,) = (out / "eval").glob("*.csv")
    return list(csv.reader(written.open()))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_exported_bundle_runs_without_the_repository(bundle: str, zoo_exports, inputs: Path):
    out, summary, report = zoo_exports[bundle]

    # layout, metadata, weights and their large_files.yml entry
    for name in (
        "LICENSE",
        "large_files.yml",
        "configs/metadata.json",
        "configs/inference.yaml",
        "configs/logging.conf",
        "models/model.pt",
        "docs/README.md",
        "docs/data_license.txt",
        "scripts/__init__.py",
    ):
        assert (out / name).is_file(), name
    source_meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["version"] == summary["version"] != source_meta["version"]
    assert meta["changelog"][meta["version"]] == "test export" and next(iter(meta["changelog"])) == meta["version"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == summary["input_shape"][2:]
    pred_channels = meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    (entry,) = yaml.safe_load((out / "large_files.yml").read_text())["large_files"]
    assert entry["path"] == "models/model.pt" and entry["hash_type"] == "sha256" and entry["url"]
    assert entry["hash_val"] == hashlib.sha256((out / "models" / "model.pt").read_bytes()).hexdigest()

    # vendored code and configs no longer name the repository's package; the README follows the Zoo template
    vendored = sorted((out / "scripts").rglob("*.py"))
    assert vendored and not [(p.name, n) for p in vendored for n in _library_imports(p)]
    for config in (out / "configs").glob("*.yaml"):
        assert not re.search(r"(?<![\w.])common\.[a-z]", config.read_text()), config.name
    readme = (out / "docs" / "README.md").read_text()
    for heading in (
        "# Model Overview",
        "## Data",
        "### Preprocessing",
        "## Training configuration",
        "## Input",
        "## Output",
        "## Performance",
        "## MONAI Bundle Commands",
        "# References",
        "# License",
    ):
        assert f"\n{heading}\n" in readme, heading
    if summary["torchscript"] != "script":  # the Zoo records why a bundle is excluded from scripting
        assert "exclude_verify_torchscript_list" in readme and "`torch.jit.script` fails" in readme
        assert summary["torchscript"] == "trace", readme

    # verify_metadata, verify_net_in_out, ckpt_export and run passed without the repository
    assert report["error"] is None, report["error"]
    assert list(report["seconds"]) == ["verify_metadata", "verify_net_in_out", "ckpt_export", "run"]
    assert not report["common_modules"] and Path(report["cwd"]).resolve() == out.resolve()
    assert Path(report["scripts"]).resolve() == (out / "scripts" / "__init__.py").resolve()
    scripted = torch.jit.load(str(out / "models" / "model.ts"))
    assert scripted.state_dict().keys() == state.keys()
    assert all(torch.equal(scripted.state_dict()[k], v) for k, v in state.items())
    assert scripted(torch.rand(summary["input_shape"])).shape == (1, pred_channels)
    rows = _prediction_rows(out)
    test_case = json.loads(_inference_input(inputs, bundle).read_text())["test"][0]["image"]  # valid_1_a_1.nii.gz
    assert len(rows) == 1 and Path(rows[0][0]).name.startswith(Path(test_case).name.split(".")[0])
    values = torch.tensor([float(v) for v in rows[0][1:]])
    assert values.numel() == pred_channels and values.isfinite().all()
    if meta["network_data_format"]["outputs"]["pred"]["type"] == "probabilities":
        assert ((values >= 0) & (values <= 1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_inference_export_carries_only_what_inference_needs(bundle: str, zoo_exports):
    out, summary, report = zoo_exports[f"{bundle}:inference"]
    full_out, full_summary, _ = zoo_exports[bundle]
    assert summary["configs"] == ["inference.yaml"]
    assert sorted(p.name for p in (out / "configs").iterdir()) == ["inference.yaml", "logging.conf", "metadata.json"]
    vendored = {str(p.relative_to(out / "scripts")) for p in (out / "scripts").rglob("*.py")}
    assert len(vendored) == summary["vendored_modules"] <= full_summary["vendored_modules"]
    assert set(summary["vendored"]) <= set(full_summary["vendored"])
    # no training or evaluation code, no phantom generator nor the report writer it uses; raddino_cxr not even the
    # label model (colipri_cxr's inference reaches it: its radiograph findings import the label model's prevalences)
    # inference checks the weights' preprocessing record, so the record module (and its package) is needed there
    generator = ["report_writer"] + (["label_model"] if bundle == "raddino_cxr" else [])
    record = {"engines/__init__.py", "engines/preprocessing_record.py"}
    unneeded = [f for f in vendored if f.startswith(("losses/", "engines/", "evaluation/", "methods/"))
                and f not in record or Path(f).stem.startswith("phantom") or Path(f).stem in generator]  # fmt: skip
    assert not unneeded, f"an inference export carries training / evaluation / phantom code: {sorted(unneeded)}"
    assert "phantom data are generated" not in (out / "docs" / "data_license.txt").read_text()
    # the same inference as the full export, without the repository
    assert report["error"] is None, report["error"]
    assert list(report["seconds"]) == ["run"] and not report["common_modules"]
    assert (out / "models" / "model.pt").read_bytes() == (full_out / "models" / "model.pt").read_bytes()
    assert _prediction_rows(out) == _prediction_rows(full_out)


def _objective_target(bundle: str) -> str | None:
    train = BUNDLES[bundle].config("train")
    objective = (yaml.safe_load(train.read_text()) or {}).get("objective_def") if train else None
    return objective.get("_target_") if isinstance(objective, dict) else None


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_export_carries_no_other_method_losses(bundle: str, exporter, zoo_exports):
    """The losses a full export vendors are those its own objective can reach; none that only another bundle's
    objective uses."""
    target = _objective_target(bundle)
    if target is None:
        pytest.skip(f"{bundle} has no train.yaml objective_def")
    _, summary, _ = zoo_exports[bundle]

    def losses(modules: list[str]) -> set[str]:
        return {m for m in modules if ".losses." in m}

    own = losses(exporter.import_closure([target]))
    assert losses(summary["vendored"]) == own
    for other in BUNDLES:
        other_target = _objective_target(other)
        if other_target and other_target != target:
            foreign = losses(exporter.import_closure([other_target])) - own
            assert not foreign & set(summary["vendored"]), f"{bundle} vendors {other}'s losses"


@pytest.mark.slow
def test_torchscript_probe_runs_at_a_small_input(zoo_exports):
    for name, (out, summary, _) in zoo_exports.items():
        probe, shape = summary["torchscript_probe_shape"], summary["input_shape"]
        assert probe[:2] == shape[:2] and len(probe) == len(shape), name
        # small, or (a network with a fixed token grid, e.g. G2D's positional attention pool) the real input
        assert probe == shape or all(p <= min(64, s) for p, s in zip(probe[2:], shape[2:])), (name, probe, shape)
        assert f"probe input of shape `{probe}`" in (out / "docs" / "README.md").read_text()


@pytest.mark.slow
def _demo_inference_parser(bundle: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES[bundle].config("inference")), str(BUNDLES[bundle].config("demo"))])
    return parser


def test_export_of_trained_weights(exporter, zoo_exports, tmp_path: Path):
    previous, _, _ = zoo_exports["raddino_cxr"]
    state = torch.load(previous / "models" / "model.pt", weights_only=True)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}  # unlike any initialisation
    torch.save(state, tmp_path / "trained.pt")
    record = record_from_config(_demo_inference_parser("raddino_cxr"))  # what the demo-trained weights carry
    write_record(tmp_path / "trained.pt", record, lambda path, data: path.write_bytes(data))
    out = tmp_path / "exported"
    summary = exporter.export(
        "raddino_cxr",
        str(out),
        weights=str(tmp_path / "trained.pt"),
        overlay="demo",
        version="0.3.0",
        url="https://example.org/raddino/model.pt",
    )
    assert read_record(out / "models" / "model.pt") == record and summary["preprocessing_sha256"] == record["sha256"]
    other = tmp_path / "other_normalisation.yaml"  # an overlay that changes what the weights were trained with
    other.write_text("pixel_mean: 0.45\n")
    with pytest.raises(
        exporter.ExportError, match=r"trained\.pt: .*image\.mean: trained with 0\.5307, this config 0\.45"
    ):
        exporter.export(
            "raddino_cxr",
            str(tmp_path / "refused"),
            weights=str(tmp_path / "trained.pt"),
            overlay=["demo", str(other)],
            check_torchscript=False,
        )
    assert not list(tmp_path.glob(".exported.partial-*"))  # written aside, then moved into place
    exported = torch.load(out / "models" / "model.pt", weights_only=True)
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], v) for k, v in state.items())
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["version"] == "0.3.0" and "trained.pt" in meta["changelog"]["0.3.0"]
    assert summary["added_packages"].items() <= meta["required_packages_version"].items()
    (entry,) = yaml.safe_load((out / "large_files.yml").read_text())["large_files"]
    assert entry["url"] == "https://example.org/raddino/model.pt" and entry["hash_val"] == summary["sha256"]
    readme = (out / "docs" / "README.md").read_text()
    assert "weights are randomly initialised" not in readme and "From the bundle's model card" in readme


def test_rewrite_python_source(exporter):
    source = (
        '"""Uses common.data (text stays)."""\n'
        "from __future__ import annotations\n"
        "import os, common.networks.eva\n"
        "from common.data.contract import DataContractError\n"
        "from common import distributed  # comment about common.x\n"
        "def f():\n"
        "    from common.transforms import ct\n"
        "    return common.networks.eva.primus_m, os.path, 'common.data'\n"
    )
    rewritten = exporter.rewrite_python_source(source)
    assert "import os, scripts.networks.eva\n" in rewritten
    assert "from scripts.data.contract import DataContractError\n" in rewritten
    assert "from scripts import distributed  # comment about common.x\n" in rewritten
    assert "    from scripts.transforms import ct\n" in rewritten
    assert "return scripts.networks.eva.primus_m, os.path, 'common.data'" in rewritten
    assert rewritten.startswith('"""Uses common.data (text stays)."""')
    assert exporter.rewrite_config_text("$import common\n_target_: common.networks.eva.primus_m  # common/") == (
        "$import scripts\n_target_: scripts.networks.eva.primus_m  # common/"
    )


def test_import_closure_follows_imports_only(exporter):
    closure = exporter.import_closure(["common.networks.eva.primus_m", "common.transforms.labels.LabelVectord"])
    assert {"common", "common.networks", "common.networks.eva", "common.transforms.labels"} <= set(closure)
    assert "common.data.findings" in closure  # imported by transforms/labels.py
    assert not any(m.startswith(("common.methods", "common.losses", "common.evaluation")) for m in closure)


def test_import_closure_rule(exporter, tmp_path: Path):
    """Which imports count: module level always; inside a function only when the function is reachable (named by
    a reference, used by reachable code, or decorated); never under TYPE_CHECKING, under __main__, or guarded by
    ``except ImportError``; a reachable class brings all its methods; re-exports and string references are followed."""
    lib = tmp_path / "common"
    files = {
        "__init__.py": "",
        "a.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "from common.b import used_by_a as ua\n"
            "if TYPE_CHECKING:\n    from common import typing_only\n"
            "def entry():\n    from common import lazy_reached\n    return ua(), helper()\n"
            "def helper():\n    return 'common.by_string.thing'\n"
            "def never_called():\n    from common import lazy_unreached\n"
            "def optional():\n    try:\n        from common import optional_dep\n    except ImportError:\n"
            "        return None\n"
            "class Model:\n    def method(self):\n        from common import via_method\n"
            "@staticmethod\ndef registered():\n    from common import via_decorator\n"
            "if __name__ == '__main__':\n    from common import main_only\n"
        ),
        "b.py": "from common.c import used_by_a\n",  # a re-export
        "c.py": "def used_by_a():\n    from common import via_reexport\n",
    }
    names = ("typing_only", "lazy_reached", "lazy_unreached", "optional_dep", "via_method", "via_decorator",
             "main_only", "via_reexport", "by_string")  # fmt: skip
    for name in names:
        files[f"{name}.py"] = ""
    for name, text in files.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_text(text)

    def closure(*references: str) -> set[str]:
        return {m.removeprefix("common.") for m in exporter.import_closure(references, lib)} - {"common"}

    assert closure("common.a") == {"a", "b", "c", "via_decorator"}  # importing runs module-level code only
    assert closure("common.a.entry") == {"a", "b", "c", "via_decorator", "lazy_reached", "via_reexport", "by_string"}
    assert closure("common.a.Model") == {"a", "b", "c", "via_decorator", "via_method"}
    assert "optional_dep" not in closure("common.a.optional")
    assert "lazy_unreached" in closure("common.a.never_called")


def test_export_refuses_bad_input(exporter, tmp_path: Path):
    with pytest.raises(exporter.ExportError, match="no --weights given"):
        exporter.export("raddino_cxr", str(tmp_path / "a"))
    with pytest.raises(exporter.ExportError, match=r"no_such_bundle/configs/metadata.json: missing"):
        exporter.export("no_such_bundle", str(tmp_path / "b"), random_init=True)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(exporter.ExportError, match=r"nested\.pt: not a flat state dict"):
        exporter.export("raddino_cxr", str(tmp_path / "c"), weights=str(nested), overlay="demo")
    wrong = tmp_path / "wrong.pt"
    torch.save({"w": torch.zeros(1)}, wrong)
    with pytest.raises(exporter.ExportError, match=r"wrong\.pt: does not match the inference network_def"):
        exporter.export("raddino_cxr", str(tmp_path / "d"), weights=str(wrong), overlay="demo")
    with pytest.raises(exporter.ExportError, match="no such config to export"):
        exporter.export("raddino_cxr", str(tmp_path / "g"), random_init=True, configs="inference,nonexistent")
    with pytest.raises(exporter.ExportError, match="version '0.1.0' is not a new"):
        exporter.export("raddino_cxr", str(tmp_path / "f"), random_init=True, version="0.1.0")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("user file")
    with pytest.raises(exporter.ExportError, match="not empty"):
        exporter.export("raddino_cxr", str(tmp_path / "e"), random_init=True)
