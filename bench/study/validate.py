"""`wxscale sweep validate SWEEP_DIR --budget C`: check the fitted laws against runs they did not see.

A law that predicts is one whose extrapolation a run confirms; the seed study's own largest run landed about 2x
off its line (Subramanian et al. 2026). This command:

1. fits the sweep's budgets below C (:func:`wxscale.study.fit.fit_scaling`, Approaches 2 and 3 where each can be
   fitted) and predicts N_opt and L_opt at C with bootstrap intervals (:func:`wxscale.study.fit.predict`);
2. runs three sizes at C: the ladder size nearest the predicted N_opt (Approach 2's, else Approach 3's) and its two
   ladder neighbours. They are added to the sweep's plan with role "validation" and run by the sweep's runner as
   cooldown branches of their trunks; a trunk too short for C is continued by a new trunk from its last
   checkpoint, so only the new stretch costs (:func:`wxscale.study.plan.add_points`);
3. writes ``SWEEP_DIR/validation/``: ``validation.csv`` (one row per approach: the budget, the predicted N_opt and
   L_opt with their intervals, the measured loss of each size run at C (the three, and any others the sweep has at
   C), the measured best size, the relative error of the
   predicted loss against the measured best loss, and whether the measured values fall inside the intervals),
   ``validation_points.csv`` (one row per size run at C), the fit of the budgets below C (``fit/``) and
   ``scaling_laws.png`` with the validation points drawn over the laws.

The measured N_opt is the vertex of a parabola in log N through the three losses when it lies between them,
else the best size's N (flagged ``measured_n_interior = False``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from wxscale.errors import WxscaleError
from wxscale.files import write_csv
from wxscale.study.plan import add_points, load_plan, repetition_warnings, size_costs

VALIDATION_DIR = "validation"
VALIDATION_CSV = "validation.csv"
POINTS_CSV = "validation_points.csv"


def ladder_neighbours(spec, n_opt: float) -> list[str]:
    """The ladder size nearest ``n_opt`` in log N on the sweep's grid, with its two neighbours (shifted inward at
    the ladder's ends)."""
    from wxscale.model import LADDER

    names = list(LADDER)
    costs = size_costs(dataclasses.replace(spec, sizes=names))
    i = int(np.argmin(np.abs(np.log(costs["params"].to_numpy(float)) - math.log(n_opt))))
    i = min(max(i, 1), len(names) - 2)
    return names[i - 1 : i + 2]


def _fit_below(sweep_dir: Path, budget: float, n_bootstrap: int, level: float, seed: int):
    from wxscale.study import fit as F
    from wxscale.study.sweep import collect_runs

    runs = collect_runs(sweep_dir)
    if runs.empty:
        raise WxscaleError(f"{sweep_dir}: no finished runs; run the sweep before validating it")
    below = runs[runs["budget_flops"] < budget]
    if "role" in below.columns:
        below = below[below["role"].astype(object).fillna("").astype(str) != "validation"]
    if below["budget_flops"].nunique() < 2:
        raise WxscaleError(f"--budget {budget:.3g}: the sweep has {below['budget_flops'].nunique()} finished "
                           "budget(s) below it; a law needs at least 2 (3 for Approach 2)")
    below = F.check_runs(below, source=str(sweep_dir / "runs.csv"))
    result = F.fit_scaling(below, approach="both", n_bootstrap=n_bootstrap, level=level, seed=seed)
    return below, result, F.predict(result, budget)


def measure(points: pd.DataFrame) -> dict:
    """Best size, and the measured optimum (parabola vertex when interior) of the runs at the held-out budget."""
    from wxscale.study.fit import fit_isoflop_parabola

    points = points.sort_values("params")
    best = points.loc[points["val_loss"].idxmin()]
    out = {"best_size": best["size"], "best_params": float(best["params"]), "best_loss": float(best["val_loss"]),
           "measured_n_opt": float(best["params"]), "measured_l_opt": float(best["val_loss"]),
           "measured_n_interior": False}
    if len(points) >= 3:
        v = fit_isoflop_parabola(points["params"].to_numpy(float), points["val_loss"].to_numpy(float))
        if v["interior"]:
            out.update(measured_n_opt=v["n_opt"], measured_l_opt=v["l_opt"], measured_n_interior=True)
    return out


def compare(predictions: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """validation.csv: one row per approach, prediction against measurement."""
    m = measure(points)
    pts = points.sort_values("params")
    rows = []
    for p in predictions.to_dict("records"):
        row = {k: p.get(k, math.nan) for k in ("budget_flops", "approach", "level", "n_opt", "n_opt_lo", "n_opt_hi",
                                               "l_opt", "l_opt_lo", "l_opt_hi")}
        row.update(sizes=";".join(pts["size"]), params=";".join(f"{int(n)}" for n in pts["params"]),
                   losses=";".join(f"{v:.6g}" for v in pts["val_loss"]), **m)
        row["l_rel_error"] = (row["l_opt"] - m["best_loss"]) / m["best_loss"]
        row["n_ratio"] = row["n_opt"] / m["measured_n_opt"]
        row["n_in_interval"] = bool(row["n_opt_lo"] <= m["measured_n_opt"] <= row["n_opt_hi"])
        row["l_in_interval"] = bool(row["l_opt_lo"] <= m["best_loss"] <= row["l_opt_hi"])
        rows.append(row)
    return pd.DataFrame(rows)


def validate(sweep_dir: Path, budget: float, jobs: int = 1, threads: int | None = None, run: bool = True,
             n_bootstrap: int = 200, level: float = 0.95, seed: int = 0, progress: bool = True,
             plots: bool = True) -> pd.DataFrame | None:
    """Fit below ``budget``, run the three sizes at it, compare; returns validation.csv's table (None when the
    runs have not finished, e.g. with ``run=False`` or a Slurm executor: call again once they have)."""
    from wxscale.study.lr_scan import rates_for
    from wxscale.study.run import run_local
    from wxscale.study.sweep import collect_runs

    sweep_dir = Path(sweep_dir)
    if not (math.isfinite(budget) and budget > 0):
        raise WxscaleError(f"--budget {budget}: give a positive number of FLOPs")
    spec, _ = load_plan(sweep_dir)
    below, fit, pred = _fit_below(sweep_dir, budget, n_bootstrap, level, seed)
    chosen = pred.dropna(subset=["n_opt"])
    if chosen.empty:
        raise WxscaleError(f"no approach could predict N_opt at {budget:.3g} from the budgets below it "
                           f"({'; '.join(f'Approach {a}: {e}' for a, e in fit.errors.items())})")
    approach = "2" if (chosen["approach"] == "2").any() else str(chosen["approach"].iloc[0])
    n_pred = float(chosen.loc[chosen["approach"] == approach, "n_opt"].iloc[0])
    sizes = ladder_neighbours(spec, n_pred)
    added, skipped, _ = add_points(sweep_dir, [(budget, s) for s in sizes], lr=rates_for(sweep_dir, sizes),
                                   role="validation")
    for line in skipped:
        print(f"validate: not run: {line}")
    for line in repetition_warnings(added) if len(added) else []:
        print(f"validate: {line}")
    if run:
        run_local(sweep_dir, jobs=jobs, threads=threads, progress=progress)
    runs = collect_runs(sweep_dir)
    at_c = runs[(runs["budget_flops"] == budget) & runs["size"].isin(sizes)] if len(runs) else runs
    failed = list(at_c.loc[at_c["status"] != "complete", "run_id"]) if len(at_c) else []
    if failed:
        raise WxscaleError(f"validation run(s) {', '.join(failed)} failed (see their train.log under "
                           f"{sweep_dir / 'runs'}); rerun with `wxscale sweep run --retry-failed`, then validate")
    if len(at_c) < len(sizes) - len(skipped) or at_c.empty:
        return None
    # The measurement is every finished run at C: the three run for the check, and any the sweep has there already.
    every = runs[(runs["budget_flops"] == budget) & (runs["status"] == "complete")]
    out = sweep_dir / VALIDATION_DIR
    points = every[["budget_flops", "size", "params", "samples", "val_loss"]
                   + [c for c in ("lr", "epochs", "repeats_data", "role") if c in every.columns]].sort_values("params")
    points["validation_size"] = points["size"].isin(sizes)
    table = compare(pred, points)
    table["predicted_from"] = approach
    from wxscale.study.fit import write_fit

    write_fit(fit, out / "fit")
    write_csv(out / POINTS_CSV, points)
    write_csv(out / VALIDATION_CSV, table)
    if plots:
        from wxscale.study.plots import plot_scaling_laws

        plot_scaling_laws(fit, out / "scaling_laws.png", pred, validation=table)
    return table


def summary_lines(table: pd.DataFrame) -> list[str]:
    """A few lines for the terminal, the demo's summary and the report."""
    lines = []
    for r in table.itertuples():
        lines.append(
            f"validation at C={r.budget_flops:.3g} (Approach {r.approach}): predicted N_opt {r.n_opt:.3g} "
            f"[{r.n_opt_lo:.3g}, {r.n_opt_hi:.3g}], L_opt {r.l_opt:.4g} [{r.l_opt_lo:.4g}, {r.l_opt_hi:.4g}]; "
            f"measured {r.sizes.replace(';', ', ')}: {r.losses.replace(';', ', ')} -> best {r.best_size} "
            f"({r.best_loss:.4g}); loss error {100 * r.l_rel_error:+.1f} %, N_opt "
            f"{'inside' if r.n_in_interval else 'outside'} and loss {'inside' if r.l_in_interval else 'outside'} "
            "the intervals")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, help="a sweep dir whose runs have finished")
    parser.add_argument("--budget", type=float, required=True,
                        help="held-out budget C in FLOPs (e.g. twice the largest fitted one)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (cores / jobs)")
    parser.add_argument("--no-run", action="store_true",
                        help="only add the runs to the plan (run them with `wxscale sweep run`, then call again)")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    table = validate(args.sweep_dir, args.budget, jobs=args.jobs, threads=args.threads, run=not args.no_run,
                     n_bootstrap=args.n_bootstrap, level=args.level, seed=args.seed)
    if table is None:
        print(f"validate: the runs at {args.budget:.3g} are planned but not finished; run `wxscale sweep run "
              f"{args.sweep_dir}` and call validate again")
        return 1 if not args.no_run else 0
    for line in summary_lines(table):
        print(line)
    print(f"wrote {args.sweep_dir / VALIDATION_DIR / VALIDATION_CSV} and scaling_laws.png beside it")
    return 0
