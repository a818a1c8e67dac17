"""Run by tests/test_loader_mpi.py under `mpiexec -n N`: each rank reads epochs and writes what it saw.

usage: mpi_loader_worker.py DATASET_DIR OUT_DIR BATCH[,BATCH...] EPOCHS KIND [KIND ...]
For each kind, drop_last (True, False) and per-rank batch size, writes OUT_DIR/<kind>_<drop_last>_b<batch>_rank<r>.json:
the (shard, time index) of every input state the rank got per epoch, as identified in the files
(tests/conftest.py: state_keys), the size of each batch, the loader's len and world size.

Every batch is followed by a collective (an allreduce of the batch size), as a data-parallel training or
validation step would be: a rank with fewer batches than another would hang it. So that a mismatch fails the
test instead of hanging it, the ranks first compare their len(loader) and skip reading when they differ.
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

    dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
    batches, epochs, kinds = [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4]), sys.argv[5:]
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    for kind in kinds:
        for drop_last in (True, False):
            for batch in batches:
                loader = build_loader(dataset, "train", batch_size=batch, rollout_steps=1, seed=7, rank=rank,
                                      world_size=world, kind=kind, num_workers=1, drop_last=drop_last)
                lens = comm.allgather(len(loader))
                keys: list[list] = []
                sizes: list[list[int]] = []
                global_samples, follow_ok = 0, True
                for _ in range(epochs if len(set(lens)) == 1 else 0):
                    keys.append([])
                    sizes.append([])
                    for x, y in loader:
                        k = state_keys(dataset, "train", x)
                        follow_ok &= state_keys(dataset, "train", y[:, 0]) == [(s, t + 1) for s, t in k]
                        keys[-1] += k
                        sizes[-1].append(int(x.shape[0]))
                        global_samples += comm.allreduce(int(x.shape[0]))  # the per-step collective
                loader.close()
                record = {"keys": keys, "sizes": sizes, "len": len(loader), "lens": lens, "world_size": world,
                          "targets_follow": follow_ok, "state": loader.state_dict(),
                          "global_samples": global_samples}
                (out / f"{kind}_{drop_last}_b{batch}_rank{rank}.json").write_text(json.dumps(record))
                comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
