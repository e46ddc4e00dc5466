"""U-Net encoder-decoder for 2D and 3D from MONAI's ``FlexibleUNet`` parts, split so the encoder can serve alone.

G2D (Liu et al., NeurIPS 2024, https://arxiv.org/abs/2312.01522) trains a ResNet-50 encoder whose last stage feeds the
image-text tower while a U-Net decoder predicts pseudo-masks at input resolution; downstream segmentation reuses both.
:class:`UNetEncoder` is the feature-pyramid encoder (``forward`` gives the last map, so it is an
:class:`~common.networks.two_tower.ImageTower` backbone), :class:`UNetDecoder` the decoder plus segmentation head;
built in that order and composed (``decoder(encoder.features(x))``) they are exactly ``monai.networks.nets.FlexibleUNet``
(same state-dict keys, same weights for the same seed, same output), for ``spatial_dims`` 2 and 3 alike.

**Keys.** The two parts keep FlexibleUNet's names: ``UNetEncoder`` holds ``encoder.*`` (for the ResNets:
``encoder.conv1``, ``encoder.bn1``, ``encoder.layer{1..4}.{i}.{conv,bn}{1,2,3}``, ``encoder.layer{k}.0.downsample.{0,1}``,
the torchvision layout), ``UNetDecoder`` holds ``decoder.blocks.*`` and ``segmentation_head.0.*``; the union of the two
state dicts is a FlexibleUNet state dict.

**ImageNet weights** (``init_weights``): a torchvision ResNet state dict maps onto the 2D bottleneck encoders
(resnet50/101/152) key for key, because MONAI's ``ResNetFeatures`` uses torchvision's names and layout (stride on the
3x3 convolution, 1x1 projection shortcut without bias, same BatchNorm defaults); ``fc.*`` is dropped and, for one
input channel, ``conv1`` is summed over RGB (the PRIOR / G2D convention: a grey image ``g`` then gives what the RGB
network gives on ``(g, g, g)``). MONAI's basic-block resnet18/34 use the zero-padding shortcut ("A") and do not match.

**Deviation from G2D's release** (``smp.Unet("resnet50")``): MONAI's ``UpCat`` halves the channels with a 1x1
convolution before the nearest upsampling and its BatchNorm defaults to ``eps=1e-3``; the smp decoder upsamples first.
The stage widths (256, 128, 64, 32, 16), skip connections, two 3x3 conv-BN-ReLU per stage and the 3x3 head are the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE, SegmentationHead
from monai.networks.nets.flexible_unet import UNetDecoder as _MonaiUNetDecoder
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.networks.weights import load_weights, read_weights

__all__ = [
    "DEFAULT_DECODER_CHANNELS",
    "DEFAULT_DECODER_NORM",
    "UNetDecoder",
    "UNetEncoder",
    "torchvision_resnet_state_dict",
]

#: FlexibleUNet's (and smp's) decoder widths, deepest stage first
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
#: FlexibleUNet's decoder normalisation
DEFAULT_DECODER_NORM: tuple = ("batch", {"eps": 1e-3, "momentum": 0.1})


def _backbone_entry(backbone: str) -> dict:
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(f"unknown backbone {backbone!r}; MONAI registers {sorted(FLEXUNET_BACKBONE.register_dict)}")
    return FLEXUNET_BACKBONE.register_dict[backbone]


def torchvision_resnet_state_dict(state: Mapping[str, torch.Tensor], in_channels: int = 1) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict in the keys of MONAI's 2D ``ResNetFeatures``: ``fc.*`` dropped, ``conv1``
    summed over its RGB input channels when ``in_channels`` is 1 (kept as is otherwise)."""
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv1 = out.get("conv1.weight")
    if conv1 is not None and in_channels == 1 and conv1.shape[1] == 3:
        out["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    return out


class UNetEncoder(nn.Module):
    """The encoder of a FlexibleUNet: images ``(B, in_channels, *spatial)`` -> a pyramid of 5 maps, strides 2..32.

    ``forward`` returns the last map ``(B, out_channels, *spatial / 32)`` (the :class:`ImageTower` backbone contract:
    ``out_channels`` and ``spatial_dims`` attributes); :meth:`features` returns the whole pyramid for the decoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        backbone: a name MONAI's FlexibleUNet registers (``resnet10`` ... ``resnet200``, ``efficientnet-b0`` ...).
        init_weights: torchvision ResNet ImageNet weights (a file for :func:`~common.networks.weights.read_weights`,
            or a state dict), 2D only; every encoder key must be covered (missing ones are named).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        backbone: str = "resnet50",
        init_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        entry = _backbone_entry(backbone)
        # a copy: FlexibleUNet updates the registry's shared parameter dict in place
        params = {**entry["parameter"], "spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": False}
        self.encoder = entry["type"](**params)
        self.backbone_name = backbone
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.feature_channels: tuple[int, ...] = tuple(int(c) for c in entry["feature_channel"])
        self.out_channels = self.feature_channels[-1]
        self.reduction = 2 ** len(self.feature_channels)
        self.grad_checkpointing = False
        if init_weights is not None:
            self.load_torchvision_weights(init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block in the backward pass instead of keeping its activations (training only).

        BatchNorm layers inside a recomputed block update their running statistics a second time (as with any
        activation checkpointing of BatchNorm networks, e.g. timm's ``checkpoint_seq``); the outputs are unchanged.
        """
        self.grad_checkpointing = bool(enable)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid ``[(B, c_k, *spatial / 2**k)]`` for k = 1..5 (channels :attr:`feature_channels`)."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return list(self.encoder(x))
        net = self.encoder  # MONAI's ResNetFeatures.forward, one checkpoint per residual block
        x = net.act(net.bn1(net.conv1(x)))
        pyramid = [x]
        if not net.no_max_pool:
            x = net.maxpool(x)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in layer:
                x = checkpoint(block, x, use_reentrant=False)
            pyramid.append(x)
        return pyramid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last (stride-32) feature map ``(B, out_channels, *grid)``."""
        return self.encoder(x)[-1]

    def load_torchvision_weights(self, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
        """Load torchvision ResNet weights (see the module docstring); raises ``WeightsError`` on any key mismatch."""
        if self.spatial_dims != 2:
            raise ValueError("torchvision ResNet weights are 2D; the 3D encoder has no ImageNet mapping")
        where = "<state dict>" if isinstance(source, Mapping) else source
        state = dict(source) if isinstance(source, Mapping) else read_weights(source)
        load_weights(self.encoder, torchvision_resnet_state_dict(state, self.in_channels), where=where)


class UNetDecoder(nn.Module):
    """FlexibleUNet's decoder and segmentation head: an encoder pyramid -> logits ``(B, out_channels, *spatial)``.

    The output has the input's size. Input sides must be multiples of 32: the ResNet stages round odd sides up and
    MONAI's ``is_pad`` only pads the upsampled map, so the skip concatenation fails otherwise (as in FlexibleUNet).

    Args:
        spatial_dims: 2 or 3.
        feature_channels: the encoder's pyramid widths (:attr:`UNetEncoder.feature_channels`).
        out_channels: output (logit) channels.
        decoder_channels: decoder widths, deepest first (one per pyramid level).
        norm, act, dropout, bias, upsample, interp_mode, is_pad: as in ``FlexibleUNet`` (``bias`` is its
            ``decoder_bias``).
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: Sequence[int],
        out_channels: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        norm: str | tuple = DEFAULT_DECODER_NORM,
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | tuple = 0.0,
        bias: bool = False,
        upsample: str = "nontrainable",
        interp_mode: str = "nearest",
        is_pad: bool = True,
    ) -> None:
        super().__init__()
        feature_channels = tuple(int(c) for c in feature_channels)
        decoder_channels = tuple(decoder_channels)[: len(feature_channels)]
        self.skip_connect = len(feature_channels) - 1
        self.decoder = _MonaiUNetDecoder(
            spatial_dims=spatial_dims,
            # MONAI's first entry is the image's channel count, which its decoder does not use
            encoder_channels=(0, *feature_channels),
            decoder_channels=decoder_channels,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
            upsample=upsample,
            pre_conv="default",
            interp_mode=interp_mode,
            align_corners=None,
            is_pad=is_pad,
        )
        self.segmentation_head = SegmentationHead(
            spatial_dims=spatial_dims, in_channels=decoder_channels[-1], out_channels=out_channels, kernel_size=3
        )
        self.spatial_dims = int(spatial_dims)
        self.out_channels = int(out_channels)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each decoder stage in the backward pass (training only); see :meth:`UNetEncoder.set_grad_checkpointing`."""
        self.grad_checkpointing = bool(enable)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` from :meth:`UNetEncoder.features`."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return self.segmentation_head(self.decoder(list(features), self.skip_connect))
        skips, maps = list(features[:-1])[::-1], list(features[1:])[::-1]  # MONAI's UNetDecoder.forward, checkpointed
        x = maps[0]
        for i, block in enumerate(self.decoder.blocks):
            x = checkpoint(block, x, skips[i] if i < self.skip_connect else None, use_reentrant=False)
        return self.segmentation_head(x)
