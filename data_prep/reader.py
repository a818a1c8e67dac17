"""Open raw gridded weather files (NetCDF, GRIB, zarr) with xarray and bring them to one shape.

After :func:`open_inputs` (or :func:`normalise` on a Dataset you built yourself) a Dataset has

* dims ``time`` (datetime64), ``lat`` (degrees, north to south), ``lon`` (degrees, ascending), and optionally
  ``level`` (hPa) on the variables that have pressure levels;
* no ensemble dimension (one member was chosen with ``--member``, or the input had none);
* only data variables on that grid.

Longitudes are stored as given, in 0..360 or -180..180, only sorted ascending: converting between the two
would move the seam of a global grid, which the model's periodic padding cares about, so it is left to the
source.

Everything stays lazy: xarray's own backend arrays read only what a ``.isel(time=...)`` block asks for (dask
is not needed), and several files are joined along time by :class:`_TimeConcatArray`, which reads from the
file that holds each requested step. That is what lets a year of 0.25 deg ERA5 stream through
``wxscale prep``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from wxscale.data_prep.integrity import count_grib_messages, require_all_messages_decoded, require_complete
from wxscale.errors import WxscaleError

# Common spellings of each coordinate, first match wins. "t" is not a time name: in ERA5 it is temperature.
COORD_NAMES: dict[str, tuple[str, ...]] = {
    "time": ("time", "valid_time", "Time", "datetime"),
    "lat": ("lat", "latitude", "Latitude", "LAT", "lats", "nav_lat"),
    "lon": ("lon", "longitude", "Longitude", "LON", "lons", "nav_lon"),
    "level": ("level", "isobaricInhPa", "plev", "pressure_level", "pressure", "lev", "isobaric"),
    "member": ("member", "number", "realization", "ensemble", "ens", "member_id"),
}
GRID_DIMS = ("time", "level", "lat", "lon")
GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb1", ".grb2")


# ------------------------------------------------------------------------------------------------------------
# opening files


def engine_for(path: str | os.PathLike) -> str | None:
    """The xarray engine for a path: zarr (dirs, *.zarr), cfgrib (GRIB), netcdf4 (*.nc), else a guess."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".zarr":
        return "zarr"
    if p.suffix.lower() in GRIB_SUFFIXES:
        return "cfgrib"
    if p.suffix.lower() in (".nc", ".nc4", ".cdf", ".netcdf"):
        return "netcdf4"  # reads netCDF-3 too; naming it skips xarray's guess, which imports every backend
    return None


def open_file(path: str | os.PathLike, engine: str | None = None) -> xr.Dataset:
    """Open one file lazily, turning every way it can fail into a WxscaleError that names the file."""
    p = Path(path)
    if not p.exists():
        raise WxscaleError(f"input {p} not found; check the path given to --input")
    if not os.access(p, os.R_OK):
        raise WxscaleError(f"input {p} cannot be read (permission denied); fix its permissions or copy it")
    engine = engine or engine_for(p)
    require_complete(p)  # a cut-off file is refused here, naming it, before a decoder reads zeros from it
    n_messages = count_grib_messages(p) if engine == "cfgrib" else None
    kwargs: dict = {}
    if engine == "cfgrib":
        # cfgrib writes a .idx file next to the input by default; inputs often live on read-only storage
        kwargs["backend_kwargs"] = {"indexpath": ""}
    if engine == "zarr":
        kwargs["chunks"] = None  # xarray's lazy arrays, not dask (which is not installed)
    try:
        with warnings.catch_warnings():
            # zarr stores without consolidated metadata open fine, just more slowly: not worth a warning here
            warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
            with _quiet_cfgrib():  # a message cfgrib skips is reported below, as one line, not as its traceback
                ds = xr.open_dataset(p, engine=engine, **kwargs)
    except Exception as err:  # each backend raises its own types for a corrupt or foreign file
        kind = {"zarr": "a zarr store", "cfgrib": "GRIB"}.get(engine or "", "NetCDF/HDF5")
        raise WxscaleError(
            f"input {p} could not be opened as {kind} ({type(err).__name__}: {err}); is the file complete "
            "and in one of NetCDF, GRIB or zarr? (name GRIB files *.grib, zarr stores *.zarr)"
        ) from err
    if not ds.data_vars:
        raise WxscaleError(f"input {p} holds no data variables (empty or corrupt file?)")
    if n_messages is not None:
        require_all_messages_decoded(p, ds, n_messages)
    return ds


@contextlib.contextmanager
def _quiet_cfgrib():
    log = logging.getLogger("cfgrib")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


# ------------------------------------------------------------------------------------------------------------
# coordinate names, orientation, members


def _find(ds: xr.Dataset, role: str) -> str | None:
    names = [n for n in COORD_NAMES[role] if n in ds.dims]
    if names:
        return names[0]
    names = [n for n in COORD_NAMES[role] if n in ds.coords]
    return names[0] if names else None


def normalise(
    ds: xr.Dataset, where: str = "input", member: int | None = None
) -> tuple[xr.Dataset, list[str]]:
    """Rename coordinates, choose an ensemble member, orient the grid; returns (dataset, notes on changes).

    Idempotent: normalising a normalised Dataset changes nothing. The time axis is only renamed here; its
    checks (order, step, gaps) belong to data_prep.prep, which sees all files joined.
    """
    notes: list[str] = []
    # cfgrib gives `time` (analysis time) and `valid_time`; for analyses they agree, for forecasts the state
    # is valid at valid_time, which is what a weather emulator learns from.
    if "valid_time" in ds.coords and "time" in ds.coords and ds["valid_time"].dims == ds["time"].dims:
        if not np.array_equal(ds["valid_time"].values, ds["time"].values):
            notes.append(f"{where}: using valid_time (analysis time + forecast step) as the time axis")
            ds = ds.assign_coords(time=(ds["time"].dims, ds["valid_time"].values, ds["time"].attrs))
        ds = ds.drop_vars("valid_time")
    renames = {}
    member_name = _find(ds, "member")
    for role in ("time", "lat", "lon", "level", "member"):
        name = _find(ds, role)
        if name is not None and name != role:
            if role in ds.variables:  # e.g. both `time` and `valid_time`: keep the canonical one
                continue
            renames[name] = role
    ds = ds.rename(renames)
    for role in ("lat", "lon"):
        if role not in ds.dims:
            raise WxscaleError(
                f"{where}: no {role} dimension (looked for {', '.join(COORD_NAMES[role])}); dims are "
                f"{dict(ds.sizes)}. wxscale needs a regular latitude-longitude grid"
            )
        if ds[role].ndim != 1:
            raise WxscaleError(
                f"{where}: {role} is {ds[role].ndim}-D (a curvilinear grid); wxscale needs a regular one"
            )

    # ensemble members: one must be chosen, the emulator learns one trajectory at a time
    if "member" in ds.dims:
        values = ds["member"].values.tolist() if "member" in ds.coords else list(range(ds.sizes["member"]))
        if member is None and len(values) > 1:
            raise WxscaleError(
                f"{where}: has an ensemble dimension `{member_name}` with {len(values)} members "
                f"({values[0]}..{values[-1]}); choose one with --member K "
                "(Python: select one with ds.isel(...) before write_dataset)"
            )
        pick = values[0] if member is None else member
        if pick not in values:
            raise WxscaleError(f"{where}: --member {member} not found; members are {values}")
        ds = ds.isel(member=values.index(pick))
        notes.append(f"{where}: ensemble member {pick} of {len(values)}")
    elif member is not None:
        notes.append(f"{where}: --member {member} ignored, the input has no ensemble dimension")
    if "member" in ds.coords:
        ds = ds.drop_vars("member")

    # pressure levels in hPa, so that channels read z500, t850 whatever the source's unit
    if "level" in ds.coords and ds["level"].ndim <= 1:
        lev = ds["level"]
        if str(lev.attrs.get("units", "")).lower() == "pa" or float(np.nanmax(lev.values)) > 2000:
            ds = ds.assign_coords(level=(lev.dims, lev.values / 100.0, {**lev.attrs, "units": "hPa"}))
            notes.append(f"{where}: pressure levels converted from Pa to hPa")

    # latitude north to south, longitude ascending; isel with index arrays stays lazy
    lat = ds["lat"].values
    if len(lat) > 1 and not np.all(np.diff(lat) < 0):
        # a plain reversal stays a slice, which backends read in one go; anything else is an index array
        rev = bool(np.all(np.diff(lat) > 0))
        ds = ds.isel(lat=slice(None, None, -1) if rev else np.argsort(-lat, kind="stable"))
        notes.append(f"{where}: latitude reordered north to south")
    lon = ds["lon"].values
    if len(lon) > 1 and not np.all(np.diff(lon) > 0):
        ds = ds.isel(lon=np.argsort(lon, kind="stable"))
        notes.append(f"{where}: longitude sorted ascending (values kept as given)")
    if (
        np.any(np.abs(ds["lat"].values) > 90)
        or np.any(ds["lon"].values < -180)
        or np.any(ds["lon"].values > 360)
    ):
        raise WxscaleError(
            f"{where}: lat/lon outside [-90, 90] x [-180, 360]; are the coordinates in degrees?"
        )
    if len(np.unique(ds["lat"].values)) != len(lat) or len(np.unique(ds["lon"].values)) != len(lon):
        raise WxscaleError(f"{where}: repeated latitude or longitude values (e.g. both 0 and 360 deg)")
    ds, renamed = short_variable_names(ds, where)
    return ds, notes + renamed


# ------------------------------------------------------------------------------------------------------------
# channels: variables, with pressure levels spread into channels (z500, t850, ...)


@dataclasses.dataclass(frozen=True)
class Channel:
    name: str  # e.g. "z500", "msl"
    var: str  # the Dataset variable
    level_index: int | None  # index along `level`, or None for a variable without levels
    units: str = ""


def _level_name(var: str, level: float) -> str:
    return f"{var}{int(level)}" if float(level).is_integer() else f"{var}{level:g}"


def channel_specs(ds: xr.Dataset) -> tuple[list[Channel], dict[str, str]]:
    """All channels the Dataset offers, and {variable: why it cannot be used} for the others."""
    channels: list[Channel] = []
    unusable: dict[str, str] = {}
    for var, da in ds.data_vars.items():
        extra = [d for d in da.dims if d not in GRID_DIMS]
        if "lat" not in da.dims or "lon" not in da.dims:
            unusable[str(var)] = f"not on the lat/lon grid (dims {da.dims})"
            continue
        if extra:
            unusable[str(var)] = f"has extra dims {extra} (select one value of each first)"
            continue
        units = str(da.attrs.get("units", ""))
        if "level" in da.dims:
            for i, lev in enumerate(np.atleast_1d(ds["level"].values)):
                channels.append(Channel(_level_name(str(var), lev), str(var), i, units))
        elif "level" in da.coords and da["level"].ndim == 0:  # a single level kept as a scalar (cfgrib)
            channels.append(Channel(_level_name(str(var), float(da["level"])), str(var), None, units))
        else:
            channels.append(Channel(str(var), str(var), None, units))
    return channels, unusable


def parse_vars(text: str | list[str] | None) -> list[str] | None:
    """ "z500,t850" or ["z500", "t850"] -> ["z500", "t850"]; None or "" -> None (all channels)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else [v for t in text for v in t.split(",")]
    items = [v.strip() for v in items if v.strip()]
    return items or None


def select_channels(ds: xr.Dataset, variables: list[str] | None, where: str = "input") -> list[Channel]:
    """Channels for `--vars`: a channel name (z500) or a variable name (z: all its levels), in order asked."""
    channels, unusable = channel_specs(ds)
    available = ", ".join(c.name for c in channels) or "none"
    if not channels:
        why = "; ".join(f"{k}: {v}" for k, v in unusable.items())
        raise WxscaleError(f"{where}: no variable on a time x lat x lon grid ({why})")
    if variables is None:
        return channels
    chosen: list[Channel] = []
    for want in variables:
        hits = [c for c in channels if c.name == want] or [c for c in channels if c.var == want]
        if not hits:
            hint = f" ({want}: {unusable[want]})" if want in unusable else ""
            raise WxscaleError(
                f"--vars: {want!r} not found in {where}{hint}; available channels: {available}"
            )
        chosen += [c for c in hits if c not in chosen]
    return chosen


def read_channels(ds: xr.Dataset, channels: list[Channel], time: slice) -> np.ndarray:
    """One time block as float32 [time, channel, lat, lon], reading each variable once."""
    n_t = len(range(*time.indices(ds.sizes["time"])))
    out = np.empty((n_t, len(channels), ds.sizes["lat"], ds.sizes["lon"]), dtype=np.float32)
    by_var: dict[str, list[int]] = {}
    for i, c in enumerate(channels):
        by_var.setdefault(c.var, []).append(i)
    for var, idx in by_var.items():
        da = ds[var].isel(time=time)
        if "level" in da.dims:
            levels = [channels[i].level_index for i in idx]
            block = da.isel(level=levels).transpose("time", "level", "lat", "lon").values
            out[:, idx] = block
        else:
            out[:, idx[0]] = da.transpose("time", "lat", "lon").values
    return out


# ------------------------------------------------------------------------------------------------------------
# several files -> one lazy Dataset


class _TimeConcatArray(BackendArray):
    """Lazy concatenation along the time axis of variables from several files.

    Each part is an xr.Variable (lazy) with the full dims, or without `time` for a file holding one time step.
    Reads go to the parts that hold the requested steps; an error names the file it came from.
    """

    def __init__(self, parts: list[tuple[xr.Variable, str]], dims: tuple[str, ...]):
        self.parts, self.dims = parts, dims
        self.axis = dims.index("time")
        lengths = [v.sizes.get("time", 1) for v, _ in parts]
        self.offsets = np.cumsum([0, *lengths])
        first = parts[0][0]
        other = [first.sizes[d] for d in dims if d != "time"]
        self.shape = (*other[: self.axis], int(self.offsets[-1]), *other[self.axis :])
        self.dtype = np.result_type(*[v.dtype for v, _ in parts])

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._raw)

    def _raw(self, key: tuple) -> np.ndarray:
        t_key = key[self.axis]
        drop_time = isinstance(t_key, (int, np.integer))
        want = np.atleast_1d(np.arange(self.shape[self.axis])[t_key])
        other = tuple(k for i, k in enumerate(key) if i != self.axis)
        pieces, order = [], []
        for j, (var, path) in enumerate(self.parts):
            lo, hi = self.offsets[j], self.offsets[j + 1]
            sel = np.flatnonzero((want >= lo) & (want < hi))
            if len(sel) == 0:
                continue
            local = want[sel] - lo
            try:
                if "time" in var.dims:
                    tkey = slice(int(local[0]), int(local[-1]) + 1) if np.all(np.diff(local) == 1) else local
                    piece = np.asarray(
                        var.transpose(*self.dims)[(*other[: self.axis], tkey, *other[self.axis :])].values
                    )
                else:
                    piece = np.asarray(var.transpose(*[d for d in self.dims if d != "time"])[other].values)
                    piece = np.repeat(np.expand_dims(piece, self.axis), len(local), axis=self.axis)
            except WxscaleError:
                raise
            except Exception as err:
                raise WxscaleError(
                    f"reading {path} failed ({type(err).__name__}: {err}); is the file truncated or corrupt?"
                ) from err
            pieces.append(piece)
            order.append(sel)
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=self.axis)
        perm = np.argsort(np.concatenate(order), kind="stable")
        if np.any(perm != np.arange(len(perm))):  # the parts were asked for out of order
            out = np.take(out, perm, axis=self.axis)
        return np.take(out, 0, axis=self.axis) if drop_time else out


def _times(ds: xr.Dataset, where: str) -> np.ndarray:
    if "time" not in ds.coords:
        raise WxscaleError(
            f"{where}: no time axis (looked for {', '.join(COORD_NAMES['time'])}); dims are {dict(ds.sizes)}"
        )
    t = np.atleast_1d(ds["time"].values)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise WxscaleError(
            f"{where}: time values are {t.dtype}, not dates (missing or non-standard calendar/units?); "
            "wxscale needs a CF time axis such as 'hours since 1970-01-01' in the standard calendar"
        )
    return t.astype("datetime64[ns]")


def _concat(parts: list[tuple[str, xr.Dataset]]) -> xr.Dataset:
    """Join files with the same variables along time, lazily, in order of their first time."""
    parts = sorted(parts, key=lambda p: _times(p[1], p[0])[0])
    first_path, first = parts[0]
    times = np.concatenate([_times(ds, path) for path, ds in parts])
    # overlapping files: say which, instead of a generic "duplicated times" later
    for (pa, a), (pb, b) in zip(parts, parts[1:], strict=False):
        if _times(b, pb)[0] <= _times(a, pa)[-1]:
            raise WxscaleError(
                f"inputs {pa} and {pb} overlap in time ({_times(b, pb)[0]} <= {_times(a, pa)[-1]}); "
                "pass each time step once"
            )
    variables = {}
    for var in first.data_vars:
        da = first[var]
        if "time" not in da.dims and ("time" not in first.coords or "time" in first.dims):
            continue  # no time axis, or an invariant (land-sea mask, orography) beside time-varying fields
        dims = ("time", *[d for d in da.dims if d != "time"])
        backend = _TimeConcatArray([(ds[var].variable, path) for path, ds in parts], dims)
        variables[var] = xr.Variable(dims, indexing.LazilyIndexedArray(backend), attrs=da.attrs)
    coords = {"time": times, "lat": first["lat"].values, "lon": first["lon"].values}
    if "level" in first.coords and first["level"].ndim == 1:
        coords["level"] = first["level"].values
    ds = xr.Dataset(variables, coords=coords)
    if "level" in first.coords and first["level"].ndim == 0:  # keep a scalar level for channel naming
        ds = ds.assign_coords(level=first["level"].values)
    for c in ("lat", "lon", "level"):
        if c in ds.coords and c in first.coords:
            ds[c].attrs = first[c].attrs
    return ds


def open_inputs(
    paths: list[str | os.PathLike], member: int | None = None, engine: str | None = None
) -> tuple[xr.Dataset, list[str]]:
    """Open, normalise and join input files into one lazy Dataset; returns (dataset, notes).

    Files holding the same variables are joined along time; files holding different variables (for example one
    file per variable) are merged on the times they share (an inner join, said in the notes).
    """
    if not paths:
        raise WxscaleError("no input files; pass --input PATH [PATH ...] or --builtin swe")
    opened: list[tuple[str, xr.Dataset]] = []
    notes: list[str] = []
    for p in paths:
        ds, n = normalise(open_file(p, engine), where=str(p), member=member)
        _times(ds, str(p))  # fail early, naming the file, if it has no usable time axis
        keep = [v for v in ds.data_vars if "lat" in ds[v].dims and "lon" in ds[v].dims]
        if not keep:
            raise WxscaleError(
                f"input {p}: no variable on the lat/lon grid (variables: {list(ds.data_vars)})"
            )
        opened.append((str(p), ds[keep]))
        notes += n
    # every file must share one grid, or channels would not line up
    ref_path, ref = opened[0]
    for path, ds in opened[1:]:
        for c in ("lat", "lon"):
            if ds.sizes[c] != ref.sizes[c] or not np.allclose(ds[c].values, ref[c].values, atol=1e-6):
                raise WxscaleError(
                    f"inputs {ref_path} and {path} are on different grids ({c}: {ref.sizes[c]} points "
                    f"{float(ref[c][0]):g}..{float(ref[c][-1]):g} vs {ds.sizes[c]} points "
                    f"{float(ds[c][0]):g}..{float(ds[c][-1]):g}); regrid them to one grid first"
                )
    groups: dict[tuple[str, ...], list[tuple[str, xr.Dataset]]] = {}
    for path, ds in opened:
        groups.setdefault(tuple(sorted(map(str, ds.data_vars))), []).append((path, ds))
    joined = [_concat(g) for g in groups.values()]
    if len(joined) == 1:
        return joined[0], notes
    clash = set.intersection(*[set(map(str, d.data_vars)) for d in joined])
    if clash:
        raise WxscaleError(
            f"inputs mix variable sets that share {sorted(clash)}; give each variable's files once"
        )
    common = joined[0]["time"].values
    for d in joined[1:]:
        common = np.intersect1d(common, d["time"].values)
    dropped = sum(d.sizes["time"] for d in joined) - len(common) * len(joined)
    if len(common) == 0:
        raise WxscaleError(
            f"inputs {list(paths)} hold different variables at no common time; nothing to merge"
        )
    if dropped:
        notes.append(
            f"merged files with different variables on their {len(common)} common times ({dropped} dropped)"
        )
    merged = [d.isel(time=np.flatnonzero(np.isin(d["time"].values, common))) for d in joined]
    return xr.merge(merged, join="exact", compat="override"), notes


# ------------------------------------------------------------------------------------------------------------
# published ERA5 stores (WeatherBench 2, ARCO-ERA5): long variable names, zarr provenance

# ERA5's long variable names, as WeatherBench 2 and ARCO-ERA5 spell them, -> ECMWF short names (cfgrib's
# spelling), so that channels read z500, t850, t2m, u10 whichever source the data came from.
ERA5_SHORT_NAMES: dict[str, str] = {
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "specific_humidity": "q",
    "relative_humidity": "r",
    "vertical_velocity": "w",
    "2m_temperature": "t2m",
    "2m_dewpoint_temperature": "d2m",
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "100m_u_component_of_wind": "u100",
    "100m_v_component_of_wind": "v100",
    "mean_sea_level_pressure": "msl",
    "surface_pressure": "sp",
    "total_column_water_vapour": "tcwv",
    "total_precipitation": "tp",
    "sea_surface_temperature": "sst",
    "skin_temperature": "skt",
    "total_cloud_cover": "tcc",
}

# files that describe a zarr store (v2 and v3); everything else in it is chunk data
ZARR_METADATA_FILES = (".zmetadata", ".zgroup", ".zarray", ".zattrs", "zarr.json")


def short_variable_names(ds: xr.Dataset, where: str = "input") -> tuple[xr.Dataset, list[str]]:
    """Rename ERA5 long variable names (:data:`ERA5_SHORT_NAMES`) to short ones; returns (dataset, notes).

    A long name is kept when its short name is taken by another variable of the same Dataset. Lazy (a rename).
    """
    renames = {
        str(v): ERA5_SHORT_NAMES[str(v)]
        for v in ds.data_vars
        if str(v) in ERA5_SHORT_NAMES and ERA5_SHORT_NAMES[str(v)] not in ds.variables
    }
    if not renames:
        return ds, []
    listed = ", ".join(f"{a} -> {b}" for a, b in renames.items())
    return ds.rename(renames), [f"{where}: ERA5 variable names shortened for channel names ({listed})"]


def is_zarr_store(path: str | os.PathLike) -> bool:
    """A zarr store: a dir holding zarr metadata (v2 .zgroup/.zmetadata/.zarray, or v3 zarr.json)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in (".zmetadata", ".zgroup", ".zarray", "zarr.json"))


def zarr_store_provenance(path: str | os.PathLike) -> dict:
    """Provenance of a zarr store without reading its chunks: sha256 over its metadata files only.

    A published store (WeatherBench 2, ARCO-ERA5) holds terabytes to petabytes of chunks, usually on a mounted
    bucket, so hashing every file, as is done for a small input, would read the whole store: the metadata
    names the variables, shapes, chunking, codecs and attributes, which is what identifies a published
    version. Chunk bytes are not covered, and the record says so.
    """
    import hashlib
    import json

    p = Path(path).resolve()
    h, n_files, n_bytes = hashlib.sha256(), 0, 0
    pending = [p]
    while pending:  # groups are listed, arrays are not: an array's dir holds its (possibly millions of) chunks
        node = pending.pop(0)
        is_group = (node / ".zgroup").is_file()
        for name in ZARR_METADATA_FILES:
            f = node / name
            if not f.is_file():
                continue
            data = f.read_bytes()
            h.update(str(f.relative_to(p)).encode() + b"\0")
            h.update(hashlib.sha256(data).digest())
            n_files += 1
            n_bytes += len(data)
            if name == "zarr.json":
                try:
                    is_group = json.loads(data).get("node_type") == "group"
                except ValueError as err:
                    raise WxscaleError(f"input {p}: {f} is not valid JSON ({err}); is the store complete?") from err
        if is_group:
            pending += sorted(d for d in node.iterdir() if d.is_dir())
    return {
        "path": str(p),
        "kind": "zarr",
        "sha256": h.hexdigest(),
        "sha256_covers": f"the store's {n_files} metadata files ({n_bytes} bytes), not its chunks",
    }
