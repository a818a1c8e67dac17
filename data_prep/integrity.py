"""Is an input file whole? Each file is held to what its own metadata promises, before and after decoding.

A cut-off file must be an error naming it, never a shorter or zero-padded dataset:

* NetCDF-3 (classic, 64-bit offset, CDF-5): the netCDF-C library reads past the end of a truncated file as
  zeros. The header gives every variable's offset (`begin`), shape and type, and the record count, so the
  bytes the data needs are known exactly (:func:`netcdf3_data_end`, after the Unidata "NetCDF Classic and
  64-bit Offset File Format" specification) and compared with the file's size.
* HDF5 / NetCDF-4: the superblock records the end-of-file address; the HDF5 library refuses a shorter file
  ("truncated file"). Opening it with h5py first turns that into a message that says so.
* GRIB: a file is a sequence of self-delimiting messages, with no count anywhere. eccodes counts them and
  refuses a message cut short; cfgrib, which builds the Dataset, logs a corrupt message and skips it. So the
  fields cfgrib decoded must equal the messages eccodes counted (:func:`require_all_messages_decoded`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import xarray as xr

from wxscale.errors import WxscaleError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGIC = b"CDF"
GRIB_MAGIC = b"GRIB"
FIX_IT = "copy or download it again (compare its size or checksum with the source)"

# NetCDF-3 header tags and the size in bytes of each external type (spec: nc_type)
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_STREAMING = 0xFFFFFFFF  # numrecs unknown (written while streaming): nothing to hold the file to


class _Header:
    """A cursor over a NetCDF-3 header; running off the end raises EOFError (the header itself is cut)."""

    def __init__(self, data: bytes, version: int):
        self.data, self.pos = data, 4
        self.wide = version == 5  # CDF-5: 64-bit counts and dimension ids

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EOFError
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def count(self) -> int:  # NON_NEG: 4 bytes, 8 in CDF-5
        return struct.unpack(">q", self.take(8))[0] if self.wide else struct.unpack(">I", self.take(4))[0]

    def offset(self, version: int) -> int:  # OFFSET: 4 bytes in CDF-1, 8 in CDF-2 and CDF-5
        return struct.unpack(">I", self.take(4))[0] if version == 1 else struct.unpack(">q", self.take(8))[0]

    def name(self) -> str:
        n = self.count()
        text = self.take(n)
        self.take(-n % 4)
        return text.decode("utf-8", "replace")

    def list_of(self, tag: int) -> int:
        got, n = self.int32(), self.count()
        if got not in (0, tag):
            raise ValueError(f"header tag {got} where {tag} was expected")
        return n

    def skip_attributes(self) -> None:
        for _ in range(self.list_of(_NC_ATTRIBUTE)):
            self.name()
            nc_type = self.int32()
            n = self.count()
            size = n * _TYPE_BYTES.get(nc_type, 1)
            self.take(size + (-size % 4))


def netcdf3_data_end(path: str | os.PathLike) -> tuple[int, str, int | None] | None:
    """(bytes the data needs, the variable that ends last, record count or None) from a NetCDF-3 header.

    None when the record count is unknown (a streamed file). Raises EOFError when the header itself is cut,
    ValueError when it is not a NetCDF-3 header at all (the opener then says what it is).
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(4)
        version = head[3] if len(head) == 4 and head[:3] == NETCDF3_MAGIC else 0
        if version not in (1, 2, 5):
            raise ValueError("not a NetCDF-3 file")
        # the header is at most a few MB; read more while it runs off the end of what was read
        size, chunk = p.stat().st_size, 1 << 16
        while True:
            f.seek(0)
            data = f.read(chunk)
            try:
                return _walk_header(_Header(data, version), version)
            except EOFError:
                if len(data) >= size:
                    raise
                chunk *= 4


def _walk_header(h: _Header, version: int) -> tuple[int, str, int | None] | None:
    numrecs = h.count()
    dims = [(h.name(), h.count()) for _ in range(h.list_of(_NC_DIMENSION))]
    h.skip_attributes()
    variables = []  # (name, is_record, bytes of one record or of the whole variable, begin)
    for _ in range(h.list_of(_NC_VARIABLE)):
        name = h.name()
        dim_ids = [h.count() if h.wide else h.int32() for _ in range(h.count())]
        h.skip_attributes()
        nc_type = h.int32()
        h.count()  # vsize: recomputed from the shape below (it saturates for variables over 4 GiB)
        begin = h.offset(version)
        shape = [dims[i][1] for i in dim_ids]
        is_record = bool(shape) and shape[0] == 0  # the record (unlimited) dimension comes first, length 0
        n_bytes = int(np.prod(shape[1:] if is_record else shape, dtype=np.int64)) * _TYPE_BYTES[nc_type]
        variables.append((name, is_record, n_bytes, begin))
    records = [v for v in variables if v[1]]
    if records and numrecs == _STREAMING:
        return None
    # one record holds every record variable, each padded to 4 bytes, except when there is only one
    record_bytes = records[0][2] if len(records) == 1 else sum(v[2] + (-v[2] % 4) for v in records)
    end, last = 0, ""
    for name, is_record, n_bytes, begin in variables:
        if is_record:
            stop = begin + (numrecs - 1) * record_bytes + n_bytes if numrecs else 0
        else:
            stop = begin + n_bytes
        if stop > end:
            end, last = stop, name
    return end, last, (numrecs if records else None)


def _cut(have: int, need: int) -> str:
    return f"{have:,} bytes of the {need:,} it needs ({100 * (need - have) / need:.1f} % missing)"


def require_complete(path: str | os.PathLike) -> None:
    """Refuse a NetCDF-3 or HDF5 file shorter than its header says (GRIB: see :func:`count_grib_messages`)."""
    p = Path(path)
    if p.is_dir():
        return
    with open(p, "rb") as f:
        head = f.read(8)
    have = p.stat().st_size
    if head[:3] == NETCDF3_MAGIC:
        try:
            found = netcdf3_data_end(p)
        except EOFError:
            raise WxscaleError(
                f"input {p} is truncated: the file ends inside its NetCDF-3 header ({have:,} bytes); {FIX_IT}"
            ) from None
        except (ValueError, KeyError, IndexError, struct.error):
            return  # not a header we can walk: the opener's own error says what is wrong
        if found is not None and found[0] > have:
            need, var, numrecs = found
            records = "" if numrecs is None else f" ({numrecs} records)"
            raise WxscaleError(
                f"input {p} is truncated: its NetCDF-3 header puts variable {var!r} up to byte {need:,}"
                f"{records}, but the file holds {_cut(have, need)}; the missing values would read as zeros. "
                f"{FIX_IT[0].upper()}{FIX_IT[1:]}"
            )
    elif head == HDF5_SIGNATURE:
        import h5py

        try:
            h5py.File(p, "r").close()
        except OSError as err:
            what = "is truncated" if "truncated" in str(err) else "is not a readable HDF5/NetCDF-4 file"
            raise WxscaleError(f"input {p} {what} (HDF5: {err}); {FIX_IT}") from err


def count_grib_messages(path: str | os.PathLike, fields: bool = False) -> int:
    """The number of GRIB messages in a file (eccodes); a message cut short is an error naming the file.

    fields=True counts the fields instead, as cfgrib reads them: a GRIB2 message may hold several, and
    counting them means decoding every header (about 1 ms a message, against 20 us for the plain count).
    """
    import eccodes

    p = Path(path)
    with open(p, "rb") as f:
        try:
            if not fields:
                return int(eccodes.codes_count_in_file(f))
            eccodes.codes_grib_multi_support_on()
            eccodes.codes_grib_multi_support_reset_file(f)
            try:
                return int(eccodes.codes_count_in_file(f))
            finally:
                eccodes.codes_grib_multi_support_off()
        except eccodes.GribInternalError as err:
            f.seek(0)
            whole = 0
            try:  # how many complete messages come before the cut, for the message
                while (h := eccodes.codes_grib_new_from_file(f)) is not None:
                    eccodes.codes_release(h)
                    whole += 1
            except eccodes.GribInternalError:
                pass
            raise WxscaleError(
                f"input {p} is truncated or corrupt: GRIB message {whole + 1} is cut short after {whole} "
                f"complete message(s) (eccodes: {err}); {FIX_IT}"
            ) from err


def require_all_messages_decoded(path: str | os.PathLike, ds: xr.Dataset, n_messages: int) -> None:
    """cfgrib's Dataset must hold one 2-D field per GRIB message: no message skipped, none made up (NaN)."""
    decoded = 0
    for da in ds.data_vars.values():
        horizontal = [d for d in da.dims if d in ("latitude", "longitude", "lat", "lon", "x", "y", "values")]
        per_field = int(np.prod([da.sizes[d] for d in horizontal], dtype=np.int64)) or 1
        decoded += da.size // per_field
    if decoded > n_messages:  # GRIB2 messages may hold several fields each: count fields, as cfgrib does
        n_messages = count_grib_messages(path, fields=True)
    if decoded < n_messages:
        raise WxscaleError(
            f"input {path}: cfgrib decoded {decoded} field(s) but the file holds {n_messages} GRIB messages: "
            f"{n_messages - decoded} were skipped (corrupt, or not on the same grid and levels as the rest). "
            f"{FIX_IT[0].upper()}{FIX_IT[1:]}, or split it by variable (grib_copy) and pass the parts"
        )
    if decoded > n_messages:
        raise WxscaleError(
            f"input {path}: the file holds {n_messages} GRIB fields but cfgrib's grid of times, levels and "
            f"variables has {decoded} fields: {decoded - n_messages} would read as missing (NaN). The file "
            "lacks some (time, level) combinations; pass complete files"
        )
