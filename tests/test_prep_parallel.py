"""`wxscale prep` as several ranks (`mpiexec -n 2`), and a killed prep resumed from the shards it finished.

The parallel prep must give the serial prep's dataset: the same shard arrays and times, the same statistics to
float64 round-off (the climatology's float32 sums to float32 round-off). A prep killed with SIGKILL (one rank
of two, or a single process) and started again keeps the shards it had recorded finished (their files are
not rewritten) and ends with the same dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import wxscale.data_prep.prep as prep
from tests.conftest import real_data_file
from wxscale import submit
from wxscale.cli import main as cli
from wxscale.data_prep.check import check_dataset
from wxscale.data_prep.layout import FIELDS_KEY, TIME_KEY, load_meta, read_stats
from wxscale.files import RESUME_DIR, partial_leftovers
from wxscale.perf.prep_bench import synthetic_era5_zarr

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
WXSCALE = [sys.executable, "-m", "wxscale.cli"]

# Runs `wxscale prep` (argv[3:]) and SIGKILLs the process of MPI rank argv[2] (0 outside MPI) right after it
# has recorded its argv[1]-th finished shard: a kill at the worst moment a real one can come, between shards.
KILLER = """
import os, signal, sys
import wxscale.data_prep.prep as prep
from wxscale.cli import main
after, victim = int(sys.argv[1]), int(sys.argv[2])
real, count = prep.record_done, [0]
def record_then_die(*args, **kwargs):
    real(*args, **kwargs)
    count[0] += 1
    if int(os.environ.get("PMI_RANK", "0")) == victim and count[0] >= after:
        os.kill(os.getpid(), signal.SIGKILL)
prep.record_done = record_then_die
sys.exit(main(sys.argv[3:]))
"""


def _need_mpi() -> None:
    if not MPIEXEC.exists():
        pytest.skip(f"mpiexec not found at {MPIEXEC} (install the `mpich` wheel and mpi4py)")
    pytest.importorskip("mpi4py")


def _env() -> dict[str, str]:
    # no world of an enclosing launch; one thread per rank (2 ranks share this machine's cores)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "SLURM_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _launch(argv: list[str], ranks: int | None = None, kill: tuple[int, int] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    prog = [sys.executable, "-c", KILLER, str(kill[0]), str(kill[1])] if kill else WXSCALE
    cmd = ([str(MPIEXEC), "-n", str(ranks)] if ranks else []) + prog + ["prep", *argv, "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same shards (arrays, times, order), same statistics (float64 round-off), both valid."""
    ma, mb = load_meta(a), load_meta(b)
    assert [(s.path, s.n_steps, s.first_time, s.last_time) for s in ma.shards] == \
        [(s.path, s.n_steps, s.first_time, s.last_time) for s in mb.shards]
    assert ma.channels == mb.channels and ma.lat == mb.lat and ma.lon == mb.lon and ma.splits == mb.splits
    for s in ma.shards:
        with h5py.File(a / s.path) as fa, h5py.File(b / s.path) as fb:
            np.testing.assert_array_equal(fa[FIELDS_KEY][:], fb[FIELDS_KEY][:], err_msg=s.path)
            np.testing.assert_array_equal(fa[TIME_KEY][:], fb[TIME_KEY][:], err_msg=s.path)
    sa, sb = read_stats(a, with_climatology=True), read_stats(b, with_climatology=True)
    for k in ("mean", "std", "diff_std"):
        np.testing.assert_allclose(getattr(sa, k), getattr(sb, k), rtol=1e-12, atol=0, err_msg=k)
    assert (sa.climatology is None) == (sb.climatology is None)
    if sa.climatology is not None:
        np.testing.assert_allclose(sa.climatology, sb.climatology, rtol=1e-5)
    assert check_dataset(a) == [] and check_dataset(b) == []


def _serial(argv: list[str], out: Path) -> Path:
    assert cli(["prep", *argv, "--out", str(out), "--no-progress"]) == 0
    return out


# ------------------------------------------------------------------------------------------------------------
# the pieces, in one process


class _ThreadWorld:
    """A world of `size` threads passing objects through queues: enough to run prep's fold in one process."""

    def __init__(self, rank: int, size: int, boxes: dict):
        self.rank, self.size, self.boxes = rank, size, boxes

    def send(self, obj, dest: int) -> None:
        self.boxes[(self.rank, dest)].put(obj)

    def recv(self, source: int):
        return self.boxes[(source, self.rank)].get(timeout=10)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_fold_merges_every_rank_once_in_rank_order(size):
    import queue

    boxes = {(a, b): queue.Queue() for a in range(size) for b in range(size)}
    results = {}

    def rank_main(r: int) -> None:
        results[r] = prep._fold(_ThreadWorld(r, size, boxes), [r], lambda a, b: a + b)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == list(range(size))
    assert all(results[r] is None for r in range(1, size))


def test_shards_are_assigned_in_contiguous_runs_balanced_by_steps():
    class Plan:
        shards = [prep.ShardPlan("train", f"train/{k:03d}.h5", 10 * k, 10 * k + n)
                  for k, n in enumerate([10, 10, 10, 10, 5, 5, 10, 10])]

    owner = prep.assign_shards(Plan(), 3)
    assert owner == sorted(owner) and set(owner) == {0, 1, 2}
    steps = np.bincount(owner, weights=[s.i1 - s.i0 for s in Plan.shards])
    assert steps.max() - steps.min() <= 10
    assert prep.assign_shards(Plan(), 1) == [0] * 8
    assert prep.assign_shards(Plan(), 20) == sorted(prep.assign_shards(Plan(), 20))  # more ranks than shards


def test_srun_without_an_mpi_plugin_is_refused():
    from wxscale.errors import WxscaleError
    from wxscale.launch import process_world

    assert process_world({}).size == 1
    assert process_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).size == 1  # a batch script, not a step
    pytest.importorskip("mpi4py")
    with pytest.raises(WxscaleError, match="srun --mpi=pmi2"):
        process_world({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"})


# ------------------------------------------------------------------------------------------------------------
# mpiexec -n 2 against one process


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["ncep_slp_natl_daily_2001_2010.nc", "ncep_msl_z500_europe_daily_2000_2002.nc"])
def test_two_ranks_write_the_serial_dataset_ncep(name, tmp_path):
    _need_mpi()
    argv = ["--input", str(real_data_file(name))]
    if "europe" in name:  # three years: the default 80/10/10 by time
        argv += ["--splits", "train=2000-01-01:2002-02-28,valid=2002-03-01:2002-07-31,test=2002-08-01:2002-12-31"]
    serial = _serial(argv, tmp_path / "serial")
    _launch([*argv, "--out", str(tmp_path / "two")], ranks=2)
    assert_same_dataset(serial, tmp_path / "two")
    source = json.loads((tmp_path / "two" / "data.json").read_text())["source"]
    assert source["ranks"] == 2 and json.loads((serial / "data.json").read_text())["source"]["ranks"] == 1
    assert source["writing"]["shards_reused"] == 0


@pytest.fixture(scope="module")
def era5_zarr(tmp_path_factory) -> Path:
    """0.25 deg ERA5 layout (721 rows with both poles, latitude ascending, `level`, chunked one step along
    time): geopotential at 500 and 850 hPa and 2 m temperature, 8 six-hourly steps over a new year."""
    return synthetic_era5_zarr(tmp_path_factory.mktemp("zarr") / "era5.zarr", 8, start="2000-12-31T06",
                               levels=(500, 850))


# train crosses the new year: two train shards of 3 steps, one per rank, so the statistics' seam is between
# ranks; valid (2 steps) goes to rank 1
ZARR_SPLITS = "train=2000-12-31T06:2001-01-01T12,valid=2001-01-01T18:2001-01-02T00"


@pytest.mark.mpi
def test_two_ranks_write_the_serial_dataset_era5_zarr_layout(era5_zarr, tmp_path):
    _need_mpi()
    argv = ["--input", str(era5_zarr), "--splits", ZARR_SPLITS]
    serial = _serial(argv, tmp_path / "serial")
    meta = load_meta(serial)
    assert meta.grid == (721, 1440) and meta.lat[0] == 90 and meta.lat[-1] == -90
    assert sorted(meta.channels) == ["t2m", "z500", "z850"]  # ERA5 long names, read as short ones
    assert prep.assign_shards(prep.plan_dataset(
        prep.open_inputs([str(era5_zarr)])[0], "z", variables=None, splits=ZARR_SPLITS, coarsen=1,
        compress=None, notes=[]), 2) == [0, 1, 1]
    _launch([*argv, "--out", str(tmp_path / "two")], ranks=2)
    assert_same_dataset(serial, tmp_path / "two")


# ------------------------------------------------------------------------------------------------------------
# killed and resumed


def _recorded(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every shard the partial dir of `out` records finished."""
    (partial,) = partial_leftovers(out)
    done = {}
    for rec in (partial / RESUME_DIR / "shards").glob("*.json"):
        path = json.loads(rec.read_text())["path"]
        st = (partial / path).stat()
        done[path] = (st.st_ino, st.st_mtime_ns)
    return done


def _unchanged(out: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    return [p for p, (ino, mtime) in before.items()
            if ((out / p).stat().st_ino, (out / p).stat().st_mtime_ns) == (ino, mtime)]


@pytest.mark.mpi
def test_a_killed_parallel_prep_resumes_from_its_finished_shards(tmp_path):
    _need_mpi()
    argv = ["--input", str(real_data_file("ncep_slp_natl_daily_2001_2010.nc"))]
    out = tmp_path / "two"
    killed = _launch([*argv, "--out", str(out)], ranks=2, kill=(1, 1), check=False)
    assert killed.returncode != 0 and not out.exists()
    before = _recorded(out)
    assert before, "the killed prep recorded no finished shard"
    n_shards = 12
    assert len(before) < n_shards
    resumed = _launch([*argv, "--out", str(out)], ranks=2)
    assert "resuming the prep killed" in resumed.stdout
    assert sorted(_unchanged(out, before)) == sorted(before), "finished shards were written again"
    writing = json.loads((out / "data.json").read_text())["source"]["writing"]
    assert writing["shards_reused"] == len(before) and writing["resumed"]
    assert not partial_leftovers(out) and not (out / RESUME_DIR).exists()
    assert_same_dataset(_serial(argv, tmp_path / "serial"), out)


def test_a_killed_serial_prep_resumes_and_rewrites_only_what_is_unfinished_or_damaged(era5_zarr, tmp_path):
    argv = ["--input", str(era5_zarr), "--splits", ZARR_SPLITS, "--fill", "mean"]
    out = tmp_path / "d"
    killed = _launch([*argv, "--out", str(out)], kill=(2, 0), check=False)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    before = _recorded(out)
    assert len(before) == 2
    (partial,) = partial_leftovers(out)
    assert (partial / RESUME_DIR / "fill_values.npy").is_file()  # the fill pass is not repeated either
    damaged = sorted(before)[-1]
    with open(partial / damaged, "ab") as f:  # a finished shard changed after its record: written again
        f.write(b"\0")
    other = tmp_path / ".d.abcd1234.partial"  # a leftover of another plan: removed
    other.mkdir()
    resumed = _launch([*argv, "--out", str(out)])
    assert "resuming" in resumed.stdout and not other.exists()
    assert sorted(_unchanged(out, before)) == sorted(p for p in before if p != damaged)
    assert json.loads((out / "data.json").read_text())["source"]["writing"]["shards_reused"] == 1
    assert_same_dataset(_serial(argv, tmp_path / "serial"), out)


def test_another_plan_does_not_reuse_a_killed_prep(era5_zarr, tmp_path):
    argv = ["--input", str(era5_zarr), "--splits", ZARR_SPLITS]
    out = tmp_path / "d"
    _launch([*argv, "--out", str(out)], kill=(1, 0), check=False)
    (partial,) = partial_leftovers(out)
    done = _launch([*argv, "--vars", "z500", "--out", str(out)])
    assert "resuming" not in done.stdout and not partial.exists()
    assert json.loads((out / "data.json").read_text())["source"]["writing"]["shards_reused"] == 0


FAILER = """
import os, sys
import wxscale.data_prep.prep as prep
from wxscale.cli import main
real = prep.write_shard
def fail_on_rank_1(*args, **kwargs):
    if os.environ.get("PMI_RANK") == "1":
        raise OSError("disk on fire")
    return real(*args, **kwargs)
prep.write_shard = fail_on_rank_1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
def test_an_error_on_one_rank_stops_every_rank_and_leaves_nothing(tmp_path):
    _need_mpi()
    out = tmp_path / "d"
    argv = ["prep", "--input", str(real_data_file("ncep_slp_natl_daily_2001_2010.nc")), "--out", str(out),
            "--no-progress"]
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", FAILER, *argv], capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode != 0
    assert "rank 1 of 2: OSError: disk on fire" in proc.stderr  # rank 0 says which rank failed, and why
    assert not out.exists() and not partial_leftovers(out)


# ------------------------------------------------------------------------------------------------------------
# the Slurm template


def test_prep_template_renders_passes_shellcheck_and_runs_under_a_stub_srun(tmp_path):
    """The rendered script is valid bash (and clean under shellcheck); run with a stub `srun` that starts its
    command with mpiexec, it writes the dataset with 2 ranks."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wx = bindir / "wx"  # this checkout's wxscale, whichever environment runs the tests
    wx.write_text(f'#!/bin/bash\nexec {sys.executable} -m wxscale.cli "$@"\n')
    wx.chmod(0o755)
    script = tmp_path / "prep.sh"
    for extra in ({}, {"image": "/images/wx.sif", "extra_args": "--fill mean --compress lzf"}):
        text = submit.render_template("prep", {"inputs": "/data/a.zarr /data/b b.nc", "out": "/scratch/era5",
                                               **extra})
        script.write_text(text)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        if shutil.which("shellcheck"):
            sc = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
            assert sc.returncode == 0, sc.stdout
        assert "--mpi=pmi2" in text and "HDF5_USE_FILE_LOCKING" in text
    assert "apptainer exec --bind" in text and text.rstrip().endswith("--fill mean --compress lzf")
    text = submit.render_template("prep", {"inputs": str(real_data_file("ncep_msl_z500_europe_daily_2000_2002.nc")),
                                           "out": str(tmp_path / "d"), "vars": "msl", "wxscale": str(wx),
                                           "splits": "train=2000:2001,valid=2002-01-01:2002-06-30,"
                                                     "test=2002-07-01:2002-12-31"})
    script.write_text(text)
    _need_mpi()
    (bindir / "srun").write_text(f'#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                 f'exec {MPIEXEC} -n "$SLURM_NTASKS" "$@"\n')
    (bindir / "srun").chmod(0o755)
    env = {**_env(), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "1"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "by 2 ranks" in proc.stdout
    assert json.loads((tmp_path / "d" / "data.json").read_text())["source"]["ranks"] == 2


# ------------------------------------------------------------------------------------------------------------
# the benchmark


@pytest.mark.mpi
def test_bench_prep_writes_rates_with_provenance(tmp_path):
    _need_mpi()
    import pandas as pd

    from wxscale.provenance import PROVENANCE_COLUMNS

    out = tmp_path / "b"
    assert cli(["bench", "prep", "--synthetic", "12", "--grid", "19x36", "--levels", "500", "--ranks", "1,2",
                "--rounds", "1", "--shard-mb", "0.016", "--out", str(out)]) == 0
    table = pd.read_csv(out / "prep_bench.csv")
    assert list(table.columns[-len(PROVENANCE_COLUMNS):]) == PROVENANCE_COLUMNS
    assert list(zip(table["kind"], table["ranks"], strict=True)) == [("read", 1), ("prep", 1), ("prep", 2)]
    assert (table["gb_per_s"] > 0).all() and (table["field_bytes"] == 12 * 2 * 19 * 36 * 4).all()
    assert table.loc[1, "speedup"] == 1 and table.loc[2, "shards"] >= 4
    assert (out / "prep_bench.png").stat().st_size > 0
    assert_same_dataset(out / "ranks_1" / "data", out / "ranks_2" / "data")


@pytest.mark.slow
def test_prep_template_runs_two_ranks_under_a_real_slurm(tmp_path_factory, tmp_path):
    """The rendered template through a one-node Slurm on loopback (tests/slurm_cluster.py): `srun --mpi=pmi2`
    wires 2 tasks up for mpi4py, and the dataset equals the serial prep's."""
    from tests.slurm_cluster import SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("mpi4py")
    wx = Path(sys.executable).parent / "wxscale"
    if not wx.exists():
        pytest.skip(f"no wxscale executable at {wx} (pip install -e .)")
    source = real_data_file("ncep_slp_natl_daily_2001_2010.nc")
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        if cluster.cpus < 2:
            pytest.skip(f"the node has {cluster.cpus} CPU(s); the job needs 2")
        script = tmp_path / "job.sh"
        script.write_text(submit.render_template("prep", {
            "nodes": "1", "tasks_per_node": "2", "cpus_per_task": "1", "time": "00:10:00", "inputs": str(source),
            "out": str(tmp_path / "d"), "wxscale": str(wx), "output": str(tmp_path / "slurm-%j.out")}))
        job_id = cluster.sbatch(script, cwd=tmp_path)
        info = cluster.wait(job_id, timeout=300)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    assert "by 2 ranks" in output
    assert json.loads((tmp_path / "d" / "data.json").read_text())["source"]["ranks"] == 2
    assert_same_dataset(_serial(["--input", str(source)], tmp_path / "serial"), tmp_path / "d")
