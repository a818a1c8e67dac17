"""data_prep.prep and data_prep.reader: raw xarray data -> dataset dir, and every bad input refused cleanly.

Synthetic inputs are small xarray Datasets written to NetCDF/zarr in tmp_path, so each case is exact: the
shards must hold the input values, the stats must equal numpy's over the train split.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import wxscale.data_prep.prep as prep
from wxscale.cli import main as cli
from wxscale.data_prep.check import check_dataset
from wxscale.data_prep.layout import (
    FIELDS_KEY,
    TIME_KEY,
    hours_since_epoch,
    load_meta,
    read_stats,
    valid_sample_starts,
)
from wxscale.data_prep.prep import write_dataset
from wxscale.data_prep.reader import open_inputs
from wxscale.errors import WxscaleError


def make_ds(
    n_steps: int = 40,
    dhours: int = 6,
    start: str = "2000-01-01",
    grid: tuple[int, int] = (6, 8),
    levels: list[float] | None = None,
    seed: int = 0,
    names: tuple[str, str, str] = ("time", "latitude", "longitude"),
) -> xr.Dataset:
    """msl (time, lat, lon), and t (time, plev, lat, lon) with `levels`; latitude runs south to north."""
    rng = np.random.default_rng(seed)
    t_name, lat_name, lon_name = names
    time = np.datetime64(start, "ns") + np.arange(n_steps) * np.timedelta64(dhours, "h")
    lat = np.linspace(-75.0, 75.0, grid[0])
    lon = np.arange(grid[1]) * 360.0 / grid[1]
    data = {
        "msl": (
            (t_name, lat_name, lon_name),
            (1e5 + 1e3 * rng.standard_normal((n_steps, *grid))).astype(np.float32),
            {"units": "Pa"},
        )
    }
    coords = {t_name: time, lat_name: lat, lon_name: lon}
    if levels is not None:
        data["t"] = (
            (t_name, "plev", lat_name, lon_name),
            (250 + 10 * rng.standard_normal((n_steps, len(levels), *grid))).astype(np.float32),
            {"units": "K"},
        )
        coords["plev"] = ("plev", np.asarray(levels, float), {"units": "Pa"})
    return xr.Dataset(data, coords=coords)


def fields_of(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    meta = load_meta(out)
    xs, ts = [], []
    for s in meta.shards_of(split):
        with h5py.File(out / s.path) as f:
            xs.append(f[FIELDS_KEY][:])
            ts.append(f[TIME_KEY][:])
    return np.concatenate(xs), np.concatenate(ts)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} exists after a failed prep"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"temporary dirs left behind: {leftovers}"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = cli(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


# ------------------------------------------------------------------------------------------------------------
# what a good input becomes


def test_roundtrip_values_stats_and_layout(tmp_path):
    ds = make_ds(n_steps=3 * 365 * 4, dhours=6)  # 2000..2002, 6-hourly
    out = write_dataset(
        ds,
        tmp_path / "d",
        splits="train=2000:2001,valid=2002-01-01:2002-06-30,test=2002-07-01:2002-12-31",
        progress=False,
    )
    meta = load_meta(out)
    assert meta.channels == ["msl"] and meta.dhours == 6 and meta.grid == (6, 8)
    assert meta.lat == sorted(meta.lat, reverse=True), "latitude must run north to south"
    # one shard per calendar year of a split
    assert [s.path for s in meta.shards_of("train")] == ["train/000.h5", "train/001.h5"]
    assert meta.shards_of("train")[1].first_time == "2001-01-01T00:00Z"
    x, t = fields_of(out, "train")
    src = ds["msl"].sel(time=slice("2000", "2001")).values[:, ::-1]  # flipped north to south
    np.testing.assert_array_equal(x[:, 0], src)
    np.testing.assert_array_equal(t, hours_since_epoch(ds["time"].sel(time=slice("2000", "2001")).values))
    with h5py.File(out / "train/000.h5") as f:
        assert f[FIELDS_KEY].dtype == np.float32 and f[FIELDS_KEY].chunks == (1, 1, 6, 8)
        assert f[TIME_KEY].dtype == np.int64
    stats = read_stats(out, with_climatology=True)
    x64 = src.astype(np.float64)
    np.testing.assert_allclose(stats.mean, [x64.mean()], rtol=1e-10)
    np.testing.assert_allclose(stats.std, [x64.std()], rtol=1e-8)
    np.testing.assert_allclose(stats.diff_std, [np.diff(x64, axis=0).std()], rtol=1e-8)
    assert meta.splits["valid"]["end"] == "2002-06-30T18:00Z"
    assert stats.climatology is not None and stats.climatology.shape == (366, 4, 1, 6, 8)
    src_meta = json.loads((out / "data.json").read_text())["source"]
    assert src_meta["wxscale_version"] and src_meta["fill"]["policy"] == "none"
    assert check_dataset(out) == []


def test_blocks_and_shard_cap_change_nothing_but_the_shards(tmp_path, monkeypatch):
    ds = make_ds(n_steps=200, dhours=24)
    a = write_dataset(ds, tmp_path / "a", progress=False)
    monkeypatch.setattr(prep, "BLOCK_BYTES", 3 * 6 * 8 * 4)  # 3 steps per block
    monkeypatch.setattr(prep, "MAX_SHARD_BYTES", 50 * 6 * 8 * 4)  # 50 steps per shard
    b = write_dataset(ds, tmp_path / "b", progress=False)
    assert len(load_meta(b).shards) > len(load_meta(a).shards)
    assert max(s.n_steps for s in load_meta(b).shards) <= 50
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(fields_of(a, split)[0], fields_of(b, split)[0])
    sa, sb = read_stats(a), read_stats(b)
    for k in ("mean", "std", "diff_std"):
        np.testing.assert_allclose(getattr(sa, k), getattr(sb, k), rtol=1e-10)
    assert check_dataset(b) == []


def test_default_split_is_80_10_10_cut_at_midnight(tmp_path):
    ds = make_ds(n_steps=100 * 4, dhours=6)  # 100 days
    meta = load_meta(write_dataset(ds, tmp_path / "d", progress=False))
    n = {s: meta.splits[s]["n_steps"] for s in ("train", "valid", "test")}
    assert sum(n.values()) == 400
    assert n["train"] == 79 * 4 and abs(n["valid"] - 40) <= 4, n  # whole days, about 80/10/10
    for s in ("valid", "test"):
        assert meta.splits[s]["start"].endswith("T00:00Z")
    assert "80/10/10" in meta.source["split_policy"]
    assert "climatology" in " ".join(meta.source["notes"]) and "skipped" in meta.source["climatology"]


def test_levels_become_channels_in_the_order_asked(tmp_path):
    ds = make_ds(levels=[85000.0, 50000.0])  # plev in Pa -> hPa names
    out = write_dataset(ds, tmp_path / "d", variables=["t500", "msl", "t850"], progress=False)
    meta = load_meta(out)
    assert meta.channels == ["t500", "msl", "t850"]
    assert meta.channel_units == {"t500": "K", "msl": "Pa", "t850": "K"}
    x, _ = fields_of(out, "train")
    np.testing.assert_array_equal(x[:, 0], ds["t"].isel(plev=1).values[: len(x), ::-1])
    np.testing.assert_array_equal(x[:, 2], ds["t"].isel(plev=0).values[: len(x), ::-1])
    # a variable name alone takes all its levels
    assert load_meta(write_dataset(ds, tmp_path / "e", variables=["t"], progress=False)).channels == [
        "t850",
        "t500",
    ]


def test_gaps_recorded_and_no_sample_crosses_them(tmp_path):
    ds = make_ds(n_steps=60, dhours=6)
    ds = ds.isel(time=[i for i in range(60) if i not in (10, 11)])  # a 18 h hole
    out = write_dataset(
        ds, tmp_path / "d", splits="train=2000-01-01:2000-01-12,valid=2000-01-13:2000-01-20", progress=False
    )
    meta = load_meta(out)
    assert meta.gaps == [{"after": "2000-01-03T06:00Z", "before": "2000-01-04T00:00Z", "hours": 18}]
    x, t = fields_of(out, "train")
    starts = valid_sample_starts(t, meta.dhours, 2)
    assert 9 not in starts and 8 not in starts and 7 in starts and 10 in starts
    regular = np.flatnonzero(np.diff(t) == 6)
    assert len(regular) == len(t) - 2  # one difference across the gap left out
    expected = (x[regular + 1].astype(np.float64) - x[regular]).std()
    np.testing.assert_allclose(read_stats(out).diff_std, [expected], rtol=1e-6)
    assert check_dataset(out) == []


def test_unsorted_time_is_sorted_and_said(tmp_path):
    ds = make_ds(n_steps=40)
    order = np.random.default_rng(1).permutation(40)
    out = write_dataset(ds.isel(time=order), tmp_path / "d", progress=False)
    meta = load_meta(out)
    assert meta.source["time"]["sorted_by_prep"] is True
    assert any("sorted" in n for n in meta.source["notes"])
    _, t = fields_of(out, "train")
    assert np.all(np.diff(t) == 6)


def test_fill_mean_uses_train_mean_per_point_and_channel_mean_where_never_valid(tmp_path):
    ds = make_ds(n_steps=40, dhours=6)
    v = ds["msl"].values.copy()
    v[::3, 0, 0] = np.nan  # sometimes missing: filled with that point's train mean
    v[:, 1, 1] = np.nan  # never valid (e.g. ocean in land-only data): the channel's train mean
    ds["msl"] = (ds["msl"].dims, v, ds["msl"].attrs)
    with pytest.raises(WxscaleError, match=r"msl: .*--fill mean"):
        write_dataset(ds, tmp_path / "refused", progress=False)
    assert_nothing_written(tmp_path / "refused")
    out = write_dataset(
        ds,
        tmp_path / "d",
        splits="train=2000-01-01:2000-01-07,valid=2000-01-08:2000-01-10",
        fill="mean",
        progress=False,
    )
    x, _ = fields_of(out, "train")
    train = v[:28, ::-1]  # north-south flip: input lat row 0 is the last stored row
    assert not np.isnan(x).any()
    np.testing.assert_allclose(x[0, 0, -1, 0], np.nanmean(train[:, -1, 0]), rtol=1e-6)
    np.testing.assert_allclose(x[5, 0, -2, 1], np.nanmean(train), rtol=1e-6)
    meta = load_meta(out)
    assert meta.source["fill"]["policy"] == "mean" and meta.source["fill"]["filled_values"]["msl"] == 14 + 40
    assert check_dataset(out) == []


def test_coarsen_is_a_block_mean_and_refuses_what_does_not_divide(tmp_path):
    ds = make_ds(n_steps=20, grid=(6, 8))
    out = write_dataset(ds, tmp_path / "d", coarsen=2, progress=False)
    meta = load_meta(out)
    assert meta.grid == (3, 4)
    x, _ = fields_of(out, "train")
    src = ds["msl"].values[: len(x), ::-1].astype(np.float64)
    np.testing.assert_allclose(x[:, 0, 0, 0], src[:, :2, :2].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(meta.lon[:2], [22.5, 112.5])
    with pytest.raises(WxscaleError, match=r"--coarsen 4 .*lat 6 points, lon 8 points"):
        write_dataset(ds, tmp_path / "e", coarsen=4, progress=False)
    assert_nothing_written(tmp_path / "e")


def test_climatology_follows_the_seasonal_cycle(tmp_path):
    n = 3 * 365 + 1
    ds = make_ds(n_steps=n, dhours=24, grid=(2, 4))
    t = ds["time"].values
    doy = (t.astype("datetime64[D]") - t.astype("datetime64[Y]")).astype(int)
    season = 1e5 + 500 * np.sin(2 * np.pi * doy / 365.25)
    ds["msl"] = (ds["msl"].dims, np.broadcast_to(season[:, None, None], (n, 2, 4)).astype(np.float32), {})
    out = write_dataset(ds, tmp_path / "d", splits="train=2000:2001,valid=2002", progress=False)
    stats = read_stats(out, with_climatology=True)
    assert stats.climatology.shape == (366, 1, 1, 2, 4)
    # a 15-day running mean of a yearly sine keeps >99 % of its amplitude
    c = stats.climatology_at(hours_since_epoch(t[:365]))[:, 0, 0, 0]
    np.testing.assert_allclose(c, season[:365], atol=6.0)


def test_multiple_files_join_on_time_and_merge_variables(tmp_path):
    ds = make_ds(n_steps=60, levels=[85000.0, 50000.0])
    paths = []
    for i, sl in enumerate([slice(40, 60), slice(0, 20), slice(20, 40)]):  # given out of order
        p = tmp_path / f"part{i}.nc"
        ds[["msl"]].isel(time=sl).to_netcdf(p)
        paths.append(p)
    zpath = tmp_path / "t.zarr"
    ds[["t"]].to_zarr(zpath, mode="w", consolidated=False)  # another variable, another format
    joined, notes = open_inputs([*paths, zpath])
    out = write_dataset(joined, tmp_path / "d", variables=["msl", "t500"], progress=False)
    ref = write_dataset(ds, tmp_path / "ref", variables=["msl", "t500"], progress=False)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(fields_of(out, split)[0], fields_of(ref, split)[0])


def test_member_selection(tmp_path):
    base = make_ds(n_steps=20)
    ens = xr.concat([base, base + 1.0], dim=xr.DataArray([0, 1], dims="number", name="number"))
    with pytest.raises(WxscaleError, match="--member K"):
        write_dataset(ens, tmp_path / "a", progress=False)
    p = tmp_path / "ens.nc"
    ens.to_netcdf(p)
    ds, notes = open_inputs([p], member=1)
    out = write_dataset(ds, tmp_path / "b", progress=False, source={"notes": notes})
    x, _ = fields_of(out, "train")
    np.testing.assert_allclose(x[:, 0], base["msl"].values[: len(x), ::-1] + 1.0)
    assert any("member 1" in n for n in load_meta(out).source["notes"])
    with pytest.raises(WxscaleError, match=r"--member 5 not found"):
        open_inputs([p], member=5)


def test_longitudes_sorted_but_kept_as_given(tmp_path):
    ds = make_ds(n_steps=20, grid=(4, 8))
    ds = ds.assign_coords(longitude=(((ds["longitude"] + 180) % 360) - 180))  # -180..180, unsorted now
    meta = load_meta(write_dataset(ds, tmp_path / "d", progress=False))
    assert meta.lon == [-180.0, -135.0, -90.0, -45.0, 0.0, 45.0, 90.0, 135.0]


def test_compression_lzf(tmp_path):
    out = write_dataset(make_ds(n_steps=20), tmp_path / "d", compress="lzf", progress=False)
    with h5py.File(out / "train/000.h5") as f:
        assert f[FIELDS_KEY].compression == "lzf"
    assert check_dataset(out) == []


def test_cli_prep_then_check(tmp_path, capsys):
    p = tmp_path / "in.nc"
    make_ds(n_steps=3 * 365, dhours=24, levels=[50000.0]).to_netcdf(p)
    out = tmp_path / "d"
    rc, text = run_cli(
        [
            "prep",
            "--input",
            str(p),
            "--out",
            str(out),
            "--vars",
            "t500,msl",
            "--splits",
            "train=2000:2001,valid=2002",
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, text
    meta = load_meta(out)
    assert meta.channels == ["t500", "msl"] and set(meta.splits) == {"train", "valid"}
    assert meta.source["command"].startswith("wxscale prep") or "prep" in meta.source["command"]
    assert meta.source["inputs"][0]["sha256"] and meta.source["inputs"][0]["path"] == str(p.resolve())
    rc, text = run_cli(["check", str(out)], capsys)
    assert rc == 0 and "valid" in text


def test_builtin_swe_preps_and_checks_clean(tmp_path, capsys):
    pytest.importorskip("wxscale.data_prep.simulator")
    out = tmp_path / "swe"
    rc, text = run_cli(
        [
            "prep",
            "--builtin",
            "swe",
            "--out",
            str(out),
            "--grid",
            "16x32",
            "--years",
            "3",
            "--sim-traj-days",
            "4",
            "--sim-gap-days",
            "150",
            "--sim-spinup-days",
            "1",
            "--sim-workers",
            "1",
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, text
    meta = load_meta(out)
    assert set(meta.splits) == {"train", "valid", "test"}
    assert meta.splits["train"]["start"].startswith("2000") and meta.splits["test"]["start"].startswith(
        "2002"
    )
    assert meta.gaps, "trajectories are separated by gaps"
    assert meta.source["builtin"] == "swe" and meta.dhours == 6
    assert check_dataset(out) == []


# ------------------------------------------------------------------------------------------------------------
# bad input: a clear message naming the file / variable / flag, exit 2, nothing written


def _nc(tmp_path: Path, ds: xr.Dataset, name: str = "in.nc") -> Path:
    p = tmp_path / name
    ds.to_netcdf(p)
    return p


def _bad(tmp_path, capsys, argv: list[str], *expected: str) -> str:
    out = tmp_path / "out"
    rc, text = run_cli(["prep", "--out", str(out), "--no-progress", *argv], capsys)
    assert rc == 2, text
    for e in expected:
        assert e in text, f"{e!r} not in {text!r}"
    assert "Traceback" not in text
    assert_nothing_written(out)
    return text


def test_bad_missing_file(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--input", str(tmp_path / "nope.nc")], "nope.nc", "not found")


def test_bad_unreadable_file(tmp_path, capsys, monkeypatch):
    p = _nc(tmp_path, make_ds())
    p.chmod(0)
    import wxscale.data_prep.reader as reader

    real_access = reader.os.access
    monkeypatch.setattr(
        reader.os, "access", lambda f, m: False if Path(f) == p else real_access(f, m)
    )  # root
    _bad(tmp_path, capsys, ["--input", str(p)], "in.nc", "cannot be read")


@pytest.mark.parametrize("how", ["garbage", "truncated", "garbage_grib"])
def test_bad_corrupt_file(tmp_path, capsys, how):
    if how == "truncated":
        p = _nc(tmp_path, make_ds(n_steps=200, grid=(20, 30)))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        p = tmp_path / ("in.grib" if how == "garbage_grib" else "in.nc")
        p.write_bytes(np.random.default_rng(0).bytes(5000))
    _bad(tmp_path, capsys, ["--input", str(p)], p.name)


def test_bad_variable_or_level_not_found(tmp_path, capsys):
    p = _nc(tmp_path, make_ds(levels=[85000.0, 50000.0]))
    text = _bad(
        tmp_path, capsys, ["--input", str(p), "--vars", "msl,t700"], "'t700' not found", "msl, t850, t500"
    )
    assert "--vars" in text
    _bad(tmp_path, capsys, ["--input", str(p), "--vars", "q"], "'q' not found")


def test_bad_no_time_axis(tmp_path, capsys):
    p = _nc(tmp_path, make_ds().isel(time=0, drop=True))
    _bad(tmp_path, capsys, ["--input", str(p)], "in.nc", "no time axis")


def test_bad_one_time_step(tmp_path, capsys):
    p = _nc(tmp_path, make_ds().isel(time=[0]))
    _bad(tmp_path, capsys, ["--input", str(p)], "only one time step")
    with pytest.raises(WxscaleError, match="only one time step"):  # a scalar time, as cfgrib gives
        write_dataset(make_ds().isel(time=0), tmp_path / "x", progress=False)


def test_bad_irregular_and_duplicated_times(tmp_path, capsys):
    ds = make_ds(n_steps=20)
    t = ds["time"].values.copy()
    t[5] += np.timedelta64(2, "h")
    p = _nc(tmp_path, ds.assign_coords(time=t), "irregular.nc")
    _bad(tmp_path, capsys, ["--input", str(p)], "irregular.nc", "irregular time axis", "6 h")
    p = _nc(tmp_path, ds.isel(time=[*range(10), 9, *range(10, 20)]), "dup.nc")
    _bad(tmp_path, capsys, ["--input", str(p)], "dup.nc", "duplicated", "2000-01-03T06:00Z")
    # two files that overlap in time name both files
    a, b = (
        _nc(tmp_path, ds.isel(time=slice(0, 12)), "a.nc"),
        _nc(tmp_path, ds.isel(time=slice(10, 20)), "b.nc"),
    )
    _bad(tmp_path, capsys, ["--input", str(a), str(b)], "a.nc", "b.nc", "overlap")


def test_bad_nan_without_fill(tmp_path, capsys):
    ds = make_ds(levels=[50000.0])
    v = ds["t"].values.copy()
    v[:, 0, :2, :] = np.nan
    ds["t"] = (ds["t"].dims, v)
    p = _nc(tmp_path, ds)
    _bad(tmp_path, capsys, ["--input", str(p)], "t500", f"{40 * 2 * 8:,} of", "--fill mean")


def test_bad_grids_differ(tmp_path, capsys):
    a = _nc(tmp_path, make_ds(n_steps=20, grid=(6, 8)), "a.nc")
    b = _nc(tmp_path, make_ds(n_steps=20, start="2000-01-06", grid=(5, 8)), "b.nc")
    _bad(tmp_path, capsys, ["--input", str(a), str(b)], "a.nc", "b.nc", "different grids")


def test_bad_output_exists(tmp_path, capsys):
    p = _nc(tmp_path, make_ds())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, text = run_cli(["prep", "--input", str(p), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and "--overwrite" in text and (out / "keep.txt").exists()
    # --overwrite replaces a dataset dir or an empty folder, never a folder of someone's files
    rc, text = run_cli(["prep", "--input", str(p), "--out", str(out), "--no-progress", "--overwrite"], capsys)
    assert rc == 2 and "keep.txt" in text and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    for _ in range(2):  # into the empty folder, then over the dataset dir it now is
        rc, text = run_cli(["prep", "--input", str(p), "--out", str(out), "--no-progress", "--overwrite"], capsys)
        assert rc == 0 and check_dataset(out) == [], text


def test_bad_splits(tmp_path, capsys):
    p = _nc(tmp_path, make_ds(n_steps=40))  # 2000-01-01..2000-01-10
    _bad(
        tmp_path,
        capsys,
        ["--input", str(p), "--splits", "train=2000-01-01:2000-01-05,valid=2001"],
        "split 'valid'",
        "empty",
    )
    _bad(tmp_path, capsys, ["--input", str(p), "--splits", "train=2000,valid=2000-01-05"], "overlap")
    _bad(tmp_path, capsys, ["--input", str(p), "--splits", "valid=2000"], "no train split")
    _bad(tmp_path, capsys, ["--input", str(p), "--splits", "train=2000,dev=2001"], "unknown split 'dev'")
    p2 = _nc(tmp_path, make_ds(n_steps=4, dhours=12), "short.nc")
    _bad(tmp_path, capsys, ["--input", str(p2)], "too few time steps", "--splits")


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    ds = make_ds(n_steps=100, dhours=24)
    calls = {"n": 0}
    real = prep.read_channels

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "read_channels", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(ds, tmp_path / "d", progress=False)
    assert_nothing_written(tmp_path / "d")


def test_accumulators_merge_like_one_pass():
    """Train statistics from two consecutive stretches of time, merged, equal those from one pass (what ranks
    that each write some shards will rely on), the one-step difference across the seam included."""
    rng = np.random.default_rng(1)
    x = (10 + rng.standard_normal((30, 2, 4, 6))).astype(np.float32)
    hours = np.arange(30, dtype=np.int64) * 6 + 262968  # 2000-01-01, every 6 h
    hours[20:] += 6  # one gap, inside the second stretch
    clim_hours = np.unique(hours % 24)

    def stats_of(*pieces):
        acc = prep.TrainStats(2, 6, prep._Climatology(clim_hours, (2, 4, 6)))
        for a, b in pieces:
            acc.add(x[a:b], hours[a:b])
        return acc

    whole = stats_of((0, 7), (7, 30))  # blocks in one pass
    first, second = stats_of((0, 12)), stats_of((12, 19), (19, 30))
    first.merge(second)
    assert first.moments.n == whole.moments.n and first.diffs.n == whole.diffs.n == 28 * 4 * 6
    np.testing.assert_allclose(first.moments.mean, whole.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(first.moments.std, whole.moments.std, rtol=1e-10)
    np.testing.assert_allclose(first.diffs.std, whole.diffs.std, rtol=1e-10)
    np.testing.assert_allclose(first.clim.sums, whole.clim.sums, rtol=1e-6)
    np.testing.assert_array_equal(first.clim.counts, whole.clim.counts)
    direct = np.diff(x.astype(np.float64), axis=0)[np.diff(hours) == 6]
    np.testing.assert_allclose(whole.diffs.std, direct.std(axis=(0, 2, 3)), rtol=1e-6)
