"""The released checkpoints on a user's folder of scans, with random weights saved in the official layouts.

* COLIPRI (``microsoft/colipri``): a ``model.safetensors`` of the official ``colipri`` package's model (built with
  random weights at a small size through its own config overrides) and a CXR-BERT-like folder (``cxr-bert`` config,
  remote-code tokenizer class, ``bert.``-prefixed weights), run by ``train.yaml`` + ``embed.yaml`` with
  ``--model_path``, ``--text_encoder_name`` and a user's YAML finding set on a plain folder of volumes.
* RAD-DINO (``microsoft/rad-dino``): a ``Dinov2Model.save_pretrained`` folder, run by ``inference.yaml`` +
  ``release.yaml`` on a plain folder of radiographs; the CLS embeddings equal ``transformers``' own forward.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
transformers = pytest.importorskip("transformers")

FINDINGS_YAML = """findings:
  - name: Pleural effusion            # a known finding: its own prompt pairs are added to the templates'
  - name: Pneumothorax
    positive: [There is a pneumothorax., Pneumothorax is present.]
    negative: [There is no pneumothorax., Pneumothorax is not present.]
  - name: Rib fracture                # templates only
"""
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *["there", "is", "no", "a", "the", "pleural", "effusion", "pneumothorax", "present", "not", "rib", "fracture", "volume", "shows", ".", ":", ",", "is"]]  # fmt: skip


def _bert_config() -> dict:
    return {"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 37, "max_position_embeddings": 64}  # fmt: skip


def _cxr_bert_folder(folder: Path) -> None:
    """The layout of microsoft/BiomedVLP-CXR-BERT-specialized (remote-code config and tokenizer class), tiny."""
    folder.mkdir(parents=True)
    config = {"architectures": ["CXRBertModel"], "model_type": "cxr-bert", "projection_size": 16,
              "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                           "AutoModel": "modeling_cxrbert.CXRBertModel"}, **_bert_config()}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CXRBertTokenizer", "do_lower_case": True, "model_max_length": 64,
        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]},
    }))  # fmt: skip
    mlm = transformers.BertForMaskedLM(transformers.BertConfig(**_bert_config()))
    torch.save(mlm.state_dict(), folder / "pytorch_model.bin")


def _official_colipri(path: Path) -> dict[str, torch.Tensor]:
    """Random weights of the official ``colipri`` model (tiny Primus, tiny BERT), saved as the release's file."""
    try:
        import colipri
    except Exception as err:  # noqa: BLE001 - colipri pulls torchio/torchvision/hydra; any failure means skip
        pytest.skip(f"colipri not importable: {err}")
    from safetensors.torch import save_file

    class CXRBertLike(torch.nn.Module):  # the remote-code CXRBertModel exposes its BertModel as .bert
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(transformers.BertConfig(**_bert_config()), add_pooling_layer=False)

    torch.manual_seed(0)
    overrides = {
        "model.image_encoder.backbone.eva_depth": 2, "model.image_encoder.backbone.eva_numheads": 4,
        "model.image_encoder.pooler.num_heads": 4, "model.text_encoder.pooler.num_heads": 4,
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: CXRBertLike())
        model = colipri.get_model(pretrained=False, input_size=32, image_embed_dim=144, projection_dim=32, **overrides)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    state["softmax_temperature"] = torch.tensor(0.05)  # the release stores its trained temperature
    save_file(state, str(path))
    return state


def _volumes(folder: Path) -> list[Path]:
    import nibabel as nib

    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("case_a.nii.gz", (20, 22, 18)), ("case_b.nii.gz", (24, 20, 40))):
        data = rng.normal(-500, 300, size=shape).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([10.0, 10.0, 10.0, 1.0])), folder / name)
        paths.append(folder / name)
    return paths


@pytest.mark.slow
def test_colipri_release_on_a_folder_of_volumes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    release = tmp_path / "colipri" / "model.safetensors"
    release.parent.mkdir()
    state = _official_colipri(release)
    _cxr_bert_folder(tmp_path / "BiomedVLP-CXR-BERT-specialized")
    (tmp_path / "findings.yaml").write_text(FINDINGS_YAML)
    volumes = _volumes(tmp_path / "my_scans")
    configs = [str(REPO / "bundles" / "colipri_ct" / "configs" / n) for n in ("train.yaml", "embed.yaml")]
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(REPO / "bundles" / "colipri_ct" / "configs" / "metadata.json"),
        logging_file=str(REPO / "bundles" / "colipri_ct" / "configs" / "logging.conf"),
        workflow_type="infer", bundle_root=str(tmp_path / "bundle"),
        # the documented command's knobs
        dataset_dir=str(tmp_path / "my_scans"), model_path=str(release), finding_set=str(tmp_path / "findings.yaml"),
        text_encoder_name=str(tmp_path / "BiomedVLP-CXR-BERT-specialized"), embed_output_dir=str(out),
        # the small sizes the random release was built with (the paper config is 192^3, Primus-M, 768-d)
        spatial_size=32, pixdim=12.0, projection_dim=32, pool_heads=4, num_workers=0, max_text_length=32,
        num_prompt_tokens=32, image_backbone={"_target_": "common.networks.eva.eva_tiny", "spatial_dims": 3,
                                              "img_size": "@spatial_size", "embed_dim": 144, "depth": 2, "num_heads": 4},
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    loaded = workflow.parser.get_parsed_content("embed#model").state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k].cpu(), state[k]) for k in state)  # every released tensor, strictly loaded
    keys = json.loads((out / "findings.json").read_text())["channels"]
    assert keys == ["pleural_effusion", "pneumothorax", "rib_fracture"]
    rows = list(csv.reader((out / "predictions.csv").read_text().splitlines()))
    assert [Path(r[0]).name for r in rows] == [p.name for p in volumes]
    probabilities = np.array([[float(x) for x in r[1:]] for r in rows])
    assert probabilities.shape == (2, 3) and ((probabilities > 0) & (probabilities < 1)).all()
    for volume in volumes:
        import nibabel as nib

        similarity = nib.load(out / f"{volume.name.split('.')[0]}_similarity.nii.gz")
        assert similarity.shape == (*nib.load(volume).shape, 3)  # on the user's voxel grid, one channel per finding


@pytest.mark.slow
def test_rad_dino_release_on_a_folder_of_radiographs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, patch_size=14, image_size=56, layerscale_value=1e-5)  # fmt: skip
    official = transformers.Dinov2Model(config).eval()
    official.save_pretrained(tmp_path / "rad-dino")  # config.json + model.safetensors, the release's layout
    folder = tmp_path / "radiographs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (80, 64)), ("b.jpg", (60, 70)), ("c.png", (56, 56))):
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(folder / name)
    configs = [str(REPO / "bundles" / "raddino_cxr" / "configs" / n) for n in ("inference.yaml", "release.yaml")]
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(REPO / "bundles" / "raddino_cxr" / "configs" / "metadata.json"),
        logging_file=str(REPO / "bundles" / "raddino_cxr" / "configs" / "logging.conf"),
        workflow_type="infer", bundle_root=str(tmp_path / "bundle"), release_dir=str(tmp_path / "rad-dino"),
        dataset_dir=str(folder), output_dir=str(tmp_path / "out"), image_size=56, num_workers=0, batch_size=2,
        model_path=str(tmp_path / "no_such_model.pt"),  # never read: the release overlay loads no trained checkpoint
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    rows = list(csv.reader((tmp_path / "out" / "embeddings.csv").read_text().splitlines()))
    assert [Path(r[0]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    embeddings = torch.tensor([[float(x) for x in r[1:]] for r in rows])
    preprocessing = workflow.parser.get_parsed_content("preprocessing")
    with torch.no_grad():
        images = torch.stack(
            [preprocessing({"image": str(folder / n)})["image"].as_tensor() for n in ("a.png", "b.jpg", "c.png")]
        )
        expected = official(pixel_values=images.expand(-1, 3, -1, -1)).last_hidden_state[:, 0]
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-4)
