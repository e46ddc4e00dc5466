"""Side-by-side benchmark of the COLIPRI pieces of ``common/`` against the official ``colipri==0.1.3`` package,
and RAD-DINO training-step rows.

Three sections, each optional (``--sections``):

* ``preprocessing``: CT volumes per second of :func:`common.transforms.ct.colipri_preprocessing` (MONAI, lazy fused
  resampling) and of the official TorchIO processor (``colipri.get_processor(image_only=True)``), with loading
  (path in, tensor out) and without (volume already in memory), plus their voxelwise agreement.
* ``encoder``: image-encoder forward latency (batch 1, backbone + projector + attention pooling) and peak memory of
  our :class:`~common.networks.colipri.ColipriImageEncoder` and the official model built with random weights, the
  official weights copied into ours so the outputs can be compared. fp32 on CPU, bf16 autocast on CUDA.
* ``train_step``: time and peak memory of one optimiser step of :class:`~common.methods.colipri.ColipriPretraining`
  through :class:`~common.engines.trainer.PretrainingTrainer`: the demo configuration (EVA-tiny 64^3, tiny BERT) and,
  on CUDA only, the paper configuration (Primus-M 192^3, BERT-base text tower, report decoder, MAE decoder) with and
  without activation checkpointing; then the same for each RAD-DINO bundle's
  :class:`~common.methods.rad_dino.RadDinoPretraining`, built from the bundle's own ``train.yaml`` (+ ``demo.yaml``)
  and fed random multi-crop views of the configured sizes (demo on any device, paper configuration on CUDA only).

Usage::

    python scripts/benchmark.py run --out_dir bench --device cpu --encoder_input 64 --repeats 3
    python scripts/benchmark.py run --out_dir bench --device cuda --sections preprocessing,encoder,train_step

Writes ``benchmark.json`` (every number, the machine, the settings, and why a case was skipped) and
``benchmark.md`` (Markdown tables). Times are medians over ``repeats`` runs after ``warmup`` runs. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed runs (weights included), reported for work on CUDA only
(``null`` on CPU: the process's resident set, after warm-up, mostly reuses freed memory and says little).

Only random weights are used: no download, no ``trust_remote_code``. Without ``--volume`` (or when the default
volume is absent) a deterministic phantom from :mod:`common.data.phantom` is written to a temporary NIfTI.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_VOLUME",
    "SECTIONS",
    "bench_encoder",
    "bench_preprocessing",
    "bench_train_step",
    "machine_info",
    "run",
    "to_markdown",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VOLUME = "/work/shared/data/ct/lung_pet_ct_dx_A0001_5mm.nii.gz"
SECTIONS = ("preprocessing", "encoder", "train_step")
_MIB = 2**20


# ------------------------------------------------------------------------------------------------ measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yields a dict whose ``peak_mib`` is set on exit to CUDA's peak allocated memory (``None`` off CUDA)."""
    result: dict[str, float | None] = {"peak_mib": None}
    gc.collect()
    if device.type != "cuda":
        yield result
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    _sync(device)
    result["peak_mib"] = torch.cuda.max_memory_allocated(device) / _MIB


def _measure(
    fn: Callable[[Any], Any],
    device: torch.device,
    repeats: int,
    warmup: int,
    setup: Callable[[], Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Median/min/mean seconds of ``fn(setup())`` (``setup`` untimed) and peak memory; returns (stats, last output)."""
    out = None
    for _ in range(warmup):
        out = fn(setup() if setup else None)
    times = []
    with _peak_memory(device) as memory:
        for _ in range(repeats):
            arg = setup() if setup else None
            _sync(device)
            start = time.perf_counter()
            out = fn(arg)
            _sync(device)
            times.append(time.perf_counter() - start)
    stats = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "repeats": repeats,
        "warmup": warmup,
        "peak_mib": memory["peak_mib"],
    }
    return stats, out


def _error(err: BaseException) -> dict[str, str]:
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=4)}


def _try_import(name: str) -> tuple[Any, str | None]:
    try:
        return __import__(name), None
    except Exception as err:  # noqa: BLE001 - any import failure (missing dep, ABI) means "skip with a note"
        return None, f"{name} not importable ({type(err).__name__}: {err})"


# ------------------------------------------------------------------------------------------------ machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, library versions and (on CUDA) the GPU."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": None,
    }
    for name in ("monai", "transformers", "torchio", "colipri"):
        module, _ = _try_import(name)
        info[name] = getattr(module, "__version__", None) if module else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


# ------------------------------------------------------------------------------------------------ preprocessing


def _phantom_volume(directory: str) -> str:
    """Write the deterministic phantom case ``training/0`` as NIfTI and return its path."""
    import nibabel as nib

    from common.data.phantom import make_phantom

    case = make_phantom(seed=0, split="training", index=0)
    path = os.path.join(directory, f"phantom_{case.case_id}.nii.gz")
    nib.save(nib.Nifti1Image(case.hu, case.affine), path)
    return path


def bench_preprocessing(volume: str, device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Volumes/s of ours vs the official TorchIO processor on ``volume``, with and without loading, and agreement."""
    from monai.transforms import Compose

    from common.transforms.ct import colipri_preprocessing, load_volume

    result: dict[str, Any] = {"volume": volume, "cases": {}}
    cases = result["cases"]
    preloaded = load_volume(("image",))({"image": volume})["image"]
    result["input_shape"] = list(preloaded.shape[1:])
    result["input_spacing_mm"] = [round(float(s), 4) for s in preloaded.pixdim]
    outputs: dict[str, torch.Tensor] = {}
    targets = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    for target in targets:
        dev = None if target.type == "cpu" else target
        with_loading = Compose(colipri_preprocessing(device=dev), lazy=True)
        in_memory = Compose(colipri_preprocessing(loader=None, device=dev), lazy=True)
        name = f"ours ({target.type})"
        try:
            stats, out = _measure(lambda _: with_loading({"image": volume})["image"], target, repeats, warmup)
            cases[f"{name}, with loading"] = stats
            stats, out = _measure(
                lambda data: in_memory(data)["image"], target, repeats, warmup, setup=lambda: {"image": preloaded.clone()}
            )
            cases[f"{name}, in memory"] = stats
            outputs[name] = out.as_tensor().detach().float().cpu()
        except Exception as err:  # noqa: BLE001 - record and go on with the other cases
            cases[name] = _error(err)

    colipri, missing = _try_import("colipri")
    tio, missing_tio = _try_import("torchio")
    if missing or missing_tio:
        cases["official (TorchIO)"] = {"skipped": missing or missing_tio}
    else:
        try:
            processor = colipri.get_processor(image_only=True)
            stats, out = _measure(lambda _: processor.process_images(volume)[0].data, torch.device("cpu"), repeats, warmup)
            cases["official (TorchIO), with loading"] = stats
            image = tio.ScalarImage(volume)
            image.load()
            stats, out = _measure(
                lambda img: processor.process_images(img)[0].data,
                torch.device("cpu"),
                repeats,
                warmup,
                setup=lambda: copy.deepcopy(image),
            )
            cases["official (TorchIO), in memory"] = stats
            outputs["official"] = out.float()
        except Exception as err:  # noqa: BLE001
            cases["official (TorchIO)"] = _error(err)

    for stats in cases.values():
        if "median_s" in stats:
            stats["volumes_per_s"] = 1.0 / stats["median_s"]
    if "official" in outputs:
        result["agreement"] = {}
        for name, ours in outputs.items():
            if name == "official":
                continue
            if ours.shape != outputs["official"].shape:
                result["agreement"][name] = {"error": f"shape {tuple(ours.shape)} vs {tuple(outputs['official'].shape)}"}
                continue
            diff = (ours - outputs["official"]).abs()
            result["agreement"][name] = {
                "shape": list(ours.shape),
                "max_abs_diff": float(diff.max()),
                "mean_abs_diff": float(diff.mean()),
            }
    return result


# ------------------------------------------------------------------------------------------------ encoder


def _encoder_sizes(encoder: str) -> dict[str, int]:
    if encoder == "primus_m":
        return {"embed_dim": 864, "depth": 16, "num_heads": 12, "projection_dim": 768, "pool_heads": 12}
    if encoder == "eva_tiny":
        return {"embed_dim": 96, "depth": 2, "num_heads": 4, "projection_dim": 96, "pool_heads": 4}
    raise ValueError(f"encoder must be 'primus_m' or 'eva_tiny', got {encoder!r}")


def _our_image_encoder(encoder: str, input_size: int) -> torch.nn.Module:
    from common.networks.colipri import ColipriImageEncoder
    from common.networks.eva import eva_tiny, primus_m

    sizes = _encoder_sizes(encoder)
    backbone = primus_m(img_size=input_size) if encoder == "primus_m" else eva_tiny(img_size=input_size)
    return ColipriImageEncoder(backbone, projection_dim=sizes["projection_dim"], num_heads=sizes["pool_heads"])


def _official_model(colipri: Any, encoder: str, input_size: int) -> torch.nn.Module:
    """The official image-only model with random weights; EVA-tiny sizes through Hydra overrides."""
    sizes = _encoder_sizes(encoder)
    overrides: dict[str, Any] = {"input_size": input_size}
    if encoder != "primus_m":
        overrides.update(
            {
                "image_embed_dim": sizes["embed_dim"],
                "projection_dim": sizes["projection_dim"],
                "model.image_encoder.backbone.eva_depth": sizes["depth"],
                "model.image_encoder.backbone.eva_numheads": sizes["num_heads"],
                "model.image_encoder.pooler.num_heads": sizes["pool_heads"],
            }
        )
    return colipri.get_model(pretrained=False, image_only=True, **overrides).eval()


def bench_encoder(
    device: torch.device, repeats: int, warmup: int, input_size: int, encoder: str = "primus_m"
) -> dict[str, Any]:
    """Forward latency and peak memory of our image encoder vs the official one (same weights), batch 1."""
    amp = device.type == "cuda"
    result: dict[str, Any] = {
        "encoder": encoder,
        "input_size": input_size,
        "batch_size": 1,
        "precision": "bf16 autocast" if amp else "fp32",
        "cases": {},
    }
    if input_size != 192 or encoder != "primus_m":
        result["note"] = "Paper input is Primus-M at 192^3; this run used a smaller setting to stay short"
    cases = result["cases"]
    torch.manual_seed(0)
    x = (torch.rand(1, 1, input_size, input_size, input_size) * 2 - 1).to(device)

    def forward(module_call: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
        def call(_: Any) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return module_call(x)

        return call

    ours = _our_image_encoder(encoder, input_size).eval()
    official = None
    colipri, missing = _try_import("colipri")
    if missing:
        cases["official"] = {"skipped": missing}
    else:
        try:
            official = _official_model(colipri, encoder, input_size)
            load = ours.load_state_dict(official.image_encoder.state_dict(), strict=True)
            result["weights_shared"] = not load.missing_keys and not load.unexpected_keys
        except Exception as err:  # noqa: BLE001
            cases["official"] = _error(err)
            official = None
    outputs = {}
    ours.to(device)
    try:
        stats, outputs["ours"] = _measure(forward(ours.encode), device, repeats, warmup)
        cases["ours"] = stats
    except Exception as err:  # noqa: BLE001
        cases["ours"] = _error(err)
    ours.cpu()
    if official is not None:
        official.to(device)
        try:
            call = forward(lambda t: official.encode_image(t, project=True, pool=True, normalize=True))
            stats, outputs["official"] = _measure(call, device, repeats, warmup)
            cases["official"] = stats
        except Exception as err:  # noqa: BLE001
            cases["official"] = _error(err)
        official.cpu()
    if "median_s" in cases.get("ours", {}) and "median_s" in cases.get("official", {}):
        result["speedup_official_over_ours"] = cases["official"]["median_s"] / cases["ours"]["median_s"]
        if cases["ours"]["peak_mib"] and cases["official"]["peak_mib"]:
            result["memory_ratio_ours_over_official"] = cases["ours"]["peak_mib"] / cases["official"]["peak_mib"]
        result["embedding_max_abs_diff"] = float((outputs["ours"].float() - outputs["official"].float()).abs().max())
    return result


# ------------------------------------------------------------------------------------------------ training step


def _train_config(name: str) -> dict[str, Any]:
    if name == "demo":
        return {
            "encoder": "eva_tiny", "input_size": 64, "text_hidden": 96, "text_layers": 2, "text_heads": 2,
            "vocab_size": 1000, "decoder_layers": 1, "decoder_heads": 2, "mae_depth": 1, "mae_heads": 4, "length": 32,
        }  # fmt: skip
    if name == "paper":  # Primus-M 192^3, CXR-BERT-sized text tower (BERT-base), 6-layer report decoder, nnssl MAE
        return {
            "encoder": "primus_m", "input_size": 192, "text_hidden": 768, "text_layers": 12, "text_heads": 12,
            "vocab_size": 30522, "decoder_layers": 6, "decoder_heads": 12, "mae_depth": 2, "mae_heads": 12,
            "length": 128,
        }  # fmt: skip
    raise ValueError(f"unknown training configuration {name!r}")


def _objective(cfg: dict[str, Any], checkpointing: bool) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    from common.methods.colipri import ColipriPretraining
    from common.networks.colipri import ColipriModel, ColipriTextEncoder
    from common.networks.decoders import MAEDecoder, ReportDecoder

    sizes = _encoder_sizes(cfg["encoder"])
    image = _our_image_encoder(cfg["encoder"], cfg["input_size"])
    bert = BertModel(
        BertConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["text_hidden"],
            num_hidden_layers=cfg["text_layers"],
            num_attention_heads=cfg["text_heads"],
            intermediate_size=4 * cfg["text_hidden"],
        ),
        add_pooling_layer=False,
    )
    text = ColipriTextEncoder(bert, num_heads=cfg["text_heads"], projection_dim=sizes["projection_dim"])
    report = ReportDecoder(
        cfg["vocab_size"],
        image_dim=sizes["projection_dim"],
        hidden_size=cfg["text_hidden"],
        num_layers=cfg["decoder_layers"],
        num_heads=cfg["decoder_heads"],
        max_length=cfg["length"],
    )
    mae = MAEDecoder(
        embed_dim=sizes["embed_dim"], depth=cfg["mae_depth"], num_heads=cfg["mae_heads"], img_size=cfg["input_size"]
    )
    if checkpointing:
        image.backbone.set_grad_checkpointing(True)
        report.set_grad_checkpointing(True)
        mae.set_grad_checkpointing(True)
        bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ColipriPretraining(ColipriModel(image, text), mae_decoder=mae, report_decoder=report, mask_ratio=0.75)


def _batch(cfg: dict[str, Any], batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size, length = cfg["input_size"], cfg["length"]
    ids = torch.randint(1000 if cfg["vocab_size"] > 2000 else 5, cfg["vocab_size"], (batch_size, length), generator=g)
    ids[:, 0], ids[:, -1] = 101 % cfg["vocab_size"], 102 % cfg["vocab_size"]
    return {
        "image": (torch.rand(batch_size, 1, size, size, size, generator=g) * 2 - 1).to(device),
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device=device),
        "has_report": torch.ones(batch_size, dtype=torch.bool, device=device),
    }


def _time_trainer_steps(
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    repeats: int,
    warmup: int,
    grad_clip_norm: float | None,
) -> dict[str, Any]:
    """Run ``warmup + repeats`` iterations of :class:`PretrainingTrainer`; time each timed one between events."""
    from ignite.engine import Events

    from common.engines.trainer import PretrainingTrainer

    params = sum(p.numel() for p in objective.parameters())
    trainer = PretrainingTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch] * (warmup + repeats),
        objective=objective,
        optimizer=optimizer,
        amp_dtype="bf16" if device.type == "cuda" else None,
        grad_clip_norm=grad_clip_norm,
        progress=False,
    )
    times: list[float] = []
    clock: dict[str, Any] = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine: Any) -> None:
        if engine.state.iteration == warmup + 1:  # first timed iteration (ignite counts from 1 once started)
            clock["memory"] = _peak_memory(device)
            clock["memory_result"] = clock["memory"].__enter__()
        _sync(device)
        clock["t"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine: Any) -> None:
        _sync(device)
        if engine.state.iteration > warmup:
            times.append(time.perf_counter() - clock["t"])
        if engine.state.iteration == warmup + repeats:
            clock["memory"].__exit__(None, None, None)

    trainer.run()
    loss = trainer.state.output["loss"] if isinstance(trainer.state.output, dict) else None
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "repeats": repeats,
        "warmup": warmup,
        "peak_mib": clock["memory_result"]["peak_mib"],
        "parameters_m": params / 1e6,
        "last_loss": float(loss) if loss is not None else None,
    }


def _time_colipri_steps(
    cfg: dict[str, Any], checkpointing: bool, batch_size: int, device: torch.device, repeats: int, warmup: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    objective = _objective(cfg, checkpointing).to(device).train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05)
    return _time_trainer_steps(objective, optimizer, _batch(cfg, batch_size, device), device, repeats, warmup, 1.0)


#: RAD-DINO bundles benchmarked in the train_step section: (bundle, spatial dims).
RADDINO_BUNDLES = (("raddino_cxr", 2), ("raddino_ct", 3))


def _raddino_parser(bundle: str, paper: bool, device: torch.device, overrides: dict[str, Any] | None) -> Any:
    """The bundle's own ``train.yaml`` (+ ``demo.yaml`` unless ``paper``), parsed without touching any data."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml")] + ([] if paper else [str(configs / "demo.yaml")]))
    parser["device"] = f"$torch.device({str(device)!r})"
    parser["iterations_per_epoch"] = parser["official_epoch_length"]  # the demo's len(dataloader) would build data
    if "init_weights" in parser.config:
        parser["init_weights"] = None  # the dinov2-base start (same ViT-B/14 shapes) is not needed to time a step
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _raddino_batch(parser: Any, dims: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random views with the config's crop sizes; half the global crops carry a ~30 % iBOT mask."""
    g = torch.Generator().manual_seed(0)
    size, local, patch = (int(parser.get_parsed_content(k)) for k in ("global_crop_size", "local_crop_size", "patch_size"))
    num_local = int(parser.get_parsed_content("num_local_crops"))
    tokens = (size // patch) ** dims
    masks = torch.rand(batch_size, 2, tokens, generator=g) < 0.3
    masks[:, 1] = False
    return {
        "global_crops": torch.randn(batch_size, 2, 1, *(size,) * dims, generator=g).to(device),
        "local_crops": torch.randn(batch_size, num_local, 1, *(local,) * dims, generator=g).to(device),
        "masks": masks.to(device),
    }


def _time_raddino_steps(
    bundle: str,
    dims: int,
    paper: bool,
    checkpointing: bool,
    batch_size: int | None,
    device: torch.device,
    repeats: int,
    warmup: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    parser = _raddino_parser(bundle, paper, device, overrides)
    if batch_size:
        parser["batch_size"] = int(batch_size)
    parser["activation_checkpointing"] = checkpointing
    objective = parser.get_parsed_content("objective").train()
    optimizer = parser.get_parsed_content("optimizer")
    batch = _raddino_batch(parser, dims, int(parser.get_parsed_content("batch_size")), device)
    result = _time_trainer_steps(
        objective, optimizer, batch, device, repeats, warmup, parser.get_parsed_content("grad_clip_norm")
    )
    result["batch_size"] = int(batch["global_crops"].shape[0])
    return result


def _raddino_label(parser: Any, bundle: str, dims: int, paper: bool, checkpointing: bool) -> str:
    size = parser["global_crop_size"]
    vit = parser["vit_size"] if dims == 2 else f"EVA {parser['embed_dim']}x{parser['depth']}"
    crop = f"{size} px" if dims == 2 else f"{size}^3"
    return f"{bundle} {'paper' if paper else 'demo'} ({vit}/{parser['patch_size']}, {crop})" + (
        ", checkpointing" if checkpointing else ""
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_train_step(
    device: torch.device,
    repeats: int,
    warmup: int,
    batch_size: int,
    raddino_batch: int | None = None,
    raddino_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Optimiser-step time and peak memory of ColipriPretraining (contrastive + report + MAE) per configuration,
    and of each RAD-DINO bundle's RadDinoPretraining built from its own configs (``result["raddino"]``).

    Args:
        raddino_batch: RAD-DINO batch size; None uses each config's own per-GPU batch (demo 32; paper 40 2D, 4 3D).
        raddino_overrides: config overrides for every RAD-DINO case (tests shrink the demo with them).
    """
    _, missing = _try_import("ignite")
    if missing:
        return {"skipped": missing}
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "terms": "contrastive + report generation + MAE (mask ratio 0.75), AdamW, grad clip 1",
        "cases": {},
    }
    runs = [("demo", False)]
    if device.type == "cuda":
        runs += [("paper", False), ("paper", True)]
    else:
        result["note"] = "The paper configuration (Primus-M 192^3) runs on CUDA only"
    for name, checkpointing in runs:
        cfg = _train_config(name)
        label = f"{name} ({cfg['encoder']} {cfg['input_size']}^3){', checkpointing' if checkpointing else ''}"
        try:
            result["cases"][label] = _time_colipri_steps(cfg, checkpointing, batch_size, device, repeats, warmup)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: record it and go on
            result["cases"][label] = _error(err)
        _free(device)

    raddino: dict[str, Any] = {
        "precision": result["precision"],
        "terms": "DINO (2 global + local crops) + iBOT + KoLeo, EMA teacher, AdamW with the bundle's param groups",
        "cases": {},
    }
    if device.type != "cuda":
        raddino["note"] = "The paper configurations (ViT-B/14 518 px, Primus-M 160^3) run on CUDA only"
    modes = [(False, False)] + ([(True, False), (True, True)] if device.type == "cuda" else [])
    for bundle, dims in RADDINO_BUNDLES:
        for paper, checkpointing in modes:
            overrides = None if paper else raddino_overrides
            label = _raddino_label(_raddino_parser(bundle, paper, device, overrides), bundle, dims, paper, checkpointing)
            try:
                raddino["cases"][label] = _time_raddino_steps(
                    bundle, dims, paper, checkpointing, raddino_batch, device, repeats, warmup, overrides
                )
            except Exception as err:  # noqa: BLE001 - e.g. out of memory: record it and go on
                raddino["cases"][label] = _error(err)
            _free(device)
    result["raddino"] = raddino
    return result


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _case_table(cases: dict[str, Any], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| case | " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + " --- |" * (len(columns) + 1))
    for name, stats in cases.items():
        if "skipped" in stats or "error" in stats:
            note = " ".join(str(stats.get("skipped") or stats.get("error")).split())[:200].replace("|", "/")
            lines.append(f"| {name} | " + " | ".join(["-"] * (len(columns) - 1)) + f" | {note} |")
            continue
        lines.append(f"| {name} | " + " | ".join(_fmt(stats.get(key)) for key, _ in columns) + " |")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """Render ``benchmark.json``'s content as Markdown: a machine line and one table per section."""
    m = report["machine"]
    gpu = f", GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB, CUDA {m.get('cuda')})" if m.get("gpu") else ""
    lines = [
        "# Benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads){gpu}; "
        f"Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}, colipri {m['colipri']}, "
        f"TorchIO {m['torchio']}. Device: {m['device']}. Times: median of {report['settings']['repeats']} timed run(s) after {report['settings']['warmup']} warm-up.",
    ]
    sections = report["sections"]
    if "preprocessing" in sections:
        sec = sections["preprocessing"]
        lines += ["", "## CT preprocessing (to 2 mm, 192^3, [-1, 1])", ""]
        if "skipped" in sec or "error" in sec:
            lines.append(sec.get("skipped") or sec.get("error"))
        else:
            lines.append(f"Volume `{os.path.basename(sec['volume'])}`, {sec['input_shape']} voxels at "
                         f"{sec['input_spacing_mm']} mm; CPU rows include no memory figure.")  # fmt: skip
            lines += [""] + _case_table(
                sec["cases"], [("volumes_per_s", "volumes/s"), ("median_s", "s/volume"), ("peak_mib", "peak MiB")]
            )
            for name, agree in sec.get("agreement", {}).items():
                if "error" in agree:
                    lines.append(f"\nAgreement {name} vs official: {agree['error']}")
                else:
                    lines.append(f"\nAgreement {name} vs official: max |diff| {agree['max_abs_diff']:.2e}, "
                                 f"mean |diff| {agree['mean_abs_diff']:.2e} (1 HU = 1e-3).")  # fmt: skip
    if "encoder" in sections:
        sec = sections["encoder"]
        lines += ["", "## Image encoder forward (batch 1)", ""]
        if "skipped" in sec or "error" in sec:
            lines.append(sec.get("skipped") or sec.get("error"))
        else:
            lines.append(f"{sec['encoder']} at {sec['input_size']}^3, {sec['precision']}." + (
                f" {sec['note']}." if "note" in sec else ""))  # fmt: skip
            lines += [""] + _case_table(sec["cases"], [("median_s", "latency s"), ("peak_mib", "peak MiB")])
            if "speedup_official_over_ours" in sec:
                ratio = sec.get("memory_ratio_ours_over_official")
                lines.append(
                    f"\nOfficial/ours latency: {sec['speedup_official_over_ours']:.2f}x; ours/official memory: "
                    f"{_fmt(ratio)}; max |embedding diff| with shared weights: {sec['embedding_max_abs_diff']:.1e}."
                )
    if "train_step" in sections:
        sec = sections["train_step"]
        lines += ["", "## COLIPRI training step (contrastive + report + MAE)", ""]
        if "skipped" in sec or "error" in sec:
            lines.append(sec.get("skipped") or sec.get("error"))
        else:
            lines.append(f"Batch {sec['batch_size']}, {sec['precision']}, AdamW." + (
                f" {sec['note']}." if "note" in sec else ""))  # fmt: skip
            lines += [""] + _case_table(
                sec["cases"], [("median_s", "s/step"), ("peak_mib", "peak MiB"), ("parameters_m", "params (M)")]
            )
        rad = sec.get("raddino")
        if rad and not ("skipped" in sec or "error" in sec):
            lines += ["", "## RAD-DINO training step (DINO + iBOT + KoLeo, EMA teacher)", ""]
            lines.append(f"Each bundle's own configs, {rad['precision']}, AdamW." + (
                f" {rad['note']}." if "note" in rad else ""))  # fmt: skip
            lines += [""] + _case_table(
                rad["cases"],
                [("batch_size", "batch"), ("median_s", "s/step"), ("peak_mib", "peak MiB"), ("parameters_m", "params (M)")],
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ CLI


def _sections(sections: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in (sections.split(",") if isinstance(sections, str) else sections) if str(s).strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return names


def run(
    out_dir: str = "benchmark",
    device: str = "cpu",
    sections: str | Sequence[str] = ",".join(SECTIONS),
    repeats: int = 3,
    warmup: int = 1,
    volume: str | None = None,
    encoder: str = "primus_m",
    encoder_input: int | None = None,
    train_batch: int = 2,
    raddino_batch: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the selected sections and write ``benchmark.json`` and ``benchmark.md`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        device: ``cpu`` or ``cuda`` (``cuda:1`` etc.).
        sections: comma-separated subset of ``preprocessing,encoder,train_step``.
        repeats: timed runs per case (the median is reported).
        warmup: untimed runs before them.
        volume: CT volume for the preprocessing section (default: the shared Lung-PET-CT-Dx case, else a phantom).
        encoder: ``primus_m`` (the paper's) or ``eva_tiny`` (tests).
        encoder_input: cube edge of the encoder input; default 192 (paper) on CUDA and 64 on CPU, where Primus-M at
            192^3 in fp32 takes minutes per forward.
        train_batch: COLIPRI batch size of the training-step section.
        raddino_batch: RAD-DINO batch size of the training-step section (default: each config's own).
        threads: ``torch.set_num_threads`` (default: leave torch's choice).

    Returns:
        The report written to ``benchmark.json``.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads:
        torch.set_num_threads(int(threads))
    names = _sections(sections)
    encoder_input = int(encoder_input or (192 if dev.type == "cuda" else 64))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine_info(dev),
        "settings": {
            "sections": names, "repeats": repeats, "warmup": warmup, "encoder": encoder,
            "encoder_input": encoder_input, "train_batch": train_batch, "raddino_batch": raddino_batch,
        },  # fmt: skip
        "sections": {},
    }
    markdown = _write(report, out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            start = time.perf_counter()
            print(f"[benchmark] {name} ...", flush=True)
            try:
                if name == "preprocessing":
                    path = volume or DEFAULT_VOLUME
                    source = "given"
                    if not os.path.exists(path):
                        if volume:
                            raise FileNotFoundError(f"--volume {volume} does not exist")
                        path, source = _phantom_volume(tmp), f"phantom ({DEFAULT_VOLUME} absent)"
                    result = bench_preprocessing(path, dev, repeats, warmup)
                    result["volume_source"] = source
                elif name == "encoder":
                    result = bench_encoder(dev, repeats, warmup, encoder_input, encoder)
                else:
                    result = bench_train_step(dev, repeats, warmup, train_batch, raddino_batch)
            except FileNotFoundError:
                raise
            except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
                result = _error(err)
            result["section_wall_s"] = time.perf_counter() - start
            report["sections"][name] = result
            print(f"[benchmark] {name} done in {result['section_wall_s']:.1f} s", flush=True)
            markdown = _write(report, out)  # after every section: a run cut short keeps what it measured
    print(markdown)
    return report


def _write(report: dict[str, Any], out: Path) -> str:
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (out / "benchmark.md").write_text(markdown)
    return markdown


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)  # the report is written and printed; returning it would make fire print it again


if __name__ == "__main__":
    import functools
    import sys

    import fire

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    fire.Fire({"run": functools.wraps(run)(_cli_run)})
