"""Calibration of the fit's intervals: how often do they cover a known law?

    python -m wxscale.study.calibrate --out DIR [--studies 100] [--trunk-noise 0.05] [--point-noise 0.01] ...
    wxscale fit --calibrate --out DIR [...]          (the same, from the fit command)

Draws many synthetic studies of one grid shape (budgets x sizes, with the ladder's parameters and FLOPs per
sample as `wxscale sweep plan` computes them; default: the demo's grid, 7 budgets x s-1..s3) from a known law
L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2; default: the law the demo measured), fits each
with :func:`wxscale.study.fit.fit_scaling` exactly as `wxscale fit` does, and reports for the Approach-2 exponent
(N_opt ~ C^a) and Approach 3's alpha and beta how often the interval covers the truth and its median width.

Noise is multiplicative, as continual training produces it: L_obs = L(N, D) exp(s_t z_trunk + s_p z_point) with
z ~ N(0, 1), one z_trunk per trunk (model size) shared by all its branches and one z_point per run. A study in
which an approach cannot be fitted, or gives no interval, counts as not covering.

The Approach-2 truth is the slope of log N_opt(C) against log C, where N_opt(C) minimises the true law along the
grid's own IsoFLOP line D = C / flops_per_sample(N) (the same interpolation the fit uses); it equals
beta / (alpha + beta) when flops_per_sample is exactly proportional to N.

Writes DIR/calibration.csv (one row per study and quantity), DIR/calibration_summary.csv (coverage, median width,
usable replicates per quantity) and DIR/calibration.png (every study's interval against the truth).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from wxscale.args import float_list
from wxscale.errors import WxscaleError
from wxscale.files import write_csv
from wxscale.study import fit as F
from wxscale.study.plan import DEMO_BUDGETS, DEMO_SIZES, SweepSpec, parse_sizes, plan_sweep

DEMO_GRID = (32, 64)  # the built-in simulator's output grid, 3 channels (z, u, v)
QUANTITIES = ("approach2_exponent", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta. The default is the law `make demo` measured (Approach 3 on its 31
    runs, 2026-12-02): its optima lie inside the demo grid's sizes, 9e3 to 2.5e4 parameters."""

    E: float = 1.4e-5
    A: float = 31.3
    B: float = 28.9
    alpha: float = 0.95
    beta: float = 1.02

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        return self.E + self.A / np.asarray(n, float) ** self.alpha + self.B / np.asarray(d, float) ** self.beta


def study_grid(budgets: list[float] | tuple[float, ...] = DEMO_BUDGETS,
               sizes: list[str] | tuple[str, ...] | None = None, grid: tuple[int, int] = DEMO_GRID,
               channels: int = 3, global_batch: int = 16, min_steps: int = 100, max_steps: int = 5000,
               rollout_steps: int = 1) -> pd.DataFrame:
    """The branches `wxscale sweep plan` would make for this grid: run_id, trunk_id, budget_flops, params,
    flops_per_sample, samples (defaults: the demo's plan)."""
    spec = SweepSpec(budgets=list(budgets), sizes=list(sizes) if sizes else parse_sizes(DEMO_SIZES),
                     grid=tuple(grid), channels=channels, global_batch=global_batch, min_steps=min_steps,
                     max_steps=max_steps, rollout_steps=rollout_steps)
    plan, _ = plan_sweep(spec)
    return plan[["run_id", "trunk_id", "budget_flops", "params", "flops_per_sample", "samples"]].copy()


def true_approach2_exponent(grid: pd.DataFrame, law: Law) -> float:
    """Slope of log N_opt against log C, N_opt(C) the true law's minimum along D = C / flops_per_sample(N)."""
    budgets = np.sort(grid["budget_flops"].unique())
    true = F.ParametricFit(law.E, law.A, law.B, law.alpha, law.beta)
    return F.fit_power_law(budgets, F.law_optima(true, budgets, F.flops_per_sample_fn(grid)))[1]


def synthetic_runs(grid: pd.DataFrame, law: Law, trunk_noise: float, point_noise: float,
                   rng: np.random.Generator) -> pd.DataFrame:
    """One synthetic study: the grid's runs with val_loss = L(N, D) exp(s_t z_trunk + s_p z_point)."""
    runs = grid.copy()
    codes, trunks = pd.factorize(runs["trunk_id"])
    z_trunk = rng.normal(size=len(trunks))[codes]
    z_point = rng.normal(size=len(runs))
    runs["val_loss"] = law.loss(runs["params"], runs["samples"]) * np.exp(trunk_noise * z_trunk
                                                                           + point_noise * z_point)
    runs["status"] = "complete"
    return runs


def _one_study(task: tuple) -> list[dict]:
    """Fit one synthetic study; a row per quantity with its interval (NaN where none) and whether it covers."""
    grid, law, truth, trunk_noise, point_noise, n_bootstrap, level, seed, study, bootstrap, approaches = task
    runs = synthetic_runs(grid, law, trunk_noise, point_noise, np.random.default_rng([seed, study]))
    wanted = {"2": ("approach2_exponent",), "3": ("alpha", "beta")}
    rows = {q: {"study": study, "quantity": q, "truth": truth[q], "estimate": np.nan, "lo": np.nan, "hi": np.nan,
                "n_bootstrap": n_bootstrap, "n_bootstrap_ok": 0, "error": ""} for a in approaches for q in wanted[a]}
    for approach, quantities in (("2", {"approach2_exponent": "n_opt"}), ("3", {"alpha": "alpha", "beta": "beta"})):
        if approach not in approaches:
            continue
        try:
            res = F.fit_scaling(runs, approach=approach, n_bootstrap=n_bootstrap, level=level, seed=study,
                                bootstrap=bootstrap)
        except WxscaleError as err:
            for q in quantities:
                rows[q]["error"] = str(err)[:200]
            continue
        t = res.fits.set_index("quantity")
        for q, name in quantities.items():
            rows[q].update(estimate=t.loc[name, "exponent"], lo=t.loc[name, "exponent_lo"],
                           hi=t.loc[name, "exponent_hi"], n_bootstrap_ok=int(t.loc[name, "n_bootstrap_ok"]))
    out = []
    for r in rows.values():
        r["covered"] = bool(np.isfinite(r["lo"]) and r["lo"] <= r["truth"] <= r["hi"])
        r["width"] = r["hi"] - r["lo"]
        out.append(r)
    return out


def calibrate(grid: pd.DataFrame, law: Law = Law(), trunk_noise: float = 0.05, point_noise: float = 0.01,
              n_studies: int = 100, n_bootstrap: int = 200, level: float = 0.95, seed: int = 0,
              processes: int = 1, progress: bool = False, bootstrap: str = "auto",
              approaches: str = "both") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``n_studies`` synthetic studies; returns (one row per study and quantity, the summary per quantity).
    ``approaches``: "2", "3" or "both" (Approach 3's refits take most of the time)."""
    if approaches not in ("2", "3", "both"):
        raise WxscaleError(f"--approach must be 2, 3 or both, got {approaches!r}")
    approaches = ("2", "3") if approaches == "both" else (approaches,)
    if n_studies < 1 or n_bootstrap < 1:
        raise WxscaleError(f"--studies and --n-bootstrap must be >= 1, got {n_studies} and {n_bootstrap}")
    if trunk_noise < 0 or point_noise < 0:
        raise WxscaleError(f"noise levels must be >= 0, got trunk {trunk_noise} and point {point_noise}")
    truth = {"approach2_exponent": true_approach2_exponent(grid, law), "alpha": law.alpha, "beta": law.beta}
    tasks = [(grid, law, truth, trunk_noise, point_noise, n_bootstrap, level, seed, s, bootstrap, approaches)
             for s in range(n_studies)]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.imap(_one_study, tasks)
            results = list(_progress(results, n_studies, progress))
    else:
        results = [_one_study(t) for t in _progress(tasks, n_studies, progress)]
    table = pd.DataFrame([row for rows in results for row in rows])
    table["trunk_noise"], table["point_noise"], table["level"] = trunk_noise, point_noise, level
    table["bootstrap"] = bootstrap
    return table, summarise(table)


def _progress(items, total: int, on: bool):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="calibration", unit="study", file=sys.stderr)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Coverage (studies whose interval holds the truth / all studies), median width over studies with an
    interval, studies without one, and the median number of usable bootstrap replicates, per quantity."""
    rows = []
    for (q, tn, pn), g in table.groupby(["quantity", "trunk_noise", "point_noise"], sort=False):
        has = np.isfinite(g["lo"]) & np.isfinite(g["hi"])
        rows.append({"quantity": q, "trunk_noise": tn, "point_noise": pn, "level": g["level"].iloc[0],
                     "truth": g["truth"].iloc[0], "n_studies": len(g), "coverage": g["covered"].mean(),
                     "n_covered": int(g["covered"].sum()), "n_without_interval": int((~has).sum()),
                     "median_width": float(g.loc[has, "width"].median()) if has.any() else np.nan,
                     "median_estimate": float(g["estimate"].median()),
                     "median_bootstrap_ok": float(g["n_bootstrap_ok"].median()),
                     "n_bootstrap": int(g["n_bootstrap"].iloc[0])})
    return pd.DataFrame(rows)


def plot_calibration(table: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> Path:
    """One panel per quantity and noise setting: every study's interval (sorted by estimate) against the truth,
    misses in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wxscale.files import save_figure

    keys = list(summary[["quantity", "trunk_noise", "point_noise"]].itertuples(index=False, name=None))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), squeeze=False)
    for ax, (q, tn, pn), s in zip(axes[0], keys, summary.itertuples()):
        g = table[(table["quantity"] == q) & (table["trunk_noise"] == tn) & (table["point_noise"] == pn)]
        g = g.sort_values("estimate").reset_index(drop=True)
        for i, r in g.iterrows():
            colour = "C0" if r["covered"] else "C3"
            if np.isfinite(r["lo"]):
                ax.plot([i, i], [r["lo"], r["hi"]], color=colour, lw=1)
            if np.isfinite(r["estimate"]):
                ax.plot(i, r["estimate"], ".", color=colour, ms=3)
        ax.axhline(s.truth, color="k", lw=1, ls="--", label=f"truth {s.truth:.3f}")
        ax.set_title(f"{q}\ntrunk {tn:.0%}, point {pn:.0%}: coverage {s.n_covered}/{s.n_studies}, "
                     f"median width {s.median_width:.3f}", fontsize=8)
        ax.set_xlabel("study (sorted by estimate)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{summary['level'].iloc[0]:.0%} bootstrap intervals on synthetic studies (red: misses)",
                 fontsize=10)
    return save_figure(fig, path)


def write_calibration(table: pd.DataFrame, summary: pd.DataFrame, out: str | Path, plots: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "calibration.csv", table)
    write_csv(out / "calibration_summary.csv", summary)
    written = [out / "calibration.csv", out / "calibration_summary.csv"]
    if plots:
        written.append(plot_calibration(table, summary, out / "calibration.png"))
    return written


# --------------------------------------------------------------------------------------------------------------
# command line (python -m wxscale.study.calibrate, and `wxscale fit --calibrate`)


def add_calibration_arguments(parser: argparse.ArgumentParser, with_shared: bool = True) -> None:
    """The calibration's own flags; ``with_shared`` adds --out, --n-bootstrap, --level and --seed (which
    `wxscale fit` already has)."""
    if with_shared:
        parser.add_argument("--out", type=Path, required=True, help="output dir")
        parser.add_argument("--n-bootstrap", type=int, default=200, help="replicates per fit (default 200)")
        parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic noise (default 0)")
    parser.add_argument("--studies", type=int, default=100, help="calibration: synthetic studies (default 100)")
    parser.add_argument("--trunk-noise", type=float_list, default=[0.05],
                        help="calibration: relative noise per trunk, shared by its branches; a list runs each "
                             "setting with the --point-noise at the same position (default 0.05)")
    parser.add_argument("--point-noise", type=float_list, default=[0.01],
                        help="calibration: relative noise per run (default 0.01)")
    parser.add_argument("--budgets", type=float_list, default=list(DEMO_BUDGETS),
                        help="calibration: the grid's budgets in FLOPs (default: the demo's, 3.75e10..3e11)")
    parser.add_argument("--sizes", default=DEMO_SIZES, help=f"calibration: ladder sizes (default {DEMO_SIZES})")
    parser.add_argument("--law", type=float_list, default=None, metavar="E,A,B,ALPHA,BETA",
                        help=f"calibration: the true law (default {dataclasses.astuple(Law())})")
    parser.add_argument("--processes", type=int, default=1, help="calibration: studies fitted in parallel")
    if with_shared:
        parser.add_argument("--bootstrap", choices=F.BOOTSTRAPS, default="auto",
                            help="bootstrap scheme (see wxscale fit --help; default auto)")
        parser.add_argument("--approach", choices=["2", "3", "both"], default="both",
                            help="which approaches' intervals to calibrate (default both)")


def run_calibration(args: argparse.Namespace) -> int:
    if len(args.trunk_noise) != len(args.point_noise):
        raise WxscaleError(f"--trunk-noise {args.trunk_noise} and --point-noise {args.point_noise}: give as many "
                           "values in each (one noise setting per position)")
    law = Law()
    if args.law is not None:
        if len(args.law) != 5:
            raise WxscaleError(f"--law {args.law}: give 5 numbers E,A,B,ALPHA,BETA")
        law = Law(*args.law)
    grid = study_grid(args.budgets, parse_sizes(args.sizes))
    tables, summaries = [], []
    for tn, pn in zip(args.trunk_noise, args.point_noise):
        table, summary = calibrate(grid, law, tn, pn, n_studies=args.studies, n_bootstrap=args.n_bootstrap,
                                   level=args.level, seed=args.seed, processes=args.processes, progress=True,
                                   bootstrap=args.bootstrap, approaches=args.approach)
        tables.append(table)
        summaries.append(summary)
    table, summary = pd.concat(tables, ignore_index=True), pd.concat(summaries, ignore_index=True)
    written = write_calibration(table, summary, args.out)
    print(f"calibration: {args.studies} studies per noise setting, {len(grid)} runs each "
          f"({grid['budget_flops'].nunique()} budgets, {grid['trunk_id'].nunique()} trunks), law {law}")
    for s in summary.itertuples():
        print(f"  {s.quantity:<19} trunk {s.trunk_noise:.0%} point {s.point_noise:.0%}: coverage "
              f"{s.n_covered}/{s.n_studies} ({s.coverage:.0%}) of the {s.level:.0%} intervals, median width "
              f"{s.median_width:.3f}, {s.n_without_interval} without interval, median usable replicates "
              f"{s.median_bootstrap_ok:.0f}/{s.n_bootstrap} (truth {s.truth:.3f})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wxscale.study.calibrate", description=__doc__.split("\n")[0])
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_calibration(args)
    except WxscaleError as err:
        print(f"calibrate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
