"""`wxscale bench throughput`: training throughput, MFU, loader headroom and memory per configuration.

    wxscale bench throughput --dataset DIR [--sizes s0,s2] [--batch 8,16 | --global-batch 16]
        [--precision fp32,bf16] [--loader torch,dali] [--warmup 3] [--steps 10] [--repeats 3] [--run-steps 1000]
        [--out out/bench_throughput] [KEY=VALUE ...]

Each configuration (model size x batch x precision x loader, in the world this command was launched in: one
process, or every rank of ``mpiexec`` / ``srun`` / ``torchrun``) is set up by the trainer itself
(:class:`wxscale.training.trainer.Trainer`: model, fused optimizer, precision, DDP, loader), and what is timed is
the training loop's own iteration, :meth:`Trainer.loop_step`: wait for the batch, :meth:`Trainer.train_step`
(schedule, host-to-device, forward + rollout loss under autocast, backward with DDP's gradient all-reduce,
sync-free gradient clipping, optimizer step), and every ``logging.every_steps`` (default here 10) the loop's
sync (one all-reduce of the pending losses and the stop flag, one host read) and its log row. Trailing
``KEY=VALUE`` items are trainer config overrides (``model.overrides.patch=2 loss.rollout_steps=2``).

Timing: ``--warmup`` untimed steps first (allocator, kernel selection, loader start-up), then ``--steps`` x
``--repeats`` steps, each timed on its own; on CUDA every reading synchronises the device first. Per step, the
slowest rank's time counts (a synchronous data-parallel step waits for it); the row gives the median, p10, p90,
min and max of those, and samples/s is the global batch over the median.

Where a step's time goes (seconds per step, :data:`BREAKDOWN_COLUMNS`): data wait, host-to-device, forward,
backward (DDP's gradient all-reduce overlaps it and is inside), optimizer (clip + step + zero), the loop's sync
and logging, and the remainder of the mean step; on CUDA these come from a separate pass of ``--steps`` steps
with a synchronised reading at every phase boundary, so the rate pass is not slowed by them. Validation and
checkpoints are timed once each and amortised over a run of ``--run-steps`` steps with the config's intervals
(``validation.every_samples``, ``run.checkpoint_*``; the end of the run counts one of each); they are not part
of the step time or samples/s (as in the trainer's own samples/s). With several ranks the gradient all-reduce
alone (``grad_allreduce_s``) is what it would cost if nothing overlapped it.

The bare model rate: :meth:`Trainer.train_step` alone on one batch already on the device (forward, backward,
optimizer), ``--steps`` x ``--repeats`` steps, each repeat right after one of the loop's (so load on a shared
machine hits both alike); ``loop_efficiency`` = loop samples/s over bare samples/s, at the same batch.

Each row also carries what makes rows comparable: ``config_hash`` (the resolved trainer config without its run
dir, the world size and threads), the speed-relevant settings (TF32 flags, torch threads, ``OMP_NUM_THREADS``, CPU
affinity, ``NCCL_*``), the determinism setting (``run.deterministic``: on for CPU, off for CUDA by default),
torch.compile's mode, and peak memory per rank.

FLOP/s count the model's analytic training FLOPs (:func:`model.model_flops`: 3 x forward matmul FLOPs x rollout
steps per sample); MFU divides them by the device peak (:func:`wxscale.hardware.peak_flops`: the data-sheet rate
on known GPUs, the best measured matmul in the same dtype on CPU) times the world size, as the trainer does.
A GPU missing from the peak table gets no MFU (empty, never guessed); a row whose MFU exceeds 100 % is refused
(the FLOP count or the peak is wrong).

The loader is then timed alone (no model): the same loader object pulls ``--steps`` x ``--repeats`` batches after
one warm-up batch. ``loader_to_train_ratio`` is its samples/s over what one rank's training consumes; the loader is
the bottleneck when this is below 1, and has comfortable headroom at 10 or more. MB/s counts the bytes handed
out, 4 (K + 1) C H W per sample (as ``wxscale bench loader``).

With several ranks, the gradient all-reduce is also timed alone (a flat buffer of all trainable parameters,
``allreduce_s_median``) and set against the step time (``allreduce_fraction``): the communication share of a step
if nothing overlapped it (DDP overlaps it with the backward pass where it can).

Peak memory: CUDA's max allocated bytes per configuration; on CPU the process's max resident set size
(``getrusage``), which is a high-water mark over the whole process, so rows only ever grow (configurations run
smallest first). ``peak_mem_mb`` is the maximum over ranks, ``peak_mem_mb_per_rank`` each rank's.

Writes ``<out>/throughput.csv`` (rank 0; columns :data:`COLUMNS`, provenance last) and ``<out>/throughput.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
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

# Step-time breakdown columns, seconds per step (see the module docstring).
BREAKDOWN_COLUMNS = ["data_wait_s", "host_to_device_s", "forward_s", "backward_s", "optimizer_s", "sync_s",
                     "logging_s", "remainder_s", "validation_s", "checkpoint_s", "grad_allreduce_s"]
RESULT_COLUMNS = [
    "size", "params", "precision", "loader", "num_workers", "world_size", "batch_per_rank", "global_batch",
    "rollout_steps", "grid", "channels", "threads_per_rank", "cores", "oversubscribed", "warmup_steps", "steps",
    "repeats", "step_s_median", "step_s_p10", "step_s_p90", "step_s_min", "step_s_max", "data_s_median",
    "samples_per_s", "samples_per_s_min", "samples_per_s_max", "bare_step_s_median", "bare_samples_per_s",
    "loop_efficiency", *BREAKDOWN_COLUMNS, "train_flops_per_sample", "tflops_per_s", "peak_tflops_per_device",
    "peak_source", "mfu", "loader_samples_per_s", "loader_mb_per_s", "loader_to_train_ratio", "loader_bottleneck",
    "allreduce_s_median", "allreduce_fraction", "peak_mem_mb", "peak_mem_mb_per_rank", "peak_mem_kind",
    "optimizer_impl", "compile", "deterministic", "tf32_matmul", "tf32_cudnn", "torch_threads", "omp_num_threads",
    "cpu_affinity", "nccl_env", "config_hash", "wireup",
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
    parser.add_argument("--run-steps", type=int, default=1000,
                        help="the run length whose validation and checkpoint intervals are amortised per step "
                             "(default 1000)")
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


class ImpossibleMfu(WxscaleError):
    """A row whose MFU exceeds 100 %: its FLOP count or its peak is wrong (on a shared CPU, often a matmul peak
    measured while other jobs held the cores), so it is left out rather than written."""


def time_steps(step: Callable[[], object], warmup: int, steps: int,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Run ``warmup`` untimed calls of ``step``, then ``steps`` timed ones; the wall seconds of each timed call.

    ``clock`` reads the time; on CUDA pass one that synchronises the device first (:meth:`StepClock.now`), or
    the times are those of kernel launches.
    """
    if steps < 1 or warmup < 0:
        raise WxscaleError(f"timed steps ({steps}) must be >= 1 and --warmup ({warmup}) >= 0")
    for _ in range(warmup):
        step()
    times = []
    t0 = clock()
    for _ in range(steps):
        step()
        t1 = clock()
        times.append(t1 - t0)
        t0 = t1
    return times


def endless(loader) -> Iterator:
    """Batches of ``loader`` epoch after epoch (a benchmark needs more steps than a tiny split has)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise WxscaleError("the loader yields no batches: the split is smaller than one global batch")


def loader_step(loader) -> Callable[[], None]:
    """One batch from ``loader`` alone (no model), as a step for :func:`time_steps`."""
    import torch

    batches = endless(loader)

    def step() -> None:
        x, _ = next(batches)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    return step


def _peak_memory(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6, "cuda_max_allocated"
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6, "cpu_max_rss_process"


def base_config(dataset: str, size: str, per_rank: int, world_size: int, precision: str, loader: str,
                num_workers: int, device: str, run_steps: int, overrides: list[str]):
    """The trainer config of one configuration (validated), trainer overrides applied last.

    ``run_steps``: the run the timing stands for (its validation and checkpoint intervals are amortised over
    it); the benchmark itself never reaches its end.
    """
    from wxscale.training.config import apply_overrides, validate_config

    g = per_rank * world_size
    tree = {
        "data": {"dataset": dataset, "loader": loader, "num_workers": num_workers, "check": "off"},
        "model": {"size": size},
        "run": {"global_batch": g, "target_samples": g * max(1, run_steps), "device": device, "seed": 0},
        "precision": {"dtype": precision},
        "logging": {"progress": False, "every_steps": 10},
    }
    return validate_config(apply_overrides(tree, overrides), "bench throughput config")


def config_hash(cfg, world_size: int, threads: int) -> str:
    """12 hex digits naming what was timed: the resolved config (not its run dir), world size and threads."""
    from wxscale.training.config import config_to_dict

    tree = config_to_dict(cfg)
    tree["run"] = {k: v for k, v in tree["run"].items() if k != "dir"}
    text = json.dumps({"config": tree, "world_size": world_size, "threads": threads}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def events_per_step(cfg, total_steps: int) -> tuple[float, float]:
    """Validation passes and checkpoint saves per step in a run of ``total_steps`` steps of this config."""
    g = cfg.run.global_batch
    samples = total_steps * g
    every_val = cfg.validation.every_samples
    validations = (samples // every_val + (1 if samples % every_val else 0)) if every_val else 1
    checkpoints = 1 + sum(1 for s in cfg.run.checkpoint_at_samples if s < samples)
    if cfg.run.checkpoint_every_steps:
        checkpoints += (total_steps - 1) // cfg.run.checkpoint_every_steps
    return validations / total_steps, checkpoints / total_steps


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def measure(trainer, warmup: int, steps: int, repeats: int, time_loader: bool = True,
            amortise: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Measure one configuration set up as ``trainer``; the result columns of :data:`RESULT_COLUMNS` it owns.

    The loop rate times :meth:`Trainer.loop_step`, the training loop's own iteration (wait for a batch,
    :meth:`Trainer.train_step`, the sync and log at their interval). The bare model rate times
    :meth:`Trainer.train_step` alone on one batch already on the device. ``amortise``: validation passes and
    checkpoint saves per step of the run this configuration stands for; one of each is timed.
    """
    import torch

    from wxscale.hardware import model_flops_utilisation, speed_settings
    from wxscale.training import distributed
    from wxscale.training.trainer import STEP_PHASES, StepClock, _StopSignal

    device, world, g = trainer.device, trainer.world, trainer.cfg.run.global_batch
    cuda = device.type == "cuda"
    on_gpu = device if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    progress, no_stop = trainer.start_progress(), _StopSignal()  # a stop signal never entered: never stops
    now = StepClock(device).now  # synchronises a CUDA device before reading the time

    def loop() -> None:
        trainer.loop_step(progress, no_stop)

    trainer.step_module.train()
    n = steps * repeats
    x, y = (t.to(device) for t in trainer.next_batch())  # the bare model's batch, already in memory

    def bare() -> None:
        trainer.train_step(x, y, progress.samples)

    for _ in range(warmup):
        loop()
        bare()
    # The loop and the bare model take turns, a repeat of each at a time, so load that comes and goes on a
    # shared machine hits both alike and their ratio (the loop efficiency) stays fair. Every step is timed whole;
    # on CUDA without phase timing (a phase reading synchronises), which gets a pass of its own.
    trainer.clock, trainer.time_every = StepClock(device), 0 if cuda else 1
    step_s, bare_s = [], []
    for _ in range(repeats):
        step_s += time_steps(loop, 0, steps, now)
        bare_s += time_steps(bare, 0, steps, now)
    if cuda:
        trainer.clock, trainer.time_every = StepClock(device), 1
        time_steps(loop, 0, steps, now)
    clock = trainer.clock
    # the slowest rank sets the pace of each synchronous data-parallel step
    step_s = distributed.all_reduce(step_s, op="max", device=on_gpu)
    bare_s = distributed.all_reduce(bare_s, op="max", device=on_gpu)
    phase_steps = steps if cuda else n
    phases = {ph: clock.seconds[ph] / max(clock.timed_steps, 1) for ph in STEP_PHASES}
    phases.update(sync=clock.seconds["sync"] / phase_steps, logging=clock.seconds["logging"] / phase_steps)
    phases = dict(zip(phases, distributed.all_reduce(list(phases.values()), op="max", device=on_gpu), strict=True))
    t0 = now()
    trainer.validate()
    validation_once = now() - t0
    t0 = now()
    trainer._save("bench_checkpoint", progress.step, progress.samples, progress.flops, 0.0)
    checkpoint_once = now() - t0
    validation_once, checkpoint_once = distributed.all_reduce([validation_once, checkpoint_once], op="max",
                                                              device=on_gpu)
    mem, mem_kind = _peak_memory(device)
    mems = distributed.all_gather_object(mem)
    med, bare = statistics.median(step_s), statistics.median(bare_s)
    sps = g / med
    fps = sps * trainer.flops_per_sample
    mfu = model_flops_utilisation(fps, trainer.peak, world.world_size)
    if mfu is not None and mfu > 1.0:
        raise ImpossibleMfu(f"{trainer.cfg.model.size}: MFU {100 * mfu:.0f} % is above 100 %: the FLOP count "
                           f"({trainer.flops_per_sample:.3g}/sample) or the peak ({trainer.peak_source}) is wrong; "
                           "the row is refused")
    meta = trainer.meta
    h, w = meta.grid
    row = {
        "params": trainer.params, "world_size": world.world_size, "batch_per_rank": trainer.per_rank,
        "global_batch": g, "rollout_steps": trainer.k, "grid": f"{h}x{w}", "channels": meta.n_channels,
        "step_s_median": med, "step_s_p10": _percentile(step_s, 10), "step_s_p90": _percentile(step_s, 90),
        "step_s_min": min(step_s), "step_s_max": max(step_s), "data_s_median": phases["data_wait"],
        "samples_per_s": sps, "samples_per_s_min": g / max(step_s), "samples_per_s_max": g / min(step_s),
        "bare_step_s_median": bare, "bare_samples_per_s": g / bare, "loop_efficiency": bare / med,
        **{f"{ph}_s": phases[ph] for ph in phases},
        "validation_s": validation_once * amortise[0], "checkpoint_s": checkpoint_once * amortise[1],
        # phases are means over the timed steps, so the remainder is taken from the mean step too
        "remainder_s": statistics.fmean(step_s) - sum(phases.values()), "grad_allreduce_s": None,
        "train_flops_per_sample": trainer.flops_per_sample, "tflops_per_s": fps / 1e12,
        "peak_tflops_per_device": trainer.peak / 1e12 if trainer.peak is not None else None,
        "peak_source": trainer.peak_source, "mfu": mfu, "peak_mem_mb": max(mems),
        "peak_mem_mb_per_rank": ";".join(f"{m:.1f}" for m in mems), "peak_mem_kind": mem_kind,
        "optimizer_impl": trainer.optim_impl, "deterministic": torch.are_deterministic_algorithms_enabled(),
        "compile": trainer.cfg.model.compile_mode if trainer.cfg.model.compile else "off",
        "loader_samples_per_s": None, "loader_mb_per_s": None, "loader_to_train_ratio": None,
        "loader_bottleneck": None, "allreduce_s_median": None, "allreduce_fraction": None,
        **speed_settings(device),
    }
    if world.distributed:
        # the gradient all-reduce alone: one flat float32 buffer of every trainable parameter, as DDP's buckets
        # carry per step (DDP overlaps it with the backward pass, where the loop's breakdown counts it)
        buf = torch.zeros(trainer.params, dtype=torch.float32, device=device)
        ar_s = time_steps(lambda: torch.distributed.all_reduce(buf), 1, n, now)
        ar_s = distributed.all_reduce(ar_s, op="max", device=on_gpu)
        ar = statistics.median(ar_s)
        row.update(allreduce_s_median=ar, allreduce_fraction=ar / med, grad_allreduce_s=ar)
    if time_loader:
        # the same loader object, now without a model: one warm-up batch, then as many batches as the loop took
        lo_s = time_steps(loader_step(trainer.loader), 1, n, now)
        lo_s = distributed.all_reduce(lo_s, op="max", device=on_gpu)
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


def _percent(v: float | None) -> str:
    return f"{100 * v:5.1f} %" if v is not None else "    - "


def finish_figure(fig, title: str, path: Path) -> None:
    """Title, tight layout, atomic save: the last lines of every benchmark figure."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot(rows: list[dict], path: Path) -> None:
    """Samples/s per configuration (the loop: median, p10-p90 bar; the bare model and the loader alone as
    markers) and where a step's time goes (the breakdown, ms per step, validation and checkpoints amortised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    y = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 1.4 + 0.38 * len(rows)), sharey=True)
    sps = [r["samples_per_s"] for r in rows]
    g = [r["global_batch"] for r in rows]
    err = [[max(0.0, s - b / r["step_s_p90"]) for s, b, r in zip(sps, g, rows, strict=True)],
           [max(0.0, b / r["step_s_p10"] - s) for s, b, r in zip(sps, g, rows, strict=True)]]
    ax1.barh(y, sps, xerr=err, color="tab:blue", capsize=2, label="training loop (median; p10-p90)")
    ax1.scatter([r["bare_samples_per_s"] for r in rows], y, marker="D", s=25, color="black",
                label="bare model (batch in memory)")
    lo = [(i, r["loader_samples_per_s"] * r["world_size"]) for i, r in enumerate(rows)
          if r.get("loader_samples_per_s") is not None]
    if lo:
        ax1.scatter([v for _, v in lo], [i for i, _ in lo], marker="|", s=120, color="tab:red",
                    label="loader alone (all ranks)")
    ax1.set_xscale("log")
    ax1.set_xlabel("samples / s")
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.legend(fontsize=7, loc="best")
    ax1.grid(alpha=0.3, axis="x")
    left = [0.0] * len(rows)
    for col in BREAKDOWN_COLUMNS:
        ms = [1e3 * max(0.0, r[col] or 0.0) for r in rows]
        ax2.barh(y, ms, left=left, label=col.removesuffix("_s"))
        left = [a + b for a, b in zip(left, ms, strict=True)]
    ax2.set_xlabel("ms per step (validation, checkpoint amortised)")
    ax2.legend(fontsize=6, loc="lower right", ncol=2)
    ax2.grid(alpha=0.3, axis="x")
    r0 = rows[0]
    finish_figure(fig, f"training throughput: grid {r0['grid']} x {r0['channels']} ch, {r0['device']}, "
                       f"{r0['threads_per_rank']} threads/rank", path)


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
    from wxscale.training.trainer import Trainer, set_determinism

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
    refused: list[str] = []
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
            timed_steps = args.warmup + 2 * args.steps * args.repeats + args.steps  # loop, bare, breakdown
            run_steps = max(args.run_steps, timed_steps + 1)  # the benchmark never reaches the run's end
            cfg = base_config(args.dataset, size, b, world.world_size, prec, kind, args.num_workers, args.device,
                              run_steps, list(args.overrides))
            amortise = events_per_step(cfg, run_steps)
            # validation and checkpoints are timed once each and amortised, never inside the timed loop
            cfg.validation.every_samples, cfg.run.checkpoint_every_steps = None, None
            cfg.run.checkpoint_at_samples = []
            if device.type == "cuda":  # as the trainer: TF32 only when precision.tf32=true asks for it
                torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
                torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
            set_determinism(cfg.run.deterministic, device)
            run_dir = out / ".work" / f"{i:03d}_{size}_{prec}_b{b}_{kind}"
            if world.is_main and run_dir.exists():
                shutil.rmtree(run_dir)
            distributed.barrier()
            trainer = Trainer(cfg, run_dir, False, world, device)
            try:
                row = measure(trainer, args.warmup, args.steps, args.repeats, time_loader=not args.skip_loader,
                              amortise=amortise)
            except ImpossibleMfu as err:  # every rank raises it alike (the reduced times decide)
                refused.append(str(err))
                if world.is_main:
                    print(f"wxscale bench throughput: row refused: {err}", file=sys.stderr)
                continue
            finally:
                if hasattr(trainer.loader, "close"):
                    trainer.loader.close()
                if hasattr(trainer.val_loader, "close"):
                    trainer.val_loader.close()
                del trainer
            row["config_hash"] = config_hash(cfg, world.world_size, threads)
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
                          f"MFU {_percent(row['mfu'])}  loop efficiency {row['loop_efficiency']:.2f}"
                          + (f"  loader x{ratio:.1f}" if ratio is not None else ""))
            if world.is_main:  # after every configuration: an interrupted benchmark keeps what it measured
                write_csv(out / "throughput.csv", rows, COLUMNS)
        if bar is not None:
            bar.close()
        distributed.barrier()
        if world.is_main:
            shutil.rmtree(out / ".work", ignore_errors=True)
        if not rows:
            raise WxscaleError(f"every configuration was refused ({refused[0]}); if the machine is shared, rerun "
                               "when it is quieter, or check the FLOP count")
        if world.is_main:
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
    eff = [r["loop_efficiency"] for r in rows]
    print(f"loop efficiency (loop / bare-model samples/s): min {min(eff):.2f}, max {max(eff):.2f}")
    known = [r for r in rows if r["mfu"] is not None]
    if not known:
        print(f"MFU left empty: {rows[0]['peak_source']}")
        return
    best = max(known, key=lambda r: r["mfu"])
    print(f"best MFU {100 * best['mfu']:.1f} % ({_label(best)}, {best['tflops_per_s'] * 1e3:.2f} GFLOP/s "
          f"against {best['peak_tflops_per_device'] * 1e3:.1f} GFLOP/s per device: {best['peak_source']})")
