"""Data-parallel ranks under `mpiexec`: disjoint samples that together cover the epoch, and the same number of
batches on every rank even when the ranks do not divide the sample count (many shards, uneven counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_tiny_dataset
from wxscale.data_prep.loader import EpochSampler, SampleIndex

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _kinds() -> list[str]:
    try:
        import nvidia.dali  # noqa: F401

        return ["torch", "dali"]
    except ImportError:
        return ["torch"]


def _mpirun(dataset: Path, out: Path, n_ranks: int, batches: str, epochs: int) -> None:
    if not MPIEXEC.exists():
        pytest.skip(f"mpiexec not found at {MPIEXEC} (install the `mpich` wheel and mpi4py)")
    pytest.importorskip("mpi4py")
    cmd = [str(MPIEXEC), "-n", str(n_ranks), sys.executable, str(HERE / "mpi_loader_worker.py"), str(dataset),
           str(out), batches, str(epochs), *_kinds()]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as err:  # ranks waiting on each other: the hang this file guards against
        raise AssertionError(f"mpiexec did not finish in 300 s (ranks hung?):\n{err.stdout}\n{err.stderr}") from err
    assert proc.returncode == 0, f"mpiexec failed:\n{proc.stdout}\n{proc.stderr}"


def _records(out: Path, kind: str, drop_last: bool, batch: int, world: int) -> list[dict]:
    return [json.loads((out / f"{kind}_{drop_last}_b{batch}_rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def two_rank_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    _mpirun(tiny_dataset, out, 2, "4", 1)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_disjoint_and_cover_the_epoch(two_rank_run, tiny_dataset, kind, drop_last):
    recs = _records(two_rank_run, kind, drop_last, 4, 2)
    assert all(r["world_size"] == 2 and r["targets_follow"] for r in recs)
    assert all((r["state"]["epoch"], r["state"]["batch"]) == (1, 0) for r in recs)
    seen = [{tuple(k) for k in r["keys"][0]} for r in recs]
    assert len(seen[0]) == len(recs[0]["keys"][0]) and len(seen[1]) == len(recs[1]["keys"][0])  # no repeats
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


# ------------------------------------------------------------------------------------------------------------
# uneven sample counts over many shards

UNEVEN_BATCHES = (3, 1)  # 31 samples on 2 ranks: batch 3 leaves a tail of 1 (< ranks), batch 1 an odd count


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory) -> Path:
    """Five train shards, a gap, 31 train samples: odd, and 1 more than a multiple of the global batch 6."""
    path = make_tiny_dataset(tmp_path_factory.mktemp("uneven") / "uneven", n_steps=60, train_shards=5, gaps=(7,),
                             grid=(4, 8))
    assert len(SampleIndex(path, "train", 1)) == 31
    return path


@pytest.fixture(scope="module")
def uneven_run(uneven_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_uneven")
    _mpirun(uneven_dataset, out, 2, ",".join(map(str, UNEVEN_BATCHES)), 2)
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("batch", UNEVEN_BATCHES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_uneven_counts_give_every_rank_the_same_number_of_batches(uneven_run, uneven_dataset, kind, batch,
                                                                  drop_last):
    recs = _records(uneven_run, kind, drop_last, batch, 2)
    n = 31
    assert len(set(recs[0]["lens"])) == 1, f"ranks disagree on the batches per epoch: {recs[0]['lens']}"
    n_batches = n // (2 * batch) if drop_last else -(-n // (2 * batch))
    assert recs[0]["len"] == n_batches
    for epoch in range(2):  # two epochs: the epoch change (DALI's pipeline reset) too
        sizes = [r["sizes"][epoch] for r in recs]
        assert len(sizes[0]) == len(sizes[1]) == n_batches  # every rank read (and stepped) as many batches
        assert all(0 <= s <= batch for s in sizes[0] + sizes[1])
        seen = [[tuple(k) for k in r["keys"][epoch]] for r in recs]
        both = seen[0] + seen[1]
        assert len(both) == len(set(both)), "a sample read twice in one epoch"
        assert len(both) == (n // (2 * batch)) * 2 * batch if drop_last else n  # without drop_last: all, once
    assert all(r["targets_follow"] for r in recs)
    assert recs[0]["global_samples"] == recs[1]["global_samples"] == 2 * len(both)
    if not drop_last and batch == 1:
        # 31 samples, batch 1, 2 ranks: 16 batches each; rank 1's last is empty (no split avoids it)
        assert [s[-1] for s in (recs[0]["sizes"][0], recs[1]["sizes"][0])] == [1, 0]
    if not drop_last and batch == 3:
        # tail of 1 < 2 ranks: the last full global batch joins it, 7 samples -> 4 + 3, two last batches each
        assert [s[-2:] for s in (recs[0]["sizes"][0], recs[1]["sizes"][0])] == [[2, 2], [2, 1]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_sampler_balances_every_count(world_size, batch):
    """Without drop_last, for every sample count: ceil(n / G) batches on every rank, every sample once, no batch
    above the batch size, and an empty (last) batch only where nothing else can work (batch 1, or n < ranks)."""
    g = batch * world_size
    for n in range(1, 3 * g + 2):
        ranks = [EpochSampler(n, batch, world_size=world_size, rank=r, seed=3, drop_last=False)
                 for r in range(world_size)]
        assert {len(s) for s in ranks} == {-(-n // g)}, n
        got = [s.batches(1) for s in ranks]
        seen = np.concatenate([b for per_rank in got for b in per_rank])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        for s, per_rank in zip(ranks, got, strict=True):
            sizes = [len(b) for b in per_rank]
            assert max(sizes) <= batch
            assert s.n_nonempty == sum(1 for k in sizes if k)
            if 0 in sizes:
                assert sizes.index(0) == len(sizes) - 1 and (batch == 1 or n < world_size), (n, sizes)
        # full global batches stay those of one rank with batch G (data-parallel equivalence), except the last
        # one when it is merged with a tail shorter than the ranks
        one = EpochSampler(n, g, seed=3, drop_last=False)
        n_kept = n // g - (0 < n % g < world_size)
        for i in range(max(n_kept, 0)):
            np.testing.assert_array_equal(one.batch(1, i), np.concatenate([per_rank[i] for per_rank in got]))
