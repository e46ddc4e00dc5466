"""A plain upsampling convolutional decoder, 2D or 3D: a low-resolution feature map back to an image.

PRIOR reconstructs the image from its (dropped-out) local features and their report-attended counterparts
(Cheng et al., ICCV 2023, https://arxiv.org/abs/2307.14975; release ``prior/decoders/image.py::ImageDecoder``):
five blocks, each a nearest-neighbour x2 upsampling and two 3x3 convolution-BatchNorm-ReLU layers halving the
channels (1536 -> 768 -> ... -> 48), then a 3x3 convolution to the image channels. Built here from MONAI's
``UpSample`` and ``Convolution`` blocks so that the same definition serves 3D volumes.

The release upsamples to fixed sizes (14, 28, 56, 112, 224 for a 7 x 7 map); x2 per block is the same for its
224-pixel input and follows any input size. Its ``Attention(None)`` placeholders are identities and are left out.
"""

from __future__ import annotations

from monai.networks.blocks import Convolution, UpSample
from torch import nn

__all__ = ["UpsamplingDecoder"]


class UpsamplingDecoder(nn.Sequential):
    """``(B, in_channels, *grid)`` -> ``(B, out_channels, *grid * 2**num_blocks)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input width (PRIOR: 2 x 768).
        out_channels: image channels.
        num_blocks: x2 upsampling blocks (PRIOR 2D: 5, stride 32 back to the input size).
        min_channels: floor of the halving widths (keeps thin 3D decoders usable).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int = 1, num_blocks: int = 5, min_channels: int = 8
    ) -> None:
        layers: list[nn.Module] = []
        width = int(in_channels)
        for _ in range(num_blocks):
            out = max(width // 2, min_channels)
            layers.append(
                UpSample(spatial_dims, scale_factor=2, mode="nontrainable", interp_mode="nearest", align_corners=None)
            )
            for c_in in (width, out):
                layers.append(Convolution(spatial_dims, c_in, out, kernel_size=3, act="relu", norm="batch", bias=False))
            width = out
        layers.append(Convolution(spatial_dims, width, out_channels, kernel_size=3, conv_only=True))
        super().__init__(*layers)
        self.spatial_dims = int(spatial_dims)
        self.reduction = 2**num_blocks
