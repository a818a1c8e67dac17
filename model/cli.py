"""`wxscale model list`: the size ladder with parameters and FLOPs per sample for a grid and channel count.

Counts are analytic (:mod:`wxscale.model.flops`), so this needs no torch and runs instantly. The window and patch
are the ones the ladder fits to ``--grid`` (:func:`wxscale.model.config.fit_window_patch`) unless
``--patch``/``--window`` fix them; ``pad_fraction`` is the share of the padded grid that is padding.
"""

from __future__ import annotations

import argparse
import csv
import sys

from wxscale.errors import WxscaleError
from wxscale.model.config import LADDER, grid_layout, resolve_config
from wxscale.model.flops import model_flops

COLUMNS = ["size", "embed_dim", "depth", "num_heads", "window", "patch", "params", "forward_matmul_flops",
           "forward_other_flops", "train_flops_per_sample", "pad_fraction"]


def parse_grid(text: str, flag: str = "--grid") -> tuple[int, int]:
    """``"32x64"`` -> (32, 64); raises :class:`WxscaleError` naming ``flag`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise WxscaleError(f"{flag} {text!r}: give n_lat x n_lon, e.g. {flag} 32x64") from None
    if h < 1 or w < 1:
        raise WxscaleError(f"{flag} {text!r}: both sizes must be positive")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="32x64", help="n_lat x n_lon grid points (default 32x64)")
    parser.add_argument("--channels", type=int, default=3, help="state channels (default 3)")
    parser.add_argument("--static", type=int, default=0, help="extra static fields (default 0)")
    parser.add_argument("--rollout", type=int, default=1, help="rollout steps (default 1)")
    parser.add_argument("--patch", type=int, default=None, help="override every size's patch")
    parser.add_argument("--window", default=None, help="override the window, e.g. 4x8 tokens")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def ladder_rows(grid: tuple[int, int], channels: int, rollout: int = 1, static: int = 0,
                overrides: dict | None = None) -> list[dict]:
    """One row per ladder size (columns ``COLUMNS``) for ``grid`` and ``channels``, window and patch fitted to it."""
    rows = []
    for name in LADDER:
        cfg = resolve_config(name, overrides, grid=grid)
        f = model_flops(cfg, grid, channels, rollout_steps=rollout, static_channels=static)
        rows.append({"size": name, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
                     "window": f"{cfg.window[0]}x{cfg.window[1]}", "patch": cfg.patch, "params": f.params,
                     "forward_matmul_flops": f.forward_matmul_flops,
                     "forward_other_flops": f.forward_other_flops,
                     "train_flops_per_sample": f.train_flops_per_sample,
                     "pad_fraction": round(grid_layout(cfg, grid).padding_fraction, 4)})
    return rows


def run(args: argparse.Namespace) -> int:
    grid = parse_grid(args.grid)
    if args.channels < 1:
        raise WxscaleError(f"--channels {args.channels}: must be at least 1")
    if args.rollout < 1:
        raise WxscaleError(f"--rollout {args.rollout}: must be at least 1")
    if args.static < 0:
        raise WxscaleError(f"--static {args.static}: must be 0 or more")
    overrides: dict = {}
    if args.patch is not None:
        overrides["patch"] = args.patch
    if args.window is not None:
        overrides["window"] = parse_grid(args.window, "--window")
    rows = ladder_rows(grid, args.channels, args.rollout, args.static, overrides)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    print(f"grid {grid[0]}x{grid[1]}, {args.channels} channels, rollout {args.rollout}; FLOPs per sample "
          "(multiply-add = 2; train = 3 x forward matmul x rollout)")
    head = ["size", "dim", "depth", "heads", "window", "patch", "params", "fwd matmul", "fwd other", "train",
            "pad %"]
    fmt = "{:<5} {:>5} {:>5} {:>5} {:>6} {:>5} {:>10} {:>11} {:>10} {:>10} {:>6}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(r["size"], r["embed_dim"], r["depth"], r["num_heads"], r["window"], r["patch"],
                         f"{r['params']:.3g}", f"{r['forward_matmul_flops']:.3g}",
                         f"{r['forward_other_flops']:.3g}", f"{r['train_flops_per_sample']:.3g}",
                         f"{100 * r['pad_fraction']:.1f}"))
    return 0
