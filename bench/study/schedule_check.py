"""Science check: WSD with a 1-sqrt cooldown against cosine at equal compute, for three model sizes.

Hagele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations") find that a
constant learning rate with a 1-sqrt cooldown over the last ~20 % of training matches a cosine schedule of the
same length; the seed paper's trunk-and-branch design rests on that. This script repeats the comparison on the
built-in dataset: for each size the budget fixes the samples (budget / training FLOPs per sample), and both
schedules train from the same seed with the same peak learning rate and warmup.

    python -m bench.science_check --dataset out/data/swe --out out/science [--sizes s0 s1 s2] [--budget 4e10]

If --dataset does not exist it is made first with ``wxscale prep --builtin swe``. Writes ``science_check.csv``
(one row per size and schedule: val_loss, val_rmse_<channel>, samples, FLOPs), ``comparison.csv`` (per size:
both losses, WSD - cosine and its relative size) and ``loss_curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from wxscale.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _config(dataset: Path, size: str, schedule: dict, args: argparse.Namespace) -> dict:
    return {
        "data": {"dataset": str(dataset), "num_workers": 0},
        "model": {"size": size},
        "optim": {"lr": args.lr, "weight_decay": 0.05, "grad_clip": 1.0},
        "schedule": {"warmup_samples": args.warmup_samples, "lr_min": 0.0, **schedule},
        "run": {"global_batch": args.batch, "budget_flops": args.budget, "seed": args.seed,
                "cpu_threads": args.threads},
        "validation": {"max_batches": args.val_batches},
        "logging": {"every_steps": 10, "progress": True},
    }


def _read_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["samples"]) for r in rows], [float(r["train_loss"]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=Path("out/data/swe"))
    p.add_argument("--out", type=Path, default=Path("out/science"))
    p.add_argument("--sizes", nargs="+", default=["s0", "s1", "s2"])
    p.add_argument("--budget", type=float, default=4e10, help="training FLOPs per run (all sizes)")
    p.add_argument("--cooldown-fraction", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--val-batches", type=int, default=None, help="cap on validation batches (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--years", type=int, default=1, help="simulated years when the dataset is made here")
    args = p.parse_args(argv)

    if not (args.dataset / "data.json").is_file():
        cmd = [sys.executable, "-m", "wxscale.cli", "prep", "--builtin", "swe", "--out", str(args.dataset),
               "--years", str(args.years)]
        print("making the built-in dataset:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=REPO)
    args.out.mkdir(parents=True, exist_ok=True)
    schedules = {"wsd_1sqrt": {"kind": "wsd", "cooldown_fraction": args.cooldown_fraction, "cooldown_shape": "1-sqrt"},
                 "cosine": {"kind": "cosine"}}
    rows, curves = [], {}
    for size in args.sizes:
        for name, sched in schedules.items():
            run_dir = args.out / f"{size}_{name}"
            s = train(_config(args.dataset, size, sched, args), run_dir=run_dir, resume=True)
            rmse = {k: v for k, v in s.items() if k.startswith("val_rmse_")}
            rows.append({"size": size, "params": s["params"], "schedule": name, "budget_flops": args.budget,
                         "flops": s["flops"], "samples": s["samples"], "status": s["status"],
                         "val_loss": s["val_loss"], **rmse})
            curves[(size, name)] = _read_curve(run_dir)
    with open(args.out / "science_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = {(r["size"], r["schedule"]): r for r in rows}
    comparison = []
    for size in args.sizes:
        a, b = by[(size, "wsd_1sqrt")]["val_loss"], by[(size, "cosine")]["val_loss"]
        comparison.append({"size": size, "params": by[(size, "cosine")]["params"], "samples": by[(size, "cosine")]
                           ["samples"], "val_loss_wsd_1sqrt": a, "val_loss_cosine": b, "wsd_minus_cosine": a - b,
                           "relative": (a - b) / b, "winner": "wsd_1sqrt" if a < b else "cosine"})
    with open(args.out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(comparison[0]))
        w.writeheader()
        w.writerows(comparison)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.sizes), figsize=(4.5 * len(args.sizes), 3.5), squeeze=False)
    for ax, size in zip(axes[0], args.sizes, strict=True):
        for name in schedules:
            x, y = curves[(size, name)]
            ax.plot(x, y, label=f"{name} (val {by[(size, name)]['val_loss']:.4g})")
        ax.set(title=f"{size}: {args.budget:.2g} FLOPs", xlabel="samples", ylabel="train loss", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "loss_curves.png", dpi=120)
    for c in comparison:
        print(f"{c['size']}: WSD 1-sqrt {c['val_loss_wsd_1sqrt']:.5g} vs cosine {c['val_loss_cosine']:.5g} "
              f"({100 * c['relative']:+.2f} %, {c['winner']} wins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
