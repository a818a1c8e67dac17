"""`wxscale bench loader DIR`: loader throughput, DALI and torch against a plain read of the same shards.

Rows of the CSV (`<out>/loader_bench.csv`, plus `<out>/loader_bench.png`):

- ``plain``: one process reads the split's samples in file order with one h5py call each (states t..t+K, the
  bytes a loader hands out per sample), nothing else: no shuffle, no normalisation, no batching.
- ``plain_block``: one process reads the split's shards front to back in blocks of 256 time steps, the fastest
  way h5py gets the bytes; its samples/s counts the split's samples per time taken to read all the steps once.
- ``torch`` and ``dali``: the loaders of :mod:`wxscale.data_prep.loader` (shuffled, normalised, batched, with
  `--num-workers` worker processes), over whole epochs after one warm-up epoch (which starts the workers).

The kinds are timed in turn, one epoch each per round, for `--epochs` rounds; rates come from each kind's
fastest epoch (`wall_s`; `wall_s_median` beside it), since a shared machine only ever slows a run down.

Everything is read from page cache: the shards are read once before any timing. MB/s counts the bytes handed
out, 4 * (K + 1) * C * H * W per sample (for plain_block, the bytes read). `ratio_to_plain` is samples/s over
plain's: the target for the DALI loader on CPU is at least 0.5 (issue 4), the loader keeping at least half
the rate at which a single process can fetch the same samples. `ratio_to_plain_block` compares with raw
block reads, a ceiling no per-sample random access reaches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import h5py
from tqdm import tqdm

from wxscale.args import parse_list
from wxscale.data_prep.layout import FIELDS_KEY, load_meta
from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv

LOADERS = ("plain", "plain_block", "torch", "dali")
COLUMNS = [
    "loader",
    "device",
    "split",
    "batch_size",
    "rollout_steps",
    "num_workers",
    "epochs",
    "samples_per_epoch",
    "sample_bytes",
    "wall_s",
    "wall_s_median",
    "samples_per_s",
    "mb_per_s",
    "ratio_to_plain",
    "ratio_to_plain_block",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DIR", help="dataset dir (from `wxscale prep`)")
    parser.add_argument("--split", default="train", help="split to read (default: train)")
    parser.add_argument(
        "--loaders",
        default=",".join(LOADERS),
        help=f"comma-separated subset of {','.join(LOADERS)} (default: all)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size (default: 32)")
    parser.add_argument("--rollout-steps", type=int, default=1, help="target steps per sample (default: 1)")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes (default: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (repeats) per loader (default: 3)")
    parser.add_argument("--device", default=None, help="where loaders put batches: cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/bench_loader", help="output dir (default: out/bench_loader)")


def _warm_page_cache(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                n += len(chunk)
    return n


def _plain(index, k: int) -> float:
    """Seconds to read every sample of the split in file order, one h5py call per sample."""
    t0 = time.perf_counter()
    for s, path in enumerate(index.shard_paths):
        with h5py.File(path, "r") as f:
            ds = f[FIELDS_KEY]
            for t in index.start_of[index.shard_of == s]:
                ds[t : t + k + 1]
    return time.perf_counter() - t0


def _plain_block(paths: list[Path], block: int = 256) -> tuple[float, int]:
    """Seconds to read the shards front to back in blocks of time steps, and the bytes read."""
    nbytes = 0
    t0 = time.perf_counter()
    for path in paths:
        with h5py.File(path, "r") as f:
            ds = f[FIELDS_KEY]
            for lo in range(0, ds.shape[0], block):
                nbytes += ds[lo : lo + block].nbytes
    return time.perf_counter() - t0, nbytes


def _epoch(loader) -> int:
    """Run one epoch of a loader; the samples it handed out."""
    n = 0
    for x, _ in loader:
        n += len(x)
    if loader.device is not None and str(loader.device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return n



def _plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
    names = [r["loader"] for r in rows]
    rates = [r["samples_per_s"] for r in rows]
    bars = ax.barh(names, rates, color=["0.6" if n.startswith("plain") else "tab:blue" for n in names])
    for bar, r in zip(bars, rows, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {r['samples_per_s']:.0f}/s, {r['mb_per_s']:.0f} MB/s",
            va="center",
            fontsize=8,
        )
    plain = next((r for r in rows if r["loader"] == "plain"), None)
    if plain is not None:
        ax.axvline(0.5 * plain["samples_per_s"], ls="--", c="tab:red", lw=1, label="target: half of plain")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples / s")
    ax.set_xlim(0, max(rates) * 1.45)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    from wxscale.data_prep.loader import SampleIndex, build_loader

    kinds = parse_list(args.loaders, "--loaders")
    bad = [k for k in kinds if k not in LOADERS]
    if bad or not kinds:
        raise WxscaleError(f"--loaders: unknown {bad or kinds}; choose from {','.join(LOADERS)}")
    if args.epochs < 1:
        raise WxscaleError("--epochs must be >= 1")
    meta = load_meta(args.dataset)
    index = SampleIndex(args.dataset, args.split, args.rollout_steps, meta)
    k, (h, w) = args.rollout_steps, meta.grid
    sample_bytes = 4 * (k + 1) * meta.n_channels * h * w
    device = args.device or "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cached = _warm_page_cache(index.shard_paths)
    print(
        f"{args.dataset}: split {args.split}, {len(index)} samples of {sample_bytes / 1e3:.1f} kB "
        f"({meta.n_channels} x {h} x {w}, rollout {k}); {cached / 1e6:.0f} MB of shards in page cache"
    )

    # Build the loaders and run one warm-up epoch each (starts their workers), then time the kinds in turn,
    # one epoch each per round: interleaving spreads a busy machine's noise over all of them alike.
    loaders = {}
    for kind in kinds:
        if kind in ("torch", "dali"):
            loaders[kind] = build_loader(
                args.dataset,
                args.split,
                batch_size=args.batch_size,
                rollout_steps=k,
                seed=args.seed,
                kind=kind,
                num_workers=args.num_workers,
                device=args.device if device != "cpu" else None,
            )
            _epoch(loaders[kind])
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    samples: dict[str, int] = {}
    block_bytes = 0
    with tqdm(total=args.epochs * len(kinds), desc="timed epochs", unit="epoch") as bar:
        for _ in range(args.epochs):
            for kind in kinds:
                if kind == "plain":
                    times[kind].append(_plain(index, k))
                    samples[kind] = len(index)
                elif kind == "plain_block":
                    wall, block_bytes = _plain_block(index.shard_paths)
                    times[kind].append(wall)
                    samples[kind] = len(index)
                else:
                    t0 = time.perf_counter()
                    samples[kind] = _epoch(loaders[kind])
                    times[kind].append(time.perf_counter() - t0)
                bar.update()
    for loader in loaders.values():
        loader.close()

    rows: list[dict] = []
    for kind in kinds:
        is_loader = kind in ("torch", "dali")
        best = min(times[kind])  # the least disturbed epoch: the machine may be shared
        nbytes = block_bytes if kind == "plain_block" else samples[kind] * sample_bytes
        rows.append(
            {
                "loader": kind,
                "device": device if is_loader else "cpu",
                "split": args.split,
                "batch_size": args.batch_size if is_loader else "",
                "rollout_steps": k,
                "num_workers": args.num_workers if is_loader else "",
                "epochs": args.epochs,
                "samples_per_epoch": samples[kind],
                "sample_bytes": sample_bytes,
                "wall_s": round(best, 4),
                "wall_s_median": round(statistics.median(times[kind]), 4),
                "samples_per_s": samples[kind] / best,
                "mb_per_s": nbytes / best / 1e6,
            }
        )

    for base in ("plain", "plain_block"):
        ref = next((r["samples_per_s"] for r in rows if r["loader"] == base), None)
        for r in rows:
            r[f"ratio_to_{base}"] = round(r["samples_per_s"] / ref, 3) if ref else ""
    for r in rows:
        r["samples_per_s"], r["mb_per_s"] = round(r["samples_per_s"], 1), round(r["mb_per_s"], 1)

    write_csv(out / "loader_bench.csv", rows, COLUMNS)
    title = (
        f"{meta.dataset_name}: {meta.n_channels}x{h}x{w}, rollout {k}, batch {args.batch_size}, "
        f"{args.num_workers} workers, {os.cpu_count()} CPUs"
    )
    _plot(out / "loader_bench.png", rows, title)
    print(f"{'loader':<12} {'samples/s':>10} {'MB/s':>8} {'x plain':>8} {'x block':>8}")
    for r in rows:
        print(
            f"{r['loader']:<12} {r['samples_per_s']:>10.0f} {r['mb_per_s']:>8.0f} {r['ratio_to_plain']!s:>8} "
            f"{r['ratio_to_plain_block']!s:>8}"
        )
    dali = next((r for r in rows if r["loader"] == "dali"), None)
    if dali is not None and dali["ratio_to_plain"] != "":
        verdict = "meets" if dali["ratio_to_plain"] >= 0.5 else "misses"
        print(f"DALI loader at {dali['ratio_to_plain']:.2f} x the plain read: {verdict} the target (>= 0.5)")
    print(f"wrote {out / 'loader_bench.csv'} and {out / 'loader_bench.png'}")
    return 0
