"""Every real file in ../shared/data/real becomes a valid dataset or is refused with the reason and the flag
that helps (--fill for masked data, --member for ensembles, --splits for too few steps). One test per file.

The files are described in ../shared/data/README.md; tests skip when that folder is absent (a fresh clone).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REAL_DATA
from tests.conftest import real_data_file as real
from wxscale.cli import main as cli
from wxscale.data_prep.check import check_dataset
from wxscale.data_prep.layout import FIELDS_KEY, load_meta, read_stats

pytestmark = pytest.mark.real


def prep(capsys, *argv: str) -> tuple[int, str]:
    rc = cli(["prep", "--no-progress", *argv])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def prep_ok(capsys, out: Path, *argv: str):
    rc, text = prep(capsys, "--out", str(out), *argv)
    assert rc == 0, text
    assert check_dataset(out) == []
    return load_meta(out)


def refused(capsys, out: Path, *argv: str, expect: tuple[str, ...]) -> str:
    rc, text = prep(capsys, "--out", str(out), *argv)
    assert rc == 2, text
    for e in expect:
        assert e in text, f"{e!r} not in {text!r}"
    assert not out.exists()
    return text


def test_ncep_msl_z500_europe_daily(tmp_path, capsys):
    p = real("ncep_msl_z500_europe_daily_2000_2002.nc")
    refused(capsys, tmp_path / "d", "--input", str(p), "--coarsen", "2", expect=("lat 13 points, lon 17",))
    meta = prep_ok(capsys, tmp_path / "d", "--input", str(p))
    assert meta.channels == ["msl", "z500"] and meta.dhours == 24 and meta.grid == (13, 17)
    assert meta.lat[0] == 60.0 and meta.lon[0] == -10.0  # -180..180 longitudes kept as given
    stats = read_stats(tmp_path / "d", with_climatology=True)
    assert 1.00e5 < stats.mean[0] < 1.03e5 and 5400 < stats.mean[1] < 5900  # Pa and m: real values
    assert stats.climatology is not None  # the train split covers more than a year


def test_ncep_slp_natl_daily(tmp_path, capsys):
    p = real("ncep_slp_natl_daily_2001_2010.nc")
    meta = prep_ok(
        capsys,
        tmp_path / "d",
        "--input",
        str(p),
        "--splits",
        "train=2001:2008,valid=2009,test=2010",
        "--compress",
        "lzf",
    )
    assert meta.channels == ["slp"] and meta.grid == (17, 33)
    assert meta.lat[0] == 70.0 and meta.lat[-1] == 30.0  # stored south to north, written north to south
    assert [meta.splits[s]["n_steps"] for s in ("train", "valid", "test")] == [2922, 365, 365]
    assert len(meta.shards_of("train")) == 8  # one per year


def test_ncl_storm_6hourly_masked(tmp_path, capsys):
    p = real("ncl_storm_jan1996_6hourly.nc")
    text = refused(capsys, tmp_path / "d", "--input", str(p), expect=("missing values (NaN)", "--fill mean"))
    assert "t_sfc" in text and "u500" in text
    meta = prep_ok(capsys, tmp_path / "d", "--input", str(p), "--fill", "mean")
    assert meta.dhours == 6 and meta.n_channels == 6
    assert meta.source["fill"]["filled_values"]["t_sfc"] > 0
    assert "skipped" in meta.source["climatology"]  # 16 days: said plainly, no climatology


def test_era5_2mt_grib_hourly(tmp_path, capsys):
    p = real("era5-2mt-2019-03-uk.grib")
    meta = prep_ok(capsys, tmp_path / "d", "--input", str(p), "--vars", "t2m")
    assert meta.channels == ["t2m"] and meta.dhours == 1 and meta.grid == (33, 49)
    assert meta.channel_units["t2m"] == "K"
    assert not list(REAL_DATA.glob("*.idx")), "cfgrib must not write index files next to the inputs"


def test_era5_levels_members_grib(tmp_path, capsys):
    p = real("era5-levels-members.grib")
    refused(capsys, tmp_path / "d", "--input", str(p), expect=("ensemble dimension `number`", "--member K"))
    refused(
        capsys, tmp_path / "d", "--input", str(p), "--member", "0", expect=("too few time steps", "--splits")
    )
    refused(
        capsys,
        tmp_path / "d",
        "--input",
        str(p),
        "--member",
        "0",
        "--vars",
        "z300",
        expect=("'z300' not found", "z850, z500, t850, t500"),
    )
    meta = prep_ok(
        capsys,
        tmp_path / "d",
        "--input",
        str(p),
        "--member",
        "2",
        "--vars",
        "z500,t850",
        "--splits",
        "train=2017-01-01,valid=2017-01-02",
    )
    assert meta.channels == ["z500", "t850"] and meta.dhours == 12 and set(meta.splits) == {"train", "valid"}
    assert meta.lat[0] == 90.0 and meta.lon[0] == 0.0 and meta.lon[-1] == 357.0  # 0..360 kept as given
    import xarray as xr

    raw = xr.open_dataset(p, engine="cfgrib", backend_kwargs={"indexpath": ""})
    with h5py.File(tmp_path / "d/train/000.h5") as f:
        x = f[FIELDS_KEY][:]
    np.testing.assert_array_equal(x[:, 0], raw["z"].sel(number=2, isobaricInhPa=500).values[:2])
    np.testing.assert_array_equal(x[:, 1], raw["t"].sel(number=2, isobaricInhPa=850).values[:2])


def test_wfde5_air_temperature_land_only(tmp_path, capsys):
    p = real("wfde5_uk_hourly_2017-01_air_temperature.nc")
    text = refused(capsys, tmp_path / "d", "--input", str(p), expect=("Tair", "55.4 %", "--fill mean"))
    assert "land-only" in text
    meta = prep_ok(capsys, tmp_path / "d", "--input", str(p), "--fill", "mean", "--coarsen", "2")
    assert meta.grid == (10, 14) and meta.dhours == 1


def test_wfde5_wind_speed_land_only_and_merged(tmp_path, capsys):
    p = real("wfde5_uk_hourly_2017-01_wind_speed.nc")
    refused(capsys, tmp_path / "d", "--input", str(p), expect=("Wind", "--fill mean"))
    meta = prep_ok(capsys, tmp_path / "d", "--input", str(p), "--fill", "mean")
    assert meta.channels == ["Wind"]
    # with its sibling file: one file per variable, merged on time
    other = real("wfde5_uk_hourly_2017-01_air_temperature.nc")
    meta = prep_ok(capsys, tmp_path / "both", "--input", str(other), str(p), "--fill", "mean")
    assert meta.channels == ["Tair", "Wind"] and meta.splits["train"]["n_steps"] == 576
