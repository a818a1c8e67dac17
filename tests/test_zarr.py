"""Published zarr layouts (WeatherBench 2, ARCO-ERA5) read by `wxscale prep`, lazily, one time block at a time.

The stores are written here in each publisher's layout: dims time/level/latitude/longitude, ERA5 long variable
names, pressure-level variables with a `level` dim, one time step per chunk, latitude ascending (WeatherBench 2)
or descending (ARCO-ERA5), zarr format 2 with consolidated metadata or format 3. Every chunk the store hands out
is counted (a wrapper around zarr's LocalStore.get), which is how laziness is proven: only the chunks of the
asked variables and times are read, each once, and no more than the block being written at any moment.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

zarr = pytest.importorskip("zarr")

from wxscale.cli import main as cli  # noqa: E402
from wxscale.data_prep import prep as prep_module  # noqa: E402
from wxscale.data_prep.layout import FIELDS_KEY, load_meta  # noqa: E402
from wxscale.data_prep.reader import ERA5_SHORT_NAMES, zarr_store_provenance  # noqa: E402

T0 = np.datetime64("2020-01-01T00", "ns")
SPLITS = "train=2020-01-01T00:2020-01-02T18,valid=2020-01-03T00:2020-01-03T18,test=2020-01-04"


def _field(var: str, level: int, t: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A distinct, known value at every (time, lat, lon) of one variable and level: [T, lat, lon] float32."""
    base = {"geopotential": 5e4, "temperature": 250.0, "2m_temperature": 280.0, "mean_sea_level_pressure": 1e5,
            "specific_humidity": 1.0}[var]
    return (base + 0.01 * level + 3.0 * t[:, None, None] + lat[None, :, None] + 0.001 * lon[None, None, :]
            ).astype(np.float32)


def write_store(path: Path, *, layout: str, n_steps: int = 16, grid: tuple[int, int] = (9, 16),
                levels: tuple[int, ...] = (250, 500, 850), variables: tuple[str, ...] = (
                    "geopotential", "temperature", "specific_humidity", "2m_temperature",
                    "mean_sea_level_pressure")) -> Path:
    """A store in the `wb2` (lat ascending, zarr v2, consolidated) or `arco` (lat descending, zarr v3) layout,
    6-hourly from 2020-01-01, both poles on the grid, one time step per chunk."""
    n_lat, n_lon = grid
    lat = np.linspace(-90, 90, n_lat) if layout == "wb2" else np.linspace(90, -90, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    t = np.arange(n_steps, dtype=np.float64)
    data_vars, encoding = {}, {}
    for var in variables:
        if var in ("2m_temperature", "mean_sea_level_pressure"):
            data_vars[var] = (("time", "latitude", "longitude"), _field(var, 0, t, lat, lon))
            encoding[var] = {"chunks": (1, n_lat, n_lon)}
        else:
            data_vars[var] = (("time", "level", "latitude", "longitude"),
                              np.stack([_field(var, lev, t, lat, lon) for lev in levels], axis=1))
            encoding[var] = {"chunks": (1, len(levels), n_lat, n_lon)}
    ds = xr.Dataset(data_vars, coords={
        "time": T0 + np.arange(n_steps) * np.timedelta64(6, "h"), "latitude": lat, "longitude": lon,
        "level": np.array(levels, dtype=np.int64)})
    if layout == "arco":  # ARCO-ERA5 also holds invariants without a time dim
        ds["land_sea_mask"] = (("latitude", "longitude"), np.zeros(grid, np.float32))
        ds.to_zarr(path, encoding=encoding, zarr_format=3, consolidated=False)
    else:
        ds.to_zarr(path, encoding=encoding, zarr_format=2, consolidated=True)
    return path


def expected(var: str, level: int, steps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """What the shards must hold: latitude north to south, whatever the store's order."""
    n_lat, n_lon = grid
    return _field(var, level, steps.astype(np.float64), np.linspace(90, -90, n_lat), np.arange(n_lon) * 360.0 / n_lon)


class ChunkReads:
    """Counts the data chunk reads zarr makes from local stores: (variable, time chunk) per read (metadata and
    the small coordinate arrays, which are read once on opening, are left out)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.log: list[tuple[str, int]] = []
        original = zarr.storage.LocalStore.get

        async def counting_get(store, key, *args, **kwargs):
            parts = key.split("/")
            meta = parts[-1] in (".zmetadata", ".zgroup", ".zarray", ".zattrs", "zarr.json")
            if not meta and len(parts) >= 2 and parts[0] not in ("time", "latitude", "longitude", "level"):
                first = parts[2] if parts[1] == "c" else parts[1].split(".")[0]  # v3 var/c/t/..., v2 var/t.0.0
                self.log.append((parts[0], int(first)))
            return await original(store, key, *args, **kwargs)

        monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)

    def of(self, var: str) -> list[int]:
        return [t for v, t in self.log if v == var]


def _shard_fields(out: Path, split: str) -> np.ndarray:
    meta = load_meta(out)
    arrays = []
    for s in meta.shards_of(split):
        with h5py.File(out / s.path, "r") as f:
            arrays.append(f[FIELDS_KEY][:])
    return np.concatenate(arrays)


@pytest.mark.parametrize("layout", ["wb2", "arco"])
def test_published_layouts_prep_with_short_channel_names(tmp_path, layout):
    store = write_store(tmp_path / f"{layout}.zarr", layout=layout)
    out = tmp_path / "ds"
    rc = cli(["prep", "--input", str(store), "--out", str(out), "--vars", "z500,t850,t2m", "--splits", SPLITS,
              "--no-progress"])
    assert rc == 0
    meta = load_meta(out)
    assert meta.channels == ["z500", "t850", "t2m"]
    assert meta.lat[0] == 90 and meta.lat[-1] == -90 and meta.grid == (9, 16)  # both poles, north first
    train = _shard_fields(out, "train")
    steps = np.arange(8)  # train: the first two days, 6-hourly
    np.testing.assert_array_equal(train[:, 0], expected("geopotential", 500, steps, (9, 16)))
    np.testing.assert_array_equal(train[:, 1], expected("temperature", 850, steps, (9, 16)))
    np.testing.assert_array_equal(train[:, 2], expected("2m_temperature", 0, steps, (9, 16)))
    notes = " ".join(meta.source["notes"])
    assert "geopotential -> z" in notes
    assert ("latitude reordered" in notes) == (layout == "wb2")
    inputs = meta.source["inputs"]
    assert inputs[0]["kind"] == "zarr" and "not its chunks" in inputs[0]["sha256_covers"]


def test_vars_error_lists_the_short_channel_names(tmp_path, capsys):
    store = write_store(tmp_path / "wb2.zarr", layout="wb2")
    rc = cli(["prep", "--input", str(store), "--out", str(tmp_path / "ds"), "--vars", "z700", "--splits", SPLITS,
              "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'z700' not found" in err and "z500" in err and "t2m" in err and "msl" in err
    assert not (tmp_path / "ds").exists()


def test_prep_reads_only_the_asked_chunks_once_and_one_block_at_a_time(tmp_path, monkeypatch):
    store = write_store(tmp_path / "arco.zarr", layout="arco", n_steps=20)
    step_bytes = 2 * 9 * 16 * 4  # z500 and t2m, float32
    monkeypatch.setattr(prep_module, "BLOCK_BYTES", 3 * step_bytes)  # blocks of 3 steps
    reads = ChunkReads(monkeypatch)
    appended: list[tuple[int, int]] = []  # (steps written so far, z chunks read so far) at each shard append
    original_append = prep_module.ShardWriter.append

    def recording_append(writer, x, hours):
        written = (appended[-1][0] if appended else 0) + len(x)
        appended.append((written, len(reads.of("geopotential"))))
        return original_append(writer, x, hours)

    monkeypatch.setattr(prep_module.ShardWriter, "append", recording_append)
    # checksum_input must not hash chunk files either (a published store is terabytes)
    original_sha = prep_module.sha256_file

    def guarded_sha(path):
        assert store.resolve() not in Path(path).resolve().parents, f"hashed a chunk file {path}"
        return original_sha(path)

    monkeypatch.setattr(prep_module, "sha256_file", guarded_sha)
    out = tmp_path / "ds"
    assert cli(["prep", "--input", str(store), "--out", str(out), "--vars", "z500,t2m", "--splits", SPLITS,
                "--no-progress"]) == 0

    # only the asked variables, only the 16 steps in the splits (20 in the store), each chunk exactly once
    assert {v for v, _ in reads.log} == {"geopotential", "2m_temperature"}
    for var in ("geopotential", "2m_temperature"):
        counts = collections.Counter(reads.of(var))
        assert sorted(counts) == list(range(16)), var
        assert set(counts.values()) == {1}, f"{var}: some chunks read more than once: {counts}"
    # streaming: at every append the reads so far cover exactly the steps written so far (no read-ahead),
    # in blocks of at most 3 steps
    assert all(written == n_read for written, n_read in appended), appended
    assert max(b - a for (a, _), (b, _) in zip([(0, 0), *appended], appended, strict=False)) <= 3
    assert reads.of("geopotential") == sorted(reads.of("geopotential"))


def test_quarter_degree_store_721_rows_with_both_poles(tmp_path, monkeypatch):
    """The 0.25 deg layout (721 x 1440) at very few steps: rows constant along longitude compress to almost
    nothing, so the store stays small on disk."""
    grid = (721, 1440)
    lat_wb2 = np.linspace(-90, 90, grid[0])
    store = tmp_path / "wb2_025.zarr"
    t = np.arange(6, dtype=np.float64)
    rows = (280.0 + 3.0 * t[:, None] + lat_wb2[None, :]).astype(np.float32)  # [T, lat]
    z = np.broadcast_to((5e4 + rows)[:, None, :, None], (6, 2, *grid))
    t2m = np.broadcast_to(rows[:, :, None], (6, *grid))
    ds = xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"), z),
         "2m_temperature": (("time", "latitude", "longitude"), t2m),
         "temperature": (("time", "level", "latitude", "longitude"), z)},
        coords={"time": T0 + np.arange(6) * np.timedelta64(6, "h"), "latitude": lat_wb2,
                "longitude": np.arange(grid[1]) * 0.25, "level": np.array([500, 850])})
    enc = {v: {"chunks": (1, 2, *grid) if ds[v].ndim == 4 else (1, *grid)} for v in ds.data_vars}
    ds.to_zarr(store, encoding=enc, zarr_format=2, consolidated=True)
    store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert store_bytes < 4 << 20, f"the test store should stay small on disk, it has {store_bytes} bytes"

    reads = ChunkReads(monkeypatch)
    out = tmp_path / "ds"
    splits = "train=2020-01-01T00:2020-01-01T06,valid=2020-01-01T12:2020-01-01T18,test=2020-01-02"
    assert cli(["prep", "--input", str(store), "--out", str(out), "--vars", "z500,t2m", "--splits", splits,
                "--compress", "lzf", "--no-progress"]) == 0
    meta = load_meta(out)
    assert meta.grid == grid
    lat = np.asarray(meta.lat)
    assert lat[0] == 90 and lat[-1] == -90 and np.allclose(np.diff(lat), -0.25)
    train = _shard_fields(out, "train")
    want = (280.0 + 3.0 * np.arange(2)[:, None] + lat[None, :]).astype(np.float32)
    np.testing.assert_array_equal(train[:, 1, :, 0], want)  # t2m, north first
    np.testing.assert_array_equal(train[:, 0, :, 700], (5e4 + want).astype(np.float32))  # z500
    assert "temperature" not in {v for v, _ in reads.log}
    assert collections.Counter(reads.of("geopotential")) == {i: 1 for i in range(6)}


def test_store_provenance_covers_metadata_only(tmp_path):
    store = write_store(tmp_path / "arco.zarr", layout="arco", n_steps=4)
    first = zarr_store_provenance(store)
    chunk = next(p for p in (store / "geopotential").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"changed")  # chunks are not hashed (a published store is terabytes)
    assert zarr_store_provenance(store)["sha256"] == first["sha256"]
    meta = store / "geopotential" / "zarr.json"
    d = json.loads(meta.read_text())
    d.setdefault("attributes", {})["units"] = "m**2 s**-2"
    meta.write_text(json.dumps(d))
    assert zarr_store_provenance(store)["sha256"] != first["sha256"]  # metadata is


def test_every_short_name_is_unique():
    assert len(set(ERA5_SHORT_NAMES.values())) == len(ERA5_SHORT_NAMES)
