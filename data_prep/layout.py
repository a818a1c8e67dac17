"""The dataset dir: the on-disk contract between data_prep and every loader.

See ARCHITECTURE.md ("Dataset dir"). Everything that reads or writes that layout goes through this module,
so the contract lives in one place::

    <dataset>/data.json      metadata: makani's keys (dataset_name, h5_path, dims, dhours, coords) and ours
                             (format_version, source, splits, shards, gaps, channel_units; coords.lon_periodic:
                             whether the grid wraps in longitude, see :func:`lon_wraps`)
    <dataset>/stats.h5       per-channel mean [C], std [C], diff_std [C];
                             optional climatology [doy, hour, C, lat, lon]
    <dataset>/<split>/*.h5   shards: `fields` float32 [time, channel, lat, lon], one time step per chunk;
                             `time` int64 hours since 1970-01-01T00:00Z [time]

Latitude runs north to south. A sample is (state at t, states at t + k*dhours, k = 1..rollout); a sample never
crosses a shard boundary or a gap in time (:func:`valid_sample_starts`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pydantic

from wxscale.errors import WxscaleError

FORMAT_VERSION = 1
DATA_JSON = "data.json"
STATS_H5 = "stats.h5"
SPLITS = ("train", "valid", "test")
FIELDS_KEY = "fields"
TIME_KEY = "time"
DIMS = ["time", "channel", "lat", "lon"]
EPOCH = np.datetime64("1970-01-01T00:00", "h")


# ------------------------------------------------------------------------------------------------------------
# time


def hours_since_epoch(times: np.ndarray) -> np.ndarray:
    """datetime64 array -> int64 hours since 1970-01-01T00:00Z (refuses times that are not whole hours)."""
    times = np.asarray(times).astype("datetime64[s]")
    seconds = (times - EPOCH.astype("datetime64[s]")).astype(np.int64)
    if np.any(seconds % 3600):
        raise WxscaleError(
            "time axis has values that are not whole hours; wxscale stores hours since 1970-01-01"
        )
    return seconds // 3600


def hours_to_datetime64(hours: np.ndarray | int) -> np.ndarray:
    return EPOCH + np.asarray(hours, dtype=np.int64).astype("timedelta64[h]")


def iso(hours: int) -> str:
    return str(hours_to_datetime64(int(hours))) + ":00Z"


def valid_sample_starts(time_hours: np.ndarray, dhours: int, rollout_steps: int) -> np.ndarray:
    """Indices t of one shard such that t, t+1, ..., t+k are equally spaced by dhours (k = rollout_steps).

    This is what keeps samples from crossing a gap in time.
    """
    time_hours = np.asarray(time_hours, dtype=np.int64)
    n = len(time_hours) - rollout_steps
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    for k in range(1, rollout_steps + 1):
        ok &= time_hours[k : k + n] - time_hours[:n] == k * dhours
    return np.flatnonzero(ok).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# grid


def lon_wraps(lon_deg) -> bool:
    """Whether longitudes ``lon_deg`` (degrees, in order, any range such as 0..360 or -180..180) close the circle.

    They wrap when the gap from the last longitude east to the first is at most 1.5 times the grid spacing (the
    median step), so 0, 2.5, ..., 357.5 wraps and so does a grid that repeats its first longitude at +360; a
    regional grid (70W..10E) leaves a gap of hundreds of degrees and does not. Fewer than two longitudes never
    wrap. The model masks the wrap of a grid that does not (``build_model(periodic_lon=...)``).
    """
    lon = np.asarray(lon_deg, dtype=np.float64).ravel()
    if lon.size < 2:
        return False
    steps = np.diff(lon) % 360.0  # eastward steps, across a 360/0 or 180/-180 seam too
    spacing = float(np.median(steps))
    if spacing <= 0:
        return False
    span = float(steps.sum())
    gap = 360.0 - span
    return -0.5 * spacing <= gap <= 1.5 * spacing


# ------------------------------------------------------------------------------------------------------------
# data.json


@dataclasses.dataclass
class ShardInfo:
    path: str  # relative to the dataset dir, e.g. "train/000.h5"
    split: str
    n_steps: int
    first_time: str  # ISO 8601, UTC
    last_time: str
    sha256: str


@dataclasses.dataclass
class DatasetMeta:
    dataset_name: str
    dhours: int
    lat: list[float]
    lon: list[float]
    channels: list[str]
    shards: list[ShardInfo]
    splits: dict[str, dict]  # split -> {"start", "end", "n_steps", ...}
    source: dict  # provenance: inputs and their checksums, tool version, command
    gaps: list[dict] = dataclasses.field(default_factory=list)  # {"after", "before", "hours"}
    channel_units: dict[str, str] = dataclasses.field(default_factory=dict)
    grid_type: str = "equiangular"
    format_version: int = FORMAT_VERSION
    lon_periodic: bool | None = None  # the grid wraps in longitude; None: decided from lon (lon_wraps)

    def __post_init__(self) -> None:
        if self.lon_periodic is None:  # datasets written before the key existed
            self.lon_periodic = lon_wraps(self.lon)

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def shards_of(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def to_json_dict(self) -> dict:
        return {
            # makani's keys, so makani-format tools can read the dir
            "dataset_name": self.dataset_name,
            "h5_path": FIELDS_KEY,
            "dims": DIMS,
            "dhours": self.dhours,
            "coords": {
                "grid_type": self.grid_type,
                "lat": [float(x) for x in self.lat],
                "lon": [float(x) for x in self.lon],
                "channel": list(self.channels),
                "lon_periodic": bool(self.lon_periodic),
            },
            # ours
            "format_version": self.format_version,
            "channel_units": dict(self.channel_units),
            "source": self.source,
            "splits": self.splits,
            "gaps": self.gaps,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    @classmethod
    def from_json_dict(cls, d: object, where: str = DATA_JSON) -> DatasetMeta:
        if not isinstance(d, dict):
            raise WxscaleError(
                f"{where}: holds a JSON {type(d).__name__}, not an object; rewrite it with `wxscale prep`"
            )
        required = ["dataset_name", "dhours", "coords", "format_version", "source", "splits", "shards"]
        missing = [k for k in required if k not in d]
        if missing:
            raise WxscaleError(f"{where}: missing keys {missing}; rewrite the dataset with `wxscale prep`")
        if d["format_version"] != FORMAT_VERSION:
            raise WxscaleError(
                f"{where}: format_version {d['format_version']!r} but this wxscale reads {FORMAT_VERSION}; "
                "rewrite the dataset with this version's `wxscale prep`"
            )
        try:
            j = _DataJson.model_validate(d)
        except pydantic.ValidationError as err:
            raise WxscaleError(
                f"{where}: {_first_errors(err)}; fix it or rewrite the dataset with `wxscale prep`"
            ) from None
        return cls(
            dataset_name=j.dataset_name,
            dhours=j.dhours,
            lat=list(j.coords.lat),
            lon=list(j.coords.lon),
            channels=list(j.coords.channel),
            grid_type=j.coords.grid_type,
            lon_periodic=j.coords.lon_periodic,
            shards=[ShardInfo(**s.model_dump()) for s in j.shards],
            splits=d["splits"],
            source=d["source"],
            gaps=d.get("gaps", []),
            channel_units=d.get("channel_units", {}),
            format_version=j.format_version,
        )


# data.json's schema, strict about types: a "six" for dhours or a string for a shard's n_steps is named, not
# coerced or left to fail later. Keys beyond these are allowed (makani's, and later additions).
class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="allow")


class _CoordsJson(_Strict):
    grid_type: str = "equiangular"
    lat: list[float]
    lon: list[float]
    channel: list[str]
    lon_periodic: bool | None = None  # absent in datasets written before the key existed


class _ShardJson(_Strict):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    path: str
    split: str
    n_steps: pydantic.NonNegativeInt
    first_time: str
    last_time: str
    sha256: str

    @pydantic.model_validator(mode="after")
    def _inside_its_split_dir(self) -> _ShardJson:
        # readers open <dataset>/<path>: a path out of the dataset dir must not be followed
        parts = Path(self.path).parts
        if Path(self.path).is_absolute() or ".." in parts or parts[:1] != (self.split,) or len(parts) < 2:
            raise ValueError(f"path {self.path!r} is not inside its split dir {self.split}/")
        return self


class _SplitJson(_Strict):
    start: str
    end: str
    n_steps: pydantic.NonNegativeInt


class _GapJson(_Strict):
    after: str
    before: str
    hours: pydantic.PositiveInt


class _DataJson(_Strict):
    dataset_name: str
    dhours: pydantic.PositiveInt
    coords: _CoordsJson
    format_version: int
    source: dict
    splits: dict[str, _SplitJson]
    shards: list[_ShardJson]
    gaps: list[_GapJson] = []
    channel_units: dict[str, str] = {}


def _first_errors(err: pydantic.ValidationError, n: int = 3) -> str:
    """Pydantic's errors as `field.path: what (got VALUE)`, the first n, on one line."""
    parts = []
    for e in err.errors()[:n]:
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        got = repr(e.get("input"))
        parts.append(f"{loc}: {e['msg'].lower()} (got {got[:60] + '...' if len(got) > 60 else got})")
    more = err.error_count() - n
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def load_meta(dataset_dir: str | os.PathLike) -> DatasetMeta:
    """Read and minimally validate <dataset>/data.json (full validation: data_prep.check)."""
    path = Path(dataset_dir) / DATA_JSON
    if not Path(dataset_dir).is_dir():
        raise WxscaleError(f"dataset dir {dataset_dir} does not exist; create one with `wxscale prep`")
    if not path.is_file():
        raise WxscaleError(
            f"{path} not found: {dataset_dir} is not a wxscale dataset dir (see `wxscale prep`)"
        )
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WxscaleError(f"{path} is not valid JSON ({err}); rewrite the dataset with `wxscale prep`") from err
    return DatasetMeta.from_json_dict(d, str(path))


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# shards


class ShardWriter:
    """Appends time blocks to one shard, so inputs larger than memory stream through.

    `fields` is chunked one time step per chunk (the loaders read single steps at random).
    """

    def __init__(
        self, path: str | os.PathLike, n_channels: int, grid: tuple[int, int], compression: str | None
    ):
        self.path = Path(path)
        self.file = h5py.File(self.path, "w")
        n_lat, n_lon = grid
        self.fields = self.file.create_dataset(
            FIELDS_KEY,
            shape=(0, n_channels, n_lat, n_lon),
            maxshape=(None, n_channels, n_lat, n_lon),
            chunks=(1, n_channels, n_lat, n_lon),
            dtype="float32",
            compression=compression,
        )
        self.time = self.file.create_dataset(
            TIME_KEY, shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,)
        )
        self.time.attrs["units"] = "hours since 1970-01-01 00:00:00"
        self.fields.attrs["dims"] = json.dumps(DIMS)

    def append(self, fields: np.ndarray, time_hours: np.ndarray) -> None:
        n0, n = self.fields.shape[0], len(time_hours)
        if fields.shape[0] != n:
            raise ValueError("fields and time disagree in length")
        self.fields.resize(n0 + n, axis=0)
        self.time.resize(n0 + n, axis=0)
        self.fields[n0:] = np.asarray(fields, dtype=np.float32)
        self.time[n0:] = np.asarray(time_hours, dtype=np.int64)

    @property
    def n_steps(self) -> int:
        return int(self.fields.shape[0])

    def close(self) -> None:
        self.file.close()


# what h5py raises for a truncated, garbled or foreign file, or a dataset whose chunks cannot be decoded
H5_READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError)


def unreadable(path: str | os.PathLike, err: BaseException, what: str = "shard") -> WxscaleError:
    """The one message for an HDF5 file of a dataset dir that cannot be read, with what fixes it."""
    dataset = Path(path).parent.parent if what == "shard" else Path(path).parent
    return WxscaleError(
        f"{what} {path} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt. Run "
        f"`wxscale check {dataset}`, and rewrite the dataset with `wxscale prep --overwrite`"
    )


def read_shard_time(path: str | os.PathLike) -> np.ndarray:
    """A shard's `time` [T] int64; an unreadable shard is a WxscaleError naming it."""
    try:
        with h5py.File(path, "r") as f:
            return f[TIME_KEY][:].astype(np.int64)
    except H5_READ_ERRORS as err:
        raise unreadable(path, err) from err


# ------------------------------------------------------------------------------------------------------------
# stats


@dataclasses.dataclass
class Stats:
    """Normalisation statistics from the train split (ARCHITECTURE.md: stats.h5).

    climatology, when present: [doy, hour, C, lat, lon] indexed by day of year 0..365 (366 = leap day) and by
    `clim_hours` (hours of day present in the data), for ACC.
    """

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]
    diff_std: np.ndarray  # [C], std of one-step differences
    climatology: np.ndarray | None = None
    clim_hours: np.ndarray | None = None

    def climatology_at(self, time_hours: np.ndarray) -> np.ndarray:
        """Climatology for each time: [T, C, lat, lon]."""
        if self.climatology is None or self.clim_hours is None:
            raise WxscaleError("this dataset has no climatology (its train split spans less than a year)")
        t = hours_to_datetime64(time_hours)
        doy = (t.astype("datetime64[D]") - t.astype("datetime64[Y]")).astype(int)
        hour = (t - t.astype("datetime64[D]")).astype(int)
        hour_idx = np.searchsorted(self.clim_hours, hour)
        hour_idx = np.clip(hour_idx, 0, len(self.clim_hours) - 1)
        return self.climatology[doy, hour_idx]


def write_stats(path: str | os.PathLike, stats: Stats) -> None:
    with h5py.File(path, "w") as f:
        for name in ("mean", "std", "diff_std"):
            f.create_dataset(name, data=np.asarray(getattr(stats, name), dtype=np.float64))
        if stats.climatology is not None:
            f.create_dataset(
                "climatology",
                data=stats.climatology.astype(np.float32),
                chunks=(1, 1, *stats.climatology.shape[2:]),
                compression="lzf",  # fast; gzip took minutes on a 1-degree grid
            )
            f.create_dataset("clim_hours", data=np.asarray(stats.clim_hours, dtype=np.int64))


def read_stats(dataset_dir: str | os.PathLike, with_climatology: bool = False) -> Stats:
    path = Path(dataset_dir) / STATS_H5
    if not path.is_file():
        raise WxscaleError(f"{path} not found; rewrite the dataset with `wxscale prep`")
    try:
        with h5py.File(path, "r") as f:
            for name in ("mean", "std", "diff_std"):
                if name not in f:
                    raise WxscaleError(
                        f"{path}: dataset `{name}` missing; rewrite the dataset with `wxscale prep`"
                    )
            clim = f["climatology"][:] if with_climatology and "climatology" in f else None
            hours = f["clim_hours"][:] if "clim_hours" in f else None
            return Stats(f["mean"][:], f["std"][:], f["diff_std"][:], clim, hours)
    except H5_READ_ERRORS as err:
        raise unreadable(path, err, "statistics file") from err
