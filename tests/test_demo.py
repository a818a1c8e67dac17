"""The demo's orchestration end to end, on a tiny dataset in place of the simulated one (reused as the demo does):
LR scan, sweep, extend, fit, held-out validation, evaluation and report, then a rerun that trains nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.conftest import make_tiny_dataset
from tests.train_utils import write_sweep_base
from wxscale.cli import main as cli


def test_demo_runs_every_stage_fits_and_reuses_work(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    make_tiny_dataset(out / "data" / "swe", n_steps=320)
    base = write_sweep_base(tmp_path / "base.yaml")
    args = ["demo", "--out", str(out), "--budgets", "2e8,4e8,8e8,1.6e9", "--sizes", "s-2:s2", "--global-batch", "8",
            "--min-steps", "4", "--max-steps", "1000", "--jobs", "2", "--n-bootstrap", "20",
            "--model", "patch=2", "--model", "window=[2, 4]", "--train-config", str(base),
            "--lrs", "1e-3,3e-3,1e-2", "--lr-scan-budget", "1e8"]
    rc = cli(args)
    text = capsys.readouterr().out
    assert rc == 0, text
    sweep = out / "sweep"
    # The LR scan chose a rate per size, and the sweep's runs trained at it.
    choice = pd.read_csv(sweep / "lr_choice.csv")
    runs = pd.read_csv(sweep / "runs.csv")
    assert set(choice["size"]) == {"s-2", "s-1", "s0", "s1", "s2"}
    rates = dict(zip(choice["size"], choice["lr"]))
    assert all(abs(r.lr - rates[r.size]) < 1e-12 for r in runs.itertuples())
    assert (runs["status"] == "complete").all() and "epochs" in runs
    # The fit: IsoFLOP minima at >= 3 budgets, so both approaches give laws.
    iso = pd.read_csv(out / "fit" / "isoflop.csv")
    assert iso["interior"].sum() >= 3
    fits = pd.read_csv(out / "fit" / "fits.csv")
    for approach, quantity in (("2", "n_opt"), ("2", "l_opt"), ("3", "alpha"), ("3", "beta")):
        row = fits[(fits["approach"].astype(str) == approach) & (fits["quantity"] == quantity)]
        assert len(row) == 1, (approach, quantity)
    # The held-out budget (2x the largest) was run and compared with the prediction, and left out of the fit.
    validation = pd.read_csv(sweep / "validation" / "validation.csv")
    assert (validation["budget_flops"] == 3.2e9).all() and validation["l_rel_error"].notna().all()
    assert (runs.loc[runs["budget_flops"] == 3.2e9, "role"] == "validation").all()
    assert (out / "eval" / "rmse.csv").is_file()
    first_screen = (out / "report.md").read_text().split("## Figures", 1)[0]
    assert "N_opt = " in first_screen and "interior minimum" in first_screen
    assert "Held-out budget" in first_screen and "% saved" in text
    # The twin sweep at one fixed rate, and the laws per channel and lead time.
    assert (out / "sweep_fixed_lr" / "runs.csv").is_file()
    assert (out / "fit" / "channels" / "channel_laws.csv").is_file()

    # Run again: the finished runs are kept, not trained again.
    stamps = {p: p.stat().st_mtime_ns for p in (sweep / "runs").glob("*/summary.json")}
    assert len(stamps) >= len(runs) + runs["trunk_id"].nunique()  # every branch and every trunk finished
    assert cli(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "reusing the plan" in capsys.readouterr().out
