"""Sweep planning, the resumable local runner, status and the Slurm executor's dry run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import write_sweep_base
from wxscale.cli import main as cli
from wxscale.errors import WxscaleError
from wxscale.study.plan import PLAN_COLUMNS, SweepSpec, load_plan, plan_sweep, trunks_of
from wxscale.study.run import run_local, run_slurm
from wxscale.study.sweep import collect_runs, sweep_table

# A tiny grid needs a smaller patch and window than the ladder's defaults.
TINY_MODEL = {"patch": 2, "window": [2, 4]}


def _spec(**kw) -> SweepSpec:
    base = dict(budgets=[1e9, 2e9], sizes=["s0", "s1"], grid=(8, 16), channels=3, global_batch=8, min_steps=2,
                max_steps=1000, model_overrides=TINY_MODEL)
    base.update(kw)
    return SweepSpec(**base)


def test_plan_rows_trunks_and_savings():
    plan, summary = plan_sweep(_spec())
    assert list(plan.columns[: len(PLAN_COLUMNS)]) == PLAN_COLUMNS
    assert len(plan) == 4 and set(plan["trunk_id"]) == {"trunk_s0", "trunk_s1"}
    assert (plan["samples"] % 8 == 0).all() and (plan["cooldown_samples"] >= 8).all()
    assert (plan["branch_from_samples"] + plan["cooldown_samples"] == plan["samples"]).all()
    # Each branch's compute is its budget, to within one global batch.
    used = plan["samples"] * plan["flops_per_sample"]
    assert ((used - plan["budget_flops"]).abs() <= 8 * plan["flops_per_sample"]).all()
    trunks = trunks_of(plan).set_index("trunk_id")
    for trunk_id, g in plan.groupby("trunk_id"):
        assert trunks.loc[trunk_id, "samples"] == g["branch_from_samples"].max()
        assert trunks.loc[trunk_id, "checkpoint_at_samples"] == sorted(set(g["branch_from_samples"]))
    # Continual training costs the trunk once plus the cooldowns, less than every point from scratch.
    assert 0 < summary["saved_fraction"] < 1
    assert summary["continual_flops"] < summary["independent_flops"]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"budgets": [2e9, 1e9]}, "strictly increasing"),
        ({"budgets": [0.0, 1e9]}, "positive"),
        ({"budgets": [1e9, 1e20]}, "budget 1e+20"),
        ({"cooldown_fraction": 1.5}, "--cooldown-fraction"),
        ({"sizes": []}, "--sizes"),
    ],
)
def test_plan_bad_input(kw, needle):
    with pytest.raises(WxscaleError, match=needle.replace("+", r"\+")):
        plan_sweep(_spec(**kw))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    data = make_tiny_dataset(root / "data", n_steps=120)
    base = root / "base.yaml"
    write_sweep_base(base)
    out = root / "sw"
    rc = cli(["sweep", "plan", "--dataset", str(data), "--out", str(out), "--budgets", "2e8,4e8", "--sizes", "s0,s1",
              "--global-batch", "8", "--min-steps", "2", "--train-config", str(base),
              "--model", "patch=2", "--model", "window=[2, 4]"])
    assert rc == 0
    return out


def test_plan_dir_refuses_a_different_plan(sweep_dir: Path):
    spec, plan = load_plan(sweep_dir)
    data = spec.dataset
    # The same plan again is fine; a different one is refused without --overwrite.
    args = ["sweep", "plan", "--dataset", data, "--out", str(sweep_dir), "--sizes", "s0,s1", "--global-batch", "8",
            "--min-steps", "2", "--train-config", str(sweep_dir / "train_base.yaml"),
            "--model", "patch=2", "--model", "window=[2, 4]"]
    assert cli([*args, "--budgets", "2e8,4e8"]) == 0
    assert cli([*args, "--budgets", "2e8,5e8"]) == 2
    assert load_plan(sweep_dir)[1].equals(plan)


def test_run_local_collects_and_resumes(sweep_dir: Path):
    states = run_local(sweep_dir, jobs=2, threads=1, progress=False)
    assert set(states.values()) == {"complete"}, states
    runs = pd.read_csv(sweep_dir / "runs.csv")
    _, plan = load_plan(sweep_dir)
    assert sorted(runs["run_id"]) == sorted(plan["run_id"])
    for col in ("val_loss", "wall_s", "samples_per_s", "mfu", "status", "git_sha", "host", "device", "world_size",
                "precision", "val_rmse_z", "val_rmse_u", "val_rmse_v"):
        assert col in runs.columns, col
    assert (runs["status"] == "complete").all() and (runs["val_loss"] > 0).all()
    # A branch ends exactly at its planned sample count, and starts from its trunk's checkpoint.
    for row in plan.itertuples():
        summary = json.loads((sweep_dir / "runs" / row.run_id / "summary.json").read_text())
        assert summary["samples"] == row.samples
        assert summary["branch_from_samples"] == row.branch_from_samples
        assert summary["cooldown_start_samples"] == row.branch_from_samples
        # The plan's FLOPs per sample are what the trainer counts (rollout included), so budgets are exact.
        assert summary["flops_per_sample"] == row.flops_per_sample

    # Run again: nothing is trained twice.
    stamps = {p: p.stat().st_mtime_ns for p in (sweep_dir / "runs").glob("*/summary.json")}
    run_local(sweep_dir, jobs=2, threads=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # An interrupted branch (no summary) is the only one run again.
    victim = plan["run_id"].iloc[-1]
    (sweep_dir / "runs" / victim / "summary.json").unlink()
    table = sweep_table(sweep_dir).set_index("run_id")
    assert table.loc[victim, "state"] != "complete"
    run_local(sweep_dir, jobs=1, threads=1, progress=False)
    after = {p: p.stat().st_mtime_ns for p in stamps if p.exists()}
    changed = [p.parent.name for p in stamps if after.get(p) != stamps[p]]
    assert changed == [victim]
    assert len(collect_runs(sweep_dir)) == len(plan)
    assert cli(["sweep", "status", str(sweep_dir)]) == 0


def test_failed_run_is_recorded_not_retried(sweep_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "sw"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("runs"))
    # A branch whose trunk checkpoint is missing fails; its record says why and it is not retried by default.
    plan = pd.read_csv(copy / "plan.csv")
    run_id = plan["run_id"].iloc[0]
    run_dir = copy / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "reason": "test: simulated failure"}))
    table = sweep_table(copy).set_index("run_id")
    assert table.loc[run_id, "state"] == "failed"
    assert cli(["sweep", "status", str(copy)]) == 1
    runs = collect_runs(copy)
    assert runs.set_index("run_id").loc[run_id, "reason"] == "test: simulated failure"


def test_slurm_dry_run_chains_branches_after_trunks(sweep_dir: Path, tmp_path: Path, capsys):
    import shutil

    copy = tmp_path / "sw"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("runs"))
    jobs = run_slurm(copy, "sweep", {"image": "/images/wxscale.sif"}, dry_run=True)
    _, plan = load_plan(copy)
    assert set(jobs) == set(plan["run_id"]) | set(plan["trunk_id"])
    text = capsys.readouterr().out
    for row in plan.itertuples():
        assert f"# --- {row.run_id} (after {row.trunk_id})" in text
    assert "--job-name=wxs-trunk_s0" in text
    # The rendered configs are valid training configs that point each branch at its trunk's checkpoint.
    cfg = yaml.safe_load((copy / "configs" / f"{plan['run_id'].iloc[0]}.yaml").read_text())
    assert cfg["run"]["init_from"].endswith(f"checkpoints/samples_{plan['branch_from_samples'].iloc[0]}")
    assert os.path.basename(os.path.dirname(os.path.dirname(cfg["run"]["init_from"]))) == plan["trunk_id"].iloc[0]


def test_plan_counts_rollout_flops_like_the_trainer():
    from wxscale.model import model_flops, resolve_config

    one, _ = plan_sweep(_spec())
    two, summary = plan_sweep(_spec(rollout_steps=2))
    for row in two.itertuples():
        cfg = resolve_config(row.size, TINY_MODEL)
        # The trainer's own count (trainer.py: model_flops with loss.rollout_steps).
        assert row.flops_per_sample == int(model_flops(cfg, (8, 16), 3, rollout_steps=2).train_flops_per_sample)
    assert (two["flops_per_sample"] == 2 * one.set_index("run_id").loc[two["run_id"], "flops_per_sample"].values).all()
    # A budget is the FLOPs spent: each branch uses its budget to within one global batch.
    assert ((two["samples"] * two["flops_per_sample"] - two["budget_flops"]).abs()
            <= 8 * two["flops_per_sample"]).all()
    trunks = trunks_of(two)
    expect = (trunks["samples"] * trunks["flops_per_sample"]).sum() + (two["cooldown_samples"]
                                                                      * two["flops_per_sample"]).sum()
    assert summary["continual_flops"] == pytest.approx(expect)


def test_plan_reads_rollout_and_warmup_from_the_base_config(tmp_path: Path):
    data = make_tiny_dataset(tmp_path / "data", n_steps=40)
    base = write_sweep_base(tmp_path / "base.yaml")
    cfg = yaml.safe_load(base.read_text())
    cfg["loss"] = {"rollout_steps": 2}
    base.write_text(yaml.safe_dump(cfg))
    args = ["sweep", "plan", "--dataset", str(data), "--budgets", "2e8,4e8", "--sizes", "s0,s1",
            "--global-batch", "8", "--min-steps", "2", "--train-config", str(base), "--model", "patch=2",
            "--model", "window=[2, 4]"]
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    spec, plan = load_plan(tmp_path / "a")
    assert spec.rollout_steps == 2 and spec.warmup_samples == 8
    one = plan_sweep(_spec(budgets=[2e8, 4e8]))[0].set_index("run_id")
    assert (plan.set_index("run_id")["flops_per_sample"] == 2 * one.loc[plan["run_id"], "flops_per_sample"]).all()
    # A warmup longer than the earliest branch point is refused, naming the budget and the size.
    cfg["schedule"]["warmup_samples"] = 10**6
    base.write_text(yaml.safe_dump(cfg))
    assert cli([*args, "--out", str(tmp_path / "b")]) == 2


def test_run_ids_unique_for_close_budgets():
    plan, _ = plan_sweep(_spec(budgets=[1e9, 1.004e9, 2e9]))
    assert plan["run_id"].is_unique
    assert {"C1e09_s0", "C1.004e09_s0", "C2e09_s0"} <= set(plan["run_id"])


def test_branch_inside_warmup_is_refused():
    with pytest.raises(WxscaleError, match=r"budget 1e\+09 FLOPs, size s0: .*inside the warmup \(100000 samples"):
        plan_sweep(_spec(warmup_samples=100_000))
    plan_sweep(_spec(warmup_samples=8))  # a warmup before every branch point is fine


def test_slurm_branch_waits_on_a_queued_trunk_and_skips_a_failed_one(sweep_dir: Path, tmp_path: Path,
                                                                     monkeypatch, capsys):
    """An earlier `sweep run` submitted trunk_s0 (job 111, still queued) and trunk_s1 failed: s0's branches
    wait on job 111, s1's are blocked and nothing is submitted for them."""
    import shutil

    from wxscale.study import sweep as sweep_mod

    copy = tmp_path / "sw"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("runs"))
    sweep_mod.mark_launched(copy / "runs" / "trunk_s0", executor="slurm", job_id="111")
    (copy / "runs" / "trunk_s1").mkdir(parents=True)
    (copy / "runs" / "trunk_s1" / "summary.json").write_text(json.dumps({"status": "failed", "reason": "test"}))
    monkeypatch.setattr(sweep_mod, "slurm_job_alive", lambda job_id: job_id == "111")
    submitted = []

    def fake_submit(text, sbatch_args=None, dependency=None):
        submitted.append((text.split("--job-name=wxs-")[1].split()[0], dependency))
        return str(200 + len(submitted))

    monkeypatch.setattr("wxscale.submit.submit_script", fake_submit)
    jobs = run_slurm(copy, "sweep", {"image": "/images/wxscale.sif"})
    _, plan = load_plan(copy)
    s0 = set(plan.loc[plan["trunk_id"] == "trunk_s0", "run_id"])
    s1 = set(plan.loc[plan["trunk_id"] == "trunk_s1", "run_id"])
    assert dict(submitted) == {r: "afterok:111" for r in s0}
    assert {r: jobs[r] for r in s1} == {r: "blocked" for r in s1}
    assert "trunk_s0" not in jobs and "trunk_s1" not in jobs
    err = capsys.readouterr().err
    assert all(f"blocked {r}" in err for r in s1) and "trunk trunk_s1 is failed" in err
    # The launch records hold the new job ids, so a third call submits nothing twice.
    submitted.clear()
    monkeypatch.setattr(sweep_mod, "slurm_job_alive", lambda job_id: True)
    again = run_slurm(copy, "sweep", {"image": "/images/wxscale.sif"})
    assert submitted == [] and set(again.values()) == {"blocked"}
