"""Argument coercion shared by the evaluation modules: numpy/torch in, checked arrays out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["as_numpy", "as_tensor", "label_names", "to_2d_labels"]


def as_numpy(value: Any, name: str, ndim: int | None = None, dtype: type = np.float64) -> np.ndarray:
    """Return ``value`` (numpy array, torch tensor or nested sequence) as a numpy array of ``dtype``.

    Raises:
        ValueError: if the array does not have ``ndim`` dimensions.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64 if np.dtype(dtype).kind == "f" else value.dtype).numpy()
    array = np.asarray(value, dtype=dtype)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(array.shape)}")
    return array


def as_tensor(value: Any, name: str, ndim: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``value`` as a float32 tensor (kept on its device unless ``device`` is given).

    Raises:
        ValueError: if the tensor does not have ``ndim`` dimensions.
    """
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(device=device, dtype=torch.float32)
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def to_2d_labels(labels: Any, name: str) -> np.ndarray:
    """Labels as float ``(N, K)`` with NaN for unknown; a 1-D ``(N,)`` vector becomes ``(N, 1)``.

    Raises:
        ValueError: on a bad shape or a known value other than 0/1.
    """
    array = as_numpy(labels, name)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be (N, K) or (N,), got shape {tuple(array.shape)}")
    known = array[~np.isnan(array)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0, 1 or NaN (unknown); found {np.unique(known)[:10].tolist()}")
    return array


def label_names(names: Sequence[str] | None, count: int, what: str = "names") -> list[str]:
    """``names`` as a list of ``count`` strings; ``label_0 ... label_{count-1}`` when None.

    Raises:
        ValueError: if the number of names differs from ``count`` or a name repeats.
    """
    if names is None:
        return [f"label_{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"expected {count} {what}, got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {names}")
    return names
