"""TensorBoard images during pre-training: what the network sees and what it makes of it, every N iterations.

:class:`TrainingImageLogger` is an ignite handler for ``train#rank0_handlers``. Every ``interval`` iterations (never
every step) it writes, for the first sample of the current batch:

* ``views/<key>``: the augmented views the step trained on (``image``; RAD-DINO's ``global_crops`` and
  ``local_crops`` side by side);
* ``<name>``: each image of the objective's optional ``visualize(batch) -> {name: (B, C, *spatial)}`` hook, its C
  channels side by side (COLIPRI: MAE input, masked input and reconstruction, the report-patch similarity map;
  G2D: the image and its attention pseudo-mask).

3D volumes are shown as their middle axial slice (last axis). Each tile is rescaled to [0, 1] on its own and written
with MONAI's :func:`~monai.visualize.plot_2d_or_3d_image`. The hook runs in eval mode without gradients, and the
generator states are restored afterwards, so logging images does not change the training random stream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.networks.utils import eval_mode
from monai.transforms import rescale_array
from monai.visualize import plot_2d_or_3d_image
from torch import nn

from common.engines.trainer import prepare_dict_batch, unwrap_module
from common.engines.validation import preserved_rng

__all__ = ["TrainingImageLogger", "side_by_side"]

logger = logging.getLogger(__name__)


def _mid_slice(tile: torch.Tensor) -> torch.Tensor:
    """``(*spatial)`` -> 2D: the middle slice along the last axis of a volume."""
    if tile.ndim == 3:
        return tile[..., tile.shape[-1] // 2]
    if tile.ndim != 2:
        raise ValueError(f"expected a 2D image or a 3D volume per tile, got shape {tuple(tile.shape)}")
    return tile


def side_by_side(tiles: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """``(N, *spatial)`` tiles -> one ``(1, H, sum W + gaps)`` image, each tile (a volume's mid-slice) in [0, 1]."""
    slices = [rescale_array(_mid_slice(t.detach().float().cpu()), 0.0, 1.0) for t in tiles]
    height = max(s.shape[0] for s in slices)
    parts = []
    for index, image in enumerate(slices):
        if image.shape[0] < height:  # smaller views (local crops) are top-aligned
            image = torch.cat([image, image.new_zeros(height - image.shape[0], image.shape[1])])
        parts.append(image)
        if index < len(slices) - 1:
            parts.append(image.new_ones(height, gap))
    return torch.cat(parts, dim=1)[None]


class TrainingImageLogger:
    """Writes the training views and the objective's own images to TensorBoard every ``interval`` iterations.

    Args:
        log_dir: TensorBoard directory (the one ``TensorBoardStatsHandler`` writes to), or
        summary_writer: an open writer instead.
        objective: the training objective (its ``visualize`` hook is used when it has one).
        interval: iterations between two image sets; ``0`` writes none.
        spatial_dims: 2 (radiographs) or 3 (volumes, shown as their middle axial slice).
        view_keys: batch entries shown as they were trained on: ``(B, C, *spatial)`` images or ``(B, V, C, *s)``
            view stacks.
        tag_prefix: prefix of every tag (MONAI appends ``_HW``).

    Raises:
        ValueError: on a negative ``interval``.
    """

    def __init__(
        self,
        log_dir: str | None = None,
        objective: nn.Module | None = None,
        interval: int = 100,
        spatial_dims: int = 2,
        view_keys: Sequence[str] = ("image",),
        tag_prefix: str = "train/",
        summary_writer: Any = None,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 iterations, got {interval}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if summary_writer is None and log_dir is None:
            raise ValueError("give log_dir or summary_writer")
        self.log_dir = log_dir
        self._writer = summary_writer
        self.objective = objective
        self.interval = int(interval)
        self.spatial_dims = int(spatial_dims)
        self.view_keys = tuple(view_keys)
        self.tag_prefix = tag_prefix

    @property
    def writer(self) -> Any:
        if self._writer is None:  # opened on first use: constructing the handler writes nothing
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
            engine.add_event_handler(Events.COMPLETED, lambda _: self._writer is not None and self._writer.flush())

    def __call__(self, engine: Engine) -> None:
        step = engine.state.iteration
        batch = engine.state.batch
        if not isinstance(batch, Mapping):
            return
        for key in self.view_keys:
            if isinstance(batch.get(key), torch.Tensor):
                self._write(f"views/{key}", batch[key][0], step)
        for name, images in self._visualize(batch, engine).items():
            self._write(name, images[0], step)
        self.writer.flush()

    def _visualize(self, batch: Mapping[str, Any], engine: Engine) -> Mapping[str, torch.Tensor]:
        module = unwrap_module(self.objective) if self.objective is not None else None
        hook = getattr(module, "visualize", None)
        if not callable(hook):
            return {}
        device = getattr(engine.state, "device", None)
        with preserved_rng(), eval_mode(module):
            return dict(hook(prepare_dict_batch(batch, device)))

    def _write(self, name: str, sample: torch.Tensor, step: int) -> None:
        """One sample's ``(..., *spatial)`` channels / views as one image of tiles side by side."""
        tiles = sample.reshape(-1, *sample.shape[-self.spatial_dims :])
        plot_2d_or_3d_image(side_by_side(tiles), step, self.writer, tag=f"{self.tag_prefix}{name}")
