"""Shared library of the medical vision(-language) pre-training bundles (COLIPRI, RAD-DINO, G2D, PRIOR, MPMA)."""

from __future__ import annotations

__version__ = "0.1.0"
