"""Hostile and broken inputs to `wxscale prep`, `wxscale check` and the loaders (issue 12, data side).

Each test builds its own broken file (truncated NetCDF-3/NetCDF-4/GRIB, truncated or garbled HDF5 shards, a
data.json with wrong types, an --out that must not be replaced) and asserts three things: the exit code (2, a
one-line error, no traceback), the message (it names the file, field or flag), and what is left on disk
(nothing half-written, nothing of the user's deleted).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import wxscale.data_prep.prep as prep
from tests.conftest import make_tiny_dataset, real_data_file
from wxscale.cli import main as cli
from wxscale.data_prep import integrity
from wxscale.data_prep.check import check_dataset
from wxscale.data_prep.integrity import require_all_messages_decoded
from wxscale.data_prep.layout import FIELDS_KEY, load_meta
from wxscale.data_prep.loader import build_loader
from wxscale.errors import WxscaleError

SPLITS = "train=2000-01-01:2000-01-07,valid=2000-01-08:2000-01-10"


def weather(n_steps: int = 40, grid: tuple[int, int] = (6, 8), seed: int = 0) -> xr.Dataset:
    """Two channels every 6 h from 2000-01-01, latitude north to south."""
    rng = np.random.default_rng(seed)
    time = np.datetime64("2000-01-01", "ns") + np.arange(n_steps) * np.timedelta64(6, "h")
    shape = (n_steps, *grid)
    return xr.Dataset(
        {
            "z500": (("time", "lat", "lon"), (5e4 + 100 * rng.standard_normal(shape)).astype(np.float32)),
            "msl": (("time", "lat", "lon"), (1e5 + 1e3 * rng.standard_normal(shape)).astype(np.float32)),
        },
        coords={"time": time, "lat": np.linspace(75, -75, grid[0]), "lon": np.arange(grid[1]) * 360.0 / grid[1]},
    )


def truncated(path: Path, fraction: float) -> Path:
    """A copy of `path` with only the first `fraction` of its bytes, as a cut download leaves it."""
    data = path.read_bytes()
    cut = path.with_name(f"cut{int(fraction * 100)}-{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def one_line_error(rc: int, text: str, *names: str) -> None:
    """Exit 2, one error line without a traceback, naming each of `names`."""
    assert rc == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert len(errors) == 1, text
    for name in names:
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"


def check_refuses(capsys, d: Path, *problems: str, flags: tuple[str, ...] = ()) -> str:
    """`wxscale check` exits 2 without a traceback and lists each of `problems` (one line each)."""
    rc, text = run_cli(capsys, "check", *flags, str(d))
    assert rc == 2 and "Traceback" not in text and f"wxscale check: error: {d}" in text, text
    for problem in problems:
        assert problem in text, f"{problem!r} not in {text!r}"
    return text


def nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} exists after a refused prep"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"temporary dirs left behind: {leftovers}"


def prep_refused(capsys, src: Path, out: Path, *names: str) -> str:
    rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(out), "--no-progress", "--splits", SPLITS)
    one_line_error(rc, text, *names)
    nothing_written(out)
    return text


# ------------------------------------------------------------------------------------------------------------
# truncated inputs: an error naming the file, never a shorter or zero-filled dataset


@pytest.mark.parametrize("fraction", [0.97, 0.6, 0.02])
@pytest.mark.parametrize(
    "engine, fmt, unlimited",
    [("scipy", "NETCDF3_CLASSIC", []), ("netcdf4", "NETCDF3_64BIT", ["time"]), ("netcdf4", "NETCDF3_64BIT_DATA", [])],
)
def test_truncated_netcdf3_is_refused_naming_the_file(tmp_path, capsys, engine, fmt, unlimited, fraction):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src, engine=engine, format=fmt, unlimited_dims=unlimited)
    cut = truncated(src, fraction)
    text = prep_refused(capsys, cut, tmp_path / "out", cut.name, "truncated")
    assert "repeated latitude" not in text
    # the whole file still preps (the check holds a complete file to exactly its size)
    rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(tmp_path / "ok"), "--no-progress",
                       "--splits", SPLITS)
    assert rc == 0 and check_dataset(tmp_path / "ok") == [], text


@pytest.mark.parametrize("fraction", [0.97, 0.7])
def test_truncated_netcdf4_is_refused_naming_the_file(tmp_path, capsys, fraction):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src, engine="netcdf4", format="NETCDF4")
    cut = truncated(src, fraction)
    prep_refused(capsys, cut, tmp_path / "out", cut.name, "truncated")


def test_truncated_grib_is_refused_naming_the_file(tmp_path, capsys):
    src = Path(shutil.copy(real_data_file("era5-2mt-2019-03-uk.grib"), tmp_path / "t2m.grib"))
    cut = truncated(src, 0.7)
    prep_refused(capsys, cut, tmp_path / "out", cut.name, "truncated", "after 520 complete message")


def test_a_decoder_that_skips_messages_is_an_error(monkeypatch):
    """cfgrib skips a corrupt GRIB message (it only logs it): fewer fields than messages must be refused."""
    ds = weather(n_steps=520)  # 2 variables x 520 steps = 1040 fields
    with pytest.raises(WxscaleError, match=r"in.grib: cfgrib decoded 1040 field\(s\) but the file holds 1488"):
        require_all_messages_decoded("in.grib", ds, 1488)
    require_all_messages_decoded("in.grib", ds, 1040)  # one field per message: fine
    # more fields than messages: recounted as fields (GRIB2 multi-field messages) before it is refused
    monkeypatch.setattr(integrity, "count_grib_messages", lambda path, fields=False: 1040 if fields else 520)
    require_all_messages_decoded("in.grib", ds, 520)
    monkeypatch.setattr(integrity, "count_grib_messages", lambda path, fields=False: 1000)
    with pytest.raises(WxscaleError, match="holds 1000 GRIB fields .* 40 would read as missing"):
        require_all_messages_decoded("in.grib", ds, 1000)


# ------------------------------------------------------------------------------------------------------------
# the output folder: only a dataset dir or an empty one is replaced; one-line errors for the rest


def test_overwrite_refuses_a_folder_of_someone_elses_files(tmp_path, capsys):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "sub" / "data.csv").write_text("1,2")
    rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(out), "--overwrite", "--no-progress")
    one_line_error(rc, text, f"--out {out}", "not a dataset dir", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "years of work" and (out / "sub" / "data.csv").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_refuses_foreign_files_inside_a_dataset_dir(tmp_path, capsys):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    out = tmp_path / "d"
    argv = ["prep", "--input", str(src), "--out", str(out), "--no-progress", "--splits", SPLITS]
    assert run_cli(capsys, *argv)[0] == 0
    (out / "notes.md").write_text("my notes")
    (out / "train" / "extra.npy").write_bytes(b"x")
    rc, text = run_cli(capsys, *argv, "--overwrite")
    one_line_error(rc, text, "notes.md", "train/extra.npy", "not part of a dataset")
    assert (out / "notes.md").read_text() == "my notes" and check_dataset(out) != []  # the stray file is named
    (out / "notes.md").unlink()
    (out / "train" / "extra.npy").unlink()
    rc, text = run_cli(capsys, *argv, "--overwrite")  # a plain dataset dir is replaced
    assert rc == 0 and check_dataset(out) == [], text


def test_overwrite_refuses_a_regular_file(tmp_path, capsys):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    out = tmp_path / "results.csv"
    out.write_text("a,b\n1,2\n")
    rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(out), "--overwrite", "--no-progress")
    one_line_error(rc, text, f"--out {out}", "is a file")
    assert out.read_text() == "a,b\n1,2\n"


def test_out_dot_and_out_under_a_file(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for out in (".", "./", "..", str(tmp_path)):
        rc, text = run_cli(capsys, "prep", "--input", "in.nc", "--out", out, "--overwrite", "--no-progress")
        one_line_error(rc, text, "--out", "current folder")
    rc, text = run_cli(capsys, "prep", "--input", "in.nc", "--out", "in.nc/d", "--no-progress")
    one_line_error(rc, text, "--out in.nc/d", "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_out_in_a_folder_that_is_not_writable(tmp_path, capsys):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(locked / "d"), "--no-progress")
        one_line_error(rc, text, f"--out {locked / 'd'}", "permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_out_not_writable_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """The same refusal as above where tests run as root: os.access is what prep asks."""
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    monkeypatch.setattr(prep.os, "access", lambda path, mode: Path(path) != tmp_path)
    prep_refused(capsys, src, tmp_path / "out", f"--out {tmp_path / 'out'}", "permission denied")


@pytest.mark.parametrize(
    "code, text",
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only")],
)
def test_os_error_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, code, text):
    """An OS error on the output side mid-write (disk full, permissions changed, read-only) names --out."""
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)

    def fail(self, fields, time_hours):
        raise OSError(code, text, str(self.path))

    monkeypatch.setattr(prep.ShardWriter, "append", fail)
    prep_refused(capsys, src, tmp_path / "out", f"--out {tmp_path / 'out'}", text)


def test_leftovers_of_an_interrupted_prep_are_named_and_removed(tmp_path, capsys):
    src = tmp_path / "in.nc"
    weather().to_netcdf(src)
    out = tmp_path / "d"
    stale = [tmp_path / ".d.k1ll3d_a.partial", tmp_path / ".d.x7abcdef.partial"]  # mkdtemp names: 8 random chars
    for s in stale:
        (s / "train").mkdir(parents=True)
    other = tmp_path / ".other.abc.partial"  # another dataset's leftover is not ours to remove
    other.mkdir()
    rc, text = run_cli(capsys, "prep", "--input", str(src), "--out", str(out), "--no-progress", "--splits", SPLITS)
    assert rc == 0, text
    said = [line for line in text.splitlines() if "interrupted prep" in line]
    assert len(said) == 1 and all(s.name in said[0] for s in stale), text
    assert not any(s.exists() for s in stale) and other.is_dir() and check_dataset(out) == []


# ------------------------------------------------------------------------------------------------------------
# data.json with wrong types: one line naming the field, for every reader (load_meta)


def tiny(tmp_path: Path, name: str = "d") -> Path:
    return make_tiny_dataset(tmp_path / name, grid=(4, 8), n_steps=40, gaps=(), train_shards=1)


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("dhours", "six", "dhours"),
        ("dhours", 6.5, "dhours"),
        ("dhours", True, "dhours"),
        ("dhours", -6, "dhours"),
        ("coords", {"lat": ["north"], "lon": [0.0], "channel": ["z"]}, "coords.lat.0"),
        ("shards", "train/000.h5", "shards"),
        ("splits", {"train": {"start": "x", "end": "y", "n_steps": "24"}}, "splits.train.n_steps"),
        ("dataset_name", 7, "dataset_name"),
        ("shards", [{"path": "../../etc/x.h5", "split": "train", "n_steps": 1, "first_time": "a", "last_time": "a",
                     "sha256": ""}], "shards.0: value error, path '../../etc/x.h5' is not inside its split dir"),
    ],
)
def test_data_json_with_wrong_types_is_one_line_for_every_reader(tmp_path, capsys, field, value, named):
    d = tiny(tmp_path)
    meta = json.loads((d / "data.json").read_text())
    meta[field] = value
    (d / "data.json").write_text(json.dumps(meta))
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    check_refuses(capsys, d, "data.json: ", named)
    with pytest.raises(WxscaleError, match=named.replace(".", r"\.")):
        load_meta(d)
    with pytest.raises(WxscaleError, match="data.json"):
        build_loader(d, "train", batch_size=2, kind="torch", num_workers=0)
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before


@pytest.mark.parametrize("content", [b"[1, 2]", b"\x89HDF\r\n\x1a\n\xff\xfe garbage", b"{\"dhours\": "])
def test_data_json_that_is_not_a_json_object(tmp_path, capsys, content):
    d = tiny(tmp_path)
    (d / "data.json").write_bytes(content)
    check_refuses(capsys, d, "data.json")
    with pytest.raises(WxscaleError, match="data.json"):
        load_meta(d)


# ------------------------------------------------------------------------------------------------------------
# truncated and garbled HDF5 in a dataset dir: `check` names them, the loaders stop with one line


def garble_a_chunk(shard: Path) -> int:
    """Overwrite the bytes of one compressed chunk of `fields` in place; returns the time index it holds."""
    with h5py.File(shard, "r") as f:
        info = f[FIELDS_KEY].id.get_chunk_info(3)
    with open(shard, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    return info.chunk_offset[0]


@pytest.fixture()
def lzf_dataset(tmp_path) -> Path:
    """A small dataset written by prep with lzf-compressed shards (so a garbled chunk fails to decode)."""
    out = tmp_path / "lzf"
    ds = weather()
    ds = ds.map(np.round)  # whole numbers: lzf compresses them, so a chunk is stored filtered
    prep.write_dataset(ds, out, splits=SPLITS, compress="lzf", progress=False)
    return out


@pytest.mark.parametrize("fraction", [0.9, 0.3])
def test_truncated_shard(tmp_path, capsys, fraction):
    d = tiny(tmp_path)
    shard = d / "train" / "000.h5"
    shard.write_bytes(shard.read_bytes()[: int(shard.stat().st_size * fraction)])
    for flags in ((), ("--no-checksums", "--no-values")):
        check_refuses(capsys, d, "train/000.h5: not a readable HDF5 file, truncated", flags=flags)
    with pytest.raises(WxscaleError, match=r"shard .*train/000\.h5 cannot be read .* truncated or corrupt"):
        build_loader(d, "train", batch_size=2, kind="torch", num_workers=0)


def test_truncated_stats_file(tmp_path, capsys):
    d = tiny(tmp_path)
    stats = d / "stats.h5"
    stats.write_bytes(stats.read_bytes()[:500])
    check_refuses(capsys, d, "stats.h5: not a readable HDF5 file, truncated")
    with pytest.raises(WxscaleError, match=r"statistics file .*stats\.h5 cannot be read"):
        build_loader(d, "train", batch_size=2, kind="torch", num_workers=0)


@pytest.mark.parametrize("kind, num_workers", [("torch", 0), ("torch", 1), ("dali", 1)])
def test_garbled_chunk_in_a_shard(lzf_dataset, capsys, kind, num_workers):
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI not installed")
    shard = lzf_dataset / "train" / "000.h5"
    garble_a_chunk(shard)
    check_refuses(capsys, lzf_dataset, "train/000.h5: `fields` cannot be read", flags=("--no-checksums",))
    loader = build_loader(lzf_dataset, "train", batch_size=4, kind=kind, num_workers=num_workers, shuffle=False)
    try:
        with pytest.raises(WxscaleError) as err:  # in a worker process: the message, not the worker's traceback
            for _ in loader:
                pass
    finally:
        loader.close()
    message = str(err.value)
    assert "train/000.h5 cannot be read" in message and "Traceback" not in message and "\n" not in message


# ------------------------------------------------------------------------------------------------------------
# `check`: every split holds the steps data.json promises


def test_check_counts_each_splits_steps(tmp_path, capsys):
    d = tiny(tmp_path)
    meta = json.loads((d / "data.json").read_text())
    meta["splits"]["train"]["n_steps"] += 5  # data.json promises more than the shards hold
    (d / "data.json").write_text(json.dumps(meta))
    check_refuses(
        capsys, d,
        "split 'train' promises 29 steps but its shards list 24",
        "train: its shards hold 24 steps, data.json promises 29",
    )


def test_check_finds_a_shard_dropped_from_a_split(tmp_path, capsys):
    d = make_tiny_dataset(tmp_path / "d", grid=(4, 8), n_steps=60, gaps=(), train_shards=2)
    meta = json.loads((d / "data.json").read_text())
    meta["shards"] = [s for s in meta["shards"] if s["path"] != "train/001.h5"]
    (d / "data.json").write_text(json.dumps(meta))
    (d / "train" / "001.h5").unlink()
    check_refuses(capsys, d, "split 'train' promises 36 steps but its shards list 18", "split 'train' spans")
    with pytest.raises(WxscaleError, match="split 'train' promises 36 steps but its shards list 18"):
        build_loader(d, "train", batch_size=2, kind="torch", num_workers=0)
