"""Which launcher started this process, and the MPI world of a job that is not a torch job.

Shared by the trainer's wireup (wxscale.training.distributed, which adds torchrun and a torch process group) and
by `wxscale prep` (which needs only mpi4py: ranks that each write some shards, then a reduction of small
accumulators). Nothing is initialised at import: mpi4py is imported only when the environment says an MPI
launcher (``mpiexec``/``mpirun``, or ``srun --mpi=pmi2|pmix``) started us, since MPI_Init must not run in, e.g.,
a DALI worker that re-imports ``__main__``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from wxscale.errors import WxscaleError

# Set by the MPI launchers (Open MPI, MPICH/hydra and Slurm's pmi2, PMIx, MVAPICH, Intel MPI) in every rank.
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
MPI_LOCAL_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK")


def under_mpi(env: Mapping[str, str] | None = None) -> bool:
    """Whether an MPI launcher started this process (its environment says so; nothing is imported)."""
    env = os.environ if env is None else env
    return any(k in env for k in MPI_SIZE_VARS)


def srun_tasks(env: Mapping[str, str] | None = None) -> int:
    """How many tasks the enclosing `srun` step started (1 outside srun, or in a batch script itself)."""
    env = os.environ if env is None else env
    try:
        return int(env.get("SLURM_STEP_NUM_TASKS", "1")) if "SLURM_PROCID" in env else 1
    except ValueError:
        raise WxscaleError(f"SLURM_STEP_NUM_TASKS={env['SLURM_STEP_NUM_TASKS']!r} is not an integer") from None


class ProcessWorld:
    """Rank, size and pickled-object messages between the processes of one launch (mpi4py's COMM_WORLD).

    A single process (no launcher) is a world of one whose collectives return their argument.
    """

    def __init__(self, comm: Any = None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root) if self.distributed else obj

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj) if self.distributed else [obj]

    def send(self, obj: Any, dest: int) -> None:
        self.comm.send(obj, dest=dest)

    def recv(self, source: int) -> Any:
        return self.comm.recv(source=source)

    def barrier(self) -> None:
        if self.distributed:
            self.comm.Barrier()


def process_world(env: Mapping[str, str] | None = None) -> ProcessWorld:
    """The MPI world when an MPI launcher (or a multi-task srun step) started us, else a world of one.

    `srun` without an MPI plugin starts N independent processes that would each believe they are alone and
    write everything: that is refused, naming the fix (``srun --mpi=pmi2``, or ``pmix``).
    """
    env = os.environ if env is None else env
    tasks = srun_tasks(env)
    if not under_mpi(env) and tasks == 1:
        return ProcessWorld()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise WxscaleError("launched by mpiexec or srun with several tasks, but mpi4py is not importable: "
                           "pip install mpi4py (and an MPI, e.g. the mpich wheel), or run a single process") from err
    world = ProcessWorld(MPI.COMM_WORLD)
    if tasks > 1 and world.size != tasks:
        raise WxscaleError(f"srun started {tasks} tasks but MPI sees a world of {world.size}: srun needs an MPI "
                           "plugin that wires them up, e.g. srun --mpi=pmi2 (the mpich wheel) or --mpi=pmix")
    return world
