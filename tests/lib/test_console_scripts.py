"""Console-script entry points: each resolves to a working command line, in step with the READMEs' ``python -m``
and ``python scripts/...`` forms."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from common import console

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the project venv)
REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
READMES = [REPO / "README.md", REPO / "common" / "README.md", *sorted(REPO.glob("bundles/*/docs/README.md"))]


def _target(spec: str):
    module, _, attr = spec.partition(":")
    return importlib.import_module(module), attr


def _runs_module(spec: str) -> str:
    """The module whose command line an entry point runs (``scripts.<name>`` for the console wrappers)."""
    module, attr = _target(spec)
    return f"scripts.{console.SCRIPTS[attr]}" if module is console else module.__name__


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_is_a_working_command_line(name, monkeypatch, capsys):
    module, attr = _target(ENTRY_POINTS[name])
    function = getattr(module, attr)
    assert callable(function)
    if module is console:
        assert callable(console.script_module(console.SCRIPTS[attr]).cli)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as info:  # fire prints the help and exits 0
        function()
    assert info.value.code in (0, None)
    shown = capsys.readouterr()
    assert name in shown.out + shown.err  # fire's help names the program


def test_readme_commands_have_entry_points_and_are_documented():
    text = "\n".join(p.read_text() for p in READMES)
    documented = set(re.findall(r"python -m (common(?:\.\w+)+)", text))
    documented |= {f"scripts.{m}" for m in re.findall(r"python scripts/(export_zoo_bundle|benchmark)\.py", text)}
    served = {_runs_module(spec) for spec in ENTRY_POINTS.values()}
    assert documented <= served, f"README commands without an entry point: {sorted(documented - served)}"
    missing = [name for name in ENTRY_POINTS if name not in (REPO / "README.md").read_text()]
    assert not missing, f"entry points not named in README.md: {missing}"
