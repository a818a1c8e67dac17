"""Scaling-law fits: IsoFLOP profiles (Approach 2), the parametric law (Approach 3), bootstrap intervals.

Pure functions on pandas tables; the command line lives in :mod:`wxscale.study.fit_cli`, plots in
:mod:`wxscale.study.plots`.

Input: one row per finished run with ``budget_flops`` (C), ``params`` (N), ``samples`` (D),
``flops_per_sample`` and ``val_loss`` (L), the columns of the sweep dir's runs.csv (ARCHITECTURE.md).

- Approach 2 (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Sec. 3.2): per budget,
  fit L against log10 N with a parabola, take its vertex as N_opt(C) and L_opt(C); D_opt = C / flops_per_sample
  at N_opt. Then N_opt = k C^a, D_opt = k' C^b and L_opt = k'' C^c by least squares in log-log space.
  Parabola fits are biased when the sampled N range is wide or not centred on the optimum (Czech et al. 2026,
  "Problems with Chinchilla Approach 2: Systematic Biases in IsoFLOP Parabola Fits", arXiv 2603.22339), so every
  budget reports its N range and how many sizes lie on each side of the optimum, and a vertex outside the sampled
  range (or a concave fit) is flagged ``interior = False`` and left out of the laws, never extrapolated.
- Approach 3 (Hoffmann et al. 2022, Sec. 3.3; Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"):
  L(N, D) = E + A / N^alpha + B / D^beta, fitted as log L ~ LSE(a - alpha log N, b - beta log D, e) with
  A = e^a, B = e^b, E = e^e, minimising a Huber loss (delta = 1e-3) of the log residuals with L-BFGS from a
  grid of starts. Compute-optimal allocation for C = c N D (c = 6 for dense transformers with D in tokens):
  N_opt = G (C / c)^a, D_opt = G^-1 (C / c)^b, G = (alpha A / (beta B))^(1 / (alpha + beta)),
  a = beta / (alpha + beta), b = alpha / (alpha + beta).
- Intervals: bootstrap at ``level`` (default 95 %). When runs.csv has ``trunk_id`` (continual training),
  branches cut from one trunk share its noise, so resampling single runs would treat correlated points as
  independent and under-cover. There the bootstrap keeps the design (the sizes and budgets that were run) and
  draws new noise around the fitted parametric law: one effect per trunk, shared by all its branches, and one per
  run, each with a variance drawn from its own sampling distribution, because a sweep's few trunks leave the
  trunk variance uncertain (:class:`ParametricResampler`). Without ``trunk_id`` (independent runs, e.g.
  Chinchilla's points) it draws one effect per run around that law. Every replicate is refitted from
  scratch (its own start grid; no warm start from the full-data optimum). Replicates that give no estimate are
  counted (``n_bootstrap_ok``) and never silently dropped: the interval counts them as lying beyond its ends,
  half on each side (:func:`percentile_interval`), so a fit whose replicates often fail gets a wider interval,
  or none. The interval's kind depends on what the replicates are (:data:`INTERVALS`; fits.csv's ``interval``):
  Approach 3's are refits around its own law (basic intervals), Approach 2's are IsoFLOP fits of that law's
  world (intervals centred on the estimate less the noise's bias in that world).
  Besiroglu et al. bootstrap 4000 times; the default here is 200 to keep the command fast,
  ``n_bootstrap`` raises it. ``wxscale fit --calibrate`` (:mod:`wxscale.study.calibrate`) measures how often
  these intervals cover a known law; the choices above are the ones that covered.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from wxscale.errors import WxscaleError
from wxscale.files import write_csv

RUN_COLUMNS = ("budget_flops", "params", "samples", "flops_per_sample", "val_loss")
ISOFLOP_COLUMNS = [
    "budget_flops", "n_opt", "n_opt_lo", "n_opt_hi", "d_opt", "l_opt", "l_opt_lo", "l_opt_hi", "n_points",
    "d_opt_lo", "d_opt_hi", "n_sizes", "n_min", "n_max", "n_below", "n_above", "interior", "note",
]
FITS_COLUMNS = [
    "quantity", "approach", "coefficient", "exponent", "exponent_lo", "exponent_hi", "n_points",
    "coefficient_lo", "coefficient_hi", "level", "n_bootstrap", "n_bootstrap_ok", "interval",
    "world_coefficient", "world_exponent",
]
HUBER_DELTA = 1e-3
MIN_SIZES_PER_BUDGET = 3  # a parabola has 3 coefficients
MIN_BUDGETS = 3  # a line through 2 optima has no check at all
MIN_POINTS_PARAMETRIC = 8  # 5 parameters plus a few degrees of freedom
CHINCHILLA_COLUMNS = {"params": "Model Size", "budget_flops": "Training FLOP", "val_loss": "loss"}


# ----------------------------------------------------------------------------------------------------- input

def adapt_runs(df: pd.DataFrame, columns: dict[str, str] | None = None, flops_per_param: float | None = None,
               budget_round_dex: float | None = None, source: str = "runs") -> pd.DataFrame:
    """Map a foreign table onto runs.csv columns.

    ``columns`` maps our names to theirs (``{"params": "Model Size", ...}``). Without ``flops_per_sample``,
    ``flops_per_param`` gives it as ``flops_per_param * params`` (6 for dense transformers, D in tokens);
    without ``samples``, D = C / flops_per_sample from each row's own C. ``budget_round_dex`` groups rows whose
    budgets are only nominally equal (points read off a figure): rows with equal round(log10 C / step) share one
    budget, the geometric mean of their C. D keeps each row's own C.
    """
    df = df.rename(columns={theirs: ours for ours, theirs in (columns or {}).items()}).copy()
    missing = [c for c in (columns or {}) if c not in df.columns]
    if missing:
        raise WxscaleError(f"{source}: --columns names columns the table does not have (for {missing}); "
                           f"it has {list(df.columns)}")
    if "flops_per_sample" not in df.columns and flops_per_param is not None:
        df["flops_per_sample"] = float(flops_per_param) * df["params"].astype(float)
    if "samples" not in df.columns and {"budget_flops", "flops_per_sample"} <= set(df.columns):
        df["samples"] = df["budget_flops"].astype(float) / df["flops_per_sample"].astype(float)
    if budget_round_dex is not None:
        if not budget_round_dex > 0:
            raise WxscaleError(f"budget rounding step must be > 0 dex, got {budget_round_dex}")
        c = df["budget_flops"].astype(float)
        if (c <= 0).any():
            raise WxscaleError(f"{source}: budget_flops must be > 0 to group budgets in log10")
        key = np.round(np.log10(c) / budget_round_dex)
        df["budget_flops"] = np.exp(np.log(c).groupby(key).transform("mean"))
    return df


def chinchilla_runs(path: str | Path, budget_round_dex: float = 0.1, drop_fewest_tokens: int = 5) -> pd.DataFrame:
    """Read Epoch AI's points from Hoffmann et al. 2022 Fig. 4 (``Model Size``, ``Training FLOP``, ``loss``).

    D = C / (6 N) in tokens. The points' budgets are only nominally equal, so budgets are grouped by rounding
    log10 C to ``budget_round_dex`` (0.1 dex: a factor 1.26) for Approach 2. Like Besiroglu et al. 2024, the
    ``drop_fewest_tokens`` runs with the fewest tokens per parameter (2-7B models at ~1e19 FLOPs, far off the
    law) are left out.
    """
    df = pd.read_csv(path)
    runs = adapt_runs(df, CHINCHILLA_COLUMNS, flops_per_param=6.0, budget_round_dex=budget_round_dex,
                      source=str(path))
    if drop_fewest_tokens:
        runs = runs.drop(index=(runs["samples"] / runs["params"]).nsmallest(drop_fewest_tokens).index)
    return runs.reset_index(drop=True)


def read_runs(path: str | Path) -> pd.DataFrame:
    """Read a sweep dir's runs.csv (or a csv path) as is; :func:`check_runs` validates it."""
    path = Path(path)
    csv = path / "runs.csv" if path.is_dir() else path
    if not csv.is_file():
        raise WxscaleError(f"{csv}: no such file (give a sweep dir holding runs.csv, or a runs.csv path)")
    try:
        return pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise WxscaleError(f"{csv}: not a readable CSV ({err})") from err


def check_runs(runs: pd.DataFrame, need: tuple[str, ...] = RUN_COLUMNS, source: str = "runs") -> pd.DataFrame:
    """Keep completed runs; demand the columns in ``need`` and finite, positive values in them."""
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise WxscaleError(f"{source}: missing column(s) {missing}; it has {list(runs.columns)} "
                           "(map foreign names with --columns ours=theirs,...)")
    if "status" in runs.columns:
        runs = runs[runs["status"].astype(str).str.lower().isin(["complete", "completed", "ok"])]
    runs = runs.reset_index(drop=True)
    for col in need:
        values = pd.to_numeric(runs[col], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            i = int(bad[0])
            who = f"run_id {runs['run_id'][i]}" if "run_id" in runs.columns else f"data row {i + 1}"
            raise WxscaleError(f"{source}: {col} must be a finite number > 0, but {who} has {runs[col][i]!r} "
                               f"({bad.size} such row(s)); drop them or mark their status failed")
        runs[col] = values
    return runs


# ------------------------------------------------------------------------------------------ small helpers

def _one_blas_thread():
    """Run tiny linear algebra on one BLAS thread.

    scipy's L-BFGS-B and polyfit call BLAS/LAPACK on 5x5 problems; a threaded OpenBLAS spends far more time
    waking its threads than computing (measured: 7 ms instead of 0.1 ms per L-BFGS step on a busy 2-core box).
    threadpoolctl is optional: without it, set OPENBLAS_NUM_THREADS=1 for the same effect.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile bootstrap interval in which failed replicates (NaN) count as lying beyond its ends.

    Dropping failures would shift the interval silently: a replicate fails precisely when its data are extreme
    (an IsoFLOP vertex leaving the sampled range, an exponent running to its bound). With a fraction f failed,
    half of them are taken to lie below every usable value and half above, so the ends are the usable
    replicates' quantiles (q - f/2) / (1 - f) and 1 minus that, q = (1 - level) / 2. When f/2 >= q the
    interval is unbounded on the failures' side, returned as (NaN, NaN): no interval at this level.
    """
    s = np.asarray(samples, float)
    ok = s[np.isfinite(s)]
    if ok.size == 0:
        return math.nan, math.nan
    failed = 1 - ok.size / s.size
    q = (1 - level) / 2
    q_ok = (q - failed / 2) / (1 - failed)
    if q_ok <= 0:
        return math.nan, math.nan
    lo, hi = np.quantile(ok, [q_ok, 1 - q_ok])
    return float(lo), float(hi)


def basic_interval(samples: np.ndarray, level: float, estimate: float) -> tuple[float, float]:
    """Basic bootstrap interval of a positive quantity (Davison & Hinkley 1997, eq. 5.6, on log t): the percentile
    interval reflected around the estimate t in log, [t^2 / q_hi, t^2 / q_lo].

    When the replicates are drawn from a world whose truth is the estimate itself (the parametric law's own
    bootstrap), replicate / estimate stands in for estimate / truth, bias included, so reflecting removes the
    estimator's bias where the percentile interval doubles it. In log, the interval stays positive and a long
    upper tail of replicates (an exponent the data barely determine) lowers the lower end by a factor, not below
    zero. Failures count as in :func:`percentile_interval`.
    """
    lo, hi = percentile_interval(samples, level)
    if not (np.isfinite(lo) and lo > 0 and np.isfinite(estimate) and estimate > 0):
        return math.nan, math.nan
    return float(estimate**2 / hi), float(estimate**2 / lo)


def centred_interval(samples: np.ndarray, level: float, estimate: float, world: float,
                     log: bool = False) -> tuple[float, float]:
    """The estimate less the bootstrap's bias, plus and minus half the percentile interval's width: the normal
    interval with bias correction (Davison & Hinkley 1997, Sec. 5.2.1), with the replicates' central spread in
    place of z times their standard deviation so that failures widen it as in :func:`percentile_interval`.

    ``world`` is what the bootstrap's world gives without noise; the bias is mean(replicates) - world. With
    ``log``, all of it on log values (coefficients and predictions: positive, spread by a factor).
    """
    lo, hi = percentile_interval(samples, level)
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if not (np.isfinite(lo) and np.isfinite(estimate) and np.isfinite(world)):
        return math.nan, math.nan
    if log:
        if not (lo > 0 and estimate > 0 and world > 0 and (s > 0).all()):
            return math.nan, math.nan
        s, lo, hi, estimate, world = np.log(s), math.log(lo), math.log(hi), math.log(estimate), math.log(world)
    centre = estimate - (float(s.mean()) - world)
    half = (hi - lo) / 2
    if log:
        return math.exp(centre - half), math.exp(centre + half)
    return centre - half, centre + half


# Which interval each approach reports, and why (measured with wxscale.study.calibrate on the demo grid, 40-400
# synthetic studies per noise setting):
# - Approach 3's replicates are refits of data drawn around its own law, so the basic interval removes the fit's
#   bias (alpha and beta: 154 of 160 covered; the percentile interval 147).
# - Approach 2's replicates are IsoFLOP fits of data drawn around that parametric law, so they centre on the
#   world's exponent, which is closer to the truth than the IsoFLOP estimate is (sd 0.027 against 0.033 over
#   studies at 2 % trunk and 2 % run noise). Percentiles, which sit there with the estimate's width, covered
#   398 of 400. Centred on the estimate less the bias the noise adds to an IsoFLOP fit in that world (replicates
#   against the IsoFLOP fit of its noise-free losses), they covered 383 and 370 of 400 at 2 %/2 % and 5 %/1 %
#   (percentiles: 398 and 382). Reflecting around the world's own exponent instead also subtracts the world's
#   IsoFLOP bias on this design, which is noisy (sd 0.016 at 5 % trunk noise against the truth's 0.0017), and
#   covered 169 of 200.
INTERVALS = {"2": "centred", "3": "basic"}


def bootstrap_interval(samples: np.ndarray, level: float, kind: str, estimate: float, world: float | None = None,
                       log: bool = False) -> tuple[float, float]:
    """The interval of kind ``kind`` (:data:`INTERVALS`; fits.csv's ``interval`` column). ``world`` (the
    centred interval's noise-free value, the estimate when not given) and ``log`` serve the centred interval."""
    if kind == "basic":
        return basic_interval(samples, level, estimate)
    if kind == "centred":
        return centred_interval(samples, level, estimate, estimate if world is None else world, log=log)
    if kind == "percentile":
        return percentile_interval(samples, level)
    raise WxscaleError(f"unknown interval kind {kind!r}: expected one of basic, centred, percentile")


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares of log10 y = log10 k + a log10 x; returns (k, a)."""
    a, log_k = np.polyfit(np.log10(x), np.log10(y), 1)
    return float(10**log_k), float(a)


def flops_per_sample_fn(runs: pd.DataFrame):
    """N -> flops_per_sample, linear in log-log between the ladder's sizes (and extrapolated linearly beyond)."""
    table = runs.groupby("params")["flops_per_sample"].median()
    log_n, log_f = np.log(table.index.to_numpy(float)), np.log(table.to_numpy(float))

    def at(n: np.ndarray | float) -> np.ndarray:
        x = np.log(np.asarray(n, float))
        if log_n.size == 1:  # one size: take flops per sample proportional to N
            return np.exp(log_f[0] + x - log_n[0])
        inside = np.interp(x, log_n, log_f)
        left = log_f[0] + (x - log_n[0]) * (log_f[1] - log_f[0]) / (log_n[1] - log_n[0])
        right = log_f[-1] + (x - log_n[-1]) * (log_f[-1] - log_f[-2]) / (log_n[-1] - log_n[-2])
        return np.exp(np.where(x < log_n[0], left, np.where(x > log_n[-1], right, inside)))

    return at


# ------------------------------------------------------------------------------------------ Approach 2

def fit_isoflop_parabola(params: np.ndarray, loss: np.ndarray) -> dict:
    """One IsoFLOP profile: L = p0 + p1 x + p2 x^2 with x = log10 N; the vertex is the optimum.

    ``interior`` is True only when the parabola is convex and its vertex lies strictly inside the sampled
    N range: a vertex outside it would be an extrapolation (Czech et al. 2026, arXiv 2603.22339).
    """
    x, y = np.log10(np.asarray(params, float)), np.asarray(loss, float)
    sizes = np.unique(x)
    out = {"n_points": int(x.size), "n_sizes": int(sizes.size), "n_min": float(10 ** sizes.min()),
           "n_max": float(10 ** sizes.max()), "n_opt": math.nan, "l_opt": math.nan, "n_below": 0,
           "n_above": 0, "interior": False, "note": ""}
    if sizes.size < MIN_SIZES_PER_BUDGET:
        out["note"] = f"{sizes.size} model size(s); a parabola needs at least {MIN_SIZES_PER_BUDGET}"
        return out
    # Centre x so the 3x3 normal equations stay well conditioned.
    x0 = x.mean()
    p2, p1, p0 = np.polyfit(x - x0, y, 2)
    if not p2 > 0:
        out["note"] = "loss is not convex in log N here (no minimum); widen the size range"
        return out
    xv = -p1 / (2 * p2)
    with np.errstate(over="ignore"):  # an almost flat profile puts its vertex at 10^400: inf, reported below
        n_vertex = float(np.power(10.0, xv + x0))
    out["n_opt"], out["l_opt"] = n_vertex, float(p0 - p1**2 / (4 * p2))
    out["n_below"], out["n_above"] = int((sizes < xv + x0).sum()), int((sizes > xv + x0).sum())
    if not sizes.min() < xv + x0 < sizes.max():
        side = "largest" if xv + x0 >= sizes.max() else "smallest"
        out["note"] = (f"minimum beyond the {side} size sampled ({n_vertex:.3g} outside "
                       f"[{out['n_min']:.3g}, {out['n_max']:.3g}]); add {side.replace('est', 'er')} sizes")
        out["n_opt"] = out["l_opt"] = math.nan  # never extrapolate the optimum
        return out
    out["interior"] = True
    if min(out["n_below"], out["n_above"]) == 0:
        out["note"] = "optimum between the two outermost sizes"
    elif out["n_below"] != out["n_above"]:
        out["note"] = f"asymmetric grid: {out['n_below']} sizes below, {out['n_above']} above the optimum"
    return out


def _optima(runs: pd.DataFrame, budgets: np.ndarray) -> pd.DataFrame:
    """Per-budget optima with the full diagnostics of :func:`fit_isoflop_parabola`."""
    rows = []
    for c in budgets:
        sub = runs[runs["budget_flops"] == c]
        rows.append({"budget_flops": float(c),
                     **fit_isoflop_parabola(sub["params"].to_numpy(), sub["val_loss"].to_numpy())})
    table = pd.DataFrame(rows)
    table["d_opt"] = table["budget_flops"] / flops_per_sample_fn(runs)(table["n_opt"].fillna(1.0).to_numpy())
    table.loc[~table["interior"], "d_opt"] = math.nan
    return table


def _vertex(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """The bootstrap's lean :func:`fit_isoflop_parabola`: (log10 N_opt, L_opt), NaN unless strictly inside the
    range of the sizes drawn.

    ``w`` are bootstrap counts (a run drawn twice weighs twice: least squares with weights sqrt(w) on the
    residuals equals fitting the duplicated rows)."""
    if w is not None:
        keep = w > 0
        x, y, w = x[keep], y[keep], w[keep]
    if np.unique(x).size < MIN_SIZES_PER_BUDGET:
        return math.nan, math.nan
    x0 = x.mean() if w is None else float(np.average(x, weights=w))
    p2, p1, p0 = np.polyfit(x - x0, y, 2, w=None if w is None else np.sqrt(w))
    if not p2 > 0 or not x.min() < x0 - p1 / (2 * p2) < x.max():
        return math.nan, math.nan
    return x0 - p1 / (2 * p2), p0 - p1**2 / (4 * p2)


def _world_isoflop(runs: pd.DataFrame, budgets: np.ndarray, good: np.ndarray, world_losses: np.ndarray | None
                   ) -> tuple[pd.DataFrame | None, dict[str, tuple[float, float]] | None]:
    """Approach 2 on the bootstrap world's noise-free losses: (per-budget optima, laws), both None when the
    bootstrap resamples the runs (its world's value is the estimate) or when the world gives fewer than
    MIN_BUDGETS interior optima among the budgets ``good`` in the data."""
    if world_losses is None:
        return None, None
    world = _optima(runs.assign(val_loss=world_losses), budgets)
    use = good & world["interior"].to_numpy(bool)
    if use.sum() < MIN_BUDGETS:
        return None, None
    return world, _power_laws(budgets[use], {q: world[q].to_numpy(float)[use] for q in ("n_opt", "d_opt", "l_opt")})


def _power_laws(c: np.ndarray, optima: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """N_opt, D_opt, L_opt = k C^a; a law with a non-positive value (a concave L_opt) is NaN."""
    return {q: fit_power_law(c, v) if (v > 0).all() else (math.nan, math.nan) for q, v in optima.items()}


@dataclass
class FitResult:
    """What a fit produced: the tables written to disk and the bootstrap replicates behind the intervals."""

    fits: pd.DataFrame  # fits.csv
    replicates: pd.DataFrame  # fits_bootstrap.csv: approach, quantity, replicate, coefficient, exponent
    isoflop: pd.DataFrame | None = None  # isoflop.csv (Approach 2)
    level: float = 0.95
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # approach -> why it was not fitted


def _law_rows(approach: str, point: dict[str, tuple[float, float]], boot: dict[str, np.ndarray],
              n_points: int, level: float, n_boot: int,
              world: dict[str, tuple[float, float]] | None = None, kind: str | None = None) -> list[dict]:
    """fits.csv rows of power laws k C^a. ``world``: each law in the bootstrap's noise-free world (default: the
    estimate, as for a resampling bootstrap or a parametric one around the estimate itself); ``kind``: the
    interval (default: the approach's, :data:`INTERVALS`)."""
    rows, kind = [], kind or INTERVALS[approach]
    for q, (k, a) in point.items():
        kb, ab = boot[q][:, 0], boot[q][:, 1]
        k_w, a_w = (world or point)[q]
        k_lo, k_hi = bootstrap_interval(kb, level, kind, k, k_w, log=True)
        a_lo, a_hi = bootstrap_interval(ab, level, kind, a, a_w)
        rows.append({"quantity": q, "approach": approach, "coefficient": k, "exponent": a, "exponent_lo": a_lo,
                     "exponent_hi": a_hi, "n_points": n_points, "coefficient_lo": k_lo, "coefficient_hi": k_hi,
                     "level": level, "n_bootstrap": n_boot, "n_bootstrap_ok": int(np.isfinite(ab).sum()),
                     "interval": kind, "world_coefficient": k_w, "world_exponent": a_w})
    return rows


def _replicate_rows(approach: str, boot: dict[str, np.ndarray]) -> pd.DataFrame:
    frames = [pd.DataFrame({"approach": approach, "quantity": q, "replicate": np.arange(len(v)),
                            "coefficient": v[:, 0], "exponent": v[:, 1]}) for q, v in boot.items()]
    return pd.concat(frames, ignore_index=True)


def _resample_within_budget(idx: np.ndarray, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Case bootstrap within one budget, redrawn (up to 20 times) until it keeps enough sizes for a parabola.

    Conditioning on the design (how many sizes were drawn), not on the outcome, keeps small budgets from failing
    in a third of the replicates without favouring any loss values; a budget with exactly 3 sizes therefore
    contributes no sampling spread (its parabola interpolates), so prefer >= 5.
    """
    for _ in range(20):
        draw = rng.choice(idx, size=idx.size, replace=True)
        if np.unique(params[draw]).size >= MIN_SIZES_PER_BUDGET:
            break
    return draw


def trunk_codes(runs: pd.DataFrame) -> np.ndarray | None:
    """Integer code of each run's trunk (``trunk_id``), or None when the runs carry no trunk (independent runs)."""
    if "trunk_id" not in runs.columns or runs["trunk_id"].isna().any():
        return None
    return pd.factorize(runs["trunk_id"].astype(str))[0]


class Resampler:
    """Bootstrap weights (how often each run is drawn) for one replicate.

    With trunks: draw as many trunks as there are, with replacement; each run weighs as often as its trunk was
    drawn, so branches of one trunk are always drawn together. Without: case bootstrap of runs, within each
    budget when ``by_budget`` (Approach 2, so every budget keeps its number of points) or over all runs.
    """

    def __init__(self, runs: pd.DataFrame, by_budget: bool) -> None:
        self.codes = trunk_codes(runs)
        self.n = len(runs)
        self.params = runs["params"].to_numpy(float)
        budgets = runs["budget_flops"].to_numpy(float) if "budget_flops" in runs else np.zeros(self.n)
        self.groups = [np.flatnonzero(budgets == c) for c in np.unique(budgets)] if by_budget else None
        self.kind = "trunk" if self.codes is not None else ("run within budget" if by_budget else "run")
        self.n_units = int(self.codes.max() + 1) if self.codes is not None else self.n
        self.described = f"resampled {self.kind}s ({self.n_units})"
        self.world_losses = None  # the world is the runs themselves: its noise-free value is the estimate

    def draw(self, rng: np.random.Generator, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One replicate as (weight of each run, its loss): the observed losses, reweighted."""
        return self.weights(rng), observed

    def weights(self, rng: np.random.Generator) -> np.ndarray:
        if self.codes is not None:
            # Redrawn (up to 20 times) until 3 distinct trunks are in: with 5 trunks a tenth of the draws hold
            # only 2 sizes, which determine neither a parabola nor the law. A condition on the design (which
            # trunks), never on the losses, so it favours no outcome.
            need = min(MIN_SIZES_PER_BUDGET, self.n_units)
            for _ in range(20):
                drawn = np.bincount(rng.integers(0, self.n_units, self.n_units), minlength=self.n_units)
                if (drawn > 0).sum() >= need:
                    break
            return drawn[self.codes].astype(float)
        if self.groups is None:
            return np.bincount(rng.integers(0, self.n, self.n), minlength=self.n).astype(float)
        w = np.zeros(self.n)
        for g in self.groups:
            np.add.at(w, _resample_within_budget(g, self.params, rng), 1.0)
        return w


BOOTSTRAPS = ("auto", "trunk-effects", "run-effects", "trunk", "run")


class ParametricResampler:
    """Parametric bootstrap on the sweep's fixed design: new losses at the same (N, D) points around the law
    fitted to the whole table (Approach 3) (Davison & Hinkley 1997, "Bootstrap Methods and their Application",
    Sec. 2.2 and 3.8). Two levels with ``by_trunk`` (``--bootstrap trunk-effects``), one without
    (``run-effects``: independent runs).

    With trunks, the law's log residuals split into a trunk effect u_t (the mean residual of trunk t: the noise
    its branches share) and a point residual e_i, with variances s_u^2 = sum u_t^2 / (G - 2) (A and alpha absorb
    differences between sizes) and s_e^2 = sum e_i^2 / (n - G - 2) (trunk means, B and beta). A replicate first
    draws its own variances from their sampling distributions, sigma^2 = s^2 k / chi2_k with k those degrees of
    freedom (the scaled inverse chi-square of a normal variance), then one effect per trunk
    ~ N(0, sigma_u^2 - sigma_e^2 mean(1 / m_t)), shared by all its branches (a trunk mean of m_t runs carries
    sigma_e^2 / m_t of their own noise, drawn next), and one per run ~ N(0, sigma_e^2):
    log L* = fit + u*_t(i) + e*_i. Without trunks, every residual is a run's own: s_e^2 = sum r_i^2 / (n - 5).

    Why so: a sweep has few trunks (5 in the demo), so s_u rests on about 3 degrees of freedom. Resampling the 5
    observed effects, or drawing with s_u held fixed, treats it as known and under-covers; drawing it is the
    bootstrap's counterpart of a t quantile with G - 2 degrees of freedom. Measured with
    :mod:`wxscale.study.calibrate` on the demo grid at 5 % trunk and 1 % point noise, with Approach 3's basic
    interval: the resampled effects covered beta in 28 of 40 studies, these draws in 39 of 40.

    Resampling whole trunks with their branches (:class:`Resampler`) moves the sizes themselves: with the 5
    trunks of a typical sweep, most replicates then lack three sizes around a budget's optimum and give no
    IsoFLOP vertex at all; the design (which sizes were run) is chosen, not sampled, so it stays fixed here.
    Resampling single runs within a budget is no better without trunks: 5 sizes drawn with replacement
    understate the vertex's spread (the Approach-2 exponent's percentiles covered 167 of 200 studies at 2 %
    run noise, these draws 192 of 200; alpha and beta 49 and 52 of 60 against 54 and 55).
    """

    def __init__(self, runs: pd.DataFrame, law: ParametricFit, by_trunk: bool = True) -> None:
        codes = trunk_codes(runs) if by_trunk else None
        if by_trunk and codes is None:
            raise WxscaleError("the trunk-effects bootstrap needs a trunk_id column (continual-training sweeps); "
                               "use run-effects for independent runs")
        self.law = law
        self.codes = codes
        self.fitted = np.log(law.loss(runs["params"].to_numpy(float), runs["samples"].to_numpy(float)))
        self.world_losses = np.exp(self.fitted)  # the law at the design's points: the world without noise
        n = len(runs)
        r = np.log(runs["val_loss"].to_numpy(float)) - self.fitted
        if codes is None:
            self.n_units, self.dof_u, self.var_u, self.point_share = n, 1, 0.0, 0.0
            self.dof_e = max(n - 5, 1)  # the law's 5 parameters
            self.var_e = float((r**2).sum()) / self.dof_e
            self.described = f"drew new run noise around the fitted law ({n} runs)"
            return
        G = int(codes.max() + 1)
        u = np.bincount(codes, weights=r, minlength=G) / np.bincount(codes, minlength=G)
        e = r - u[codes]
        self.dof_u, self.dof_e = max(G - 2, 1), max(n - G - 2, 1)
        self.var_u = float(((u - u.mean()) ** 2).sum()) / self.dof_u
        self.var_e = float(((e - e.mean()) ** 2).sum()) / self.dof_e
        # A trunk's mean residual also averages its runs' own noise, var_e / (runs of the trunk); the draws add
        # that noise separately, so it is taken out of the trunk effects' variance.
        self.point_share = float(np.mean(1.0 / np.bincount(codes, minlength=G)))
        self.n_units = G
        self.described = f"drew new trunk and run noise around the fitted law ({G} trunks)"

    def draw(self, rng: np.random.Generator, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One replicate as (weight of each run, its loss): every run once, with new losses."""
        return np.ones_like(observed), self.losses(rng)

    def losses(self, rng: np.random.Generator) -> np.ndarray:
        var_e = self.var_e * self.dof_e / rng.chisquare(self.dof_e)
        noise = math.sqrt(var_e) * rng.normal(size=self.fitted.size)
        if self.codes is not None:
            var_u = self.var_u * self.dof_u / rng.chisquare(self.dof_u)
            noise += math.sqrt(max(var_u - self.point_share * var_e, 0.0)) * rng.normal(size=self.n_units)[self.codes]
        return np.exp(self.fitted + noise)


def make_resampler(runs: pd.DataFrame, bootstrap: str, by_budget: bool,
                   law: ParametricFit | None = None) -> tuple[Resampler | ParametricResampler, list[str]]:
    """The bootstrap scheme for ``runs`` and notes on the choice.

    ``auto``: new noise drawn around ``law`` (fitted here when not given) on the fixed design
    (:class:`ParametricResampler`), by trunk when the runs have ``trunk_id``; when the parametric law does not
    fit the runs, whole trunks, or single runs (``by_budget``: within each budget), are resampled instead.
    """
    if bootstrap not in BOOTSTRAPS:
        raise WxscaleError(f"--bootstrap must be one of {', '.join(BOOTSTRAPS)}, got {bootstrap!r}")
    has_trunks = trunk_codes(runs) is not None
    if bootstrap in ("trunk", "trunk-effects") and not has_trunks:
        raise WxscaleError(f"--bootstrap {bootstrap} needs a trunk_id column; these runs have none "
                           "(use run-effects or run)")
    independent = runs.drop(columns=["trunk_id"], errors="ignore")
    if bootstrap == "run":
        return Resampler(independent, by_budget), []
    if bootstrap == "trunk":
        return Resampler(runs, by_budget), []
    by_trunk = bootstrap == "trunk-effects" or (bootstrap == "auto" and has_trunks)
    if law is None and len(runs) >= MIN_POINTS_PARAMETRIC:
        N, D, L = (runs[c].to_numpy(float) for c in ("params", "samples", "val_loss"))
        law = parametric_fit(N, D, L, n_starts=16)
    if law is not None and law.converged:
        return ParametricResampler(runs, law, by_trunk=by_trunk), []
    if bootstrap != "auto":  # asked for explicitly: no silent fallback
        raise WxscaleError(f"--bootstrap {bootstrap} needs the parametric law (Approach 3) to fit the runs, and "
                           f"it does not ({law.message if law else 'too few runs'}); use --bootstrap "
                           f"{'trunk' if by_trunk else 'run'}")
    if by_trunk:
        return Resampler(runs, by_budget), [
            "bootstrap: the parametric law does not fit these runs, so whole trunks are resampled instead of drawing "
            "their effects (expect many unusable replicates with few trunks)"]
    return Resampler(independent, by_budget), [
        "bootstrap: the parametric law does not fit these runs, so runs are resampled instead of drawing new noise "
        "around it"]


def law_optima(law: ParametricFit, budgets: np.ndarray, flops_per_sample) -> np.ndarray:
    """N_opt(C) of a parametric law along each budget's IsoFLOP line D = C / flops_per_sample(N), by a bounded
    1-D search in log N (not the closed form: flops_per_sample need not be proportional to N)."""
    from scipy.optimize import minimize_scalar

    out = []
    for c in np.atleast_1d(budgets):
        res = minimize_scalar(lambda x, c=c: float(law.loss(np.exp(x), c / flops_per_sample(np.exp(x)))),
                              bounds=(0.0, 50.0), method="bounded", options={"xatol": 1e-10})
        out.append(float(np.exp(res.x)))
    return np.array(out)


def isoflop_fit(runs: pd.DataFrame, n_bootstrap: int = 200, level: float = 0.95, seed: int = 0,
                min_budgets: int = MIN_BUDGETS, progress: bool = False, bootstrap: str = "auto",
                law: ParametricFit | None = None) -> FitResult:
    """Approach 2: per-budget optima (isoflop.csv) and the power laws N_opt, D_opt, L_opt in C (fits.csv).

    Budgets with no interior minimum stay in the table (``interior = False``, optimum NaN, a ``note`` saying
    why) and out of the laws. Raises :class:`WxscaleError` when fewer than ``min_budgets`` budgets have one.
    ``bootstrap`` picks the scheme (:func:`make_resampler`); ``law`` is a parametric fit of the same runs to
    reuse as the residual bootstrap's mean.
    """
    runs = check_runs(runs)
    if not 0 < level < 1:
        raise WxscaleError(f"--level must be in (0, 1), got {level}")
    budgets = np.sort(runs["budget_flops"].unique())
    point = _optima(runs, budgets)
    good = point["interior"].to_numpy()
    if good.sum() < min_budgets:
        why = "; ".join(f"C={r.budget_flops:.3g}: {r.note}" for r in point.itertuples() if not r.interior)
        raise WxscaleError(
            f"Approach 2 needs at least {min_budgets} budgets with an interior loss minimum, found {int(good.sum())} "
            f"of {len(budgets)} budgets ({len(runs)} runs). {why}")
    laws = _power_laws(budgets[good], {q: point[q].to_numpy()[good] for q in ("n_opt", "d_opt", "l_opt")})

    # Bootstrap: resample trunks (or runs within each budget), redo the optima and the laws over the budgets that
    # keep an interior minimum (a budget whose resampled vertex leaves the sampled range is not extrapolated).
    rng = np.random.default_rng(seed)
    resampler, boot_notes = make_resampler(runs, bootstrap, by_budget=True, law=law)
    world_point, world_laws = _world_isoflop(runs, budgets, good, resampler.world_losses)
    # The centred interval needs a world whose noise-free IsoFLOP fit is known; resampled runs or trunks (whose
    # bias would be taken against the estimate itself) keep percentiles, the scheme ARCHITECTURE.md names.
    parametric_world = resampler.world_losses is not None
    kind = INTERVALS["2"] if world_laws is not None else "percentile"
    c_all, n_all, l_all = (runs[k].to_numpy(float) for k in ("budget_flops", "params", "val_loss"))
    groups = [np.flatnonzero(c_all == c) for c in budgets]
    fps_at = flops_per_sample_fn(runs)
    opt_boot = {q: np.full((n_bootstrap, len(budgets)), np.nan) for q in ("n_opt", "d_opt", "l_opt")}
    law_boot = {q: np.full((n_bootstrap, 2), np.nan) for q in laws}
    iterator = range(n_bootstrap)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="bootstrap (Approach 2)", unit="fit")
    with _one_blas_thread():
        for r in iterator:
            w, l_rep = resampler.draw(rng, l_all)
            for j, g in enumerate(groups):
                if good[j]:
                    x_opt, l_opt = _vertex(np.log10(n_all[g]), l_rep[g], w=w[g])
                    opt_boot["n_opt"][r, j], opt_boot["l_opt"][r, j] = 10**x_opt, l_opt
            opt_boot["d_opt"][r] = budgets / fps_at(opt_boot["n_opt"][r])
            use = np.isfinite(opt_boot["n_opt"][r])
            if use.sum() >= min_budgets:  # the budgets whose minimum is interior in the data and this replicate
                for q, kv in _power_laws(budgets[use], {q: v[r, use] for q, v in opt_boot.items()}).items():
                    law_boot[q][r] = kv
    notes = []
    iso = point.copy()
    for q in opt_boot:
        world = (point if world_point is None else world_point)[q].to_numpy(float)
        lo_hi = [bootstrap_interval(opt_boot[q][:, j], level, kind, point[q].iloc[j], world[j], log=True)
                 if good[j] else (math.nan, math.nan) for j in range(len(budgets))]
        iso[f"{q}_lo"], iso[f"{q}_hi"] = [v[0] for v in lo_hi], [v[1] for v in lo_hi]
    iso = iso[ISOFLOP_COLUMNS]
    notes += [f"Approach 2: C={r.budget_flops:.3g} left out: {r.note}" for r in iso.itertuples() if not r.interior]
    n_ok = int(np.isfinite(law_boot["n_opt"][:, 1]).sum())
    notes += boot_notes
    notes.append(f"Approach 2: bootstrap {resampler.described}, {kind} intervals; {n_ok}/{n_bootstrap} "
                 "replicates usable")
    if n_ok < n_bootstrap:
        notes.append(f"Approach 2: {n_bootstrap - n_ok}/{n_bootstrap} bootstrap replicates kept fewer than "
                     f"{min_budgets} budgets with an interior minimum; the intervals count them as lying beyond "
                     "their ends (half each side), so they widen, and vanish (NaN) past "
                     f"{100 * (1 - level):.0f} % unusable (more sizes per budget, centred on the optimum, help)")
    if world_laws is not None:
        own = fit_power_law(budgets[good], law_optima(resampler.law, budgets[good], fps_at))[1]
        notes.append("Approach 2: in the bootstrap's world (the fitted parametric law), the IsoFLOP fit of its "
                     f"noise-free losses gives an N_opt exponent of {world_laws['n_opt'][1]:.3f}, the law's own is "
                     f"{own:.3f}: their gap is this design's IsoFLOP bias there, which the intervals do not correct")
    elif parametric_world:
        notes.append("Approach 2: the bootstrap world's noise-free losses give fewer than "
                     f"{MIN_BUDGETS} interior IsoFLOP minima, so the intervals are percentiles of its replicates")
    fits = pd.DataFrame(_law_rows("2", laws, law_boot, int(good.sum()), level, n_bootstrap, world_laws, kind),
                        columns=FITS_COLUMNS)
    return FitResult(fits=fits, replicates=_replicate_rows("2", law_boot), isoflop=iso, level=level, notes=notes)


# ------------------------------------------------------------------------------------------ Approach 3

@dataclass
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = math.nan
    converged: bool = False
    message: str = ""

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        return self.E + self.A / np.asarray(n, float) ** self.alpha + self.B / np.asarray(d, float) ** self.beta

    def allocation(self) -> tuple[float, float, float]:
        """(G, a, b): N_opt = G (C/c)^a, D_opt = G^-1 (C/c)^b (Hoffmann et al. 2022, eq. 4)."""
        s = self.alpha + self.beta
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / s), self.beta / s, self.alpha / s


def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                     w: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Mean Huber loss (divided by delta, so it reads like a mean |residual|) and its gradient.

    theta = (a, b, e, alpha, beta); prediction LSE(a - alpha log N, b - beta log D, e) (Besiroglu et al. 2024).
    """
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * log_n, b - beta * log_d
    m = np.maximum(np.maximum(t1, t2), e)
    p1, p2, p3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = p1 + p2 + p3
    r = m + np.log(s) - log_l
    absr = np.abs(r)
    small = absr <= delta
    h = np.where(small, 0.5 * r * r, delta * (absr - 0.5 * delta))
    dh = np.where(small, r, np.copysign(delta, r)) * w / s  # / s turns p_j into the softmax d pred / d t_j
    norm = delta * w.sum()
    g1, g2 = dh @ p1, dh @ p2
    grad = np.array([g1, g2, dh @ p3, -(dh * log_n) @ p1, -(dh * log_d) @ p2]) / norm
    return float(w @ h) / norm, grad


def start_grid(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """Starting points in the spirit of Besiroglu et al.'s grid, placed relative to the data's scale.

    Their a, b in {0, 5, ..., 25} suit N and D in the billions; here a (likewise b) is centred where A / N^alpha
    has the size of the observed loss spread, so the grid also fits small weather emulators and losses << 1.
    """
    exps = np.array([0.1, 0.25, 0.5, 1.0, 2.0])
    spread = np.log(max(np.ptp(np.exp(log_l)), 1e-3 * np.exp(log_l).min()))
    offsets = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    e_grid = np.log(np.exp(log_l).min()) + np.array([-4.0, -2.0, -1.0, -0.3, -0.1, -0.02])
    grid = []
    for alpha in exps:
        for a in spread + alpha * log_n.mean() + offsets:
            for beta in exps:
                for b in spread + beta * log_d.mean() + offsets:
                    for e in e_grid:
                        grid.append((a, b, e, alpha, beta))
    return np.array(grid)


def _screen(grid: np.ndarray, log_n, log_d, log_l, w, delta, keep: int) -> np.ndarray:
    """The ``keep`` grid points with the lowest objective (evaluated at once, in chunks)."""
    values = []
    for chunk in np.array_split(grid, max(1, grid.size * log_n.size // 2_000_000)):
        a, b, e, alpha, beta = (chunk[:, i:i + 1] for i in range(5))
        t = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))
        m = t.max(axis=0)
        r = m + np.log(np.exp(t - m).sum(axis=0)) - log_l
        h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
        values.append(h @ w)
    return grid[np.argsort(np.concatenate(values))[:keep]]


_BOUNDS = [(None, None), (None, None), (None, None), (0.0, 10.0), (0.0, 10.0)]


def _minimise(starts: np.ndarray, args: tuple) -> tuple[np.ndarray, float, list]:
    best, best_f, results = None, math.inf, []
    for x0 in starts:
        res = minimize(_huber_objective, x0, args=args, jac=True, method="L-BFGS-B", bounds=_BOUNDS,
                       options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
        results.append(res)
        if np.isfinite(res.fun) and res.fun < best_f:
            best, best_f = res.x, float(res.fun)
    return best, best_f, results


def _as_fit(theta: np.ndarray, f: float) -> ParametricFit:
    a, b, e, alpha, beta = theta
    with np.errstate(over="ignore"):
        return ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                             beta=float(beta), objective=f)


def _check_converged(fit: ParametricFit, results: list, f_best: float, require_agreement: bool) -> ParametricFit:
    """A law is reported only if finite, away from the exponent bounds, and (``require_agreement``) reached by
    at least 2 starts: a minimum found once may be a start's accident."""
    values = [fit.E, fit.A, fit.B, fit.alpha, fit.beta]
    agree = sum(1 for r in results if np.isfinite(r.fun) and r.fun <= f_best * (1 + 1e-6) + 1e-12)
    if not all(np.isfinite(values)):
        fit.message = "parameters are not finite"
    elif not (1e-3 < fit.alpha < 9.99 and 1e-3 < fit.beta < 9.99):
        fit.message = (f"an exponent ran to its bound (alpha={fit.alpha:.3g}, beta={fit.beta:.3g}): the loss does "
                       "not follow the law over the sampled N and D")
    elif require_agreement and agree < 2:
        fit.message = f"only one of {len(results)} starts reached the best objective; the minimum is not stable"
    else:
        fit.converged, fit.message = True, f"{agree} of {len(results)} starts agree"
    return fit


def parametric_fit(params: np.ndarray, samples: np.ndarray, loss: np.ndarray, weights: np.ndarray | None = None,
                   n_starts: int = 32, delta: float = HUBER_DELTA, starts: np.ndarray | None = None,
                   require_agreement: bool = True) -> ParametricFit:
    """Fit L = E + A/N^alpha + B/D^beta (Approach 3) by Huber-on-log-residuals with multi-start L-BFGS.

    Without ``starts``, every point of a data-scaled grid (:func:`start_grid`, 3750 points) is scored at once
    and L-BFGS runs from the ``n_starts`` best. The result's ``converged`` says whether it may be reported;
    ``message`` says why not. Bootstrap refits pass their weights, a smaller ``n_starts`` and
    ``require_agreement=False``.
    """
    log_n, log_d, log_l = np.log(params), np.log(samples), np.log(loss)
    w = np.ones_like(log_n) if weights is None else np.asarray(weights, float)
    args = (log_n, log_d, log_l, w, delta)
    with _one_blas_thread(), np.errstate(over="ignore", invalid="ignore"):
        if starts is None:
            starts = _screen(start_grid(log_n, log_d, log_l), *args, keep=n_starts)
        theta, f, results = _minimise(np.atleast_2d(starts), args)
    if theta is None:
        return ParametricFit(*(math.nan,) * 5, message="no start gave a finite objective")
    return _check_converged(_as_fit(theta, f), results, f, require_agreement)


def _theta(fit: ParametricFit) -> np.ndarray:
    return np.array([np.log(fit.A), np.log(fit.B), np.log(fit.E), fit.alpha, fit.beta])


def flops_per_param_sample(runs: pd.DataFrame) -> tuple[float, float]:
    """c in C = c N D (geometric mean of flops_per_sample / N) and the largest relative deviation from it."""
    ratio = runs["flops_per_sample"].to_numpy(float) / runs["params"].to_numpy(float)
    c = float(np.exp(np.log(ratio).mean()))
    return c, float(np.abs(ratio / c - 1).max())


def parametric_law_fit(runs: pd.DataFrame, n_bootstrap: int = 200, level: float = 0.95, seed: int = 0,
                       n_starts: int = 32, bootstrap_starts: int = 4, progress: bool = False,
                       bootstrap: str = "auto") -> FitResult:
    """Approach 3 with bootstrap intervals: rows E, A, B, alpha, beta, G, c and the laws n_opt, d_opt.

    The allocation uses C = c N D with c from :func:`flops_per_param_sample` (6 for Chinchilla's tokens).
    Each bootstrap replicate (whole trunks when the runs have ``trunk_id``, else single runs) is refitted from
    scratch: its own start grid is scored on its own data and L-BFGS runs from the ``bootstrap_starts`` best
    points, so no replicate is pulled toward the full-data optimum. Replicates that do not converge are counted
    (``n_bootstrap_ok``) and widen the intervals (:func:`percentile_interval`).
    """
    runs = check_runs(runs, ("params", "samples", "flops_per_sample", "val_loss"))
    if not 0 < level < 1:
        raise WxscaleError(f"--level must be in (0, 1), got {level}")
    n = len(runs)
    if n < MIN_POINTS_PARAMETRIC:
        raise WxscaleError(f"Approach 3 needs at least {MIN_POINTS_PARAMETRIC} runs (5 parameters), found {n}")
    N, D, L = (runs[c].to_numpy(float) for c in ("params", "samples", "val_loss"))
    if np.unique(N).size < 2 or np.unique(D).size < 2:
        raise WxscaleError("Approach 3 needs runs at 2 or more sizes N and sample counts D; "
                           f"found {np.unique(N).size} N and {np.unique(D).size} D")
    best = parametric_fit(N, D, L, n_starts=n_starts)
    if not best.converged:
        raise WxscaleError(f"Approach 3 fit did not converge ({best.message}); no parametric law is reported")
    c, spread = flops_per_param_sample(runs)
    notes = []
    if spread > 0.05:
        notes.append(f"Approach 3: flops_per_sample / N varies by up to {spread:.0%} around c={c:.3g}; "
                     "the closed-form allocation C = c N D is approximate")

    rng = np.random.default_rng(seed)
    resampler, boot_notes = make_resampler(runs, bootstrap, by_budget=False, law=best)
    notes += boot_notes
    names = ["E", "A", "B", "alpha", "beta", "G", "n_opt_a", "d_opt_b"]
    boot = np.full((n_bootstrap, len(names)), np.nan)
    iterator = range(n_bootstrap)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="bootstrap (Approach 3)", unit="fit")
    for r in iterator:
        w, l_rep = resampler.draw(rng, L)
        keep = w > 0
        if np.unique(N[keep]).size < 2 or np.unique(D[keep]).size < 2:
            continue  # the draw cannot determine the law: an unusable replicate
        fit = parametric_fit(N[keep], D[keep], l_rep[keep], weights=w[keep], n_starts=bootstrap_starts,
                             require_agreement=False)
        if fit.converged:
            boot[r] = [fit.E, fit.A, fit.B, fit.alpha, fit.beta, *fit.allocation()]
    ok = int(np.isfinite(boot[:, 0]).sum())
    if n_bootstrap and ok < n_bootstrap / 2:
        raise WxscaleError(f"Approach 3: only {ok} of {n_bootstrap} bootstrap refits converged; the law is not "
                           "determined by these runs (no parametric law is reported)")
    notes.append(f"Approach 3: bootstrap {resampler.described}, {INTERVALS['3']} intervals; {ok}/{n_bootstrap} "
                 "replicates usable" + ("" if ok == n_bootstrap else
                                        " (the others count as lying beyond the intervals' ends, half each side)"))

    G, a, b = best.allocation()
    point = dict(zip(names, [best.E, best.A, best.B, best.alpha, best.beta, G, a, b]))
    rows = []
    base = {"approach": "3", "n_points": n, "level": level, "n_bootstrap": n_bootstrap, "n_bootstrap_ok": ok,
            "interval": INTERVALS["3"]}
    for j, q in enumerate(names[:6]):
        lo, hi = bootstrap_interval(boot[:, j], level, INTERVALS["3"], point[q])
        col = "exponent" if q in ("alpha", "beta") else "coefficient"
        rows.append({"quantity": q, col: point[q], f"{col}_lo": lo, f"{col}_hi": hi, f"world_{col}": point[q],
                     **base})
    rows.append({"quantity": "flops_per_param_sample", "coefficient": c, **base})
    # N_opt = G c^-a C^a and D_opt = G^-1 c^-b C^b, as laws in the same form as Approach 2's.
    law_boot = {"n_opt": np.stack([boot[:, 5] * c ** -boot[:, 6], boot[:, 6]], axis=1),
                "d_opt": np.stack([c ** -boot[:, 7] / boot[:, 5], boot[:, 7]], axis=1)}
    laws = {"n_opt": (G * c**-a, a), "d_opt": (c**-b / G, b)}
    rows += _law_rows("3", laws, law_boot, n, level, n_bootstrap)
    fits = pd.DataFrame(rows, columns=FITS_COLUMNS)
    reps = pd.concat([pd.DataFrame({"approach": "3", "quantity": q, "replicate": np.arange(n_bootstrap),
                                    "coefficient": boot[:, j] if q not in ("alpha", "beta") else np.nan,
                                    "exponent": boot[:, j] if q in ("alpha", "beta") else np.nan})
                      for j, q in enumerate(names[:6])] + [_replicate_rows("3", law_boot)], ignore_index=True)
    return FitResult(fits=fits, replicates=reps, level=level, notes=notes)


# ------------------------------------------------------------------------------------------ both, predict

def fit_scaling(runs: pd.DataFrame, approach: str = "both", n_bootstrap: int = 200, level: float = 0.95,
                seed: int = 0, progress: bool = False, bootstrap: str = "auto") -> FitResult:
    """Approach 2 and/or 3 ("2", "3", "both"). With "both", an approach that cannot be fitted is recorded in
    ``errors`` (and not reported) while the other's results are kept; if none can be fitted, the first error
    is raised."""
    if approach not in ("2", "3", "both"):
        raise WxscaleError(f"--approach must be 2, 3 or both, got {approach!r}")
    if n_bootstrap < 0:
        raise WxscaleError(f"--n-bootstrap must be >= 0, got {n_bootstrap}")
    wanted = ["2", "3"] if approach == "both" else [approach]
    parts, errors = [], {}
    for a in wanted:
        fn = isoflop_fit if a == "2" else parametric_law_fit
        try:
            parts.append(fn(runs, n_bootstrap=n_bootstrap, level=level, seed=seed, progress=progress,
                            bootstrap=bootstrap))
        except WxscaleError as err:
            if len(wanted) == 1:
                raise
            errors[a] = str(err)
    if not parts:
        raise WxscaleError("; ".join(f"Approach {k}: {v}" for k, v in errors.items()))
    return FitResult(fits=pd.concat([p.fits for p in parts], ignore_index=True),
                     replicates=pd.concat([p.replicates for p in parts], ignore_index=True),
                     isoflop=next((p.isoflop for p in parts if p.isoflop is not None), None), level=level,
                     notes=[n for p in parts for n in p.notes], errors=errors)


def _row(fits: pd.DataFrame, approach: str, quantity: str) -> pd.Series | None:
    hit = fits[(fits["approach"].astype(str) == approach) & (fits["quantity"] == quantity)]
    return None if hit.empty else hit.iloc[0]


def replicate_values(reps: pd.DataFrame, approach: str, quantity: str, col: str) -> np.ndarray:
    """One column of one quantity's bootstrap replicates, in replicate order (NaN where a refit failed)."""
    hit = reps[(reps["approach"].astype(str) == approach) & (reps["quantity"] == quantity)]
    return hit.sort_values("replicate")[col].to_numpy(float)


def law_replicates(reps: pd.DataFrame, approach: str, quantity: str, c: np.ndarray | float) -> np.ndarray:
    """k C^a for every bootstrap replicate of a power law: [replicate, len(c)]."""
    k = replicate_values(reps, approach, quantity, "coefficient")
    a = replicate_values(reps, approach, quantity, "exponent")
    return k[:, None] * np.atleast_1d(c)[None, :] ** a[:, None]


def law_band(fit: FitResult, law: pd.Series, c: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k C^a, lower end, upper end) of one fits.csv power law (``law``, its row) at budgets ``c``: the row's
    interval kind over the replicates' laws evaluated at each C (jointly, not from the marginal intervals)."""
    c = np.atleast_1d(np.asarray(c, float))
    approach = str(law["approach"])
    kind = law.get("interval")
    kind = kind if isinstance(kind, str) else "percentile"  # fits.csv from before the column had percentiles only
    point = law["coefficient"] * c ** law["exponent"]
    world = point
    if np.isfinite(law.get("world_coefficient", math.nan)) and np.isfinite(law.get("world_exponent", math.nan)):
        world = law["world_coefficient"] * c ** law["world_exponent"]
    pred = law_replicates(fit.replicates, approach, law["quantity"], c)
    lo_hi = np.array([bootstrap_interval(pred[:, j], fit.level, kind, point[j], world[j], log=True)
                      for j in range(c.size)]).reshape(-1, 2)
    return point, lo_hi[:, 0], lo_hi[:, 1]


def predict(fits: FitResult, budgets: float | list[float] | np.ndarray) -> pd.DataFrame:
    """Predicted N_opt, D_opt and loss at budgets C (typically beyond the sweep), per fitted approach.

    Intervals are those of the laws' rows in fits.csv (:func:`law_band`). Approach 2 uses its L_opt law;
    Approach 3 evaluates L(N_opt, D_opt) with its parameters.
    """
    c = np.atleast_1d(np.asarray(budgets, float))
    if not (np.isfinite(c).all() and (c > 0).all()):
        raise WxscaleError(f"--predict budgets must be finite FLOPs > 0, got {list(c)}")
    t, reps, level = fits.fits, fits.replicates, fits.level
    out = []
    for approach in sorted(t["approach"].astype(str).unique()):
        rows = [{"budget_flops": C, "approach": approach, "level": level} for C in c]
        for q in ("n_opt", "d_opt", "l_opt"):
            law = _row(t, approach, q)
            if law is None:
                continue
            point, lo, hi = law_band(fits, law, c)
            for j, row in enumerate(rows):
                row[q], row[f"{q}_lo"], row[f"{q}_hi"] = point[j], lo[j], hi[j]
        if approach == "3" and _row(t, "3", "E") is not None:
            p = {q: _row(t, "3", q) for q in ("E", "A", "B", "alpha", "beta")}
            law = ParametricFit(*(p[q]["coefficient"] for q in "EAB"), p["alpha"]["exponent"], p["beta"]["exponent"])
            E, A, B = (replicate_values(reps, "3", q, "coefficient")[:, None] for q in "EAB")
            al, be = (replicate_values(reps, "3", q, "exponent")[:, None] for q in ("alpha", "beta"))
            n_b, d_b = law_replicates(reps, "3", "n_opt", c), law_replicates(reps, "3", "d_opt", c)
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                l_b = E + A / n_b**al + B / d_b**be
            for j, row in enumerate(rows):
                row["l_opt"] = float(law.loss(row["n_opt"], row["d_opt"]))
                row["l_opt_lo"], row["l_opt_hi"] = bootstrap_interval(l_b[:, j], level, INTERVALS["3"],
                                                                      row["l_opt"])
        out += rows
    cols = ["budget_flops", "approach", "n_opt", "n_opt_lo", "n_opt_hi", "d_opt", "d_opt_lo", "d_opt_hi", "l_opt",
            "l_opt_lo", "l_opt_hi", "level"]
    return pd.DataFrame(out).reindex(columns=cols)


# ------------------------------------------------------------------------------------------ files


def write_fit(result: FitResult, out_dir: str | Path) -> list[Path]:
    """isoflop.csv (if Approach 2 ran), fits.csv and fits_bootstrap.csv (the replicates, for :func:`predict`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if result.isoflop is not None:
        write_csv(out / "isoflop.csv", result.isoflop)
        written.append(out / "isoflop.csv")
    for name, df in (("fits.csv", result.fits), ("fits_bootstrap.csv", result.replicates)):
        write_csv(out / name, df)
        written.append(out / name)
    return written


def load_fit(out_dir: str | Path) -> FitResult:
    """Read back what :func:`write_fit` wrote (e.g. to :func:`predict` later)."""
    out = Path(out_dir)
    if not (out / "fits.csv").is_file():
        raise WxscaleError(f"{out}: no fits.csv (run `wxscale fit` first)")
    fits = pd.read_csv(out / "fits.csv", dtype={"approach": str})
    reps_path = out / "fits_bootstrap.csv"
    reps = (pd.read_csv(reps_path, dtype={"approach": str}) if reps_path.is_file()
            else pd.DataFrame(columns=["approach", "quantity", "replicate", "coefficient", "exponent"]))
    iso = pd.read_csv(out / "isoflop.csv") if (out / "isoflop.csv").is_file() else None
    level = float(fits["level"].dropna().iloc[0]) if fits["level"].notna().any() else 0.95
    return FitResult(fits=fits, replicates=reps, isoflop=iso, level=level)

