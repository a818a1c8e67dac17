"""`wxscale sweep extend SWEEP_DIR`: add what a sweep needs for its IsoFLOP minima, and say what and why.

A sweep planned before its data's scale is known often brackets no minimum: on a small dataset the best size at
a small budget can lie below the smallest size planned. Extend reads what has run (runs.csv) and, for each
budget without an interior minimum (:func:`wxscale.study.fit.fit_isoflop_parabola`: a convex parabola in log N
whose vertex lies strictly inside the sampled sizes), adds ladder sizes where the minimum must be:

- the vertex of a convex fit lies beyond the sampled sizes, or the lowest loss is at an end: the next ladder sizes
  on that side (below s0 too: the ladder has s-1 and s-2);
- the loss rises with size at every sampled size: smaller sizes too, or, where the smaller sizes would be too
  small to mean anything (below the ladder's bottom or ``--min-size``), a larger budget instead (twice the
  largest), where those sizes have the data to be worth more than a smaller model;
- no minimum and the lowest loss in the middle (noise, a concave fit): one size on each side.

`sweep run` then runs only the new runs (trunks are continual: a larger budget costs only the trunks' new stretch,
see :func:`wxscale.study.plan.add_points`). Extend stops, and says why, when ``--target`` budgets (default 3) have
interior minima, when the ladder ends, or when ``--max-flops`` (the whole sweep's continual training compute)
would be exceeded. Every round is appended to ``SWEEP_DIR/extend.csv``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wxscale.errors import WxscaleError
from wxscale.files import write_csv
from wxscale.study.plan import add_points, continual_flops, load_plan, repetition_warnings

EXTEND_CSV = "extend.csv"
TARGET_MINIMA = 3


@dataclass
class ExtendResult:
    """What one round of extend decided: the budgets' diagnosis, the additions, and why it stopped (if it did)."""

    diagnosis: pd.DataFrame  # one row per budget
    actions: list[dict] = field(default_factory=list)  # budget, action, sizes, reason
    added: pd.DataFrame = field(default_factory=pd.DataFrame)  # new plan rows
    stop: str = ""  # why nothing more is added ("" while it still adds)
    n_interior: int = 0

    @property
    def done(self) -> bool:
        return bool(self.stop)


def diagnose(runs: pd.DataFrame, ladder: list[str]) -> pd.DataFrame:
    """Per budget: the sampled sizes, whether the minimum is interior, and on which side to look if not.

    ``side`` is "" (interior), "below", "above" or "both"; ``rises`` says the loss rises with size at every
    sampled size."""
    from wxscale.study.fit import fit_isoflop_parabola

    out = []
    for c, g in runs.groupby("budget_flops"):
        g = g.sort_values("params")
        sizes = list(g["size"])
        loss = g["val_loss"].to_numpy(float)
        fit = fit_isoflop_parabola(g["params"].to_numpy(float), loss)
        best = int(np.argmin(loss))
        rises = len(loss) >= 2 and bool(np.all(np.diff(loss) > 0))
        side = ""
        if not fit["interior"]:
            # A convex fit whose vertex lies outside says on which side the minimum is, even where the lowest
            # measured loss is inside (far sizes on one side skew the parabola); else the lowest loss says it.
            convex_below = fit["n_below"] == 0 and fit["n_above"] > 0
            convex_above = fit["n_above"] == 0 and fit["n_below"] > 0
            if rises or convex_below or (best == 0 and not convex_above):
                side = "below"
            elif convex_above or best == len(loss) - 1:
                side = "above"
            else:
                side = "both"
        out.append({"budget_flops": float(c), "sizes": ",".join(sizes), "n_sizes": len(sizes),
                    "best_size": sizes[best], "best_loss": float(loss[best]), "interior": bool(fit["interior"]),
                    "rises": rises, "side": side, "note": fit["note"],
                    "lo": min(ladder.index(s) for s in sizes), "hi": max(ladder.index(s) for s in sizes)})
    return pd.DataFrame(out)


def _proposals(d: pd.Series, ladder: list[str], floor: int, per_side: int) -> tuple[list[str], str]:
    """Sizes to add at one budget, and the reason in words; [] with the reason when the ladder ends it."""
    below = [ladder[i] for i in range(d["lo"] - 1, max(floor, d["lo"] - per_side) - 1, -1)]
    above = [ladder[i] for i in range(d["hi"] + 1, min(len(ladder), d["hi"] + 1 + per_side))]
    if d["side"] == "below":
        why = ("the loss rises with size at every sampled size" if d["rises"]
               else f"the fitted minimum lies below the smallest size (lowest loss at {d['best_size']})")
        return below, why
    if d["side"] == "above":
        return above, f"the fitted minimum lies above the largest size (lowest loss at {d['best_size']})"
    return below[:1] + above[:1], f"no interior minimum ({d['note'] or 'not convex'}); one size on each side"


def extend_sweep(sweep_dir: Path, target: int = TARGET_MINIMA, max_flops: float | None = None,
                 min_size: str | None = None, per_side: int = 2, write: bool = True) -> ExtendResult:
    """One round: diagnose the finished runs and add what is missing to the plan (see the module docstring)."""
    from wxscale.model import LADDER
    from wxscale.study.fit import check_runs
    from wxscale.study.lr_scan import rates_for
    from wxscale.study.sweep import collect_runs

    sweep_dir = Path(sweep_dir)
    spec, plan = load_plan(sweep_dir)
    ladder = list(LADDER)
    if min_size is not None and min_size not in LADDER:
        raise WxscaleError(f"--min-size {min_size!r}: not a ladder size ({', '.join(ladder)})")
    floor = ladder.index(min_size) if min_size else 0
    runs = collect_runs(sweep_dir)
    done = set(runs["run_id"]) if len(runs) else set()
    missing = [r for r in plan["run_id"] if r not in done]
    if missing:
        raise WxscaleError(f"{sweep_dir}: {len(missing)} planned run(s) have not finished ({', '.join(missing[:4])}"
                           f"{'...' if len(missing) > 4 else ''}); run `wxscale sweep run {sweep_dir}` first")
    if "role" in runs.columns:
        # Held-out budgets stay held out.
        runs = runs[runs["role"].astype(object).fillna("").astype(str) != "validation"]
    runs = check_runs(runs, source=str(sweep_dir / "runs.csv"))
    diag = diagnose(runs, ladder)
    n_interior = int(diag["interior"].sum())
    result = ExtendResult(diagnosis=diag, n_interior=n_interior)
    if n_interior >= target:
        result.stop = f"done: {n_interior} budget(s) have an interior minimum (target {target})"
        return _log(sweep_dir, result, write)

    points: list[tuple[float, str]] = []
    larger_budget = False
    for d in diag[~diag["interior"]].itertuples(index=False):
        d = pd.Series(d._asdict())
        sizes, why = _proposals(d, ladder, floor, per_side)
        if d["side"] == "below" and not sizes:
            larger_budget = True
            bottom = ladder[floor]
            result.actions.append({"budget_flops": d["budget_flops"], "action": "larger budget", "sizes": "",
                                   "reason": f"{why}, and sizes below {bottom} would be too small to mean "
                                             f"anything ({'--min-size' if min_size else 'the ladder ends'}): a "
                                             "larger budget instead, where the sizes have data to use"})
            continue
        if not sizes:
            result.actions.append({"budget_flops": d["budget_flops"], "action": "none", "sizes": "",
                                   "reason": f"{why}, but the ladder ends there"})
            continue
        points += [(d["budget_flops"], s) for s in sizes]
        result.actions.append({"budget_flops": d["budget_flops"], "action": "add sizes", "sizes": ",".join(sizes),
                               "reason": why})
    if larger_budget:
        top = max(spec.budgets)
        c_new = 2 * top
        sizes_top = list(plan.loc[plan["budget_flops"] == top, "size"])
        points += [(c_new, s) for s in sizes_top]
        result.actions.append({"budget_flops": c_new, "action": "add budget", "sizes": ",".join(sizes_top),
                               "reason": f"twice the largest budget ({top:.3g}), at the sizes run there"})

    # Keep the additions within --max-flops, budget by budget (cheapest first), and say what was left out.
    lr = rates_for(sweep_dir, [s for _, s in points])
    kept: list[tuple[float, str]] = []
    over = []
    for c in sorted({c for c, _ in points}):
        group = [p for p in points if p[0] == c]
        if max_flops is not None:
            _, _, trial = add_points(sweep_dir, kept + group, lr=lr, write=False)
            if continual_flops(trial) > max_flops:
                over.append(c)
                continue
        kept += group
    for a in result.actions:
        if a["budget_flops"] in over:
            a["action"], a["reason"] = "none", a["reason"] + f"; not added: the sweep would exceed --max-flops " \
                                                           f"{max_flops:.3g}"
    added, skipped, new_plan = add_points(sweep_dir, kept, lr=lr, write=write) if kept else (pd.DataFrame(), [], plan)
    result.added = added
    for line in skipped:
        result.actions.append({"budget_flops": math.nan, "action": "skipped", "sizes": "", "reason": line})
    if added.empty:
        limits = [a["reason"] for a in result.actions]
        by_flops = any("--max-flops" in r for r in limits)
        result.stop = (f"stopped: {n_interior} of {target} interior minima, and "
                       + ("--max-flops ends it" if by_flops else "the ladder (or the step limits) ends it"))
    return _log(sweep_dir, result, write)


def _log(sweep_dir: Path, result: ExtendResult, write: bool) -> ExtendResult:
    if not write:
        return result
    path = Path(sweep_dir) / EXTEND_CSV
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    rnd = int(old["round"].max()) + 1 if len(old) else 1
    rows = [{"round": rnd, **a, "added_runs": len(result.added), "n_interior": result.n_interior,
             "stop": result.stop} for a in result.actions]
    if not rows:
        rows = [{"round": rnd, "budget_flops": math.nan, "action": "none", "sizes": "", "reason": "",
                 "added_runs": 0, "n_interior": result.n_interior, "stop": result.stop}]
    write_csv(path, pd.concat([old, pd.DataFrame(rows)], ignore_index=True))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, help="a sweep dir whose planned runs have finished")
    parser.add_argument("--target", type=int, default=TARGET_MINIMA,
                        help=f"stop when this many budgets have an interior minimum (default {TARGET_MINIMA})")
    parser.add_argument("--max-flops", type=float, default=None,
                        help="the most training FLOPs the whole sweep may spend (continual: trunks + cooldowns)")
    parser.add_argument("--min-size", default=None,
                        help="the smallest ladder size worth adding (default: the ladder's bottom, s-2)")
    parser.add_argument("--per-side", type=int, default=2, help="sizes added on a side per round (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be added, change nothing")


def run(args: argparse.Namespace) -> int:
    if args.target < 1 or args.per_side < 1:
        raise WxscaleError("--target and --per-side must be >= 1")
    result = extend_sweep(args.sweep_dir, target=args.target, max_flops=args.max_flops, min_size=args.min_size,
                          per_side=args.per_side, write=not args.dry_run)
    d = result.diagnosis
    print(d[["budget_flops", "sizes", "best_size", "interior", "side", "note"]].to_string(index=False))
    for a in result.actions:
        c = f"C={a['budget_flops']:.3g}" if np.isfinite(a["budget_flops"]) else ""
        print(f"{c} {a['action']}{': ' + a['sizes'] if a['sizes'] else ''} ({a['reason']})".strip())
    if len(result.added):
        verb = "would add" if args.dry_run else "added"
        print(f"{verb} {len(result.added)} run(s): {', '.join(result.added['run_id'])}")
        for line in repetition_warnings(result.added):
            print(line)
        if not args.dry_run:
            print(f"next: wxscale sweep run {args.sweep_dir} (runs only the new runs), then extend again")
    if result.stop:
        print(result.stop)
    return 0
