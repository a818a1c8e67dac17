"""`wxscale bench throughput`: training throughput, MFU, loader headroom and memory per configuration.

    wxscale bench throughput --dataset DIR [--sizes s0,s2] [--batch 8,16 | --global-batch 16]
        [--precision fp32,bf16] [--loader torch,dali] [--warmup 3] [--steps 10] [--repeats 3]
        [--out out/bench_throughput] [KEY=VALUE ...]

Each configuration (model size x batch x precision x loader, in the world this command was launched in: one
process, or every rank of ``mpiexec`` / ``srun`` / ``torchrun``) is set up by the trainer itself
(:class:`wxscale.training.trainer.Trainer`: model, fused optimizer, precision, DDP, loader), so the step timed here
is the trainer's step: fetch a batch, forward + rollout loss under autocast, backward (DDP all-reduces the gradients),
the per-step loss all-reduce, gradient clipping, optimizer step. Trailing ``KEY=VALUE`` items are trainer config
overrides (``model.overrides.patch=2 loss.rollout_steps=2 data.num_workers=2``).

Timing: ``--warmup`` untimed steps first (allocator, kernel selection, loader start-up), then ``--repeats``
repeats of ``--steps`` steps each; a repeat's step time is its wall time over its steps (on CUDA the loss
all-reduce's host read synchronises every step). Step times are the median, min and max over repeats (the
slowest rank's time per repeat when there are several ranks); samples/s counts the global batch over the median
step time. A step includes waiting for its batch, as in the trainer (``data_s`` is that wait).

FLOP/s count the model's analytic training FLOPs (:func:`model.model_flops`: 3 x forward matmul FLOPs x rollout
steps per sample); MFU divides them by the device peak (:func:`wxscale.hardware.peak_flops`: the data-sheet rate
on known GPUs, the best measured matmul in the same dtype on CPU) times the world size, as the trainer does.

The loader is then timed alone (no model): the same loader object pulls ``--steps`` batches per repeat after one
warm-up batch. ``loader_to_train_ratio`` is its samples/s over what one rank's training consumes; the loader is
the bottleneck when this is below 1, and has comfortable headroom at 10 or more. MB/s counts the bytes handed
out, 4 (K + 1) C H W per sample (as ``wxscale bench loader``).

With several ranks, the gradient all-reduce is also timed alone (a flat buffer of all trainable parameters,
``allreduce_s_median``) and set against the step time (``allreduce_fraction``): the communication share of a step
if nothing overlapped it (DDP overlaps it with the backward pass where it can).

Peak memory: CUDA's max allocated bytes per configuration; on CPU the process's max resident set size
(``getrusage``), which is a high-water mark over the whole process, so rows only ever grow (configurations run
smallest first). Over ranks the maximum is reported.

Writes ``<out>/throughput.csv`` (rank 0; columns :data:`COLUMNS`, provenance last) and ``<out>/throughput.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from wxscale.args import parse_list
from wxscale.errors import ConfigError, WxscaleError
from wxscale.files import save_figure, write_csv
from wxscale.provenance import PROVENANCE_COLUMNS

RESULT_COLUMNS = [
    "size", "params", "precision", "loader", "num_workers", "world_size", "batch_per_rank", "global_batch",
    "rollout_steps", "grid", "channels", "threads_per_rank", "cores", "oversubscribed", "warmup_steps", "steps",
    "repeats", "step_s_median", "step_s_min", "step_s_max", "data_s_median", "samples_per_s",
    "samples_per_s_min", "samples_per_s_max", "train_flops_per_sample", "tflops_per_s", "peak_tflops_per_device",
    "peak_source", "mfu", "loader_samples_per_s", "loader_mb_per_s", "loader_to_train_ratio", "loader_bottleneck",
    "allreduce_s_median", "allreduce_fraction", "peak_mem_mb", "peak_mem_kind", "optimizer_impl", "wireup",
]
COLUMNS = RESULT_COLUMNS + PROVENANCE_COLUMNS
PRECISIONS = ("fp32", "bf16", "fp16")
LOADER_HEADROOM = 10.0  # the target: the loader delivers at least 10x what training consumes


# --------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="DIR", help="dataset dir (from `wxscale prep`)")
    parser.add_argument("--sizes", default="s0,s1,s2,s3", help="comma-separated ladder sizes (default s0..s3)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", default=None, help="comma-separated per-rank batch sizes (default 8)")
    batch.add_argument("--global-batch", default=None,
                       help="comma-separated global batch sizes, split evenly over the ranks (instead of --batch)")
    add_step_arguments(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per rank (default 0: usable cores // ranks on this node)")
    parser.add_argument("--skip-loader", action="store_true", help="do not time the loader alone")
    parser.add_argument("--wireup", default="auto", choices=("auto", "none", "torchrun", "slurm", "mpi"),
                        help="how ranks find each other (the trainer's distributed.launcher; default auto)")
    parser.add_argument("--out", default="out/bench_throughput", help="output dir (default out/bench_throughput)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="trainer config overrides for every configuration, e.g. model.overrides.patch=2")


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """How each configuration is timed: flags shared with `wxscale bench scaling`, which passes them through."""
    parser.add_argument("--precision", default="fp32", help="comma-separated fp32, bf16, fp16 (CUDA only)")
    parser.add_argument("--loader", default="torch", help="comma-separated torch, dali (default torch)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader worker processes per rank (default 0)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per configuration (default 3)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda:<local rank> when CUDA is visible, else cpu")



def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which Slurm and containers set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_ranks(world_size: int, env=None) -> int:
    """Ranks sharing this node, from the launcher's environment (else the whole world: one node)."""
    env = os.environ if env is None else env
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        with contextlib.suppress(KeyError, ValueError):
            return max(1, int(env[key]))
    return max(1, world_size)


# --------------------------------------------------------------------------------------------------------------
# measurement


def time_repeats(step: Callable[[], float], warmup: int, steps: int, repeats: int,
                 clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Run ``warmup`` untimed calls of ``step``, then ``repeats`` x ``steps`` timed ones.

    ``step()`` returns the seconds it spent waiting for data. Returns, per repeat, (wall seconds per step,
    data-wait seconds per step). The warm-up calls are never timed.
    """
    if steps < 1 or repeats < 1 or warmup < 0:
        raise WxscaleError(f"--steps ({steps}) and --repeats ({repeats}) must be >= 1, --warmup ({warmup}) >= 0")
    for _ in range(warmup):
        step()
    step_s, data_s = [], []
    for _ in range(repeats):
        waited = 0.0
        t0 = clock()
        for _ in range(steps):
            waited += step()
        step_s.append((clock() - t0) / steps)
        data_s.append(waited / steps)
    return step_s, data_s


def endless(loader) -> Iterator:
    """Batches of ``loader`` epoch after epoch (a benchmark needs more steps than a tiny split has)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise WxscaleError("the loader yields no batches: the split is smaller than one global batch")


def trainer_step(trainer) -> Callable[[], float]:
    """One training step of ``trainer`` (a :class:`wxscale.training.trainer.Trainer`) as in its run loop, minus logging.

    Returns a callable that runs a step and returns the seconds spent waiting for the batch.
    """
    from wxscale.training import distributed
    from wxscale.training.optim import clip_gradients
    from wxscale.training.trainer import _autocast

    cfg, device, opt, scaler = trainer.cfg, trainer.device, trainer.optimizer, trainer.scaler
    batches = endless(trainer.loader)
    trainer.step_module.train()

    def step() -> float:
        t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        waited = time.perf_counter() - t0
        with _autocast(device, cfg.precision.dtype):
            loss = trainer.step_module(x, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        # the trainer's one reduction per step; reading it back also synchronises a CUDA device
        float(distributed.all_reduce(loss.detach().double().reshape(1))[0])
        if scaler is not None:
            scaler.unscale_(opt)
        clip_gradients(trainer.net.parameters(), cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return waited

    return step


def loader_step(loader) -> Callable[[], float]:
    """One batch from ``loader`` alone (no model), as a step for :func:`time_repeats`."""
    import torch

    batches = endless(loader)

    def step() -> float:
        x, _ = next(batches)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return 0.0

    return step


def _peak_memory(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6, "cuda_max_allocated"
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6, "cpu_max_rss_process"


def base_config(dataset: str, size: str, per_rank: int, world_size: int, precision: str, loader: str,
                num_workers: int, device: str, steps_total: int, overrides: list[str]):
    """The trainer config of one configuration (validated), trainer overrides applied last."""
    from wxscale.training.config import apply_overrides, validate_config

    g = per_rank * world_size
    tree = {
        "data": {"dataset": dataset, "loader": loader, "num_workers": num_workers, "check": "off"},
        "model": {"size": size},
        "run": {"global_batch": g, "target_samples": g * max(1, steps_total), "device": device, "seed": 0,
                "deterministic": False},
        "precision": {"dtype": precision},
        "logging": {"progress": False},
    }
    return validate_config(apply_overrides(tree, overrides), "bench throughput config")


def measure(trainer, warmup: int, steps: int, repeats: int, time_loader: bool = True) -> dict:
    """Measure one configuration set up as ``trainer``; the result columns of :data:`RESULT_COLUMNS` it owns."""
    import torch

    from wxscale.training import distributed

    device, world = trainer.device, trainer.world
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, data_s = time_repeats(trainer_step(trainer), warmup, steps, repeats)
    # the slowest rank sets the pace of a synchronous data-parallel step
    step_s = distributed.all_reduce(step_s, op="max", device=device if device.type == "cuda" else None)
    data_s = distributed.all_reduce(data_s, op="max", device=device if device.type == "cuda" else None)
    mem, mem_kind = _peak_memory(device)
    mem = distributed.all_reduce([mem], op="max", device=device if device.type == "cuda" else None)[0]
    g = trainer.cfg.run.global_batch
    med = statistics.median(step_s)
    sps = g / med
    fps = sps * trainer.flops_per_sample
    meta = trainer.meta
    h, w = meta.grid
    row = {
        "params": trainer.params, "world_size": world.world_size, "batch_per_rank": trainer.per_rank,
        "global_batch": g, "rollout_steps": trainer.k, "grid": f"{h}x{w}", "channels": meta.n_channels,
        "step_s_median": med, "step_s_min": min(step_s), "step_s_max": max(step_s),
        "data_s_median": statistics.median(data_s), "samples_per_s": sps, "samples_per_s_min": g / max(step_s),
        "samples_per_s_max": g / min(step_s), "train_flops_per_sample": trainer.flops_per_sample,
        "tflops_per_s": fps / 1e12, "peak_tflops_per_device": trainer.peak / 1e12, "peak_source": trainer.peak_source,
        "mfu": fps / (trainer.peak * world.world_size), "peak_mem_mb": mem, "peak_mem_kind": mem_kind,
        "optimizer_impl": trainer.optim_impl, "loader_samples_per_s": None, "loader_mb_per_s": None,
        "loader_to_train_ratio": None, "loader_bottleneck": None, "allreduce_s_median": None,
        "allreduce_fraction": None,
    }
    if world.distributed:
        # the gradient all-reduce alone: one flat float32 buffer of every trainable parameter, as DDP's buckets
        # carry per step (on CPU gloo runs it on the same cores as the compute)
        buf = torch.zeros(trainer.params, dtype=torch.float32, device=device)

        def reduce_once() -> float:
            torch.distributed.all_reduce(buf)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return 0.0

        ar_s, _ = time_repeats(reduce_once, 1, steps, repeats)
        ar_s = distributed.all_reduce(ar_s, op="max", device=device if device.type == "cuda" else None)
        row.update(allreduce_s_median=statistics.median(ar_s), allreduce_fraction=statistics.median(ar_s) / med)
    if time_loader:
        # the same loader object, now without a model: one warm-up batch, then as many batches as a repeat
        lo_s, _ = time_repeats(loader_step(trainer.loader), 1, steps, repeats)
        lo_s = distributed.all_reduce(lo_s, op="max", device=device if device.type == "cuda" else None)
        lsps = trainer.per_rank / statistics.median(lo_s)
        sample_bytes = 4 * (trainer.k + 1) * meta.n_channels * h * w
        ratio = lsps / (sps / world.world_size)  # against what one rank's training consumes
        row.update(loader_samples_per_s=lsps, loader_mb_per_s=lsps * sample_bytes / 1e6,
                   loader_to_train_ratio=ratio, loader_bottleneck=ratio < 1.0)
    return row


# --------------------------------------------------------------------------------------------------------------
# output





def _label(r: dict) -> str:
    lab = f"{r['size']} {r['precision']} b{r['batch_per_rank']} {r['loader']}"
    return lab + (f" x{r['world_size']}" if int(r["world_size"]) > 1 else "")


def plot(rows: list[dict], path: Path) -> None:
    """Samples/s per configuration (median, min-max bar; the loader alone as a marker) and MFU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    y = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.38 * len(rows)), sharey=True)
    sps = [r["samples_per_s"] for r in rows]
    err = [[s - r["samples_per_s_min"] for s, r in zip(sps, rows, strict=True)],
           [r["samples_per_s_max"] - s for s, r in zip(sps, rows, strict=True)]]
    ax1.barh(y, sps, xerr=err, color="tab:blue", capsize=2, label="training (median; min-max)")
    lo = [(i, r["loader_samples_per_s"] * r["world_size"]) for i, r in enumerate(rows)
          if r.get("loader_samples_per_s") is not None]
    if lo:
        ax1.scatter([v for _, v in lo], [i for i, _ in lo], marker="|", s=120, color="tab:red",
                    label="loader alone (all ranks)")
    ax1.set_xscale("log")
    ax1.set_xlabel("samples / s")
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(alpha=0.3, axis="x")
    ax2.barh(y, [100 * r["mfu"] for r in rows], color="tab:green")
    ax2.set_xlabel("MFU (% of peak)")
    ax2.grid(alpha=0.3, axis="x")
    r0 = rows[0]
    fig.suptitle(f"training throughput: grid {r0['grid']} x {r0['channels']} ch, {r0['device']}, "
                 f"{r0['threads_per_rank']} threads/rank", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> int:
    from wxscale.data_prep.layout import load_meta

    sizes = parse_list(args.sizes, "--sizes")
    precisions = parse_list(args.precision, "--precision")
    loaders = parse_list(args.loader, "--loader")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise WxscaleError(f"--precision: unknown {bad}; choose from {','.join(PRECISIONS)}")
    bad = [k for k in loaders if k not in ("torch", "dali")]
    if bad:
        raise WxscaleError(f"--loader: unknown {bad}; choose from torch,dali")
    per_rank = parse_list(args.batch, "--batch", int) if args.batch is not None else None
    global_b = parse_list(args.global_batch, "--global-batch", int) if args.global_batch is not None else None
    if per_rank is None and global_b is None:
        per_rank = [8]
    if any(b < 1 for b in (per_rank or global_b)):
        raise WxscaleError("batch sizes must be >= 1")
    if args.num_workers < 0:
        raise WxscaleError("--num-workers must be >= 0")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        raise WxscaleError("--steps and --repeats must be >= 1, --warmup >= 0")
    load_meta(args.dataset)  # a missing or broken dataset dir fails here, before any model is built

    import torch

    from wxscale.model import resolve_config
    from wxscale.provenance import provenance
    from wxscale.training import distributed
    from wxscale.training.trainer import Trainer

    for s in sizes:  # unknown size names fail before any timing
        resolve_config(s)
    world = distributed.detect_world(args.wireup)
    device = distributed.device_for(world, args.device)
    if "fp16" in precisions and device.type != "cuda":  # the trainer's rule, checked before anything runs
        raise ConfigError("--precision fp16 needs CUDA (gradient scaling on CPU is unsupported and fp16 matmuls "
                          "on CPU are very slow); use bf16 or fp32 on CPU")
    if global_b is not None:
        odd = [b for b in global_b if b % world.world_size]
        if odd:
            raise WxscaleError(f"--global-batch {odd} not divisible by the world size {world.world_size}")
        per_rank = [b // world.world_size for b in global_b]
    cores, local = usable_cores(), local_ranks(world.world_size)
    threads = args.threads or max(1, cores // local)
    torch.set_num_threads(threads)
    distributed.init(world, device)
    out = Path(args.out)
    rows: list[dict] = []
    try:
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
        prov = provenance(device)
        configs = [(s, b, p, k) for s in sizes for b in per_rank for p in precisions for k in loaders]
        bar = None
        if world.is_main:
            from tqdm import tqdm

            bar = tqdm(configs, desc="throughput", unit="config", file=sys.stderr, dynamic_ncols=True)
        for i, (size, b, prec, kind) in enumerate(configs):
            cfg = base_config(args.dataset, size, b, world.world_size, prec, kind, args.num_workers, args.device,
                              args.warmup + args.steps * args.repeats, list(args.overrides))
            if device.type == "cuda":  # as the trainer: TF32 only when precision.tf32=true asks for it
                torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
                torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
            run_dir = out / ".work" / f"{i:03d}_{size}_{prec}_b{b}_{kind}"
            if world.is_main and run_dir.exists():
                shutil.rmtree(run_dir)
            distributed.barrier()
            trainer = Trainer(cfg, run_dir, False, world, device)
            try:
                row = measure(trainer, args.warmup, args.steps, args.repeats, time_loader=not args.skip_loader)
            finally:
                if hasattr(trainer.loader, "close"):
                    trainer.loader.close()
                if hasattr(trainer.val_loader, "close"):
                    trainer.val_loader.close()
                del trainer
            row.update(size=size, precision=prec, loader=kind, num_workers=cfg.data.num_workers,
                       threads_per_rank=threads, cores=cores, oversubscribed=threads * local > cores,
                       warmup_steps=args.warmup, steps=args.steps, repeats=args.repeats, wireup=world.launcher,
                       **prov)
            rows.append(row)
            if bar is not None:
                bar.update()
                ratio = row["loader_to_train_ratio"]
                bar.write(f"{_label(row):<28} {row['samples_per_s']:9.1f} samples/s  step "
                          f"{row['step_s_median'] * 1e3:8.1f} ms  {row['tflops_per_s'] * 1e3:7.2f} GFLOP/s  "
                          f"MFU {100 * row['mfu']:5.1f} %"
                          + (f"  loader x{ratio:.1f}" if ratio is not None else ""))
            if world.is_main:  # after every configuration: an interrupted benchmark keeps what it measured
                write_csv(out / "throughput.csv", rows, COLUMNS)
        if bar is not None:
            bar.close()
        distributed.barrier()
        if world.is_main:
            shutil.rmtree(out / ".work", ignore_errors=True)
            plot(rows, out / "throughput.png")
            _summary(rows)
            print(f"wrote {out / 'throughput.csv'} and {out / 'throughput.png'}")
    finally:
        distributed.destroy()
    return 0


def _summary(rows: list[dict]) -> None:
    ratios = [r["loader_to_train_ratio"] for r in rows if r["loader_to_train_ratio"] is not None]
    if ratios:
        worst = min(ratios)
        verdict = ("never the bottleneck" if worst >= LOADER_HEADROOM else
                   "not the bottleneck, but with less than 10x headroom" if worst >= 1 else "the bottleneck")
        print(f"loader rate / training rate: min {worst:.1f}x, max {max(ratios):.1f}x: the loader is {verdict}")
    best = max(rows, key=lambda r: r["mfu"] if math.isfinite(r["mfu"]) else -1)
    print(f"best MFU {100 * best['mfu']:.1f} % ({_label(best)}, {best['tflops_per_s'] * 1e3:.2f} GFLOP/s "
          f"against {best['peak_tflops_per_device'] * 1e3:.1f} GFLOP/s per device: {best['peak_source']})")
