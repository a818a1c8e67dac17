"""The real thing: a one-node Slurm on loopback (tests/slurm_cluster.py) runs the rendered CPU template with
2 tasks through `srun --mpi=pmi2`.

Two jobs: a stand-in `wxscale` (a short python program) that checks what each rank gets from Slurm and the
template (SLURM_PROCID, SLURM_NTASKS, MASTER_ADDR/PORT) and meets rank 0 at that rendezvous;
and a short real `wxscale train` on the tiny dataset, checked through the run dir's summary.json.
Skips with the reason where Slurm or munge is not installed (.ci/setup_system.sh installs them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import SlurmCluster, unavailable_reason
from wxscale import submit

ROOT = Path(__file__).resolve().parents[1]
TASKS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _submit_cpu_job(cluster: SlurmCluster, work: Path, params: dict[str, str]) -> tuple[dict[str, str], str]:
    """Render the CPU template, submit it from `work`, wait; returns the job's final fields and its output."""
    if cluster.cpus < TASKS:
        pytest.skip(f"the node has {cluster.cpus} CPU(s); the job needs {TASKS} (it would pend forever)")
    script = work / "job.sh"
    script.write_text(submit.render_template("cpu", {"ntasks": str(TASKS), "cpus_per_task": "1",
                                                     "output": str(work / "slurm-%j.out"), **params}))
    job_id = cluster.sbatch(script, cwd=work)
    info = cluster.wait(job_id, timeout=300)
    out_file = work / f"slurm-{job_id}.out"
    output = out_file.read_text() if out_file.exists() else "(no output file)"
    return info, output


STAND_IN = '''\
#!{python}
"""Stand-in for `wxscale train`: checks the rank's Slurm view and the rendezvous, writes rank<N>.json.

The rendezvous is checked with plain sockets (rank 0 listens on MASTER_ADDR:MASTER_PORT and sums the ranks the
others send), which tests the same address and port as torch.distributed would, without importing torch."""
import argparse, json, os, socket, time

parser = argparse.ArgumentParser()
parser.add_argument("command")
parser.add_argument("--config", required=True)
parser.add_argument("--run-dir", required=True)
args = parser.parse_args()
assert args.command == "train", args.command
rank, size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
addr = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
if rank == 0:
    server = socket.create_server(addr)
    total = 1
    for _ in range(size - 1):
        conn, _ = server.accept()
        with conn:
            total += int(conn.recv(16).decode()) + 1
            conn.sendall(str(total).encode())
else:
    for _ in range(200):  # rank 0 may not listen yet
        try:
            conn = socket.create_connection(addr, timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    with conn:
        conn.sendall(str(rank).encode())
        total = int(conn.recv(16).decode())
keys = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
record = {{k: os.environ.get(k) for k in keys}}
record.update(config=args.config, rendezvous_sum=total)
with open(os.path.join(args.run_dir, "rank%d.json" % rank), "w") as f:
    json.dump(record, f)
'''


def test_cpu_template_runs_two_ranks_under_slurm(cluster, tmp_path):
    stand_in = tmp_path / "wxscale-stand-in"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text("stand-in: true\n")
    run_dir = tmp_path / "run"
    info, output = _submit_cpu_job(cluster, tmp_path, {"config": str(config), "run_dir": str(run_dir),
                                                        "wxscale": str(stand_in)})
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    assert f"{TASKS} ranks on 1 node(s)" in output
    records = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(TASKS)]
    assert sorted(int(r["SLURM_PROCID"]) for r in records) == list(range(TASKS))
    assert {r["SLURM_NTASKS"] for r in records} == {str(TASKS)}
    assert {r["SLURM_LOCALID"] for r in records} == {str(r) for r in range(TASKS)}  # one node
    assert {r["MASTER_ADDR"] for r in records} == {cluster.node}
    assert len({r["MASTER_PORT"] for r in records}) == 1
    assert {r["OMP_NUM_THREADS"] for r in records} == {"1"}
    assert {r["config"] for r in records} == {str(config.resolve())}
    assert records[0]["rendezvous_sum"] == sum(range(1, TASKS + 1))  # every rank reached rank 0


def _trainer_reason() -> str | None:
    wxscale = shutil.which("wxscale", path=str(Path(sys.executable).parent))
    if wxscale is None:
        return "no wxscale executable next to this python (pip install -e .)"
    result = subprocess.run([wxscale, "train", "--help"], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return f"`wxscale train` is not usable yet: {result.stderr.strip()[-300:]}"
    return None


@pytest.mark.slow
def test_cpu_template_trains_two_ranks_under_slurm(cluster, tmp_path):
    reason = _trainer_reason()
    if reason:
        pytest.skip(reason)
    from tests.conftest import make_tiny_dataset

    dataset = make_tiny_dataset(tmp_path / "data", grid=(8, 16), n_steps=60, gaps=(), train_shards=2)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": str(dataset), "loader": "torch", "num_workers": 0},
        "model": {"size": "s0", "overrides": {"embed_dim": 16, "depth": 2, "num_heads": 2, "window": [2, 4],
                                              "patch": 2}},
        "run": {"global_batch": 4, "target_samples": 16, "device": "cpu", "seed": 0},
        "validation": {"every_samples": 16, "max_batches": 1},
        "distributed": {"launcher": "slurm", "backend": "gloo"},
        "logging": {"every_steps": 1, "progress": False},
    }))
    run_dir = tmp_path / "run"
    wxscale = shutil.which("wxscale", path=str(Path(sys.executable).parent))
    info, output = _submit_cpu_job(cluster, tmp_path, {"config": str(config), "run_dir": str(run_dir),
                                                        "wxscale": str(wxscale)})
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete", summary
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.csv").exists()
    assert summary["world_size"] == TASKS and summary["launcher"] == "slurm", summary


def test_cluster_start_and_stop_are_idempotent(cluster, tmp_path):
    assert cluster.running()
    assert cluster.start() is cluster  # already up: nothing restarts
    other = SlurmCluster(tmp_path / "never-started")
    other.stop()  # stopping a cluster that never ran is a no-op
    assert not other.running()


def test_unavailable_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    reason = unavailable_reason()
    assert reason is not None and "slurmctld" in reason and "setup_system.sh" in reason


HELD_SWEEP_TEMPLATE = """#!/bin/bash
# A sweep run that Slurm holds for 10 minutes (--begin), so the test sees its jobs queued.
# wxscale:param sweep_dir=<required>  the sweep dir
# wxscale:param run_id=<required>  the run's id
# wxscale:param config=<required>  its config
# wxscale:param run_dir=<required>  its run dir
# wxscale:param data_dir=  the dataset
#SBATCH --job-name=wxs-{{run_id}}
#SBATCH --ntasks=1
#SBATCH --begin=now+600
#SBATCH --output=/dev/null
echo {{run_id|q}} {{config|q}} {{run_dir|q}}
"""


def test_sweep_run_again_while_trunks_are_queued(cluster, tmp_path, monkeypatch, capsys):
    """Submit a sweep, then run `sweep run` again while its trunks are still queued: branches that are no longer
    in Slurm are submitted again with afterok on the trunk's recorded job; branches of a failed trunk are
    blocked (not submitted); queued runs are not submitted twice."""
    from tests.conftest import make_tiny_dataset
    from tests.train_utils import write_sweep_base
    from wxscale.cli import main as cli
    from wxscale.study.plan import load_plan
    from wxscale.study.sweep import launch_info, sweep_table

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    data = make_tiny_dataset(tmp_path / "data", n_steps=40)
    sweep = tmp_path / "sw"
    assert cli(["sweep", "plan", "--dataset", str(data), "--out", str(sweep), "--budgets", "2e8,4e8",
                "--sizes", "s0,s1", "--global-batch", "8", "--min-steps", "2",
                "--train-config", str(write_sweep_base(tmp_path / "base.yaml")),
                "--model", "patch=2", "--model", "window=[2, 4]"]) == 0
    template = tmp_path / "held.sbatch"
    template.write_text(HELD_SWEEP_TEMPLATE)
    _, plan = load_plan(sweep)
    branches = {t: list(plan.loc[plan["trunk_id"] == t, "run_id"]) for t in ("trunk_s0", "trunk_s1")}
    job_ids: list[str] = []
    try:
        assert cli(["sweep", "run", str(sweep), "--executor", "slurm", "--template", str(template)]) == 0
        first = {r: launch_info(sweep / "runs" / r).get("job_id") for r in sweep_table(sweep)["run_id"]}
        job_ids += [j for j in first.values() if j]
        assert all(first.values()), first
        for trunk, runs in branches.items():
            for r in runs:
                assert f"afterok:{first[trunk]}" in cluster.job_info(first[r]).get("Dependency", ""), r
        assert set(sweep_table(sweep)["state"]) == {"queued"}
        # The branches' jobs are cancelled (say by hand) while the trunks stay queued; trunk_s1 then fails.
        for r in branches["trunk_s0"] + branches["trunk_s1"] + ["trunk_s1"]:
            subprocess.run(["scancel", first[r]], env=cluster.env, check=True)
        (sweep / "runs" / "trunk_s1" / "summary.json").write_text(json.dumps({"status": "failed",
                                                                             "reason": "test"}))
        for _ in range(60):  # until Slurm no longer lists the cancelled jobs as pending
            states = sweep_table(sweep).set_index("run_id")["state"]
            if all(states[r] == "pending" for r in branches["trunk_s0"]):
                break
            time.sleep(0.5)
        assert states["trunk_s0"] == "queued" and states["trunk_s1"] == "failed"
        capsys.readouterr()
        assert cli(["sweep", "run", str(sweep), "--executor", "slurm", "--template", str(template)]) == 1
        out, err = capsys.readouterr()
        second = {r: launch_info(sweep / "runs" / r).get("job_id") for r in sweep_table(sweep)["run_id"]}
        job_ids += [j for j in second.values() if j]
        assert second["trunk_s0"] == first["trunk_s0"]  # still queued: not submitted twice
        for r in branches["trunk_s0"]:
            assert second[r] != first[r]
            assert f"afterok:{first['trunk_s0']}" in cluster.job_info(second[r]).get("Dependency", ""), r
            assert f"submitted {r} as job {second[r]} after trunk_s0 (job {first['trunk_s0']})" in out
        for r in branches["trunk_s1"]:
            assert second[r] == first[r]  # not submitted again
            assert f"blocked {r}" in err
    finally:
        if job_ids:
            subprocess.run(["scancel", *job_ids], env=cluster.env, check=False)
