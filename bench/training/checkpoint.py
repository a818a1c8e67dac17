"""Checkpoints of a run: atomic, named, with a ``latest`` pointer.

Layout (ARCHITECTURE.md, run dir)::

    <run>/checkpoints/<name>/state.pt    model, optimizer, scheduler, grad scaler, loader position, RNG states
    <run>/checkpoints/<name>/meta.json   step, samples, flops, wall_s, channels, ... (readable without torch)
    <run>/checkpoints/latest             the name of the newest complete checkpoint

Names: ``samples_<n>`` for trunk checkpoints requested at sample counts (kept: branches start from them),
``step_<n>`` for rolling checkpoints (only the newest is kept), ``final`` at the end of a run. A checkpoint is
written into a temporary dir and renamed into place, and ``latest`` is replaced atomically after that, so a
SIGKILL at any moment leaves the previous checkpoint complete and pointed to.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from wxscale.errors import WxscaleError
from wxscale.files import atomic_output_dir, write_json_atomic, write_text_atomic

STATE = "state.pt"
META = "meta.json"
LATEST = "latest"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, name: str, state: dict, meta: dict) -> Path:
    """Write checkpoint ``name`` atomically, point ``latest`` at it, prune older rolling (``step_*``) ones."""
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


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points to, or None when the run has none."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


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
    return json.loads((Path(ckpt) / META).read_text())


def load_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state, meta) of a checkpoint dir. Our own files: they hold RNG tuples, hence weights_only=False."""
    ckpt = resolve_checkpoint(ckpt)
    state = torch.load(ckpt / STATE, map_location=map_location, weights_only=False)
    return state, read_meta(ckpt)


# --------------------------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states of this process."""
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
