"""Run a frozen encoder over a data loader and stack what it returns (embeddings, patch maps, labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    image_key: str = "image",
    passthrough_keys: Sequence[str] = ("labels_vector", "mask"),
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Encode every batch and concatenate the outputs along the case axis.

    Args:
        encode: maps an image batch ``(B, C, *spatial)`` to named tensors with a leading batch axis
            (e.g. ``{"embedding": (B, D), "patches": (B, D, *grid)}``).
        loader: yields collated dict batches.
        device: where ``encode`` runs.
        image_key: the image entry of a batch.
        passthrough_keys: batch entries stacked as they are when present (``labels_vector`` is renamed ``labels``).
        amp_dtype: autocast dtype on CUDA (outputs are cast back to float32).
        progress: show a progress bar.

    Returns:
        ``{name: (N, ...) array}`` for every encoder output and pass-through key present, plus ``names``
        (the image paths) when the batches carry them.
    """
    device = torch.device(device)
    outputs: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    use_amp = amp_dtype is not None and device.type == "cuda"
    for batch in tqdm(loader, desc="encoding", disable=not progress, leave=False):
        images = torch.as_tensor(batch[image_key]).to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=use_amp):
            encoded = encode(images)
        for key, value in encoded.items():
            outputs.setdefault(key, []).append(value.detach().float().cpu().numpy())
        for key in passthrough_keys:
            if key in batch:
                out_key = "labels" if key == "labels_vector" else key
                outputs.setdefault(out_key, []).append(torch.as_tensor(batch[key]).float().cpu().numpy())
        meta = getattr(batch[image_key], "meta", None)
        if isinstance(meta, Mapping) and "filename_or_obj" in meta:
            names.extend(str(n) for n in meta["filename_or_obj"])
    result = {key: np.concatenate(parts, axis=0) for key, parts in outputs.items()}
    if names:
        result["names"] = np.asarray(names)
    return result
