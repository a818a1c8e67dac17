"""`wxscale check DIR`: validate a dataset dir against the contract in data_prep.layout (ARCHITECTURE.md).

Each problem is named (file, field, what is wrong); the command exits non-zero when there is any.
Checked: data.json schema and coordinates; every shard's checksum, dataset names, dtype, shape, chunking, time
order and step, agreement with data.json, finite values (every step read); each split holds the steps data.json
promises; splits disjoint in time; stats.h5 shapes and values; stray files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from wxscale.data_prep.layout import (
    DATA_JSON,
    DIMS,
    FIELDS_KEY,
    H5_READ_ERRORS,
    SPLITS,
    STATS_H5,
    TIME_KEY,
    DatasetMeta,
    ShardInfo,
    iso,
    load_meta,
    sha256_file,
    valid_sample_starts,
)
from wxscale.errors import WxscaleError

SCAN_BYTES = 64 << 20  # values are scanned for NaN in blocks of this size


def _check_coords(meta: DatasetMeta, raw: dict) -> list[str]:
    p = []
    if raw.get("h5_path") != FIELDS_KEY:
        p.append(f"{DATA_JSON}: h5_path is {raw.get('h5_path')!r}, expected {FIELDS_KEY!r}")
    if raw.get("dims") != DIMS:
        p.append(f"{DATA_JSON}: dims is {raw.get('dims')!r}, expected {DIMS}")
    if not isinstance(meta.dhours, int) or meta.dhours <= 0:
        p.append(f"{DATA_JSON}: dhours {meta.dhours!r} is not a positive integer")
    lat, lon = np.asarray(meta.lat, float), np.asarray(meta.lon, float)
    if len(lat) < 1 or len(lon) < 1:
        p.append(f"{DATA_JSON}: coords.lat or coords.lon is empty")
    if len(lat) > 1 and not np.all(np.diff(lat) < 0):
        p.append(f"{DATA_JSON}: coords.lat does not run strictly north to south")
    if np.any(np.abs(lat) > 90):
        p.append(f"{DATA_JSON}: coords.lat has values outside [-90, 90]")
    if len(lon) > 1 and not np.all(np.diff(lon) > 0):
        p.append(f"{DATA_JSON}: coords.lon is not strictly ascending")
    if not meta.channels:
        p.append(f"{DATA_JSON}: coords.channel is empty")
    if len(set(meta.channels)) != len(meta.channels):
        p.append(f"{DATA_JSON}: coords.channel has repeated names {meta.channels}")
    return p


def _check_splits(meta: DatasetMeta) -> list[str]:
    p = []
    for split in meta.splits:
        if split not in SPLITS:
            p.append(f"{DATA_JSON}: unknown split {split!r} (expected {', '.join(SPLITS)})")
        elif not meta.shards_of(split):
            p.append(f"{DATA_JSON}: split {split!r} has no shards")
    if "train" not in meta.splits:
        p.append(f"{DATA_JSON}: no train split")
    paths = [s.path for s in meta.shards]
    if len(set(paths)) != len(paths):
        p.append(f"{DATA_JSON}: a shard is listed twice")
    for s in meta.shards:
        if s.split not in meta.splits:
            p.append(
                f"{DATA_JSON}: shard {s.path} belongs to split {s.split!r}, which `splits` does not list"
            )
        if Path(s.path).parts[:1] != (s.split,) or Path(s.path).is_absolute() or ".." in Path(s.path).parts:
            p.append(f"{DATA_JSON}: shard path {s.path!r} is not inside its split dir {s.split}/")
    # splits disjoint in time, and shards of a split in time order
    spans = {}
    for split in meta.splits:
        shards = meta.shards_of(split)
        for a, b in zip(shards, shards[1:], strict=False):
            if b.first_time <= a.last_time:
                p.append(f"{DATA_JSON}: shards {a.path} and {b.path} are out of time order or overlap")
        if shards:
            spans[split] = (min(s.first_time for s in shards), max(s.last_time for s in shards))
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]:
                p.append(f"{DATA_JSON}: splits {a} and {b} overlap in time ({spans[a]} vs {spans[b]})")
    return p


def _check_split_steps(meta: DatasetMeta, held: dict[str, int | None]) -> list[str]:
    """Each split holds the steps data.json promises: its shards' counts add up, its span matches, and the
    shards read hold that many steps (a split that lost steps must not pass as a shorter one)."""
    p = []
    for split, promised in meta.splits.items():
        shards = meta.shards_of(split)
        if not shards:
            continue
        listed = sum(s.n_steps for s in shards)
        if listed != promised["n_steps"]:
            p.append(
                f"{DATA_JSON}: split {split!r} promises {promised['n_steps']} steps but its shards list {listed}"
            )
        if held.get(split) is not None and held[split] != promised["n_steps"]:
            p.append(f"{split}: its shards hold {held[split]} steps, {DATA_JSON} promises {promised['n_steps']}")
        if (shards[0].first_time, shards[-1].last_time) != (promised["start"], promised["end"]):
            p.append(
                f"{DATA_JSON}: split {split!r} spans {promised['start']}..{promised['end']} but its shards "
                f"{shards[0].first_time}..{shards[-1].last_time}"
            )
    return p


def _check_shard(
    root: Path, info: ShardInfo, meta: DatasetMeta, checksums: bool, values: bool
) -> tuple[list[str], np.ndarray | None]:
    """Problems with one shard, and its time axis (None when unreadable)."""
    path = root / info.path
    name = info.path
    if not path.is_file():
        return [f"{name}: listed in {DATA_JSON} but missing"], None
    p = []
    if not info.sha256:
        p.append(f"{name}: no sha256 recorded in {DATA_JSON}, so changes cannot be detected")
    elif checksums and sha256_file(path) != info.sha256:
        p.append(
            f"{name}: sha256 differs from {DATA_JSON} (the file was changed or truncated after writing); "
            "rewrite the dataset with `wxscale prep --overwrite`"
        )
    try:
        f = h5py.File(path, "r")
    except H5_READ_ERRORS as err:
        return [*p, f"{name}: not a readable HDF5 file, truncated or corrupt ({err})"], None
    with f:
        if FIELDS_KEY not in f or TIME_KEY not in f:
            return [*p, f"{name}: missing dataset `{FIELDS_KEY}` or `{TIME_KEY}`"], None
        fields, time = f[FIELDS_KEY], f[TIME_KEY]
        want = (meta.n_channels, *meta.grid)
        if fields.dtype != np.float32:
            p.append(f"{name}: `{FIELDS_KEY}` is {fields.dtype}, expected float32")
        if fields.ndim != 4 or fields.shape[1:] != want:
            p.append(
                f"{name}: `{FIELDS_KEY}` has shape {fields.shape}, expected [T, {', '.join(map(str, want))}]"
            )
        elif fields.chunks != (1, *want):
            p.append(
                f"{name}: `{FIELDS_KEY}` chunks {fields.chunks}, expected one step per chunk {(1, *want)}"
            )
        if time.dtype != np.int64 or time.ndim != 1:
            p.append(f"{name}: `{TIME_KEY}` is {time.dtype} {time.shape}, expected int64 [time]")
        try:
            hours = time[:].astype(np.int64)
        except H5_READ_ERRORS as err:
            return [*p, f"{name}: `{TIME_KEY}` cannot be read ({err})"], None
        if len(hours) != fields.shape[0]:
            p.append(f"{name}: {len(hours)} times but {fields.shape[0]} fields")
        if len(hours) != info.n_steps:
            p.append(f"{name}: holds {len(hours)} steps, {DATA_JSON} says {info.n_steps}")
        if len(hours) == 0:
            return [*p, f"{name}: holds no time step"], None
        if iso(hours[0]) != info.first_time or iso(hours[-1]) != info.last_time:
            p.append(
                f"{name}: spans {iso(hours[0])}..{iso(hours[-1])}, {DATA_JSON} says "
                f"{info.first_time}..{info.last_time}"
            )
        step = np.diff(hours)
        if np.any(step <= 0):
            p.append(
                f"{name}: time is not strictly increasing (first at index {int(np.argmax(step <= 0)) + 1})"
            )
        elif meta.dhours > 0 and np.any(step % meta.dhours):
            p.append(
                f"{name}: time steps {sorted(set(step[step % meta.dhours].tolist()))[:5]} h are not "
                f"multiples of dhours={meta.dhours}"
            )
        listed = {(g["after"], g["before"]) for g in meta.gaps}
        for i in np.flatnonzero(step > meta.dhours):
            if (iso(hours[i]), iso(hours[i + 1])) not in listed:
                p.append(
                    f"{name}: gap {iso(hours[i])} -> {iso(hours[i + 1])} is not listed in {DATA_JSON} gaps"
                )
        if values and fields.ndim == 4 and len(hours) == fields.shape[0]:
            per_step = max(1, int(np.prod(fields.shape[1:])) * 4)
            block = max(1, SCAN_BYTES // per_step)
            bad = np.zeros(fields.shape[1], dtype=np.int64)
            try:
                for a in range(0, fields.shape[0], block):
                    x = fields[a : a + block]
                    bad += (~np.isfinite(x)).sum(axis=(0, 2, 3))
            except H5_READ_ERRORS as err:
                p.append(f"{name}: `{FIELDS_KEY}` cannot be read from step {a} on, truncated or corrupt ({err})")
            for ch, n in zip(meta.channels, bad, strict=False):
                if n:
                    p.append(f"{name}: channel {ch} has {n} NaN/inf values")
    return p, hours


def _check_stats(root: Path, meta: DatasetMeta) -> list[str]:
    path = root / STATS_H5
    if not path.is_file():
        return [f"{STATS_H5}: missing"]
    p = []
    try:
        f = h5py.File(path, "r")
    except H5_READ_ERRORS as err:
        return [f"{STATS_H5}: not a readable HDF5 file, truncated or corrupt ({err})"]
    with f:
        for key in ("mean", "std", "diff_std"):
            if key not in f:
                p.append(f"{STATS_H5}: `{key}` missing")
                continue
            v = f[key][:]
            if v.shape != (meta.n_channels,):
                p.append(f"{STATS_H5}: `{key}` has shape {v.shape}, expected ({meta.n_channels},)")
            elif not np.all(np.isfinite(v)):
                p.append(f"{STATS_H5}: `{key}` has NaN/inf")
            elif key != "mean" and not np.all(v > 0):
                zero = [c for c, s in zip(meta.channels, v, strict=True) if not s > 0]
                p.append(f"{STATS_H5}: `{key}` is not positive for {zero} (normalising would divide by zero)")
        if "climatology" in f:
            clim = f["climatology"]
            hours = f["clim_hours"][:] if "clim_hours" in f else None
            if hours is None:
                p.append(f"{STATS_H5}: `climatology` without `clim_hours`")
            elif clim.shape != (366, len(hours), meta.n_channels, *meta.grid):
                p.append(
                    f"{STATS_H5}: `climatology` has shape {clim.shape}, expected "
                    f"(366, {len(hours)}, {meta.n_channels}, {meta.grid[0]}, {meta.grid[1]})"
                )
            elif not all(np.all(np.isfinite(clim[d])) for d in range(clim.shape[0])):
                p.append(f"{STATS_H5}: `climatology` has NaN/inf")
    return p


def check_dataset(
    dataset_dir: str | Path, checksums: bool = True, values: bool = True, progress: bool = False
) -> list[str]:
    """All problems found in a dataset dir, each naming its file; an empty list means it is valid."""
    root = Path(dataset_dir)
    try:
        meta = load_meta(root)
        raw = json.loads((root / DATA_JSON).read_text())
    except WxscaleError as err:
        return [str(err)]
    problems = _check_coords(meta, raw) + _check_splits(meta)
    held: dict[str, int | None] = {split: 0 for split in meta.splits}  # steps read per split (None: unknown)
    for info in tqdm(meta.shards, desc="check", unit="shard", disable=not progress):
        try:
            p, hours = _check_shard(root, info, meta, checksums, values)
        except H5_READ_ERRORS as err:  # whatever else a garbled file makes h5py raise
            p, hours = [f"{info.path}: cannot be read, truncated or corrupt ({type(err).__name__}: {err})"], None
        problems += p
        if info.split in held:
            held[info.split] = None if hours is None or held[info.split] is None else held[info.split] + len(hours)
        if (
            hours is not None
            and info.split == "train"
            and not len(valid_sample_starts(hours, meta.dhours, 1))
        ):
            problems.append(f"{info.path}: no two consecutive steps, so no training sample")
    problems += _check_split_steps(meta, held)
    try:
        problems += _check_stats(root, meta)
    except H5_READ_ERRORS as err:
        problems.append(f"{STATS_H5}: cannot be read, truncated or corrupt ({type(err).__name__}: {err})")
    listed = {s.path for s in meta.shards}
    for split in SPLITS:
        if (root / split).is_dir():
            for f in sorted((root / split).iterdir()):
                if f.relative_to(root).as_posix() not in listed:
                    problems.append(
                        f"{f.relative_to(root)}: not listed in {DATA_JSON} (a stray or foreign file)"
                    )
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, metavar="DIR", help="dataset dir written by `wxscale prep`")
    parser.add_argument("--no-checksums", action="store_true", help="skip the sha256 of each shard")
    parser.add_argument("--no-values", action="store_true", help="skip scanning the values for NaN")


def run(args: argparse.Namespace) -> int:
    problems = check_dataset(
        args.dataset, checksums=not args.no_checksums, values=not args.no_values, progress=True
    )
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise WxscaleError(f"{args.dataset}: {len(problems)} problem(s):\n{listing}")
    meta = load_meta(args.dataset)
    steps = ", ".join(f"{s} {sum(i.n_steps for i in meta.shards_of(s))}" for s in meta.splits)
    print(
        f"wxscale check: {args.dataset} is valid: {len(meta.shards)} shard(s), steps {steps}, "
        f"{meta.n_channels} channel(s) on {meta.grid[0]}x{meta.grid[1]} every {meta.dhours} h"
    )
    return 0
