"""A model carries its preprocessing: records in checkpoints and beside exports, refused mismatches, the override."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from common.bundle_support import discover_bundles
from common.data.contract import DataContractError
from common.engines.checkpoint import CheckpointHandler, export_inference_weights, find_checkpoints, load_checkpoint
from common.engines.preprocessing_record import (
    PreprocessingMismatchError,
    check_preprocessing,
    describe_preprocessing,
    preprocessing_differences,
    read_record,
    record_path,
)
from common.engines.trainer import PretrainingTrainer
from common.transforms.ct import ct_preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")

CT = "common.transforms.ct.ct_preprocessing"
TEXT = {"tokenizer": "emilyalsentzer/Bio_ClinicalBERT", "max_length": 256}


def _record(**image) -> dict:
    return describe_preprocessing(CT, {"pixdim": 2.0, "spatial_size": 192, **image}, TEXT)


def test_record_resolves_defaults_and_hashes_one_spelling_per_meaning():
    record = describe_preprocessing(ct_preprocessing, {"pixdim": 2.0, "spatial_size": 192, "hu_range": (-1000, 1000)})
    assert record["image"] == {
        "transform": "transforms.ct.ct_preprocessing", "pixdim": 2, "spatial_size": 192, "orientation": "RAS", "hu_range": [-1000, 1000],
        "out_range": [-1, 1], "pad_value": "minimum",
    }  # fmt: skip
    assert "text" not in record and len(record["sha256"]) == 64
    same = describe_preprocessing(CT, {"pixdim": 2, "spatial_size": 192.0, "hu_range": [-1000.0, 1000.0]})
    assert same == record  # 2.0 / 2, tuple / list: one record, one hash
    assert _record(orientation="LPS")["sha256"] != _record()["sha256"]
    assert _record()["text"] == TEXT
    with pytest.raises(TypeError):
        describe_preprocessing(CT, {"no_such_argument": 1})
    with pytest.raises(TypeError, match="does not name"):
        describe_preprocessing("common.transforms.ct.no_such_function")


def test_differences_name_both_values_and_skip_sections_one_side_lacks():
    trained = _record()
    inference = describe_preprocessing(CT, {"pixdim": 1.5, "spatial_size": 192})  # no text section
    assert preprocessing_differences(trained, inference) == ["image.pixdim: trained with 2, this config 1.5"]
    assert preprocessing_differences(trained, _record()) == []


def test_export_writes_the_record_and_inference_checks_it(tmp_path, caplog):
    weights = tmp_path / "models" / "model.pt"
    network = nn.Linear(3, 2)
    export_inference_weights(network, weights, _record())
    assert record_path(weights) == tmp_path / "models" / "model.preprocessing.json"
    assert set(torch.load(weights, weights_only=True)) == {"weight", "bias"}  # still a flat state dict
    assert read_record(weights) == _record()

    assert check_preprocessing(weights, _record()) == _record()  # a match passes
    other = _record(hu_range=(-1350, 150), orientation="LPS")
    with pytest.raises(PreprocessingMismatchError) as info:
        check_preprocessing(weights, other)
    message = str(info.value)
    assert "model.pt" in message and "allow_preprocessing_mismatch" in message
    assert "image.hu_range: trained with [-1000, 1000], this config [-1350, 150]" in message
    assert "image.orientation: trained with 'RAS', this config 'LPS'" in message

    with caplog.at_level(logging.WARNING, logger="common.engines.preprocessing_record"):
        assert check_preprocessing(weights, other, allow_mismatch=True) == _record()  # the override
    assert "running anyway" in caplog.text and "hu_range" in caplog.text
    assert check_preprocessing(None, other) is None  # no weights (a random-initialisation baseline)


def test_weights_without_a_record_warn(tmp_path, caplog):
    weights = tmp_path / "model.pt"
    export_inference_weights(nn.Linear(3, 2), weights, _record())
    export_inference_weights(nn.Linear(3, 2), weights)  # re-exported without: the old record must not stay
    assert not record_path(weights).exists()
    with caplog.at_level(logging.WARNING, logger="common.engines.preprocessing_record"):
        assert check_preprocessing(weights, _record()) is None
    assert "has no preprocessing record" in caplog.text and "cannot check" in caplog.text


def test_edited_record_is_refused(tmp_path):
    weights = tmp_path / "model.pt"
    export_inference_weights(nn.Linear(3, 2), weights, _record())
    path = record_path(weights)
    record = json.loads(path.read_text())
    record["image"]["pixdim"] = 1
    path.write_text(json.dumps(record))
    with pytest.raises(DataContractError, match="sha256 does not match"):
        check_preprocessing(weights, _record())


# ---------------------------------------------------------------------------------------------- checkpoints
class _Objective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.net(batch["image"]).square().mean()}


def _train(save_dir: Path, preprocessing: dict | None, max_epochs: int = 1, resume: bool = False):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader([{"image": torch.randn(4)} for _ in range(4)], batch_size=2)
    objective = _Objective()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    handler = CheckpointHandler(save_dir, {"objective": objective}, resume=resume, preprocessing=preprocessing)
    trainer = PretrainingTrainer(
        "cpu", max_epochs, loader, objective, optimizer, train_handlers=[handler], progress=False
    )
    trainer.run()
    return trainer


def test_checkpoints_carry_the_record_and_resume_checks_it(tmp_path, caplog):
    _train(tmp_path / "a", _record())
    assert load_checkpoint(find_checkpoints(tmp_path / "a")[-1])["preprocessing"] == _record()
    assert _train(tmp_path / "a", _record(), max_epochs=2, resume=True).state.iteration == 4
    with pytest.raises(PreprocessingMismatchError, match=r"checkpoint_00000004\.pt.*image\.pixdim: trained with 2"):
        _train(tmp_path / "a", _record(pixdim=3.0), max_epochs=3, resume=True)
    _train(tmp_path / "old", None)  # a checkpoint written without a record
    with caplog.at_level(logging.WARNING, logger="common.engines.preprocessing_record"):
        assert _train(tmp_path / "old", _record(), max_epochs=2, resume=True).state.iteration == 4
    assert "has no preprocessing record" in caplog.text


# ------------------------------------------------------------------------------------------------ bundles
BUNDLES = discover_bundles()


def _parser(bundle, names: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle.config(n)) for n in names])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_configs_agree_and_inference_refuses_other_preprocessing(bundle, tmp_path, caplog):
    """train.yaml's record (what checkpoints and exports carry) equals inference.yaml's, paper and demo settings; the
    inference config's ``initialize`` refuses weights recorded with other preprocessing, and the knob overrides it."""
    for overlay in ([], ["demo"]):
        trained = _parser(bundle, ["train", *overlay]).get_parsed_content("preprocessing_record")
        inferred = _parser(bundle, ["inference", *overlay]).get_parsed_content("preprocessing_record")
        assert preprocessing_differences(trained, inferred) == [], (bundle.name, overlay)
    weights = tmp_path / "model.pt"
    export_inference_weights(nn.Linear(2, 2), weights, trained)  # demo-trained weights
    infer = _parser(bundle, ["inference", "demo"], ckpt_path=str(weights), model_path=str(weights))
    infer.get_parsed_content("initialize")
    paper = _parser(bundle, ["inference"], ckpt_path=str(weights), model_path=str(weights))
    with pytest.raises(RuntimeError) as info:  # MONAI wraps what a config expression raises
        paper.get_parsed_content("initialize")
    cause = info.value.__cause__
    assert isinstance(cause, PreprocessingMismatchError) and "spatial_size: trained with" in str(cause)
    allowed = _parser(bundle, ["inference"], ckpt_path=str(weights), model_path=str(weights),
                      allow_preprocessing_mismatch="true")  # fmt: skip
    allowed.get_parsed_content("initialize")
