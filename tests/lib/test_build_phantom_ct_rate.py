"""The embedded phantoms written as a miniature CT-RATE and read back through ``python -m common.data.build
ct_rate``: the same volumes, report sections and labels as the phantom datalist (masks and the validation split are
what the CT-RATE layout cannot hold)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.contract import DataContractError, load_datalist
from common.data.phantom import generate_dataset
from common.data.sources.ct_rate import build_ct_rate
from common.data.sources.ct_rate_layout import write_ct_rate_layout
from common.transforms.text import extract_sections

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, num_train=3, num_image_only=1, num_val=1, num_test=2, seed=3, dims=3, image_size_2d=32)
    return out / "datalist_3d.json"


def test_round_trip(phantoms: Path, tmp_path: Path) -> None:
    layout = write_ct_rate_layout(phantoms, tmp_path / "mini_ct_rate")
    out = tmp_path / "datalist.json"
    summary = build_ct_rate(layout, out, val_fraction=0.0, quiet=True)
    assert summary.skipped == {} and summary.sections == {"training": 5, "validation": 0, "test": 2}
    assert summary.image_only == 1
    sources = json.loads((layout / "sources.json").read_text())
    original = {
        Path(r["image"]).resolve(): (s, r)
        for s in ("training", "validation", "test")
        for r in load_datalist(phantoms, s)
    }
    for section in ("training", "test"):
        for record in load_datalist(out, section):
            source_section, source = original[(phantoms.parent / sources[record["meta"]["volume_name"]]).resolve()]
            assert (section == "test") == (source_section == "test")
            assert Path(record["image"]).resolve() == Path(source["image"]).resolve()
            if "report" in source:
                assert extract_sections(record["report"]) == extract_sections(source["report"])
                assert record["labels"] == source["labels"]
            else:  # image-only: labels kept out of sight in meta on both sides
                assert "report" not in record and record["meta"]["labels"] == source["meta"]["labels"]
            assert record["meta"]["spacing"] == pytest.approx(source["meta"]["spacing"], abs=1e-3)
    # with the layout's splits.csv and masks/ the sections and masks are the datalist's own
    build_ct_rate(layout, out, splits=str(layout / "splits.csv"), masks=str(layout / "masks"), quiet=True)
    for section in ("training", "validation", "test"):
        rebuilt, source = load_datalist(out, section), load_datalist(phantoms, section)
        assert [(phantoms.parent / sources[r["meta"]["volume_name"]]).resolve() for r in rebuilt] == [
            Path(r["image"]).resolve() for r in source
        ]
        assert [Path(r["mask"]).resolve() if "mask" in r else None for r in rebuilt] == [
            Path(r["mask"]).resolve() if "mask" in r else None for r in source
        ]
    with pytest.raises(DataContractError, match="already holds a CT-RATE layout"):
        write_ct_rate_layout(phantoms, layout)


@pytest.mark.slow
def test_training_scalars_unchanged_through_the_layout(phantoms: Path, tmp_path: Path, monkeypatch) -> None:
    """colipri_ct's demo trained one epoch on the phantom datalist and on the same phantoms read back from the
    CT-RATE layout (with its splits.csv): every logged training scalar is equal."""
    import torch
    from monai.bundle import ConfigWorkflow

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    layout = write_ct_rate_layout(phantoms, tmp_path / "mini_ct_rate")
    rebuilt = tmp_path / "rebuilt.json"
    build_ct_rate(layout, rebuilt, splits=str(layout / "splits.csv"), quiet=True)
    configs = [str(REPO / "bundles" / "colipri_ct" / "configs" / c) for c in ("train.yaml", "demo.yaml")]
    outputs = []
    for name, datalist in (("phantom", phantoms), ("ct_rate", rebuilt)):
        root = tmp_path / name
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "metadata.json").write_text(
            (REPO / "bundles" / "colipri_ct" / "configs" / "metadata.json").read_text()
        )
        workflow = ConfigWorkflow(
            config_file=configs, workflow_type="train", bundle_root=str(root), dataset_dir=str(datalist),
            max_epochs=1, batch_size=2, max_text_length=32, spatial_size=32, pixdim=12.0, num_workers=0,
        )  # fmt: skip
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        steps: list[dict[str, float]] = []

        def record(engine, steps=steps) -> None:  # the step's scalars, as the trainer logs them
            out = engine.state.output
            steps.append(
                {k: float(v) for k, v in out.items() if isinstance(v, float) or (torch.is_tensor(v) and v.numel() == 1)}
            )

        trainer.add_event_handler("ITERATION_COMPLETED", record)
        workflow.run()
        outputs.append(steps)
    assert len(outputs[0]) == 2 and outputs[0][0]  # 4 training records, batch 2
    assert outputs[0] == outputs[1]
