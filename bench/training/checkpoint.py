"""Checkpoints of a run: atomic, named, with a ``latest`` pointer; loaded weights-only, never by unpickling code.

Layout (ARCHITECTURE.md, run dir)::

    <run>/checkpoints/<name>/state.pt    model, optimizer, scheduler, grad scaler, loader position, RNG states
    <run>/checkpoints/<name>/meta.json   step, samples, flops, wall_s, channels, ... (readable without torch)
    <run>/checkpoints/latest             the name of the newest complete checkpoint

Names: ``samples_<n>`` for trunk checkpoints requested at sample counts (kept: branches start from them),
``step_<n>`` for rolling checkpoints (only the newest is kept), ``final`` at the end of a run. A checkpoint is
written into a temporary dir and renamed into place, and ``latest`` is replaced atomically after that, so a
SIGKILL at any moment leaves the previous checkpoint complete and pointed to.

Safety: ``state.pt`` holds only tensors and plain data (dicts, lists, numbers, strings); the RNG states are
stored as tensors and integer lists, not as numpy or Python objects. It is read with ``torch.load(...,
weights_only=True)``, whose unpickler builds nothing else, so a crafted ``state.pt`` (a pickled ``os.system``
call) is refused instead of run. A damaged or missing ``latest`` pointer, or a truncated checkpoint, makes a
resume fall back to the newest intact checkpoint and say so; it never silently starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from wxscale.errors import WxscaleError
from wxscale.files import atomic_output_dir, write_json_atomic, write_text_atomic

STATE = "state.pt"
META = "meta.json"
LATEST = "latest"
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_plain(value: object, where: str = "state") -> None:
    """Only what a weights-only load reads back; anything else is a bug of the caller (a plain TypeError)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint {where} is a {type(value).__name__}: store tensors and plain data only")


def save_checkpoint(run_dir: str | os.PathLike, name: str, state: dict, meta: dict) -> Path:
    """Write checkpoint ``name`` atomically, point ``latest`` at it, prune older rolling (``step_*``) ones."""
    _check_plain(state)
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    # The same write-then-rename as every output dir of the suite: a SIGKILL leaves only a '.partial' dir.
    with atomic_output_dir(root / name, overwrite=True) as tmp:
        with open(tmp / STATE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(tmp / META, {"name": name, **meta})
    _fsync_dir(root)
    _write_latest(root, name)
    for p in root.glob("step_*"):  # rolling checkpoints: the newest complete one is all a resume needs
        if p.is_dir() and p.name != name:
            shutil.rmtree(p, ignore_errors=True)
    return root / name


def _write_latest(root: Path, name: str) -> None:
    write_text_atomic(root / LATEST, name + "\n")


def _meta_or_none(ckpt: Path) -> dict | None:
    try:
        meta = json.loads((ckpt / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("step"), int) else None


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint with a state file and a readable meta.json, newest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith(".") or not p.is_dir() or not (p / STATE).is_file():
            continue
        meta = _meta_or_none(p)
        if meta is not None:
            found.append((meta["step"], p))
    return sorted(found, key=lambda t: (-t[0], t[1].name))


def _pointer(root: Path) -> tuple[Path | None, str | None]:
    """The checkpoint ``latest`` names if it is complete, else (None, what is wrong with the pointer)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None, f"{pointer} is missing"
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{pointer} cannot be read ({err})"
    if not name:
        return None, f"{pointer} is empty"
    target = root / name
    if "/" in name or name.startswith(".") or not (target / STATE).is_file():
        return None, f"{pointer} names {name!r}, which is not a checkpoint there"
    if _meta_or_none(target) is None:
        return None, f"{pointer} names {name!r}, whose {META} is missing or damaged"
    return target, None


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    """Whether the run dir holds any trace of a checkpoint (a pointer or a checkpoint dir, intact or not)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return False
    return (root / LATEST).exists() or any(
        p.is_dir() and not p.name.startswith(".") and ((p / STATE).exists() or (p / META).exists())
        for p in root.iterdir())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points to; if the pointer is missing or damaged, the newest complete checkpoint
    (by its step); None when the run has none. Cheap: nothing is loaded (see :func:`resume_checkpoint`)."""
    root = checkpoints_dir(run_dir)
    target, _ = _pointer(root)
    if target is not None:
        return target
    found = _complete_checkpoints(root)
    return found[0][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir from a checkpoint dir, its state.pt, or a run dir (its latest checkpoint)."""
    p = Path(path)
    if p.is_file() and p.name == STATE:
        p = p.parent
    if (p / STATE).is_file():
        return p
    if (p / "checkpoints").is_dir():
        found = latest_checkpoint(p)
        if found is not None:
            return found
    names = sorted(q.name for q in p.glob("*") if (q / STATE).is_file()) if p.is_dir() else []
    hint = f" (checkpoints there: {', '.join(names)})" if names else ""
    raise WxscaleError(f"run.init_from={path}: no checkpoint there; give <trunk run>/checkpoints/<name>{hint}")


def read_meta(ckpt: str | os.PathLike) -> dict:
    path = Path(ckpt) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise WxscaleError(f"checkpoint {ckpt}: {META} is missing (an incomplete or foreign checkpoint)") from None
    except (OSError, ValueError) as err:
        raise WxscaleError(f"checkpoint {ckpt}: {META} is damaged ({err})") from None
    if not isinstance(meta, dict):
        raise WxscaleError(f"checkpoint {ckpt}: {META} is not a JSON object")
    return meta


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a ``state.pt`` weights-only: tensors and plain data, never objects that run code when unpickled.

    A file that needs more (a crafted payload, or a checkpoint of another program) or a damaged one raises
    :class:`WxscaleError` naming the file; nothing in it is executed.
    """
    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if "numpy" not in str(err):
                raise
            # Checkpoints written before the RNG states were stored as tensors hold numpy's generator state as
            # an ndarray: allow exactly the numpy globals that rebuild an array (they run no code of the file's
            # choosing); anything else is still refused.
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" in text.lower() or "weights_only" in text:
            # torch's text advises weights_only=False; we never do that, so only the object it names is kept
            named = re.search(r"unsupported GLOBAL (\S+)", text, re.IGNORECASE)
            what = f" (it names {named.group(1)})" if named else ""
            raise WxscaleError(f"{path}: refused: it holds Python objects that a weights-only load does not build"
                               f"{what}; not a wxscale checkpoint, or tampered with; nothing in it was run") from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise WxscaleError(f"{path}: damaged or truncated checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WxscaleError(f"{path}: damaged or truncated checkpoint ({first})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise WxscaleError(f"{path}: not a wxscale checkpoint (no model state in it)")
    return state


def _legacy_numpy_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    found = [_reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in ("UInt32DType", "Float64DType", "Int64DType") if hasattr(dtypes, n)]
    return found


def load_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state, meta) of a checkpoint dir (or a run dir: its latest checkpoint), read weights-only."""
    ckpt = resolve_checkpoint(ckpt)
    meta = read_meta(ckpt)
    return load_state(ckpt / STATE, map_location), meta


def resume_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                      verbose: bool = True) -> tuple[dict, dict, Path] | None:
    """(state, meta, dir) of the newest intact checkpoint of a run, for ``--resume``; None if it has none at all.

    The pointer's checkpoint is taken when it is the newest and loads; otherwise (an empty pointer, one naming a
    deleted checkpoint, a truncated ``state.pt``) the next newest that loads, with a note on stderr (``verbose``)
    that says what was wrong and which checkpoint is used, and ``latest`` is pointed at it. When checkpoints exist but
    none loads, :class:`WxscaleError` lists them: starting over would silently throw the run away.
    """
    root = checkpoints_dir(run_dir)
    if not has_checkpoints(run_dir):
        return None
    target, problem = _pointer(root)
    notes = [problem] if problem else []
    candidates = _complete_checkpoints(root)
    # the newest step first; at equal steps the pointer's target first (final and samples_<n> can share a step)
    candidates.sort(key=lambda t: (-t[0], t[1] != target))
    for step, ckpt in candidates:
        try:
            state = load_state(ckpt / STATE, map_location)
            meta = read_meta(ckpt)
        except WxscaleError as err:
            notes.append(str(err))
            continue
        if ckpt != target or notes:
            if verbose:
                print(f"wxscale: {'; '.join(notes) or f'{root / LATEST} names an older checkpoint'}. "
                      f"Resuming from the newest intact checkpoint, {ckpt.name} (step {step}).",
                      file=sys.stderr, flush=True)
            with contextlib.suppress(OSError):
                _write_latest(root, ckpt.name)
        return state, meta, ckpt
    listed = ", ".join(p.name for p in sorted(q for q in root.iterdir() if not q.name.startswith("."))) or "none"
    raise WxscaleError(f"{root}: no intact checkpoint to resume from ({'; '.join(notes) or 'none is complete'}; "
                       f"entries there: {listed}). Refusing to start over in a run dir with a history: move "
                       f"{root} away to restart from step 0, or train into a new --run-dir")


# --------------------------------------------------------------------------------------------------------------
# RNG states, as tensors and integer lists (a weights-only load reads them; numpy arrays and Python tuples of
# the generators' own formats would need the unpickler to build objects)


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states of this process, as tensors and plain lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [int(version), list(internal), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                             float(n["cached_gaussian"])))
    else:  # a checkpoint from before the tensor format: numpy's own tuple
        np.random.set_state(tuple(n))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
