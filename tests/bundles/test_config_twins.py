"""A method's 2D and 3D bundles differ only where pinned: modality, backbone, preprocessing (nothing drifts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"

#: per method, the ``train.yaml`` ids (``#``-joined) on which ``<method>_ct`` and ``<method>_cxr`` may differ
ALLOWED_DIFFERENCES: dict[str, set[str]] = {
    "colipri": {
        "bundle_root", "datalist", "imports", "findings",
        "orientation", "pixdim", "spatial_size", "hu_range",
        "image_preprocessing#_target_", "image_preprocessing#hu_range", "image_preprocessing#orientation",
        "image_preprocessing#pixdim", "augmentation#spatial_dims",
        "image_backbone#_target_", "image_backbone#depth", "image_backbone#embed_dim", "image_backbone#num_heads",
        "image_backbone#patch_size", "image_backbone#spatial_dims", "drop_path_rate",
        "mae_decoder#spatial_dims", "mae_decoder_dim", "mae_decoder_heads",
    },
    "g2d": {
        "bundle_root", "datalist", "imports", "findings", "batch_size", "max_text_length",
        "orientation", "pixdim", "spatial_size", "hu_range", "resize_size", "image_mean", "image_std",
        "image_preprocessing#_target_", "image_preprocessing#hu_range", "image_preprocessing#orientation",
        "image_preprocessing#pixdim", "image_preprocessing#resize_size", "image_preprocessing#mean",
        "image_preprocessing#std",
        "view_augmentation#spatial_dims", "rotate_degrees", "zoom_range",
        "body_mask#_target_", "body_mask#hu_range", "body_mask#hu_threshold", "body_hu_threshold",
        "image_backbone#spatial_dims", "model#image_encoder#projector#spatial_dims", "decoder#spatial_dims",
        "pool_grid", "mask_upsampling",
    },
    "prior": {
        # 3D: no left-right flips (reports name sides), longer reports: more tokens, prototypes and queries;
        # a half-resolution reconstruction target (bundles/prior_ct/docs/README.md)
        "bundle_root", "datalist", "imports", "findings", "batch_size", "max_text_length",
        "orientation", "pixdim", "spatial_size", "hu_range", "resize_size", "image_mean", "image_std",
        "image_preprocessing#_target_", "image_preprocessing#hu_range", "image_preprocessing#orientation",
        "image_preprocessing#pixdim", "image_preprocessing#resize_size", "image_preprocessing#mean",
        "image_preprocessing#std",
        "flip_prob", "augmentation#flip_axes", "augmentation#spatial_dims",
        "image_backbone#spatial_dims", "objective_def#image_decoder#spatial_dims", "image_decoder_blocks",
        "pool_grid", "num_prototypes", "num_queries",
    },
    "mpma": {
        # 3D: Primus-M on the common CT preprocessing, smaller batches of volumes, longer CT reports
        "bundle_root", "datalist", "imports", "findings", "batch_size", "max_text_length",
        "orientation", "pixdim", "spatial_size", "hu_range",
        "image_preprocessing#_target_", "image_preprocessing#hu_range", "image_preprocessing#orientation",
        "image_preprocessing#pixdim", "augmentation#spatial_dims",
        "image_backbone#_target_", "image_backbone#depth", "image_backbone#embed_dim", "image_backbone#num_heads",
        "image_backbone#patch_size", "image_backbone#spatial_dims", "drop_path_rate", "mae_decoder#spatial_dims",
        "mae_decoder_heads",
    },
    "raddino": {
        # 2D: Hugging Face Dinov2Model (fine-tuned from dinov2-base, as RAD-DINO); 3D: EVA ViT from scratch
        "bundle_root", "datalist", "imports", "findings", "batch_size", "num_workers", "activation_checkpointing",
        "orientation", "pixdim", "spatial_size", "hu_range", "image_size", "pixel_mean", "pixel_std",
        "image_preprocessing#_target_", "image_preprocessing#hu_range", "image_preprocessing#mean",
        "image_preprocessing#orientation", "image_preprocessing#pixdim", "image_preprocessing#spatial_size",
        "image_preprocessing#std",
        "global_crop_size", "local_crop_size", "jitter_prob", "solarize_prob", "multicrop#jitter_prob",
        "multicrop#mean", "multicrop#solarize_prob", "multicrop#spatial_dims", "multicrop#std",
        "vit_size", "init_weights", "patch_size", "embed_dim", "depth", "num_heads",
        "backbone_config#drop_path_rate", "backbone_config#image_size", "backbone_config#layerscale_value",
        "backbone_config#patch_size",
        "student_backbone#_target_", "student_backbone#config", "student_backbone#depth",
        "student_backbone#drop_path_rate", "student_backbone#embed_dim", "student_backbone#img_size",
        "student_backbone#init_values", "student_backbone#init_weights", "student_backbone#num_heads",
        "student_backbone#patch_size", "student_backbone#size", "student_backbone#spatial_dims",
        # validation: 2D normalises the whole radiograph as evaluate.yaml does; 3D takes the training preprocessing
        "validate#image_preprocessing", "validate#image_preprocessing#_target_", "validate#image_preprocessing#keys",
        "validate#image_preprocessing#spatial_size", "validate#image_preprocessing#mean",
        "validate#image_preprocessing#std",
    },
}

#: the 3D twin's validating reader with its "is this a CT in HU?" knob (README, data section)
CT_READER_CHECKS = {
    "ct_checks", "image_preprocessing#loader#_mode_", "image_preprocessing#loader#_target_",
    "image_preprocessing#loader#ct_checks",
}  # fmt: skip
#: the preprocessing record names the twin's own preprocessing function and arguments (as image_preprocessing does)
PREPROCESSING_RECORD = {
    "colipri": ("orientation", "pixdim", "hu_range"),
    "g2d": ("orientation", "pixdim", "hu_range", "resize_size", "mean", "std"),
    "prior": ("orientation", "pixdim", "hu_range", "resize_size", "mean", "std"),
    "raddino": ("orientation", "pixdim", "hu_range", "spatial_size", "mean", "std"),
    "mpma": ("orientation", "pixdim", "hu_range"),
}
for _method, _keys in PREPROCESSING_RECORD.items():
    ALLOWED_DIFFERENCES[_method] |= CT_READER_CHECKS | {"preprocessing_record#image_transform"}
    ALLOWED_DIFFERENCES[_method] |= {f"preprocessing_record#image#{key}" for key in _keys}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Config ids -> leaf values (lists of components are indexed, like MONAI's ``train#handlers#0``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}#{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(item, (dict, list)) for item in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}#{index}"))
        return out
    return {prefix: value}


def _twins() -> list[str]:
    methods = {p.name.rsplit("_", 1)[0] for p in BUNDLES.glob("*_ct") if (BUNDLES / f"{p.name[:-3]}_cxr").is_dir()}
    return sorted(methods)


def test_every_twin_pair_is_pinned() -> None:
    assert _twins(), "no <method>_ct / <method>_cxr bundle pairs found"
    missing = [m for m in _twins() if m not in ALLOWED_DIFFERENCES]
    assert not missing, f"pin the train.yaml keys on which these 2D/3D twins may differ: {missing}"


@pytest.mark.parametrize("method", _twins())
def test_2d_and_3d_train_configs_differ_only_where_pinned(method: str) -> None:
    ct = _flatten(yaml.safe_load((BUNDLES / f"{method}_ct" / "configs" / "train.yaml").read_text()))
    cxr = _flatten(yaml.safe_load((BUNDLES / f"{method}_cxr" / "configs" / "train.yaml").read_text()))
    differing = {key for key in set(ct) | set(cxr) if ct.get(key, "<absent>") != cxr.get(key, "<absent>")}
    allowed = ALLOWED_DIFFERENCES.get(method, set())
    assert not differing - allowed, f"{method}: 2D and 3D train.yaml drifted apart on {sorted(differing - allowed)}"
    stale = allowed - differing
    assert not stale, f"{method}: pinned differences that no longer differ (unpin them): {sorted(stale)}"
