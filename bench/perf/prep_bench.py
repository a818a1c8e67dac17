"""`wxscale bench prep`: how fast `wxscale prep` writes a dataset, serial against N ranks, against a plain read.

    wxscale bench prep (--input PATH [PATH ...] | --synthetic STEPS) [--ranks 1,2] [--rounds 2]
        [--vars z500,...] [--splits ...] [--launcher mpiexec|srun] [--out out/bench_prep]

Rows of ``<out>/prep_bench.csv`` (columns :data:`COLUMNS`, the provenance columns of every benchmark last) and
the bars of ``<out>/prep_bench.png``:

- ``read``: this process reads every step that prep would write, through prep's own read path
  (``DatasetPlan.blocks``: open, select the channels, orient the grid, float32) and nothing else: no NaN count,
  no statistics, no HDF5 writes. The ceiling one process can reach.
- ``prep``: ``wxscale prep`` launched as R ranks (``mpiexec -n R``, or ``srun --ntasks R --mpi=pmi2`` in an
  allocation). ``gb_per_s`` is the field bytes written (steps x channels x lat x lon x 4) over the time prep
  itself records in data.json (``source.writing.wall_s``: from planning to data.json, the statistics, the
  checksums and the final rename included; interpreter start-up and MPI start are not); ``gb_per_s_launch``
  divides by the whole launch instead.

``speedup`` is a prep rate over the prep rate at the fewest ranks asked, ``efficiency`` = speedup / (R / R0), and
``ratio_to_read`` a rate over the plain read's. ``--rounds`` repeats everything in turn and keeps each kind's
fastest round, since load from other jobs on a shared machine only ever slows a run down.

Caches: the source is read once before any timing, so reads come from the page cache (as they do not on a
cold parallel file system), and the shards are written to the page cache (no fsync), so the rates measure
decoding, statistics and HDF5 writing, not the disks.

``--synthetic STEPS`` writes ``<out>/source.zarr``: a store in the layout of the published 0.25 deg ERA5 zarr
stores (WeatherBench 2, ARCO-ERA5; :func:`synthetic_era5_zarr`), so the benchmark needs no download.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from wxscale.args import parse_list
from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv
from wxscale.perf.scaling import child_env, launcher_command
from wxscale.perf.throughput import usable_cores
from wxscale.provenance import PROVENANCE_COLUMNS

COLUMNS = [
    "kind", "ranks", "launcher", "rounds", "steps", "channels", "grid", "shards", "max_shard_steps", "field_bytes",
    "wall_s", "wall_s_launch",
    "gb_per_s", "gb_per_s_launch", "gb_per_s_per_rank", "speedup", "efficiency", "ratio_to_read", "threads_per_rank",
    "cores", "oversubscribed",
] + PROVENANCE_COLUMNS


def synthetic_era5_zarr(
    path: str | Path,
    n_steps: int,
    *,
    start: str = "2000-12-31T00",
    dhours: int = 6,
    levels: tuple[int, ...] = (500, 850),
    level_vars: tuple[str, ...] = ("geopotential",),
    surface_vars: tuple[str, ...] = ("2m_temperature",),
    grid: tuple[int, int] = (721, 1440),
    seed: int = 0,
) -> Path:
    """A zarr store in the layout of WeatherBench 2's 0.25 deg ERA5 (and ARCO-ERA5): dims ``time``, ``level``
    (hPa), ``latitude`` ascending -90..90 with both poles (721 rows), ``longitude`` 0..359.75; variables on
    pressure levels [time, level, latitude, longitude] and at the surface, float32, one chunk per time step.
    Smooth travelling waves plus noise, every step distinct. Written a step at a time (bounded memory)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    n_lat, n_lon = grid
    lat = np.linspace(-90.0, 90.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    times = np.datetime64(start, "ns") + np.arange(n_steps) * np.timedelta64(dhours, "h")
    phase = np.radians(lon)[None, :]
    coslat = np.cos(np.radians(lat))[:, None]
    names = [(v, lev) for v in level_vars for lev in levels] + [(v, None) for v in surface_vars]
    amp = {key: (rng.uniform(1e2, 1e4), rng.uniform(1, 50), rng.integers(1, 6)) for key in names}
    for t in range(n_steps):
        data = {}
        for var in level_vars:
            fields = []
            for lev in levels:
                base, scale, k = amp[(var, lev)]
                fields.append(base + scale * coslat * np.cos(k * phase - 0.1 * t) + rng.standard_normal((n_lat, n_lon)))
            data[var] = (("time", "level", "latitude", "longitude"), np.stack(fields)[None].astype(np.float32))
        for var in surface_vars:
            base, scale, k = amp[(var, None)]
            field = base + scale * coslat * np.cos(k * phase - 0.1 * t) + rng.standard_normal((n_lat, n_lon))
            data[var] = (("time", "latitude", "longitude"), field[None].astype(np.float32))
        coords = {"time": times[t : t + 1], "latitude": lat, "longitude": lon}
        if level_vars:
            coords["level"] = ("level", np.asarray(levels, np.int64), {"units": "hPa"})
        step = xr.Dataset(data, coords=coords)
        if t == 0:  # zarr format 2 with consolidated metadata, as the published stores
            encoding = {v: {"chunks": step[v].shape} for v in step.data_vars}
            encoding["time"] = {"units": "hours since 1970-01-01", "dtype": "int64"}
            step.to_zarr(path, mode="w", encoding=encoding, consolidated=True, zarr_format=2)
        else:
            step.to_zarr(path, append_dim="time", consolidated=True, zarr_format=2)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="inputs as for wxscale prep")
    src.add_argument("--synthetic", type=int, metavar="STEPS",
                     help="write a 0.25 deg ERA5-layout zarr of STEPS 6-hourly steps into <out>/source.zarr")
    parser.add_argument("--levels", default="500,850", help="--synthetic: pressure levels (default 500,850)")
    parser.add_argument("--grid", default="721x1440", help="--synthetic: LATxLON (default 721x1440, 0.25 deg)")
    parser.add_argument("--vars", help="channels, as for wxscale prep")
    parser.add_argument("--splits", help="as for wxscale prep (default: prep's; --synthetic: by whole days)")
    parser.add_argument("--shard-mb", type=float, metavar="MB",
                        help="as for wxscale prep: smaller shards spread the work over more ranks")
    parser.add_argument("--ranks", default="1,2", help="rank counts to launch prep with (default 1,2)")
    parser.add_argument("--rounds", type=int, default=2, help="repeats, each kind's fastest kept (default 2)")
    parser.add_argument("--launcher", choices=["mpiexec", "srun"], default="mpiexec")
    parser.add_argument("--launcher-args", default="", help="more arguments for the launcher, as is")
    parser.add_argument("--timeout-s", type=float, default=3600, help="per launch (default 3600)")
    parser.add_argument("--out", default="out/bench_prep", help="output dir (default out/bench_prep)")


def _prep_args(args: argparse.Namespace, inputs: list[str], splits: str | None) -> list[str]:
    extra = []
    if args.vars:
        extra += ["--vars", args.vars]
    if splits:
        extra += ["--splits", splits]
    if args.shard_mb is not None:
        extra += ["--shard-mb", f"{args.shard_mb:g}"]
    return ["--input", *inputs, *extra]


def plain_read(inputs: list[str], variables: str | None, splits: str | None) -> dict:
    """Read every step prep would write through prep's read path, nothing else: (steps, bytes, seconds)."""
    from wxscale.data_prep.prep import plan_dataset
    from wxscale.data_prep.reader import open_inputs, parse_vars

    t0 = time.perf_counter()
    ds, notes = open_inputs(inputs)
    plan = plan_dataset(ds, "bench", variables=parse_vars(variables), splits=splits, coarsen=1, compress=None,
                        notes=notes)
    n_bytes = steps = 0
    for shard in plan.shards:
        for a, b, x in plan.blocks(shard.i0, shard.i1):
            n_bytes += x.nbytes
            steps += b - a
    return {"steps": steps, "field_bytes": n_bytes, "wall_s": time.perf_counter() - t0,
            "channels": plan.n_channels, "grid": f"{plan.grid[0]}x{plan.grid[1]}"}


def _warm(inputs: list[str]) -> None:
    for p in map(Path, inputs):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["read (1 process)" if r["kind"] == "read" else f"prep, {r['ranks']} rank(s)" for r in rows]
    rates = [r["gb_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(labels, rates, color=["0.6" if r["kind"] == "read" else "C0" for r in rows])
    for bar, rate in zip(bars, rates, strict=True):
        ax.annotate(f"{rate:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    first = rows[0]
    ax.set_ylabel("GB/s")
    ax.set_title(f"wxscale prep: {first['steps']} steps x {first['channels']} channels on {first['grid']}")
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    from wxscale.provenance import provenance

    ranks = sorted(set(parse_list(args.ranks, "--ranks", int)))
    if ranks[0] < 1:
        raise WxscaleError(f"--ranks {args.ranks}: rank counts must be >= 1")
    if args.rounds < 1:
        raise WxscaleError("--rounds must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = args.splits
    if args.synthetic is not None:
        if args.synthetic < 12:
            raise WxscaleError("--synthetic: at least 12 steps (3 days), so every split gets whole days")
        try:
            grid = tuple(int(v) for v in args.grid.lower().split("x"))
            assert len(grid) == 2
        except (ValueError, AssertionError):
            raise WxscaleError(f"--grid {args.grid!r}: give LATxLON, e.g. 721x1440") from None
        source = out / "source.zarr"
        print(f"writing {source}: {args.synthetic} steps on {grid[0]}x{grid[1]}", file=sys.stderr)
        synthetic_era5_zarr(source, args.synthetic, levels=tuple(parse_list(args.levels, "--levels", int)),
                            grid=grid)
        inputs = [str(source)]
        days = args.synthetic * 6 // 24
        first = np.datetime64("2000-12-31")
        n_valid = max(1, days // 10)
        splits = splits or (f"train={first}:{first + days - 2 * n_valid - 1},"
                            f"valid={first + days - 2 * n_valid}:{first + days - n_valid - 1},"
                            f"test={first + days - n_valid}:{first + days - 1}")
    else:
        inputs = list(args.input)
    _warm(inputs)
    cores = usable_cores()
    prov = provenance("cpu")
    runs: list[dict] = []
    for rnd in range(args.rounds):
        r = plain_read(inputs, args.vars, splits)
        runs.append({**r, "kind": "read", "ranks": 1, "launcher": "", "wall_s_launch": r["wall_s"], "round": rnd})
        for n in ranks:
            data = out / f"ranks_{n}" / "data"
            threads = max(1, cores // n)
            cmd = launcher_command(args.launcher, n, args.launcher_args)
            if args.launcher == "srun" and "--mpi" not in args.launcher_args:
                cmd.append("--mpi=pmi2")
            cmd += [sys.executable, "-m", "wxscale.cli", "prep", *_prep_args(args, inputs, splits), "--out",
                    str(data), "--overwrite", "--no-progress"]
            log = out / f"ranks_{n}.log"
            print(f"round {rnd + 1}, {n} rank(s): {shlex.join(cmd)}", file=sys.stderr)
            t0 = time.perf_counter()
            with open(log, "w") as fh:
                try:
                    proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout_s,
                                          env=child_env(args.launcher, threads))
                except subprocess.TimeoutExpired:
                    raise WxscaleError(f"the {n}-rank prep ran past --timeout-s {args.timeout_s}; see {log}") from None
            launch_s = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                raise WxscaleError(f"the {n}-rank prep failed (exit {proc.returncode}); the end of {log}:\n{tail}")
            meta = json.loads((data / "data.json").read_text())
            writing = meta["source"]["writing"]
            runs.append({"kind": "prep", "ranks": meta["source"]["ranks"], "launcher": args.launcher, "round": rnd,
                         "steps": sum(s["n_steps"] for s in meta["shards"]), "field_bytes": writing["field_bytes"],
                         "shards": len(meta["shards"]), "max_shard_steps": meta["source"]["max_shard_steps"],
                         "wall_s": writing["wall_s"], "wall_s_launch": launch_s,
                         "channels": len(meta["coords"]["channel"]),
                         "grid": f"{len(meta['coords']['lat'])}x{len(meta['coords']['lon'])}",
                         "threads_per_rank": threads})
    rows = summarise(runs, cores, args.rounds)
    for row in rows:
        row.update(prov)
    write_csv(out / "prep_bench.csv", rows, COLUMNS)
    plot(rows, out / "prep_bench.png")
    print(f"{'kind':<6}{'ranks':>6}{'GB/s':>9}{'GB/s launch':>13}{'speedup':>9}{'vs read':>9}")
    for r in rows:
        print(f"{r['kind']:<6}{r['ranks']:>6}{r['gb_per_s']:>9.3f}{r['gb_per_s_launch']:>13.3f}"
              f"{r['speedup'] if r['speedup'] != '' else float('nan'):>9.2f}{r['ratio_to_read']:>9.2f}")
    print(f"wrote {out / 'prep_bench.csv'} and {out / 'prep_bench.png'}")
    return 0


def summarise(runs: list[dict], cores: int, rounds: int) -> list[dict]:
    """One row per kind and rank count: its fastest round, with speedup, efficiency and the ratio to read."""
    frame = pd.DataFrame(runs)
    frame["gb_per_s"] = frame["field_bytes"] / frame["wall_s"] / 1e9
    frame["gb_per_s_launch"] = frame["field_bytes"] / frame["wall_s_launch"] / 1e9
    best = frame.loc[frame.groupby(["kind", "ranks"])["gb_per_s"].idxmax()].sort_values(["kind", "ranks"],
                                                                                        ascending=[False, True])
    read_rate = float(best.loc[best["kind"] == "read", "gb_per_s"].iloc[0])
    prep = best[best["kind"] == "prep"]
    r0 = int(prep["ranks"].min()) if len(prep) else 1
    base = float(prep.loc[prep["ranks"] == r0, "gb_per_s"].iloc[0]) if len(prep) else float("nan")
    rows = []
    for rec in best.to_dict("records"):
        is_prep = rec["kind"] == "prep"
        n = int(rec["ranks"])
        speedup = rec["gb_per_s"] / base if is_prep else ""
        threads = int(rec["threads_per_rank"]) if is_prep and rec.get("threads_per_rank") == rec.get(
            "threads_per_rank") else 1
        rows.append({**{k: v for k, v in rec.items() if k != "round"}, "rounds": rounds,
                     "gb_per_s_per_rank": rec["gb_per_s"] / n, "speedup": speedup,
                     "efficiency": speedup / (n / r0) if is_prep else "", "ratio_to_read": rec["gb_per_s"] / read_rate,
                     "threads_per_rank": threads, "cores": cores, "oversubscribed": str(n * threads > cores)})
    return rows
