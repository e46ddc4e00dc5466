"""An empty or missing path is an error in the readers themselves: ``Path("")`` is the working directory, and a
reader that took it would read whatever the process was started from (a DICOM series folder, here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.contract import DataContractError
from common.data.readers import LoadVolumed, VolumeReader, read_radiograph, read_volume


@pytest.fixture
def cwd_holds_a_series(tmp_path: Path, write_dicom_series, monkeypatch) -> Path:
    """The working directory is a readable DICOM series, so an empty path taken as "." would succeed."""
    volume = np.random.default_rng(0).integers(-1000, 1000, size=(4, 8, 8)).astype(np.int16)
    write_dicom_series(tmp_path, volume)
    monkeypatch.chdir(tmp_path)
    assert read_volume(".")[0].shape == (8, 8, 4)  # "." itself is an explicit path and still reads
    return tmp_path


@pytest.mark.parametrize("path", ["", "   ", None])
def test_read_volume_refuses_an_empty_path(cwd_holds_a_series: Path, path) -> None:
    with pytest.raises(DataContractError, match="no volume path given.*not the working directory") as err:
        read_volume(path)
    assert err.value.source is None


@pytest.mark.parametrize("path", ["", None])
def test_read_radiograph_refuses_an_empty_path(cwd_holds_a_series: Path, path) -> None:
    with pytest.raises(DataContractError, match="no radiograph path given"):
        read_radiograph(path)


def test_monai_readers_refuse_an_empty_path(cwd_holds_a_series: Path) -> None:
    with pytest.raises(DataContractError, match="no image path given"):
        VolumeReader().read("")
    with pytest.raises(DataContractError, match="no image path given"):  # LoadImage alone would read "."
        LoadVolumed(keys="image")({"image": ""})
    with pytest.raises(DataContractError, match="no mask path given"):
        LoadVolumed(keys=["image", "mask"])({"image": str(cwd_holds_a_series), "mask": None})
