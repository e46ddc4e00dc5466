"""Files and weights from a local folder or a (cached) Hugging Face Hub repository, without executing its code.

Used by every loader of published weights (text encoders, DINOv2 / RAD-DINO backbones). ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are honoured; a Hub id that is neither a folder nor cached gives an error naming it and
how to provide it. Hub files are resolved with ``huggingface_hub.hf_hub_download`` (its cache: ``HF_HUB_CACHE`` /
``HF_HOME``); weights are read by :func:`common.networks.weights.read_weights`.
"""

from __future__ import annotations

import json
import os

import torch

from common.networks.weights import WeightsError, read_weights

__all__ = ["WEIGHT_FILES", "hub_file", "hub_offline", "load_hub_checkpoint", "not_found"]

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
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    try:
        return hf_hub_download(source, filename, revision=revision, local_files_only=local_files_only)
    except LocalEntryNotFoundError as err:  # not cached, and offline or the Hub unreachable
        if required:
            raise not_found(source, local_files_only, what) from err
        return None
    except EntryNotFoundError as err:  # the repository exists without this file
        if required:
            raise FileNotFoundError(f"{source}: no {filename}") from err
        return None
    except (OSError, HFValidationError) as err:  # unknown or gated repository or revision, network failure, bad id
        raise not_found(source, local_files_only, what) from err


def load_hub_checkpoint(
    source: str, local_files_only: bool, revision: str | None = None, what: str = "model"
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: a single safetensors/bin file, or the shards listed by an index file.

    Raises:
        FileNotFoundError: the folder or repository holds no weights.
        OSError: see :func:`hub_file`.
        WeightsError: a weight file or shard index is unreadable (see :func:`~common.networks.weights.read_weights`).
    """
    for filename in WEIGHT_FILES:
        path = hub_file(source, filename, local_files_only, revision, required=False, what=what)
        if path is not None:
            return read_weights(path)
    for filename in _INDEX_FILES:
        index = hub_file(source, filename, local_files_only, revision, required=False, what=what)
        if index is not None:
            try:
                with open(index, encoding="utf-8") as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:  # not JSON, or no "weight_map" dict
                raise WeightsError(index, f"not a weight index ({type(err).__name__}: {err})") from err
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_weights(hub_file(source, shard, local_files_only, revision, what=what)))
            return state
    raise FileNotFoundError(f"{source}: no weights ({', '.join(WEIGHT_FILES + _INDEX_FILES)})")
