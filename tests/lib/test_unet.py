"""U-Net encoder-decoder (common.networks.unet): FlexibleUNet equivalence in 2D/3D, torchvision ImageNet key map,
and the G2D image tower (UNetEncoder + NonLinearProjection + PositionalAttentionPool inside ImageTower)."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from common.networks.pooling import PositionalAttentionPool
from common.networks.projection import NonLinearProjection
from common.networks.two_tower import ImageTower
from common.networks.unet import (
    UNetDecoder,
    UNetEncoder,
    torchvision_resnet_state_dict,
)
from common.networks.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


def unet_encoder_decoder(
    spatial_dims: int, in_channels: int = 1, out_channels: int = 1, backbone: str = "resnet50"
) -> tuple[UNetEncoder, UNetDecoder]:
    """Encoder and decoder built in FlexibleUNet's order (the same seed gives the same weights)."""
    encoder = UNetEncoder(spatial_dims, in_channels, backbone)
    return encoder, UNetDecoder(spatial_dims, encoder.feature_channels, out_channels)


@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (2, 1, 96, 64)), (3, (1, 1, 32, 64, 32))], ids=["2d", "3d"])
def test_split_equals_flexible_unet(spatial_dims: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    flex = FlexibleUNet(1, 2, "resnet18", pretrained=False, spatial_dims=spatial_dims)
    torch.manual_seed(0)
    encoder, decoder = unet_encoder_decoder(spatial_dims, in_channels=1, out_channels=2, backbone="resnet18")
    reference = flex.state_dict()
    enc_state, dec_state = encoder.state_dict(), decoder.state_dict()
    # the two parts are FlexibleUNet's keys, split; same seed, same construction order -> same weights
    assert not set(enc_state) & set(dec_state)
    assert set(enc_state) | set(dec_state) == set(reference)
    assert all(k.startswith("encoder.") for k in enc_state)
    for key, value in {**enc_state, **dec_state}.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)
    x = torch.randn(shape)
    for mode in ("eval", "train"):
        getattr(flex, mode)(), getattr(encoder, mode)(), getattr(decoder, mode)()
        with torch.no_grad():
            expected, got = flex(x), decoder(encoder.features(x))
        assert got.shape == (shape[0], 2, *shape[2:])  # input resolution
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    features = encoder.features(x)
    assert len(features) == 5 and [f.shape[1] for f in features] == list(encoder.feature_channels)
    torch.testing.assert_close(encoder(x), features[-1])


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_resnet50_shapes(spatial_dims: int) -> None:
    encoder, decoder = unet_encoder_decoder(spatial_dims)
    assert (encoder.out_channels, encoder.spatial_dims, encoder.reduction) == (2048, spatial_dims, 32)
    assert encoder.feature_channels == (64, 256, 512, 1024, 2048)
    size = (64,) * spatial_dims
    with torch.no_grad():
        features = encoder.eval().features(torch.randn(1, 1, *size))
        logits = decoder.eval()(features)
    assert features[-1].shape == (1, 2048, *(s // 32 for s in size))
    assert logits.shape == (1, 1, *size)


def test_unknown_backbone_and_bad_dims() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        UNetEncoder(2, backbone="resnet51")
    with pytest.raises(ValueError, match="spatial_dims"):
        UNetEncoder(1)


def _torchvision_resnet50() -> torch.nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine, so that every tensor matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
    return net.eval().double()


def _torchvision_pyramid(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.relu(net.bn1(net.conv1(x)))
    out = [x]
    x = net.maxpool(x)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


def test_torchvision_weights_map_onto_the_2d_encoder(tmp_path) -> None:
    tv = _torchvision_resnet50()
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save({k: v.float() for k, v in tv.state_dict().items()}, path)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = _torchvision_pyramid(tv, x)
        rgb = UNetEncoder(2, in_channels=3, init_weights=path).eval().double()
        for got, want in zip(rgb.features(x), expected):
            torch.testing.assert_close(got, want.float().double(), rtol=1e-5, atol=1e-6)
        # one channel: conv1 summed over RGB, i.e. a grey image behaves as (g, g, g) in the RGB network
        grey = UNetEncoder(2, in_channels=1, init_weights=path).eval().double()
        assert grey.encoder.conv1.weight.shape == (64, 1, 7, 7)
        g = x[:, :1]
        torch.testing.assert_close(grey(g), _torchvision_pyramid(tv, g.expand(-1, 3, -1, -1))[-1], rtol=1e-5, atol=1e-6)


def test_torchvision_weights_are_strict(tmp_path) -> None:
    state = _torchvision_resnet50().float().state_dict()
    assert "fc.weight" in state and "fc.weight" not in torchvision_resnet_state_dict(state)
    broken = {k: v for k, v in state.items() if k != "layer3.2.bn2.running_var"}
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(WeightsError, match=r"broken\.pth.*missing keys \[layer3\.2\.bn2\.running_var\]"):
        UNetEncoder(2, init_weights=path)
    with pytest.raises(WeightsError, match=r"unexpected keys \[extra\.weight\]"):
        UNetEncoder(2, init_weights={**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="2D"):
        UNetEncoder(3, init_weights=state)
    with pytest.raises(WeightsError, match="does not exist"):
        UNetEncoder(2, init_weights=tmp_path / "absent.pth")


@pytest.mark.parametrize(
    ("spatial_dims", "backbone", "size"),
    [(2, "resnet50", 128), (2, "resnet18", 96), (3, "resnet18", 64)],
    ids=["2d-resnet50", "2d-resnet18", "3d-resnet18"],
)
def test_g2d_image_tower(spatial_dims: int, backbone: str, size: int) -> None:
    torch.manual_seed(0)
    encoder, decoder = unet_encoder_decoder(spatial_dims, backbone=backbone)
    grid = (size // 32,) * spatial_dims
    tower = ImageTower(
        encoder,
        projection_dim=128,
        projector=NonLinearProjection(encoder.out_channels, 128, spatial_dims=spatial_dims),
        pooler=PositionalAttentionPool(128, grid, num_heads=4),
    )
    x = torch.randn(2, 1, *(size,) * spatial_dims)
    embeddings = tower(x)
    assert embeddings.shape == (2, 128)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    # the G2D objective's path: one encoder pass feeds the tower and the decoder
    features = encoder.features(x)
    patch_map = tower.projector(features[-1])
    pooled, attention = tower.pool(patch_map, return_attention=True)
    assert patch_map.shape == (2, 128, *grid)
    assert attention.shape == (2, 4, *grid)
    assert bool((attention.flatten(2).sum(-1) < 1).all())
    assert decoder(features).shape == (2, 1, *(size,) * spatial_dims)
    tower.eval()
    with torch.no_grad():
        dense = tower.encode(x, pool=False)
        assert dense.shape == (2, 128, *grid)
        with warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)  # no shape-dependent Python branch is recorded
            traced = torch.jit.trace(tower, x)
        torch.testing.assert_close(traced(x), tower(x))
    (pooled.sum() + decoder(features).mean()).backward()
    assert encoder.encoder.conv1.weight.grad is not None and tower.pooler.positional_embedding.grad is not None


def test_parameter_counts() -> None:
    """The counts the G2D bundles document (ResNet-50 U-Net, 128-d projector, 4-head pooling)."""
    counts = {}
    for dims, grid in ((2, (8, 8)), (3, (5, 5, 5))):
        encoder, decoder = unet_encoder_decoder(dims)
        projector = NonLinearProjection(2048, 128, spatial_dims=dims)
        pooler = PositionalAttentionPool(128, grid)
        counts[dims] = [sum(p.numel() for p in m.parameters()) for m in (encoder, decoder, projector, pooler)]
    assert counts[2] == [23_501_760, 8_601_649, 278_656, 74_368]
    assert counts[3] == [46_155_072, 21_518_161, 278_656, 82_176]
    assert isinstance(decoder, UNetDecoder)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_activation_checkpointing_gives_the_same_outputs_and_gradients(spatial_dims: int) -> None:
    torch.manual_seed(0)
    encoder = UNetEncoder(spatial_dims=spatial_dims, backbone="resnet10")
    decoder = UNetDecoder(spatial_dims, encoder.feature_channels, 2, decoder_channels=(16, 16, 8, 8, 8))
    x = torch.randn(2, 1, *(32,) * spatial_dims)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad(), decoder.zero_grad()
        state = {k: v.clone() for k, v in {**encoder.state_dict(), **decoder.state_dict()}.items()}
        out = decoder(encoder.features(x))
        out.square().mean().backward()
        encoder.load_state_dict({k: state[k] for k in encoder.state_dict()})  # undo the running-stat updates
        decoder.load_state_dict({k: state[k] for k in decoder.state_dict()})
        return out.detach(), [p.grad.clone() for p in [*encoder.parameters(), *decoder.parameters()]]

    plain_out, plain_grads = run()
    encoder.set_grad_checkpointing(True), decoder.set_grad_checkpointing(True)
    out, grads = run()
    torch.testing.assert_close(out, plain_out)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
