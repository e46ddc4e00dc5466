"""The CT demo rotates and zooms every view; the paper settings keep the collection's mild affine on half of them.

Trained on the 300 phantom pairs without it, the demo memorised the cases (R@5 0.50 on training pairs, 0.09 on test
pairs; bundles/g2d_ct/docs/README.md, "Demo"), so its overlay takes the prior_ct demo's view augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandAffined

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "g2d_ct" / "configs"
SIZE = 16
DRAWS = 24


def _affine_draws(overlays: list[str]) -> tuple[int, float]:
    """How many of DRAWS views the affine changed, and the largest rotation (degrees) among them."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in overlays])
    parser["spatial_size"] = SIZE
    view = Compose(parser.get_parsed_content("view_augmentation")).set_random_state(seed=0)
    affine = next(t for t in view.transforms if isinstance(t, RandAffined))
    volume = {"image": torch.linspace(-1, 1, SIZE**3).reshape(1, SIZE, SIZE, SIZE)}
    changed, largest = 0, 0.0
    for _ in range(DRAWS):
        view(dict(volume))
        if affine._do_transform:
            changed += 1
            rotation = affine.rand_affine.rand_affine_grid.rotate_params
            largest = max(largest, max(abs(float(angle)) for angle in rotation))
    return changed, float(torch.rad2deg(torch.tensor(largest)))


def test_demo_augments_every_view_up_to_10_degrees() -> None:
    changed, largest = _affine_draws(["train.yaml", "demo.yaml"])
    assert changed == DRAWS
    assert 5.0 < largest <= 10.0


def test_paper_settings_keep_the_mild_affine_on_some_views() -> None:
    changed, largest = _affine_draws(["train.yaml"])
    assert 0 < changed < DRAWS
    assert largest <= 5.0
