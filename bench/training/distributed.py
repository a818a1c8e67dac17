"""Process-group wireup from torchrun, Slurm or MPI; reductions; teardown.

Where the world comes from (``launcher: auto`` tries them in this order):

- torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
- Slurm (``srun``): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), ``SLURM_LOCALID``; the
  address is the first host of ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``) and the port is
  ``MASTER_PORT`` or one derived from the job id, so every rank computes the same pair without talking.
- MPI (``mpiexec``/``mpirun``, detected by the launcher's environment): mpi4py, imported only then, gives rank and
  size; rank 0 picks its address and a free port and broadcasts them.

torch.distributed then runs NCCL on CUDA and gloo on CPU (the torch CPU wheel has no MPI backend: MPI only wires
the ranks up). A single process (no launcher) runs without a process group.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
from collections.abc import Mapping

import torch
import torch.distributed as dist

from wxscale.errors import WxscaleError
from wxscale.launch import MPI_LOCAL_VARS, under_mpi


@dataclasses.dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[003-005,010],cpu1' -> 'gpu003' (zero padding kept)."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]*)(\[([^\]]*)\])?([^,]*)", nodelist)
    if not m or not nodelist:
        raise WxscaleError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, _, ranges, suffix = m.groups()
    if ranges is None:
        return prefix + suffix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first + suffix


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise WxscaleError(f"environment variable {key}={env[key]!r} is not an integer") from None


def from_torchrun(env: Mapping[str, str]) -> World:
    return World(rank=_int(env, "RANK"), world_size=_int(env, "WORLD_SIZE"),
                 local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                 master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                 master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500, launcher="torchrun")


def from_slurm(env: Mapping[str, str]) -> World:
    ntasks_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    elif nodelist:
        addr = first_host(nodelist)
    else:
        addr = "127.0.0.1"
    if "MASTER_PORT" in env:
        port = _int(env, "MASTER_PORT")
    else:  # the same for every rank of the job, and unlikely to collide with a neighbour job on the node
        port = 15000 + _int(env, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in env else 29500
    return World(rank=_int(env, "SLURM_PROCID"), world_size=_int(env, ntasks_key) if ntasks_key in env else 1,
                 local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                 master_addr=addr, master_port=port, launcher="slurm")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def from_mpi(env: Mapping[str, str]) -> World:
    try:
        from mpi4py import MPI  # lazily: DALI workers re-import __main__, and MPI_Init must not run there
    except ImportError as err:
        raise WxscaleError("launched under MPI but mpi4py is not importable: pip install mpi4py (and an MPI), "
                           "or launch with torchrun / srun") from err
    comm = MPI.COMM_WORLD
    addr_port = (_own_address(), _free_port()) if comm.Get_rank() == 0 else None
    addr, port = comm.bcast(addr_port, root=0)
    local = next((_int(env, k) for k in MPI_LOCAL_VARS if k in env), None)
    if local is None:
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    return World(rank=comm.Get_rank(), world_size=comm.Get_size(), local_rank=local, master_addr=addr,
                 master_port=port, launcher="mpi")


def detect_world(launcher: str = "auto", env: Mapping[str, str] | None = None) -> World:
    """The world this process belongs to (see the module docstring); ``World()`` when nothing launched it."""
    env = os.environ if env is None else env
    if launcher == "none":
        return World()
    if launcher == "torchrun" or (launcher == "auto" and "RANK" in env and "WORLD_SIZE" in env):
        missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
        if missing:
            raise WxscaleError(f"distributed.launcher=torchrun but {', '.join(missing)} not set")
        return from_torchrun(env)
    if launcher == "slurm" or (launcher == "auto" and "SLURM_PROCID" in env
                               and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env)):
        if "SLURM_PROCID" not in env:
            raise WxscaleError("distributed.launcher=slurm but SLURM_PROCID is not set (run under srun)")
        return from_slurm(env)
    if launcher == "mpi" or (launcher == "auto" and under_mpi(env)):
        return from_mpi(env)
    return World()


def device_for(world: World, requested: str = "auto") -> torch.device:
    """cuda:<local rank> when CUDA is asked for or available, else cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise WxscaleError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init(world: World, device: torch.device, backend: str = "auto", timeout_s: float = 600) -> None:
    """Create the default process group (nothing for a single process)."""
    if not world.distributed or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", world.master_addr)
    os.environ.setdefault("MASTER_PORT", str(world.master_port))
    dist.init_process_group(backend=backend, init_method=f"tcp://{world.master_addr}:{world.master_port}",
                            rank=world.rank, world_size=world.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce(values: list[float] | torch.Tensor, op: str = "sum", device: torch.device | None = None):
    """Sum / mean / max over ranks of a tensor or a list of floats (returned as the same kind; float64)."""
    as_list = not isinstance(values, torch.Tensor)
    t = torch.tensor(values, dtype=torch.float64, device=device) if as_list else values.detach().clone()
    if active():
        if op == "max":
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            if op == "mean":
                t /= dist.get_world_size()
    return t.tolist() if as_list else t


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
