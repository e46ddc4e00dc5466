"""Issue 26: each CT bundle README's "Image-only scans beside a paired dataset" commands, run as written.

The README block's paths (``/data/ct_paired``, ``/data/ct_without_reports``, ``/data/ct_mixed``) are mapped to a
tiny tree of phantom volumes: a folder of paired scans with ``reports.csv`` and a folder of scans without reports.
The ``common.data.build`` command runs through its command line; the ``monai.bundle run`` command's config files and
overrides are parsed into the bundle's config (plus a batch of 4, the phantoms being few), whose training records
must hold every extra scan as an image-only record and whose sampler must put them into the batches.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from common.data import build

REPO = Path(__file__).resolve().parents[2]
BUNDLES = ("colipri_ct", "g2d_ct", "mpma_ct", "prior_ct")
SECTION = "## Image-only scans beside a paired dataset"
PAIRED, IMAGE_ONLY = 6, 2
FOLDERS = ("ct_paired", "ct_without_reports")  # the README's scan folders; its other /data paths are outputs


def readme_commands(bundle: str) -> list[list[str]]:
    """The bash block of the README's image-only section: one argument list per command (``NAME=value`` lines
    expanded into the later ones, line continuations joined, comments dropped)."""
    text = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
    assert SECTION in text, f"{bundle} README: no '{SECTION}' section"
    block = re.search(r"```bash\n(.*?)```", text.split(SECTION, 1)[1], re.DOTALL)
    assert block, f"{bundle} README: no bash block in '{SECTION}'"
    variables, commands = {}, []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"\w+=\S+", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
        elif words:
            commands.append([re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in words])
    return commands


@pytest.fixture(scope="module")
def data_root(make_phantoms, tmp_path_factory) -> Path:
    """``ct_paired/`` (links to the paired phantoms' volumes, ``reports.csv``: image, report, split) and
    ``ct_without_reports/`` (the image-only phantoms' volumes)."""
    phantoms = make_phantoms(num_train=PAIRED, num_image_only=IMAGE_ONLY, num_val=0, num_test=0, seed=5)
    root = tmp_path_factory.mktemp("data")
    (root / "ct_paired").mkdir()
    (root / "ct_without_reports").mkdir()
    rows = []
    for record in json.loads((phantoms / "datalist_3d.json").read_text())["training"]:
        image = phantoms / record["image"]
        folder = "ct_paired" if "report" in record else "ct_without_reports"
        (root / folder / image.name).symlink_to(image)
        if "report" in record:
            rows.append({"image": image.name, "report": record["report"], "split": "train"})
    with open(root / "ct_paired" / "reports.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "report", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _arguments(words: list[str]) -> dict[str, object]:
    """``--key value`` pairs of a command line, values read as ``fire`` reads them (a list, a number or text)."""
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), words
    return {k[2:]: _value(v) for k, v in zip(words[::2], words[1::2])}


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _mapped(command: list[str], data_root: Path, out: Path) -> list[str]:
    """The README's ``/data/<name>`` paths: the scan folders under ``data_root``, anything else under ``out``."""
    return [re.sub(r"/data/(\w+)", lambda m: str((data_root if m[1] in FOLDERS else out) / m[1]), w) for w in command]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_readme_command_trains_on_image_only_scans(bundle: str, data_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_command, run_command = (_mapped(c, data_root, tmp_path) for c in readme_commands(bundle))
    assert build_command[:4] == ["python", "-m", "common.data.build", "folder"], build_command
    assert run_command[:4] == ["python", "-m", "monai.bundle", "run"], run_command

    monkeypatch.setattr(sys, "argv", ["common.data.build", *build_command[3:]])
    build.main()
    run = _arguments(run_command[4:])
    config_files = run.pop("config_file")
    parser = ConfigParser()
    parser.read_config([str(REPO / f) for f in ([config_files] if isinstance(config_files, str) else config_files)])
    parser.update({**run, "batch_size": 4})  # few phantoms: 4 paired + image-only rows fill a batch

    records = parser.get_parsed_content("train_records")
    image_only = [r for r in records if "report" not in r]
    assert len(image_only) == IMAGE_ONLY and len(records) == PAIRED + IMAGE_ONLY
    if "image_only_share" in parser:  # G2D / PRIOR: round(share x batch) image-only rows at the head of every batch
        share = parser.get_parsed_content("image_only_share")
        drawn = [records[i] for i in parser.get_parsed_content("train#sampler")]
        assert share > 0 and [("report" not in r) for r in drawn[:4]] == [i < round(share * 4) for i in range(4)]
        assert sum("report" not in r for r in drawn) == round(share * 4) * (len(drawn) // 4)
    else:  # COLIPRI / MPMA (the paper's mix): the dataset, and the shuffle over it, hold every training record
        assert parser["train"]["dataset"]["data"] == "@train_records"
        assert "@train#dataset" in parser["train"]["sampler"]["dataset_len"].replace("::", "#")
