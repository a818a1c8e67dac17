"""Study cost planner: `wxscale sweep plan --cost` prices every run before anything runs; `sweep status` compares."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.train_utils import write_sweep_base
from wxscale.cli import main as cli
from wxscale.errors import WxscaleError
from wxscale.hardware import GPU_PEAKS
from wxscale.study.cost import cost_summary, load_cost_model, run_costs, sweep_wall_s
from wxscale.study.plan import SweepSpec, plan_sweep, trunks_of

TINY = ["--model", "patch=2", "--model", "window=[2, 4]"]  # the tiny grid needs a smaller patch and window


def _spec(**kw) -> SweepSpec:
    base = dict(budgets=[1e9, 2e9], sizes=["s0", "s1"], grid=(8, 16), channels=3, global_batch=8, min_steps=2,
                max_steps=1000, model_overrides={"patch": 2, "window": [2, 4]})
    return SweepSpec(**{**base, **kw})


def _throughput_csv(path: Path, rows: list[dict]) -> Path:
    """A throughput.csv with the columns the planner reads (the rest of bench throughput's columns omitted)."""
    base = {"precision": "fp32", "loader": "torch", "rollout_steps": 1, "grid": "8x16", "channels": 3,
            "device": "test-cpu", "host": "h"}
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(path, index=False)
    return path


def test_assumed_mfu_prices_by_analytic_flops():
    plan, _ = plan_sweep(_spec(rollout_steps=2))
    one_step, _ = plan_sweep(_spec())
    assert (plan["flops_per_sample"] == 2 * one_step["flops_per_sample"]).all()  # the plan's count holds the rollout
    model = load_cost_model("peak:H100", precision="bf16", grid=(8, 16), channels=3, mfu=0.4)
    assert model.kind == "assumed" and "MFU 0.4" in model.description and "data sheet" in model.description
    runs = run_costs(plan, 8, 2, model, devices_per_run=4)
    peak = GPU_PEAKS["H100"]["bf16"]
    for r in runs.itertuples():
        fps = plan.loc[plan["size"] == r.size, "flops_per_sample"].iloc[0]  # trunks and branches train at rollout 2
        assert r.samples_per_s == pytest.approx(4 * peak * 0.4 / fps)
        assert r.wall_s == pytest.approx(r.samples / r.samples_per_s)
        assert r.device_hours == pytest.approx(r.wall_s * 4 / 3600)
    trunks = trunks_of(plan)
    assert list(runs.loc[runs["kind"] == "trunk", "samples"]) == list(trunks["samples"])
    with_start = run_costs(plan, 8, 2, model, devices_per_run=4, overhead_s=5.0)  # a fixed cost per run
    assert (with_start["wall_s"] - runs["wall_s"]).tolist() == pytest.approx([5.0] * len(runs))
    a, b = (cost_summary(r, plan, model, 8, 4, o) for r, o in ((runs, 0.0), (with_start, 5.0)))
    assert b["independent_device_hours"] - a["independent_device_hours"] == pytest.approx(len(plan) * 5 * 4 / 3600)
    assert list(runs.loc[runs["kind"] == "branch", "samples"]) == list(plan["cooldown_samples"])


def test_measured_rows_match_by_size_precision_and_batch(tmp_path):
    plan, _ = plan_sweep(_spec())
    params = dict(zip(plan["size"], plan["params"], strict=False))
    csv = _throughput_csv(tmp_path / "throughput.csv", [
        {"size": "s0", "params": params["s0"], "batch_per_rank": 8, "world_size": 1, "samples_per_s": 100.0},
        {"size": "s0", "params": params["s0"], "batch_per_rank": 4, "world_size": 2, "samples_per_s": 150.0},
        {"size": "s1", "params": params["s1"], "batch_per_rank": 16, "world_size": 1, "samples_per_s": 40.0},
        {"size": "s1", "params": params["s1"], "batch_per_rank": 8, "world_size": 1, "samples_per_s": 999.0,
         "precision": "bf16"},  # another precision: never used for fp32 runs
    ])
    model = load_cost_model(str(csv), precision="fp32", grid=(8, 16), channels=3)
    assert model.kind == "measured" and str(csv) in model.description
    assert model.rate("s0", params["s0"], 1.0, 8, 1, 1)[0] == 100.0  # exact: batch 8 on 1 device
    assert model.rate("s0", params["s0"], 1.0, 8, 2, 1)[0] == 150.0  # exact: batch 4 on 2 devices
    sps, basis = model.rate("s0", params["s0"], 1.0, 16, 4, 1)  # batch 4/device measured on 2: per device x 4
    assert sps == 300.0 and "scaled linearly" in basis
    sps, basis = model.rate("s1", params["s1"], 1.0, 8, 1, 1)  # only batch 16 measured for s1
    assert sps == 40.0 and "nearest batch 16" in basis
    sps, basis = model.rate("s0", params["s0"], 1.0, 8, 1, 2)  # rollout 2 from a rollout-1 row
    assert sps == 50.0 and "rollout 1 row scaled" in basis
    with pytest.raises(WxscaleError, match="no fp32 row for size s2"):
        model.rate("s2", 1, 1.0, 8, 1, 1)
    with pytest.raises(WxscaleError, match="parameters"):
        model.rate("s0", params["s0"] + 1, 1.0, 8, 1, 1)
    with pytest.raises(WxscaleError, match="does not transfer between grids"):
        load_cost_model(str(csv), precision="fp32", grid=(721, 1440), channels=71)
    with pytest.raises(WxscaleError, match="no fp16 rows"):
        load_cost_model(str(csv), precision="fp16", grid=(8, 16), channels=3)
    with pytest.raises(WxscaleError, match="needs --mfu"):
        load_cost_model("peak:H100", precision="bf16", grid=(8, 16), channels=3)
    with pytest.raises(WxscaleError, match="unknown device"):
        load_cost_model("peak:TPU9", precision="bf16", grid=(8, 16), channels=3, mfu=0.3)


def test_sweep_wall_time_replays_the_local_runner_order():
    runs = pd.DataFrame([
        {"run_id": "trunk_a", "kind": "trunk", "trunk_id": "trunk_a", "wall_s": 10.0},
        {"run_id": "trunk_b", "kind": "trunk", "trunk_id": "trunk_b", "wall_s": 4.0},
        {"run_id": "a1", "kind": "branch", "trunk_id": "trunk_a", "wall_s": 3.0},
        {"run_id": "b1", "kind": "branch", "trunk_id": "trunk_b", "wall_s": 5.0},
        {"run_id": "b2", "kind": "branch", "trunk_id": "trunk_b", "wall_s": 1.0},
    ])
    assert sweep_wall_s(runs, 1) == 23.0  # one at a time: the sum
    # two slots: a 0-10 | b 0-4, b1 4-9, b2 9-10 | a1 10-13
    assert sweep_wall_s(runs, 2) == 13.0
    assert sweep_wall_s(runs, 5) == 13.0  # the critical path: trunk_a then a1


def _plan_cli(tmp_path: Path, data: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "sw"
    base = write_sweep_base(tmp_path / "base.yaml")  # a short warmup: tiny budgets branch after it
    rc = cli(["sweep", "plan", "--dataset", str(data), "--out", str(out), "--budgets", "2e8,4e8", "--sizes", "s0,s1",
              "--global-batch", "8", "--min-steps", "2", "--train-config", str(base), *TINY, *extra])
    return rc, out


def test_plan_cost_columns_totals_and_summary(tmp_path, tiny_dataset, capsys):
    rc, out = _plan_cli(tmp_path, tiny_dataset, "--cost", "peak:H100", "--mfu", "0.35", "--devices", "8",
                        "--devices-per-run", "4")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cost basis: assumed: H100 fp32 peak 67 TFLOP/s" in printed and "MFU 0.35" in printed
    plan = pd.read_csv(out / "plan.csv")
    costs = pd.read_csv(out / "cost.csv")
    summary = json.loads((out / "sweep.json").read_text())["summary"]["cost"]
    assert summary["basis"] == "assumed" and summary["devices"] == 8 and summary["jobs"] == 2
    peak = GPU_PEAKS["H100"]["fp32"]
    for b in plan.itertuples():  # the branch's own run: its cooldown samples on 4 devices
        assert b.planned_wall_s == pytest.approx(b.cooldown_samples * b.flops_per_sample / (4 * peak * 0.35))
        assert b.planned_device_hours == pytest.approx(b.planned_wall_s * 4 / 3600)
    assert set(costs["kind"]) == {"trunk", "branch"} and len(costs) == len(plan) + plan["trunk_id"].nunique()
    assert summary["device_hours"] == pytest.approx(costs["device_hours"].sum())
    trunk_flops = costs.loc[costs["kind"] == "trunk", "train_flops"].sum()
    branch_flops = costs.loc[costs["kind"] == "branch", "train_flops"].sum()
    assert trunk_flops + branch_flops == pytest.approx(json.loads((out / "sweep.json").read_text())["summary"]
                                                       ["continual_flops"])  # the same work the plan counts
    assert summary["independent_device_hours"] > summary["device_hours"]  # continual training saves compute
    assert f"{summary['device_hours']:.4g} device-hours" in printed


def test_plan_cost_refuses_a_mismatched_csv(tmp_path, tiny_dataset, capsys):
    csv = _throughput_csv(tmp_path / "t.csv", [{"size": "s0", "batch_per_rank": 8, "world_size": 1,
                                                "samples_per_s": 10.0, "grid": "32x64"}])
    rc, out = _plan_cli(tmp_path, tiny_dataset, "--cost", str(csv))
    assert rc == 2 and "does not transfer between grids" in capsys.readouterr().err
    rc, _ = _plan_cli(tmp_path, tiny_dataset, "--mfu", "0.3")
    assert rc == 2 and "--mfu is for --cost peak" in capsys.readouterr().err


def test_status_shows_spent_against_planned(tmp_path, tiny_dataset, capsys):
    rc, out = _plan_cli(tmp_path, tiny_dataset, "--cost", "peak:H100", "--mfu", "0.5", "--devices", "2")
    assert rc == 0
    costs = pd.read_csv(out / "cost.csv")
    trunk = costs[costs["kind"] == "trunk"].iloc[0]
    branch = costs[(costs["kind"] == "branch") & (costs["trunk_id"] == trunk["run_id"])].iloc[0]
    # a finished trunk (1800 s on 2 devices: 1 device-hour) with a checkpoint at 600 s, and its branch, whose
    # summary counts the trunk's 600 s too (as the trainer's does): 600 + 900 s -> 0.5 device-hours its own
    runs = out / "runs"
    ckpt = runs / trunk["run_id"] / "checkpoints" / "samples_8"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"wall_s": 600.0}))
    (runs / trunk["run_id"] / "summary.json").write_text(json.dumps(
        {"status": "complete", "wall_s": 1800.0, "world_size": 2, "init_from": None}))
    (runs / branch["run_id"]).mkdir(parents=True)
    (runs / branch["run_id"] / "summary.json").write_text(json.dumps(
        {"status": "complete", "wall_s": 1500.0, "world_size": 2, "init_from": str(ckpt), "val_loss": 0.1}))
    capsys.readouterr()
    assert cli(["sweep", "status", str(out)]) == 0
    printed = capsys.readouterr().out
    planned = costs["device_hours"].sum()
    assert f"device-hours: spent {1.5:.4g} of {planned:.4g} planned" in printed
    own = trunk["device_hours"] + branch["device_hours"]
    assert f"2 complete run(s): spent 1.5 against {own:.4g} planned for them (x{1.5 / own:.2f})" in printed
    remaining = planned - own
    assert f"still to run, as planned: {remaining:.4g} device-hours; {remaining * 1.5 / own:.4g} at" in printed
    assert "planned on: assumed: H100" in printed


def test_plan_totals_do_not_overflow_at_seed_budgets():
    """The seed paper's grid and budgets: samples x FLOPs per sample pass int64's range (9.2e18)."""
    spec = SweepSpec(budgets=[3e19, 6e19], sizes=["s0"], grid=(721, 1440), channels=71, global_batch=16,
                     min_steps=1000, max_steps=120000,
                     model_overrides={"embed_dim": 768, "depth": 12, "num_heads": 12, "window": [9, 18]})
    plan, summary = plan_sweep(spec)
    exact = sum(int(s) * int(f) for s, f in zip(plan["samples"], plan["flops_per_sample"], strict=True))
    assert summary["independent_flops"] == pytest.approx(float(exact), rel=1e-12)
    assert 0 < summary["continual_flops"] < summary["independent_flops"]
