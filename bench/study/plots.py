"""Plots of a scaling study (matplotlib, Agg backend: files only, no display needed).

- :func:`plot_isoflop`: loss against N per budget with the fitted parabolas and their optima (Hoffmann et al.
  2022, Fig. 3 left); budgets without an interior minimum are drawn hollow and named in the legend.
- :func:`plot_scaling_laws`: N_opt and L_opt against C with the fitted power laws and bootstrap bands.
- :func:`plot_loss_curves`: training and validation loss of trunks and branches against samples or FLOPs.
- :func:`plot_lr_scan`: validation loss against the peak learning rate per scanned size, with the chosen rates.

Runs that repeat their train split more than 4 times (runs.csv ``repeats_data``; Muennighoff et al. 2023) are
circled in red on the IsoFLOP plot; held-out validation runs (``sweep validate``) are drawn over the laws.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from wxscale.files import save_figure  # noqa: E402
from wxscale.study.fit import MIN_SIZES_PER_BUDGET, FitResult, law_band  # noqa: E402


def plot_isoflop(runs: pd.DataFrame, isoflop: pd.DataFrame, path: str | Path) -> Path:
    """IsoFLOP profiles: val_loss against N per budget, the fitted parabola over the sampled range, the optimum
    with its bootstrap interval in N."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = np.sort(runs["budget_flops"].unique())
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(budgets), 1)))
    iso = isoflop.set_index("budget_flops")
    repeat_labelled = False
    for colour, c in zip(colours, budgets):
        sub = runs[runs["budget_flops"] == c].sort_values("params")
        row = iso.loc[c] if c in iso.index else None
        interior = bool(row is not None and row["interior"])
        ax.scatter(sub["params"], sub["val_loss"], s=18, color=colour if interior else "none", edgecolors=colour,
                   label=f"C={c:.2g}" + ("" if interior else " (no interior min.)"))
        if "repeats_data" in sub and sub["repeats_data"].astype(bool).any():
            rep = sub[sub["repeats_data"].astype(bool)]
            ax.scatter(rep["params"], rep["val_loss"], s=70, facecolors="none", edgecolors="red", lw=0.8,
                       label="repeats data > 4 epochs" if not repeat_labelled else None)
            repeat_labelled = True
        n = sub["params"].to_numpy(float)
        if np.unique(n).size >= MIN_SIZES_PER_BUDGET:
            x = np.log10(n)
            p = np.polyfit(x - x.mean(), sub["val_loss"].to_numpy(float), 2)
            xs = np.linspace(x.min(), x.max(), 100)
            ax.plot(10**xs, np.polyval(p, xs - x.mean()), color=colour, lw=1, ls="-" if interior else ":")
        if interior:
            xerr = [[row["n_opt"] - row["n_opt_lo"]], [row["n_opt_hi"] - row["n_opt"]]]
            xerr = None if not np.all(np.isfinite(xerr)) else np.clip(xerr, 0, None)
            ax.errorbar([row["n_opt"]], [row["l_opt"]], xerr=xerr, fmt="*", ms=11, color=colour, mec="k",
                        mew=0.5, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles (stars: fitted optima with bootstrap interval)")
    ax.legend(fontsize=7, ncol=2 if len(budgets) > 12 else 1, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_scaling_laws(fit: FitResult, path: str | Path, predictions: pd.DataFrame | None = None,
                      validation: pd.DataFrame | None = None) -> Path:
    """N_opt(C) and L_opt(C): the per-budget optima (Approach 2) with their intervals, each approach's fitted
    power law with its bootstrap band, predicted points (``predictions`` from :func:`wxscale.study.fit.predict`) and the
    measured optimum at held-out budgets (``validation``: validation.csv from ``sweep validate``)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    iso = fit.isoflop[fit.isoflop["interior"].astype(bool)] if fit.isoflop is not None else None
    cs = [] if iso is None else list(iso["budget_flops"])
    if validation is not None and len(validation):
        cs += list(validation["budget_flops"])
    if predictions is not None and len(predictions):
        cs += list(predictions["budget_flops"])
    if not cs:
        cs = [1.0, 10.0]
    # At least a decade of C, so a law drawn from one held-out point still shows its slope.
    c_lo = min(min(cs), max(cs) / 10)
    c_grid = np.logspace(np.log10(c_lo) - 0.1, np.log10(max(cs)) + 0.1, 100)
    styles = {"2": ("C0", "Approach 2 (IsoFLOP)"), "3": ("C3", "Approach 3 (parametric)")}
    for ax, q, label in ((axes[0], "n_opt", "N_opt"), (axes[1], "l_opt", "L_opt")):
        if iso is not None and len(iso):
            err = np.clip([iso[q] - iso[f"{q}_lo"], iso[f"{q}_hi"] - iso[q]], 0, None)
            ax.errorbar(iso["budget_flops"], iso[q], yerr=np.where(np.isfinite(err), err, 0), fmt="o", color="k",
                        ms=4, capsize=3, label="per-budget optimum")
        for approach, (colour, name) in styles.items():
            row = fit.fits[(fit.fits["approach"].astype(str) == approach) & (fit.fits["quantity"] == q)]
            if row.empty or not np.isfinite(row["exponent"].iloc[0]):
                continue
            r = row.iloc[0]
            ax.plot(c_grid, r["coefficient"] * c_grid ** r["exponent"], color=colour,
                    label=f"{name}: {r['coefficient']:.3g} C^{r['exponent']:.3f} "
                          f"[{r['exponent_lo']:.3f}, {r['exponent_hi']:.3f}]")
            _, lo, hi = law_band(fit, r, c_grid)
            if np.isfinite(lo).any():
                ax.fill_between(c_grid, lo, hi, color=colour, alpha=0.2, lw=0)
        if predictions is not None and q in predictions:
            for approach, (colour, _) in styles.items():
                p = predictions[predictions["approach"].astype(str) == approach]
                if len(p) and p[q].notna().any():
                    err = np.clip([p[q] - p[f"{q}_lo"], p[f"{q}_hi"] - p[q]], 0, None)
                    ax.errorbar(p["budget_flops"], p[q], yerr=np.where(np.isfinite(err), err, 0), fmt="D",
                                color=colour, mfc="none", capsize=3, label=f"predicted ({approach})")
        if validation is not None and len(validation):
            v = validation.drop_duplicates("budget_flops")
            measured = v["measured_n_opt"] if q == "n_opt" else v["best_loss"]
            ax.scatter(v["budget_flops"], measured, marker="*", s=140, color="gold", edgecolors="k", zorder=5,
                       label="validation run (measured, held out)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C [FLOPs]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Compute-optimal scaling (bands: {fit.level:.0%} bootstrap intervals)", fontsize=10)
    return save_figure(fig, path)


def plot_loss_curves(curves: list[tuple[str, pd.DataFrame]], path: str | Path, x: str = "flops") -> Path:
    """Loss curves: each (label, metrics.csv table) drawn with val_loss solid and train_loss faint, against
    ``x`` ("flops" or "samples"). Labels starting with "trunk" are drawn thicker than branches."""
    if x not in ("flops", "samples"):
        raise ValueError(f"x must be 'flops' or 'samples', got {x!r}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, df) in enumerate(curves):
        colour = f"C{i % 10}"
        trunk = label.lower().startswith("trunk")
        if x not in df or not len(df):
            continue
        if "train_loss" in df and df["train_loss"].notna().any():
            ax.plot(df[x], df["train_loss"], color=colour, alpha=0.3, lw=0.8)
        if "val_loss" in df and df["val_loss"].notna().any():
            v = df[df["val_loss"].notna()]
            ax.plot(v[x], v["val_loss"], color=colour, lw=2 if trunk else 1, marker="." if len(v) < 30 else None,
                    label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs" if x == "flops" else "samples")
    ax.set_ylabel("loss (solid: validation, faint: training)")
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend(fontsize=6, ncol=2 if len(curves) > 8 else 1)
    return save_figure(fig, path)


def plot_lr_scan(scan: pd.DataFrame, choice: pd.DataFrame, path: str | Path) -> Path:
    """Cooled-down validation loss (solid) and the constant-LR trunk's loss (faint) against the peak learning
    rate, one line per scanned size; the chosen rate of each scanned size marked with a star."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (size, g) in enumerate(scan.sort_values("lr").groupby("size", sort=False)):
        colour = f"C{i % 10}"
        ax.plot(g["lr"], g["val_loss"], "o-", color=colour, label=f"{size} (width {int(g['width'].iloc[0])})")
        if g["trunk_val_loss"].notna().any():
            ax.plot(g["lr"], g["trunk_val_loss"], "o--", color=colour, alpha=0.35, ms=3)
        pick = choice[(choice["size"] == size) & (choice["source"] == "scan")]
        if len(pick):
            lr = float(pick["lr"].iloc[0])
            ax.axvline(lr, color=colour, lw=0.8, ls=":")
            ax.plot([lr], [np.interp(np.log(lr), np.log(g["lr"]), g["val_loss"])], "*", ms=12, color=colour,
                    mec="k", mew=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation loss (solid: after cooldown; dashed: constant-LR trunk)")
    c = ", ".join(f"{v:.3g}" for v in sorted(scan["budget_flops"].unique())) if "budget_flops" in scan else "?"
    ax.set_title(f"Learning-rate scan at C = {c} FLOPs (stars: chosen)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
