"""Training engines: the pre-training trainer, resumable checkpoints, iteration-indexed schedules and handlers.

Import from the modules (``from common.engines.trainer import PretrainingTrainer``): this package re-exports
nothing, so that importing one piece does not load all of them (and an exported bundle carries only what it uses).
"""

from __future__ import annotations
