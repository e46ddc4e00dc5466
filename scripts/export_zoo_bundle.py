"""Export ``bundles/<name>`` as a self-contained MONAI Model Zoo bundle directory.

    python scripts/export_zoo_bundle.py export --bundle colipri_ct --out_dir /tmp/colipri_ct \\
        --weights bundles/colipri_ct/models/model.pt [--overlay demo] [--configs inference] [--version 0.1.1] \\
        [--changelog "..."]

The export holds everything the Zoo asks for and nothing from this repository has to be importable:

* ``scripts/``: the ``common`` modules that the exported configs can reach (see the rule above
  :func:`import_closure`), vendored as the package ``scripts`` (``common.x.y`` becomes ``scripts.x.y`` in code and
  configs), plus ``common/resources``;
* ``configs/``: the bundle's configs (all, or those ``--configs`` names; ``inference.yaml`` always), rewritten to
  ``scripts``; ``--overlay`` merges the overlay's keys that the inference config defines (network size, input size)
  into ``inference.yaml`` so that it matches the weights;
* ``models/model.pt``: the flat state dict of the inference ``network_def`` (``--weights``, or ``--random_init``);
* ``large_files.yml`` (path, URL or a TODO, sha256), ``docs/README.md`` (Zoo template), ``docs/data_license.txt``,
  ``LICENSE``, ``configs/logging.conf`` and ``configs/metadata.json`` with a new version and changelog entry and
  pins (installed versions) for every package the vendored code imports that the metadata did not list.

The steps, one function each: validate the request, merge the overlays, build the network, load the weights,
measure the I/O shapes and probe TorchScript (at a small input), edit the metadata, then write configs, vendored
code, weights and docs into a staging folder that replaces ``out_dir`` once complete.
"""

from __future__ import annotations

import ast
import contextlib
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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import fire
import torch
import yaml
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
LIBRARY = "common"  # the shared package that gets vendored
VENDORED = "scripts"  # its name inside the exported bundle (the Zoo's custom-code package)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
INPUT_SIZE_KEYS = ("spatial_size", "image_size")  # inference knobs that set the network input's side
PROBE_MIN_SIDE, PROBE_MAX_SIDE = 16, 64  # sides tried for the TorchScript probe's input
URL_TODO = "TODO: upload models/model.pt and put its download URL here"
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_LIBRARY_REF = re.compile(rf"(?<![\w.\-/]){LIBRARY}(?:\.[A-Za-z_]\w*)+")
_LIBRARY_IMPORT = re.compile(rf"(\$import\s+){LIBRARY}\b")
_IMPORT_STATEMENT = re.compile(rf"^\s*(?:from\s+{LIBRARY}\b|import\s+(?:[\w.]+\s*,\s*)*{LIBRARY}\b)", re.MULTILINE)

__all__ = ["ExportError", "export", "import_closure", "rewrite_config_text", "rewrite_python_source"]


class ExportError(ValueError):
    """A bundle, overlay or weight file cannot be exported; the message names the file and the problem."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")


# ---- import closure ------------------------------------------------------------------------------------------
#
# The rule (sound for code that imports statically, which the library does; a dynamic import widens it to the whole
# library): a module is vendored when importing it is possible from the exported configs. A module is imported when
# a config names it (``$import``, ``_target_``, ``$common.x.f(...)``) or when code that runs imports it:
#
# * code that runs on import: a module's top-level statements, class bodies, decorators and default values, and
#   every parent package's ``__init__``;
# * code that may run later: the body of a function or class that is *reachable*, i.e. named by a config, referenced
#   (called, passed, subclassed, decorated) by code that runs or by a reachable body, defined with a decorator
#   (which may register it), or a module's ``__getattr__``; a reachable class makes all its methods reachable;
# * not counted: imports under ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` (never run on import), and
#   imports in a ``try`` whose ``except`` catches ``ImportError`` / ``ModuleNotFoundError`` (optional by the
#   module's own declaration: the code states what happens without them).
#
# References are resolved by name through each scope's imports (``from a import f``, ``import a.b as c``, relative
# imports); any name that matches is followed (a shadowing local name only adds modules). Library references in
# string constants (not docstrings) count as references too.

_OPTIONAL_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
_DYNAMIC_IMPORTS = frozenset({"__import__", "import_module", "globals", "vars"})


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


def _is_library(name: str) -> bool:
    return name == LIBRARY or name.startswith(LIBRARY + ".")


class _Scope:
    """What one piece of code imports and refers to."""

    def __init__(self) -> None:
        self.imports: set[str] = set()  # modules its import statements load (absolute, dotted)
        self.bindings: dict[str, set[str]] = {}  # name -> dotted targets its imports bind
        self.chains: set[str] = set()  # names and attribute chains rooted at a name: "f", "a.b.c"
        self.strings: set[str] = set()  # library references in string constants
        self.star: set[str] = set()  # modules imported with ``from x import *``
        self.dynamic = False  # calls __import__ / importlib.import_module / globals / vars


def _docstring_free(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return body[1:] if is_doc and isinstance(first.value.value, str) else body


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in _OPTIONAL_IMPORT_ERRORS for k in kinds):
            return True
    return False


def _is_guard(test: ast.expr) -> str | None:
    """``"type_checking"`` / ``"main"`` for ``if TYPE_CHECKING:`` / ``if __name__ == "__main__":``."""
    if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    ):
        return "type_checking"
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    ):
        return "main"
    return None


class _Collector(ast.NodeVisitor):
    """Fills a :class:`_Scope`. ``shallow``: only what runs when the enclosing code runs (not function bodies)."""

    def __init__(self, package: str, shallow: bool) -> None:
        self.scope = _Scope()
        self.package = package
        self.shallow = shallow
        self.optional = 0

    def _bind(self, name: str, target: str) -> None:
        self.scope.bindings.setdefault(name, set()).add(target)

    def visit_Import(self, node: ast.Import) -> None:
        if self.optional:
            return
        for alias in node.names:
            self.scope.imports.add(alias.name)
            if alias.asname:
                self._bind(alias.asname, alias.name)
            else:
                root = alias.name.split(".")[0]
                self._bind(root, root)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if self.optional:
            return
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self.scope.imports.add(base)
        for alias in node.names:
            if alias.name == "*":
                self.scope.star.add(base)
                continue
            self.scope.imports.add(f"{base}.{alias.name}")  # a submodule, when it is one
            self._bind(alias.asname or alias.name, f"{base}.{alias.name}")

    def visit_Try(self, node: ast.Try) -> None:
        optional = _catches_import_error(node)
        self.optional += optional
        for stmt in node.body:
            self.visit(stmt)
        self.optional -= optional
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    visit_TryStar = visit_Try

    def visit_If(self, node: ast.If) -> None:
        if _is_guard(node.test) is None:
            self.generic_visit(node)
            return
        for stmt in node.orelse:  # the guarded body never runs on import
            self.visit(stmt)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in (*node.decorator_list, *node.args.defaults, *node.args.kw_defaults):
            if expr is not None:
                self.visit(expr)
        if not self.shallow:  # shallow: the body runs only when the function (a unit of its own) is reached
            for stmt in _docstring_free(node.body):
                self.visit(stmt)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self.visit(expr)
        for stmt in _docstring_free(node.body):  # the class body runs; its methods' bodies follow `shallow`
            self.visit(stmt)

    def visit_Name(self, node: ast.Name) -> None:
        self.scope.chains.add(node.id)
        if node.id in _DYNAMIC_IMPORTS:
            self.scope.dynamic = True

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name):
            self.scope.chains.add(".".join([value.id, *reversed(parts)]))
            if node.attr in _DYNAMIC_IMPORTS:
                self.scope.dynamic = True
        else:
            self.visit(value)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.scope.strings.update(_LIBRARY_REF.findall(node.value))


class _Module:
    """One library module: what runs on import, and its top-level functions and classes."""

    def __init__(
        self,
        name: str,
        library_root: Path,
        is_package: bool,
        body: _Scope,
        units: dict[str, ast.AST],
        decorated: set[str],
    ) -> None:
        self.name = name
        self.library_root = library_root
        self.is_package = is_package
        self.body = body  # top-level code, class bodies, decorators, defaults
        self.units = units  # top-level function / class name -> node
        self.decorated = decorated  # top-level functions / classes defined with a decorator


def _parse_module(name: str, library_root: Path) -> _Module:
    path = _module_file(name, library_root)
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    collector = _Collector(package, shallow=True)
    for stmt in _docstring_free(tree.body):
        collector.visit(stmt)
    units, decorated = {}, set()
    statements = list(tree.body)
    while statements:  # top-level definitions, also those inside top-level if / try / with / for blocks
        stmt = statements.pop(0)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            units[stmt.name] = stmt  # a redefinition replaces the node, as at run time
            if stmt.decorator_list or stmt.name == "__getattr__":  # registered, or a module's lazy attributes
                decorated.add(stmt.name)
        elif isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for part in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(stmt, part, []):
                    statements.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return _Module(name, library_root, path.name == "__init__.py", collector.scope, units, decorated)


def _unit_scope(module: _Module, node: ast.AST) -> _Scope:
    """What the body of a top-level function, or a whole class with its methods, imports and refers to."""
    collector = _Collector(module.name if module.is_package else module.name.rpartition(".")[0], shallow=False)
    if isinstance(node, ast.ClassDef):
        collector.visit(node)
    else:  # a function: decorators and defaults already ran with the module body
        for stmt in _docstring_free(node.body):
            collector.visit(stmt)
    return collector.scope


def _scope_targets(scope: _Scope, module: _Module, outer: dict[str, set[str]]) -> list[tuple[str, bool]]:
    """``(dotted name, referenced)`` pairs a scope makes reachable: the modules its import statements load
    (``referenced`` False: importing runs the module, not its functions), and every name it uses, resolved through
    its own imports and its module's (``outer``), or to its module's own top-level functions and classes."""
    referenced = set(scope.strings)
    for chain in scope.chains:
        root, _, rest = chain.partition(".")
        for target in scope.bindings.get(root, set()) | outer.get(root, set()):
            referenced.add(f"{target}.{rest}" if rest else target)
        if root in module.units:
            referenced.add(f"{module.name}.{chain}")
    for star in scope.star:  # every name a star import binds may be used
        referenced.update(f"{star}.{name}" for name in _star_names(star, module.library_root))
    pairs = [(name, False) for name in scope.imports] + [(name, True) for name in referenced]
    return [(name, ref) for name, ref in pairs if _is_library(name)]


def import_closure(references: Iterable[str], library_root: Path = REPO / LIBRARY) -> list[str]:
    """Library modules that code reachable from ``references`` can import (dotted names such as
    ``common.networks.eva.primus_m`` or ``common.data.default``); the rule is in the comment above.

    Third-party imports are not followed. A reachable dynamic import (``importlib.import_module``, ``__import__``,
    ``globals()``) makes every library module part of the closure, with a warning.
    """
    parsed: dict[str, _Module] = {}
    imported: set[str] = set()
    reached: set[tuple[str, str]] = set()
    dynamic: list[str] = []
    pending = [(r, True) for r in references if _is_library(r)] + [(LIBRARY, False)]
    while pending:
        dotted, referenced = pending.pop()
        name = _longest_module(dotted, library_root)
        if name is None:
            continue
        if name not in parsed:  # importing a module runs its parents' and its own top-level code
            imported.add(name)
            parts = name.split(".")
            pending.extend((".".join(parts[:end]), False) for end in range(1, len(parts)))
            module = parsed[name] = _parse_module(name, library_root)
            pending.extend(_scope_targets(module.body, module, {}))
            pending.extend((f"{name}.{unit}", True) for unit in module.decorated)  # a decorator may register it
            dynamic += [name] if module.body.dynamic else []
        module = parsed[name]
        attribute = dotted[len(name) + 1 :].split(".")[0]
        if not referenced or not attribute or (name, attribute) in reached:
            continue
        reached.add((name, attribute))
        if attribute in module.units:  # a function or class: its body may run
            scope = _unit_scope(module, module.units[attribute])
            pending.extend(_scope_targets(scope, module, module.body.bindings))
            dynamic += [f"{name}.{attribute}"] if scope.dynamic else []
        else:  # a name the module imported (a re-export) or assigned at top level (that code is counted already)
            pending.extend((t, True) for t in module.body.bindings.get(attribute, ()) if _is_library(t))
    if dynamic:
        warnings.warn(f"dynamic imports in {sorted(set(dynamic))}: vendoring the whole '{LIBRARY}' package")
        for path in library_root.rglob("*.py"):
            parts = path.relative_to(library_root.parent).with_suffix("").parts
            imported.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(imported)


def source_references(source: str, filename: str = "<source>") -> set[str]:
    """Library names that a whole source file (all of its code counts) imports or uses."""
    collector = _Collector(VENDORED, shallow=False)
    for stmt in ast.parse(source, filename).body:
        collector.visit(stmt)
    scope = collector.scope
    return {name for name, _ in _scope_targets(scope, _Module("", REPO / LIBRARY, False, scope, {}, set()), {})}


def _star_names(module: str, library_root: Path) -> list[str]:
    """Names ``from module import *`` binds: its ``__all__`` when it is a literal, else every top-level unit."""
    path = _module_file(module, library_root) if _is_library(module) else None
    if path is None:
        return []
    tree = ast.parse(path.read_text(), str(path))
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
            try:
                return [str(n) for n in ast.literal_eval(stmt.value)]
            except ValueError:
                break
    return [s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


# ---- rewriting -----------------------------------------------------------------------------------------------


def rewrite_python_source(source: str, filename: str = "<module>") -> str:
    """Rename imports of the library package (``common``) to the vendored package (``scripts``).

    Token based, so strings, comments and formatting are untouched: ``from common.x import y``, ``import common.x``
    and, after a plain ``import common...``, attribute chains that start with ``common``.
    """
    if not _IMPORT_STATEMENT.search(source):
        return source
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    plain_import = (
        re.search(rf"^\s*import\s+(?:[\w.]+\s*,\s*)*{LIBRARY}\b(?!\s+as\b)", source, re.MULTILINE) is not None
    )
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


def _build_network(config: dict, configs_dir: Path, seed: int) -> torch.nn.Module:
    """The inference ``network_def`` of ``config``, randomly initialised with ``seed``, in eval mode."""
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser(copy.deepcopy(config))
    try:
        network = parser.get_parsed_content("network_def", lazy=True)
    except Exception as err:  # report which config failed
        raise ExportError(configs_dir / "inference.yaml", f"network_def cannot be built: {err}") from err
    return network.eval()


def _load_weights(network: torch.nn.Module, path: Path, overlays: Sequence[str]) -> None:
    """Load the flat state dict at ``path`` into ``network`` strictly (the library's one weight loader)."""
    from common.networks.weights import WeightsError, load_weights, read_weights

    try:
        state = read_weights(path)
    except WeightsError as err:
        raise ExportError(
            path,
            f"not a flat state dict of network_def that can be read safely ({err.problem}); pass the inference "
            "weights the bundle's train workflow writes (models/model.pt)",
        ) from err
    try:
        load_weights(network, state, where=path)
    except WeightsError as err:
        with_overlay = f" with overlay {list(overlays)}" if overlays else ""
        raise ExportError(
            path,
            f"does not match the inference network_def{with_overlay}: {err.problem}; was it trained with another "
            "overlay?",
        ) from err


def _preprocessing_record(config: dict, weights: Path | None) -> dict[str, Any] | None:
    """The exported inference config's preprocessing record, checked against the one beside ``weights`` (a
    mismatch, e.g. demo-trained weights exported without ``--overlay demo``, is refused naming both values)."""
    from common.engines.preprocessing_record import PreprocessingMismatchError, check_preprocessing, record_from_config

    record = record_from_config(copy.deepcopy(config))
    if record is not None and weights is not None:
        try:
            check_preprocessing(weights, record)
        except PreprocessingMismatchError as err:
            raise ExportError(
                weights, f"{err.problem} (was it trained with an overlay? pass it with --overlay)"
            ) from err
    return record


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


def _probe_shape(network: torch.nn.Module, input_shape: list[int], device: torch.device) -> list[int]:
    """The smallest cube / square input (side 16 to 64, at most the real side) the network accepts, else
    ``input_shape``: the TorchScript probe runs there, so that a paper-size 3D network is probed in seconds."""
    spatial = input_shape[2:]
    for side in range(PROBE_MIN_SIDE, min(PROBE_MAX_SIDE, *spatial) + 1):
        shape = [*input_shape[:2], *[side] * len(spatial)]
        try:
            with torch.no_grad():
                network(torch.rand(shape, device=device))
        except Exception:  # noqa: BLE001, S112 - a size the network refuses (patch multiple, minimum size): next
            continue
        return shape
    return list(input_shape)


def _torchscript_status(
    network: torch.nn.Module, probe_shape: list[int], device: torch.device, input_shape: list[int] | None = None
) -> tuple[str, str, list[int]]:
    """``("script" | "trace" | "excluded", reason, shape)``: how ``ckpt_export`` can convert this network; tracing is
    checked at ``probe_shape`` (the traced graph must reproduce the eager network on a second input) and, if that
    fails, once more at the real ``input_shape`` (a network with a fixed token grid, e.g. a positional attention
    pool, traces only at the size it was built for); ``shape`` is the input the verdict was reached at."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.jit.script(network)
            return "script", "scriptable", probe_shape
        except Exception as err:  # noqa: BLE001 - any scripting failure is a finding, not an error
            script_error = _first_line(err)
        shapes = [probe_shape] + ([list(input_shape)] if input_shape and list(input_shape) != probe_shape else [])
        verdict = ("excluded", script_error, probe_shape)
        for shape in shapes:
            try:
                x, check = torch.rand(shape, device=device), torch.rand(shape, device=device)
                with torch.no_grad():
                    traced = torch.jit.trace(network, x)
                    if torch.allclose(traced(check), network(check), atol=1e-4, rtol=1e-4):
                        return "trace", script_error, shape
                    verdict = ("excluded", f"{script_error}; the traced graph disagrees with the eager network", shape)
            except Exception as err:  # noqa: BLE001
                verdict = ("excluded", f"{script_error}; tracing fails too: {_first_line(err)}", shape)
        return verdict


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
    torchscript: dict[str, Any],
    commit: str,
    phantoms: bool,
) -> str:
    sections = {k: _localise(v, bundle) for k, v in _sections(source_readme).items()}
    has = set(configs).__contains__
    default_data = "none = the embedded phantoms" if phantoms else "required: the phantom generator is not exported"
    commands = ["# run from the bundle root (the folder holding configs/, scripts/ and models/)"]
    if has("inference.yaml"):
        commands += [
            "# inference -> eval/ (dataset_dir: a folder of images or a datalist)",
            "python -m monai.bundle run --config_file configs/inference.yaml --dataset_dir <data>",
        ]
    if has("train.yaml"):
        commands += [
            f"# training (dataset_dir: a folder with datalist.json; {default_data})",
            "python -m monai.bundle run --config_file configs/train.yaml --dataset_dir <data>",
        ]
    if has("train.yaml") and has("multi_gpu_train.yaml"):
        commands += [
            "torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\",
            "    --config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\"",
        ]
    if has("train.yaml") and has("demo.yaml"):
        commands += [
            "# CPU demo (tiny network)",
            "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/demo.yaml']\"",
        ]
    if has("train.yaml") and has("evaluate.yaml"):
        commands += [
            "# frozen-encoder evaluation of a trained model",
            "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/evaluate.yaml']\"",
        ]
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
    export = (
        "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
        "--meta_file configs/metadata.json --config_file configs/inference.yaml"
    )
    mode, reason, input_shape = torchscript["mode"], torchscript["reason"], torchscript["input_shape"]
    probe = torchscript["probe_shape"]
    probed = (f" Checked at export with a probe input of shape `{probe}`" + (
        " (a small input the network accepts, so that the check takes seconds)." if probe != input_shape else ".")
    ) if probe else ""  # fmt: skip
    if mode == "script":
        commands.append(export)
        ts_note = "The inference network converts with `torch.jit.script` (the Zoo CI default)." + probed
    elif mode == "trace":
        commands.append(f'{export} --use_trace True --input_shape "{input_shape}"')
        ts_note = (
            f"**TorchScript: excluded from scripting** (`exclude_verify_torchscript_list`): `torch.jit.script` "
            f"fails on this network ({reason}). It converts with `torch.jit.trace` at the fixed input shape "
            f"`{input_shape}` (the traced graph matches the eager network); use the command above.{probed}"
        )
    elif mode == "unchecked":
        commands.append(f'{export} --use_trace True --input_shape "{input_shape}"')
        ts_note = (
            "TorchScript conversion was not checked at export (`--check_torchscript False`). The bundle's "
            "networks are usually traceable but not scriptable: try the command above, and list the bundle in "
            "`exclude_verify_torchscript_list` if `torch.jit.script` fails."
        )
    else:
        ts_note = (
            f"**TorchScript: excluded** (`exclude_verify_torchscript_list`): the network can be neither "
            f"scripted nor traced ({reason}). Use `models/model.pt` with `configs/inference.yaml`.{probed}"
        )
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


def _data_license(meta: dict, source_readme: str, bundle: str, phantoms: bool) -> str:
    license_text = _localise(_pick(_sections(source_readme), "license"), bundle)
    phantom_note = (
        (
            " The embedded phantom data are generated by the vendored code in scripts/data/ and carry\n"
            "the code's license."
        )
        if phantoms
        else ""
    )
    return (
        "Third-party data\n"
        "================\n\n"
        f"This bundle was developed with: {meta.get('data_source', 'see docs/README.md')}.\n\n"
        "Each data set is governed by its own license and data-use agreement, which every user must obtain and\n"
        f"follow; this bundle grants no rights to any data.{phantom_note}\n\n"
        + (f"From the bundle's model card:\n\n{license_text}\n" if license_text else "")
    )


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# ---- export steps --------------------------------------------------------------------------------------------


class _Request:
    """A validated export request: what to read, what to write, and the new version."""

    def __init__(
        self,
        bundle: str,
        source: Path,
        final: Path,
        meta: dict,
        version: str,
        config_files: list[Path],
        overlays: list[str],
        weights: Path | None,
    ) -> None:
        self.bundle = bundle
        self.source = source  # bundles/<bundle>
        self.configs_dir = source / "configs"
        self.final = final  # the exported bundle's root
        self.meta = meta  # the bundle's metadata.json, edited by later steps
        self.version = version
        self.config_files = config_files  # the configs to export (inference.yaml always)
        self.overlays = overlays
        self.weights = weights  # None: random initialisation


def _config_file(name: str, configs_dir: Path) -> Path | None:
    for candidate in (configs_dir / name, *(configs_dir / f"{name}{s}" for s in CONFIG_SUFFIXES)):
        if candidate.is_file() and candidate.suffix in CONFIG_SUFFIXES and candidate.name != "metadata.json":
            return candidate
    return None


def _select_configs(configs: str | Sequence[str] | None, configs_dir: Path) -> list[Path]:
    """The configs to export: ``configs`` (names such as ``inference``, ``train``) or every config of the bundle;
    ``inference.yaml`` always."""
    every = sorted(p for p in configs_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")
    if configs is None:
        return every
    names = [n.strip() for n in (configs.split(",") if isinstance(configs, str) else configs) if str(n).strip()]
    chosen = {configs_dir / "inference.yaml"}
    for name in names:
        path = _config_file(str(name), configs_dir)
        if path is None:
            known = ", ".join(p.stem for p in every)
            raise ExportError(configs_dir / str(name), f"no such config to export (the bundle has: {known})")
        chosen.add(path)
    return sorted(chosen)


def _validate_request(
    bundle: str,
    out_dir: str,
    weights: str | None,
    random_init: bool,
    overlay: str | Sequence[str] | None,
    configs: str | Sequence[str] | None,
    version: str | None,
    overwrite: bool,
    bundles_dir: str | None,
) -> _Request:
    """Check the bundle, the weights argument, the output folder and the version before anything is built."""
    source = Path(bundles_dir or REPO / "bundles") / bundle
    configs_dir = source / "configs"
    for required in (configs_dir / "metadata.json", configs_dir / "inference.yaml", configs_dir / "logging.conf",
                     source / "LICENSE"):  # fmt: skip
        if not required.is_file():
            raise ExportError(required, "missing; a Zoo bundle needs it")
    if weights is None and not random_init:
        raise ExportError(source, "no --weights given; pass the trained models/model.pt or --random_init True")
    if weights is not None and random_init:
        raise ExportError(weights, "--weights and --random_init exclude each other")
    weights_path = None
    if weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_absolute() and not weights_path.is_file():
            weights_path = source / weights
        if not weights_path.is_file():
            raise ExportError(weights, f"weights file not found (also looked in {source})")
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
    overlays = [overlay] if isinstance(overlay, str) else [str(o) for o in overlay or []]
    return _Request(bundle, source, final, meta, new_version, _select_configs(configs, configs_dir), overlays,
                    weights_path)  # fmt: skip


def _merge_overlays(request: _Request) -> tuple[str, dict, dict[str, Any]]:
    """``inference.yaml`` with the overlays' values for the keys it defines: (text, config, merged keys)."""
    inference_text = (request.configs_dir / "inference.yaml").read_text()
    inference = _load_config(request.configs_dir / "inference.yaml")
    merged: dict[str, Any] = {}
    for name in request.overlays:
        path = _resolve_overlay(name, request.configs_dir)
        values = {k: v for k, v in _load_config(path).items() if k in inference}
        if not values:
            raise ExportError(path, "defines none of the inference config's keys; nothing to merge")
        inference_text = _merge_into_yaml(inference_text, values, path.name)
        inference.update(values)
        merged.update(values)
    return inference_text, inference, merged


def _edit_metadata(request: _Request, merged: dict[str, Any], changelog: str | None) -> None:
    """New version and changelog entry; a note in the description when an overlay changed the network."""
    meta = request.meta
    origin = "random initialisation" if request.weights is None else f"weights {request.weights.name}"
    with_overlay = f", overlay {', '.join(request.overlays)}" if request.overlays else ""
    meta["version"] = request.version
    meta["changelog"] = {request.version: changelog or f"Model Zoo export ({origin}{with_overlay})",
                         **meta.get("changelog", {})}  # fmt: skip
    if merged:
        listed = ", ".join(f"`{k}`" for k in merged)
        meta["description"] = meta.get("description", "") + (
            f" This export merges {listed} from {', '.join(request.overlays)} into `configs/inference.yaml` (a "
            "smaller network); `network_data_format` was measured on it, other `*_data_format` entries describe the "
            "paper configuration."
        )


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` to write into; it replaces ``final`` only when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    out.chmod(0o755)
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)


def _write_configs(out: Path, request: _Request, inference_text: str) -> set[str]:
    """Configs rewritten to the vendored package, plus ``logging.conf`` and ``LICENSE``; returns the library names
    the configs reference."""
    (out / "configs").mkdir()
    references: set[str] = set()
    for path in request.config_files:
        text = inference_text if path.name == "inference.yaml" else path.read_text()
        references |= _config_references(_parse_config_text(text, path))
        rewritten = rewrite_config_text(text)
        leftover = _config_references(_parse_config_text(rewritten, path))
        if leftover:
            raise ExportError(path, f"references to {sorted(leftover)} left after rewriting")
        (out / "configs" / path.name).write_text(rewritten)
    shutil.copyfile(request.configs_dir / "logging.conf", out / "configs" / "logging.conf")
    shutil.copyfile(request.source / "LICENSE", out / "LICENSE")
    return references


def _own_scripts(source: Path) -> list[Path]:
    """The bundle's own glue code (``bundles/<bundle>/scripts``)."""
    return sorted((source / VENDORED).rglob("*.py")) if (source / VENDORED).is_dir() else []


def _vendor_code(out: Path, references: set[str], source: Path) -> tuple[list[str], list[str]]:
    """Copy the import closure of ``references`` and of the bundle's own scripts into ``out/scripts`` (rewritten
    to ``scripts``), with ``common/resources``; returns (vendored library modules, every vendored source)."""
    library_root = REPO / LIBRARY
    own = _own_scripts(source)
    for path in own:  # the bundle's own code: all of it counts
        references |= source_references(path.read_text(), str(path))
    modules = import_closure(references, library_root)
    sources = []
    for module in modules:
        src = _module_file(module, library_root)
        target = out / VENDORED / src.relative_to(library_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        sources.append(rewrite_python_source(src.read_text(), str(src)))
        target.write_text(sources[-1])
    for path in own:  # bundle glue sits next to the library; an empty __init__.py yields to it
        target = out / VENDORED / path.relative_to(source / VENDORED)
        if target.exists() and path.read_text().strip():
            raise ExportError(path, f"collides with the vendored library file {target.relative_to(out)}")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            sources.append(rewrite_python_source(path.read_text(), str(path)))
            target.write_text(sources[-1])
    if (library_root / "resources").is_dir():
        shutil.copytree(library_root / "resources", out / VENDORED / "resources")
    return modules, sources


def _write_weights(out: Path, network: torch.nn.Module, url: str | None, preprocessing: dict | None) -> str:
    """``models/model.pt`` (flat state dict) with its preprocessing record beside it
    (``models/model.preprocessing.json``, small: kept in the bundle) and its ``large_files.yml`` entry; returns its
    sha256."""
    from common.engines.preprocessing_record import write_record

    (out / "models").mkdir()
    model_pt = out / "models" / "model.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, model_pt)
    if preprocessing is not None:
        write_record(model_pt, preprocessing, lambda path, data: path.write_bytes(data))
    digest = _sha256(model_pt)
    entry = {"path": "models/model.pt", "url": url or URL_TODO, "hash_val": digest, "hash_type": "sha256"}
    (out / "large_files.yml").write_text(
        "# Weights too large for the Model Zoo repository: `python -m monai.bundle download_large_files`\n"
        + yaml.safe_dump({"large_files": [entry]}, sort_keys=False, width=200)
    )
    return digest


def _write_docs(out: Path, request: _Request, modules: Sequence[str], torchscript: dict[str, Any]) -> None:
    """``docs/README.md`` (Zoo template, from the bundle's README and metadata) and ``docs/data_license.txt``."""
    (out / "docs").mkdir()
    readme_path = request.source / "docs" / "README.md"
    source_readme = readme_path.read_text() if readme_path.is_file() else ""
    phantoms = any(m.rsplit(".", 1)[-1].startswith("phantom") for m in modules)
    (out / "docs" / "README.md").write_text(
        _readme(
            request.bundle,
            request.meta,
            source_readme,
            [p.name for p in request.config_files],
            request.weights is None,
            torchscript,
            _git_commit(),
            phantoms,
        )
    )
    own_license = request.source / "docs" / "data_license.txt"
    (out / "docs" / "data_license.txt").write_text(
        own_license.read_text()
        if own_license.is_file()
        else _data_license(request.meta, source_readme, request.bundle, phantoms)
    )


def export(
    bundle: str,
    out_dir: str,
    weights: str | None = None,
    random_init: bool = False,
    overlay: str | Sequence[str] | None = None,
    configs: str | Sequence[str] | None = None,
    version: str | None = None,
    changelog: str | None = None,
    url: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    check_torchscript: bool = True,
    device: str | None = None,
    bundles_dir: str | None = None,
    progress: bool = True,
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
        configs: the configs to export, e.g. ``inference`` (an inference-only export, which vendors only what
            inference needs) or ``inference,train``; default every config of the bundle. ``inference`` always.
        version: new semantic version; default: the metadata version with the patch number bumped.
        changelog: changelog text for the new version.
        url: download URL of ``models/model.pt`` for ``large_files.yml``; default: a TODO placeholder.
        overwrite: replace a previous export in ``out_dir`` (a folder holding ``configs/metadata.json``).
        seed: torch seed for ``random_init``.
        check_torchscript: find out whether ``ckpt_export`` can script or trace the network. The trace is checked
            at a small input (the smallest side from 16 to 64 the network accepts; the real input shape when it
            accepts none), so a paper-size 3D network is probed in seconds.
        device: where the network runs for the checks; default CUDA when available.
        bundles_dir: folder holding the bundles; default ``<repo>/bundles``.
        progress: show a progress bar over the steps (network, weights, TorchScript probe, configs, code, docs).

    Returns:
        A summary: out_dir, version, exported configs, vendored modules (count, names, lines), merged overlay keys,
        fake-input shape, TorchScript mode (script / trace / excluded / unchecked) and the probe's input shape,
        sha256 of the weights, package pins added to the metadata.
    """
    bar = tqdm(total=6, desc=f"export {bundle}", unit="step", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update()

    request = _validate_request(bundle, out_dir, weights, random_init, overlay, configs, version, overwrite,
                                bundles_dir)  # fmt: skip
    inference_text, inference, merged = _merge_overlays(request)
    network = _build_network(inference, request.configs_dir, seed)
    step("network built")
    if request.weights is not None:
        _load_weights(network, request.weights, request.overlays)
    step("weights loaded")
    run_on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network.to(run_on)
    input_shape = _update_io_shapes(request.meta, merged, inference, network, run_on)
    torchscript: dict[str, Any] = {"mode": "unchecked", "reason": "", "input_shape": input_shape, "probe_shape": None}
    if check_torchscript:
        probe_shape = _probe_shape(network, input_shape, run_on)
        mode, reason, probe_shape = _torchscript_status(network, probe_shape, run_on, input_shape)
        torchscript.update(mode=mode, reason=reason, probe_shape=probe_shape)
    step("TorchScript probed")
    preprocessing = _preprocessing_record(inference, request.weights)
    _edit_metadata(request, merged, changelog)

    with _staging(request.final) as out:
        references = _write_configs(out, request, inference_text)
        step("configs written")
        modules, sources = _vendor_code(out, references, request.source)
        step("code vendored")
        added_packages = _undeclared_packages(_third_party_modules(sources), request.meta)  # the Zoo CI pins these
        request.meta["required_packages_version"] = {**request.meta.get("required_packages_version", {}),
                                                     **added_packages}  # fmt: skip
        (out / "configs" / "metadata.json").write_text(json.dumps(request.meta, indent=4) + "\n")
        digest = _write_weights(out, network, url, preprocessing)
        _write_docs(out, request, modules, torchscript)
    step("weights and docs written")
    bar.close()
    library_root = REPO / LIBRARY
    return {
        "out_dir": str(request.final),
        "version": request.version,
        "configs": [p.name for p in request.config_files],
        "vendored_modules": len(modules),
        "vendored_lines": sum(len(_module_file(m, library_root).read_text().splitlines()) for m in modules),
        "vendored": modules,
        "merged_keys": sorted(merged),
        "input_shape": input_shape,
        "torchscript": torchscript["mode"],
        "torchscript_probe_shape": torchscript["probe_shape"],
        "sha256": digest,
        "preprocessing_sha256": None if preprocessing is None else preprocessing["sha256"],
        "added_packages": added_packages,
    }


def cli() -> None:
    """``medvlp-export`` / ``python scripts/export_zoo_bundle.py``: :func:`export` on the command line."""
    try:
        fire.Fire({"export": export})
    except ExportError as err:
        sys.exit(f"export_zoo_bundle: {err}")


if __name__ == "__main__":
    cli()
