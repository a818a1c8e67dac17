"""`wxscale sweep status DIR`: what a sweep has done, is running, or failed; collects runs.csv.

When the plan was priced (`wxscale sweep plan --cost`, cost.csv), it also shows the device-hours spent against
those planned: per run that has a summary.json, its own wall time (a branch's summary counts the trunk's time up
to the branch point too, which is subtracted) times the devices it ran on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from wxscale.study.cost import read_costs
from wxscale.study.sweep import collect_runs, runs_dir, sweep_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--all", action="store_true", help="list every run, not only the counts and problems")


def spent_device_hours(run_dir: Path) -> float | None:
    """Device-hours a run has spent so far by its summary.json (None before it has one): its own wall time,
    without the trunk's time that a branch's summary carries over from the checkpoint it started from."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except ValueError:
        return None
    wall = float(s.get("wall_s") or 0.0)
    init_from = s.get("init_from")
    if init_from:
        meta = Path(init_from) / "meta.json"
        try:
            wall -= float(json.loads(meta.read_text()).get("wall_s") or 0.0)
        except (OSError, ValueError):
            pass  # the trunk's checkpoint is gone: count the whole wall time (an over-estimate, never hidden)
    return max(wall, 0.0) * int(s.get("world_size") or 1) / 3600


def cost_table(sweep_dir: Path, table: pd.DataFrame) -> pd.DataFrame | None:
    """Planned against spent device-hours per run, or None when the plan was not priced."""
    planned = read_costs(sweep_dir)
    if planned is None:
        return None
    out = planned[["run_id", "kind", "device_hours"]].rename(columns={"device_hours": "planned_device_hours"})
    out["state"] = out["run_id"].map(dict(zip(table["run_id"], table["state"], strict=True)))
    out["spent_device_hours"] = [spent_device_hours(runs_dir(sweep_dir) / r) for r in out["run_id"]]
    return out


def cost_lines(costs: pd.DataFrame, description: str | None) -> list[str]:
    done = costs[costs["state"] == "complete"]
    spent = costs["spent_device_hours"].fillna(0).sum()
    planned = costs["planned_device_hours"].sum()
    lines = [f"device-hours: spent {spent:.4g} of {planned:.4g} planned ({100 * spent / planned:.0f} %)"
             if planned > 0 else f"device-hours: spent {spent:.4g}, none planned"]
    remaining = costs.loc[costs["state"] != "complete", "planned_device_hours"].sum()
    ratio = None
    if len(done):
        p_done, s_done = done["planned_device_hours"].sum(), done["spent_device_hours"].fillna(0).sum()
        if p_done > 0:
            ratio = s_done / p_done
            lines.append(f"  {len(done)} complete run(s): spent {s_done:.4g} against {p_done:.4g} planned for them "
                         f"(x{ratio:.2f})")
    # the complete runs calibrate the plan: the same ratio applied to what is left
    at_ratio = f"; {remaining * ratio:.4g} at the complete runs' x{ratio:.2f}" if ratio and remaining else ""
    lines.append(f"  still to run, as planned: {remaining:.4g} device-hours{at_ratio}")
    if description:
        lines.append(f"  planned on: {description}")
    return lines


def run(args: argparse.Namespace) -> int:
    table = sweep_table(args.sweep_dir)
    counts = table.groupby(["kind", "state"]).size().unstack(fill_value=0)
    print(counts.to_string())
    shown = table if args.all else table[~table["state"].isin(["complete", "pending"])]
    costs = cost_table(args.sweep_dir, table)
    if len(shown):
        if costs is not None:
            shown = shown.merge(costs[["run_id", "planned_device_hours", "spent_device_hours"]], on="run_id",
                                how="left")
        print()
        print(shown.to_string(index=False))
    if costs is not None:
        meta_path = Path(args.sweep_dir) / "sweep.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        print()
        print("\n".join(cost_lines(costs, meta.get("summary", {}).get("cost", {}).get("description"))))
    runs = collect_runs(args.sweep_dir)
    print(f"\n{len(runs)} finished branch(es) in {args.sweep_dir / 'runs.csv'}")
    return 1 if (table["state"] == "failed").any() else 0
