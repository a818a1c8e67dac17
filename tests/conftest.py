"""Shared fixtures: a tiny but valid dataset dir, written with the layout primitives (no simulator, fast).

`make_tiny_dataset` is general on purpose (loader, trainer and benchmark tests reuse it): any grid, channels
and length; train/valid/test splits; train in several shards; time gaps where asked (one missing step each).
The fields are a few travelling waves per channel plus a little noise: smooth, learnable (the state at t+1
follows from the state at t), every time step distinct, and with channel means and spreads far from 0 and 1 so
that normalisation matters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

from wxscale.data_prep.layout import (
    FIELDS_KEY,
    DatasetMeta,
    ShardInfo,
    ShardWriter,
    Stats,
    iso,
    load_meta,
    read_stats,
    sha256_file,
    valid_sample_starts,
    write_stats,
)
from wxscale.files import write_json_atomic

T0_HOURS = 262968  # 2000-01-01T00:00Z in hours since 1970


def _fields(times: np.ndarray, grid: tuple[int, int], n_channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_lat, n_lon = grid
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat)[::-1, None]  # north to south
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)[None, :]
    hours = (times - times[0]).astype(np.float64)[:, None, None]
    out = np.empty((len(times), n_channels, n_lat, n_lon), np.float32)
    for c in range(n_channels):
        base, scale = rng.uniform(-50, 50) * 10.0**c, rng.uniform(1, 20)
        f = np.zeros((len(times), n_lat, n_lon))
        for _ in range(3):
            k_lat, k_lon = rng.integers(1, 3), rng.integers(1, 4)
            omega = rng.uniform(0.005, 0.05)  # radians per hour: the waves travel eastward
            f += rng.uniform(0.5, 1.0) * np.cos(k_lat * lat) * np.cos(k_lon * lon - omega * hours + rng.uniform(0, 6))
        f += 0.05 * rng.standard_normal(f.shape)
        out[:, c] = base + scale * f
    return out


def make_tiny_dataset(
    path: str | Path,
    *,
    grid: tuple[int, int] = (8, 16),
    channels: Sequence[str] = ("z", "u", "v"),
    n_steps: int = 160,
    dhours: int = 6,
    gaps: Sequence[int] = (30,),
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    train_shards: int = 2,
) -> Path:
    """Write a valid dataset dir at `path` (which must not exist) and return it.

    n_steps stored time steps, dhours apart except before each index in `gaps`, where one step is missing
    (a gap of 2*dhours). Steps are cut in time order into train/valid/test by `split_fractions`; train is cut
    into `train_shards` shards. Stats (mean, std, diff_std) come from the train split, as data_prep does.
    """
    path = Path(path)
    path.mkdir(parents=True)
    n_lat, n_lon = grid
    skipped = np.zeros(n_steps, dtype=np.int64)
    for g in gaps:
        if not 0 < g < n_steps:
            raise ValueError(f"gap index {g} not in 1..{n_steps - 1}")
        skipped[g:] += 1
    times = T0_HOURS + dhours * (np.arange(n_steps) + skipped)
    fields = _fields(times, grid, len(channels), seed)

    n_train = int(round(split_fractions[0] * n_steps))
    n_valid = int(round(split_fractions[1] * n_steps))
    bounds = {
        "train": (0, n_train),
        "valid": (n_train, n_train + n_valid),
        "test": (n_train + n_valid, n_steps),
    }
    shards: list[ShardInfo] = []
    splits: dict[str, dict] = {}
    train_ranges: list[tuple[int, int]] = []
    for split, (lo, hi) in bounds.items():
        if hi - lo < 2:
            raise ValueError(f"split {split} would have {hi - lo} steps; raise n_steps")
        (path / split).mkdir()
        cuts = np.linspace(lo, hi, (train_shards if split == "train" else 1) + 1).astype(int)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            rel = f"{split}/{i:03d}.h5"
            writer = ShardWriter(path / rel, len(channels), grid, compression=None)
            writer.append(fields[a:b], times[a:b])
            writer.close()
            if split == "train":
                train_ranges.append((int(a), int(b)))
            shards.append(ShardInfo(rel, split, int(b - a), iso(times[a]), iso(times[b - 1]), sha256_file(path / rel)))
        splits[split] = {"start": iso(times[lo]), "end": iso(times[hi - 1]), "n_steps": int(hi - lo)}

    # Stats on train only; one-step differences only where steps are dhours apart within a shard.
    train = fields[:n_train].astype(np.float64)
    diffs = []
    for lo, hi in train_ranges:
        ok = valid_sample_starts(times[lo:hi], dhours, 1) + lo
        diffs.append(fields[ok + 1].astype(np.float64) - fields[ok])
    diff = np.concatenate(diffs)
    write_stats(
        path / "stats.h5",
        Stats(mean=train.mean(axis=(0, 2, 3)), std=train.std(axis=(0, 2, 3)), diff_std=diff.std(axis=(0, 2, 3))),
    )

    gap_list = [
        {"after": iso(times[g - 1]), "before": iso(times[g]), "hours": int(times[g] - times[g - 1])} for g in gaps
    ]
    meta = DatasetMeta(
        dataset_name="tiny",
        dhours=dhours,
        lat=[float(x) for x in np.linspace(90 - 90 / n_lat, -90 + 90 / n_lat, n_lat)],
        lon=[float(x) for x in np.arange(n_lon) * 360.0 / n_lon],
        channels=list(channels),
        shards=shards,
        splits=splits,
        source={"generator": "tests/conftest.py:make_tiny_dataset", "seed": seed, "inputs": []},
        gaps=gap_list,
        channel_units={c: "1" for c in channels},
    )
    write_json_atomic(path / "data.json", meta.to_json_dict())
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny dataset (8 x 16 grid, z/u/v, 160 steps, a gap in the first train shard); read-only."""
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@functools.lru_cache(maxsize=8)
def _state_table(dataset_dir: str, split: str) -> dict[bytes, tuple[int, int]]:
    meta, stats = load_meta(dataset_dir), read_stats(dataset_dir)
    mean = np.asarray(stats.mean, np.float32).reshape(-1, 1, 1)
    inv_std = np.float32(1) / np.asarray(stats.std, np.float32).reshape(-1, 1, 1)  # as data_prep.loader does
    table = {}
    for i, shard in enumerate(meta.shards_of(split)):
        with h5py.File(Path(dataset_dir) / shard.path, "r") as f:
            fields = f[FIELDS_KEY][:]
        for t, state in enumerate((fields - mean) * inv_std):
            table[state.tobytes()] = (i, t)
    return table


def state_keys(dataset_dir: str | Path, split: str, states) -> list[tuple[int, int]]:
    """Which stored time step each normalised state [N, C, H, W] is: (shard number in the split, time index).

    Lets tests check what a loader handed out against the files themselves (every step is distinct, see
    `_fields`). A KeyError means a state that is not exactly a stored, normalised step.
    """
    table = _state_table(str(dataset_dir), split)
    return [table[np.ascontiguousarray(np.asarray(s, dtype=np.float32)).tobytes()] for s in states]


# Real data (../shared/data/real beside the checkout, or $WXSCALE_REAL_DATA): tests that need it skip without it.
REAL_DATA = Path(
    os.environ.get("WXSCALE_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)


def real_data_file(name: str) -> Path:
    """The real file `name`, or pytest.skip with the reason (a fresh clone has no ../shared/data)."""
    p = REAL_DATA / name
    if not p.is_file():
        pytest.skip(f"{p} not present (../shared/data is not part of a fresh clone; or set WXSCALE_REAL_DATA)")
    return p
