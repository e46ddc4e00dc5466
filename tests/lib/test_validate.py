"""The datalist validator: clean datalists pass, every problem is reported in order, CLI output and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fire
import numpy as np
import pytest
from PIL import Image

from common.data.contract import load_datalist
from common.data.validate import Problem, main, validate_datalist

REPO = Path(__file__).resolve().parents[2]


def _volume(tmp_path: Path, write_nifti, name: str, shape: tuple[int, ...] = (16, 17, 18)) -> str:
    """A small CT-like volume in HU (air and soft tissue), which readers.ct_problems has nothing to say about."""
    hu = np.random.default_rng(len(name)).normal(size=shape) * 250 - 300
    write_nifti(tmp_path / name, hu.astype(np.float32))
    return name


def _datalist(tmp_path: Path, content: Any, name: str = "datalist.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def clean(tmp_path: Path, write_nifti) -> Path:
    """Paired and image-only records mixed, a mask, labels, meta, and all three sections."""
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"):
        _volume(tmp_path, write_nifti, name)
    write_nifti(tmp_path / "a_mask.nii.gz", np.zeros((16, 17, 18), np.uint8))
    content = {
        "name": "tiny",
        "training": [
            {
                "image": "a.nii.gz",
                "report": "No pleural effusion.",
                "labels": {"pleural_effusion": 0},
                "mask": "a_mask.nii.gz",
                "meta": {"patient": "p1"},
            },
            {"image": "b.nii.gz"},
        ],
        "validation": [{"image": "c.nii.gz", "report": "Cardiomegaly is noted.", "labels": {"cardiomegaly": 1}}],
        "test": [{"image": str(tmp_path / "d.nii.gz")}],
    }
    return _datalist(tmp_path, content)


def test_clean_datalist_has_no_problems(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_datalist(clean) == []
    assert validate_datalist(clean, open_images=False) == []
    for section, n in (("training", 2), ("validation", 1), ("test", 1)):
        assert len(load_datalist(clean, section)) == n  # the contract's own loader agrees
    main(str(clean))  # no SystemExit on success
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{clean}: checked 4 record(s) (training: 2, validation: 1, test: 1); no problems"]


def test_every_problem_is_reported_in_order(tmp_path: Path, write_nifti) -> None:
    good = _volume(tmp_path, write_nifti, "good.nii.gz")
    other = _volume(tmp_path, write_nifti, "other.nii.gz")
    flat = _volume(tmp_path, write_nifti, "flat.nii.gz", shape=(6, 7))
    records = [
        {"image": good, "report": ""},  # 0: empty report
        {"image": "missing.nii.gz"},  # 1: missing file
        {"image": flat, "labels": {"x": 2}, "foo": 1},  # 2: bad label, unknown key, 2D image: three problems
        {"image": other},  # 3: fine (the same file as record 0 would be a duplicate)
        {"report": "orphan"},  # 4: no image
    ]
    problems = validate_datalist(_datalist(tmp_path, {"training": records, "validation": "oops"}))
    where = [(p.section, p.index) for p in problems]
    assert where == [
        ("validation", None),
        ("training", 0),
        ("training", 1),
        ("training", 2),
        ("training", 2),
        ("training", 2),
        ("training", 4),
    ]
    texts = [p.problem for p in problems]
    assert "must be a list" in texts[0] and "report is empty" in texts[1] and "does not exist" in texts[2]
    for phrase, text in zip(("unknown key", "labels must be 0 or 1", "image is 2D"), texts[3:6]):
        assert phrase in text
    assert "record has no 'image' path" in texts[6]


def test_cli_prints_lines_and_exits_1(tmp_path: Path, write_nifti, capsys: pytest.CaptureFixture[str]) -> None:
    good = _volume(tmp_path, write_nifti, "good.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"garbage" * 100)
    records = [{"image": good, "report": "  "}, {"image": "corrupt.nii.gz"}, {"image": "gone.nii.gz"}]
    path = _datalist(tmp_path, {"training": records, "test": [{"image": "lost.nii.gz"}]})

    with pytest.raises(SystemExit) as info:
        fire.Fire(main, command=[str(path), "--section", "training", "--dims", "3"])
    assert info.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"training[0] {tmp_path / good}: report is only whitespace"
    assert lines[1].startswith(f"training[1] {tmp_path / 'corrupt.nii.gz'}: cannot read the header")
    assert lines[2] == f"training[2] {tmp_path / 'gone.nii.gz'}: file or folder does not exist"
    assert lines[3] == f"{path}: checked 3 record(s) (training: 3); 3 problem(s) in 3 record(s)"

    with pytest.raises(SystemExit):  # without opening images the corrupt file passes, the missing ones do not
        fire.Fire(main, command=[str(path), "--open_images", "false"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"training[0] {tmp_path / good}",
        f"training[2] {tmp_path / 'gone.nii.gz'}",
        f"test[0] {tmp_path / 'lost.nii.gz'}",
    ]


def test_radiograph_datalist(tmp_path: Path, write_nifti) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, size=(10, 12)).astype(np.uint8)
    for name in ("cxr.png", "cxr_b.png", "cxr_c.png"):  # one image per record (a repeat is a duplicate)
        Image.fromarray(pixels).save(tmp_path / name)
    Image.fromarray((pixels > 100).astype(np.uint8)).save(tmp_path / "cxr_mask.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "empty_mask.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small_mask.png")
    ct = _volume(tmp_path, write_nifti, "ct.nii.gz")
    records = [
        {"image": "cxr.png", "report": "Heart size normal.", "mask": "cxr_mask.png"},
        {"image": "cxr_b.png", "mask": "empty_mask.png"},  # an empty mask is a valid mask
        {"image": ct},
        {"image": "cxr_c.png", "mask": "small_mask.png"},
    ]
    path = _datalist(tmp_path, {"training": records})
    problems = validate_datalist(path, dims=2)
    assert [(p.index, p.source) for p in problems] == [(2, str(tmp_path / ct)), (3, str(tmp_path / "small_mask.png"))]
    assert "is a 3D volume" in problems[0].problem and "does not match image shape" in problems[1].problem
    three_d = validate_datalist(path, dims=3)
    assert {p.index for p in three_d} == {0, 1, 3}  # PNGs are not volumes


def test_section_selection(tmp_path: Path, write_nifti) -> None:
    good = _volume(tmp_path, write_nifti, "good.nii.gz")
    path = _datalist(tmp_path, {"training": [{"image": good}], "test": [{"image": "gone.nii.gz"}]})
    assert validate_datalist(path, section="training") == []
    assert [p.section for p in validate_datalist(path, section="test")] == ["test"]
    assert "section 'validation' is missing" in validate_datalist(path, section="validation")[0].problem
    assert "unknown section 'train'" in validate_datalist(path, section="train")[0].problem


def test_base_dir_and_threads(tmp_path: Path, write_nifti) -> None:
    data = tmp_path / "data"
    data.mkdir()
    names = [_volume(data, write_nifti, f"v{i}.nii.gz") for i in range(5)]
    records = [{"image": n} for n in names[:4]] + [{"image": "gone.nii.gz"}, {"image": names[4], "report": ""}]
    path = _datalist(tmp_path, {"training": records})
    # relative to the datalist's folder every image is missing (6), plus the empty report
    assert len(validate_datalist(path)) == 7
    serial = validate_datalist(path, base_dir=data)
    assert [p.index for p in serial] == [4, 5]
    assert validate_datalist(path, base_dir=data, num_workers=3) == serial


def test_problem_formatting_and_bad_arguments(tmp_path: Path) -> None:
    assert str(Problem("test", 3, "/x/a.nii.gz", "boom")) == "test[3] /x/a.nii.gz: boom"
    assert str(Problem("", None, "/x/list.json", "boom")) == "/x/list.json: boom"
    missing = validate_datalist(tmp_path / "nothing.json")
    expected = [(str(tmp_path / "nothing.json"), "datalist file does not exist")]
    assert [(p.source, p.problem) for p in missing] == expected
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        validate_datalist(tmp_path / "nothing.json", dims=4)


def test_real_volumes_validate_clean(real_data_dir: Path, tmp_path: Path) -> None:
    ct = real_data_dir / "ct"
    records = [{"image": str(p)} for p in sorted(ct.glob("*.nii.gz")) if "lung_pet" not in p.name]
    records.append({"image": str(ct / "dicom_series_abdomen"), "report": "Real series, unrelated report."})
    assert validate_datalist(_datalist(tmp_path, {"training": records}), num_workers=2) == []


@pytest.mark.slow
def test_module_entry_point(clean: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "common.data.validate", str(clean), "--open_images", "False"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no problems")
