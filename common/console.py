"""Console-script entry points (``[project.scripts]`` in ``pyproject.toml``) for the tools kept in ``scripts/``.

``medvlp-validate``, ``medvlp-build-datalist``, ``medvlp-phantoms`` and ``medvlp-ct-rate-layout`` point at the
``cli()`` / ``main()`` of their ``common`` modules directly. The export and the benchmark live in the checkout's
``scripts/`` (speed figures come from scripts there; Model Zoo exports vendor a package named ``scripts``, so the
repository does not install one): :func:`export` and :func:`benchmark` load ``scripts/<name>.py`` of the checkout this
package belongs to (an editable install, ``pip install -e .``) and run its ``cli()``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["SCRIPTS", "benchmark", "export", "script_module"]

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
#: entry-point function -> the ``scripts/<name>.py`` whose ``cli()`` it runs
SCRIPTS = {"export": "export_zoo_bundle", "benchmark": "benchmark"}


def script_module(name: str) -> ModuleType:
    """``scripts/<name>.py`` of this checkout as a module.

    Raises:
        FileNotFoundError: the package was installed without its checkout (not ``pip install -e``).
    """
    path = SCRIPTS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; medvlp-* tools from scripts/ need the source checkout "
                                "installed with `pip install -e .`")  # fmt: skip
    spec = importlib.util.spec_from_file_location(f"medvlp_scripts.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export() -> None:
    """``medvlp-export export --bundle ...`` = ``python scripts/export_zoo_bundle.py export --bundle ...``."""
    script_module(SCRIPTS["export"]).cli()


def benchmark() -> None:
    """``medvlp-benchmark run ...`` = ``python scripts/benchmark.py run ...``."""
    script_module(SCRIPTS["benchmark"]).cli()
