"""Boolean knobs from the command line: ``--resume true`` and friends, for every boolean knob of every bundle.

``python -m monai.bundle run ... --resume true`` passes the override through fire, which keeps ``true`` as the text
``'true'`` (only ``True`` becomes a bool). Each bundle config consumes a boolean knob through
:func:`common.bundle_support.flag`; these tests load every config stack of every bundle with
``monai.bundle.ConfigParser``, override each knob as fire would pass it and evaluate every place that consumes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import fire.parser
import numpy as np
import pytest
import yaml
from monai.bundle import ConfigParser

from common.bundle_support import discover_bundles, flag

FLAG_CALL = "common.bundle_support.flag"
#: Knobs that also take a path (``--resume runs/checkpoints/checkpoint_500.pt``).
PATH_KNOBS = frozenset({"resume"})
#: Config stacks a bundle is run with (those whose files all exist).
STACKS: tuple[tuple[str, ...], ...] = (
    ("train",),
    ("train", "demo"),
    ("train", "multi_gpu_train"),
    ("train", "evaluate"),
    ("train", "demo", "evaluate"),
    ("train", "embed"),
    ("inference",),
    ("inference", "demo"),
)
#: What fire makes of each command-line spelling, and the bool it must mean.
SPELLINGS: tuple[tuple[str, bool], ...] = (
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True),
    ("false", False), ("False", False), ("FALSE", False), ("0", False), ("no", False),
)  # fmt: skip


def _raw_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for bundle in discover_bundles():
        for path in sorted((bundle.root / "configs").glob("*.yaml")):
            yield f"{bundle.name}/{path.name}", yaml.safe_load(path.read_text()) or {}


def _boolean_knobs() -> set[str]:
    """Top-level ids that are a bool in some config, or that some config consumes through ``flag``."""
    knobs: set[str] = set()
    for _, config in _raw_configs():
        knobs |= {key for key, value in config.items() if isinstance(value, bool)}
        knobs |= set(re.findall(rf"{re.escape(FLAG_CALL)}\(@(\w+),", yaml.safe_dump(config, width=10**6)))
    return knobs


BOOLEAN_KNOBS = sorted(_boolean_knobs())


def _stacks() -> list[tuple[str, list[Path]]]:
    out = []
    for bundle in discover_bundles():
        for names in STACKS:
            files = [bundle.config(name) for name in names]
            if all(f is not None for f in files):
                out.append((f"{bundle.name}:{'+'.join(names)}", files))
    return out


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, str(index)))
    elif isinstance(value, str):
        yield "#".join(path), value


def _uses(text: str, knob: str) -> bool:
    return re.search(rf"@{knob}(?![\w#])", text) is not None


def _sites(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(knob, config id, text) of every config item that consumes a boolean knob."""
    return [
        (knob, site, text)
        for site, text in _leaves(config)
        if site != "imports"
        for knob in BOOLEAN_KNOBS
        if knob in config and _uses(text, knob)
    ]


def _site_parser(config: dict[str, Any], knob: str, value: Any, text: str, stubs: dict[str, Any]) -> ConfigParser:
    """A parser holding only the site's expression, the knob's value and stubs for its other references."""
    content: dict[str, Any] = {"imports": config.get("imports", []), knob: value, "site": text}
    for ref, stub in stubs.items():
        node = content
        *parents, last = ref.split("#")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = stub
    return ConfigParser(content)


def _stubs(config: dict[str, Any], knob: str, text: str) -> dict[str, Any]:
    """The site's other references: other boolean knobs keep their config value, anything else is a mock."""
    refs = {r for r in re.findall(r"@([\w#]+)", text) if r != knob}
    return {
        ref: config[ref] if ref in BOOLEAN_KNOBS and isinstance(config.get(ref), bool) else MagicMock(name=ref)
        for ref in refs
    }


def _outcome(parser: ConfigParser) -> tuple[str, Any]:
    try:
        return "value", parser.get_parsed_content("site")
    except Exception as err:  # noqa: BLE001 - work on stubs may fail; it must fail alike for both values
        return "error", type(err).__name__


def _error_chain(err: BaseException) -> str:
    messages = []
    current: BaseException | None = err
    while current is not None:
        messages.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(messages)


def _merged(files: list[Path]) -> dict[str, Any]:
    """The raw config of a stack, merged as ``monai.bundle run --config_file "[...]"`` merges it."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser.get()


STACK_CASES = _stacks()


def test_every_bundle_has_boolean_knobs() -> None:
    assert {"resume", "cache_preprocessed"} <= set(BOOLEAN_KNOBS)
    assert len(STACK_CASES) >= len(discover_bundles()) * 4


@pytest.mark.parametrize(("stack", "files"), STACK_CASES, ids=[s for s, _ in STACK_CASES])
def test_boolean_knobs_are_consumed_through_flag(stack: str, files: list[Path]) -> None:
    """Every place a config reads a boolean knob reads it as ``common.bundle_support.flag(@knob, 'knob'...)``."""
    config = _merged(files)
    for knob, site, text in _sites(config):
        bare = re.sub(rf"{re.escape(FLAG_CALL)}\(@{knob}, '{knob}'(, True)?\)", "", text)
        assert not _uses(bare, knob), f"{stack} {site}: @{knob} used without {FLAG_CALL}: {text}"


@pytest.mark.parametrize(("stack", "files"), STACK_CASES, ids=[s for s, _ in STACK_CASES])
def test_command_line_spellings_mean_the_same_as_bools(stack: str, files: list[Path]) -> None:
    """Each consuming item gives the same result for ``--knob true`` (fire: ``'true'``) as for a real ``True``."""
    config = _merged(files)
    for knob, site, text in _sites(config):
        stubs = _stubs(config, knob, text)
        for spelling, meaning in SPELLINGS:
            given = fire.parser.DefaultParseValue(spelling)
            expected = _outcome(_site_parser(config, knob, meaning, text, stubs))
            got = _outcome(_site_parser(config, knob, given, text, stubs))
            assert got == expected, f"{stack} {site}: --{knob} {spelling} gave {got}, True/False gives {expected}"
        if not stubs:  # also through the whole stack, as `monai.bundle run` resolves it
            real = ConfigParser()
            real.read_config([str(f) for f in files])
            real[knob] = fire.parser.DefaultParseValue("false")
            false_value = real.get_parsed_content(site)
            real[knob] = False
            assert real.get_parsed_content(site, lazy=False) == false_value, f"{stack} {site}"


@pytest.mark.parametrize(("stack", "files"), STACK_CASES, ids=[s for s, _ in STACK_CASES])
def test_unparseable_knob_value_is_refused_with_its_name(stack: str, files: list[Path]) -> None:
    config = _merged(files)
    for knob, site, text in _sites(config):
        stubs = _stubs(config, knob, text)
        for bad in ("2", "maybe", "tru") if knob not in PATH_KNOBS else ("2", "''"):
            given = fire.parser.DefaultParseValue(bad)
            with pytest.raises(Exception) as caught:
                _site_parser(config, knob, given, text, stubs).get_parsed_content("site")
            chain = _error_chain(caught.value)
            assert f"knob '{knob}'" in chain and repr(given) in chain, f"{stack} {site}: {chain}"


def test_flag_spellings() -> None:
    for spelling, meaning in SPELLINGS:
        assert flag(spelling, "k") is meaning
        assert flag(f" {spelling} ", "k") is meaning
    assert flag(True, "k") is True and flag(np.bool_(False), "k") is False
    assert flag(1, "k") is True and flag(np.int64(0), "k") is False
    assert (
        flag("runs/checkpoints/checkpoint_500.pt", "resume", path_allowed=True) == "runs/checkpoints/checkpoint_500.pt"
    )
    assert flag("TRUE", "resume", path_allowed=True) is True
    for bad in ("maybe", "", 2, -1, 0.5, None, [True]):
        with pytest.raises(ValueError, match=r"knob 'k' \(--k\) must be true/false"):
            flag(bad, "k")
    with pytest.raises(ValueError, match="or a path"):
        flag("  ", "resume", path_allowed=True)
