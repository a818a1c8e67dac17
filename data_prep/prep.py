"""`wxscale prep`: raw reanalysis files or the built-in simulator -> a dataset dir (ARCHITECTURE.md).

Both sources go through :func:`write_dataset`, the one path to a dataset dir, which reads top to bottom:

0. :func:`check_output_dir`: refuse an --out that cannot be written, or whose replacement would delete
   anything but a dataset dir or an empty folder (before any work);
1. :func:`plan_dataset`: normalise the Dataset (data_prep.reader), pick the channels (`--vars z500,t850`),
   check the time axis (:func:`check_time_axis`: sort it if needed, said in the notes; refuse duplicated or
   irregular steps or a single step; find the step `dhours`, the most common one, and record every gap), cut
   it into splits (`--splits`, or 80/10/10 by time at whole days) and each split into shards by calendar
   year (and at most MAX_SHARD_BYTES);
2. :func:`train_fill_values`, only for `--fill mean`: a first pass over the train split;
3. :func:`write_shard` for each shard: stream time blocks of at most BLOCK_BYTES from the input, count and
   fill NaN (:class:`MissingValues`), and feed the train blocks to :class:`TrainStats`: per-channel mean,
   std, std of one-step differences (WeatherBench 2 / FourCastNet-style normalisation and the residual
   scaling of Keisler 2022), and a day-of-year x hour climatology for ACC (Rasp et al. 2024) when the train
   split covers at least a year (:func:`plan_climatology`);
4. write stats.h5 and data.json with checksums and provenance (:func:`_provenance`), inside a temporary dir
   renamed at the end.

In parallel (`mpiexec -n N wxscale prep ...`, or `srun --mpi=pmi2` in a Slurm job; the world comes from
wxscale.launch): every rank plans the same way, :func:`assign_shards` gives each a contiguous run of the shards
(balanced by steps), each streams its blocks into the shards it owns in the shared temporary dir, and the
accumulators are folded onto rank 0 in rank order, which is time order (:func:`_fold`; TrainStats.merge adds the
one-step difference across each seam), so the statistics are the serial ones to float64 round-off. For
`--fill mean` the train pass is shared out and reduced first. Rank 0 writes stats.h5 and data.json last
(`source.ranks` says how many ranks wrote the shards) and renames the dir into place. A failure on any rank
fails every rank (:func:`_together`), never leaving one waiting.

Resuming: the temporary dir carries a key (:func:`resume_key`, a hash of the inputs and the plan) and a record
per finished shard with its sha256 (:func:`record_done`, written after the shard is closed). A prep that was
killed (SIGKILL, a Slurm time limit, a lost node) and is started again with the same plan gets that dir back,
keeps each recorded shard whose checksum still matches (reading train shards back for the statistics) and
writes only the others. An error that prep catches still removes everything.

Statistics describe what the shards hold (after coarsening and filling), unweighted over grid points and time,
population std (ddof 0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import xarray as xr
from tqdm import tqdm

from wxscale.data_prep.layout import (
    DATA_JSON,
    FIELDS_KEY,
    SPLITS,
    STATS_H5,
    TIME_KEY,
    DatasetMeta,
    ShardInfo,
    ShardWriter,
    Stats,
    hours_since_epoch,
    hours_to_datetime64,
    iso,
    lon_wraps,
    sha256_file,
    valid_sample_starts,
    write_stats,
)
from wxscale.data_prep.reader import (
    Channel,
    channel_specs,
    is_zarr_store,
    normalise,
    open_inputs,
    parse_vars,
    read_channels,
    select_channels,
    zarr_store_provenance,
)
from wxscale.errors import WxscaleError
from wxscale.files import (
    RESUME_DIR,
    atomic_output_dir,
    partial_leftovers,
    resumable_partial,
    write_bytes_atomic,
    write_json_atomic,
)
from wxscale.launch import ProcessWorld, process_world
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
    """Cut [i0, i1) at calendar-year boundaries, and each year into the fewest equal parts of at most max_steps
    steps (equal, so no short remainder: a shard of one step would hold no sample, and ranks get even work)."""
    years = hours_to_datetime64(hours[i0:i1]).astype("datetime64[Y]").astype(np.int64)
    cuts = [i0, *(i0 + 1 + np.flatnonzero(np.diff(years))).tolist(), i1]
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        parts = np.linspace(a, b, -(-(b - a) // max_steps) + 1).round().astype(int).tolist()
        out += list(zip(parts, parts[1:], strict=False))
    return out


# ------------------------------------------------------------------------------------------------------------
# the plan: what will be written, decided before anything is read in bulk


@dataclasses.dataclass
class ShardPlan:
    split: str
    path: str  # relative to the dataset dir, e.g. "train/000.h5"
    i0: int  # [i0, i1) into the sorted time axis
    i1: int


@dataclasses.dataclass
class DatasetPlan:
    """The normalised source, its channels and (coarsened) grid, and its time axis cut into splits and shards.

    `blocks` is the one read path: every pass over the source (the fill values, the shards) goes through it.
    Shards cover disjoint ranges of time, so they can be written in any order, or by different processes.
    """

    ds: xr.Dataset
    where: str  # the inputs, as named in messages
    channels: list[Channel]
    axis: TimeAxis
    coarsen: int
    compress: str | None
    lat: np.ndarray
    lon: np.ndarray
    ranges: dict[str, tuple[int, int]]  # split -> (first, last hour) asked for
    index: dict[str, tuple[int, int]]  # split -> [i0, i1) into the time axis
    policy: str  # how the splits were chosen, for data.json
    spec_text: str | dict | None  # --splits as given
    shards: list[ShardPlan]
    block_steps: int  # time steps per read (BLOCK_BYTES)
    notes: list[str]

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def train_hours(self) -> np.ndarray:
        i0, i1 = self.index["train"]
        return self.axis.hours[i0:i1]

    def blocks(self, i0: int, i1: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(a, b, fields [b - a, C, lat, lon] float32) for consecutive blocks of [i0, i1), coarsened."""
        for a in range(i0, i1, self.block_steps):
            b = min(a + self.block_steps, i1)
            yield a, b, _coarsen(read_channels(self.ds, self.channels, slice(a, b)), self.coarsen)


def _coarsen(x: np.ndarray, n: int) -> np.ndarray:
    """Integer block mean over lat and lon; a block with a NaN stays NaN (the fill policy decides later)."""
    if n == 1:
        return x
    t, c, h, w = x.shape
    return x.reshape(t, c, h // n, n, w // n, n).mean(axis=(3, 5))


def plan_dataset(
    ds: xr.Dataset,
    where: str,
    *,
    variables: list[str] | None,
    splits: str | dict | None,
    coarsen: int,
    compress: str | None,
    notes: list[str],
    max_shard_bytes: int | None = None,
) -> DatasetPlan:
    """Normalise the source, pick its channels, check its time axis and cut it into splits and shards."""
    ds, normalise_notes = normalise(ds, where=where)
    notes = [*notes, *normalise_notes]
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
    ranges, policy, spec_text, index = _choose_splits(axis, splits, where)
    used = sum(i1 - i0 for i0, i1 in index.values())
    if used < len(axis.hours):
        notes.append(f"{len(axis.hours) - used} time step(s) fall in no split and are left out")
    step_bytes = len(channels) * n_lat * n_lon * 4
    # at least two steps: a shard of one holds no sample
    shard_steps = max(2, (max_shard_bytes or MAX_SHARD_BYTES) // max(1, step_bytes // coarsen**2))
    shards = [
        ShardPlan(split, f"{split}/{k:03d}.h5", a, b)
        for split in SPLITS
        if split in index
        for k, (a, b) in enumerate(_shard_ranges(axis.hours, *index[split], shard_steps))
    ]
    return DatasetPlan(
        ds=ds,
        where=where,
        channels=channels,
        axis=axis,
        coarsen=int(coarsen),
        compress=compress,
        lat=ds["lat"].values.reshape(-1, coarsen).mean(axis=1),
        lon=ds["lon"].values.reshape(-1, coarsen).mean(axis=1),
        ranges=ranges,
        index=index,
        policy=policy,
        spec_text=spec_text,
        shards=shards,
        block_steps=max(1, BLOCK_BYTES // step_bytes),
        notes=notes,
    )


def _choose_splits(
    axis: TimeAxis, splits: str | dict | None, where: str
) -> tuple[dict[str, tuple[int, int]], str, str | dict | None, dict[str, tuple[int, int]]]:
    """(ranges asked for, policy, --splits as given, index ranges): --splits, or 80/10/10 by time."""
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
    return ranges, policy, spec_text, index


# ------------------------------------------------------------------------------------------------------------
# accumulators, streamed block by block; each merges with another of its kind (one per rank or per shard)


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged block by block (Chan et al. 1979)."""

    def __init__(self, n_channels: int):
        self.n = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def add(self, x: np.ndarray) -> None:  # x [T, C, lat, lon]
        if x.shape[0] == 0:
            return
        block = _Moments(x.shape[1])
        block.n = x.size // x.shape[1]
        for c in range(x.shape[1]):  # one channel at a time in float64: a bounded temporary
            xc = x[:, c].astype(np.float64).ravel()
            block.mean[c] = xc.mean()
            xc -= block.mean[c]
            block.m2[c] = np.dot(xc, xc)
        self.merge(block)

    def merge(self, other: _Moments) -> None:
        """Chan et al.'s pairwise update: the moments of both sets of values together."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
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

    def merge(self, other: _Climatology) -> None:
        self.sums += other.sums
        self.counts += other.counts

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


def plan_climatology(plan: DatasetPlan) -> tuple[dict, _Climatology | None]:
    """(climatology record for data.json, accumulator or None when skipped, which is also noted).

    Only when the train split covers a year: fewer days leave days of the year unseen."""
    train_h = plan.train_hours()
    train_span_days = (train_h[-1] - train_h[0] + plan.axis.dhours) / 24
    clim_hours = np.unique(train_h % 24)
    clim_bytes = 366 * len(clim_hours) * plan.n_channels * plan.grid[0] * plan.grid[1] * 4 * 2  # sums + smoothed
    info: dict = {"window_days": CLIM_WINDOW_DAYS, "hours_of_day": clim_hours.tolist()}
    if train_span_days < 365:
        info["skipped"] = f"train split covers {train_span_days:.1f} days, less than a year"
    elif clim_bytes > CLIM_MAX_BYTES:
        info["skipped"] = f"it would need {clim_bytes / 2**30:.1f} GiB (limit {CLIM_MAX_BYTES / 2**30:.0f} GiB)"
    if "skipped" in info:
        plan.notes.append(f"no ACC climatology: {info['skipped']}")
        return info, None
    return info, _Climatology(clim_hours, (plan.n_channels, *plan.grid))


class TrainStats:
    """Statistics of the train split, fed its blocks in time order: mean and std, std of one-step differences
    (within regular stretches and across block and shard boundaries), and the climatology sums.

    Two accumulators over consecutive stretches of time merge (:meth:`merge`) into the one over both, the
    difference across their boundary included: how processes that each write some shards will combine.
    """

    def __init__(self, n_channels: int, dhours: int, clim: _Climatology | None):
        self.dhours = dhours
        self.moments, self.diffs, self.clim = _Moments(n_channels), _Moments(n_channels), clim
        self.first: tuple[np.ndarray, int] | None = None  # first and last state (and hour) seen
        self.last: tuple[np.ndarray, int] | None = None

    def add(self, x: np.ndarray, hours: np.ndarray) -> None:
        self.moments.add(x)
        step_ok = np.diff(hours) == self.dhours
        d = x[1:] - x[:-1]
        self.diffs.add(d if step_ok.all() else d[step_ok])
        if self.last is not None and hours[0] - self.last[1] == self.dhours:
            self.diffs.add(x[:1] - self.last[0][None])
        if self.first is None:
            self.first = (x[0].copy(), int(hours[0]))
        self.last = (x[-1].copy(), int(hours[-1]))
        if self.clim is not None:
            self.clim.add(x, hours)

    def merge(self, later: TrainStats) -> None:
        """Fold in the accumulator of the stretch of time right after this one's."""
        if later.first is None:
            return
        self.moments.merge(later.moments)
        self.diffs.merge(later.diffs)
        if self.last is not None and later.first[1] - self.last[1] == self.dhours:
            self.diffs.add((later.first[0] - self.last[0])[None])
        if self.clim is not None and later.clim is not None:
            self.clim.merge(later.clim)
        self.first = self.first or later.first
        self.last = later.last

    def result(self, plan: DatasetPlan, clim_info: dict) -> Stats:
        """stats.h5's content; refuses a train split without a sample or with a constant channel."""
        if self.diffs.n == 0:
            raise WxscaleError(f"{plan.where}: the train split has no two consecutive steps; widen it with --splits")
        std = self.moments.std
        flat = [ch.name for ch, s in zip(plan.channels, std, strict=True) if not s > 0]
        if flat:
            raise WxscaleError(
                f"{plan.where}: channel(s) {flat} are constant over the train split (std 0); leave them out (--vars)"
            )
        climatology = None
        if self.clim is not None:
            climatology, clim_info["entries_from_nearest_day"] = self.clim.result(CLIM_WINDOW_DAYS)
        return Stats(
            self.moments.mean, std, self.diffs.std, climatology, self.clim.clim_hours if self.clim else None
        )


class MissingValues:
    """NaN/inf counted per split and channel as blocks stream past, and the values filled (merge: add)."""

    def __init__(self, splits: list[str], n_channels: int):
        self.bad = {split: np.zeros(n_channels, dtype=np.int64) for split in splits}
        self.n_values = {split: 0 for split in splits}  # values per channel seen
        self.filled = np.zeros(n_channels, dtype=np.int64)

    def any(self) -> bool:
        return any(v.any() for v in self.bad.values())

    def count(self, split: str, x: np.ndarray) -> np.ndarray:
        """Count the block's non-finite values; returns their mask."""
        nonfinite = ~np.isfinite(x)
        self.bad[split] += nonfinite.sum(axis=(0, 2, 3))
        self.n_values[split] += x[:, 0].size
        return nonfinite

    def merge(self, other: MissingValues) -> None:
        for split in self.bad:
            self.bad[split] += other.bad[split]
            self.n_values[split] += other.n_values[split]
        self.filled += other.filled

    def refusal(self, plan: DatasetPlan) -> WxscaleError:
        """The error for NaN without --fill: how many per channel and split, and what helps."""
        total_bad = sum(self.bad.values())
        total_n = sum(self.n_values.values())
        per = "; ".join(
            f"{ch.name}: {n:,} of {total_n:,} values ({100 * n / total_n:.1f} %, "
            + ", ".join(f"{s} {self.bad[s][i]:,}" for s in self.bad if self.bad[s][i])
            + ")"
            for i, (ch, n) in enumerate(zip(plan.channels, total_bad, strict=True))
            if n
        )
        return WxscaleError(
            f"{plan.where}: missing values (NaN) in {per}. Pass --fill mean to fill them with the train "
            "mean of each grid point (land-only or masked data), or leave those variables out with --vars"
        )


class _FillMean:
    """Per grid point sum and count of the valid train values (merge: add)."""

    def __init__(self, n_channels: int, grid: tuple[int, int]):
        self.sums = np.zeros((n_channels, *grid))
        self.counts = np.zeros((n_channels, *grid))

    def add(self, x: np.ndarray) -> None:
        ok = np.isfinite(x)
        self.sums += np.where(ok, x, 0).sum(axis=0)
        self.counts += ok.sum(axis=0)

    def merge(self, other: _FillMean) -> None:
        self.sums += other.sums
        self.counts += other.counts

    def values(self, plan: DatasetPlan) -> np.ndarray:
        """[C, lat, lon] float32: the train mean of each point, the channel's mean where a point is never valid."""
        per_point = self.counts.sum(axis=(1, 2))
        never = [ch.name for ch, n in zip(plan.channels, per_point, strict=True) if n == 0]
        if never:
            raise WxscaleError(
                f"{plan.where}: channel(s) {never} have no valid value in the train split; drop them (--vars)"
            )
        per_channel = self.sums.sum(axis=(1, 2)) / np.maximum(per_point, 1)
        return np.where(
            self.counts > 0, self.sums / np.maximum(self.counts, 1), per_channel[:, None, None]
        ).astype(np.float32)


def train_fill_values(plan: DatasetPlan, bar: tqdm, world: ProcessWorld | None = None) -> np.ndarray:
    """Pass 1 of --fill mean: read the train split once for the fill value of each grid point (each rank a
    contiguous part of it; the sums are added up on rank 0 and the values sent to every rank)."""
    world = world or ProcessWorld()
    i0, i1 = plan.index["train"]
    cuts = np.linspace(i0, i1, world.size + 1).astype(int)

    def read_part() -> _FillMean:
        acc = _FillMean(plan.n_channels, plan.grid)
        for a, b, x in plan.blocks(cuts[world.rank], cuts[world.rank + 1]):
            acc.add(x)
            bar.update(b - a)
        return acc

    acc = _together(world, read_part)

    def merge(a: _FillMean, b: _FillMean) -> _FillMean:
        a.merge(b)
        return a

    total = _fold(world, acc, merge)
    values = _together(world, lambda: total.values(plan) if world.is_main else None)
    return world.bcast(values)


# ------------------------------------------------------------------------------------------------------------
# the output dir


def _foreign_entries(out: Path) -> list[str]:
    """What --overwrite would delete that a dataset dir does not hold: everything but data.json, stats.h5 and
    the split dirs of *.h5 shards. An empty dir has none; a dir without data.json is foreign as a whole."""
    entries = sorted(out.iterdir())
    if entries and not (out / DATA_JSON).is_file():
        return [p.name for p in entries]
    foreign = []
    for p in entries:
        if p.name in SPLITS and p.is_dir() and not p.is_symlink():
            foreign += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if q.suffix != ".h5" or not q.is_file()]
        elif p.name not in (DATA_JSON, STATS_H5) or not p.is_file():
            foreign.append(p.name)
    return foreign


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that cannot be written or whose replacement would lose files.

    --overwrite replaces only a dataset dir (data.json, stats.h5, split dirs of shards) or an empty dir.
    """
    cwd = Path.cwd().resolve()
    resolved = out.resolve()
    if not resolved.name or resolved == cwd or resolved in cwd.parents:
        raise WxscaleError(
            f"--out {out}: that is the current folder or one above it, which prep cannot replace; give the "
            "dataset a folder of its own, e.g. --out ./mydata"
        )
    if out.is_symlink() or out.exists():
        if not overwrite:
            raise WxscaleError(
                f"output dir {out} exists; pass --overwrite to replace it, or choose another path"
            )
        if out.is_symlink() or not out.is_dir():
            kind = "a symbolic link" if out.is_symlink() else "a file"
            raise WxscaleError(
                f"--out {out} is {kind}, not a dataset dir; --overwrite replaces only a dataset dir (one with "
                f"{DATA_JSON}) or an empty folder. Remove it yourself or choose another path"
            )
        foreign = _foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            what = "is not a dataset dir (no data.json) and not empty" if not (out / DATA_JSON).is_file() else (
                "holds files that are not part of a dataset"
            )
            raise WxscaleError(
                f"--out {out} {what}: --overwrite would delete {shown}. It replaces only a dataset dir or an "
                "empty folder; move those files away or choose another --out"
            )
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WxscaleError(f"--out {out}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WxscaleError(
            f"--out {out}: cannot write into {parent} (permission denied); choose a folder you can write to"
        )


@contextlib.contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """OS errors of the output side (permission, full or read-only disk) become one line naming --out."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR):
            raise
        raise WxscaleError(
            f"--out {out}: cannot write the dataset ({err.strerror}: {err.filename}); nothing was left there. "
            "Free space or choose a folder you can write to"
        ) from err


def _say_leftovers(out: Path, key: str | None) -> None:
    reuse = resumable_partial(out, key) if key is not None else None
    if reuse is not None:
        n_done = len(list((reuse / RESUME_DIR / "shards").glob("*.json")))
        _say(f"resuming the prep killed in {reuse.name}: {n_done} shard(s) recorded finished (each checked "
             "against its sha256 before it is kept)")
    stale = [p for p in partial_leftovers(out) if p != reuse]
    if stale:
        _say(
            f"removing {len(stale)} unfinished dataset dir(s) left beside {out} by an interrupted prep"
            + (" of another plan" if key is not None else "") + ": " + ", ".join(p.name for p in stale)
        )


# ------------------------------------------------------------------------------------------------------------
# writing: the shards (one call each), then stats.h5 and data.json


def write_shard(
    tmp: Path,
    shard: ShardPlan,
    plan: DatasetPlan,
    fill_values: np.ndarray | None,
    missing: MissingValues,
    train: TrainStats | None,
    bar: tqdm,
) -> ShardInfo:
    """Stream one shard's blocks from the source into `tmp/shard.path`: count NaN and fill them (or, without
    --fill, stop writing at the first and keep counting, for the error), and feed `train` the blocks written.
    Shards cover disjoint times: each may be written by another process with its own accumulators.
    The returned ShardInfo carries the sha256 of the closed file."""
    (tmp / shard.split).mkdir(exist_ok=True)
    bar.set_postfix_str(shard.path)
    writer = ShardWriter(tmp / shard.path, plan.n_channels, plan.grid, plan.compress)
    try:
        for a, b, x in plan.blocks(shard.i0, shard.i1):
            nonfinite = missing.count(shard.split, x)
            bar.update(b - a)
            if fill_values is None and missing.any():
                continue  # doomed: count on so the error can say how many, write nothing
            if nonfinite.any():
                missing.filled += nonfinite.sum(axis=(0, 2, 3))
                x = np.where(nonfinite, fill_values[None], x)
            hours = plan.axis.hours[a:b]
            writer.append(x, hours)
            if train is not None:
                train.add(x, hours)
    finally:
        writer.close()
    return _shard_info(shard, plan, sha256_file(tmp / shard.path))


def _shard_info(shard: ShardPlan, plan: DatasetPlan, sha256: str) -> ShardInfo:
    hours = plan.axis.hours
    return ShardInfo(shard.path, shard.split, shard.i1 - shard.i0, iso(hours[shard.i0]), iso(hours[shard.i1 - 1]),
                     sha256)


# ------------------------------------------------------------------------------------------------------------
# resuming: a record per finished shard in the temporary dir, written after the shard is closed and checksummed


def _record_path(tmp: Path, shard: ShardPlan) -> Path:
    return tmp / RESUME_DIR / "shards" / (shard.path.replace("/", "-") + ".json")


def record_done(tmp: Path, shard: ShardPlan, info: ShardInfo, missing: MissingValues) -> None:
    """Mark a closed shard finished: its checksum and what its blocks held (NaN counted, values filled)."""
    record = {
        "path": shard.path, "i0": shard.i0, "i1": shard.i1, "sha256": info.sha256,
        "bad": {k: v.tolist() for k, v in missing.bad.items()}, "n_values": missing.n_values,
        "filled": missing.filled.tolist(),
    }
    write_json_atomic(_record_path(tmp, shard), record)


def finished_shard(tmp: Path, shard: ShardPlan, plan: DatasetPlan) -> tuple[ShardInfo, MissingValues] | None:
    """A shard a killed prep finished (its record matches the plan and the file its checksum), else None."""
    try:
        record = json.loads(_record_path(tmp, shard).read_text())
    except (OSError, ValueError):
        return None
    if (record.get("path"), record.get("i0"), record.get("i1")) != (shard.path, shard.i0, shard.i1):
        return None
    path = tmp / shard.path
    if not path.is_file() or sha256_file(path) != record["sha256"]:
        return None  # rewritten after the record, or damaged: write it again
    missing = MissingValues(list(plan.index), plan.n_channels)
    for k, v in record["bad"].items():
        missing.bad[k] += np.asarray(v, dtype=np.int64)
    missing.n_values.update(record["n_values"])
    missing.filled += np.asarray(record["filled"], dtype=np.int64)
    return _shard_info(shard, plan, record["sha256"]), missing


def _restat_shard(tmp: Path, shard: ShardPlan, plan: DatasetPlan, train: TrainStats) -> None:
    """Feed `train` a finished shard's blocks from the shard itself (the values written, after filling)."""
    with h5py.File(tmp / shard.path, "r") as f:
        fields, time = f[FIELDS_KEY], f[TIME_KEY][:]
        for a in range(0, len(time), plan.block_steps):
            b = min(a + plan.block_steps, len(time))
            train.add(fields[a:b], time[a:b])


def resume_key(plan: DatasetPlan, source: dict, fill: str) -> str | None:
    """A hash of everything the shards' bytes depend on: the inputs (path, size, modification time), or the
    simulator's configuration, the plan (channels, grid, times, shards), the policies and the tool version.
    None when the source cannot be identified (a Dataset built in Python): such a prep does not resume."""
    if source.get("inputs"):
        ident: object = [_input_identity(Path(i["path"])) for i in source["inputs"]]
    elif source.get("builtin"):
        ident = {"builtin": source["builtin"], "config": source.get("simulator_config")}
    else:
        return None
    h = hashlib.sha256()
    h.update(json.dumps({
        "ident": ident, "version": suite_version(), "channels": [ch.name for ch in plan.channels],
        "coarsen": plan.coarsen, "compress": plan.compress, "fill": fill,
        "shards": [(s.path, s.i0, s.i1) for s in plan.shards],
    }, sort_keys=True, default=str).encode())
    for array in (plan.axis.hours, plan.lat, plan.lon):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _input_identity(p: Path) -> list:
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return [(str(q.resolve()), q.stat().st_size, q.stat().st_mtime_ns) for q in files]


# ------------------------------------------------------------------------------------------------------------
# ranks: each writes a contiguous run of shards; the accumulators are folded in rank order (= time order)


def assign_shards(plan: DatasetPlan, n_ranks: int) -> list[int]:
    """The rank of each shard: contiguous runs in plan order (train, valid, test; in time), balanced by steps.
    Contiguity keeps each rank's train blocks one stretch of time, which TrainStats.merge folds exactly."""
    steps = np.array([s.i1 - s.i0 for s in plan.shards], dtype=np.float64)
    centre = (np.cumsum(steps) - steps / 2) / steps.sum()
    return np.minimum((centre * n_ranks).astype(int), n_ranks - 1).tolist()


def _failure(err: BaseException) -> str:
    return str(err) if isinstance(err, WxscaleError) else f"{type(err).__name__}: {err}"


def _together(world: ProcessWorld, fn):
    """Run fn on every rank; if it fails on any, fail on all (with that rank's message), so no rank waits
    forever in a later collective for one that has stopped."""
    try:
        result, failure = fn(), None
    except Exception as err:
        result, failure = None, err
    if not world.distributed:
        if failure is not None:
            raise failure
        return result
    failures = world.allgather(None if failure is None else _failure(failure))
    if failure is not None:
        raise failure
    for rank, text in enumerate(failures):
        if text is not None:
            raise WxscaleError(f"rank {rank} of {world.size}: {text}")
    return result


def _fold(world: ProcessWorld, obj, merge):
    """Fold every rank's `obj` onto rank 0 in rank order, `merge(a, b)` with b the later, in log2(size)
    rounds of point-to-point messages (a binomial tree: rank 0 never holds more than two at once).
    Returns the fold on rank 0, None on the others."""
    step = 1
    while step < world.size:
        if world.rank % (2 * step) == step:
            world.send(obj, world.rank - step)
            return None
        if world.rank + step < world.size:
            obj = merge(obj, world.recv(world.rank + step))
        step *= 2
    return obj


@contextlib.contextmanager
def _shared_output_dir(world: ProcessWorld, out: Path, overwrite: bool, key: str | None) -> Iterator[Path]:
    """Rank 0 opens the atomic output dir (resuming the one a killed prep of the same plan left) and tells the
    others where it is; it renames it into place when the block ends without error on every rank."""
    with contextlib.ExitStack() as stack:
        tmp, failure = None, None
        if world.is_main:
            _say_leftovers(out, key)
            try:
                tmp = stack.enter_context(atomic_output_dir(out, overwrite=overwrite, resume_key=key))
            except Exception as err:
                failure = err
        name, text = world.bcast((str(tmp) if tmp else None, _failure(failure) if failure else None))
        if failure is not None:
            raise failure
        if text is not None:
            raise WxscaleError(text)
        yield Path(name)  # an error in the block reaches every rank (the block ends with a collective step)
        if world.is_main:
            try:
                stack.close()  # the rename into place
            except Exception as err:
                failure = err
        text = world.bcast(_failure(failure) if failure else None)  # the others return once it is in place
        if failure is not None:
            raise failure
        if text is not None:
            raise WxscaleError(text)


def _split_meta(plan: DatasetPlan, shards: list[ShardInfo]) -> dict[str, dict]:
    out = {}
    for split, (i0, i1) in plan.index.items():
        lo, hi = plan.ranges[split]
        out[split] = {
            "start": iso(plan.axis.hours[i0]),
            "end": iso(plan.axis.hours[i1 - 1]),
            "range": [iso(lo), iso(hi)],
            "n_steps": i1 - i0,
            "n_shards": sum(1 for s in shards if s.split == split),
        }
    return out


def _provenance(
    source: dict, plan: DatasetPlan, *, variables: list[str] | None, fill: str, filled: np.ndarray, clim_info: dict,
    ranks: int = 1, writing: dict | None = None,
) -> dict:
    """data.json's `source`: what the caller recorded (inputs, checksums, command) and how prep treated it;
    `ranks` (how many processes wrote the shards) and `writing` (timing, shards reused by a resume)."""
    return {
        **source,
        "ranks": ranks,
        "writing": writing or {},
        "wxscale_version": suite_version(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": source.get("command", "python: data_prep.prep.write_dataset"),
        "variables_requested": variables,
        "coarsen": plan.coarsen,
        "fill": {
            "policy": fill,
            "filled_values": {ch.name: int(n) for ch, n in zip(plan.channels, filled, strict=True) if n},
            "how": "train mean of each grid point; channel mean where a point is never valid"
            if fill == "mean"
            else "NaN refused",
        },
        "compress": plan.compress,
        "max_shard_steps": max(s.i1 - s.i0 for s in plan.shards),
        "split_policy": plan.policy,
        "splits_spec": plan.spec_text,
        "time": {
            "dhours": plan.axis.dhours,
            "sorted_by_prep": plan.axis.order is not None,
            "n_gaps": len(plan.axis.gaps),
        },
        "stats": "train split only; unweighted over time and grid points, population std; diff_std "
        "over one-step differences within regular segments",
        "climatology": clim_info,
        "notes": plan.notes,
    }


def checksum_input(path: str | os.PathLike) -> dict:
    """Provenance of one input: absolute path, size, sha256 (of every file, in order, for a dir; of the metadata
    only for a zarr store, :func:`wxscale.data_prep.reader.zarr_store_provenance`, which never reads its chunks)."""
    return checksum_inputs([path])[0]


def checksum_inputs(paths: list[str | os.PathLike], world: ProcessWorld | None = None) -> list[dict]:
    """:func:`checksum_input` of each path, the files' sha256 shared out over the ranks (round robin; the
    same result as one process). Rank 0 lists the files and gets the result; the other ranks get []."""
    world = world or ProcessWorld()
    listing = None
    if world.is_main:
        listing = []
        for p in (Path(q).resolve() for q in paths):
            if is_zarr_store(p):  # metadata only (below): a published store's chunks are never read to hash them
                files = []
            else:
                files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
            listing.append((p, [(f, f.stat().st_size) for f in files]))
    listing = world.bcast(listing)
    flat = [f for _, files in listing for f, _ in files]
    mine = _together(world, lambda: {k: sha256_file(flat[k]) for k in range(world.rank, len(flat), world.size)})
    sums = _fold(world, mine, lambda a, b: {**a, **b})
    if not world.is_main:
        return []
    out, k = [], 0
    for p, files in listing:
        if is_zarr_store(p):
            out.append(zarr_store_provenance(p))
            continue
        if not p.is_dir():
            out.append({"path": str(p), "bytes": files[0][1], "sha256": sums[k]})
            k += 1
            continue
        h = hashlib.sha256()
        for f, _ in files:
            h.update(str(f.relative_to(p)).encode())
            h.update(bytes.fromhex(sums[k]))
            k += 1
        out.append({"path": str(p), "bytes": sum(size for _, size in files), "sha256": h.hexdigest(), "kind": "dir"})
    return out


def _say(msg: str) -> None:
    print(f"wxscale prep: {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# the one path to a dataset dir


def _check_options(fill: str, compress: str | None, coarsen: int) -> None:
    if fill not in ("none", "mean"):
        raise WxscaleError(f"--fill {fill!r}: use none (refuse NaN) or mean (fill with the train mean)")
    if compress not in (None, "lzf", "gzip"):
        raise WxscaleError(f"--compress {compress!r}: use lzf or gzip (or leave it out)")
    if int(coarsen) != coarsen or coarsen < 1:
        raise WxscaleError(f"--coarsen {coarsen}: must be a positive integer")


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
    world: ProcessWorld | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write `ds` (dims time, lat, lon and optionally level) as a dataset dir at `out`; returns `out`.

    splits: "train=2000:2001,valid=2002,test=2003", ISO ranges, a dict {split: range}, or None for 80/10/10 by
    time. variables: channel names (z500) or variable names (z: all its levels); None for all. coarsen:
    integer block mean over lat and lon. fill: "none" refuses NaN, "mean" fills with the train mean of each
    grid point (the channel mean where a point is never valid). compress: None, "lzf" or "gzip".
    max_shard_bytes: a calendar year of a split is cut into shards of at most this (default MAX_SHARD_BYTES);
    smaller shards give more ranks work (a shard is written by one rank). source:
    provenance to record (inputs, checksums, command); tool version, policies and notes are added here.
    overwrite: replace `out` if it is a dataset dir or empty (anything else is refused).
    world: the ranks that write together (wxscale.launch.process_world(); default: this process alone). Every
    rank calls write_dataset with the same arguments; each writes a contiguous run of the shards, rank 0 folds
    the accumulators in time order and writes stats.h5 and data.json last.
    Resumes: when `source` names inputs or the simulator, a prep killed before it finished leaves its
    temporary dir with a record per finished shard; the same command again keeps those shards (checked against
    their sha256) and writes only the rest.
    Raises WxscaleError for input it cannot turn into a valid dataset; nothing is left at `out` then.
    """
    t_start = time.perf_counter()
    world = world or ProcessWorld()
    out = Path(out)
    source = dict(source or {})
    where = (
        ", ".join(Path(i["path"]).name for i in source.get("inputs", []))
        or source.get("builtin")
        or "dataset"
    )

    def prepare() -> DatasetPlan:
        _check_options(fill, compress, coarsen)
        check_output_dir(out, overwrite)  # before the work; atomic_output_dir checks existence again at the end
        return plan_dataset(
            ds, where, variables=variables, splits=splits, coarsen=coarsen, compress=compress,
            notes=list(source.pop("notes", [])), max_shard_bytes=max_shard_bytes,
        )

    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise WxscaleError(f"--shard-mb: must be positive (got {max_shard_bytes / 2**20:g} MB)")
    plan = _together(world, prepare)
    key = world.bcast(resume_key(plan, source, fill) if world.is_main else None)  # one rank lists the inputs
    owner = assign_shards(plan, world.size)
    mine = [s for s, r in zip(plan.shards, owner, strict=True) if r == world.rank]
    n_train = plan.index["train"][1] - plan.index["train"][0]
    total = sum(s.i1 - s.i0 for s in mine) + (-(-n_train // world.size) if fill == "mean" else 0)
    bar = tqdm(total=total, unit="step", desc="prep", disable=not (progress and world.is_main), dynamic_ncols=True)
    clim_info, clim = plan_climatology(plan)

    with _writing_into(out), _shared_output_dir(world, out, overwrite, key) as tmp:
        fill_values = _fill_values(world, tmp, plan, bar, key) if fill == "mean" else None

        def write_mine() -> tuple[TrainStats, MissingValues, list[ShardInfo], int]:
            train = TrainStats(plan.n_channels, plan.axis.dhours, clim)
            missing = MissingValues(list(plan.index), plan.n_channels)
            infos, n_reused = [], 0
            for shard in mine:
                done = finished_shard(tmp, shard, plan) if key is not None else None
                if done is not None:
                    info, shard_missing = done
                    n_reused += 1
                    bar.update(shard.i1 - shard.i0)
                    if shard.split == "train":
                        _restat_shard(tmp, shard, plan, train)
                else:
                    shard_missing = MissingValues(list(plan.index), plan.n_channels)
                    info = write_shard(tmp, shard, plan, fill_values, shard_missing,
                                       train if shard.split == "train" else None, bar)
                    if key is not None and (fill_values is not None or not shard_missing.any()):
                        record_done(tmp, shard, info, shard_missing)
                missing.merge(shard_missing)
                infos.append(info)
            return train, missing, infos, n_reused

        mine_done = _together(world, write_mine)
        bar.close()

        def merge(a: tuple, b: tuple) -> tuple:
            a[0].merge(b[0])
            a[1].merge(b[1])
            return a[0], a[1], a[2] + b[2], a[3] + b[3]

        folded = _fold(world, mine_done, merge)

        def finish() -> None:
            if not world.is_main:
                return
            train, missing, shards, n_reused = folded
            if fill_values is None and missing.any():
                raise missing.refusal(plan)
            write_stats(tmp / STATS_H5, train.result(plan, clim_info))
            written = sum(s.i1 - s.i0 for s in plan.shards) * plan.n_channels * plan.grid[0] * plan.grid[1] * 4
            meta = DatasetMeta(
                dataset_name=name or out.name,
                dhours=plan.axis.dhours,
                lat=[float(v) for v in plan.lat],
                lon=[float(v) for v in plan.lon],
                lon_periodic=lon_wraps(plan.lon),
                channels=[ch.name for ch in plan.channels],
                shards=shards,
                splits=_split_meta(plan, shards),
                source=_provenance(
                    source, plan, variables=variables, fill=fill, filled=missing.filled, clim_info=clim_info,
                    ranks=world.size,
                    writing={"wall_s": round(time.perf_counter() - t_start, 3), "field_bytes": written,
                             "shards_reused": n_reused, "resumed": n_reused > 0},
                ),
                gaps=plan.axis.gaps,
                channel_units={ch.name: ch.units for ch in plan.channels if ch.units},
            )
            write_json_atomic(tmp / DATA_JSON, meta.to_json_dict())

        _together(world, finish)
    if world.is_main:
        for note in plan.notes:
            _say(note)
    return out


def _fill_values(world: ProcessWorld, tmp: Path, plan: DatasetPlan, bar: tqdm, key: str | None) -> np.ndarray:
    """--fill mean's values: from a resumed prep's record, or a pass over the train split (then recorded)."""
    saved = tmp / RESUME_DIR / "fill_values.npy"
    have = world.bcast(key is not None and saved.is_file())
    if have:
        return np.load(saved)
    values = train_fill_values(plan, bar, world)
    if world.is_main and key is not None:
        buf = io.BytesIO()
        np.save(buf, values)
        write_bytes_atomic(saved, buf.getvalue())
    return values


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
    parser.add_argument(
        "--shard-mb", type=float, metavar="MB",
        help=f"cut each calendar year of a split into shards of at most MB (default {MAX_SHARD_BYTES >> 20}); "
        "under mpiexec/srun each shard is written by one rank, so smaller shards spread the work wider",
    )
    parser.add_argument("--engine", help="force an xarray engine (netcdf4, h5netcdf, cfgrib, zarr)")
    parser.add_argument("--name", help="dataset_name in data.json (default: the dir name)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim = _simulator()
    if sim is not None and hasattr(sim, "add_simulator_arguments"):
        sim.add_simulator_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`wxscale prep`; under `mpiexec -n N` or `srun --mpi=pmi2` the N ranks write the shards together."""
    world = process_world()
    progress = not args.no_progress and world.is_main
    # before simulating or checksumming the inputs
    _together(world, lambda: check_output_dir(args.out, args.overwrite))
    command = getattr(args, "command_line", None) or shlex.join(sys.argv)
    if args.builtin:
        sim = _simulator()
        if sim is None:
            raise WxscaleError("--builtin swe: the simulator module data_prep.simulator is not available")
        cfg = sim.config_from_args(args)
        try:  # every rank simulates the same trajectories (deterministic) and writes its own shards of them
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
        ds, notes = _together(world, lambda: open_inputs(args.input, member=args.member, engine=args.engine))
        splits = args.splits
        # every rank checksums a share of the input files; rank 0 records them in data.json
        inputs = checksum_inputs(args.input, world) or [{"path": str(Path(p).resolve())} for p in args.input]
        source = {"inputs": inputs, "command": command, "notes": notes}
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
        world=world,
        max_shard_bytes=int(args.shard_mb * 2**20) if args.shard_mb is not None else None,
    )
    if not world.is_main:
        return 0
    from wxscale.data_prep.layout import load_meta

    meta = load_meta(out)
    counts = ", ".join(
        f"{s} {len(meta.shards_of(s))} shard(s)/{meta.splits[s]['n_steps']} steps" for s in meta.splits
    )
    writing = meta.source.get("writing", {})
    ranks = f" by {world.size} ranks" if world.distributed else ""
    reused = f", {writing['shards_reused']} shard(s) kept from the killed prep" if writing.get("shards_reused") else ""
    _say(
        f"wrote {out}{ranks}: {meta.n_channels} channels {meta.channels}, grid {meta.grid[0]}x{meta.grid[1]}, "
        f"every {meta.dhours} h, {len(meta.gaps)} gap(s); {counts}{reused}. Next: wxscale check {out}"
    )
    return 0
