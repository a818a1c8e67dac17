"""`wxscale sweep lr-scan SWEEP_DIR --lrs ...`: each size's learning rate, chosen by a short measured scan.

One learning rate for every size biases an IsoFLOP study: the best rate falls with width (Kaplan et al. 2020,
Sec. 3; Yang et al. 2022, muP), so a rate tuned for one size handicaps the others and tilts the fitted N_opt
exponent. The scan measures instead:

1. At the sweep's smallest budget (or ``--budget``), each scanned size (default: the smallest, middle and largest
   of the plan) runs with a few log-spaced peak rates. Each (size, rate) is a constant-LR trunk to that budget's
   branch point plus its cooldown branch: a one-budget sweep in ``SWEEP_DIR/lr_scan`` (the sweep's own planner
   and runner).
2. Each scanned size takes the rate of its lowest cooled-down validation loss (the quantity the fits use); where
   the minimum is inside the scanned range, the vertex of a parabola in log10(rate) through the losses refines it.
   The constant-LR trunk's own loss is recorded beside it.
3. Sizes not scanned take a power law in width fitted to the scanned sizes' rates, lr = k width^p (one scanned
   size: its rate for all).

The chosen rates go into the sweep's plan.csv (``lr`` column; runs.csv carries it on). Files: ``lr_scan.csv``
(every scan run's losses), ``lr_choice.csv`` (the rate per size, where it came from, and the width law),
``lr_scan.png``. The sweep must not have started: changing a trunk's rate would invalidate its runs. Without a
scan the plan's rate is the base config's for every size (a fixed-rate sweep).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from wxscale.args import float_list
from wxscale.errors import WxscaleError
from wxscale.files import write_csv
from wxscale.study.plan import load_plan, parse_sizes, plan_sweep, update_plan, write_plan

SCAN_DIR = "lr_scan"
SCAN_CSV = "lr_scan.csv"
CHOICE_CSV = "lr_choice.csv"


def _width(size: str, overrides: dict) -> int:
    from wxscale.model import resolve_config

    return resolve_config(size, overrides or None).embed_dim


def default_scan_sizes(sizes: list[str]) -> list[str]:
    """The smallest, middle and largest size of the plan (fewer if the plan has fewer)."""
    picks = [sizes[0], sizes[len(sizes) // 2], sizes[-1]]
    return list(dict.fromkeys(picks))


def scan_budget(plan: pd.DataFrame, sizes: list[str]) -> float:
    """The smallest budget of the plan at which every scanned size has a run (so the largest still trains its
    --min-steps steps); the largest budget if none has them all."""
    for budget, rows in sorted(plan.groupby("budget_flops"), key=lambda kv: kv[0]):
        if set(sizes) <= set(rows["size"]):
            return float(budget)
    return float(plan["budget_flops"].max())


def plan_scan(sweep_dir: Path, lrs: list[float], sizes: list[str] | None = None,
              budget: float | None = None) -> Path:
    """Write the scan's own sweep dir, SWEEP_DIR/lr_scan: every (size, rate) at ``budget`` (default:
    :func:`scan_budget`)."""
    import yaml

    spec, plan = load_plan(sweep_dir)
    if not lrs or any(not (math.isfinite(r) and r > 0) for r in lrs):
        raise WxscaleError(f"--lrs {lrs}: give a few positive learning rates, e.g. 1e-3,3e-3,1e-2")
    sizes = sizes or default_scan_sizes(list(spec.sizes))
    unknown = [s for s in sizes if s not in set(plan["size"])]
    if unknown:
        raise WxscaleError(f"--sizes {unknown}: not sizes of the sweep's plan ({', '.join(spec.sizes)})")
    budget = float(budget or scan_budget(plan, sizes))
    scan_spec = dataclasses.replace(spec, budgets=[budget], sizes=sizes)
    frames = []
    for lr in sorted(lrs):
        rows, _ = plan_sweep(scan_spec, lr=lr)
        left_out = [z for z in sizes if z not in set(rows["size"])]
        if left_out and lr == min(lrs):
            print(f"lr-scan: {', '.join(left_out)} left out: outside the step limits at {budget:.3g} FLOPs")
        tag = f"lr{lr:.3g}".replace("+", "")
        rows["trunk_id"] = rows["trunk_id"] + "_" + tag
        rows["run_id"] = rows["run_id"] + "_" + tag
        frames.append(rows)
    scan_plan = pd.concat(frames, ignore_index=True)
    base = yaml.safe_load((Path(sweep_dir) / "train_base.yaml").read_text()) or {}
    out = Path(sweep_dir) / SCAN_DIR
    summary = {"n_branches": len(scan_plan), "n_trunks": int(scan_plan["trunk_id"].nunique())}
    write_plan(out, scan_spec, scan_plan, summary, base)
    return out


def scan_results(scan_dir: Path) -> pd.DataFrame:
    """One row per scan run: size, width, params, lr, the constant-LR trunk's loss and the cooled branch's."""
    spec, plan = load_plan(scan_dir)
    rows = []
    for b in plan.itertuples():
        out = {"size": b.size, "width": _width(b.size, spec.model_overrides), "params": b.params, "lr": b.lr,
               "budget_flops": b.budget_flops, "trunk_val_loss": math.nan, "val_loss": math.nan}
        for key, run_id in (("trunk_val_loss", b.trunk_id), ("val_loss", b.run_id)):
            path = Path(scan_dir) / "runs" / run_id / "summary.json"
            if path.is_file():
                s = json.loads(path.read_text())
                if s.get("status") == "complete" and s.get("val_loss") is not None:
                    out[key] = float(s["val_loss"])
        rows.append(out)
    return pd.DataFrame(rows)


def choose_rates(scan: pd.DataFrame, sizes: list[str], widths: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """The rate per size (scanned: its best; others: the width law) and the law {coefficient, exponent}."""
    from wxscale.study.fit import fit_isoflop_parabola, fit_power_law

    best = []
    for size, g in scan.dropna(subset=["val_loss"]).groupby("size", sort=False):
        g = g.sort_values("lr")
        lr_best = float(g.loc[g["val_loss"].idxmin(), "lr"])
        note = "lowest measured loss"
        vertex = fit_isoflop_parabola(g["lr"].to_numpy(float), g["val_loss"].to_numpy(float))
        if vertex["interior"]:
            lr_best, note = float(vertex["n_opt"]), "parabola vertex in log10(lr)"
        elif lr_best in (g["lr"].min(), g["lr"].max()):
            note = "best rate at the edge of the scan (widen --lrs)"
        best.append({"size": size, "width": widths[size], "lr": lr_best, "source": "scan", "note": note})
    if not best:
        raise WxscaleError("no scan run finished with a validation loss; see the train.log files under lr_scan/runs")
    best = pd.DataFrame(best)
    law = {"coefficient": float(best["lr"].iloc[0]), "exponent": 0.0}
    if best["width"].nunique() >= 2:
        k, p = fit_power_law(best["width"].to_numpy(float), best["lr"].to_numpy(float))
        law = {"coefficient": k, "exponent": p}
    rows = []
    for size in sizes:
        hit = best[best["size"] == size]
        if len(hit):
            rows.append(hit.iloc[0].to_dict())
        else:
            rows.append({"size": size, "width": widths[size],
                         "lr": law["coefficient"] * widths[size] ** law["exponent"], "source": "width law",
                         "note": f"lr = {law['coefficient']:.3g} width^{law['exponent']:.3f}"})
    return pd.DataFrame(rows), law


def rates_for(sweep_dir: Path, sizes: list[str]) -> dict[str, float] | None:
    """Learning rates for ``sizes`` from a sweep's scan (chosen, or the width law for sizes it never saw);
    None when the sweep has no scan (its sizes then take the base config's rate)."""
    path = Path(sweep_dir) / CHOICE_CSV
    if not path.is_file():
        return None
    spec, _ = load_plan(sweep_dir)
    choice = pd.read_csv(path)
    known = dict(zip(choice["size"], choice["lr"]))
    k, p = float(choice["law_coefficient"].iloc[0]), float(choice["law_exponent"].iloc[0])
    return {s: float(known[s]) if s in known else k * _width(s, spec.model_overrides) ** p for s in sizes}


def apply_rates(sweep_dir: Path, choice: pd.DataFrame) -> pd.DataFrame:
    """Write the chosen rates into the sweep's plan.csv; refuse when any of its runs has started."""
    runs = Path(sweep_dir) / "runs"
    if runs.is_dir() and any(runs.iterdir()):
        raise WxscaleError(f"{sweep_dir} has runs under {runs}: their learning rate cannot change now; scan before "
                           "`wxscale sweep run`, or plan a new sweep dir")
    spec, plan = load_plan(sweep_dir)
    plan["lr"] = plan["size"].map(dict(zip(choice["size"], choice["lr"]))).astype(float)
    update_plan(sweep_dir, plan, spec)
    return plan


def lr_scan(sweep_dir: Path, lrs: list[float], sizes: list[str] | None = None, jobs: int = 1,
            threads: int | None = None, progress: bool = True, budget: float | None = None) -> pd.DataFrame:
    """Plan and run the scan, choose each size's rate, write it into the sweep's plan; returns the choice."""
    from wxscale.study.plots import plot_lr_scan
    from wxscale.study.run import run_local

    sweep_dir = Path(sweep_dir)
    spec, plan = load_plan(sweep_dir)
    runs = sweep_dir / "runs"
    done = sweep_dir / CHOICE_CSV
    if done.is_file() and "lr" in plan:  # scanned and applied before (a rerun): nothing to do
        choice = pd.read_csv(done)
        chosen = dict(zip(choice["size"], choice["lr"]))
        if all(math.isclose(chosen[s], lr) for s, lr in zip(plan["size"], plan["lr"]) if s in chosen):
            return choice
    if runs.is_dir() and any(runs.iterdir()):  # checked before the scan spends anything
        raise WxscaleError(f"{sweep_dir} has runs under {runs}: their learning rate cannot change now; scan before "
                           "`wxscale sweep run`, or plan a new sweep dir")
    scan_dir = plan_scan(sweep_dir, lrs, sizes, budget)
    run_local(scan_dir, jobs=jobs, threads=threads, progress=progress)
    scan = scan_results(scan_dir)
    write_csv(sweep_dir / SCAN_CSV, scan)
    widths = {s: _width(s, spec.model_overrides) for s in spec.sizes}
    choice, law = choose_rates(scan, list(spec.sizes), widths)
    choice["law_coefficient"], choice["law_exponent"] = law["coefficient"], law["exponent"]
    write_csv(sweep_dir / CHOICE_CSV, choice)
    apply_rates(sweep_dir, choice)
    plot_lr_scan(scan, choice, sweep_dir / "lr_scan.png")
    return choice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, help="a planned sweep dir that has not run yet")
    parser.add_argument("--lrs", type=float_list, required=True,
                        help="peak learning rates to try, log-spaced, e.g. 1e-3,3e-3,1e-2")
    parser.add_argument("--sizes", default=None,
                        help="sizes to scan, e.g. s0,s2,s4 (default: smallest, middle and largest planned)")
    parser.add_argument("--budget", type=float, default=None,
                        help="FLOPs of each scan run (default: the sweep's smallest budget with a run of every "
                             "scanned size; smaller is cheaper)")
    parser.add_argument("--jobs", type=int, default=1, help="scan runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (cores / jobs)")


def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes) if args.sizes else None
    _, plan = load_plan(args.sweep_dir)
    before = float(plan["lr"].iloc[0]) if "lr" in plan else None
    choice = lr_scan(args.sweep_dir, args.lrs, sizes, jobs=args.jobs, threads=args.threads, budget=args.budget)
    print(choice[["size", "width", "lr", "source", "note"]].to_string(index=False))
    k, p = choice["law_coefficient"].iloc[0], choice["law_exponent"].iloc[0]
    print(f"width law: lr = {k:.3g} width^{p:.3f}" + (f" (the plan had {before:.3g} for every size)" if before else ""))
    print(f"wrote the rates into {args.sweep_dir / 'plan.csv'}; scan losses in {args.sweep_dir / SCAN_CSV} and "
          f"{args.sweep_dir / 'lr_scan.png'}")
    return 0

