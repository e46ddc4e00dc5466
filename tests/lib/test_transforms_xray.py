"""Radiograph transforms: shortest-edge resize, the RAD-DINO preprocessing on PNG/JPEG/DICOM (parity with the
Hugging Face processor when transformers is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from common.transforms.xray import (
    RAD_DINO_MEAN,
    RAD_DINO_STD,
    ResizeShortestEdge,
    shortest_edge_size,
    xray_preprocessing,
)

ONE_GREY_LEVEL = 1 / 255 / RAD_DINO_STD  # one 8-bit step in normalised units

pytestmark = pytest.mark.usefixtures("one_thread")


def _chest_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth 8-bit image with a bright marker in the top-left corner (to catch transposes and flips)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(max(2, height // 32), max(2, width // 32)))
    image = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BILINEAR))
    image = image.clip(0, 230)
    image[: height // 8, : width // 8] = 255
    return image.astype(np.uint8)


def _hf_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 518},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": 518, "width": 518},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[RAD_DINO_MEAN] * 3,
        image_std=[RAD_DINO_STD] * 3,
        do_convert_rgb=True,
    )


@pytest.mark.parametrize(
    "shape,expected", [((600, 800), (518, 690)), ((800, 600), (690, 518)), ((518, 518), (518, 518))]
)
def test_shortest_edge_size_follows_hugging_face(shape, expected):
    assert shortest_edge_size(shape, 518) == expected


def test_resize_shortest_edge_updates_the_pixel_spacing():
    img = MetaTensor(
        torch.rand(1, 300, 200), affine=torch.diag(torch.tensor([0.2, 0.1, 1.0, 1.0], dtype=torch.float64))
    )
    out = ResizeShortestEdge(100)(img)
    assert out.shape == (1, 150, 100)
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:2], [0.4, 0.2])
    assert float(out.min()) >= float(img.min()) and float(out.max()) <= float(img.max())  # clipped overshoot
    with pytest.raises(ValueError, match="size"):
        ResizeShortestEdge(0)
    with pytest.raises(ValueError, match="mode"):
        ResizeShortestEdge(10, mode="area")


@pytest.mark.parametrize("shape", [(600, 700), (1000, 777), (777, 1000), (519, 600)])
def test_matches_the_rad_dino_hugging_face_processor_on_png(tmp_path, shape):
    processor = _hf_processor()
    path = tmp_path / "cxr.png"
    Image.fromarray(_chest_like(*shape)).save(path)
    reference = processor(Image.open(path), return_tensors="pt")["pixel_values"][0, 0]
    ours = Compose(xray_preprocessing(intensity_range=(0, 255)))({"image": str(path)})["image"]
    assert ours.shape == (1, 518, 518)
    levels = ((ours[0] - reference).abs() / ONE_GREY_LEVEL).numpy()
    # Pillow resamples an 8-bit image in two separable passes, rounding and clipping to 8 bits after each; we stay in
    # float. That costs up to one grey level everywhere, a few right at the saturated marker's edge.
    assert levels.mean() < 0.5
    assert np.quantile(levels, 0.999) < 1.05
    assert levels.max() < 5


def test_png_jpeg_and_16_bit_keep_orientation(tmp_path):
    image = _chest_like(640, 560, seed=1)
    files = {"png": tmp_path / "a.png", "jpg": tmp_path / "a.jpg", "png16": tmp_path / "b.png"}
    Image.fromarray(image).save(files["png"])
    Image.fromarray(image).save(files["jpg"], quality=95)
    Image.fromarray(image.astype(np.uint16) * 257).save(files["png16"])
    pipeline = Compose(xray_preprocessing(spatial_size=64, num_channels=3))
    outputs = {name: pipeline({"image": str(path)})["image"] for name, path in files.items()}
    for name, out in outputs.items():
        assert out.shape == (3, 64, 64), name
        assert torch.equal(out[0], out[2])
        top_left, bottom_right = float(out[0, :4, :4].mean()), float(out[0, -4:, -4:].mean())
        assert top_left > bottom_right, f"{name}: bright marker lost its top-left position"
    torch.testing.assert_close(outputs["png"], outputs["png16"], atol=1e-4, rtol=0)


def test_dicom_slices(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    pipeline = Compose(xray_preprocessing(spatial_size=96))
    for name in ("CT_small.dcm", "MR_small.dcm"):  # stand-ins for a radiograph: real single-frame DICOM
        out = pipeline({"image": pydicom_data.get_testdata_file(name)})["image"]
        assert out.shape == (1, 96, 96) and torch.isfinite(out).all()
        unit = out * RAD_DINO_STD + RAD_DINO_MEAN
        assert float(unit.min()) >= -1e-5 and float(unit.max()) <= 1 + 1e-5


def test_real_chest_radiograph_when_available():
    pydicom_data = pytest.importorskip("pydicom.data")
    try:
        path = pydicom_data.get_testdata_file("RG1_UNCR.dcm", download=False)
    except Exception:  # pragma: no cover - depends on pydicom-data being installed
        path = None
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    out = Compose(xray_preprocessing())({"image": path})["image"]
    assert out.shape == (1, 518, 518)
    unit = out[0] * RAD_DINO_STD + RAD_DINO_MEAN
    # MONOCHROME1 is inverted by the reader: the mediastinum (centre) is brighter than the lung fields beside it
    centre = float(unit[200:320, 240:280].mean())
    lungs = float(torch.cat([unit[200:320, 120:180], unit[200:320, 340:400]]).mean())
    assert centre > lungs


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_channels"):
        xray_preprocessing(num_channels=2, loader=None)
    with pytest.raises(ValueError, match="intensity_range"):
        xray_preprocessing(intensity_range=(255, 0), loader=None)
    with pytest.raises(ValueError, match="mean and std"):
        xray_preprocessing(mean=0.5, std=None, loader=None)


def test_label_maps_follow_the_radiograph_with_nearest_resize(tmp_path) -> None:
    from monai.transforms import Compose
    from PIL import Image

    from common.transforms.xray import xray_preprocessing

    image = (np.arange(40 * 60).reshape(40, 60) % 251).astype(np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[10:20, 30:50] = 3
    Image.fromarray(image).save(tmp_path / "cxr.png")
    Image.fromarray(label).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "empty.png")
    pipeline = Compose(xray_preprocessing(["image"], 16, resize_size=20, mean=None, std=None, label_keys=["mask"]))
    out = pipeline({"image": str(tmp_path / "cxr.png"), "mask": str(tmp_path / "mask.png")})
    assert out["image"].shape == out["mask"].shape == (1, 16, 16)
    assert set(out["mask"].unique().tolist()) == {0.0, 3.0}  # class indices survive (no blending)
    # 40x60 -> 20x30 (factor 2), centre crop 16x16 keeps rows 2..17, columns 7..22: the box is rows 5-9, cols 15-22
    expected = np.zeros((16, 16))
    expected[3:8, 8:16] = 3
    np.testing.assert_array_equal(out["mask"][0].numpy(), expected)
    empty = pipeline({"image": str(tmp_path / "cxr.png"), "mask": str(tmp_path / "empty.png")})
    assert float(empty["mask"].abs().sum()) == 0.0  # an empty label map is allowed
