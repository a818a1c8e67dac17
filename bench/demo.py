"""`wxscale demo`: the README's main job, a complete miniature scaling study on the built-in simulator.

Each stage is the suite's own command or function, run in order on one output dir (ARCHITECTURE.md)::

    DIR/data/swe         dataset dir                       wxscale prep --builtin swe, then wxscale check
    DIR/sweep            sweep dir                         wxscale sweep plan (7 budgets, sizes s-1..s3)
    DIR/sweep/lr_*       each size's learning rate         wxscale sweep lr-scan (a short constant-LR scan)
    DIR/sweep/runs       trunks and cooldown branches      wxscale sweep run, then wxscale sweep extend + run
                                                           for budgets without an interior minimum
    DIR/fit              isoflop.csv, fits.csv and plots   wxscale fit; fit/channels: wxscale fit channels
    DIR/sweep_fixed_lr   the same sweep at one fixed rate  its fit in DIR/fit_fixed_lr; fit/lr_comparison.csv
    DIR/sweep/validation the laws against runs at 2x the   wxscale sweep validate
                         largest budget, held out of the fit
    DIR/eval             the best model's rollout metrics  wxscale eval
    DIR/report.md        findings first, then figures and tables   wxscale report

Run again, it reuses what is done: the dataset when it checks clean, the plan (grown by the scan, extend and
validate), finished runs (the sweep never runs a finished branch twice), and recomputes only the cheap fits,
evaluation and report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wxscale.cli import main as cli
from wxscale.errors import WxscaleError
from wxscale.study.plan import DEMO_BUDGETS, DEMO_SIZES

# The demo grid (wxscale.study.plan.DEMO_BUDGETS, DEMO_SIZES) and a held-out budget at twice the largest; sized for
# ~15 minutes on 2 cores.
DEFAULT_BUDGETS = ",".join(f"{c:.3g}".replace("+", "") for c in DEMO_BUDGETS)
DEFAULT_SIZES = DEMO_SIZES
DEFAULT_LRS = "3e-3,1e-2,3e-2"


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"[{time.perf_counter() - t0:.0f} s]", flush=True)


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
    parser.add_argument("--lrs", default=DEFAULT_LRS,
                        help=f"learning rates of the per-size scan (default {DEFAULT_LRS}); 'none': the base "
                             "config's rate for every size")
    parser.add_argument("--lr-scan-budget", type=float, default=None,
                        help="FLOPs of each scan run (default: the smallest planned budget that has a run of every "
                             "scanned size, i.e. where the largest still trains --min-steps steps)")
    parser.add_argument("--no-fixed-lr-twin", action="store_true",
                        help="skip the twin sweep at the base config's fixed rate (it shows how the N_opt exponent "
                             "moves between one rate for every size and the scanned rates)")
    parser.add_argument("--extend-rounds", type=int, default=2,
                        help="rounds of `sweep extend` + `sweep run` for budgets without an interior minimum")
    parser.add_argument("--validate-factor", type=float, default=2.0,
                        help="held-out budget = this x the largest budget (0: no validation run)")
    parser.add_argument("--skip-eval", action="store_true", help="no rollout evaluation of the best model")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="model field for every size, e.g. --model patch=2 (repeatable)")
    parser.add_argument("--train-config", type=Path, default=None,
                        help="base training config of every run (default: bench/configs/sweep_base.yaml)")


def _sweep_run(sweep: Path, jobs: int) -> None:
    rc = cli(["sweep", "run", str(sweep), "--jobs", str(jobs)])
    if rc != 0:
        if rc != 1 or _best_run(sweep) is None:  # stopped by a signal, or nothing finished: nothing to fit
            raise WxscaleError(f"demo stopped: `wxscale sweep run {sweep}` exited with status {rc} and "
                               f"{'no run completed' if rc == 1 else 'the sweep did not finish'}; see "
                               f"`wxscale sweep status {sweep}` and the runs' train.log")
        print("some runs did not complete; fitting what finished (see `wxscale sweep status`)")


def run(args: argparse.Namespace) -> int:
    from wxscale.args import parse_list

    t_start = time.perf_counter()
    out: Path = args.out
    data, sweep, fit, evaluation = out / "data" / "swe", out / "sweep", out / "fit", out / "eval"
    budgets = parse_list(args.budgets, "--budgets", float)
    lrs = [] if args.lrs.strip().lower() == "none" else parse_list(args.lrs, "--lrs", float)

    t0 = _step("1/8 dataset: the built-in shallow-water simulator -> HDF5 shards")
    from wxscale.data_prep.check import check_dataset

    if (data / "data.json").is_file() and not check_dataset(data, checksums=False, values=False):
        print(f"reusing {data} (checks clean; delete it to simulate again)")
    else:
        prep = ["prep", "--builtin", "swe", "--out", str(data), "--overwrite"]
        if args.sim_years is not None:
            prep += ["--years", str(args.sim_years)]
        _must(cli(prep), " ".join(prep))
        _must(cli(["check", str(data)]), f"check {data}")
    _done(t0)

    t0 = _step("2/8 sweep plan: budgets x sizes -> constant-LR trunks + 1-sqrt cooldown branches")
    if (sweep / "sweep.json").is_file():  # extend, validate and the LR scan grow the plan: keep it
        print(f"reusing the plan in {sweep} (delete the folder to plan again)")
    else:
        plan = ["sweep", "plan", "--dataset", str(data), "--out", str(sweep), "--budgets", args.budgets,
                "--sizes", args.sizes, "--global-batch", str(args.global_batch), "--min-steps", str(args.min_steps),
                "--max-steps", str(args.max_steps)]
        plan += [f"--model={m}" for m in args.model]
        if args.train_config is not None:
            plan += ["--train-config", str(args.train_config)]
        _must(cli(plan), " ".join(plan))

    if lrs:
        t0 = _step("3/8 learning rate per size: a short constant-LR scan at one budget")
        from wxscale.study.lr_scan import lr_scan

        choice = lr_scan(sweep, lrs, jobs=args.jobs, budget=args.lr_scan_budget)
        print(choice[["size", "lr", "source"]].to_string(index=False))
        _done(t0)

    t0 = _step("4/8 sweep run: trunks, then their branches (finished runs are kept)")
    _sweep_run(sweep, args.jobs)
    from wxscale.study.extend import extend_sweep

    for round_ in range(1, args.extend_rounds + 1):
        result = extend_sweep(sweep)
        for a in result.actions:
            budget = a.get("budget")
            where = f" at {budget:.3g}" if isinstance(budget, float) and budget == budget else ""
            print(f"extend round {round_}: {a.get('action', '')} {a.get('sizes', '') or ''}{where}: "
                  f"{a.get('reason', '')}")
        if result.done:
            print(f"extend: {result.stop}")
            break
        _sweep_run(sweep, args.jobs)
    _done(t0)

    t0 = _step("5/8 fit: IsoFLOP profiles (Approach 2) and the parametric law (Approach 3), bootstrap intervals")
    fit_rc = cli(["fit", str(sweep), "--out", str(fit), "--n-bootstrap", str(args.n_bootstrap)])
    if lrs and not args.no_fixed_lr_twin:
        _fixed_lr_twin(args, data, out, fit)
    if cli(["fit", "channels", str(sweep), "--out", str(fit / "channels")]) != 0:
        print("laws per channel and lead time: not fitted (the message is above); the pooled laws stand")
    _done(t0)

    if args.validate_factor > 0:
        held_out = args.validate_factor * max(budgets)
        t0 = _step(f"6/8 validate: the laws' prediction at a held-out budget, {held_out:.3g} FLOPs, against runs there")
        from wxscale.study.validate import summary_lines, validate

        try:
            table = validate(sweep, held_out, jobs=args.jobs, n_bootstrap=args.n_bootstrap)
        except WxscaleError as err:  # e.g. no law could be fitted: the rest of the study still stands
            print(f"validation not possible: {err}")
            table = None
        for line in summary_lines(table) if table is not None else []:
            print(line)
        _done(t0)

    best = _best_run(sweep)
    if not args.skip_eval and best is not None:
        t0 = _step(f"7/8 eval: the best model of the largest budget ({best.name}) rolled out over the test split")
        from wxscale.evaluation.evaluate import evaluate_run

        evaluate_run(best, out=evaluation)
        _done(t0)

    _step("8/8 report")
    cli(["report", str(out)])
    _print_summary(sweep, fit, time.perf_counter() - t_start)
    return 0 if fit_rc == 0 else fit_rc


def _fixed_lr_twin(args: argparse.Namespace, data: Path, out: Path, fit: Path) -> None:
    """The same sweep at the base config's one learning rate for every size, fitted the same way: how far the
    N_opt exponent moves with the per-size rates of the scan (written to ``fit/lr_comparison.csv``)."""
    import pandas as pd

    twin, twin_fit = out / "sweep_fixed_lr", out / "fit_fixed_lr"
    print("twin sweep at one fixed learning rate for every size (no scan), for the exponent comparison")
    if not (twin / "sweep.json").is_file():
        plan = ["sweep", "plan", "--dataset", str(data), "--out", str(twin), "--budgets", args.budgets,
                "--sizes", args.sizes, "--global-batch", str(args.global_batch), "--min-steps", str(args.min_steps),
                "--max-steps", str(args.max_steps), *[f"--model={m}" for m in args.model]]
        if args.train_config is not None:
            plan += ["--train-config", str(args.train_config)]
        _must(cli(plan), " ".join(plan))
    _sweep_run(twin, args.jobs)
    cli(["fit", str(twin), "--out", str(twin_fit), "--n-bootstrap", str(args.n_bootstrap), "--no-plots"])
    rows = []
    for name, folder in (("scanned per size", fit), ("fixed", twin_fit)):
        fits = folder / "fits.csv"
        if not fits.is_file():
            continue
        f = pd.read_csv(fits)
        hit = f[(f["approach"].astype(str) == "2") & (f["quantity"] == "n_opt")]
        if len(hit):
            r = hit.iloc[0]
            rows.append({"learning_rate": name, "n_opt_exponent": r["exponent"], "exponent_lo": r["exponent_lo"],
                         "exponent_hi": r["exponent_hi"], "n_budgets": r["n_points"]})
    if rows:
        from wxscale.files import write_csv

        write_csv(fit / "lr_comparison.csv", rows)


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
    choice = sweep / "lr_choice.csv"
    if choice.is_file():
        c = pd.read_csv(choice)
        print("learning rate per size (scan): " + ", ".join(f"{s} {lr:.2g}" for s, lr in zip(c["size"], c["lr"])))
    comparison = fit / "lr_comparison.csv"
    if comparison.is_file():
        for r in pd.read_csv(comparison).itertuples():
            print(f"N_opt exponent with the {r.learning_rate} learning rate: {r.n_opt_exponent:.3f} "
                  f"[{r.exponent_lo:.3f}, {r.exponent_hi:.3f}] ({int(r.n_budgets)} budgets)")
    validation = sweep / "validation" / "validation.csv"
    if validation.is_file():
        from wxscale.study.validate import summary_lines

        for line in summary_lines(pd.read_csv(validation)):
            print(line)
    iso = fit / "isoflop.csv"
    if iso.is_file():
        table = pd.read_csv(iso)
        interior = int(table["interior"].sum()) if "interior" in table else len(table)
        print(f"{interior} of {len(table)} budgets have an interior minimum")
    print(f"everything is under {sweep.parent} (report: {sweep.parent / 'report.md'}); {wall_s / 60:.1f} min")
