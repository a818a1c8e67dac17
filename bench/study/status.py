"""`wxscale sweep status DIR`: what a sweep has done, is running, or failed; collects runs.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from wxscale.study.sweep import collect_runs, sweep_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--all", action="store_true", help="list every run, not only the counts and problems")


def run(args: argparse.Namespace) -> int:
    table = sweep_table(args.sweep_dir)
    counts = table.groupby(["kind", "state"]).size().unstack(fill_value=0)
    print(counts.to_string())
    shown = table if args.all else table[~table["state"].isin(["complete", "pending"])]
    if len(shown):
        print()
        print(shown.to_string(index=False))
    runs = collect_runs(args.sweep_dir)
    print(f"\n{len(runs)} finished branch(es) in {args.sweep_dir / 'runs.csv'}")
    return 1 if (table["state"] == "failed").any() else 0
