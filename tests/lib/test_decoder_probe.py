"""G2D's segmentation protocol (common.evaluation.decoder_probe): nested subsets, frozen encoder, pre-trained decoder
blocks with a new head, per-case Dice, determinism, a learnable task, paired comparisons, a 3D smoke run."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from common.evaluation.decoder_probe import (
    class_weights,
    compare_per_case,
    decoder_from_pretrained,
    fraction_key,
    frozen_encoder_segmentation,
    nested_subsets,
)
from common.networks.unet import UNetDecoder, UNetEncoder
from common.networks.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS = (32, 16, 16, 8, 8)


def squares(n: int, seed: int, size: int = 32, dims: int = 2, classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dark images with a bright square (class 1) and, for ``classes=2``, a dimmer one (class 2); light noise."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, *(size,) * dims), np.float32)
    masks = np.zeros((n, *(size,) * dims), np.int64)
    side = size // 4
    for i in range(n):
        for cls, value in ((1, 1.0), (2, 0.5))[:classes]:
            corner = rng.integers(0, size - side, dims)
            box = tuple(slice(c, c + side) for c in corner)
            images[(i, 0, *box)] = value
            masks[(i, *box)] = cls
    images += 0.05 * rng.standard_normal(images.shape).astype(np.float32)
    return images, masks


def encoder_2d() -> UNetEncoder:
    torch.manual_seed(0)
    return UNetEncoder(2, 1, "resnet18")


def factory(encoder: UNetEncoder, made: list[nn.Module] | None = None) -> Callable[[int], nn.Module]:
    def make(out_channels: int) -> nn.Module:
        decoder = UNetDecoder(encoder.spatial_dims, encoder.feature_channels, out_channels, decoder_channels=CHANNELS)
        if made is not None:
            made.append(decoder)
        return decoder

    return make


def block_weights(decoder: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in decoder.named_parameters() if k.startswith("decoder.")}


def test_nested_subsets() -> None:
    subsets = nested_subsets(150, (0.01, 0.1, 1.0), seed=3)
    assert [len(subsets[k]) for k in ("0.01", "0.1", "1")] == [2, 15, 150]  # round(1.5) = 2
    assert set(subsets["0.01"]) <= set(subsets["0.1"]) <= set(subsets["1"]) == set(range(150))
    assert nested_subsets(150, (0.01,), seed=3)["0.01"] == subsets["0.01"]  # the draw does not depend on the others
    assert nested_subsets(150, (0.1,), seed=4)["0.1"] != subsets["0.1"]
    assert len(nested_subsets(20, (0.01,), seed=0)["0.01"]) == 1  # at least one case
    assert fraction_key(1.0) == "1" and fraction_key(0.1) == "0.1"


@pytest.fixture(scope="module")
def small_run() -> Iterator[dict]:
    """10 training and 4 test cases (the last without any lesion), three fractions, both variants, 3 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder = encoder_2d().train()  # left in train mode: the protocol must use eval mode and restore this
    before = copy.deepcopy(encoder.state_dict())
    torch.manual_seed(1)
    pretrained = factory(encoder)(1)  # the pseudo-mask decoder: one output channel
    made: list[nn.Module] = []
    x_train, y_train = squares(10, seed=0, classes=2)
    x_test, y_test = squares(4, seed=1, classes=2)
    x_test[3], y_test[3] = 0.0, 0
    result = frozen_encoder_segmentation(
        encoder,
        factory(encoder, made),
        x_train,
        y_train,
        [torch.from_numpy(x) for x in x_test],
        torch.from_numpy(y_test)[:, None],  # a per-case list, (N, 1, H, W)
        num_classes=3,
        class_names=["background", "bright", "dim"],
        fractions=(1.0, 0.1, 0.5),
        pretrained_decoder=pretrained,
        steps=3,
        batch_size=4,
        n_bootstrap=50,
        seed=0,
        device="cpu",
    )
    yield {
        "result": result,
        "encoder": encoder,
        "before": before,
        "pretrained": pretrained,
        "made": made,
        "data": (x_train, y_train, x_test, y_test),
    }
    torch.set_num_threads(threads)


def test_result_structure(small_run: dict) -> None:
    result = small_run["result"]
    json.dumps(result, allow_nan=False)
    assert set(result["variants"]) == {"encoder", "enc+dec"}
    assert result["class_names"] == ["bright", "dim"]
    assert (result["n_train_available"], result["n_test_cases"]) == (10, 4)
    subsets = result["subsets"]
    assert list(subsets) == ["0.1", "0.5", "1"]
    assert set(subsets["0.1"]) <= set(subsets["0.5"]) <= set(subsets["1"]) == set(range(10))
    for variant in ("encoder", "enc+dec"):
        for key, n in (("0.1", 1), ("0.5", 5), ("1", 10)):
            run = result["variants"][variant][key]
            assert run["n_train_cases"] == n == len(subsets[key])
            assert len(run["per_case"]) == 4 and run["per_case"][3] is None  # the empty case is not scored
            assert run["n_cases_scored"] == 3
            scored = [v for v in run["per_case"] if v is not None]
            assert run["mean_dice"] == pytest.approx(np.mean(scored))
            assert run["mean_dice_ci"][0] <= run["mean_dice"] <= run["mean_dice_ci"][1]
            assert set(run["per_class"]) == {"bright", "dim"}
            bright = run["per_class"]["bright"]
            assert len(bright["per_case"]) == 4 and bright["n_cases"] == 3 and bright["per_case"][3] is None
            assert np.isfinite(run["final_train_loss"])


def test_encoder_untouched(small_run: dict) -> None:
    encoder = small_run["encoder"]
    assert encoder.training  # mode restored
    assert all(p.grad is None for p in encoder.parameters())
    after = encoder.state_dict()
    for key, value in small_run["before"].items():  # weights and BatchNorm statistics
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


def test_pretrained_blocks_loaded(small_run: dict) -> None:
    made, pretrained = small_run["made"], small_run["pretrained"]
    assert len(made) == 6  # three "encoder" decoders, then three "enc+dec" ones
    reference = block_weights(pretrained)
    bound = 10 * 2e-4 * 3  # AdamW moves a weight by about lr per step
    for decoder in made[3:]:
        assert decoder.segmentation_head[0].out_channels == 3  # a new head with num_classes outputs
        for key, value in block_weights(decoder).items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=bound, msg=key)
    fresh = block_weights(made[0])
    far = max(float((fresh[k] - reference[k]).abs().max()) for k in reference)
    assert far > 20 * bound  # the "encoder" variant starts from its own initialisation


def test_decoder_from_pretrained() -> None:
    encoder = encoder_2d()
    torch.manual_seed(5)
    pretrained = factory(encoder)(1)
    decoder = decoder_from_pretrained(factory(encoder), pretrained.state_dict(), 3, seed=7)
    state, source = decoder.state_dict(), pretrained.state_dict()
    for key, value in state.items():
        if key.startswith("segmentation_head."):
            assert value.shape[0] == 3 or value.ndim == 0
        else:
            torch.testing.assert_close(value, source[key], rtol=0, atol=0, msg=key)
    # the head is the seeded fresh initialisation, the same as the "encoder" variant's
    with torch.random.fork_rng():
        torch.manual_seed(7)
        fresh = factory(encoder)(3)
    torch.testing.assert_close(state["segmentation_head.0.weight"], fresh.state_dict()["segmentation_head.0.weight"])
    wrong = UNetDecoder(2, encoder.feature_channels, 1, decoder_channels=(32, 16, 16, 8, 4))
    with pytest.raises(WeightsError, match="shape mismatches"):
        decoder_from_pretrained(factory(encoder), wrong, 3)


def test_deterministic(small_run: dict) -> None:
    encoder = small_run["encoder"]
    x_train, y_train, x_test, y_test = small_run["data"]
    kwargs = {
        "num_classes": 3,
        "class_names": ["background", "bright", "dim"],
        "fractions": (0.1, 0.5, 1.0),
        "pretrained_decoder": small_run["pretrained"],
        "steps": 3,
        "batch_size": 4,
        "n_bootstrap": 50,
        "device": "cpu",
    }
    again = frozen_encoder_segmentation(encoder, factory(encoder), x_train, y_train, x_test, y_test, seed=0, **kwargs)
    assert again == small_run["result"]
    other = frozen_encoder_segmentation(encoder, factory(encoder), x_train, y_train, x_test, y_test, seed=1, **kwargs)
    assert other["subsets"] != again["subsets"]
    assert other["test_fingerprint"] == again["test_fingerprint"]


def test_learnable_task_scores_high() -> None:
    encoder = encoder_2d()
    x_train, y_train = squares(16, seed=0)
    x_test, y_test = squares(8, seed=1)
    result = frozen_encoder_segmentation(
        encoder,
        factory(encoder),
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=2,
        fractions=(1.0,),
        steps=80,
        lr=1e-2,
        n_bootstrap=100,
        device="cpu",
    )
    run = result["variants"]["encoder"]["1"]
    assert list(result["variants"]) == ["encoder"]  # no pre-trained decoder: one variant
    assert run["mean_dice"] > 0.85, run
    assert run["per_class"]["label_1"]["dice"] == pytest.approx(run["mean_dice"])


def test_class_weights() -> None:
    masks = torch.zeros(2, 10, 10, dtype=torch.uint8)
    masks[0, :2, :2] = 1  # 4 of 200 pixels
    masks[1, :4, :4] = 2  # 16; class 3 absent
    weights = class_weights(masks, 4)
    background = (200 - 20) / 200
    expected = torch.tensor([1.0, (background / 0.02) ** 0.5, (background / 0.08) ** 0.5, 1.0])
    torch.testing.assert_close(weights, expected)
    assert weights[1] == pytest.approx(2 * weights[2])  # 4x rarer, twice the weight


def test_early_stopping_keeps_the_best_step() -> None:
    encoder = encoder_2d()
    x_train, y_train = squares(8, seed=0)
    x_val, y_val = squares(4, seed=2)
    x_test, y_test = squares(4, seed=1)
    common = {"num_classes": 2, "fractions": (1.0,), "batch_size": 4, "n_bootstrap": 20, "device": "cpu"}

    def fit(**kwargs) -> dict:
        return frozen_encoder_segmentation(
            encoder, factory(encoder), x_train, y_train, x_test, y_test, **common, **kwargs
        )

    validation = {"val_images": x_val, "val_masks": y_val}
    # lr 0: the validation Dice never improves on the first score -> stop after `patience` more scores
    frozen = fit(steps=100, lr=0.0, eval_every=5, patience=2, **validation)["variants"]["encoder"]["1"]
    assert (frozen["best_step"], frozen["steps_run"]) == (5, 15)
    learning = fit(steps=40, lr=1e-2, eval_every=10, patience=2, **validation)
    run = learning["variants"]["encoder"]["1"]
    assert run["val_dice"] > frozen["val_dice"] and run["best_step"] in (10, 20, 30, 40)
    assert learning["settings"]["n_val_cases"] == 4
    no_validation = fit(steps=3)["variants"]["encoder"]["1"]
    assert (no_validation["steps_run"], no_validation["best_step"], no_validation["val_dice"]) == (3, None, None)
    with pytest.raises(ValueError, match="val_images and val_masks"):
        fit(val_images=x_val, steps=1)


def test_compare_per_case(small_run: dict) -> None:
    result = small_run["result"]
    same = compare_per_case(result, result, n_bootstrap=50)
    entry = same["encoder"]["0.1"]["mean_dice"]
    assert entry["difference"] == 0.0 and entry["n_cases"] == 3
    worse = copy.deepcopy(result)
    for runs in worse["variants"].values():
        for run in runs.values():
            run["per_case"] = [None if v is None else v - 0.1 for v in run["per_case"]]
    diff = compare_per_case(result, worse, n_bootstrap=50, fractions=(0.1,))
    assert set(diff) == {"encoder", "enc+dec"} and set(diff["encoder"]) == {"0.1"}
    assert diff["encoder"]["0.1"]["mean_dice"]["difference"] == pytest.approx(0.1)
    assert diff["encoder"]["0.1"]["mean_dice"]["p_not_better"] == 0.0
    assert set(diff["encoder"]["0.1"]["per_class"]) == {"bright", "dim"}
    json.dumps(diff, allow_nan=False)
    worse["test_fingerprint"] = "other"
    with pytest.raises(ValueError, match="different test cases"):
        compare_per_case(result, worse)


def test_bad_inputs() -> None:
    encoder = encoder_2d()
    x, y = squares(4, seed=0)

    def run(y_train: np.ndarray = y, **kwargs) -> dict:
        return frozen_encoder_segmentation(
            encoder, factory(encoder), x, y_train, x, y, **{"num_classes": 2, "steps": 1, "device": "cpu", **kwargs}
        )

    with pytest.raises(ValueError, match="outside 0..1"):
        run(y_train=y * 2)
    with pytest.raises(ValueError, match="4 train images but 3"):
        run(y_train=y[:3])
    with pytest.raises(ValueError, match="fractions"):
        run(fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="image size"):
        run(y_train=y[:, :16])


def test_3d_smoke() -> None:
    torch.manual_seed(0)
    encoder = UNetEncoder(3, 1, "resnet10")
    x_train, y_train = squares(3, seed=0, dims=3)
    x_test, y_test = squares(2, seed=1, dims=3)
    pretrained = factory(encoder)(1)
    result = frozen_encoder_segmentation(
        encoder,
        factory(encoder),
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=2,
        fractions=(0.5, 1.0),
        pretrained_decoder=pretrained,
        steps=2,
        batch_size=2,
        n_bootstrap=20,
        cache_dtype=torch.float16,
        device="cpu",
    )
    assert result["settings"]["cache_dtype"] == "float16"
    assert [result["variants"]["enc+dec"][k]["n_train_cases"] for k in ("0.5", "1")] == [2, 3]
    assert len(result["variants"]["encoder"]["1"]["per_case"]) == 2
    json.dumps(result, allow_nan=False)


def test_bad_baseline_files_are_named_before_any_fit(tmp_path) -> None:
    from common.data.contract import DataContractError
    from common.evaluation.decoder_probe import _read_results

    with pytest.raises(DataContractError, match="missing.json"):
        _read_results(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataContractError, match="broken.json"):
        _read_results(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"results": {}}')
    with pytest.raises(DataContractError, match="not a segmentation.json"):
        _read_results(tmp_path / "other.json")
