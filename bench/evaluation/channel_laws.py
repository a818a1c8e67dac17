"""`wxscale fit channels SWEEP`: loss-vs-compute laws per channel and lead time, from rollouts of every IsoFLOP point.

Kiefer et al. 2026 ("Towards Scaling Law Analysis for Spatiotemporal Weather Data") show that a pooled loss can
improve with compute while single channels at long lead times do not. So every finished branch of the sweep is
rolled out over a reduced set of init times with :func:`wxscale.evaluation.evaluate.evaluate_run` (the one
rollout of the suite: same normalisation, WeatherBench 2 latitude-weighted RMSE per channel and lead), and for each
channel and lead time the compute frontier RMSE*(C) = min over the sizes run at budget C is fitted as a power law
RMSE* = k C^(-e) by least squares in log-log space (as Approach 2 fits L_opt; Hoffmann et al. 2022). The interval
of e is the t interval of the slope (n_budgets - 2 degrees of freedom) at ``--level``. The pooled validation loss
of runs.csv is fitted the same way, for comparison.

A channel and lead is flagged when its improvement with compute is not established: ``improves`` is "yes" when the
whole interval of e lies above 0, "no" when it lies below (it gets worse), "unclear" otherwise (flagged too).

Writes into --out (default SWEEP/fit/channels): channel_points.csv (run, budget, size, channel, lead, RMSE),
channel_laws.csv (channel, lead_hours, exponent, exponent_lo, exponent_hi, coefficient, n_budgets, improves,
flagged), channel_laws.png (heat map of e over channel x lead, flagged cells marked). The rollouts of each run go
to SWEEP/runs/RUN/eval_channels (reused when a finished evaluation with the same settings is there).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv

EVAL_DIR = "eval_channels"
LAW_COLUMNS = ["channel", "lead_hours", "exponent", "exponent_lo", "exponent_hi", "coefficient", "n_budgets",
               "level", "improves", "flagged"]
POOLED = "pooled val_loss"


def frontier_law(budgets: np.ndarray, values: np.ndarray, level: float = 0.95) -> dict:
    """value = k C^(-e): least squares of log value on log C; e with its t interval (n - 2 dof; NaN below 3
    budgets) and whether it improves ("yes": interval above 0, "no": below 0, "unclear": it holds 0)."""
    from scipy import stats

    c, v = np.asarray(budgets, float), np.asarray(values, float)
    ok = np.isfinite(c) & np.isfinite(v) & (c > 0) & (v > 0)
    c, v = c[ok], v[ok]
    out = {"exponent": math.nan, "exponent_lo": math.nan, "exponent_hi": math.nan, "coefficient": math.nan,
           "n_budgets": int(c.size), "level": level, "improves": "unclear"}
    if np.unique(c).size < 2:
        return out
    fit = stats.linregress(np.log(c), np.log(v))
    out["exponent"], out["coefficient"] = -float(fit.slope), float(np.exp(fit.intercept))
    if c.size >= 3:
        half = float(stats.t.ppf(0.5 + level / 2, c.size - 2) * fit.stderr)
        out["exponent_lo"], out["exponent_hi"] = out["exponent"] - half, out["exponent"] + half
        if out["exponent_lo"] > 0:
            out["improves"] = "yes"
        elif out["exponent_hi"] < 0:
            out["improves"] = "no"
    return out


def fit_channel_laws(points: pd.DataFrame, level: float = 0.95, pooled: pd.DataFrame | None = None) -> pd.DataFrame:
    """One law per (channel, lead_hours) from ``points`` (budget_flops, params, channel, lead_hours, rmse): the
    compute frontier (the lowest RMSE over sizes at each budget) against C. ``pooled`` (budget_flops, val_loss)
    adds the pooled loss's law as channel "pooled val_loss". Lead 0 (the initial state) is left out."""
    rows = []
    points = points[points["lead_hours"] > 0]
    for (channel, lead), g in points.groupby(["channel", "lead_hours"], sort=True):
        best = g.groupby("budget_flops")["rmse"].min()
        rows.append({"channel": channel, "lead_hours": lead,
                     **frontier_law(best.index.to_numpy(), best.to_numpy(), level)})
    if pooled is not None and len(pooled):
        best = pooled.groupby("budget_flops")["val_loss"].min()
        rows.append({"channel": POOLED, "lead_hours": math.nan,
                     **frontier_law(best.index.to_numpy(), best.to_numpy(), level)})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=LAW_COLUMNS)
    table["flagged"] = table["improves"] != "yes"
    return table[LAW_COLUMNS]


def _cached(out: Path, lead_steps: int | None, max_inits: int | None, split: str) -> pd.DataFrame | None:
    """A finished evaluation in ``out`` made with these settings (eval.json is written after rmse.csv)."""
    try:
        info = json.loads((out / "eval.json").read_text())
        rmse = pd.read_csv(out / "rmse.csv")
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    same = (info.get("split") == split and info.get("channel_laws") == {"lead_steps": lead_steps,
                                                                         "max_inits": max_inits})
    return rmse if same else None


def evaluate_points(sweep_dir: Path, lead_steps: int | None = None, max_inits: int | None = 8,
                    split: str = "test", device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Roll out every complete branch of runs.csv (reusing finished evaluations); the long RMSE table."""
    from wxscale.evaluation.evaluate import evaluate_run
    from wxscale.files import write_json_atomic

    runs_csv = Path(sweep_dir) / "runs.csv"
    if not runs_csv.is_file():
        raise WxscaleError(f"{runs_csv}: no such file (run the sweep first: `wxscale sweep run {sweep_dir}`)")
    runs = pd.read_csv(runs_csv)
    if "status" in runs:
        runs = runs[runs["status"] == "complete"]
    if runs.empty:
        raise WxscaleError(f"{runs_csv}: no complete runs to evaluate")
    frames = []
    items = list(runs.itertuples())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="rollouts", unit="run")
    for r in items:
        run_dir = Path(sweep_dir) / "runs" / r.run_id
        out = run_dir / EVAL_DIR
        rmse = _cached(out, lead_steps, max_inits, split)
        if rmse is None:
            rmse = evaluate_run(run_dir, split=split, lead_steps=lead_steps, max_inits=max_inits, out=out,
                                progress=False, device=device, plots=False)["rmse"]
            info = json.loads((out / "eval.json").read_text())
            info["channel_laws"] = {"lead_steps": lead_steps, "max_inits": max_inits}
            write_json_atomic(out / "eval.json", info)
        frames.append(pd.DataFrame({"run_id": r.run_id, "budget_flops": float(r.budget_flops),
                                    "params": int(r.params), "channel": rmse["channel"],
                                    "lead_hours": rmse["lead_hours"], "rmse": rmse["model"]}))
    return pd.concat(frames, ignore_index=True)


def plot_channel_laws(laws: pd.DataFrame, path: str | Path) -> Path:
    """Heat map of the exponent e (RMSE* ~ C^-e) over channel x lead; each cell shows e and its interval, and
    flagged cells (improvement with compute not established) are hatched and outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cells = laws[laws["channel"] != POOLED]
    channels = list(dict.fromkeys(cells["channel"]))
    leads = sorted(cells["lead_hours"].unique())
    grid = np.full((len(channels), len(leads)), np.nan)
    for r in cells.itertuples():
        grid[channels.index(r.channel), leads.index(r.lead_hours)] = r.exponent
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(leads) + 2), max(2.5, 0.7 * len(channels) + 1.5)))
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for r in cells.itertuples():
        i, j = channels.index(r.channel), leads.index(r.lead_hours)
        interval = "" if not np.isfinite(r.exponent_lo) else f"\n[{r.exponent_lo:.2f}, {r.exponent_hi:.2f}]"
        ax.text(j, i, f"{r.exponent:.2f}{interval}", ha="center", va="center", fontsize=6)
        if r.flagged:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="k", lw=1.2))
    ax.set_xticks(range(len(leads)), [f"{h:g}" for h in leads], fontsize=7)
    ax.set_yticks(range(len(channels)), channels, fontsize=7)
    ax.set_xlabel("lead time [h]")
    pooled = laws[laws["channel"] == POOLED]
    note = ""
    if len(pooled) and np.isfinite(pooled["exponent"].iloc[0]):
        p = pooled.iloc[0]
        note = f"; pooled val_loss e = {p['exponent']:.3f}"
    level = laws["level"].iloc[0] if len(laws) else 0.95
    ax.set_title(f"RMSE* ~ C^-e per channel and lead ({level:.0%} intervals; hatched: not improving{note})",
                 fontsize=8)
    fig.colorbar(im, ax=ax, label="exponent e (> 0: improves with compute)")
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP", help="sweep dir with runs.csv and run dirs")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default SWEEP/fit/channels)")
    parser.add_argument("--lead-steps", type=int, default=None, metavar="L",
                        help="rollout steps (default: eval's default, fewer if the split is shorter)")
    parser.add_argument("--max-inits", type=int, default=8, metavar="N",
                        help="init times per rollout, spread over the split (default 8: a reduced set)")
    parser.add_argument("--split", default="test", help="split to roll out over (default test)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-plots", action="store_true", help="skip the heat map")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.level < 1:
        raise WxscaleError(f"--level must be in (0, 1), got {args.level}")
    sweep = args.sweep_dir
    out = args.out or sweep / "fit" / "channels"
    points = evaluate_points(sweep, lead_steps=args.lead_steps, max_inits=args.max_inits, split=args.split,
                             device=args.device)
    runs = pd.read_csv(sweep / "runs.csv")
    pooled = runs[runs["status"] == "complete"] if "status" in runs else runs
    laws = fit_channel_laws(points, args.level, pooled[["budget_flops", "val_loss"]])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "channel_points.csv", points)
    write_csv(out / "channel_laws.csv", laws)
    written = [out / "channel_points.csv", out / "channel_laws.csv"]
    if not args.no_plots:
        written.append(plot_channel_laws(laws, out / "channel_laws.png"))
    n_budgets = points["budget_flops"].nunique()
    print(f"wxscale fit channels: {points['run_id'].nunique()} runs rolled out, {n_budgets} budgets, "
          f"{points['channel'].nunique()} channels x {points.loc[points['lead_hours'] > 0, 'lead_hours'].nunique()}"
          " leads")
    if n_budgets < 3:
        print(f"note: {n_budgets} budget(s): exponents have no interval below 3 budgets, so every cell is flagged")
    flagged = laws[laws["flagged"]]
    for r in laws.itertuples():
        where = r.channel if r.channel == POOLED else f"{r.channel} at {r.lead_hours:g} h"
        print(f"  {where}: e = {r.exponent:.3f} [{r.exponent_lo:.3f}, {r.exponent_hi:.3f}] "
              f"improves: {r.improves}" + ("  <- flagged" if r.flagged else ""))
    print(f"{len(flagged)} of {len(laws)} channel/lead laws flagged (improvement with compute not established)")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
