"""Side-by-side benchmark of the COLIPRI pieces of ``common/`` against the official ``colipri==0.1.3`` package,
and the training step of every bundle.

Three sections, each optional (``--sections``):

* ``preprocessing``: CT volumes per second of :func:`common.transforms.ct.colipri_preprocessing` (MONAI, lazy fused
  resampling) and of the official TorchIO processor (``colipri.get_processor(image_only=True)``), with loading
  (path in, tensor out) and without (volume already in memory), plus their voxelwise agreement.
* ``encoder``: image-encoder forward latency (batch 1, backbone + projector + attention pooling) and peak memory of
  our image tower (``colipri_ct``'s inference ``network_def``) and the official model built with random weights, the
  official weights copied into ours so the outputs can be compared. fp32 on CPU, bf16 autocast on CUDA.
* ``train_step``: time and peak memory of one optimiser step for every bundle in ``bundles/`` with a ``train.yaml``
  (adding a bundle folder is enough): objective, optimizer and trainer come from the bundle's own ``train.yaml``
  (+ ``demo.yaml``), the batch from its own training transforms on a few embedded phantoms; the demo configuration
  on any device and, on CUDA only, the paper configuration with and without activation checkpointing.
* ``matching``: PRIOR's Hungarian matching of predicted to target sentence prototypes
  (:func:`common.networks.set_matching.match_predictions`: L1 costs on the device, one host transfer, SciPy per
  report) at the paper shapes (2D: 98 reports x 16 x 16; 3D: 16 x 48 x 48), and its share of the same bundle's
  training step when the ``train_step`` section measured it (a stage-1 step, which has no decoders: an upper bound
  of the share in stage 3).

Usage::

    python scripts/benchmark.py run --out_dir bench --device cpu --encoder_input 64 --repeats 3 --train_batch 2
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
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the data-path sections live beside this script
from benchmark_data import (
    bench_data_path,
    bench_decoding,
    bench_loader_feeding,
    bench_store_format,
    ct_rate_phantoms,
    data_markdown,
    real_ct_volumes,
)

if TYPE_CHECKING:
    from common.bundle_support import BundleInfo

__all__ = [
    "DEFAULT_SECTIONS",
    "DEFAULT_VOLUME",
    "SECTIONS",
    "bench_encoder",
    "bench_matching",
    "bench_preprocessing",
    "bench_train_step",
    "machine_info",
    "run",
    "to_markdown",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VOLUME = "/work/shared/data/ct/lung_pet_ct_dx_A0001_5mm.nii.gz"
#: the sections run by default; the data-path sections (scripts/benchmark_data.py) run when named
DEFAULT_SECTIONS = ("preprocessing", "encoder", "train_step", "matching")
SECTIONS = (*DEFAULT_SECTIONS, "decoding", "store_format", "data_path", "loader_feeding")
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
            stats, out = _measure(lambda _, f=with_loading: f({"image": volume})["image"], target, repeats, warmup)
            cases[f"{name}, with loading"] = stats
            stats, out = _measure(
                lambda data, f=in_memory: f(data)["image"],
                target,
                repeats,
                warmup,
                setup=lambda: {"image": preloaded.clone()},
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
            stats, out = _measure(
                lambda _: processor.process_images(volume)[0].data, torch.device("cpu"), repeats, warmup
            )
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
                result["agreement"][name] = {
                    "error": f"shape {tuple(ours.shape)} vs {tuple(outputs['official'].shape)}"
                }
                continue
            diff = (ours - outputs["official"]).abs()
            result["agreement"][name] = {
                "shape": list(ours.shape),
                "max_abs_diff": float(diff.max()),
                "mean_abs_diff": float(diff.mean()),
            }
    return result


# ------------------------------------------------------------------------------------------------ encoder


#: the bundle whose inference image tower the encoder section compares with the official package's
ENCODER_BUNDLE = "colipri_ct"


def _encoder_sizes(encoder: str) -> dict[str, int]:
    if encoder == "primus_m":
        return {"embed_dim": 864, "depth": 16, "num_heads": 12, "projection_dim": 768, "pool_heads": 12}
    if encoder == "eva_tiny":
        return {"embed_dim": 96, "depth": 2, "num_heads": 4, "projection_dim": 96, "pool_heads": 4}
    raise ValueError(f"encoder must be 'primus_m' or 'eva_tiny', got {encoder!r}")


def _our_image_encoder(encoder: str, input_size: int) -> torch.nn.Module:
    """The image tower of :data:`ENCODER_BUNDLE`'s inference ``network_def`` (with its ``demo.yaml`` backbone for
    ``eva_tiny``), sized like the official model of :func:`_official_model`."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / ENCODER_BUNDLE / "configs"
    sizes = _encoder_sizes(encoder)
    parser = ConfigParser()
    demo = [str(configs / "demo.yaml")] if encoder == "eva_tiny" else []
    parser.read_config([str(configs / "inference.yaml"), *demo])
    parser.update({"spatial_size": input_size, **{k: sizes[k] for k in ("projection_dim", "pool_heads")}})
    if encoder == "eva_tiny":
        parser.update({f"image_backbone#{k}": sizes[k] for k in ("embed_dim", "depth", "num_heads")})
    return parser.get_parsed_content("network_def#image_encoder")


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


def _compiled_case(
    result: dict[str, Any],
    model: torch.nn.Module,
    forward: Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[Any], torch.Tensor]],
    outputs: dict[str, torch.Tensor],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> None:
    """Add the ``torch.compile``d encoder (same weights) to ``result``: latency and its largest difference from eager."""
    try:
        compiled = torch.compile(model.encode)
        stats, out = _measure(forward(compiled), device, repeats, max(warmup, 1))  # the first call compiles
        result["cases"]["ours, torch.compile"] = stats
        if "ours" in outputs:
            result["compile_max_abs_diff"] = float((out.float() - outputs["ours"].float()).abs().max())
    except Exception as err:  # noqa: BLE001 - e.g. no compiler toolchain: record it and go on
        result["cases"]["ours, torch.compile"] = _error(err)


def _sdpa_backends() -> dict[str, bool]:
    """Which fused attention kernels ``scaled_dot_product_attention`` may use (our EVA attention calls it)."""
    backends = torch.backends.cuda
    return {
        "flash": backends.flash_sdp_enabled(),
        "memory_efficient": backends.mem_efficient_sdp_enabled(),
        "cudnn": backends.cudnn_sdp_enabled(),
        "math": backends.math_sdp_enabled(),
    }


def bench_encoder(
    device: torch.device,
    repeats: int,
    warmup: int,
    input_size: int,
    encoder: str = "primus_m",
    compile_encoder: bool | None = None,
) -> dict[str, Any]:
    """Forward latency and peak memory of our image encoder vs the official one (same weights), batch 1; with
    ``compile_encoder`` (default: on CUDA) also our encoder under ``torch.compile``. Attention is PyTorch SDPA in
    ours (the kernels allowed are recorded on CUDA)."""
    amp = device.type == "cuda"
    compile_encoder = amp if compile_encoder is None else compile_encoder
    result: dict[str, Any] = {
        "encoder": encoder,
        "input_size": input_size,
        "batch_size": 1,
        "precision": "bf16 autocast" if amp else "fp32",
        "cases": {},
    }
    if amp:
        result["sdpa_backends"] = _sdpa_backends()
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
    if compile_encoder:
        _compiled_case(result, ours, forward, outputs, device, repeats, warmup)
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
        if "median_s" in cases.get("ours, torch.compile", {}):
            compiled = cases["ours, torch.compile"]["median_s"]
            result["speedup_official_over_compiled"] = cases["official"]["median_s"] / compiled
        if cases["ours"]["peak_mib"] and cases["official"]["peak_mib"]:
            result["memory_ratio_ours_over_official"] = cases["ours"]["peak_mib"] / cases["official"]["peak_mib"]
        result["embedding_max_abs_diff"] = float((outputs["ours"].float() - outputs["official"].float()).abs().max())
    return result


# ------------------------------------------------------------------------------------------------ training step

#: component arguments that load pretrained weights, and the value that skips them (random weights, no download)
_NO_PRETRAINED = {"pretrained": False, "init_weights": None}
#: iterations per epoch when a config derives them from its data loader (they only size the schedules)
_ITERATIONS_PER_EPOCH = 1000
#: phantom records per spatial dimension the training batches are drawn from (cycled for larger batches)
_RECORDS = 4


def _time_trainer_steps(
    trainer_class: Any,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    device: torch.device,
    repeats: int,
    warmup: int,
    grad_clip_norm: float | None,
) -> dict[str, Any]:
    """Run ``warmup + repeats`` iterations of the bundle's trainer; time each timed one between events."""
    from ignite.engine import Events

    params = sum(p.numel() for p in objective.parameters())
    trainer = trainer_class(
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


def _phantom_datalist(directory: str, dims: int) -> str:
    """A few embedded phantom cases (paired), generated once per run as a miniature CT-RATE and MIMIC-CXR-JPG read by
    the builders (the default dataset's path): the datalist for ``dims``."""
    from common.data.phantom_published import write_published_phantoms

    folder = os.path.join(directory, "phantoms")
    datalist = os.path.join(folder, f"datalist_{dims}d.json")
    if not os.path.exists(datalist):
        write_published_phantoms(folder, num_train=_RECORDS, num_image_only=0, num_val=0, num_test=0, seed=0)
    return datalist


def _offline_text_encoder(name: str, directory: str) -> tuple[str, str | None]:
    """``name`` when its config and tokenizer load offline; else a BERT-base-sized stand-in folder (the offline
    MiniLM tokenizer, ``BertConfig`` defaults) and a note saying so."""
    from transformers import AutoConfig, BertConfig

    from common.networks.text_encoder import resolve_text_encoder

    try:
        AutoConfig.from_pretrained(resolve_text_encoder(name), local_files_only=True)
        return name, None
    except Exception:  # noqa: BLE001, S110 - not cached, not a folder: the stand-in below
        pass
    folder = os.path.join(directory, "bert_base_stand_in")
    if not os.path.isdir(folder):
        source = resolve_text_encoder("default")
        os.makedirs(folder)
        for file in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.isfile(os.path.join(source, file)):
                shutil.copy(os.path.join(source, file), folder)
        BertConfig().to_json_file(os.path.join(folder, "config.json"))  # BERT-base: 12 x 768, 30,522 tokens
    return folder, f"text tower: {name} is not available offline; a BERT-base-sized stand-in (random weights)"


def _bundle_parser(
    bundle: BundleInfo, paper: bool, device: torch.device, data_dir: str, overrides: dict[str, Any] | None
) -> tuple[Any, list[str]]:
    """The bundle's own ``train.yaml`` (+ ``demo.yaml`` unless ``paper``) on a few phantoms, with random weights;
    returns the parser and notes on what was substituted."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    demo = bundle.config("demo")
    parser.read_config([str(bundle.config("train"))] + ([] if paper or demo is None else [str(demo)]))
    notes = []
    parser["device"] = f"$torch.device({str(device)!r})"
    parser["bundle_root"] = str(bundle.root)
    parser["dataset_dir"] = _phantom_datalist(data_dir, bundle.spatial_dims)
    for key, value in {"cache_preprocessed": False, "num_workers": 0}.items():
        if key in parser:
            parser[key] = value
    from common.bundle_support import component_arguments

    for key, name in component_arguments(parser.config, list(_NO_PRETRAINED)).items():
        parser[key] = _NO_PRETRAINED[name]
    if "@train#" in str(parser.get("iterations_per_epoch", "")):  # would build the data loader: size schedules only
        parser["iterations_per_epoch"] = _ITERATIONS_PER_EPOCH
    if "text_encoder_name" in parser:
        parser["text_encoder_name"], note = _offline_text_encoder(parser["text_encoder_name"], data_dir)
        notes += [note] if note else []
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser, notes


def _bundle_batch(parser: Any, batch_size: int, device: torch.device) -> dict[str, Any]:
    """``batch_size`` items of the bundle's own training dataset (its transforms, random views included),
    collated with its own ``collate_fn``, on ``device``."""
    from torch.utils.data import default_collate

    dataset = parser.get_parsed_content("train#dataset")
    collate_id = "train#dataloader#collate_fn"
    collate = parser.get_parsed_content(collate_id) if collate_id in parser else None
    batch = (collate or default_collate)([dataset[i % len(dataset)] for i in range(batch_size)])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _input_label(batch: dict[str, Any], dims: int) -> str:
    """``48^3`` / ``112 px``: the spatial size of the batch's first image tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= dims + 2:
            spatial = [int(s) for s in value.shape[-dims:]]
            side = str(spatial[0]) if len(set(spatial)) == 1 else "x".join(map(str, spatial))
            return f"{side}^3" if dims == 3 else f"{side} px"
    return "?"


def _time_bundle_steps(
    bundle: BundleInfo,
    paper: bool,
    checkpointing: bool,
    batch_size: int | None,
    device: torch.device,
    repeats: int,
    warmup: int,
    data_dir: str,
    overrides: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """(label, timings) of the bundle's training objective and optimizer, built from its own configs; None when
    ``checkpointing`` is asked for and the config has no ``activation_checkpointing`` switch."""
    from monai.utils import optional_import

    torch.manual_seed(0)
    parser, notes = _bundle_parser(bundle, paper, device, data_dir, overrides)
    if "activation_checkpointing" in parser:
        parser["activation_checkpointing"] = checkpointing
    elif checkpointing:
        return None
    if batch_size:
        parser["batch_size"] = int(batch_size)
    batch = _bundle_batch(parser, int(parser.get_parsed_content("batch_size")), device)
    label = f"{bundle.name} {'paper' if paper else 'demo'} ({_input_label(batch, bundle.spatial_dims)})" + (
        ", checkpointing" if checkpointing else ""
    )
    objective = parser.get_parsed_content("objective").train()
    optimizer = parser.get_parsed_content("optimizer")
    module, _, name = parser["train#trainer"]["_target_"].rpartition(".")
    trainer_class, found = optional_import(module, name=name)
    if not found:
        raise ImportError(f"{bundle.name}: train#trainer target {module}.{name} cannot be imported")
    clip = parser.get_parsed_content("grad_clip_norm") if "grad_clip_norm" in parser else None
    result = _time_trainer_steps(trainer_class, objective, optimizer, batch, device, repeats, warmup, clip)
    result.update(
        bundle=bundle.name,
        configuration="paper" if paper else "demo",
        activation_checkpointing=checkpointing,
        batch_size=len(next(v for v in batch.values() if isinstance(v, torch.Tensor))),
    )
    if notes:
        result["note"] = "; ".join(notes)
    return label, result


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_train_step(
    device: torch.device,
    repeats: int,
    warmup: int,
    batch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    bundles_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Optimiser-step time and peak memory of every bundle's training objective (``bundles/*/configs/train.yaml``),
    built from the bundle's own ``train.yaml`` (+ ``demo.yaml``) and fed a batch of its own training transforms on
    a few embedded phantoms: the demo configuration on any device, the paper configuration (with and without
    activation checkpointing, where the config has the switch) on CUDA only.

    Args:
        batch_size: per-step batch; None uses each config's own per-GPU batch.
        overrides: config overrides for every demo case (tests shrink the demos with them).
        bundles_dir: folder of bundles; default the repository's ``bundles/``.
    """
    from common.bundle_support import discover_bundles

    _, missing = _try_import("ignite")
    if missing:
        return {"skipped": missing}
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "terms": "each bundle's own objective, optimizer (param groups) and trainer (grad clip) from its train.yaml",
        "cases": {},
    }
    modes = [(False, False)]
    if device.type == "cuda":
        modes += [(True, False), (True, True)]
    else:
        result["note"] = "The paper configurations run on CUDA only"
    with tempfile.TemporaryDirectory() as data_dir:
        bundles = discover_bundles(bundles_dir or ROOT / "bundles", configs=["train"])
        for bundle in tqdm(bundles, desc="train_step", unit="bundle", leave=False):
            for paper, checkpointing in modes:
                try:
                    timed = _time_bundle_steps(bundle, paper, checkpointing, batch_size, device, repeats, warmup,
                                               data_dir, None if paper else overrides)  # fmt: skip
                except Exception as err:  # noqa: BLE001 - e.g. out of memory: record it and go on
                    label = f"{bundle.name} {'paper' if paper else 'demo'}"
                    timed = label + (", checkpointing" if checkpointing else ""), _error(err)
                if timed is not None:
                    result["cases"][timed[0]] = timed[1]
                _free(device)
            if device.type == "cuda" and bundle.name in FUSED_OPTIMIZER_BUNDLES:
                result["cases"].update(_fused_optimizer_case(bundle, batch_size, device, repeats, warmup, data_dir))
                _free(device)
    return result


#: bundles whose paper training step is also timed with the fused (single-kernel, same arithmetic) AdamW on CUDA
FUSED_OPTIMIZER_BUNDLES = ("colipri_ct", "raddino_ct")


def _fused_optimizer_case(
    bundle: BundleInfo, batch_size: int | None, device: torch.device, repeats: int, warmup: int, data_dir: str
) -> dict[str, Any]:
    """The paper step (activation checkpointing off) with ``optimizer#fused: true``."""
    label = f"{bundle.name} paper, fused AdamW"
    try:
        timed = _time_bundle_steps(bundle, True, False, batch_size, device, repeats, warmup, data_dir,
                                   {"optimizer#fused": True})  # fmt: skip
    except Exception as err:  # noqa: BLE001 - e.g. out of memory: record it and go on
        return {label: _error(err)}
    return {label: timed[1]} if timed is not None else {}


#: PRIOR's matching shapes at the paper settings: (bundle, reports per GPU, queries = padded targets, width)
MATCHING_SHAPES = (("prior_cxr", 98, 16, 768), ("prior_ct", 16, 48, 768))


def bench_matching(device: torch.device, repeats: int, warmup: int, train_step: dict[str, Any] | None = None) -> dict:
    """Time of PRIOR's batched Hungarian matching at the paper shapes, and its share of the bundle's measured step."""
    from common.networks.set_matching import match_predictions

    result: dict[str, Any] = {"cases": {}}
    steps = (train_step or {}).get("cases", {})
    for bundle, reports, queries, width in MATCHING_SHAPES:
        generator = torch.Generator(device=device).manual_seed(0)
        predictions = torch.randn(reports, queries, width, device=device, generator=generator)
        targets = torch.randn(reports, queries, width, device=device, generator=generator)
        stats, _ = _measure(lambda pair: match_predictions(*pair), device, repeats, warmup,
                            setup=lambda p=predictions, t=targets: (p, t))  # fmt: skip
        case = {**stats, "shape": f"{reports} x {queries} x {queries}"}
        step = next((c for name, c in steps.items() if name.startswith(f"{bundle} paper") and "median_s" in c), None)
        step = step or next((c for name, c in steps.items() if name.startswith(bundle) and "median_s" in c), None)
        if step is not None:
            case["step_s"] = step["median_s"]
            case["share_of_step"] = stats["median_s"] / step["median_s"]
        result["cases"][f"{bundle} ({case['shape']})"] = case
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
        (
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads){gpu}; "
            f"Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}, colipri {m['colipri']}, "
            f"TorchIO {m['torchio']}. Device: {m['device']}. Times: median of {report['settings']['repeats']} "
            f"timed run(s) after {report['settings']['warmup']} warm-up."
        ),
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
            if "speedup_official_over_compiled" in sec:
                lines.append(f"\nOfficial/ours (torch.compile) latency: {sec['speedup_official_over_compiled']:.2f}x; "
                             f"max |diff| compiled vs eager: {_fmt(sec.get('compile_max_abs_diff'))}.")  # fmt: skip
            if "sdpa_backends" in sec:
                allowed = ", ".join(k for k, on in sec["sdpa_backends"].items() if on)
                lines.append(f"\nAttention: torch SDPA (kernels enabled: {allowed}).")
    if "train_step" in sections:
        sec = sections["train_step"]
        lines += ["", "## Training step (each bundle's own train.yaml)", ""]
        if "skipped" in sec or "error" in sec:
            lines.append(sec.get("skipped") or sec.get("error"))
        else:
            batch = f"batch {sec['batch_size']}" if sec.get("batch_size") else "each config's own batch"
            lines.append(f"{sec['terms'][0].upper()}{sec['terms'][1:]}; {batch}, {sec['precision']}." + (
                f" {sec['note']}." if "note" in sec else ""))  # fmt: skip
            columns = [("batch_size", "batch"), ("median_s", "s/step"), ("peak_mib", "peak MiB")]
            lines += [""] + _case_table(sec["cases"], [*columns, ("parameters_m", "params (M)")])
            notes = {f"{name}: {case['note']}" for name, case in sec["cases"].items() if case.get("note")}
            lines += [f"\n{note}." for note in sorted(notes)]
    if "matching" in sections:
        sec = sections["matching"]
        lines += ["", "## PRIOR set matching (Hungarian, L1, paper shapes)", ""]
        if "skipped" in sec or "error" in sec:
            lines.append(sec.get("skipped") or sec.get("error"))
        else:
            lines.append(
                "Share: of the bundle's training step in the train_step section (a stage-1 step; stage 3 "
                "steps are longer, so this is an upper bound)."
            )
            columns = [("median_s", "s/batch"), ("step_s", "step s"), ("share_of_step", "share of step")]
            lines += [""] + _case_table(sec["cases"], columns)
    lines += data_markdown(sections)
    loads = {name: sec.get("load_average") for name, sec in sections.items() if isinstance(sec, dict)}
    if any(loads.values()):
        lines += ["", "1-minute load average before -> after each section: " + "; ".join(
            f"{name} {load[0]} -> {load[1]}" for name, load in loads.items() if load) + "."]  # fmt: skip
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
    sections: str | Sequence[str] = ",".join(DEFAULT_SECTIONS),
    repeats: int = 3,
    warmup: int = 1,
    volume: str | None = None,
    encoder: str = "primus_m",
    encoder_input: int | None = None,
    train_batch: int | None = None,
    threads: int | None = None,
    data_dir: str | None = None,
    phantoms: int = 3,
    feeding_iterations: int = 6,
    compile_encoder: bool | None = None,
    loader_volumes: int = 12,
) -> dict[str, Any]:
    """Run the selected sections and write ``benchmark.json`` and ``benchmark.md`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        device: ``cpu`` or ``cuda`` (``cuda:1`` etc.).
        sections: comma-separated subset of ``preprocessing,encoder,train_step,matching`` (the default) and the
            data-path sections ``decoding,store_format,data_path,loader_feeding`` (``scripts/benchmark_data.py``).
        repeats: timed runs per case (the median is reported).
        warmup: untimed runs before them.
        volume: CT volume for the preprocessing section (default: the shared Lung-PET-CT-Dx case, else a phantom).
        encoder: ``primus_m`` (the paper's) or ``eva_tiny`` (tests).
        encoder_input: cube edge of the encoder input; default 192 (paper) on CUDA and 64 on CPU, where Primus-M at
            192^3 in fp32 takes minutes per forward.
        train_batch: batch size of the training-step section (default: each bundle config's own per-GPU batch).
        threads: ``torch.set_num_threads`` (default: leave torch's choice).
        data_dir: the real data folder holding ``ct/*.nii.gz`` (default: ``shared/data`` beside the checkout).
        phantoms: CT-RATE-sized phantoms (512 x 512 x 300 at 0.7 x 0.7 x 1.5 mm) for the ``store_format`` and
            ``data_path`` sections (0: the real CTs only).
        feeding_iterations: training iterations per case of the ``loader_feeding`` section.
        compile_encoder: also time the encoder under ``torch.compile`` (default: on CUDA).
        loader_volumes: volumes each DataLoader case of the ``data_path`` section reads (its inputs in turn), so
            that the workers' start is spread over many volumes, as in training (``repeats`` applies there too).

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
            "sections": names,
            "repeats": repeats,
            "warmup": warmup,
            "encoder": encoder,
            "encoder_input": encoder_input,
            "train_batch": train_batch,
        },
        "sections": {},
    }
    markdown = _write(report, out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(names, desc="benchmark", unit="section"):
            start, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
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
                    result = bench_encoder(dev, repeats, warmup, encoder_input, encoder, compile_encoder)
                elif name == "matching":
                    result = bench_matching(dev, repeats, warmup, report["sections"].get("train_step"))
                elif name == "train_step":
                    result = bench_train_step(dev, repeats, warmup, train_batch)
                else:
                    result = _data_section(name, tmp, data_dir, phantoms, feeding_iterations, repeats, loader_volumes)
            except FileNotFoundError:
                raise
            except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
                result = _error(err)
            result["section_wall_s"] = time.perf_counter() - start
            result["load_average"] = [load_before, round(os.getloadavg()[0], 2)]
            report["sections"][name] = result
            print(f"[benchmark] {name} done in {result['section_wall_s']:.1f} s", flush=True)
            markdown = _write(report, out)  # after every section: a run cut short keeps what it measured
    print(markdown)
    return report


def _data_section(
    name: str, tmp: str, data_dir: str | None, phantoms: int, feeding_iterations: int, repeats: int, loader_volumes: int
) -> dict[str, Any]:
    """One of the data-path sections of ``scripts/benchmark_data.py`` on the real CTs and CT-RATE-sized phantoms."""
    real = real_ct_volumes(data_dir)
    if name == "decoding":
        return bench_decoding(real, repeats) if real else {"skipped": "no real CTs (shared/data/ct) found"}
    large = ct_rate_phantoms(tmp, phantoms) if phantoms > 0 else []
    if name == "store_format":
        return bench_store_format(real + large, tmp, repeats)
    if name == "data_path":
        inputs = {"real CTs": real, "CT-RATE-sized phantoms": large}
        chosen = {label: volumes for label, volumes in inputs.items() if volumes}
        return bench_data_path(chosen, tmp, repeats=repeats, loader_volumes=loader_volumes)
    from common.data.default import default_datalist

    return bench_loader_feeding(default_datalist(None, dims=3), tmp, feeding_iterations)


def _write(report: dict[str, Any], out: Path) -> str:
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (out / "benchmark.md").write_text(markdown)
    return markdown


def _cli_run(*args: Any, **kwargs: Any) -> None:
    run(*args, **kwargs)  # the report is written and printed; returning it would make fire print it again


def cli() -> None:
    """``medvlp-benchmark`` / ``python scripts/benchmark.py``: :func:`run` on the command line."""
    import functools

    import fire

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    fire.Fire({"run": functools.wraps(run)(_cli_run)})


if __name__ == "__main__":
    cli()
