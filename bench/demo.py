"""`wxscale demo`: the README's main job, a complete miniature scaling study on the built-in simulator.

Each stage is the suite's own command, run in order on one output dir (contract layout, ARCHITECTURE.md)::

    DIR/data/swe      dataset dir           wxscale prep --builtin swe, then wxscale check
    DIR/sweep         sweep dir             wxscale sweep plan, wxscale sweep run (continual training)
    DIR/fit           isoflop.csv, fits.csv and plots      wxscale fit
    DIR/eval          the best model's rollout metrics     wxscale eval
    DIR/report.md     one page with every table and plot   wxscale report

Run again, it reuses what is done: the dataset when it checks clean, finished runs (the sweep never runs a
finished branch twice), and recomputes only the cheap fits, evaluation and report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wxscale.cli import main as cli
from wxscale.errors import WxscaleError

# Chosen so that on 2 CPU cores the study takes ~10 minutes and the middle budgets have interior optima
# (see the closing notes of the scaling-study issue for the measurements behind these numbers).
DEFAULT_BUDGETS = "1.5e11,3e11,6e11,1.2e12"
DEFAULT_SIZES = "s0:s4"


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _must(rc: int, what: str) -> None:
    if rc != 0:
        raise WxscaleError(f"demo stopped: `{what}` exited with status {rc} (its message is above)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output dir (default out/demo)")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"FLOP budgets (default {DEFAULT_BUDGETS})")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"ladder sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2, one per core)")
    parser.add_argument("--sim-years", type=int, default=None, help="simulated years (default: the simulator's)")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--skip-eval", action="store_true", help="no rollout evaluation of the best model")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="model field for every size, e.g. --model patch=2 (repeatable)")
    parser.add_argument("--train-config", type=Path, default=None,
                        help="base training config of every run (default: bench/configs/sweep_base.yaml)")


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    out: Path = args.out
    data, sweep, fit, evaluation = out / "data" / "swe", out / "sweep", out / "fit", out / "eval"

    t0 = _step("1/5 dataset: the built-in shallow-water simulator -> HDF5 shards")
    from wxscale.data_prep.check import check_dataset

    if (data / "data.json").is_file() and not check_dataset(data, checksums=False, values=False):
        print(f"reusing {data} (checks clean; delete it to simulate again)")
    else:
        prep = ["prep", "--builtin", "swe", "--out", str(data), "--overwrite"]
        if args.sim_years is not None:
            prep += ["--years", str(args.sim_years)]
        _must(cli(prep), " ".join(prep))
        _must(cli(["check", str(data)]), f"check {data}")
    print(f"[{time.perf_counter() - t0:.0f} s]")

    t0 = _step("2/5 sweep plan: budgets x sizes -> constant-LR trunks + 1-sqrt cooldown branches")
    plan = ["sweep", "plan", "--dataset", str(data), "--out", str(sweep), "--budgets", args.budgets,
            "--sizes", args.sizes, "--global-batch", str(args.global_batch), "--min-steps", str(args.min_steps),
            "--max-steps", str(args.max_steps)]
    plan += [f"--model={m}" for m in args.model]
    if args.train_config is not None:
        plan += ["--train-config", str(args.train_config)]
    _must(cli(plan), " ".join(plan))

    t0 = _step("3/5 sweep run: trunks, then their branches (finished runs are kept)")
    rc = cli(["sweep", "run", str(sweep), "--jobs", str(args.jobs)])
    if rc != 0:
        if rc != 1 or _best_run(sweep) is None:  # stopped by a signal, or nothing finished: nothing to fit
            raise WxscaleError(f"demo stopped: `wxscale sweep run {sweep}` exited with status {rc} and "
                               f"{'no run completed' if rc == 1 else 'the sweep did not finish'}; see "
                               f"`wxscale sweep status {sweep}` and the runs' train.log")
        print("some runs did not complete; fitting what finished (see `wxscale sweep status`)")
    print(f"[{time.perf_counter() - t0:.0f} s]")

    t0 = _step("4/5 fit: IsoFLOP profiles (Approach 2) and the parametric law (Approach 3), bootstrap intervals")
    fit_rc = cli(["fit", str(sweep), "--out", str(fit), "--n-bootstrap", str(args.n_bootstrap)])
    print(f"[{time.perf_counter() - t0:.0f} s]")

    best = _best_run(sweep)
    if not args.skip_eval and best is not None:
        t0 = _step(f"5/5 eval: the best model of the largest budget ({best.name}) rolled out over the test split")
        from wxscale.evaluation.evaluate import evaluate_run

        evaluate_run(best, out=evaluation)
        print(f"[{time.perf_counter() - t0:.0f} s]")

    cli(["report", str(out)])
    _print_summary(sweep, fit, time.perf_counter() - t_start)
    return 0 if fit_rc == 0 else fit_rc


def _best_run(sweep: Path) -> Path | None:
    import pandas as pd

    runs_csv = sweep / "runs.csv"
    if not runs_csv.is_file():
        return None
    try:
        runs = pd.read_csv(runs_csv)
    except pd.errors.EmptyDataError:  # no finished branch yet
        return None
    if "status" not in runs.columns:
        return None
    runs = runs[runs["status"] == "complete"]
    if runs.empty:
        return None
    top = runs[runs["budget_flops"] == runs["budget_flops"].max()]
    return sweep / "runs" / top.sort_values("val_loss").iloc[0]["run_id"]


def _print_summary(sweep: Path, fit: Path, wall_s: float) -> None:
    import pandas as pd

    print("\n=== summary")
    meta = json.loads((sweep / "sweep.json").read_text())["summary"]
    print(f"continual training used {meta['continual_flops']:.3g} FLOPs where independent runs of every point "
          f"would use {meta['independent_flops']:.3g} ({100 * meta['saved_fraction']:.0f} % saved)")
    fits_csv = fit / "fits.csv"
    if fits_csv.is_file():
        fits = pd.read_csv(fits_csv)
        for q, label in (("n_opt", "N_opt"), ("l_opt", "L_opt"), ("d_opt", "D_opt")):
            row = fits[(fits["quantity"] == q) & (fits["approach"].astype(str).str.contains("2"))]
            if len(row):
                r = row.iloc[0]
                print(f"{label} = {r['coefficient']:.3g} C^{r['exponent']:.3f}  "
                      f"(exponent {100 * r.get('level', 0.95):.0f} % interval [{r['exponent_lo']:.3f}, "
                      f"{r['exponent_hi']:.3f}], {int(r['n_points'])} budgets)")
    iso = fit / "isoflop.csv"
    if iso.is_file():
        table = pd.read_csv(iso)
        interior = int(table["interior"].sum()) if "interior" in table else len(table)
        print(f"{interior} of {len(table)} budgets have an interior minimum")
    print(f"everything is under {sweep.parent} (report: {sweep.parent / 'report.md'}); {wall_s / 60:.1f} min")
