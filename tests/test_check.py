"""`wxscale check`: a valid dataset dir passes; each kind of damage is caught and named, exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests.conftest import make_tiny_dataset
from wxscale.cli import main as cli
from wxscale.data_prep.check import check_dataset
from wxscale.data_prep.layout import FIELDS_KEY, TIME_KEY, sha256_file
from wxscale.data_prep.prep import write_dataset


@pytest.fixture(scope="module")
def prepped(tmp_path_factory) -> Path:
    """A dataset dir written by write_dataset: 2 years daily, two channels, climatology included."""
    rng = np.random.default_rng(0)
    n = 2 * 365 + 30
    time = np.datetime64("2000-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    ds = xr.Dataset(
        {
            "a": (("time", "lat", "lon"), rng.standard_normal((n, 4, 8)).astype(np.float32)),
            "b": (("time", "lat", "lon"), 5 + rng.standard_normal((n, 4, 8)).astype(np.float32)),
        },
        coords={"time": time, "lat": [60.0, 20.0, -20.0, -60.0], "lon": np.arange(8) * 45.0},
    )
    return write_dataset(
        ds, tmp_path_factory.mktemp("c") / "d", splits="train=2000:2001,valid=2002", progress=False
    )


@pytest.fixture
def copy(prepped, tmp_path) -> Path:
    return Path(shutil.copytree(prepped, tmp_path / "d"))


def _data_json(d: Path) -> dict:
    return json.loads((d / "data.json").read_text())


def _rewrite_json(d: Path, meta: dict) -> None:
    (d / "data.json").write_text(json.dumps(meta))


def _reseal(d: Path, rel: str) -> None:
    """Record the shard's current checksum, so that only the other checks can catch what was changed."""
    meta = _data_json(d)
    for s in meta["shards"]:
        if s["path"] == rel:
            s["sha256"] = sha256_file(d / rel)
    _rewrite_json(d, meta)


def _cli_check(d: Path, capsys) -> tuple[int, str]:
    rc = cli(["check", str(d)])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def test_valid_dirs_pass(prepped, tiny_dataset, capsys):
    assert check_dataset(prepped) == []
    assert check_dataset(tiny_dataset) == []  # the loader tests' fixture honours the same contract
    rc, text = _cli_check(prepped, capsys)
    assert rc == 0 and "is valid" in text


def test_truncated_shard_is_caught_by_checksum(copy, capsys):
    p = copy / "train/000.h5"
    p.write_bytes(p.read_bytes()[: p.stat().st_size - 1000])
    rc, text = _cli_check(copy, capsys)
    assert rc == 2
    assert "train/000.h5: sha256 differs" in text and "--overwrite" in text


def test_altered_value_is_caught_by_checksum(copy):
    with h5py.File(copy / "valid/000.h5", "r+") as f:
        f[FIELDS_KEY][3, 1, 2, 2] += 1.0
    problems = check_dataset(copy)
    assert len(problems) == 1 and problems[0].startswith("valid/000.h5: sha256 differs")
    assert check_dataset(copy, checksums=False) == []


def test_nan_in_a_shard_is_named(copy):
    with h5py.File(copy / "train/001.h5", "r+") as f:
        f[FIELDS_KEY][10, 1, 0, 0] = np.nan
    _reseal(copy, "train/001.h5")
    assert check_dataset(copy) == ["train/001.h5: channel b has 1 NaN/inf values"]


def test_time_out_of_order_and_wrong_dtype(copy):
    with h5py.File(copy / "train/000.h5", "r+") as f:
        t = f[TIME_KEY][:]
        t[[4, 5]] = t[[5, 4]]
        f[TIME_KEY][:] = t
    _reseal(copy, "train/000.h5")
    assert any("train/000.h5: time is not strictly increasing" in p for p in check_dataset(copy))
    with h5py.File(copy / "valid/000.h5", "r+") as f:
        x = f[FIELDS_KEY][:]
        del f[FIELDS_KEY]
        f.create_dataset(FIELDS_KEY, data=x.astype(np.float64), chunks=(1, *x.shape[1:]))
    _reseal(copy, "valid/000.h5")
    assert any("valid/000.h5: `fields` is float64, expected float32" in p for p in check_dataset(copy))


def test_metadata_that_disagrees_with_the_shards(copy):
    meta = _data_json(copy)
    meta["coords"]["channel"] = ["a"]  # one channel fewer than the shards hold
    meta["coords"]["lat"] = meta["coords"]["lat"][::-1]  # south to north
    meta["shards"][0]["n_steps"] += 1
    _rewrite_json(copy, meta)
    problems = check_dataset(copy)
    text = "\n".join(problems)
    assert "coords.lat does not run strictly north to south" in text
    assert "train/000.h5: `fields` has shape" in text
    assert "train/000.h5: holds 366 steps, data.json says 367" in text
    assert "stats.h5: `mean` has shape (2,), expected (1,)" in text


def test_missing_and_stray_files(copy, capsys):
    (copy / "test").mkdir()
    (copy / "test/000.h5").write_bytes(b"not a shard")
    (copy / "valid/000.h5").unlink()
    (copy / "stats.h5").unlink()
    rc, text = _cli_check(copy, capsys)
    assert rc == 2
    assert "valid/000.h5: listed in data.json but missing" in text
    assert "test/000.h5: not listed in data.json" in text
    assert "stats.h5: missing" in text
    assert "3 problem(s)" in text


def test_not_a_dataset_dir(tmp_path, capsys):
    rc, text = _cli_check(tmp_path / "nowhere", capsys)
    assert rc == 2 and "does not exist" in text
    (tmp_path / "d").mkdir()
    (tmp_path / "d/data.json").write_text("{not json")
    rc, text = _cli_check(tmp_path / "d", capsys)
    assert rc == 2 and "not valid JSON" in text


def test_gap_not_listed_and_overlapping_splits(tmp_path):
    d = make_tiny_dataset(tmp_path / "t", gaps=(30,))
    meta = _data_json(d)
    meta["gaps"] = []
    meta["shards"][-1]["first_time"] = meta["shards"][0]["first_time"]  # test "starts" inside train
    _rewrite_json(d, meta)
    text = "\n".join(check_dataset(d))
    assert "is not listed in data.json gaps" in text
    assert "splits train and test overlap in time" in text
