"""`wxscale schedules`: WSD with a 1-sqrt cooldown against cosine at equal compute, per model size.

Hagele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations") find that a
constant learning rate with a 1-sqrt cooldown over the last ~20 % of training matches a cosine schedule of the
same length; the seed paper's trunk-and-branch design rests on that. This command repeats the comparison on a
dataset dir: for each size the budget fixes the samples (budget / training FLOPs per sample), and both schedules
train from the same seed with the same peak learning rate and warmup, through the suite's own trainer.

    wxscale schedules --dataset DIR --out DIR [--sizes s0,s1,s2] [--budget 4e10] [--model FIELD=VALUE ...]

Writes ``schedules.csv`` (one row per size and schedule: val_loss, val_rmse_<channel>, samples, FLOPs),
``comparison.csv`` (per size: both losses, WSD - cosine and its relative size, the winner) and
``loss_curves.png``. Runs live in ``OUT/runs/<size>_<schedule>`` and are resumed, so a rerun only finishes
what is missing.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from wxscale.args import parse_list
from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv

SCHEDULES = ("wsd_1sqrt", "cosine")


def _schedule(name: str, cooldown_fraction: float) -> dict:
    if name == "wsd_1sqrt":
        return {"kind": "wsd", "cooldown_fraction": cooldown_fraction, "cooldown_shape": "1-sqrt"}
    return {"kind": "cosine"}


def run_config(args: argparse.Namespace, size: str, schedule: str) -> dict:
    """The training config of one comparison run (a plain run: no trunk, no branch)."""
    from wxscale.model.config import parse_overrides

    return {
        "data": {"dataset": str(args.dataset), "num_workers": 0},
        "model": {"size": size, "overrides": parse_overrides(args.model)},
        "optim": {"lr": args.lr, "weight_decay": 0.05, "grad_clip": 1.0},
        "schedule": {"warmup_samples": args.warmup_samples, "lr_min": 0.0,
                     **_schedule(schedule, args.cooldown_fraction)},
        "run": {"global_batch": args.batch, "budget_flops": args.budget, "seed": args.seed,
                "cpu_threads": args.threads},
        "validation": {"max_batches": args.val_batches},
        "logging": {"every_steps": 10, "progress": args.progress},
    }


def compare(rows: list[dict]) -> list[dict]:
    """Per size: both final validation losses, their difference, its relative size and the winner."""
    by = {(r["size"], r["schedule"]): r for r in rows}
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        wsd, cos = by[(size, "wsd_1sqrt")], by[(size, "cosine")]
        a, b = wsd["val_loss"], cos["val_loss"]
        out.append({"size": size, "params": cos["params"], "samples": cos["samples"], "val_loss_wsd_1sqrt": a,
                    "val_loss_cosine": b, "wsd_minus_cosine": a - b, "relative": (a - b) / b,
                    "winner": "wsd_1sqrt" if a < b else "cosine"})
    return out


def _read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    return [int(r["samples"]) for r in rows], [float(r["train_loss"]) for r in rows]


def _plot(curves: dict, rows: list[dict], sizes: list[str], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["size"], r["schedule"]): r for r in rows}
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for name in SCHEDULES:
            x, y = curves[(size, name)]
            ax.plot(x, y, label=f"{name} (val {by[(size, name)]['val_loss']:.4g})")
        ax.set(title=f"{size}: {budget:.2g} FLOPs", xlabel="samples", ylabel="train loss", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="dataset dir (e.g. from `wxscale prep`)")
    parser.add_argument("--out", type=Path, required=True, help="output dir (runs, CSVs and the plot)")
    parser.add_argument("--sizes", default="s0,s1,s2", help="ladder sizes, comma-separated (default s0,s1,s2)")
    parser.add_argument("--budget", type=float, default=4e10, help="training FLOPs per run (default 4e10)")
    parser.add_argument("--cooldown-fraction", type=float, default=0.2, help="WSD cooldown fraction (default 0.2)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of both schedules")
    parser.add_argument("--warmup-samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--val-batches", type=int, default=None, help="cap on validation batches (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="model field for every size, e.g. --model patch=2 (repeatable)")
    parser.add_argument("--progress", action="store_true", help="show each run's progress bar")


def run(args: argparse.Namespace) -> int:
    from wxscale.training.trainer import train

    sizes = parse_list(args.sizes, "--sizes")
    if not (args.dataset / "data.json").is_file():
        raise WxscaleError(f"--dataset {args.dataset} is not a dataset dir (no data.json); make one with "
                           f"`wxscale prep --builtin swe --out {args.dataset}`")
    if not args.budget > 0:
        raise WxscaleError(f"--budget must be a positive number of FLOPs, got {args.budget}")
    rows, curves = [], {}
    for size in sizes:
        for name in SCHEDULES:
            run_dir = args.out / "runs" / f"{size}_{name}"
            summary = train(run_config(args, size, name), run_dir=run_dir, resume=True)
            if summary.get("status") != "complete":
                raise WxscaleError(f"run {run_dir} ended {summary.get('status')}: {summary.get('reason')}")
            rmse = {k: v for k, v in summary.items() if k.startswith("val_rmse_")}
            rows.append({"size": size, "params": summary["params"], "schedule": name, "budget_flops": args.budget,
                         "flops": summary["flops"], "samples": summary["samples"], "status": summary["status"],
                         "val_loss": summary["val_loss"], **rmse})
            curves[(size, name)] = _read_curve(run_dir)
    comparison = compare(rows)
    write_csv(args.out / "schedules.csv", rows)
    write_csv(args.out / "comparison.csv", comparison)
    _plot(curves, rows, sizes, args.budget, args.out / "loss_curves.png")
    for c in comparison:
        print(f"{c['size']}: WSD 1-sqrt {c['val_loss_wsd_1sqrt']:.5g} vs cosine {c['val_loss_cosine']:.5g} "
              f"({100 * c['relative']:+.2f} %, {c['winner']} wins)")
    print(f"wrote {args.out / 'comparison.csv'} and {args.out / 'loss_curves.png'}")
    return 0
