"""Laws that predict: per-size learning rates, data repetition, growing a sweep (extend), held-out validation.

Most tests write the runs' results (summary.json) themselves from a known loss surface, so the decisions of
extend, validate and the LR scan are checked against a truth without training; one test trains, to show that a
grown sweep continues its trunks exactly (same losses as a sweep planned whole) and reruns nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import write_sweep_base
from wxscale.cli import main as cli
from wxscale.study.extend import diagnose, extend_sweep
from wxscale.study.lr_scan import apply_rates, choose_rates, plan_scan, rates_for, scan_results
from wxscale.study.plan import (
    MAX_EPOCHS,
    SweepSpec,
    add_points,
    load_plan,
    plan_sweep,
    repetition_warnings,
    train_samples_of,
    trunks_of,
)
from wxscale.study.run import run_local, write_run_configs
from wxscale.study.sweep import collect_runs, sweep_table
from wxscale.study.validate import ladder_neighbours, validate

TINY = ["--model", "patch=2", "--model", "window=[2, 4]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("laws") / "data", n_steps=120)


def _plan(data: Path, out: Path, budgets: str, sizes: str, *extra: str) -> Path:
    base = write_sweep_base(out.parent / f"{out.name}_base.yaml")
    rc = cli(["sweep", "plan", "--dataset", str(data), "--out", str(out), "--budgets", budgets, "--sizes", sizes,
              "--global-batch", "8", "--min-steps", "2", "--train-config", str(base), *TINY, *extra])
    assert rc == 0
    return out


def _fake_results(sweep: Path, loss, only: list[str] | None = None) -> None:
    """Write a complete summary.json for every planned branch (or those in ``only``) with loss(params, budget)."""
    _, plan = load_plan(sweep)
    for b in plan.itertuples():
        if only is not None and b.run_id not in only:
            continue
        d = sweep / "runs" / b.run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"status": "complete", "val_loss": loss(b.params, b.budget_flops),
                                                    "samples": int(b.samples)}))


def _bowl(n_star):
    """IsoFLOP profiles that are exact parabolas in log10 N around n_star(C), with L_opt = 2 C^-0.05."""
    return lambda n, c: 2 * c**-0.05 + 0.05 * (math.log10(n) - math.log10(n_star(c))) ** 2


# ---------------------------------------------------------------------------------------------- 4. repetition

def test_plan_records_lr_and_epochs_and_warns_on_repetition(data: Path, tmp_path: Path, capsys):
    sweep = _plan(data, tmp_path / "sw", "2e8,4e8,8e8,1.6e9", "s-1:s1")
    out = capsys.readouterr().out
    _, plan = load_plan(sweep)
    epoch = train_samples_of(data)
    assert epoch > 0
    assert np.allclose(plan["epochs"], plan["samples"] / epoch)
    assert (plan["lr"] == 3e-3).all()  # the base config's rate: a fixed-rate sweep
    heavy = plan[plan["epochs"] > MAX_EPOCHS]
    assert len(heavy) and len(heavy) < len(plan)  # the test needs both kinds
    for size in heavy["size"].unique():
        assert f"warning: {size} repeats the train split more than 4 times" in out
    for size in set(plan["size"]) - set(heavy["size"]):
        assert f"warning: {size} " not in out
    assert repetition_warnings(plan[plan["epochs"] <= MAX_EPOCHS]) == []
    # runs.csv carries lr and epochs on, and flags the repeated runs; the fit names them.
    _fake_results(sweep, _bowl(lambda c: 4000.0 * (c / 2e8) ** 0.2))
    runs = collect_runs(sweep).set_index("run_id")
    assert np.allclose(runs["lr"], 3e-3)
    assert (runs["repeats_data"] == (runs["epochs"] > MAX_EPOCHS)).all()
    capsys.readouterr()
    cli(["fit", str(sweep), "--n-bootstrap", "10", "--approach", "2"])
    out = capsys.readouterr().out
    n_rep = int(runs["repeats_data"].sum())
    assert f"note: {n_rep} of {len(runs)} runs repeat their train split more than 4 times" in out
    assert (sweep / "fit" / "isoflop.png").stat().st_size > 0


def test_spec_without_dataset_has_no_epochs():
    spec = SweepSpec(budgets=[1e9], sizes=["s0"], grid=(8, 16), channels=3, global_batch=8, min_steps=2,
                     model_overrides={"patch": 2, "window": [2, 4]})
    plan, _ = plan_sweep(spec)
    assert "epochs" not in plan and "lr" not in plan
    plan, _ = plan_sweep(spec, lr={"s0": 1e-3}, train_samples=10)
    assert plan["lr"].iloc[0] == 1e-3 and plan["epochs"].iloc[0] == plan["samples"].iloc[0] / 10


# ---------------------------------------------------------------------------------------------- 3. extend

def test_extend_adds_smaller_sizes_then_stops_with_three_minima(data: Path, tmp_path: Path, capsys):
    sweep = _plan(data, tmp_path / "sw", "1e9,2e9,4e9", "s0:s2")
    # Round 0: the loss rises with size at every budget (the optimum is ~s-2..s-1, below the sampled sizes).
    truth = _bowl(lambda c: 3000.0 * (c / 1e9) ** 0.3)
    _fake_results(sweep, truth)
    assert cli(["sweep", "extend", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "the loss rises with size at every sampled size" in out
    _, plan = load_plan(sweep)
    for c in (1e9, 2e9, 4e9):
        assert {"s-2", "s-1"} <= set(plan.loc[plan["budget_flops"] == c, "size"]), c
    new = plan[plan["size"].isin(["s-2", "s-1"])]
    assert set(new["trunk_id"]) == {"trunk_s-2", "trunk_s-1"}
    assert (trunks_of(plan).set_index("trunk_id").loc[["trunk_s-2", "trunk_s-1"], "parent"] == "").all()
    log = pd.read_csv(sweep / "extend.csv")
    assert (log["round"] == 1).all() and set(log["action"]) == {"add sizes"}
    # sweep run would run only the new runs: everything else is complete already.
    table = sweep_table(sweep)
    branches = table[table["kind"] == "branch"]
    assert set(branches.loc[branches["state"] == "pending", "run_id"]) == set(new["run_id"])
    # Round 1: with the new sizes measured, every budget has an interior minimum; extend says it is done.
    _fake_results(sweep, truth, only=list(new["run_id"]))
    result = extend_sweep(sweep)
    assert result.done and result.n_interior == 3 and result.added.empty
    assert result.stop.startswith("done: 3 budget(s)")


def test_extend_larger_budget_when_smaller_sizes_mean_nothing(data: Path, tmp_path: Path):
    sweep = _plan(data, tmp_path / "sw", "1e9,2e9", "s0:s2")
    _fake_results(sweep, _bowl(lambda c: 500.0))  # optimum far below the ladder at every budget
    result = extend_sweep(sweep, min_size="s0", write=False)
    acts = {a["action"] for a in result.actions}
    assert acts == {"larger budget", "add budget"}
    assert all("too small to mean anything (--min-size)" in a["reason"] for a in result.actions
               if a["action"] == "larger budget")
    assert set(result.added["budget_flops"]) == {4e9}
    assert set(result.added["size"]) == {"s0", "s1", "s2"}
    # A larger budget continues each trunk; with the trunks already run, by a new trunk from the last checkpoint.
    for size in ("s0", "s1", "s2"):
        (sweep / "runs" / f"trunk_{size}").mkdir(parents=True, exist_ok=True)
    result = extend_sweep(sweep, min_size="s0")
    _, plan = load_plan(sweep)
    trunks = trunks_of(plan).set_index("trunk_id")
    for size in ("s0", "s1", "s2"):
        seg = trunks.loc[f"trunk_{size}.1"]
        old_end = int(plan.loc[(plan["size"] == size) & (plan["budget_flops"] < 4e9), "branch_from_samples"].max())
        assert seg["parent"] == f"trunk_{size}" and seg["start_samples"] == old_end
    cfg = yaml.safe_load(write_run_configs(sweep)["trunk_s1.1"].read_text())
    start = trunks.loc["trunk_s1.1", "start_samples"]
    assert cfg["run"]["init_from"].endswith(f"runs/trunk_s1/checkpoints/samples_{start}")
    assert sweep_table(sweep).set_index("run_id").loc["trunk_s1.1", "depends_on"] == "trunk_s1"


def test_extend_respects_max_flops_and_the_ladder_top(data: Path, tmp_path: Path):
    sweep = _plan(data, tmp_path / "sw", "1e9,2e9", "s0:s2")
    _fake_results(sweep, _bowl(lambda c: 3000.0))
    result = extend_sweep(sweep, max_flops=1.0, write=False)  # nothing fits in 1 FLOP
    assert result.added.empty and "--max-flops ends it" in result.stop
    # Optimum above the largest size: larger ladder sizes are proposed.
    diag = diagnose(collect_runs(sweep).assign(val_loss=lambda d: 1 - 1e-6 * d["params"]), ["s0", "s1", "s2", "s3"])
    assert set(diag["side"]) == {"above"}


# ---------------------------------------------------------------------------------------------- 1. validate

def test_validate_predicts_runs_three_sizes_and_compares(data: Path, tmp_path: Path, capsys):
    sweep = _plan(data, tmp_path / "sw", "1e9,2e9,4e9", "s-2:s3")
    n_star = lambda c: 6000.0 * (c / 1e9) ** 0.5  # noqa: E731
    _fake_results(sweep, _bowl(n_star))
    c_val = 8e9
    assert validate(sweep, c_val, run=False, n_bootstrap=20, plots=False) is None  # planned, not yet run
    spec, plan = load_plan(sweep)
    val = plan[plan["role"] == "validation"]
    assert set(val["budget_flops"]) == {c_val}
    assert list(val["size"]) == ladder_neighbours(spec, n_star(c_val))
    assert len(val) == 3
    # Measured losses at C: the best is the middle size, a little worse than the law says.
    measured = {r.run_id: (1.03 if r.size == val["size"].iloc[1] else 1.1) * _bowl(n_star)(r.params, c_val)
                for r in val.itertuples()}
    for run_id, loss in measured.items():
        d = sweep / "runs" / run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps({"status": "complete", "val_loss": loss}))
    table = validate(sweep, c_val, run=False, n_bootstrap=20)
    assert table is not None
    row = table[table["approach"] == "2"].iloc[0]
    assert row["n_opt"] == pytest.approx(n_star(c_val), rel=1e-3)  # exact parabolas: the law is exact
    assert row["l_opt"] == pytest.approx(2 * c_val**-0.05, rel=1e-3)
    best = min(measured.values())
    assert row["best_loss"] == pytest.approx(best)
    assert row["best_size"] == val["size"].iloc[1]
    assert row["l_rel_error"] == pytest.approx((row["l_opt"] - best) / best)
    assert row["l_rel_error"] < 0  # the measurement was 3 % worse than the law
    assert row["l_in_interval"] == (row["l_opt_lo"] <= best <= row["l_opt_hi"])
    out = sweep / "validation"
    on_disk = pd.read_csv(out / "validation.csv")
    assert {"budget_flops", "n_opt", "n_opt_lo", "n_opt_hi", "l_opt", "l_opt_lo", "l_opt_hi", "losses",
            "best_size", "l_rel_error", "n_in_interval", "l_in_interval"} <= set(on_disk.columns)
    assert (out / "scaling_laws.png").stat().st_size > 0
    # The law was fitted on the budgets below C only.
    assert sorted(pd.read_csv(out / "fit" / "isoflop.csv")["budget_flops"]) == [1e9, 2e9, 4e9]
    # extend and fit leave the held-out budget out; fit's scaling-law figure shows the validation point.
    assert c_val not in set(extend_sweep(sweep, write=False).diagnosis["budget_flops"])
    capsys.readouterr()
    assert cli(["fit", str(sweep), "--n-bootstrap", "10", "--approach", "2"]) == 0
    assert "leaving out 3 held-out validation run(s)" in capsys.readouterr().out
    assert sorted(pd.read_csv(sweep / "fit" / "isoflop.csv")["budget_flops"]) == [1e9, 2e9, 4e9]


# ---------------------------------------------------------------------------------------------- 2. LR scan

def test_lr_scan_chooses_per_size_and_fits_a_width_law(data: Path, tmp_path: Path):
    sweep = _plan(data, tmp_path / "sw", "1e9,2e9", "s0:s2")
    scan_dir = plan_scan(sweep, [1e-3, 3e-3, 1e-2], ["s0", "s2"])
    _, scan_plan = load_plan(scan_dir)
    assert set(scan_plan["budget_flops"]) == {1e9} and len(scan_plan) == 6
    assert scan_plan["trunk_id"].nunique() == 6  # one constant-LR trunk per (size, rate)
    # The best rate falls with width: s0 (width 16) likes 1e-2, s2 (width 24) 3e-3 (from the losses below).
    best = {"s0": 1e-2, "s2": 3e-3}
    for b in scan_plan.itertuples():
        for run_id in (b.run_id, b.trunk_id):
            d = scan_dir / "runs" / run_id
            d.mkdir(parents=True, exist_ok=True)
            loss = 1 + 0.1 * abs(math.log10(b.lr / best[b.size])) + (0.05 if run_id == b.trunk_id else 0)
            (d / "summary.json").write_text(json.dumps({"status": "complete", "val_loss": loss}))
    scan = scan_results(scan_dir)
    assert (scan["trunk_val_loss"] > scan["val_loss"]).all()
    choice, law = choose_rates(scan, ["s0", "s1", "s2"], {"s0": 16, "s1": 24, "s2": 24})
    got = choice.set_index("size")
    assert got.loc["s0", "lr"] == 1e-2 and "edge of the scan" in got.loc["s0", "note"]
    assert got.loc["s2", "lr"] == pytest.approx(3e-3, rel=0.05)  # parabola vertex in log10(lr)
    assert got.loc["s1", "source"] == "width law"
    assert got.loc["s1", "lr"] == pytest.approx(law["coefficient"] * 24 ** law["exponent"])
    assert law["exponent"] < 0
    # Into the plan (and from there into every run's config), before anything has run.
    choice["law_coefficient"], choice["law_exponent"] = law["coefficient"], law["exponent"]
    choice.to_csv(sweep / "lr_choice.csv", index=False)
    plan = apply_rates(sweep, choice)
    assert dict(zip(plan["size"], plan["lr"])) == dict(zip(choice["size"], choice["lr"]))
    cfgs = write_run_configs(sweep)
    assert yaml.safe_load(cfgs["trunk_s0"].read_text())["optim"]["lr"] == 1e-2
    _, plan = load_plan(sweep)
    b0 = plan.loc[plan["size"] == "s2", "run_id"].iloc[0]
    assert yaml.safe_load(cfgs[b0].read_text())["optim"]["lr"] == got.loc["s2", "lr"]
    # Sizes the scan never saw (s-1) take the width law; a started sweep refuses new rates.
    assert rates_for(sweep, ["s-1"])["s-1"] == pytest.approx(law["coefficient"] * 16 ** law["exponent"])
    (sweep / "runs" / "trunk_s0").mkdir(parents=True)
    with pytest.raises(Exception, match="cannot change now"):
        apply_rates(sweep, choice)


# ---------------------------------------------------------------------------------------------- trunks continue

def test_grown_sweep_continues_its_trunk_exactly(data: Path, tmp_path: Path):
    grown = _plan(data, tmp_path / "grown", "2e8", "s0")
    assert set(run_local(grown, jobs=1, threads=1, progress=False).values()) == {"complete"}
    stamp = (grown / "runs" / "trunk_s0" / "summary.json").stat().st_mtime_ns
    added, skipped, _ = add_points(grown, [(4e8, "s0")])
    assert len(added) == 1 and not skipped
    assert set(run_local(grown, jobs=1, threads=1, progress=False).values()) == {"complete"}
    assert (grown / "runs" / "trunk_s0" / "summary.json").stat().st_mtime_ns == stamp  # not run again
    seg = json.loads((grown / "runs" / "trunk_s0.1" / "summary.json").read_text())
    _, plan = load_plan(grown)
    p1, p2 = sorted(plan["branch_from_samples"])
    assert seg["branch_from_samples"] == p1 and seg["samples"] == p2  # only the new stretch was trained

    whole = _plan(data, tmp_path / "whole", "2e8,4e8", "s0")
    assert set(run_local(whole, jobs=1, threads=1, progress=False).values()) == {"complete"}
    a = collect_runs(grown).set_index("run_id")["val_loss"]
    b = collect_runs(whole).set_index("run_id")["val_loss"]
    assert sorted(a.index) == sorted(b.index)
    for run_id in a.index:
        assert a[run_id] == pytest.approx(b[run_id], rel=1e-6), run_id
    shutil.rmtree(tmp_path / "whole")


def test_lr_scan_end_to_end_with_a_stand_in_runner(data: Path, tmp_path: Path, monkeypatch):
    """lr_scan(): plan the scan, run it (here a stand-in that writes the losses a run would), choose, apply, plot."""
    import wxscale.study.run as run_module
    from wxscale.study.lr_scan import lr_scan

    sweep = _plan(data, tmp_path / "sw", "1e9,2e9", "s0:s2")
    ran = []

    def stand_in(scan_dir, **kw):
        _, plan = load_plan(scan_dir)
        ran.append(Path(scan_dir))
        for b in plan.itertuples():
            for run_id in (b.run_id, b.trunk_id):
                d = Path(scan_dir) / "runs" / run_id
                d.mkdir(parents=True, exist_ok=True)
                loss = 1 + (math.log10(b.lr) + 2.5) ** 2  # best at 10^-2.5 for every size
                (d / "summary.json").write_text(json.dumps({"status": "complete", "val_loss": loss}))
        return {}

    monkeypatch.setattr(run_module, "run_local", stand_in)
    choice = lr_scan(sweep, [1e-3, 3e-3, 1e-2], progress=False)
    assert ran == [sweep / "lr_scan"]
    assert list(choice["size"]) == ["s0", "s1", "s2"]
    assert set(choice["source"]) == {"scan"}  # default: smallest, middle and largest are scanned
    assert np.allclose(choice["lr"], 10**-2.5, rtol=1e-6)  # parabola vertex, exact for a parabola
    _, plan = load_plan(sweep)
    assert np.allclose(plan["lr"], 10**-2.5)
    for name in ("lr_scan.csv", "lr_choice.csv", "lr_scan.png"):
        assert (sweep / name).stat().st_size > 0


def test_extend_follows_a_skewed_fit_to_the_ladder_bottom_then_a_larger_budget():
    """Measured on the NCEP North Atlantic file (2e10 FLOPs): the lowest loss is at s-1, but the far, saturating
    sizes skew the parabola's vertex below s-2. The fit's side counts; at the ladder's bottom, a larger budget."""
    from wxscale.model import LADDER
    from wxscale.study.extend import _proposals

    runs = pd.DataFrame({"budget_flops": 2e10, "size": ["s-2", "s-1", "s0", "s1", "s2", "s3"],
                         "params": [2762, 4985, 8370, 17470, 32548, 54840],
                         "val_loss": [0.223035, 0.220075, 0.230441, 0.239888, 0.246165, 0.247467]})
    d = diagnose(runs, list(LADDER)).iloc[0]
    assert not d["interior"] and d["best_size"] == "s-1" and not d["rises"]
    assert d["side"] == "below"
    sizes, why = _proposals(d, list(LADDER), floor=0, per_side=2)
    assert sizes == [] and "below the smallest size" in why
