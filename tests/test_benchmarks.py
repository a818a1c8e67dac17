"""`wxscale bench throughput`, `wxscale bench scaling` and `wxscale report`: behaviour on tiny configurations.

What the CSVs hold (columns, finite values, min <= median <= max), that warm-up steps are never timed, that
fp16 is refused on CPU, that scaling efficiencies follow their definitions (and, with mpiexec, that a 1- and
2-rank launch produce them), and that the report page lists the tables and embeds the plots. No timing
assertions: the machine is shared.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_utils import REPO, child_env
from wxscale.cli import main
from wxscale.perf.scaling import COLUMNS as SCALING_COLUMNS
from wxscale.perf.scaling import best_of_rounds, efficiencies
from wxscale.perf.throughput import BREAKDOWN_COLUMNS, COLUMNS, config_hash, events_per_step, time_steps
from wxscale.provenance import PROVENANCE_COLUMNS, provenance

MPIEXEC = Path(sys.executable).parent / "mpiexec"
# The tiny dataset is 8 x 16: s0/s1 need smaller patches and windows to fit it.
TINY_MODEL = ["model.overrides.patch=2", "model.overrides.window=[2,4]"]
NUMERIC = ["params", "step_s_median", "step_s_p10", "step_s_p90", "step_s_min", "step_s_max", "data_s_median",
           "samples_per_s", "samples_per_s_min", "samples_per_s_max", "bare_step_s_median", "bare_samples_per_s",
           "loop_efficiency", "forward_s", "backward_s", "optimizer_s", "validation_s", "checkpoint_s",
           "train_flops_per_sample", "tflops_per_s",
           "peak_tflops_per_device", "mfu", "loader_samples_per_s", "loader_mb_per_s", "loader_to_train_ratio",
           "peak_mem_mb"]


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


@pytest.fixture(scope="module")
def throughput_dir(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "throughput"
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "throughput", "--dataset", str(tiny_dataset), "--sizes", "s0,s1", "--batch", "4",
                   "--warmup", "1", "--steps", "2", "--repeats", "2", "--threads", "1", "--wireup", "none",
                   "--out", str(out), *TINY_MODEL])
    finally:
        torch.set_num_threads(threads)  # the command sets the process's threads; leave other tests as they were
    assert rc == 0
    return out


# ----- throughput


def test_time_steps_never_times_warmup():
    """A fake clock: warm-up steps take 100 s each, timed ones 1 s; only the timed ones may show."""
    now, calls = [0.0], [0]

    def step() -> None:
        calls[0] += 1
        now[0] += 100.0 if calls[0] <= 3 else 1.0 + calls[0] / 100

    times = time_steps(step, warmup=3, steps=4, clock=lambda: now[0])
    assert calls[0] == 3 + 4
    assert times == pytest.approx([1.04, 1.05, 1.06, 1.07])


def test_throughput_csv_columns_and_values(throughput_dir):
    columns, rows = _read(throughput_dir / "throughput.csv")
    assert columns == COLUMNS
    assert [r["size"] for r in rows] == ["s0", "s1"]
    for r in rows:
        for c in NUMERIC:
            v = float(r[c])
            assert math.isfinite(v) and v > 0, (c, r[c])
        assert (float(r["step_s_min"]) <= float(r["step_s_p10"]) <= float(r["step_s_median"])
                <= float(r["step_s_p90"]) <= float(r["step_s_max"]))
        assert float(r["loop_efficiency"]) == pytest.approx(
            float(r["samples_per_s"]) / float(r["bare_samples_per_s"]), rel=1e-4)
        # the breakdown's in-step parts and the remainder add up to the mean step (between p10-ish and max)
        in_step = sum(float(r[c]) for c in BREAKDOWN_COLUMNS if c not in ("validation_s", "checkpoint_s",
                                                                          "grad_allreduce_s"))
        assert float(r["step_s_min"]) <= in_step * (1 + 1e-6) and in_step <= float(r["step_s_max"]) * (1 + 1e-6)
        assert r["grad_allreduce_s"] == ""  # one rank: no gradient all-reduce
        assert len(r["config_hash"]) == 12 and r["deterministic"] == "True" and r["compile"] == "off"
        assert r["torch_threads"] == "1" and r["cpu_affinity"] and float(r["peak_mem_mb_per_rank"]) > 0
        assert float(r["samples_per_s"]) == pytest.approx(4 / float(r["step_s_median"]), rel=1e-4)
        assert (r["warmup_steps"], r["steps"], r["repeats"]) == ("1", "2", "2")
        assert r["world_size"] == "1" and r["global_batch"] == "4" and r["threads_per_rank"] == "1"
        assert r["loader_bottleneck"] in ("True", "False")
        assert r["peak_mem_kind"] == "cpu_max_rss_process"
        assert r["torch_version"] == torch.__version__ and r["host"] and r["device_kind"] == "cpu"
    assert rows[0]["config_hash"] != rows[1]["config_hash"]
    # s1 is the bigger model: more FLOPs per sample
    assert float(rows[1]["train_flops_per_sample"]) > float(rows[0]["train_flops_per_sample"])
    assert (throughput_dir / "throughput.png").stat().st_size > 0
    assert not (throughput_dir / ".work").exists()  # the trainer's scratch run dirs are cleaned up


def test_throughput_refuses_fp16_on_cpu_and_bad_input(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["bench", "throughput", "--dataset", str(tiny_dataset), "--precision", "fp16", "--device", "cpu",
                 "--out", str(out), *TINY_MODEL]) == 2
    assert "fp16" in capsys.readouterr().err
    assert not (out / "throughput.csv").exists()
    assert main(["bench", "throughput", "--dataset", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["bench", "throughput", "--dataset", str(tiny_dataset), "--sizes", "s99", "--out", str(out)]) == 2


def test_provenance_keys():
    p = provenance("cpu")
    assert list(p) == PROVENANCE_COLUMNS
    assert all(isinstance(v, str) for v in p.values())
    assert p["torch_version"] == torch.__version__ and p["device_kind"] == "cpu"


# ----- scaling


def _row(ranks: int, per_rank: int, sps: float, best: float | None = None) -> dict:
    return {"world_size": str(ranks), "batch_per_rank": str(per_rank), "global_batch": str(ranks * per_rank),
            "samples_per_s": str(sps), "samples_per_s_max": str(best or sps), "size": "s0", "precision": "fp32",
            "loader": "torch", "wireup": "mpi"}


def test_scaling_efficiency_definitions():
    rows = [_row(1, 8, 100.0, 110.0), _row(1, 16, 120.0), _row(2, 8, 150.0, 200.0), _row(4, 4, 200.0),
            _row(4, 8, 240.0)]
    weak = {r["ranks"]: r for r in efficiencies(rows, "weak", [1, 2, 4], [8])}
    assert weak[1]["efficiency"] == pytest.approx(1.0)
    assert weak[2]["efficiency"] == pytest.approx(150 / (2 * 100))  # per-rank batch 8 at every R
    assert weak[2]["efficiency_best"] == pytest.approx(200 / (2 * 110))  # from the best repeats
    assert weak[4]["efficiency"] == pytest.approx(240 / (4 * 100))
    strong = {r["ranks"]: r for r in efficiencies(rows, "strong", [1, 2, 4], [16])}
    assert strong[2]["efficiency"] == pytest.approx(150 / (2 * 120))  # global batch 16: 8 per rank on 2
    assert strong[4]["efficiency"] == pytest.approx(200 / (4 * 120))
    assert strong[4]["speedup"] == pytest.approx(200 / 120)
    assert strong[4]["batch_per_rank"] == "4"
    # with baseline R0 = 2 when 1 rank is not measured
    weak2 = {r["ranks"]: r for r in efficiencies(rows, "weak", [2, 4], [8])}
    assert weak2[2]["efficiency"] == pytest.approx(1.0) and weak2[4]["efficiency"] == pytest.approx(240 / 300)


def test_best_of_rounds_keeps_the_fastest_round():
    rounds = [_row(1, 8, 100.0), _row(2, 8, 150.0), _row(1, 8, 130.0), _row(2, 8, 140.0)]
    best = {r["world_size"]: float(r["samples_per_s"]) for r in best_of_rounds(rounds)}
    assert best == {"1": 130.0, "2": 150.0}


@pytest.mark.mpi
@pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec (mpich) is not installed next to this python")
def test_scaling_runs_one_and_two_ranks(tiny_dataset, tmp_path):
    pytest.importorskip("mpi4py")
    out = tmp_path / "scaling"
    cmd = [sys.executable, "-m", "wxscale.cli", "bench", "scaling", "--dataset", str(tiny_dataset), "--ranks", "1,2",
           "--mode", "both", "--batch", "2", "--warmup", "1", "--steps", "2", "--repeats", "1", "--out", str(out),
           *TINY_MODEL]
    r = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    columns, rows = _read(out / "scaling.csv")
    assert columns == SCALING_COLUMNS
    got = {(x["mode"], x["ranks"]): x for x in rows}
    assert set(got) == {("weak", "1"), ("weak", "2"), ("strong", "1"), ("strong", "2")}
    assert got[("weak", "2")]["batch_per_rank"] == "2" and got[("weak", "2")]["global_batch"] == "4"
    assert got[("strong", "1")]["batch_per_rank"] == "4" and got[("strong", "2")]["batch_per_rank"] == "2"
    for x in rows:
        assert math.isfinite(float(x["efficiency"])) and float(x["efficiency"]) > 0
        assert x["oversubscribed"] == "False"
        if x["ranks"] == "2":  # the gradient all-reduce timed alone
            assert float(x["allreduce_s_median"]) > 0 and math.isfinite(float(x["allreduce_fraction"]))
    assert float(got[("weak", "1")]["efficiency"]) == pytest.approx(1.0)
    # threads = cores // ranks
    cores = int(got[("weak", "1")]["cores"])
    assert got[("weak", "2")]["threads_per_rank"] == str(max(1, cores // 2))
    assert (out / "scaling.png").is_file() and (out / "ranks_2" / "throughput.csv").is_file()


# ----- report


def test_report_of_a_benchmark_folder(throughput_dir):
    assert main(["report", str(throughput_dir)]) == 0
    page = (throughput_dir / "report.md").read_text()
    assert page.startswith("# ")
    assert "### throughput.csv" in page and "![throughput](throughput.png)" in page
    assert "## Provenance" in page and torch.__version__ in page
    table = page.split("### throughput.csv", 1)[1].split("\n\n")[2]  # heading, description, table
    header = table.splitlines()[0]
    assert "samples_per_s" in header and "mfu" in header
    assert "torch_version" not in header  # one value throughout: moved to the provenance section
    assert len(table.splitlines()) == 2 + 2  # header, rule, s0, s1


def test_report_of_a_study_folder_truncates_long_tables(tmp_path, capsys):
    study = tmp_path / "study"
    (study / "fit").mkdir(parents=True)
    with open(study / "plan.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_id", "budget_flops", "params"])
        w.writerows([f"r{i:03d}", 1e12 * (i + 1), 1000 + i] for i in range(50))
    (study / "runs.csv").write_text("run_id,val_loss,git_sha,host\nr000,0.5,abc,n1\nr001,0.4,abc,n2\n")
    (study / "fit" / "fits.csv").write_text("quantity,approach,coefficient,exponent\nn_opt,2,0.1,0.5\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    fig.savefig(study / "fit" / "isoflop.png")
    plt.close(fig)
    assert main(["report", str(study), "--max-rows", "10"]) == 0
    page = (study / "report.md").read_text()
    for heading in ("### plan.csv", "### runs.csv", "### fit/fits.csv", "### fit/isoflop.png"):
        assert heading in page
    assert "![isoflop](fit/isoflop.png)" in page
    assert "40 of 50 rows left out" in page and "| r000 |" in page and "| r049 |" in page
    assert "| r020 |" not in page
    # git_sha is constant in runs.csv (to the provenance section), host varies (stays in the table)
    runs_table = page.split("### runs.csv", 1)[1].split("###", 1)[0]
    assert "host" in runs_table and "git_sha" not in runs_table
    assert "| git_sha | abc |" in page
    # an empty folder is an error that says what to do
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no CSV tables" in capsys.readouterr().err


# ----- one training step: the benchmark times the trainer's own


def test_benchmark_times_the_trainers_step(tiny_dataset, tmp_path, monkeypatch):
    """Replace Trainer.train_step: the benchmark's loop and bare timings must both go through it (a benchmark
    timing a step of its own would leave the counter at zero)."""
    from wxscale.training.trainer import Trainer

    calls = {"n": 0}
    real = Trainer.train_step

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", counted)
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "throughput", "--dataset", str(tiny_dataset), "--sizes", "s0", "--batch", "4",
                   "--warmup", "1", "--steps", "2", "--repeats", "1", "--threads", "1", "--wireup", "none",
                   "--skip-loader", "--out", str(tmp_path / "t"), *TINY_MODEL])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert calls["n"] == (1 + 2) + (1 + 2)  # loop: warm-up + timed; bare: warm-up + timed


def test_mfu_above_100_percent_is_refused(tiny_dataset, tmp_path, monkeypatch):
    """A peak far below what the step achieves means a wrong FLOP count or peak: no row is written."""
    import wxscale.training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "peak_flops", lambda *a, **k: (1.0, "a test peak of 1 FLOP/s"))
    out = tmp_path / "t"
    assert main(["bench", "throughput", "--dataset", str(tiny_dataset), "--sizes", "s0", "--batch", "4",
                 "--warmup", "0", "--steps", "1", "--repeats", "1", "--threads", "1", "--wireup", "none",
                 "--skip-loader", "--out", str(out), *TINY_MODEL]) == 2
    assert not (out / "throughput.csv").exists()


def test_mfu_empty_without_a_peak():
    from wxscale.hardware import model_flops_utilisation

    assert model_flops_utilisation(1e12, None) is None
    assert model_flops_utilisation(1e12, 4e12, devices=2) == 0.125


def test_config_hash_and_amortisation(tiny_dataset):
    from wxscale.perf.throughput import base_config

    a = base_config(str(tiny_dataset), "s0", 4, 1, "fp32", "torch", 0, "cpu", 100, [])
    b = base_config(str(tiny_dataset), "s0", 4, 1, "fp32", "torch", 0, "cpu", 100, ["optim.lr=1e-4"])
    assert config_hash(a, 1, 1) == config_hash(a, 1, 1) != config_hash(b, 1, 1) != config_hash(a, 1, 2)
    # 100 steps of 4 samples: validation every 40 samples -> 10 passes; checkpoints every 25 steps + the final
    c = base_config(str(tiny_dataset), "s0", 4, 1, "fp32", "torch", 0, "cpu", 100,
                    ["validation.every_samples=40", "run.checkpoint_every_steps=25"])
    assert events_per_step(c, 100) == (10 / 100, 4 / 100)
    assert events_per_step(a, 100) == (1 / 100, 1 / 100)  # the end of the run: one of each
