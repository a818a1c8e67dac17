"""`wxscale bench model`: forward+backward speed of the ladder's sizes against the machine's matmul peak.

For each size that fits (parameters up to ``--max-params``, and smaller than the first size whose step takes longer
than ``--max-step-s``) and each precision (fp32, bf16 autocast), one training step (forward, loss, backward; no
optimizer) is timed on random input. Achieved FLOP/s counts model FLOPs (:mod:`wxscale.model.flops`: 3 x forward matmul
per sample), so "% of peak" is the model FLOPs utilisation against the best large ``torch.matmul`` in the same
dtype on the same device (:func:`wxscale.hardware.measure_matmul_peak`). Timings take the best of ``--iters`` steps:
on a shared machine the minimum is the least disturbed estimate. ``--profile SIZE`` adds a torch.profiler table
of where one step's time goes.

Writes ``<out>/model_bench.csv`` and ``<out>/model_bench.png`` (and ``profile_<size>_<dtype>.txt``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from wxscale.args import parse_list
from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv, write_text_atomic
from wxscale.model.config import parse_overrides

COLUMNS = ["size", "params", "embed_dim", "depth", "patch", "window", "precision", "batch", "grid", "channels",
           "train_flops_per_sample", "step_s_best", "step_s_median", "samples_per_s", "achieved_gflops_s",
           "peak_gflops_s", "pct_of_peak", "compiled", "norm_backend", "device", "threads"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="32x64", help="n_lat x n_lon (default 32x64)")
    parser.add_argument("--channels", type=int, default=3, help="state channels (default 3)")
    parser.add_argument("--sizes", default="auto",
                        help="comma-separated ladder sizes, or 'auto': every size up to --max-params (default)")
    parser.add_argument("--max-params", type=float, default=2e6, help="largest size for 'auto' (default 2e6)")
    parser.add_argument("--max-step-s", type=float, default=20.0,
                        help="stop going up the ladder after a step slower than this (default 20 s)")
    parser.add_argument("--batch", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast); default both")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per point (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each model first (minutes per size on a CPU; fuses elementwise work)")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model field for every size, e.g. --model patch=2 (repeatable)")
    parser.add_argument("--profile", default=None, metavar="SIZE",
                        help="also profile one step of SIZE per precision with torch.profiler")
    parser.add_argument("--out", default="out/bench_model", help="output folder (default out/bench_model)")


def _step_fn(fwd, net, x, precision: str, device):
    """One training step without optimizer: ``fwd`` (``net`` or its compiled form), loss, backward."""
    import torch

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = fwd(x)
            loss = (y.float() - x).square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def time_step(step, iters: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``iters`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def profile_step(step, path: Path, rows: int = 25) -> str:
    """Profile one step (after the caller's warm-up) and write the op table sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    write_text_atomic(path, table + "\n")
    return table



def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for prec, color in (("fp32", "tab:blue"), ("bf16", "tab:orange")):
        sel = [r for r in rows if r["precision"] == prec]
        if not sel:
            continue
        n = [r["params"] for r in sel]
        ax1.plot(n, [r["achieved_gflops_s"] for r in sel], "o-", color=color, label=f"{prec} model")
        ax1.axhline(sel[0]["peak_gflops_s"], color=color, ls="--", label=f"{prec} matmul peak")
        ax2.plot(n, [r["pct_of_peak"] for r in sel], "o-", color=color, label=prec)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    ax1.set_ylabel("achieved GFLOP/s (model FLOPs)")
    ax2.set_ylabel("% of measured matmul peak")
    ax2.axhline(40, color="grey", ls=":")
    r0 = rows[0]
    fig.suptitle(f"forward+backward, batch {r0['batch']}, grid {r0['grid']} x {r0['channels']} ch, {r0['device']}")
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from wxscale.hardware import describe_device, measure_matmul_peak
    from wxscale.model import LADDER, build_model, model_flops, norm_backend, resolve_config
    from wxscale.model.cli import parse_grid

    grid = parse_grid(args.grid)
    precisions = parse_list(args.precisions, "--precisions")
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        raise WxscaleError(f"--precisions {args.precisions!r}: use fp32 and/or bf16")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0 or args.channels < 1:
        raise WxscaleError("--batch, --iters and --channels must be positive, --warmup 0 or more")
    overrides = parse_overrides(args.model)
    if args.sizes == "auto":
        sizes = [s for s in LADDER
                 if model_flops(resolve_config(s, overrides, grid=grid), grid, args.channels).params <= args.max_params]
    else:
        sizes = parse_list(args.sizes, "--sizes")
    cfgs = {s: resolve_config(s, overrides, grid=grid) for s in sizes}  # validates names before any timing
    if args.profile is not None and args.profile not in cfgs:
        cfgs[args.profile] = resolve_config(args.profile, overrides, grid=grid)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev_name = describe_device(device).get("name", device.type)

    # The peak is measured before and after the models (each call is cached, so the second uses another
    # duration); the better of the two counts, as the least disturbed on a shared machine.
    peaks = {p: measure_matmul_peak(p, device, min_time_s=0.2) for p in precisions}
    print(f"device {device} ({dev_name}), {torch.get_num_threads()} threads, norms: {norm_backend()}; "
          + ", ".join(f"{p} matmul peak {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()))
    rows: list[dict] = []
    stopped = set()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, *grid, device=device)
    for size in tqdm(sizes, desc="sizes", unit="size"):
        cfg = cfgs[size]
        f = model_flops(cfg, grid, args.channels)
        net = build_model(cfg, grid, args.channels).to(device)
        fwd = torch.compile(net) if args.compile else net
        for prec in precisions:
            if prec in stopped:
                continue
            times = time_step(_step_fn(fwd, net, x, prec, device), args.iters, args.warmup)
            best = min(times)
            if best > args.max_step_s:
                stopped.add(prec)  # bigger sizes would only be slower
            achieved = f.train_flops_per_sample * args.batch / best
            pct = 100 * achieved / peaks[prec]
            rows.append({
                "size": size, "params": f.params, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                "patch": cfg.patch, "window": f"{cfg.window[0]}x{cfg.window[1]}", "precision": prec,
                "batch": args.batch, "grid": f"{grid[0]}x{grid[1]}", "channels": args.channels,
                "train_flops_per_sample": f.train_flops_per_sample, "step_s_best": round(best, 6),
                "step_s_median": round(statistics.median(times), 6),
                "samples_per_s": round(args.batch / best, 3), "achieved_gflops_s": round(achieved / 1e9, 3),
                "peak_gflops_s": None, "pct_of_peak": None,
                "compiled": args.compile,
                "norm_backend": norm_backend(), "device": dev_name, "threads": torch.get_num_threads(),
            })
            tqdm.write(f"{size:>4} {prec}: {best * 1e3:8.1f} ms/step  {achieved / 1e9:7.2f} GFLOP/s  "
                       f"{pct:5.1f} % of the first peak")
        del net
    if not rows:
        raise WxscaleError("no size was benchmarked: check --sizes / --max-params")
    for p in precisions:
        peaks[p] = max(peaks[p], measure_matmul_peak(p, device, min_time_s=0.25))
    for r in rows:
        peak = peaks[r["precision"]]
        r["peak_gflops_s"] = round(peak / 1e9, 3)
        r["pct_of_peak"] = round(100 * r["achieved_gflops_s"] * 1e9 / peak, 2)
    print(", ".join(f"{p} matmul peak (best of two) {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items()))
    csv_path = out / "model_bench.csv"
    write_csv(csv_path, rows, COLUMNS)
    _plot(rows, out / "model_bench.png")
    if args.profile is not None:
        net = build_model(cfgs[args.profile], grid, args.channels).to(device)
        for prec in precisions:
            step = _step_fn(net, net, x, prec, device)
            time_step(step, 0, max(args.warmup, 1))
            path = out / f"profile_{args.profile}_{prec}.txt"
            print(f"\nprofile of {args.profile} {prec} (batch {args.batch}) -> {path}")
            print(profile_step(step, path))
    print(f"wrote {csv_path} and {out / 'model_bench.png'}")
    return 0
