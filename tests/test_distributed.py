"""World detection (torchrun, Slurm, MPI) and data-parallel training: `mpiexec -n 2` equals one rank at the same
global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_utils import REPO, child_env, read_metrics, tiny_config, train_cmd, write_config
from wxscale.errors import WxscaleError
from wxscale.training import distributed
from wxscale.training.distributed import World, detect_world, first_host
from wxscale.training.trainer import train

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def test_first_host_of_slurm_nodelists():
    assert first_host("gpu[003-005,010],cpu1") == "gpu003"
    assert first_host("node7") == "node7"
    assert first_host("a1,b2") == "a1"
    assert first_host("nid[001234-001240]") == "nid001234"
    assert first_host("x[12,4-5]-ib") == "x12-ib"
    with pytest.raises(WxscaleError):
        first_host("")


def test_slurm_environment():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[012-015]"}
    w = detect_world(env=env)
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (5, 8, 1, "slurm")
    assert w.master_addr == "gpu012" and w.master_port == 15000 + 123456 % 20000
    # srun's step variables win over the job's; MASTER_* wins over both
    env.update(SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="cpu[2-3]", MASTER_ADDR="head", MASTER_PORT="4000")
    w = detect_world(env=env)
    assert (w.world_size, w.master_addr, w.master_port) == (4, "head", 4000)
    with pytest.raises(WxscaleError, match="SLURM_PROCID"):
        detect_world(launcher="slurm", env={"SLURM_NTASKS": "2"})
    with pytest.raises(WxscaleError, match="SLURM_NTASKS='two'"):
        detect_world(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "two"})


def test_torchrun_and_plain_environments():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}  # torchrun inside a Slurm allocation: torchrun wins
    w = detect_world(env=env)
    assert (w.rank, w.world_size, w.local_rank, w.master_addr, w.master_port, w.launcher) == \
        (3, 4, 3, "10.0.0.1", 29501, "torchrun")
    assert detect_world(env={}) == World()
    assert detect_world(launcher="none", env=env) == World()
    assert not World().distributed and World(world_size=2).distributed


def test_reductions_without_a_process_group():
    import torch

    assert distributed.all_reduce([1.0, 2.0]) == [1.0, 2.0]
    t = torch.tensor([3.0])
    assert torch.equal(distributed.all_reduce(t, op="mean"), t)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(7) == 7


@pytest.mark.mpi
@pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec (mpich) is not installed next to this python")
def test_mpiexec_two_ranks_match_one_rank(tiny_dataset, tmp_path):
    pytest.importorskip("mpi4py")
    cfg = tiny_config(tiny_dataset, run={"target_samples": 32, "checkpoint_at_samples": [16]},
                      validation={"every_samples": 16, "max_batches": None})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(path, run_dir=one)["status"] == "complete"  # one rank, here (cpu_threads=1 like the ranks)
    r2 = subprocess.run([str(MPIEXEC), "-n", "2", *train_cmd(path, two)], cwd=REPO, env=child_env(),
                        capture_output=True, text=True, timeout=400)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s2["world_size"], s2["launcher"], s1["world_size"]) == (2, "mpi", 1)
    assert s2["samples"] == s1["samples"] == 32 and s2["flops"] == s1["flops"]
    a, b = read_metrics(one), read_metrics(two)
    assert [int(r["step"]) for r in b] == list(range(1, 9))  # rank 0 alone wrote, once per step
    for ra, rb in zip(a, b, strict=True):
        assert float(rb["train_loss"]) == pytest.approx(float(ra["train_loss"]), rel=1e-5, abs=1e-7)
        if ra["val_loss"]:
            # validation is sharded across ranks and its sums reduced: the same numbers
            assert float(rb["val_loss"]) == pytest.approx(float(ra["val_loss"]), rel=1e-5)
            assert float(rb["val_rmse_u"]) == pytest.approx(float(ra["val_rmse_u"]), rel=1e-5)
    assert (two / "checkpoints" / "samples_16" / "state.pt").is_file()
