"""Run by tests/test_loader_mpi.py under `mpiexec -n 2`: each rank reads one epoch and writes what it saw.

usage: mpi_loader_worker.py DATASET_DIR OUT_DIR KIND [KIND ...]
Writes OUT_DIR/<kind>_<drop_last>_rank<r>.json: the (shard, time index) of every input state the rank got, as
identified in the files (tests/conftest.py: state_keys), plus the loader's len and world size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `tests.conftest`


def main() -> int:
    from mpi4py import MPI  # imported here, not at module level: DALI worker processes never need MPI

    from tests.conftest import state_keys
    from wxscale.data_prep.loader import build_loader

    dataset, out, kinds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    for kind in kinds:
        for drop_last in (True, False):
            loader = build_loader(
                dataset,
                "train",
                batch_size=4,
                rollout_steps=1,
                seed=7,
                rank=rank,
                world_size=world,
                kind=kind,
                num_workers=1,
                drop_last=drop_last,
            )
            keys, follow_ok = [], True
            for x, y in loader:
                k = state_keys(dataset, "train", x)
                follow_ok &= state_keys(dataset, "train", y[:, 0]) == [(s, t + 1) for s, t in k]
                keys += k
            record = {
                "keys": keys,
                "len": len(loader),
                "world_size": world,
                "targets_follow": follow_ok,
                "state": loader.state_dict(),
            }
            (out / f"{kind}_{drop_last}_rank{rank}.json").write_text(json.dumps(record))
            comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
