"""`wxscale fit DIR_OR_RUNS_CSV`: IsoFLOP and scaling-law fits with bootstrap intervals, tables and plots.

Reads DIR/runs.csv (a sweep dir) or a CSV path and writes, into --out (default DIR/fit; required for a CSV):
isoflop.csv, fits.csv, fits_bootstrap.csv (the replicates behind the intervals), predictions.csv with
--predict, and PNGs (isoflop.png, scaling_laws.png, loss_curves.png when the sweep dir holds run dirs).

Foreign tables: --columns maps our column names to theirs, --flops-per-param fills flops_per_sample = X * N
(and samples = C / flops_per_sample), --budget-round-dex groups nominally equal budgets by rounding log10 C.
--preset chinchilla does all three for Epoch AI's points from Hoffmann et al. 2022 Fig. 4
(`Model Size`, `Training FLOP`, `loss`; D = C / 6N; budgets rounded to 0.1 dex; the 5 runs with the fewest
tokens per parameter dropped, as Besiroglu et al. 2024 do).

Intervals: --bootstrap auto resamples by trunk when runs.csv has trunk_id (branches share their trunk's noise),
and by run otherwise; the terminal and fits.csv (n_bootstrap_ok) say how many replicates were usable.
`wxscale fit --calibrate --out DIR` checks the intervals instead: many synthetic studies of a known law on a
sweep's grid (default: the demo's), reporting coverage and median width (wxscale.study.calibrate).
Per channel and lead time: `wxscale fit channels SWEEP` (wxscale.evaluation.channel_laws).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from wxscale.errors import WxscaleError
from wxscale.files import ensure_writable_dir, write_csv
from wxscale.study import fit as F

# Every file `wxscale fit` may write into --out: those a fit did not write this time are removed (a re-fit with
# --no-plots or without --predict must not leave the earlier fit's plots or predictions beside the new tables).
FIT_OUTPUTS = ("isoflop.csv", "fits.csv", "fits_bootstrap.csv", "predictions.csv", "isoflop.png",
               "scaling_laws.png", "loss_curves.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="DIR_OR_RUNS_CSV", nargs="?", default=None,
                        help="sweep dir holding runs.csv, or a CSV file (not with --calibrate)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default DIR/fit; required for a CSV)")
    parser.add_argument("--approach", choices=["2", "3", "both"], default="both",
                        help="2: IsoFLOP profiles, 3: parametric law L = E + A/N^a + B/D^b (default both)")
    parser.add_argument("--n-bootstrap", type=int, default=200,
                        help="bootstrap replicates for the intervals (default 200; Besiroglu et al. use 4000)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--predict", type=float, nargs="+", metavar="C", default=None,
                        help="budgets (FLOPs) to predict N_opt, D_opt and loss at, with intervals")
    parser.add_argument("--columns", default=None, metavar="OURS=THEIRS,...",
                        help="map our columns to a foreign table's, e.g. 'params=Model Size,budget_flops=Training "
                             f"FLOP,val_loss=loss' (ours: {', '.join(F.RUN_COLUMNS)})")
    parser.add_argument("--flops-per-param", type=float, default=None, metavar="X",
                        help="without flops_per_sample: use X * params (6 for transformers, D in tokens)")
    parser.add_argument("--budget-round-dex", type=float, default=None, metavar="STEP",
                        help="group budgets whose log10 C rounds to the same multiple of STEP (e.g. 0.1)")
    parser.add_argument("--preset", choices=["chinchilla"], default=None,
                        help="chinchilla: read Epoch AI's svg_extracted_data.csv as described above")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument("--bootstrap", choices=F.BOOTSTRAPS, default="auto",
                        help="resampling: auto (default: trunk-effects when runs.csv has trunk_id, else "
                             "run-effects), trunk-effects (new trunk and run noise drawn on the fixed design around "
                             "the fitted law), run-effects (new run noise only), trunk (whole trunks with their "
                             "branches), run (single runs)")
    parser.add_argument("--calibrate", action="store_true",
                        help="instead of fitting DIR: fit many synthetic studies of a known law and report how "
                             "often the intervals cover it (wxscale.study.calibrate; needs --out)")
    from wxscale.study.calibrate import add_calibration_arguments

    add_calibration_arguments(parser, with_shared=False)


def parse_columns(text: str | None) -> dict[str, str]:
    """'ours=theirs,...' -> {ours: theirs}; our names must be runs.csv columns."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise WxscaleError(f"--columns: {part!r} is not OURS=THEIRS (e.g. params=Model Size)")
        if ours not in F.RUN_COLUMNS:
            raise WxscaleError(f"--columns: {ours!r} is not one of our columns {list(F.RUN_COLUMNS)}")
        mapping[ours] = theirs
    return mapping


def load_input(args: argparse.Namespace) -> tuple[pd.DataFrame, Path]:
    """The runs table (adapted if asked) and the output dir."""
    src = Path(args.source)
    if not src.exists():
        raise WxscaleError(f"{src}: no such file or directory (give a sweep dir or a runs CSV)")
    out = args.out
    if out is None:
        if not src.is_dir():
            raise WxscaleError(f"{src} is a file: say where the outputs go with --out DIR")
        out = src / "fit"
    csv = src / "runs.csv" if src.is_dir() else src
    if args.preset == "chinchilla":
        return F.chinchilla_runs(csv, budget_round_dex=args.budget_round_dex or 0.1), out
    runs = F.read_runs(src)
    if runs.empty:
        raise WxscaleError(f"{csv}: has a header but no rows (no run has finished); run `wxscale sweep run` first, "
                           "or give a CSV with runs")
    if "run_id" in runs.columns:
        dup = runs["run_id"][runs["run_id"].duplicated()].astype(str).unique().tolist()
        if dup:
            raise WxscaleError(f"{csv}: run id(s) {', '.join(dup)} appear more than once; each run counts once in a "
                               "fit, so remove the repeated rows")
    if args.columns or args.flops_per_param is not None or args.budget_round_dex is not None:
        runs = F.adapt_runs(runs, parse_columns(args.columns), args.flops_per_param, args.budget_round_dex,
                            source=str(csv))
    return runs, out


def find_loss_curves(sweep_dir: Path, max_depth: int = 3) -> list[tuple[str, pd.DataFrame]]:
    """(label, metrics.csv) of every run dir under the sweep dir; trunks (per plan.csv) labelled "trunk ..."."""
    trunks = set()
    if (sweep_dir / "plan.csv").is_file():
        plan = pd.read_csv(sweep_dir / "plan.csv")
        trunks = set(plan["trunk_id"].astype(str)) if "trunk_id" in plan else set()
    curves = []
    for depth in range(1, max_depth + 1):
        for m in sorted(sweep_dir.glob("/".join(["*"] * depth) + "/metrics.csv")):
            try:
                df = pd.read_csv(m)
            except (pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
            name = m.parent.name
            curves.append((f"trunk {name}" if name in trunks else name, df))
    return curves


def _law(row: pd.Series, name: str) -> str:
    return (f"{name} = {row['coefficient']:.3g} C^{row['exponent']:.3f}  "
            f"[{row['exponent_lo']:.3f}, {row['exponent_hi']:.3f}]")


def summary(result: F.FitResult, predictions: pd.DataFrame | None) -> list[str]:
    """A few lines for the terminal: the laws with their intervals, predictions, notes."""
    t, lines = result.fits, []
    level = f"{result.level:.0%}"
    for approach in ("2", "3"):
        rows = t[t["approach"].astype(str) == approach].set_index("quantity")
        if rows.empty:
            continue
        n_ok = int(rows["n_bootstrap_ok"].iloc[0])
        n_boot = int(rows["n_bootstrap"].iloc[0])
        if approach == "2":
            iso = result.isoflop
            lines.append(f"Approach 2 (IsoFLOP): {int(iso['interior'].sum())} of {len(iso)} budgets with an interior "
                         f"minimum; exponents with {level} intervals ({n_ok}/{n_boot} bootstrap fits)")
        else:
            r = rows
            lines.append(f"Approach 3 (parametric): L = {r.loc['E', 'coefficient']:.3g} + "
                         f"{r.loc['A', 'coefficient']:.3g} / N^{r.loc['alpha', 'exponent']:.3f} + "
                         f"{r.loc['B', 'coefficient']:.3g} / D^{r.loc['beta', 'exponent']:.3f}  "
                         f"(alpha [{r.loc['alpha', 'exponent_lo']:.3f}, {r.loc['alpha', 'exponent_hi']:.3f}], "
                         f"beta [{r.loc['beta', 'exponent_lo']:.3f}, {r.loc['beta', 'exponent_hi']:.3f}]; "
                         f"{n_ok}/{n_boot} bootstrap fits)")
        for q, name in (("n_opt", "N_opt"), ("d_opt", "D_opt"), ("l_opt", "L_opt")):
            if q in rows.index:
                lines.append("  " + _law(rows.loc[q], name))
    for approach, err in result.errors.items():
        lines.append(f"Approach {approach}: not fitted: {err}")
    if predictions is not None:
        for p in predictions.itertuples():
            lines.append(f"predict C={p.budget_flops:.3g} (approach {p.approach}): "
                         f"N_opt {p.n_opt:.3g} [{p.n_opt_lo:.3g}, {p.n_opt_hi:.3g}], "
                         f"D_opt {p.d_opt:.3g} [{p.d_opt_lo:.3g}, {p.d_opt_hi:.3g}], "
                         f"loss {p.l_opt:.4g} [{p.l_opt_lo:.4g}, {p.l_opt_hi:.4g}]")
    lines += [f"note: {n}" for n in result.notes]
    return lines


def remove_stale_outputs(out: Path, written: list[Path]) -> list[Path]:
    """Remove the fit outputs in ``out`` that this fit did not write; returns them."""
    keep = {Path(p).name for p in written}
    stale = [out / name for name in FIT_OUTPUTS if name not in keep and (out / name).is_file()]
    for path in stale:
        path.unlink()
    return stale


def held_out(runs: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Leave out the runs of held-out validation budgets (runs.csv ``role``; `sweep validate`), and read that
    validation's table (``SOURCE/validation/validation.csv``) for the scaling-law plot."""
    validation = None
    if source.is_dir() and (source / "validation" / "validation.csv").is_file():
        validation = pd.read_csv(source / "validation" / "validation.csv")
    if "role" in runs.columns:
        held = runs["role"].astype(object).fillna("").astype(str) == "validation"
        if held.any():
            print(f"wxscale fit: leaving out {int(held.sum())} held-out validation run(s) (`sweep validate`)")
            runs = runs[~held].reset_index(drop=True)
    return runs, validation


def run(args: argparse.Namespace) -> int:
    if args.calibrate:
        from wxscale.study.calibrate import run_calibration

        if args.out is None or args.source is not None:
            raise WxscaleError("--calibrate draws its own studies: give --out DIR and no DIR_OR_RUNS_CSV")
        return run_calibration(args)
    if args.source is None:
        raise WxscaleError("give DIR_OR_RUNS_CSV (a sweep dir or a runs CSV), or --calibrate --out DIR")
    runs, out = load_input(args)
    ensure_writable_dir(out, "--out")
    runs, validation = held_out(runs, Path(args.source))
    result = F.fit_scaling(runs, approach=args.approach, n_bootstrap=args.n_bootstrap, level=args.level,
                           seed=args.seed, progress=True, bootstrap=args.bootstrap)
    written = F.write_fit(result, out)
    predictions = None
    if args.predict:
        predictions = F.predict(result, args.predict)
        write_csv(out / "predictions.csv", predictions)
        written.append(out / "predictions.csv")
    if not args.no_plots:
        from wxscale.study import plots

        if result.isoflop is not None:
            written.append(plots.plot_isoflop(F.check_runs(runs), result.isoflop, out / "isoflop.png"))
        written.append(plots.plot_scaling_laws(result, out / "scaling_laws.png", predictions, validation))
        src = Path(args.source)
        curves = find_loss_curves(src) if src.is_dir() else []
        if curves:
            written.append(plots.plot_loss_curves(curves, out / "loss_curves.png"))
    stale = remove_stale_outputs(out, written)
    print(f"wxscale fit: {len(runs)} runs, {runs['budget_flops'].nunique()} budgets, "
          f"{runs['params'].nunique()} sizes")
    for line in summary(result, predictions):
        print(line)
    if "repeats_data" in runs.columns and runs["repeats_data"].astype(bool).any():
        rep = runs[runs["repeats_data"].astype(bool)]
        print(f"note: {len(rep)} of {len(runs)} runs repeat their train split more than 4 times (up to "
              f"{rep['epochs'].max():.1f} epochs; runs.csv repeats_data, circled in isoflop.png); Muennighoff et al. "
              "2023: beyond about 4 epochs repeated data departs from the law")
    print("wrote " + ", ".join(str(p) for p in written))
    if stale:
        print("removed the earlier fit's " + ", ".join(p.name for p in stale) + " (not written by this fit)")
    if result.errors:
        raise WxscaleError("; ".join(f"Approach {a} could not be fitted: {e}" for a, e in result.errors.items())
                           + f" (the other approach's results are in {out})")
    return 0
