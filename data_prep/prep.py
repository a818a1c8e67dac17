"""`wxscale prep`: raw reanalysis files or the built-in simulator -> a dataset dir (ARCHITECTURE.md).

Both sources go through :func:`write_dataset`, the one path to a dataset dir:

1. normalise the Dataset (data_prep.reader) and pick the channels (`--vars z500,t850`);
2. check the time axis: sort it if needed (said in the notes), refuse duplicated or irregular steps or a
   single step, find the step `dhours` (the most common one) and record every gap;
3. cut it into splits (`--splits`, or 80/10/10 by time at whole days) and each split into shards by calendar
   year (and at most MAX_SHARD_BYTES);
4. stream time blocks of at most BLOCK_BYTES from the input to the shards, filling NaN when `--fill mean` asks
   for it (a first pass over the train split finds the fill values), and accumulate the train statistics on
   the way: per-channel mean, std, std of one-step differences (WeatherBench 2 / FourCastNet-style
   normalisation and the residual scaling of Keisler 2022), and a day-of-year x hour climatology for ACC
   (Rasp et al. 2024) when the train split covers at least a year;
5. write stats.h5 and data.json with checksums and provenance, inside a temporary dir renamed at the end.

Statistics describe what the shards hold (after coarsening and filling), unweighted over grid points and time,
population std (ddof 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from wxscale.data_prep.layout import (
    SPLITS,
    STATS_H5,
    DatasetMeta,
    ShardInfo,
    ShardWriter,
    Stats,
    hours_since_epoch,
    hours_to_datetime64,
    iso,
    sha256_file,
    valid_sample_starts,
    write_stats,
)
from wxscale.data_prep.reader import (
    channel_specs,
    normalise,
    open_inputs,
    parse_vars,
    read_channels,
    select_channels,
)
from wxscale.errors import WxscaleError
from wxscale.files import atomic_output_dir, write_json_atomic
from wxscale.provenance import suite_version

BLOCK_BYTES = 64 << 20  # one time block read from the input, float32
MAX_SHARD_BYTES = 2 << 30  # a calendar year of one split is cut further when larger than this
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # train, valid, test by time when --splits is not given
CLIM_WINDOW_DAYS = 15  # climatology smoothed over +-7 days (WeatherBench 2 uses a 61-day window on 40 years)
CLIM_MAX_BYTES = 4 << 30  # skip the climatology (and say so) when its accumulator would exceed this


# ------------------------------------------------------------------------------------------------------------
# time axis


@dataclasses.dataclass
class TimeAxis:
    hours: np.ndarray  # int64 hours since 1970, sorted
    order: np.ndarray | None  # permutation that sorts the input, None when it was sorted
    dhours: int
    gaps: list[dict]


def _show(hours: np.ndarray, n: int = 3) -> str:
    s = ", ".join(iso(h) for h in hours[:n])
    return s + (f" and {len(hours) - n} more" if len(hours) > n else "")


def check_time_axis(ds: xr.Dataset, where: str) -> TimeAxis:
    """Sort (saying so); refuse what cannot be a sequence of states: no axis, one step, repeats, irregular."""
    if "time" not in ds.dims:
        if "time" in ds.coords:
            raise WxscaleError(
                f"{where}: only one time step ({ds['time'].values}); a sample needs two consecutive steps"
            )
        raise WxscaleError(
            f"{where}: no time axis (dims are {dict(ds.sizes)}); wxscale needs a `time` dimension"
        )
    t = ds["time"].values
    if not np.issubdtype(t.dtype, np.datetime64):
        raise WxscaleError(
            f"{where}: time values are {t.dtype}, not dates; the time units attribute may be missing"
        )
    try:
        hours = hours_since_epoch(t)
    except WxscaleError as err:
        raise WxscaleError(f"{where}: {err} (sub-hourly data: resample to whole hours first)") from err
    if len(hours) < 2:
        raise WxscaleError(
            f"{where}: only one time step ({_show(hours)}); a sample needs at least two consecutive steps"
        )
    order = None
    if np.any(np.diff(hours) < 0):
        order = np.argsort(hours, kind="stable")
        hours = hours[order]
    step = np.diff(hours)
    if np.any(step == 0):
        dup = np.unique(hours[1:][step == 0])
        raise WxscaleError(
            f"{where}: {len(dup)} duplicated time(s): {_show(dup)}; pass each time step once "
            "(overlapping files, or a forecast `step` mixed with analyses?)"
        )
    values, counts = np.unique(step, return_counts=True)
    dhours = int(values[np.argmax(counts)])
    bad = np.flatnonzero(step % dhours)
    if len(bad):
        examples = ", ".join(f"{iso(hours[i])} -> {iso(hours[i + 1])} ({step[i]} h)" for i in bad[:3])
        raise WxscaleError(
            f"{where}: irregular time axis: the most common step is {dhours} h but {len(bad)} step(s) are "
            f"not a multiple of it, e.g. {examples}; resample to a regular step first"
        )
    gaps = [
        {"after": iso(hours[i]), "before": iso(hours[i + 1]), "hours": int(step[i])}
        for i in np.flatnonzero(step > dhours)
    ]
    return TimeAxis(hours, order, dhours, gaps)


# ------------------------------------------------------------------------------------------------------------
# splits


def _period(text: str, flag: str) -> tuple[int, int]:
    """'2000', '2000-06', '2000-06-30', '2000-06-30T12' -> (first hour, last hour) of that period."""
    text = text.strip()
    try:
        value = np.datetime64(text)
    except ValueError as err:
        raise WxscaleError(
            f"{flag}: cannot read {text!r} as a year or an ISO date (e.g. 2000 or 2000-06-30)"
        ) from err
    unit = np.datetime_data(value.dtype)[0]
    if unit in ("m", "s", "ms", "us", "ns"):
        value = value.astype("datetime64[h]")
        unit = "h"
    start = int(hours_since_epoch(np.array([value]))[0])
    end = int(hours_since_epoch(np.array([value + np.timedelta64(1, unit)]))[0]) - 1
    return start, end


def _range(value: object, flag: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _period(str(value[0]), flag)[0], _period(str(value[1]), flag)[1]
    text = str(value)
    a, sep, b = text.partition(":")
    # "2000-01-01T06:00" would split on the time's colon: only split when both sides read as dates
    if sep and re.fullmatch(r"[\d\-T]+", a.strip()) and re.fullmatch(r"[\d\-T]+", b.strip()):
        return _period(a, flag)[0], _period(b, flag)[1]
    return _period(text, flag)


def parse_splits(spec: str | dict) -> dict[str, tuple[int, int]]:
    """`train=2000:2001,valid=2002,test=2003` (years, inclusive) or ISO ranges -> {split: (first, last h)}."""
    flag = "--splits"
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, value = part.partition("=")
            if not eq:
                raise WxscaleError(f"{flag}: {part!r} is not NAME=RANGE (e.g. train=2000:2001,valid=2002)")
            items[name.strip()] = value
        spec = items
    ranges = {}
    for name, value in spec.items():
        if name not in SPLITS:
            raise WxscaleError(f"{flag}: unknown split {name!r}; use {', '.join(SPLITS)}")
        ranges[name] = _range(value, f"{flag} {name}")
        if ranges[name][1] < ranges[name][0]:
            raise WxscaleError(f"{flag} {name}: the range ends before it starts ({value})")
    if "train" not in ranges:
        raise WxscaleError(
            f"{flag}: no train split; statistics come from it (e.g. train=2000:2001,valid=2002)"
        )
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if ranges[a][0] <= ranges[b][1] and ranges[b][0] <= ranges[a][1]:
                raise WxscaleError(f"{flag}: splits {a} and {b} overlap; each time step belongs to one split")
    return ranges


def default_splits(hours: np.ndarray) -> dict[str, tuple[int, int]]:
    """80/10/10 by time, the cuts moved back to the previous midnight (UTC) so no day is split."""
    t0, t1 = int(hours[0]), int(hours[-1])
    cuts = np.cumsum(DEFAULT_FRACTIONS)[:2]
    c1, c2 = (int(t0 + f * (t1 - t0)) // 24 * 24 for f in cuts)
    return {"train": (t0, c1 - 1), "valid": (c1, c2 - 1), "test": (c2, t1)}


def year_splits(ds: xr.Dataset) -> str | None:
    """By calendar year: the last year tests, the one before validates, the rest trains (None: < 3 years)."""
    years = np.unique(np.asarray(ds["time"].values).astype("datetime64[Y]").astype(int) + 1970)
    if len(years) < 3:
        return None
    return f"train={years[0]}:{years[-3]},valid={years[-2]},test={years[-1]}"


def _split_indices(
    ranges: dict[str, tuple[int, int]], axis: TimeAxis, where: str, policy: str
) -> dict[str, tuple[int, int]]:
    """{split: (i0, i1)} index ranges into the sorted time axis, each split holding at least one sample."""
    hours, out = axis.hours, {}
    for name, (lo, hi) in ranges.items():
        i0, i1 = int(np.searchsorted(hours, lo)), int(np.searchsorted(hours, hi, side="right"))
        span = f"{iso(lo)}..{iso(hi)}"
        have = f"the input has {len(hours)} steps every {axis.dhours} h, {iso(hours[0])}..{iso(hours[-1])}"
        if i1 - i0 == 0:
            raise WxscaleError(
                f"{where}: split {name!r} ({span}, {policy}) is empty: {have}. Pass --splits with ranges "
                f"inside the data, e.g. {_example_splits(hours)}"
            )
        if len(valid_sample_starts(hours[i0:i1], axis.dhours, 1)) == 0:
            raise WxscaleError(
                f"{where}: split {name!r} ({span}, {policy}) holds {i1 - i0} step(s) but no two "
                f"consecutive ones, so no sample: {have}. Too few steps; pass --splits with longer ranges"
            )
        out[name] = (i0, i1)
    return out


def _example_splits(hours: np.ndarray) -> str:
    """A --splits value that fits the data: the last day validates, the days before train."""
    days = np.unique(hours_to_datetime64(hours).astype("datetime64[D]"))
    if len(days) < 2:
        return "train=<first part>,valid=<last part> as ISO times, e.g. train=2000-01-01T00:2000-01-01T12"
    first = str(days[0]) if len(days) == 2 else f"{days[0]}:{days[-2]}"
    return f"train={first},valid={days[-1]}"


def _shard_ranges(hours: np.ndarray, i0: int, i1: int, max_steps: int) -> list[tuple[int, int]]:
    """Cut [i0, i1) at calendar-year boundaries and every max_steps steps."""
    years = hours_to_datetime64(hours[i0:i1]).astype("datetime64[Y]").astype(np.int64)
    cuts = [i0, *(i0 + 1 + np.flatnonzero(np.diff(years))).tolist(), i1]
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        out += [(s, min(s + max_steps, b)) for s in range(a, b, max_steps)]
    return out


# ------------------------------------------------------------------------------------------------------------
# statistics, streamed


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged block by block (Chan et al. 1979)."""

    def __init__(self, n_channels: int):
        self.n = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def add(self, x: np.ndarray) -> None:  # x [T, C, lat, lon]
        if x.shape[0] == 0:
            return
        nb = x.size // x.shape[1]
        mb, m2b = np.empty(x.shape[1]), np.empty(x.shape[1])
        for c in range(x.shape[1]):  # one channel at a time in float64: a bounded temporary
            xc = x[:, c].astype(np.float64).ravel()
            mb[c] = xc.mean()
            xc -= mb[c]
            m2b[c] = np.dot(xc, xc)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


class _Climatology:
    """Sums by (day of year 0..365, hour of day) for the ACC climatology, smoothed over a window of days."""

    def __init__(self, clim_hours: np.ndarray, shape: tuple[int, ...]):
        self.clim_hours = clim_hours
        # float32 sums: each (day, hour) sums one value per train year, far from float32's precision limit
        self.sums = np.zeros((366, len(clim_hours), *shape), dtype=np.float32)
        self.counts = np.zeros((366, len(clim_hours)))

    def add(self, x: np.ndarray, hours: np.ndarray) -> None:
        t = hours_to_datetime64(hours)
        doy = (t.astype("datetime64[D]") - t.astype("datetime64[Y]")).astype(int)
        hod = np.searchsorted(self.clim_hours, (hours % 24).astype(int))
        for i in range(len(hours)):
            self.sums[doy[i], hod[i]] += x[i]
            self.counts[doy[i], hod[i]] += 1

    def result(self, window_days: int) -> tuple[np.ndarray, int]:
        """The smoothed climatology [doy, hour, C, lat, lon], and how many (day, hour) entries had no data in
        their window and were copied from the nearest day that has (e.g. the gaps between trajectories)."""
        half = window_days // 2
        clim, counts = np.zeros_like(self.sums), np.zeros_like(self.counts)
        for k in range(-half, half + 1):  # circular running sum over days, in place (no rolled copies)
            m = k % 366  # out[d] += src[(d + k) mod 366], as two slices
            for out, src in ((clim, self.sums), (counts, self.counts)):
                out[: 366 - m] += src[m:]
                if m:
                    out[366 - m :] += src[:m]
        clim /= np.maximum(counts, 1).reshape(*counts.shape, *([1] * (clim.ndim - 2))).astype(np.float32)
        n_empty = 0
        for h in range(counts.shape[1]):
            have = np.flatnonzero(counts[:, h] > 0)
            for d in np.flatnonzero(counts[:, h] == 0):
                dist = np.abs(have - d)
                clim[d, h] = clim[have[np.argmin(np.minimum(dist, 366 - dist))], h]  # circular distance
                n_empty += 1
        return clim.astype(np.float32, copy=False), n_empty


# ------------------------------------------------------------------------------------------------------------
# helpers


def _coarsen(x: np.ndarray, n: int) -> np.ndarray:
    """Integer block mean over lat and lon; a block with a NaN stays NaN (the fill policy decides later)."""
    if n == 1:
        return x
    t, c, h, w = x.shape
    return x.reshape(t, c, h // n, n, w // n, n).mean(axis=(3, 5))



def checksum_input(path: str | os.PathLike) -> dict:
    """Provenance of one input: absolute path, size, sha256 (of every file, in order, for a zarr dir)."""
    p = Path(path).resolve()
    if p.is_dir():
        import hashlib

        h, size = hashlib.sha256(), 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(bytes.fromhex(sha256_file(f)))
            size += f.stat().st_size
        return {"path": str(p), "bytes": size, "sha256": h.hexdigest(), "kind": "dir"}
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _say(msg: str) -> None:
    print(f"wxscale prep: {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# the one path to a dataset dir


def write_dataset(
    ds: xr.Dataset,
    out: Path,
    *,
    splits: str | dict | None = None,
    variables: list[str] | None = None,
    coarsen: int = 1,
    fill: str = "none",
    compress: str | None = None,
    overwrite: bool = False,
    name: str | None = None,
    source: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write `ds` (dims time, lat, lon and optionally level) as a dataset dir at `out`; returns `out`.

    splits: "train=2000:2001,valid=2002,test=2003", ISO ranges, a dict {split: range}, or None for 80/10/10 by
    time. variables: channel names (z500) or variable names (z: all its levels); None for all. coarsen:
    integer block mean over lat and lon. fill: "none" refuses NaN, "mean" fills with the train mean of each
    grid point (the channel mean where a point is never valid). compress: None, "lzf" or "gzip". source:
    provenance to record (inputs, checksums, command); tool version, policies and notes are added here.
    Raises WxscaleError for input it cannot turn into a valid dataset; nothing is left at `out` then.
    """
    out = Path(out)
    source = dict(source or {})
    where = (
        ", ".join(Path(i["path"]).name for i in source.get("inputs", []))
        or source.get("builtin")
        or "dataset"
    )
    if fill not in ("none", "mean"):
        raise WxscaleError(f"--fill {fill!r}: use none (refuse NaN) or mean (fill with the train mean)")
    if compress not in (None, "lzf", "gzip"):
        raise WxscaleError(f"--compress {compress!r}: use lzf or gzip (or leave it out)")
    if int(coarsen) != coarsen or coarsen < 1:
        raise WxscaleError(f"--coarsen {coarsen}: must be a positive integer")
    if out.exists() and not overwrite:  # fail before the work; atomic_output_dir checks again at the end
        raise WxscaleError(f"output dir {out} exists; pass --overwrite to replace it, or choose another path")

    ds, notes = normalise(ds, where=where)
    notes = list(source.pop("notes", [])) + notes
    channels = select_channels(ds, variables, where)
    if variables is None:
        unusable = channel_specs(ds)[1]
        if unusable:
            notes.append(f"{where}: left out " + "; ".join(f"{k} ({v})" for k, v in unusable.items()))
    axis = check_time_axis(ds, where)
    if axis.order is not None:
        ds = ds.isel(time=axis.order)
        notes.append(f"{where}: time axis was not in order; sorted it")
    n_lat, n_lon = ds.sizes["lat"], ds.sizes["lon"]
    if n_lat % coarsen or n_lon % coarsen:
        raise WxscaleError(
            f"--coarsen {coarsen} does not divide the grid (lat {n_lat} points, lon {n_lon} points); wxscale "
            "refuses rather than trims: choose a factor that divides both"
        )
    lat = ds["lat"].values.reshape(-1, coarsen).mean(axis=1)
    lon = ds["lon"].values.reshape(-1, coarsen).mean(axis=1)

    # splits and shards
    if splits is None:
        ranges, policy = default_splits(axis.hours), "default: 80/10/10 by time, cut at midnight UTC"
        spec_text = None
    else:
        ranges, policy = parse_splits(splits), "--splits"
        spec_text = splits if isinstance(splits, str) else {k: str(v) for k, v in splits.items()}
    try:
        index = _split_indices(ranges, axis, where, policy)
    except WxscaleError as err:
        if splits is not None:
            raise
        raise WxscaleError(
            f"{where}: too few time steps for the default split ({policy}): {len(axis.hours)} steps every "
            f"{axis.dhours} h over {(axis.hours[-1] - axis.hours[0]) / 24:g} days leave a split without a "
            f"sample. Pass --splits, e.g. {_example_splits(axis.hours)}"
        ) from err
    used = sum(i1 - i0 for i0, i1 in index.values())
    if used < len(axis.hours):
        notes.append(f"{len(axis.hours) - used} time step(s) fall in no split and are left out")
    step_bytes = len(channels) * n_lat * n_lon * 4
    block_steps = max(1, BLOCK_BYTES // step_bytes)
    shard_steps = max(1, MAX_SHARD_BYTES // max(1, step_bytes // coarsen**2))
    plan: list[tuple[str, str, int, int]] = []  # (split, relative path, i0, i1)
    for split in SPLITS:
        if split in index:
            for k, (a, b) in enumerate(_shard_ranges(axis.hours, *index[split], shard_steps)):
                plan.append((split, f"{split}/{k:03d}.h5", a, b))

    def blocks(i0: int, i1: int):
        for a in range(i0, i1, block_steps):
            b = min(a + block_steps, i1)
            yield a, b, _coarsen(read_channels(ds, channels, slice(a, b)), coarsen)

    n_train = index["train"][1] - index["train"][0]
    total = sum(b - a for _, _, a, b in plan) + (n_train if fill == "mean" else 0)
    bar = tqdm(total=total, unit="step", desc="prep", disable=not progress, dynamic_ncols=True)
    grid = (len(lat), len(lon))

    # pass 1 (only for --fill mean): the train mean at each grid point
    fill_values = None
    if fill == "mean":
        s = np.zeros((len(channels), *grid))
        c = np.zeros((len(channels), *grid))
        for a, b, x in blocks(*index["train"]):
            ok = np.isfinite(x)
            s += np.where(ok, x, 0).sum(axis=0)
            c += ok.sum(axis=0)
            bar.update(b - a)
        per_channel = s.sum(axis=(1, 2)) / np.maximum(c.sum(axis=(1, 2)), 1)
        never = [ch.name for ch, n in zip(channels, c.sum(axis=(1, 2)), strict=True) if n == 0]
        if never:
            raise WxscaleError(
                f"{where}: channel(s) {never} have no valid value in the train split; drop them (--vars)"
            )
        fill_values = np.where(c > 0, s / np.maximum(c, 1), per_channel[:, None, None]).astype(np.float32)

    # climatology only when the train split covers a year: fewer days leave days of the year unseen
    train_h = axis.hours[index["train"][0] : index["train"][1]]
    train_span_days = (train_h[-1] - train_h[0] + axis.dhours) / 24
    clim_hours = np.unique(train_h % 24)
    clim_bytes = 366 * len(clim_hours) * len(channels) * grid[0] * grid[1] * 4 * 2  # sums + smoothed
    clim_info: dict = {"window_days": CLIM_WINDOW_DAYS, "hours_of_day": clim_hours.tolist()}
    if train_span_days < 365:
        clim_info["skipped"] = f"train split covers {train_span_days:.1f} days, less than a year"
    elif clim_bytes > CLIM_MAX_BYTES:
        clim_info["skipped"] = (
            f"it would need {clim_bytes / 2**30:.1f} GiB (limit {CLIM_MAX_BYTES / 2**30:.0f} GiB)"
        )
    clim = None if "skipped" in clim_info else _Climatology(clim_hours, (len(channels), *grid))
    if clim is None:
        notes.append(f"no ACC climatology: {clim_info['skipped']}")

    moments, diffs = _Moments(len(channels)), _Moments(len(channels))
    bad = {split: np.zeros(len(channels), dtype=np.int64) for split in index}
    n_values = {split: 0 for split in index}
    filled = np.zeros(len(channels), dtype=np.int64)
    shards: list[ShardInfo] = []
    prev: tuple[np.ndarray, int] | None = None  # last train step, for differences across block boundaries
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for split, rel, i0, i1 in plan:
            (tmp / split).mkdir(exist_ok=True)
            bar.set_postfix_str(rel)
            writer = ShardWriter(tmp / rel, len(channels), grid, compress)
            try:
                for a, b, x in blocks(i0, i1):
                    hours = axis.hours[a:b]
                    nonfinite = ~np.isfinite(x)
                    bad[split] += nonfinite.sum(axis=(0, 2, 3))
                    n_values[split] += x[:, 0].size
                    if fill_values is None and any(v.any() for v in bad.values()):
                        bar.update(b - a)
                        continue  # doomed: keep counting so the error can say how many, write nothing
                    if nonfinite.any():
                        filled += nonfinite.sum(axis=(0, 2, 3))
                        x = np.where(nonfinite, fill_values[None], x)
                    writer.append(x, hours)
                    if split == "train":
                        moments.add(x)
                        # one-step differences within regular segments only, and across the block boundary
                        step_ok = np.diff(hours) == axis.dhours
                        d = x[1:] - x[:-1]
                        diffs.add(d if step_ok.all() else d[step_ok])
                        if prev is not None and hours[0] - prev[1] == axis.dhours:
                            diffs.add(x[:1] - prev[0][None])
                        prev = (x[-1].copy(), int(hours[-1]))
                        if clim is not None:
                            clim.add(x, hours)
                    bar.update(b - a)
            finally:
                writer.close()
            shards.append(ShardInfo(rel, split, i1 - i0, iso(axis.hours[i0]), iso(axis.hours[i1 - 1]), ""))
        bar.close()

        if fill_values is None and any(v.any() for v in bad.values()):
            total_bad = sum(bad.values())
            total_n = sum(n_values.values())
            per = "; ".join(
                f"{ch.name}: {n:,} of {total_n:,} values ({100 * n / total_n:.1f} %, "
                + ", ".join(f"{s} {bad[s][i]:,}" for s in bad if bad[s][i])
                + ")"
                for i, (ch, n) in enumerate(zip(channels, total_bad, strict=True))
                if n
            )
            raise WxscaleError(
                f"{where}: missing values (NaN) in {per}. Pass --fill mean to fill them with the train "
                "mean of each grid point (land-only or masked data), or leave those variables out with --vars"
            )
        if diffs.n == 0:
            raise WxscaleError(
                f"{where}: the train split has no two consecutive steps; widen it with --splits"
            )
        std = moments.std
        flat = [ch.name for ch, s in zip(channels, std, strict=True) if not s > 0]
        if flat:
            raise WxscaleError(
                f"{where}: channel(s) {flat} are constant over the train split "
                "(std 0); leave them out (--vars)"
            )
        climatology = None
        if clim is not None:
            climatology, clim_info["entries_from_nearest_day"] = clim.result(CLIM_WINDOW_DAYS)
        write_stats(
            tmp / STATS_H5, Stats(moments.mean, std, diffs.std, climatology, clim_hours if clim else None)
        )
        for info in shards:
            info.sha256 = sha256_file(tmp / info.path)

        split_meta = {}
        for split, (i0, i1) in index.items():
            lo, hi = ranges[split]
            split_meta[split] = {
                "start": iso(axis.hours[i0]),
                "end": iso(axis.hours[i1 - 1]),
                "range": [iso(lo), iso(hi)],
                "n_steps": i1 - i0,
                "n_shards": sum(1 for s in shards if s.split == split),
            }
        source.update(
            {
                "wxscale_version": suite_version(),
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": source.get("command", "python: data_prep.prep.write_dataset"),
                "variables_requested": variables,
                "coarsen": int(coarsen),
                "fill": {
                    "policy": fill,
                    "filled_values": {ch.name: int(n) for ch, n in zip(channels, filled, strict=True) if n},
                    "how": "train mean of each grid point; channel mean where a point is never valid"
                    if fill == "mean"
                    else "NaN refused",
                },
                "compress": compress,
                "split_policy": policy,
                "splits_spec": spec_text,
                "time": {
                    "dhours": axis.dhours,
                    "sorted_by_prep": axis.order is not None,
                    "n_gaps": len(axis.gaps),
                },
                "stats": "train split only; unweighted over time and grid points, population std; diff_std "
                "over one-step differences within regular segments",
                "climatology": clim_info,
                "notes": notes,
            }
        )
        meta = DatasetMeta(
            dataset_name=name or out.name,
            dhours=axis.dhours,
            lat=[float(v) for v in lat],
            lon=[float(v) for v in lon],
            channels=[ch.name for ch in channels],
            shards=shards,
            splits=split_meta,
            source=source,
            gaps=axis.gaps,
            channel_units={ch.name: ch.units for ch in channels if ch.units},
        )
        write_json_atomic(tmp / "data.json", meta.to_json_dict())
    for note in notes:
        _say(note)
    return out


# ------------------------------------------------------------------------------------------------------------
# command line


def _simulator():
    try:
        from wxscale.data_prep import simulator
    except ImportError:
        return None
    return simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--input", nargs="+", metavar="PATH", help="NetCDF, GRIB (*.grib) or zarr inputs, joined on time"
    )
    src.add_argument(
        "--builtin", choices=["swe"], help="the built-in shallow-water simulator instead of files"
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset dir to write")
    parser.add_argument(
        "--vars", help="channels, e.g. z500,t850,msl (a variable name alone takes all its levels)"
    )
    parser.add_argument(
        "--splits",
        help="e.g. train=2000:2001,valid=2002,test=2003 (years, inclusive) or train=2000-01-01:2000-06-30; "
        "default 80/10/10 by time (--builtin: by year)",
    )
    parser.add_argument(
        "--coarsen", type=int, default=1, metavar="N", help="integer block mean over lat and lon"
    )
    parser.add_argument(
        "--fill", choices=["none", "mean"], default="none", help="NaN policy (default: refuse)"
    )
    parser.add_argument(
        "--member", type=int, metavar="K", help="ensemble member to keep (inputs with members)"
    )
    parser.add_argument("--compress", choices=["lzf", "gzip"], help="HDF5 compression of the shards")
    parser.add_argument("--engine", help="force an xarray engine (netcdf4, h5netcdf, cfgrib, zarr)")
    parser.add_argument("--name", help="dataset_name in data.json (default: the dir name)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim = _simulator()
    if sim is not None and hasattr(sim, "add_simulator_arguments"):
        sim.add_simulator_arguments(parser)


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    command = getattr(args, "command_line", None) or shlex.join(sys.argv)
    if args.builtin:
        sim = _simulator()
        if sim is None:
            raise WxscaleError("--builtin swe: the simulator module data_prep.simulator is not available")
        cfg = sim.config_from_args(args)
        try:
            ds = sim.simulate_swe(cfg, progress=progress)
        except FloatingPointError as err:  # an unstable configuration: the message names the flags
            raise WxscaleError(f"--builtin swe: {err}") from err
        splits = args.splits or year_splits(ds)
        cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else vars(cfg)
        source = {"builtin": "swe", "simulator_config": cfg_dict, "command": command}
        for key in ("source", "simulator_version", "grid", "references", "trajectories", "physics"):
            if key in ds.attrs:
                value = ds.attrs[key]
                try:
                    value = json.loads(value) if key in ("trajectories", "physics") else value
                except (TypeError, ValueError):
                    pass
                source.setdefault("simulator", {})[key] = value
    else:
        ds, notes = open_inputs(args.input, member=args.member, engine=args.engine)
        splits = args.splits
        source = {"inputs": [checksum_input(p) for p in args.input], "command": command, "notes": notes}
        if args.member is not None:
            source["member"] = args.member
    out = write_dataset(
        ds,
        args.out,
        splits=splits,
        variables=parse_vars(args.vars),
        coarsen=args.coarsen,
        fill=args.fill,
        compress=args.compress,
        overwrite=args.overwrite,
        name=args.name,
        source=source,
        progress=progress,
    )
    from wxscale.data_prep.layout import load_meta

    meta = load_meta(out)
    counts = ", ".join(
        f"{s} {len(meta.shards_of(s))} shard(s)/{meta.splits[s]['n_steps']} steps" for s in meta.splits
    )
    _say(
        f"wrote {out}: {meta.n_channels} channels {meta.channels}, grid {meta.grid[0]}x{meta.grid[1]}, "
        f"every {meta.dhours} h, {len(meta.gaps)} gap(s); {counts}. Next: wxscale check {out}"
    )
    return 0
