"""Infer and train tasks that serve this repository's MONAI bundles from MONAI Label."""
