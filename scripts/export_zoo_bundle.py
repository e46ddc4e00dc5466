"""Export ``bundles/<name>`` as a self-contained MONAI Model Zoo bundle directory.

    python scripts/export_zoo_bundle.py export --bundle colipri_ct --out_dir /tmp/colipri_ct \\
        --weights bundles/colipri_ct/models/model.pt [--overlay demo] [--version 0.1.1] [--changelog "..."]

The export holds everything the Zoo asks for and nothing from this repository has to be importable:

* ``scripts/``: the import closure of the ``common`` modules the configs reference, vendored as the package
  ``scripts`` (``common.x.y`` becomes ``scripts.x.y`` in code and configs), plus ``common/resources``;
* ``configs/``: every config of the bundle, rewritten to ``scripts``; ``--overlay`` merges the overlay's keys that
  the inference config defines (network size, input size) into ``inference.yaml`` so that it matches the weights;
* ``models/model.pt``: the flat state dict of the inference ``network_def`` (``--weights``, or ``--random_init``);
* ``large_files.yml`` (path, URL or a TODO, sha256), ``docs/README.md`` (Zoo template), ``docs/data_license.txt``,
  ``LICENSE``, ``configs/logging.conf`` and ``configs/metadata.json`` with a new version and changelog entry and
  pins (installed versions) for every package the vendored code imports that the metadata did not list.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tokenize
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fire
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "common"  # the shared package that gets vendored
VENDORED = "scripts"  # its name inside the exported bundle (the Zoo's custom-code package)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
INPUT_SIZE_KEYS = ("spatial_size", "image_size")  # inference knobs that set the network input's side
URL_TODO = "TODO: upload models/model.pt and put its download URL here"
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_LIBRARY_REF = re.compile(rf"(?<![\w.\-/]){LIBRARY}(?:\.[A-Za-z_]\w*)+")
_LIBRARY_IMPORT = re.compile(rf"(\$import\s+){LIBRARY}\b")
_IMPORT_STATEMENT = re.compile(rf"^\s*(?:from\s+{LIBRARY}\b|import\s+(?:[\w.]+\s*,\s*)*{LIBRARY}\b)", re.M)

__all__ = ["ExportError", "export", "import_closure", "rewrite_config_text", "rewrite_python_source"]


class ExportError(ValueError):
    """A bundle, overlay or weight file cannot be exported; the message names the file and the problem."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")


# ---- import closure ------------------------------------------------------------------------------------------


def _module_file(name: str, library_root: Path) -> Path | None:
    """File of library module ``name`` (``common.a.b``): ``a/b.py`` or ``a/b/__init__.py``, None if neither."""
    parts = name.split(".")[1:]
    base = library_root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if parts and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _longest_module(dotted: str, library_root: Path) -> str | None:
    """The longest prefix of ``dotted`` (``common.a.b.func``) that is a library module."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if _module_file(".".join(parts[:end]), library_root) is not None:
            return ".".join(parts[:end])
    return None


def _imported_names(source: str, module: str, is_package: bool) -> Iterable[str]:
    """Absolute dotted names a module imports (relative imports resolved) and library names in its strings."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from _LIBRARY_REF.findall(node.value)  # e.g. importlib / _target_ strings built in code


def import_closure(references: Iterable[str], library_root: Path = REPO / LIBRARY) -> list[str]:
    """Library modules needed by ``references`` (dotted names such as ``common.networks.eva.primus_m``).

    Follows absolute and relative imports (including function-local ones) inside the library and adds every parent
    package, whose ``__init__`` runs on import. Third-party imports are not followed.
    """
    ours = [r for r in references if r == LIBRARY or r.startswith(LIBRARY + ".")]
    pending = [m for m in (_longest_module(r, library_root) for r in ours) if m]
    pending.append(LIBRARY)
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        pending.extend(".".join(parts[:end]) for end in range(1, len(parts)))
        path = _module_file(module, library_root)
        for name in _imported_names(path.read_text(), module, path.name == "__init__.py"):
            if name == LIBRARY or name.startswith(LIBRARY + "."):
                found = _longest_module(name, library_root)
                if found is not None:
                    pending.append(found)
    return sorted(seen)


# ---- rewriting -----------------------------------------------------------------------------------------------


def rewrite_python_source(source: str, filename: str = "<module>") -> str:
    """Rename imports of the library package (``common``) to the vendored package (``scripts``).

    Token based, so strings, comments and formatting are untouched: ``from common.x import y``, ``import common.x``
    and, after a plain ``import common...``, attribute chains that start with ``common``.
    """
    if not _IMPORT_STATEMENT.search(source):
        return source
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    plain_import = re.search(rf"^\s*import\s+(?:[\w.]+\s*,\s*)*{LIBRARY}\b(?!\s+as\b)", source, re.M) is not None
    edits: list[tuple[int, int]] = []
    statement: str | None = None  # "import" / "from" while inside such a statement
    previous = ""
    at_start = True
    for i, tok in enumerate(tokens):
        if tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) or tok.string == ";":
            statement, at_start, previous = None, True, ""
            continue
        if tok.type in (tokenize.NL, tokenize.COMMENT):
            continue
        if at_start and tok.type == tokenize.NAME and tok.string in ("import", "from"):
            statement = tok.string
        at_start = False
        if tok.type == tokenize.NAME and tok.string == LIBRARY:
            following = tokens[i + 1].string if i + 1 < len(tokens) else ""
            in_import = (statement == "import" and previous in ("import", ",")) or (
                statement == "from" and previous == "from"
            )
            attribute_root = plain_import and statement is None and previous != "." and following == "."
            if in_import or attribute_root:
                edits.append(tok.start)
        previous = tok.string
    lines = source.splitlines(keepends=True)
    for row, col in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + VENDORED + line[col + len(LIBRARY) :]
    rewritten = "".join(lines)
    if _IMPORT_STATEMENT.search(rewritten):  # maybe only text in a docstring: ask the parser
        for node in ast.walk(ast.parse(rewritten, filename)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == LIBRARY or n.startswith(LIBRARY + ".") for n in names):
                raise ExportError(filename, f"line {node.lineno}: import of '{LIBRARY}' left after vendoring")
    return rewritten


def rewrite_config_text(text: str) -> str:
    """Point a config's ``common...`` references (``$import``, ``_target_``, expressions) at ``scripts``."""
    text = _LIBRARY_IMPORT.sub(rf"\1{VENDORED}", text)
    return _LIBRARY_REF.sub(lambda m: VENDORED + m.group(0)[len(LIBRARY) :], text)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _config_references(config: Any) -> set[str]:
    refs: set[str] = set()
    for text in _strings(config):
        refs.update(_LIBRARY_REF.findall(text))
        if re.search(rf"\$import\s+{LIBRARY}\s*$", text):
            refs.add(LIBRARY)
    return refs


# ---- configs ---------------------------------------------------------------------------------------------------


def _load_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ExportError(path, f"not valid {path.suffix[1:].upper()}: {err}") from err
    if not isinstance(data, dict):
        raise ExportError(path, "a bundle config must be a mapping of ids to values")
    return data


def _parse_config_text(text: str, path: Path) -> Any:
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _resolve_overlay(name: str, configs_dir: Path) -> Path:
    candidates = [Path(name)] + [configs_dir / f"{name}{suffix}" for suffix in ("", *CONFIG_SUFFIXES)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ExportError(name, f"overlay not found (looked for a file and for {configs_dir}/{name}.yaml)")


def _top_level_blocks(text: str) -> list[tuple[str | None, str]]:
    """Split YAML text into (top-level key or None, text) blocks; a block runs until the next top-level key."""
    blocks: list[tuple[str | None, str]] = [(None, "")]
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z_+][^\s:#]*)\s*:", line)
        if match:
            blocks.append((match.group(1), line))
        else:
            key, body = blocks[-1]
            blocks[-1] = (key, body + line)
    return blocks


def _merge_into_yaml(text: str, values: dict[str, Any], origin: str) -> str:
    """Replace the top-level ``values`` keys of YAML ``text``, keeping every other line and comment as it was."""
    expected = {**yaml.safe_load(text), **values}
    pieces = []
    for key, body in _top_level_blocks(text):
        if key in values:
            lines = body.splitlines(keepends=True)
            keep = len(lines)  # blank lines and column-0 comments at the end introduce the next key: keep them
            while keep > 1 and (not lines[keep - 1].strip() or lines[keep - 1].startswith("#")):
                keep -= 1
            dumped = yaml.safe_dump({key: values[key]}, sort_keys=False, width=120, default_flow_style=False)
            first, _, rest = dumped.partition("\n")
            pieces.append(f"{first}  # from {origin}\n{rest}" + "".join(lines[keep:]))
        else:
            pieces.append(body)
    merged = "".join(pieces)
    if yaml.safe_load(merged) != expected:  # unusual layout: fall back to a faithful, comment-free dump
        merged = f"# merged with {origin}\n" + yaml.safe_dump(expected, sort_keys=False, width=120)
    return merged


# ---- weights, metadata, TorchScript -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable or unsafe pickle
            raise ExportError(path, f"cannot be read with torch.load(weights_only=True): {err}") from err
    if not isinstance(state, dict) or not state:
        raise ExportError(path, "expected a non-empty state dict")
    nested = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if nested:
        raise ExportError(
            path,
            f"not a flat state dict of network_def ({nested[0]!r} holds a {type(state[nested[0]]).__name__}); "
            "pass the inference weights the bundle's train workflow writes (models/model.pt)",
        )
    return state


def _build_network(config: dict, configs_dir: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(config))
    try:
        network = parser.get_parsed_content("network_def", lazy=True)
    except Exception as err:  # noqa: BLE001 - report which config failed
        raise ExportError(configs_dir / "inference.yaml", f"network_def cannot be built: {err}") from err
    return network.eval()


def _bump_version(version: str) -> str:
    major, minor, patch = (int(p) for p in version.split("."))
    return f"{major}.{minor}.{patch + 1}"


def _update_io_shapes(
    meta: dict, merged: dict[str, Any], inference: dict, network: torch.nn.Module, device: torch.device
) -> list[int]:
    """Make ``network_data_format`` match a network an overlay changed (input side from ``spatial_size`` /
    ``image_size``, output channels measured); returns the fake-input shape ``(1, C, *spatial)``."""
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    for key in INPUT_SIZE_KEYS:
        if key in merged and isinstance(inference.get(key), int):
            image["spatial_shape"] = [inference[key]] * len(image["spatial_shape"])
    shape = [1, int(image["num_channels"]), *(int(s) for s in image["spatial_shape"])]
    if not merged:
        return shape
    with torch.no_grad():
        out = network(torch.rand(shape, device=device))
    if out.shape[1] != pred["num_channels"]:
        pred["num_channels"] = int(out.shape[1])
        if pred.get("spatial_shape") and len(pred["spatial_shape"]) == 1:
            pred["spatial_shape"] = [int(out.shape[1])]
    return shape


def _torchscript_status(network: torch.nn.Module, input_shape: list[int], device: torch.device) -> tuple[str, str]:
    """``("script" | "trace" | "excluded", reason)``: how ``ckpt_export`` can convert this network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.jit.script(network)
            return "script", "scriptable"
        except Exception as err:  # noqa: BLE001 - any scripting failure is a finding, not an error
            script_error = _first_line(err)
        try:
            x, check = torch.rand(input_shape, device=device), torch.rand(input_shape, device=device)
            with torch.no_grad():
                traced = torch.jit.trace(network, x)
                if torch.allclose(traced(check), network(check), atol=1e-4, rtol=1e-4):
                    return "trace", script_error
                return "excluded", f"{script_error}; the traced graph disagrees with the eager network"
        except Exception as err:  # noqa: BLE001
            return "excluded", f"{script_error}; tracing fails too: {_first_line(err)}"


def _first_line(err: Exception) -> str:
    """The gist of an exception: its first line, without tensor or dict reprs."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.split(r":\s*[\[{(]", line)[0][:160]


def _third_party_modules(sources: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in (LIBRARY, VENDORED, "__future__")}


def _undeclared_packages(modules: set[str], meta: dict) -> dict[str, str]:
    """Installed distributions (name -> version) the vendored code imports but the metadata does not pin."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    declared = {k.lower().replace("_", "-") for k in meta.get("required_packages_version", {})}
    declared |= {"torch", "numpy", "monai"}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(modules):
        for dist in distributions.get(module, [module]):
            if dist.lower().replace("_", "-") not in declared:
                try:
                    missing[dist] = version(dist)
                except PackageNotFoundError:
                    raise ExportError(module, "imported by the vendored code but not installed here") from None
    return dict(sorted(missing.items()))


# ---- README ------------------------------------------------------------------------------------------------------


def _sections(markdown: str) -> dict[str, str]:
    """``## heading`` -> body of a Markdown file (fenced code kept intact)."""
    found: dict[str, str] = {}
    heading, body, fenced = None, [], False
    for line in markdown.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("## "):
            if heading:
                found[heading] = "\n".join(body).strip()
            heading, body = line[3:].strip(), []
        elif heading:
            body.append(line)
    if heading:
        found[heading] = "\n".join(body).strip()
    return found


def _pick(sections: dict[str, str], *prefixes: str) -> str:
    for prefix in prefixes:
        for heading, body in sections.items():
            if heading.lower().startswith(prefix):
                return body
    return ""


def _localise(text: str, bundle: str) -> str:
    """Repository paths in copied text -> paths inside the exported bundle."""
    text = text.replace(f"bundles/{bundle}/", "")
    text = re.sub(rf"(?<![\w.\-/]){LIBRARY}/", f"{VENDORED}/", text)
    return rewrite_config_text(text)


def _io_table(fmt: dict) -> str:
    rows = ["| name | type | format | channels | spatial shape | dtype | value range |", "|---" * 7 + "|"]
    for name, spec in fmt.items():
        rows.append(
            f"| `{name}` | {spec.get('type', '')} | {spec.get('format', '')} | {spec.get('num_channels', '')} | "
            f"{spec.get('spatial_shape', '')} | {spec.get('dtype', '')} | {spec.get('value_range', '')} |"
        )
    channels = {n: s["channel_def"] for n, s in fmt.items() if s.get("channel_def")}
    for name, channel_def in channels.items():
        rows.append(f"\n`{name}` channels: " + ", ".join(f"{k}: {v}" for k, v in channel_def.items()))
    return "\n".join(rows)


def _readme(
    bundle: str,
    meta: dict,
    source_readme: str,
    configs: Sequence[str],
    random_weights: bool,
    torchscript: tuple[str, str],
    input_shape: list[int],
    commit: str,
) -> str:
    sections = {k: _localise(v, bundle) for k, v in _sections(source_readme).items()}
    has = set(configs).__contains__
    commands = ["# run from the bundle root (the folder holding configs/, scripts/ and models/)"]
    if has("inference.yaml"):
        commands += ["# inference -> eval/ (dataset_dir: a folder of images or a datalist)",
                     "python -m monai.bundle run --config_file configs/inference.yaml --dataset_dir <data>"]
    if has("train.yaml"):
        commands += ["# training (dataset_dir: a folder with datalist.json; none = the embedded phantoms)",
                     "python -m monai.bundle run --config_file configs/train.yaml --dataset_dir <data>"]
    if has("train.yaml") and has("multi_gpu_train.yaml"):
        commands += ["torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\",
                     "    --config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\""]
    if has("train.yaml") and has("demo.yaml"):
        commands += ["# CPU demo (tiny network)",
                     "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/demo.yaml']\""]
    if has("train.yaml") and has("evaluate.yaml"):
        commands += ["# frozen-encoder evaluation of a trained model",
                     "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/evaluate.yaml']\""]
    known = {"inference.yaml", "train.yaml", "multi_gpu_train.yaml", "demo.yaml", "evaluate.yaml", "logging.conf"}
    others = [name for name in configs if name not in known]
    if others:
        listed = ", ".join(f"configs/{n}" for n in others)
        commands.append(f"# further workflows (usage at the top of each file): {listed}")
    commands += [
        "# checks the Model Zoo CI runs",
        "python -m monai.bundle verify_metadata --meta_file configs/metadata.json "
        "--filepath scripts/resources/meta_schema_20240725.json",
        "python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json "
        "--config_file configs/inference.yaml",
    ]
    export = ("python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
              "--meta_file configs/metadata.json --config_file configs/inference.yaml")
    mode, reason = torchscript
    if mode == "script":
        commands.append(export)
        ts_note = "The inference network converts with `torch.jit.script` (the Zoo CI default)."
    elif mode == "trace":
        commands.append(f"{export} --use_trace True --input_shape \"{input_shape}\"")
        ts_note = (f"**TorchScript: excluded from scripting** (`exclude_verify_torchscript_list`): `torch.jit.script` "
                   f"fails on this network ({reason}). It converts with `torch.jit.trace` at the fixed input shape "
                   f"`{input_shape}` (the traced graph matches the eager network); use the command above.")
    elif mode == "unchecked":
        commands.append(f"{export} --use_trace True --input_shape \"{input_shape}\"")
        ts_note = ("TorchScript conversion was not checked at export (`--check_torchscript False`). The bundle's "
                   "networks are usually traceable but not scriptable: try the command above, and list the bundle in "
                   "`exclude_verify_torchscript_list` if `torch.jit.script` fails.")
    else:
        ts_note = (f"**TorchScript: excluded** (`exclude_verify_torchscript_list`): the network can be neither "
                   f"scripted nor traced ({reason}). Use `models/model.pt` with `configs/inference.yaml`.")
    references = "\n".join(f"{i}. {r}" for i, r in enumerate(meta.get("references", []), 1)) or "See the description."
    io = meta["network_data_format"]
    training = _pick(sections, "model overview", "model") or "See `configs/train.yaml`; every knob is a config key."
    deviations = _pick(sections, "deviations")
    performance = _pick(sections, "measured", "performance", "results")
    if random_weights:
        performance = "The exported weights are randomly initialised (a smoke-test export): they have no performance."
    elif performance:
        performance = "From the bundle's model card (weights trained with the documented configs):\n\n" + performance
    else:
        performance = "No evaluation figures are recorded for these weights; run the evaluation command below."
    parts = [
        f"# {meta.get('name', bundle)}",
        f"Version {meta['version']}. {meta.get('intended_use', '')}",
        "# Model Overview",
        meta.get("description", ""),
        f"Exported from `bundles/{bundle}` of medvlp-bundles (commit `{commit}`) by `scripts/export_zoo_bundle.py`; "
        "the shared library is vendored in `scripts/` (import it as `scripts`).",
        "## Data",
        f"{meta.get('data_source', '')} (format: {meta.get('data_type', 'see configs')}).",
        _pick(sections, "data"),
        "### Preprocessing",
        f"{meta.get('image_classes', '')}. The transforms are `preprocessing` in `configs/inference.yaml`.",
        "## Training configuration",
        training,
        *(["### Deviations from the paper", deviations] if deviations else []),
        "## Input",
        _io_table(io["inputs"]),
        "## Output",
        _io_table(io["outputs"]),
        "## Performance",
        performance,
        "## MONAI Bundle Commands",
        "```bash\n" + "\n".join(commands) + "\n```",
        "### TorchScript",
        ts_note,
        "# References",
        references,
        "# License",
        _pick(sections, "license") or "See `LICENSE`.",
        "Files: `LICENSE` (code and configs), `docs/data_license.txt` (data).",
    ]
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


def _data_license(meta: dict, source_readme: str, bundle: str) -> str:
    license_text = _localise(_pick(_sections(source_readme), "license"), bundle)
    return (
        "Third-party data\n"
        "================\n\n"
        f"This bundle was developed with: {meta.get('data_source', 'see docs/README.md')}.\n\n"
        "Each data set is governed by its own license and data-use agreement, which every user must obtain and\n"
        "follow; this bundle grants no rights to any data. The embedded phantom data are generated by\n"
        "scripts/data/phantom.py and carry the code's license.\n\n"
        + (f"From the bundle's model card:\n\n{license_text}\n" if license_text else "")
    )


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# ---- export --------------------------------------------------------------------------------------------------


def export(
    bundle: str,
    out_dir: str,
    weights: str | None = None,
    random_init: bool = False,
    overlay: str | Sequence[str] | None = None,
    version: str | None = None,
    changelog: str | None = None,
    url: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    check_torchscript: bool = True,
    device: str | None = None,
    bundles_dir: str | None = None,
) -> dict[str, Any]:
    """Write ``bundles/<bundle>`` as a self-contained Model Zoo bundle in ``out_dir`` (the bundle root).

    Args:
        bundle: bundle name under ``bundles_dir`` (``colipri_ct``, ``raddino_cxr``, ...).
        out_dir: the exported bundle's root folder; must be absent or empty unless ``overwrite``.
        weights: flat state dict of the inference ``network_def`` (``.pt`` or ``.safetensors``); a relative
            path is looked up from the working directory, then from the bundle folder.
        random_init: export randomly initialised weights (tests, smoke runs); required when ``weights`` is None.
        overlay: config name(s) in the bundle's ``configs/`` (e.g. ``demo``) or file path(s) whose keys that the
            inference config defines are merged into the exported ``inference.yaml`` (in order).
        version: new semantic version; default: the metadata version with the patch number bumped.
        changelog: changelog text for the new version.
        url: download URL of ``models/model.pt`` for ``large_files.yml``; default: a TODO placeholder.
        overwrite: replace a previous export in ``out_dir`` (a folder holding ``configs/metadata.json``).
        seed: torch seed for ``random_init``.
        check_torchscript: find out whether ``ckpt_export`` can script or trace the network (a few forward
            passes; turn off for paper-size 3D networks on a CPU).
        device: where the network runs for the checks; default CUDA when available.
        bundles_dir: folder holding the bundles; default ``<repo>/bundles``.

    Returns:
        A summary: out_dir, version, vendored modules, merged overlay keys, fake-input shape, TorchScript mode
        (script / trace / excluded), sha256 of the weights, package pins added to the metadata.
    """
    source = Path(bundles_dir or REPO / "bundles") / bundle
    configs_dir = source / "configs"
    for required in (configs_dir / "metadata.json", configs_dir / "inference.yaml", source / "LICENSE"):
        if not required.is_file():
            raise ExportError(required, "missing; a Zoo bundle needs it")
    if weights is None and not random_init:
        raise ExportError(source, "no --weights given; pass the trained models/model.pt or --random_init True")
    if weights is not None and random_init:
        raise ExportError(weights, "--weights and --random_init exclude each other")
    final = Path(out_dir)
    if final.exists() and any(final.iterdir()):
        if not (overwrite and (final / "configs" / "metadata.json").is_file()):
            raise ExportError(final, "not empty (use --overwrite True to replace a previous export)")
    meta = json.loads((configs_dir / "metadata.json").read_text())
    old_version = str(meta.get("version", ""))
    if not SEMVER.match(old_version):
        raise ExportError(configs_dir / "metadata.json", f"version {old_version!r} is not MAJOR.MINOR.PATCH")
    new_version = str(version) if version is not None else _bump_version(old_version)
    if not SEMVER.match(new_version) or new_version in meta.get("changelog", {}):
        raise ExportError(configs_dir / "metadata.json", f"version {new_version!r} is not a new MAJOR.MINOR.PATCH")

    # configs: the inference config merged with the overlays' keys it defines
    config_files = sorted(p for p in configs_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")
    inference_text = (configs_dir / "inference.yaml").read_text()
    inference = _load_config(configs_dir / "inference.yaml")
    merged: dict[str, Any] = {}
    overlays = [overlay] if isinstance(overlay, str) else list(overlay or [])
    for name in overlays:
        path = _resolve_overlay(str(name), configs_dir)
        values = {k: v for k, v in _load_config(path).items() if k in inference}
        if not values:
            raise ExportError(path, "defines none of the inference config's keys; nothing to merge")
        inference_text = _merge_into_yaml(inference_text, values, path.name)
        inference.update(values)
        merged.update(values)
    torch.manual_seed(seed)  # the random initialisation, when no weights are given
    network = _build_network(inference, configs_dir)

    # weights
    if weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_absolute() and not weights_path.is_file():
            weights_path = source / weights
        if not weights_path.is_file():
            raise ExportError(weights, f"weights file not found (also looked in {source})")
        state = _load_state_dict(weights_path)
        result = network.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ExportError(
                weights_path,
                f"does not match the inference network_def{' with overlay ' + str(overlays) if overlays else ''}: "
                f"missing {result.missing_keys[:5]} ({len(result.missing_keys)}), unexpected "
                f"{result.unexpected_keys[:5]} ({len(result.unexpected_keys)}); was it trained with another overlay?",
            )

    # metadata: version, changelog, shapes measured on the exported network
    run_on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network.to(run_on)
    input_shape = _update_io_shapes(meta, merged, inference, network, run_on)
    if check_torchscript:
        torchscript = _torchscript_status(network, input_shape, run_on)
    else:
        torchscript = ("unchecked", "")
    overlay_note = ""
    if merged:
        listed = ", ".join(f"`{k}`" for k in merged)
        overlay_note = (f" This export merges {listed} from {', '.join(map(str, overlays))} into "
                        f"`configs/inference.yaml` (a smaller network); `network_data_format` was measured on it, "
                        f"other `*_data_format` entries describe the paper configuration.")
    source_of_weights = "random initialisation" if random_init else f"weights {Path(weights).name}"
    with_overlay = f", overlay {', '.join(map(str, overlays))}" if overlays else ""
    entry = changelog or f"Model Zoo export ({source_of_weights}{with_overlay})"
    meta["version"] = new_version
    meta["changelog"] = {new_version: entry, **meta.get("changelog", {})}
    if merged:
        meta["description"] = meta.get("description", "") + overlay_note

    # write the bundle into a temporary sibling folder; it replaces out_dir only once complete
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        (out / "configs").mkdir(exist_ok=True)
        (out / "models").mkdir()
        (out / "docs").mkdir()
        references: set[str] = set()
        for path in config_files:
            text = inference_text if path.name == "inference.yaml" else path.read_text()
            references |= _config_references(_parse_config_text(text, path))
            rewritten = rewrite_config_text(text)
            leftover = _config_references(_parse_config_text(rewritten, path))
            if leftover:
                raise ExportError(path, f"references to {sorted(leftover)} left after rewriting")
            (out / "configs" / path.name).write_text(rewritten)
        logging_conf = configs_dir / "logging.conf"
        if not logging_conf.is_file():
            raise ExportError(logging_conf, "missing; the Zoo expects configs/logging.conf")
        shutil.copyfile(logging_conf, out / "configs" / "logging.conf")
        shutil.copyfile(source / "LICENSE", out / "LICENSE")

        # vendored library: the import closure of what the configs and the bundle's own scripts/ reference
        library_root = REPO / LIBRARY
        own_scripts = sorted((source / VENDORED).rglob("*.py")) if (source / VENDORED).is_dir() else []
        for own in own_scripts:
            references |= set(_imported_names(own.read_text(), "", False))
        modules = import_closure(references, library_root)
        sources = []
        for module in modules:
            src = _module_file(module, library_root)
            target = out / VENDORED / src.relative_to(library_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            sources.append(rewrite_python_source(src.read_text(), str(src)))
            target.write_text(sources[-1])
        for own in own_scripts:  # bundle glue sits next to the library; an empty __init__.py yields to it
            target = out / VENDORED / own.relative_to(source / VENDORED)
            if target.exists() and own.read_text().strip():
                raise ExportError(own, f"collides with the vendored library file {target.relative_to(out)}")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                sources.append(rewrite_python_source(own.read_text(), str(own)))
                target.write_text(sources[-1])
        resources = library_root / "resources"
        if resources.is_dir():
            shutil.copytree(resources, out / VENDORED / "resources")
        added_packages = _undeclared_packages(_third_party_modules(sources), meta)  # the Zoo CI installs these pins
        meta["required_packages_version"] = {**meta.get("required_packages_version", {}), **added_packages}
        (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")

        # weights, large_files.yml, docs
        model_pt = out / "models" / "model.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, model_pt)
        digest = _sha256(model_pt)
        large_files = {"large_files": [{"path": "models/model.pt", "url": url or URL_TODO, "hash_val": digest,
                                        "hash_type": "sha256"}]}
        (out / "large_files.yml").write_text(
            "# Weights too large for the Model Zoo repository: `python -m monai.bundle download_large_files`\n"
            + yaml.safe_dump(large_files, sort_keys=False, width=200)
        )
        readme_path = source / "docs" / "README.md"
        source_readme = readme_path.read_text() if readme_path.is_file() else ""
        (out / "docs" / "README.md").write_text(
            _readme(bundle, meta, source_readme, [p.name for p in config_files], random_init, torchscript,
                    input_shape, _git_commit())
        )
        own_license = source / "docs" / "data_license.txt"
        (out / "docs" / "data_license.txt").write_text(
            own_license.read_text() if own_license.is_file() else _data_license(meta, source_readme, bundle)
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    out.chmod(0o755)
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    return {
        "out_dir": str(final),
        "version": new_version,
        "vendored_modules": len(modules),
        "merged_keys": sorted(merged),
        "input_shape": input_shape,
        "torchscript": torchscript[0],
        "sha256": digest,
        "added_packages": added_packages,
    }


if __name__ == "__main__":
    try:
        fire.Fire({"export": export})
    except ExportError as err:
        sys.exit(f"export_zoo_bundle: {err}")
