"""CPU time that validation and TensorBoard images add to a bundle's training run (the figures in the READMEs).

Builds the bundle's ``train.yaml`` (+ an overlay, ``demo`` by default), runs ``validate#evaluator`` ``repeats``
times and the ``TrainingImageLogger`` of ``train#rank0_handlers`` on one training batch, and reports the process
CPU seconds of each (run it with ``OMP_NUM_THREADS=1`` for single-thread figures), the number of validations and
image sets the run makes (``max_epochs // val_interval``, ``max_epochs * iterations_per_epoch //
image_log_interval``) and their total. The weights do not change the cost, so the untrained model is timed. The
first validation also reads and preprocesses the validation records, as every validation does (no cache).

Usage::

    OMP_NUM_THREADS=1 python scripts/validation_cost.py run --bundle colipri_cxr
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from monai.bundle import ConfigParser

from common.bundle_support import locate_bundle_root
from common.engines.images import TrainingImageLogger

__all__ = ["run"]


def _image_logger_index(parser: ConfigParser) -> int:
    for index, handler in enumerate(parser["train"]["rank0_handlers"]):
        if str(handler.get("_target_", "")).endswith("TrainingImageLogger"):
            return index
    raise ValueError("train#rank0_handlers has no TrainingImageLogger")


def run(bundle: str, overlay: str | None = "demo", repeats: int = 2, overrides: dict[str, Any] | None = None) -> dict:
    """Time ``repeats`` validations and one image set of ``bundle`` (+ ``overlay``); prints and returns the figures."""
    configs = Path(locate_bundle_root(bundle)) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f"{name}.yaml") for name in ("train", overlay) if name])
    scratch = tempfile.mkdtemp(prefix="validation_cost_")
    settings = {"output_dir": scratch, "cache_preprocessed": False, "num_workers": 0, **(overrides or {})}
    for key, value in settings.items():
        parser[key] = value
    max_epochs = int(parser.get_parsed_content("max_epochs"))
    val_interval = int(parser.get_parsed_content("val_interval"))
    image_interval = int(parser.get_parsed_content("image_log_interval"))
    iterations = max_epochs * int(parser.get_parsed_content("iterations_per_epoch"))

    evaluator = parser.get_parsed_content("validate#evaluator")
    seconds = []
    for epoch in range(1, repeats + 1):
        start = time.process_time()
        evaluator.run(epoch)
        seconds.append(time.process_time() - start)

    images: TrainingImageLogger = parser.get_parsed_content(f"train#rank0_handlers#{_image_logger_index(parser)}")
    engine = Engine(lambda engine, batch: None)
    engine.state.batch = next(iter(parser.get_parsed_content("train#dataloader")))
    engine.state.iteration = 1
    start = time.process_time()
    images(engine)
    image_seconds = time.process_time() - start

    validations = max_epochs // val_interval if val_interval > 0 else 0
    image_sets = iterations // image_interval if image_interval > 0 else 0
    per_validation = min(seconds)
    result = {
        "bundle": bundle,
        "overlay": overlay,
        "validation_records": len(parser.get_parsed_content("validate#records")),
        "cpu_s_per_validation": [round(s, 2) for s in seconds],
        "validations": validations,
        "cpu_s_per_image_set": round(image_seconds, 2),
        "image_sets": image_sets,
        "added_cpu_s": round(validations * per_validation + image_sets * image_seconds, 1),
    }
    print(json.dumps(result))
    return result


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)


if __name__ == "__main__":
    import functools

    import fire

    fire.Fire({"run": functools.wraps(run)(_cli_run)})
