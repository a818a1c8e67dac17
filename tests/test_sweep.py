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
