"""Files and weights from a local folder or a (cached) Hugging Face Hub repository, without executing its code.

Used by every loader of published weights (text encoders, DINOv2 / RAD-DINO backbones). ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are honoured; a Hub id that is neither a folder nor cached gives an error naming it and
how to provide it. Weights are read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os

import torch

__all__ = ["hub_offline", "hub_file", "load_hub_checkpoint", "not_found", "read_state_dict", "WEIGHT_FILES"]

#: single-file checkpoints, in order of preference (safetensors first)
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES: tuple[str, ...] = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (read at call time)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def not_found(source: str, local_files_only: bool, what: str) -> OSError:
    """The error for a ``what`` (e.g. "text encoder") that is neither a folder nor reachable in the Hub cache."""
    where = "the local Hugging Face cache (offline)" if local_files_only else "the Hugging Face cache or the Hub"
    return OSError(
        f"{what} {source!r} was not found in {where}. Pass a local folder, or download it once where there is "
        f"internet (`huggingface-cli download {source}`) and copy the cache "
        f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r})"
    )


def hub_file(
    source: str,
    filename: str,
    local_files_only: bool,
    revision: str | None = None,
    required: bool = True,
    what: str = "model",
) -> str | None:
    """Local path of ``filename`` in a folder or a (cached) Hub repository; ``None`` if optional and absent.

    Raises:
        OSError: the Hub id is not cached (offline) or cannot be downloaded.
        FileNotFoundError: a required file is missing from an existing folder or repository.
    """
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise FileNotFoundError(f"{source}: no {filename}")
        return None
    from transformers.utils import cached_file

    try:
        path = cached_file(
            source,
            filename,
            revision=revision,
            local_files_only=local_files_only,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError as err:
        raise not_found(source, local_files_only, what) from err
    if path is None and required:
        if local_files_only:
            raise not_found(source, local_files_only, what)
        raise FileNotFoundError(f"{source}: no {filename}")
    return path


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of one ``.safetensors`` file or a torch file loaded with ``weights_only=True``."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_hub_checkpoint(
    source: str, local_files_only: bool, revision: str | None = None, what: str = "model"
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: a single safetensors/bin file, or the shards listed by an index file.

    Raises:
        FileNotFoundError: the folder or repository holds no weights.
        OSError: see :func:`hub_file`.
    """
    for filename in WEIGHT_FILES:
        path = hub_file(source, filename, local_files_only, revision, required=False, what=what)
        if path is not None:
            return read_state_dict(path)
    for filename in _INDEX_FILES:
        index = hub_file(source, filename, local_files_only, revision, required=False, what=what)
        if index is not None:
            with open(index, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(hub_file(source, shard, local_files_only, revision, what=what)))
            return state
    raise FileNotFoundError(f"{source}: no weights ({', '.join(WEIGHT_FILES + _INDEX_FILES)})")
