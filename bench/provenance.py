"""Where a benchmark number comes from: code version, machine, device, library versions, container, batch job.

One flat dict of strings (empty where unknown), so every benchmark CSV can carry the same provenance columns
and a report can show them. Nothing here initialises CUDA, MPI or DALI: versions come from package metadata,
and the NCCL version is asked only when CUDA is already available.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

# The columns, in order: benchmark CSVs append them after their own.
PROVENANCE_COLUMNS = [
    "git_sha", "git_dirty", "host", "device", "device_kind", "cpu_count", "torch_version", "cuda_version",
    "nccl_version", "dali_version", "mpi4py_version", "python_version", "container", "slurm_job_id",
    "timestamp",
]
# Environment variables that name the container image, first match wins. NGC images set
# NVIDIA_PYTORCH_VERSION; Apptainer (and Singularity before it) set *_NAME to the image file's name.
_CONTAINER_VARS = ("APPTAINER_NAME", "SINGULARITY_NAME", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha() -> str:
    """The commit this code is at ('' outside a git checkout)."""
    return _git("rev-parse", "HEAD") or ""


def suite_version() -> str:
    """The installed wxscale version, with the short commit when run from a checkout (e.g. '0.1.0+g1a2b3c4')."""
    try:
        version = importlib.metadata.version("wxscale")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    sha = git_sha()[:7]
    return f"{version}+g{sha}" if sha else version


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dist_version(*names: str, prefix: str | None = None) -> str:
    """Installed version of the first distribution found among ``names`` (or whose name starts with prefix)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if prefix:
        for dist in importlib.metadata.distributions():
            name = (dist.metadata["Name"] or "").lower()
            if name.startswith(prefix):
                return f"{dist.version} ({name})"
    return ""


def container() -> str:
    """The container image this process runs in, as the environment names it ('' outside containers)."""
    parts = []
    for var in _CONTAINER_VARS:
        if os.environ.get(var):
            parts.append(os.environ[var])
            break
    if os.environ.get("NVIDIA_PYTORCH_VERSION"):
        parts.append(f"NGC PyTorch {os.environ['NVIDIA_PYTORCH_VERSION']}")
    if not parts and Path("/.dockerenv").exists():
        parts.append("docker")
    return "; ".join(parts)


def provenance(device=None) -> dict[str, str]:
    """Provenance of a measurement taken on ``device`` (default: cuda when available, else cpu).

    Keys are :data:`PROVENANCE_COLUMNS`; values are strings ('' when unknown or not applicable).
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    from wxscale.hardware import describe_device

    desc = describe_device(device)
    nccl = ""
    if device.type == "cuda" and torch.distributed.is_nccl_available():
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": git_sha(),
        "git_dirty": "" if dirty is None else str(bool(dirty)),
        "host": socket.gethostname(),
        "device": str(desc.get("name", device.type)) if device.type == "cuda" else _cpu_name(),
        "device_kind": device.type,
        "cpu_count": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "nccl_version": nccl,
        "dali_version": _dist_version(prefix="nvidia-dali"),
        "mpi4py_version": _dist_version("mpi4py"),
        "python_version": platform.python_version(),
        "container": container(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
