"""Writing outputs so that nothing half-written ever looks complete: the suite's one set of atomic writers.

Every file or folder that a stage hands on (a dataset dir, a run dir's config and metrics, a sweep's CSVs, a fit,
a benchmark table, a plot, a report) is written under a temporary name in the same folder and renamed over its
final name when complete. A SIGKILL leaves at most a hidden ``.NAME.*.tmp`` file or ``.NAME.*.partial`` folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from wxscale.errors import WxscaleError

PARTIAL_SUFFIX = ".partial"
# Inside a resumable temporary dir: what lets an interrupted write carry on (the writer's key in `key`, and
# whatever records the writer keeps there). Dropped before the dir is renamed into place.
RESUME_DIR = ".resume"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    On an error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    The file is made readable by everyone (mkstemp makes it private): results are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def format_cell(value: Any) -> str:
    """CSV cell text: empty for None and NaN, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]] | Any,
              columns: Sequence[str] | None = None) -> None:
    """Write a table atomically: a list of dicts (``columns`` gives the order; missing keys are empty cells)
    or a pandas DataFrame (written as is, without its index)."""
    if hasattr(rows, "to_csv"):  # a DataFrame
        frame = rows if columns is None else rows[list(columns)]
        with atomic_file(path, newline="") as f:
            frame.to_csv(f, index=False)
        return
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_file(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows({k: format_cell(r.get(k)) for k in columns} for r in rows)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _partial_pattern(out: Path) -> re.Pattern:
    # mkdtemp's random part is 8 characters of [a-z0-9_]: a dataset named "d.x" is not a leftover of "d".
    return re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}{re.escape(PARTIAL_SUFFIX)}")


def partial_leftovers(out: str | os.PathLike) -> list[Path]:
    """Temporary folders that an interrupted :func:`atomic_output_dir` into ``out`` left behind."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = _partial_pattern(out)
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))


def _finish_interrupted_swap(out: Path) -> None:
    """A kill during the final swap leaves ``.NAME.old``: the previous complete output. Put it back if ``out`` is
    missing (the new one never landed), else drop it (the new one did)."""
    old = out.with_name(f".{out.name}.old")
    if not old.exists():
        return
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(out)


def resumable_partial(out: str | os.PathLike, key: str) -> Path | None:
    """The temporary dir an interrupted :func:`atomic_output_dir` into ``out`` left with this resume ``key``
    (the newest, if several), or None."""
    found = []
    for p in partial_leftovers(out):
        try:
            if (p / RESUME_DIR / "key").read_text() == key:
                found.append((p.stat().st_mtime_ns, p))
        except OSError:
            continue
    return max(found)[1] if found else None


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite",
                      resume_key: str | None = None) -> Iterator[Path]:
    """Yield a temporary dir beside ``out``; rename it to ``out`` only when the block finishes without error.

    An interrupted or failed write leaves no dir that looks complete: the temporary one is removed on error,
    and one left behind by a SIGKILL has a name starting with '.' and ending in '.partial' (removed by the next
    write into the same place). A kill during the final swap is repaired by the next write too.

    resume_key: a text that identifies what will be written (e.g. a hash of a plan). It is kept in
    ``tmp/.resume/key``, and a later write with the same key gets the same temporary dir back, with what the
    killed write had finished (leftovers with another key, or none, are removed as usual). The writer keeps its
    own records of what is finished under ``tmp/.resume/``; that folder is removed before the rename.
    """
    out = Path(out)
    if out.parent.is_dir():
        _finish_interrupted_swap(out)
    if out.exists() and not overwrite:
        raise WxscaleError(f"output dir {out} exists; pass {flag} to replace it, or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    reuse = resumable_partial(out, resume_key) if resume_key is not None else None
    for stale in partial_leftovers(out):
        if stale != reuse:
            shutil.rmtree(stale, ignore_errors=True)
    if reuse is not None:
        tmp = reuse
    else:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX))
        if resume_key is not None:
            (tmp / RESUME_DIR).mkdir()
            write_text_atomic(tmp / RESUME_DIR / "key", resume_key)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp / RESUME_DIR, ignore_errors=True)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    Raises :class:`WxscaleError` naming ``flag`` and the folder (not a PermissionError traceback) when it is a
    file, cannot be created, or is not writable.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        what = "is not a folder" if path.exists() and not path.is_dir() else "is not writable"
        raise WxscaleError(f"{flag} {path} {what} ({err.strerror or err}); choose another folder or fix its "
                           "permissions") from None
    return path
