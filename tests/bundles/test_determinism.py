"""Every bundle workflow seeds python, numpy and torch in its ``initialize`` (``monai.utils.set_determinism``)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.bundle_support import discover_bundles

STACKS = (("train",), ("inference",), ("train", "evaluate"), ("train", "embed"))
CASES = [
    (bundle, stack)
    for bundle in discover_bundles()
    for stack in STACKS
    if all(bundle.config(name) is not None for name in stack)
]


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize(("bundle", "stack"), CASES, ids=[f"{b.name}:{'+'.join(s)}" for b, s in CASES])
def test_initialize_seeds_every_generator(bundle, stack, tmp_path):
    parser = ConfigParser()
    parser.read_config([str(bundle.config(name)) for name in stack])
    seed = 0 if stack == ("inference",) else 123
    parser.update({"seed": seed, "bundle_root": str(tmp_path)})
    seeding = [i for i, item in enumerate(parser["initialize"]) if "set_determinism" in str(item)]
    assert seeding, f"{bundle.name} {'+'.join(stack)}: initialize does not call monai.utils.set_determinism"
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    for index in seeding:  # the other items may build networks (hub downloads): not needed here
        parser.get_parsed_content(f"initialize#{index}")
    seeded = _draws()
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    assert seeded == _draws()
