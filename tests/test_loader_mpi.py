"""Two data-parallel ranks under `mpiexec -n 2`: disjoint samples that together cover the epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wxscale.data_prep.loader import EpochSampler, SampleIndex

pytestmark = pytest.mark.mpi

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _kinds() -> list[str]:
    try:
        import nvidia.dali  # noqa: F401

        return ["torch", "dali"]
    except ImportError:
        return ["torch"]


@pytest.fixture(scope="module")
def two_rank_run(tiny_dataset, tmp_path_factory):
    if not MPIEXEC.exists():
        pytest.skip(f"mpiexec not found at {MPIEXEC} (install the `mpich` wheel and mpi4py)")
    pytest.importorskip("mpi4py")
    out = tmp_path_factory.mktemp("mpi")
    cmd = [
        str(MPIEXEC),
        "-n",
        "2",
        sys.executable,
        str(HERE / "mpi_loader_worker.py"),
        str(tiny_dataset),
        str(out),
        *_kinds(),
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_disjoint_and_cover_the_epoch(two_rank_run, tiny_dataset, kind, drop_last):
    recs = [json.loads((two_rank_run / f"{kind}_{drop_last}_rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 and r["targets_follow"] for r in recs)
    assert all((r["state"]["epoch"], r["state"]["batch"]) == (1, 0) for r in recs)
    seen = [{tuple(k) for k in r["keys"]} for r in recs]
    assert len(seen[0]) == len(recs[0]["keys"]) and len(seen[1]) == len(recs[1]["keys"])  # no repeats
    assert not seen[0] & seen[1], "ranks share samples"

    index = SampleIndex(tiny_dataset, "train", 1)
    sampler = EpochSampler(len(index), 8, seed=7, drop_last=drop_last)  # the global view: one rank, batch 4 x 2
    expected = np.concatenate(sampler.batches(0))
    assert seen[0] | seen[1] == {index.locate(i) for i in expected}
    if not drop_last:
        assert len(expected) == len(index)  # every sample once
    else:
        assert len(expected) == (len(index) // 8) * 8
        assert recs[0]["len"] == recs[1]["len"] == len(index) // 8
