"""`wxscale train`: one training run, a trunk, or a cooldown branch, into a run dir.

    wxscale train --config FILE.yaml [--run-dir DIR] [--resume] [key=value ...]

From Python (the sweep): ``train(config, run_dir=None, resume=False) -> summary dict``.

Run dir (ARCHITECTURE.md): ``config.yaml`` (fully resolved: rerun with ``--config RUN/config.yaml --run-dir
NEW``), ``metrics.csv`` (one row per log interval), ``checkpoints/`` (:mod:`.checkpoint`), and ``summary.json``
written last, atomically, with ``status`` complete | stopped | failed and the reason. Only rank 0 writes.

How a run goes: one optimizer step per global batch (split evenly across ranks, DDP averages the gradients);
the learning rate is the schedule at the sample count after the step (:mod:`.schedules`); the loss is the mean over
``loss.rollout_steps`` autoregressive steps of (1 - w) MSE + w AMSE (:mod:`.losses`); FLOPs are the model's analytic
training FLOPs per sample (3 x forward matmul FLOPs x rollout steps) times the samples, summed over ranks.

- Trunk: a WSD schedule without cooldown (constant after warmup), checkpoints at ``run.checkpoint_at_samples``.
- Branch: ``run.init_from: <trunk run>/checkpoints/<name>`` loads model, optimizer, loader position and RNG
  states, so until its cooldown starts a branch repeats the trunk's steps exactly; it then cools down over
  ``schedule.cooldown_samples`` and ends exactly at ``run.target_samples``.
- ``run.budget_flops``: the run ends at the first step whose counted FLOPs reach the budget.
- ``--resume`` continues from the run dir's latest checkpoint; on CPU in fp32 the continued run is bit-for-bit
  the uninterrupted one (same losses at every step, same final weights).

The loop, top to bottom: :meth:`Trainer.run` -> ``_begin`` (config.yaml, metrics.csv, progress bar) ->
``_train``, which repeats :meth:`Trainer.loop_step` (wait for a batch, :meth:`Trainer.train_step`, then
``_after_step``: at sync points ``_sync``, validation, ``_log``, ``_save``) -> ``_finish`` (summary.json).
:meth:`Trainer.train_step` is the one training step (schedule, host-to-device, forward, backward, clip, optimizer);
``wxscale bench throughput`` times the same methods. A step never waits for the host: the losses and the
gradient norm stay on the device until a sync point (every ``logging.every_steps``, each validation and
checkpoint, the end), where one all-reduce and one host read fetch them with the stop flag. So a non-finite loss
is found there, before any checkpoint could keep it (the run ends at the last good step and names the bad one),
and a signal or ``run.max_wall_s`` stops the run at the next sync point. summary.json holds the step-time
breakdown (``step_breakdown_s``, :class:`StepClock`), the speed-relevant settings and the determinism setting
(``run.deterministic``: "auto" is bit-exact on CPU, non-deterministic and faster on CUDA).

Validation (every ``validation.every_samples`` and at the end) reports the one-step latitude-weighted MSE in
normalised units (``val_loss``, the same for every loss variant, so branches compare) and the latitude-weighted
RMSE per channel in physical units (``val_rmse_<channel>``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wxscale.data_prep.layout import load_meta, read_stats
from wxscale.errors import ConfigError, WxscaleError
from wxscale.files import ensure_writable_dir, write_csv, write_json_atomic
from wxscale.hardware import describe_device, model_flops_utilisation, peak_flops, speed_settings
from wxscale.provenance import git_sha
from wxscale.training import distributed
from wxscale.training.checkpoint import (
    has_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from wxscale.training.config import (
    TrainConfig,
    check_resume_config,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
)
from wxscale.training.losses import mse, rollout_loss, step_loss
from wxscale.training.optim import build_optimizer, clip_gradients
from wxscale.training.schedules import Schedule, build_schedule

BASE_COLUMNS = ["step", "samples", "flops", "lr", "train_loss", "val_loss", "samples_per_s", "tflops_per_s", "mfu",
                "wall_s", "grad_norm"]
EXIT_FAILED, EXIT_STOPPED = 1, 3


# --------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see bench/configs/*.yaml)")
    parser.add_argument("--run-dir", help="output run dir (default: run.dir of the config)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run dir's latest checkpoint (a fresh start if it has none)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. optim.lr=3e-4 run.target_samples=4096")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, run_dir=args.run_dir, resume=args.resume)
    if summary["status"] == "failed":
        print(f"wxscale train: failed: {summary['reason']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_STOPPED if summary["status"] == "stopped" else 0


# --------------------------------------------------------------------------------------------------------------
# pieces


class _TrainStep(nn.Module):
    """Network + rollout loss in one module, so DDP sees one forward per backward however long the rollout."""

    def __init__(self, net: nn.Module, loss_fn):
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return rollout_loss(self.net, x, y, self.loss_fn)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def _rank0_checked(world: distributed.World, fn) -> object:
    """Run ``fn`` on rank 0 and share its result or its error with every rank (no rank waits forever)."""
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except WxscaleError as err:
            error = str(err)
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise WxscaleError(error)
    return result


def _check_dataset(path: str, level: str) -> None:
    """Missing dir or data.json -> a clear error; then `wxscale check`'s validation ("quick": no checksums and
    no value scan, which cost a full read of the data at every run start; "full": everything; "off")."""
    load_meta(path)
    if level == "off":
        return
    from wxscale.data_prep.check import check_dataset

    problems = check_dataset(path, checksums=level == "full", values=level == "full")
    if problems:
        listed = "\n  - ".join(problems)
        raise WxscaleError(f"data.dataset={path} fails `wxscale check` ({len(problems)} problem(s)):\n  - {listed}"
                           "\nrewrite it with `wxscale prep`, or run `wxscale check` on it for details")


def _prepare_run_dir(run_dir: Path, resume: bool) -> str:
    """Create and probe the run dir. Returns "fresh", "resume" or "complete" (a finished run to leave alone)."""
    ensure_writable_dir(run_dir, "run dir")
    used = [n for n in ("config.yaml", "metrics.csv", "summary.json", "checkpoints") if (run_dir / n).exists()]
    if not resume:
        if used:
            raise WxscaleError(f"run dir {run_dir} already holds a run ({', '.join(used)}); pass --resume to "
                               "continue it, or choose a new --run-dir")
        return "fresh"
    summary = run_dir / "summary.json"
    if summary.is_file():
        import json

        with contextlib.suppress(ValueError):
            if json.loads(summary.read_text()).get("status") == "complete":
                return "complete"
    # Any trace of a checkpoint means a resume (a damaged pointer falls back to an intact checkpoint, or is an
    # error): starting over would rewrite metrics.csv and prune the older checkpoints.
    return "resume" if has_checkpoints(run_dir) else "fresh"



def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # round-trips exactly: the resume test compares losses bit for bit
    return str(v)


class _MetricsWriter:
    """metrics.csv on rank 0: a header once, then appended rows, flushed (a log, not a result)."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None):
        self.path, self.columns = path, columns
        if resume_step is not None and path.is_file():
            # Drop rows written after the checkpoint we resume from: they will be written again. A damaged log
            # (a torn last line, garbage) keeps the rows that still read; the checkpoint, not the log, is the state.
            rows, dropped = [], 0
            try:
                with open(path, newline="", errors="replace") as f:
                    for r in csv.DictReader(f):
                        try:
                            keep = int(r.get("step") or "") <= resume_step
                        except ValueError:
                            dropped += 1
                            continue
                        if keep:
                            rows.append(r)
            except csv.Error:
                dropped += 1
            if dropped:
                print(f"warning: {path}: {dropped} damaged row(s) left out on resume", file=sys.stderr)
            write_csv(path, rows, columns)
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
        self.file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the whole run
        self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")

    def write(self, row: dict) -> None:
        self.writer.writerow({k: _fmt(v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _StopSignal:
    """SIGTERM / SIGUSR1 (Slurm's warning before the time limit) ask for a clean stop after the current step."""

    def __init__(self):
        self.reason: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is None:
                continue
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------------------
# timing and the loop's state

# The parts of a step (timed inside :meth:`Trainer.train_step` and around its batch fetch) and of the loop around
# it (timed whenever they happen, amortised over all steps). DDP's gradient all-reduce overlaps the backward pass
# and is counted in it; "sync" is the loop's own all-reduce of the losses and the stop flag, and its host read.
STEP_PHASES = ("data_wait", "host_to_device", "forward", "backward", "optimizer")
LOOP_PHASES = ("sync", "logging", "validation", "checkpoint")
BREAKDOWN = (*STEP_PHASES, *LOOP_PHASES, "remainder")
CUDA_TIMED_EVERY = 20  # on CUDA the trainer times one step in this many: a timed step synchronises at each phase


class StepClock:
    """Wall seconds per phase of the training loop (:data:`STEP_PHASES`, :data:`LOOP_PHASES`).

    Step phases are recorded between :meth:`begin_step` (told whether to time this step) and the step's last
    :meth:`mark`. On CUDA every reading first synchronises the device, since an unsynchronised CUDA timing
    measures kernel launches, not kernels; the trainer therefore times only a sample of steps there. On CPU a
    reading is one clock read. Loop phases are timed with :meth:`span` whenever they happen.
    """

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.seconds = dict.fromkeys(STEP_PHASES + LOOP_PHASES, 0.0)
        self.timed_steps, self._on, self._t = 0, False, 0.0

    def now(self) -> float:
        """The time, after the device finished its queued work (CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def begin_step(self, timed: bool = True) -> None:
        self._on = timed
        if timed:
            self.timed_steps += 1
            self._t = self.now()

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or the step's begin) was spent in ``phase``."""
        if self._on:
            t = self.now()
            self.seconds[phase] += t - self._t
            self._t = t

    @contextlib.contextmanager
    def span(self, phase: str):
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds[phase] += self.now() - t0
            self._t = time.perf_counter()  # a span inside a timed step is not counted twice

    def breakdown(self, steps: int, loop_s: float) -> dict[str, float | None]:
        """Seconds per step by phase (:data:`BREAKDOWN`): step phases averaged over the timed steps, loop
        phases amortised over all ``steps``, and the remainder of ``loop_s / steps`` that no phase explains (on
        CUDA, where only a sample is timed and timing synchronises, it can come out negative)."""
        per_step = {ph: self.seconds[ph] / self.timed_steps if self.timed_steps else None for ph in STEP_PHASES}
        per_step.update({ph: self.seconds[ph] / steps for ph in LOOP_PHASES})
        per_step["remainder"] = loop_s / steps - sum(v for v in per_step.values() if v is not None)
        return per_step


@dataclasses.dataclass
class _Progress:
    """Where a run is between steps, and what it has measured: the training loop's state."""

    step: int
    samples: int
    flops: int
    reason: str
    wall0: float = 0.0  # wall seconds of the run before this process (a resumed run's earlier part)
    status: str = "complete"
    val_loss: float | None = None
    val_rmse: dict[str, float] = dataclasses.field(default_factory=dict)
    last_loss: float | None = None
    pending: list[torch.Tensor] = dataclasses.field(default_factory=list)  # losses not yet read by the host
    grad_norm: torch.Tensor | None = None
    grad_norm_value: float | None = None
    want_stop: bool = False
    last_row: dict = dataclasses.field(default_factory=dict)
    train_s: float = 0.0  # fetch + step + sync time, without validation, logging and checkpoints
    samples_run: int = 0
    interval_loss: float = 0.0
    interval_steps: int = 0
    interval_samples: int = 0
    interval_train_s: float = 0.0
    t_start: float = dataclasses.field(default_factory=time.perf_counter)
    t_mark: float = dataclasses.field(default_factory=time.perf_counter)

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.t_start

    def loop_s(self) -> float:
        return time.perf_counter() - self.t_start

    def add_loss(self, loss: float, samples: int) -> None:
        self.last_loss = loss
        self.interval_loss += loss
        self.interval_steps += 1
        self.interval_samples += samples
        self.samples_run += samples

    def close_interval(self) -> None:
        dt = time.perf_counter() - self.t_mark
        self.interval_train_s += dt
        self.train_s += dt

    def open_interval(self) -> None:
        self.t_mark = time.perf_counter()

    def reset_interval_stats(self) -> None:
        self.interval_loss, self.interval_steps, self.interval_samples, self.interval_train_s = 0.0, 0, 0, 0.0


# --------------------------------------------------------------------------------------------------------------
# the run


class Trainer:
    """Set up everything a run needs (validating input), then :meth:`run` trains and writes the run dir."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool, world: distributed.World,
                 device: torch.device):
        self.cfg, self.run_dir, self.world, self.device = cfg, run_dir, world, device
        self.main = world.is_main
        G = cfg.run.global_batch
        if cfg.precision.dtype == "fp16" and device.type != "cuda":
            raise ConfigError("precision.dtype=fp16 needs CUDA (gradient scaling on CPU is unsupported and fp16 "
                              "matmuls on CPU are very slow); use precision.dtype=bf16 or fp32 on CPU")
        self.per_rank = G // world.world_size

        # --- data
        dataset = cfg.data.dataset
        _rank0_checked(world, lambda: _check_dataset(dataset, cfg.data.check))
        self.meta, self.stats = load_meta(dataset), read_stats(dataset)
        self.channels = list(self.meta.channels)
        if cfg.data.channels is not None and list(cfg.data.channels) != self.channels:
            raise ConfigError(f"data.channels={cfg.data.channels} but {dataset} has channels {self.channels}; "
                              "set data.channels to the dataset's channels (in that order) or use another dataset")

        # --- model and FLOPs
        from wxscale.model import build_model, model_flops, overrides_for_grid, resolve_config

        grid, n_ch = self.meta.grid, len(self.channels)
        # The window and patch the ladder fits to this grid go into the config, so config.yaml records them.
        cfg.model.overrides = overrides_for_grid(cfg.model.size, cfg.model.overrides, grid)
        self.swin = resolve_config(cfg.model.size, cfg.model.overrides or None)
        self.k = cfg.loss.rollout_steps
        self.flops_info = model_flops(self.swin, grid, n_ch, rollout_steps=self.k,
                                      periodic_lon=self.meta.lon_periodic)
        self.flops_per_sample = int(self.flops_info.train_flops_per_sample)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        random.seed(cfg.run.seed)
        self.net = build_model(self.swin, grid=grid, in_channels=n_ch, lat_deg=np.asarray(self.meta.lat),
                               lon_deg=np.asarray(self.meta.lon), periodic_lon=self.meta.lon_periodic).to(device)
        self.params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)

        # --- where we start: fresh, resume, or a branch from a trunk checkpoint
        self.mode = _rank0_checked(world, lambda: _prepare_run_dir(run_dir, resume))
        self.state, self.start_meta, self.source = None, None, None
        if self.mode in ("resume", "complete"):
            check_resume_config(run_dir, cfg)
        if self.mode == "complete":
            return
        if self.mode == "resume":
            found = resume_checkpoint(run_dir, map_location="cpu", verbose=self.main)
            if found is not None:
                self.state, self.start_meta, self.source = found
        elif cfg.run.init_from:
            self.source = resolve_checkpoint(cfg.run.init_from)
            self.state, self.start_meta = load_checkpoint(self.source, map_location="cpu")
        if self.source is not None:
            if self.start_meta.get("channels") != self.channels:
                raise ConfigError(f"checkpoint {self.source} was trained on channels {self.start_meta.get('channels')}"
                                  f" but {dataset} has {self.channels}")
            if self.start_meta.get("model_config") != self.swin.to_dict():
                raise ConfigError(f"checkpoint {self.source} holds another model "
                                  f"({self.start_meta.get('model_config')})"
                                  f" than model.size={cfg.model.size} with overrides {cfg.model.overrides}")
        if self.mode == "fresh" and self.source is not None and cfg.run.init_weights_only:
            # fine-tuning: the weights only; optimizer, schedule, loader position and counters start afresh
            self.state, self.start_meta = {"model": self.state["model"]}, {}
        c = self.start_meta or {}
        if self.mode == "fresh" and self.source is not None:  # a branch: where it came from, kept across resumes
            self.branch = {"init_from": str(self.source), "branch_from_samples": int(c.get("samples", 0))}
        else:
            self.branch = {"init_from": c.get("init_from"), "branch_from_samples": c.get("branch_from_samples")}
        self.step0, self.samples0 = int(c.get("step", 0)), int(c.get("samples", 0))
        self.flops0, self.wall0 = int(c.get("flops", 0)), float(c.get("wall_s", 0.0))

        # --- length: target samples and / or FLOP budget
        step_flops = G * self.flops_per_sample
        ends = []
        if cfg.run.target_samples is not None:
            ends.append(cfg.run.target_samples // G)
        if cfg.run.budget_flops is not None:
            budget = cfg.run.budget_flops
            if budget < step_flops:
                raise ConfigError(f"run.budget_flops={budget:.3g} is smaller than one step ({step_flops:.3g} FLOPs = "
                                  f"{G} samples x {self.flops_per_sample:.3g} FLOPs/sample); raise the budget or "
                                  "lower run.global_batch / the model size")
            if budget <= self.flops0 and self.mode != "resume":
                raise ConfigError(f"run.budget_flops={budget:.3g} is already spent at {self.source} "
                                  f"({self.flops0:.3g} FLOPs)")
            ends.append(self.step0 + max(0, math.ceil((budget - self.flops0) / step_flops)))
        self.total_steps = min(ends)
        self.total_samples = self.total_steps * G
        if self.total_steps <= self.step0 and self.mode != "resume":
            raise ConfigError(f"run.target_samples={cfg.run.target_samples} but {self.source} is already at "
                              f"{self.samples0} samples; a branch must end after its branch point")
        self.schedule: Schedule = build_schedule(cfg.schedule, cfg.optim.lr, self.total_samples)
        if self.mode == "fresh" and self.source is not None and self.schedule.cooldown_start < self.samples0:
            raise ConfigError(f"the cooldown would start at {self.schedule.cooldown_start} samples, before the branch "
                              f"point {self.samples0} ({self.source}); shorten schedule.cooldown_samples to at most "
                              f"{self.total_samples - self.samples0} or branch from an earlier checkpoint")

        # --- loaders
        from wxscale.data_prep.loader import build_loader

        loader_device = device if cfg.data.loader == "dali" and device.type == "cuda" else None
        common = dict(seed=cfg.run.seed, rank=world.rank, world_size=world.world_size, kind=cfg.data.loader,
                      num_workers=cfg.data.num_workers, device=loader_device)
        self.loader = build_loader(dataset, "train", batch_size=self.per_rank, rollout_steps=self.k,
                                   shuffle=True, drop_last=True, max_samples=cfg.data.train_samples, **common)
        self.val_loader = build_loader(dataset, "valid", batch_size=cfg.validation.batch_size or self.per_rank,
                                       rollout_steps=1, shuffle=False, drop_last=False, **common)
        self.val_start = self.val_loader.state_dict()

        # --- optimizer, precision, DDP, compile
        self.optimizer, self.optim_impl = build_optimizer(self.net, cfg.optim, device)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision.dtype == "fp16" else None
        if self.state is not None:
            self._load_state()
        from wxscale.metrics import area_weights

        self.lat_w = torch.as_tensor(area_weights(np.asarray(self.meta.lat)), dtype=torch.float32, device=device)
        loss_fn = step_loss(self.lat_w if cfg.loss.lat_weighted else None, cfg.loss.amse_weight, cfg.loss.amse_eps,
                            periodic_lon=self.meta.lon_periodic)
        net = torch.compile(self.net, mode=cfg.model.compile_mode) if cfg.model.compile else self.net
        self.step_module: nn.Module = _TrainStep(net, loss_fn)
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.peak, self.peak_source = peak_flops(device, cfg.precision.dtype, cfg.precision.tf32)
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]  # listed once, not every step
        self.checkpoint_at = set(cfg.run.checkpoint_at_samples)
        self._idle_clock = self.clock = StepClock(device)  # never begun: its marks cost nothing
        self.time_every = CUDA_TIMED_EVERY if device.type == "cuda" else 1
        self._batches = None  # the train loader's current epoch
        self.metrics, self.bar = None, None  # rank 0's metrics.csv and progress bar, opened by run()
        self.saved: list[str] = []  # checkpoint names written by this process

    def _load_state(self) -> None:
        s, cfg = self.state, self.cfg
        self.net.load_state_dict(s["model"])
        if "optimizer" not in s:  # run.init_weights_only
            return
        self.optimizer.load_state_dict(s["optimizer"])
        for g in self.optimizer.param_groups:  # the config's hyper-parameters apply, not the trunk's
            g["betas"], g["eps"] = tuple(cfg.optim.betas), cfg.optim.eps
            g["weight_decay"] = cfg.optim.weight_decay if g.get("name") == "decay" else 0.0
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        pos = dict(s["loader"])
        if int(s.get("rollout_steps", self.k)) != self.k:
            # A branch with another rollout length reads another sample set: keep the epoch and the batch index
            # (clamped), the best continuation of the trunk's order that exists.
            pos = {"epoch": pos["epoch"], "batch": min(int(pos["batch"]), len(self.loader))}
        self.loader.load_state_dict(pos)
        rngs = s["rng"]
        set_rng_state(rngs[self.world.rank] if len(rngs) == self.world.world_size else rngs[0])

    # ---------------------------------------------------------------------------------------------------------

    def _save(self, name: str, step: int, samples: int, flops: int, wall_s: float) -> None:
        rngs = distributed.all_gather_object(rng_state())
        if self.main:
            state = {
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": {"samples": samples, **self.schedule.state_dict()},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loader": self.loader.state_dict(), "rng": rngs, "rollout_steps": self.k,
            }
            meta = {"step": step, "samples": samples, "flops": flops, "wall_s": wall_s, "channels": self.channels,
                    **self.branch,
                    "model_config": self.swin.to_dict(), "params": self.params, "rollout_steps": self.k,
                    "run_dir": str(self.run_dir), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            save_checkpoint(self.run_dir, name, state, meta)
            self.saved.append(name)
        distributed.barrier()

    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """One-step validation: lat-weighted MSE (normalised) and RMSE per channel (physical units)."""
        from wxscale.metrics import lat_weighted_rmse

        self.net.eval()
        self.val_loader.load_state_dict(self.val_start)  # every pass reads the same samples
        n_ch = len(self.channels)
        sums = torch.zeros(2 + n_ch, dtype=torch.float64, device=self.device)  # [loss*n, n, se_c*n ...]
        for i, (x, y) in enumerate(self.val_loader):
            if self.cfg.validation.max_batches is not None and i >= self.cfg.validation.max_batches:
                break
            if x.shape[0] == 0:  # a rank's empty last batch (balanced loaders): nothing to score
                continue
            x, y = x.to(self.device), y[:, 0].to(self.device)
            with _autocast(self.device, self.cfg.precision.dtype):
                pred = self.net(x)
            pred = pred.float()
            b = x.shape[0]
            sums[0] += float(mse(pred, y, self.lat_w)) * b
            sums[1] += b
            sums[2:] += lat_weighted_rmse(pred, y, self.lat_w).double().square() * b
        self.net.train()
        sums = distributed.all_reduce(sums)
        n = max(float(sums[1]), 1.0)
        std = np.asarray(self.stats.std, dtype=np.float64)
        rmse = {c: float(math.sqrt(float(sums[2 + j]) / n) * std[j]) for j, c in enumerate(self.channels)}
        return float(sums[0]) / n, rmse

    # ---------------------------------------------------------------------------------------------------------
    # the one training step

    def train_step(self, x: torch.Tensor, y: torch.Tensor, samples_after: int,
                   clock: StepClock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch ``(x, y)``: the loop runs it, and `wxscale bench throughput` times it.

        Sets the learning rate (the schedule at ``samples_after``, the sample count after this step), moves the
        batch to the device, runs forward + rollout loss under autocast, backward (DDP all-reduces the gradients
        inside it), clips the global gradient norm and steps the optimizer. Returns the detached loss and the
        pre-clip gradient norm as device tensors: nothing here waits for the host, so a CUDA step only queues
        work. ``clock`` (optional) records the phases.
        """
        clock = clock if clock is not None else self._idle_clock
        lr = self.schedule(samples_after)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        clock.mark("host_to_device")
        with _autocast(self.device, self.cfg.precision.dtype):
            loss = self.step_module(x, y)
        clock.mark("forward")
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        clock.mark("backward")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.trainable, self.cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.mark("optimizer")
        return loss.detach().float(), grad_norm

    # ---------------------------------------------------------------------------------------------------------
    # the run: begin, train step by step (sync, validate, log, checkpoint at their intervals), finish

    def run(self) -> dict:
        """Train to the end (or a stop), writing metrics.csv, checkpoints and summary.json; returns the summary."""
        if self.mode == "complete":
            return self._already_complete()
        p = self._begin()
        try:
            with _StopSignal() as stop:
                self._train(p, stop)
        except BaseException as err:
            self._write_failure(p, err)
            raise
        finally:
            self._close_outputs()
        return self._finish(p)

    def _already_complete(self) -> dict:
        import json

        if self.main:
            print(f"wxscale train: {self.run_dir} is already complete; nothing to do")
        return json.loads((self.run_dir / "summary.json").read_text())

    def _begin(self) -> _Progress:
        """Write config.yaml, open metrics.csv (rank 0) and the progress bar; the loop's starting state."""
        cfg = self.cfg
        if self.main:
            save_config(cfg, self.run_dir / "config.yaml")
            columns = BASE_COLUMNS + [f"val_rmse_{c}" for c in self.channels]
            self.metrics = _MetricsWriter(self.run_dir / "metrics.csv", columns,
                                          self.step0 if self.mode == "resume" else None)
            if cfg.logging.progress:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total_steps, initial=self.step0, desc=f"train {self.run_dir.name}",
                                unit="step", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        self.clock = StepClock(self.device)
        return self.start_progress()

    def start_progress(self) -> _Progress:
        """The loop's state at this run's starting point (fresh, resumed or branched)."""
        return _Progress(step=self.step0, samples=self.samples0, flops=self.flops0,
                         reason=f"reached {self.total_samples} samples", wall0=self.wall0)

    def _train(self, p: _Progress, stop: _StopSignal) -> None:
        """Step until the run's end, a stop or a failure."""
        self.step_module.train()
        while p.step < self.total_steps:
            if self.loop_step(p, stop):
                return

    def loop_step(self, p: _Progress, stop: _StopSignal) -> bool:
        """One iteration of the training loop, as `wxscale bench throughput` times it too: wait for the next
        batch, :meth:`train_step`, then sync / validate / log / checkpoint where their intervals fall. Every
        ``time_every``-th step is timed by phase (all on CPU; one in :data:`CUDA_TIMED_EVERY` on CUDA, since
        timing synchronises). True when the loop must end."""
        G = self.cfg.run.global_batch
        self.clock.begin_step(timed=self.time_every > 0 and p.step % self.time_every == 0)
        x, y = self.next_batch()
        self.clock.mark("data_wait")
        loss, grad_norm = self.train_step(x, y, p.samples + G, self.clock)
        p.pending.append(loss)
        p.grad_norm = grad_norm
        p.step, p.samples, p.flops = p.step + 1, p.samples + G, p.flops + G * self.flops_per_sample
        return self._after_step(p, stop)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The loader's next batch; at an epoch's end, the next epoch's first (the loader reshuffles)."""
        batch = next(self._batches, None) if self._batches is not None else None
        if batch is None:
            self._batches = iter(self.loader)
            batch = next(self._batches, None)
            if batch is None:
                raise WxscaleError(f"{self.cfg.data.dataset}: the train split yields no batch of "
                                   f"{self.per_rank} samples per rank; lower run.global_batch")
        return batch

    def _after_step(self, p: _Progress, stop: _StopSignal) -> bool:
        """Sync, validate, log and checkpoint where their intervals fall; True when the loop must end.

        The host reads the losses only at these points (one all-reduce of the pending losses and the stop flag),
        so a step between them never waits: a non-finite loss is found there (before any checkpoint could keep
        it), and a stop (signal, ``run.max_wall_s``) takes effect there.
        """
        cfg, G = self.cfg, self.cfg.run.global_batch
        done = p.step >= self.total_steps
        every_val = cfg.validation.every_samples
        validate_due = done or (every_val is not None and p.samples // every_val > (p.samples - G) // every_val)
        log_due = p.step % cfg.logging.every_steps == 0
        ckpt_every = cfg.run.checkpoint_every_steps
        checkpoint_due = done or p.samples in self.checkpoint_at or bool(ckpt_every and p.step % ckpt_every == 0)
        if self.bar is not None:
            self.bar.update(1)
        if not (validate_due or log_due or checkpoint_due):
            return False
        if not self._sync(p, stop):
            return True  # failed: a non-finite loss
        stopping = p.want_stop and not done
        if stopping:
            p.status = "stopped"
            p.reason = stop.reason or f"run.max_wall_s={cfg.run.max_wall_s} reached"
        p.close_interval()  # validation, logging and checkpoints are not training time
        validated = validate_due or stopping
        if validated:
            with self.clock.span("validation"):
                p.val_loss, p.val_rmse = self.validate()
        if log_due or validated:
            with self.clock.span("logging"):
                self._log(p, validated)
        if checkpoint_due or stopping:
            with self.clock.span("checkpoint"):
                self._save(self._checkpoint_name(p.step, p.samples, done), p.step, p.samples, p.flops, p.wall())
        p.open_interval()
        return done or stopping

    def _sync(self, p: _Progress, stop: _StopSignal) -> bool:
        """Read the losses of the steps since the last sync (mean over ranks) and whether any rank wants to
        stop: one all-reduce and one host read. False (and status failed) at a non-finite loss."""
        cfg, G, n = self.cfg, self.cfg.run.global_batch, len(p.pending)
        with self.clock.span("sync"):
            want_stop = stop.reason is not None or (cfg.run.max_wall_s is not None and p.wall() > cfg.run.max_wall_s)
            flag = torch.tensor([float(want_stop)], dtype=torch.float64, device=self.device)
            reduced = distributed.all_reduce(torch.cat([torch.stack(p.pending).double(), flag]))
            host = torch.cat([reduced, p.grad_norm.detach().double().reshape(1).to(reduced.device)]).tolist()
        p.pending.clear()
        losses, p.want_stop, p.grad_norm_value = [v / self.world.world_size for v in host[:n]], host[n] > 0, host[-1]
        for i, loss in enumerate(losses):
            if not math.isfinite(loss):
                back = n - i  # steps from the bad one to now: the run ends at the last good step
                p.step, p.samples = p.step - back, p.samples - back * G
                p.flops -= back * G * self.flops_per_sample
                p.status, p.reason = "failed", (f"non-finite training loss ({loss}) at step {p.step + 1} "
                                                f"({p.samples + G} samples); the last good checkpoint is kept")
                return False
            p.add_loss(loss, G)
        return True

    def _log(self, p: _Progress, validated: bool) -> None:
        """One metrics.csv row (rank 0) over the interval since the last row; the progress bar's numbers."""
        sps = p.interval_samples / max(p.interval_train_s, 1e-12)
        fps = sps * self.flops_per_sample
        mfu = model_flops_utilisation(fps, self.peak, self.world.world_size)
        p.last_row = {
            "step": p.step, "samples": p.samples, "flops": p.flops, "lr": self.schedule(p.samples),
            "train_loss": p.interval_loss / max(p.interval_steps, 1), "val_loss": p.val_loss if validated else None,
            "samples_per_s": sps, "tflops_per_s": fps / 1e12, "mfu": mfu, "wall_s": p.wall(),
            "grad_norm": p.grad_norm_value,
            **({f"val_rmse_{c}": v for c, v in p.val_rmse.items()} if validated else {}),
        }
        if self.metrics is not None:
            self.metrics.write(p.last_row)
        p.reset_interval_stats()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{p.last_loss:.4g}", lr=f"{p.last_row['lr']:.3g}", sps=f"{sps:.3g}",
                                 tflops=f"{fps / 1e12:.3g}", mfu=f"{mfu:.2%}" if mfu is not None else "-",
                                 refresh=False)

    def _checkpoint_name(self, step: int, samples: int, done: bool) -> str:
        """Kept trunk points by sample count, "final" at the end, else a rolling ``step_<n>`` for --resume."""
        if samples in self.checkpoint_at:
            return f"samples_{samples}"
        return "final" if done else f"step_{step:08d}"

    def _write_failure(self, p: _Progress, err: BaseException) -> None:
        if self.main:
            status = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
            self._write_summary(status, f"{type(err).__name__}: {err}", p, traceback.format_exc(limit=5))

    def _close_outputs(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()

    def _finish(self, p: _Progress) -> dict:
        """Validate if the run ended without it (resumed at its very end), write summary.json, print a line."""
        if p.status == "complete" and p.val_loss is None:
            p.val_loss, p.val_rmse = self.validate()
        summary = self._write_summary(p.status, p.reason, p)
        if self.main:
            vl = f"{p.val_loss:.5g}" if p.val_loss is not None else "-"
            print(f"wxscale train: {p.status} ({p.reason}); step {p.step}, {p.samples} samples, {p.flops:.3g} "
                  f"FLOPs, val_loss {vl}; run dir {self.run_dir}", file=sys.stderr)
        return summary

    def _write_summary(self, status: str, reason: str, p: _Progress, tb: str | None = None) -> dict:
        cfg = self.cfg
        sps = p.samples_run / p.train_s if p.train_s > 0 else None
        fps = sps * self.flops_per_sample if sps is not None else None
        steps_run = p.step - self.step0
        summary = {
            "status": status, "reason": reason,
            "step": p.step, "samples": p.samples, "flops": p.flops,
            "target_samples": self.total_samples, "budget_flops": cfg.run.budget_flops,
            "train_loss": p.last_loss, "val_loss": p.val_loss,
            **{f"val_rmse_{c}": v for c, v in p.val_rmse.items()},
            "wall_s": p.wall(), "train_s": p.train_s, "samples_per_s": sps,
            "tflops_per_s": fps / 1e12 if fps is not None else None,
            "mfu": model_flops_utilisation(fps, self.peak, self.world.world_size) if fps is not None else None,
            "step_breakdown_s": self.clock.breakdown(steps_run, p.loop_s()) if steps_run > 0 else None,
            "params": self.params, "flops_per_sample": self.flops_per_sample,
            "forward_matmul_flops": int(self.flops_info.forward_matmul_flops),
            "forward_other_flops": int(self.flops_info.forward_other_flops),
            "rollout_steps": self.k, "model_size": cfg.model.size, "model_config": self.swin.to_dict(),
            "channels": self.channels, "schedule": self.schedule.state_dict(),
            "cooldown_start_samples": self.schedule.cooldown_start,
            **self.branch,
            "resumed_from": str(self.source) if self.mode == "resume" else None,
            "checkpoints": self.saved,
            "optimizer_impl": self.optim_impl, "precision": cfg.precision.dtype, "compile": cfg.model.compile,
            "compile_mode": cfg.model.compile_mode if cfg.model.compile else None,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "loader": cfg.data.loader, "world_size": self.world.world_size, "launcher": self.world.launcher,
            "device": describe_device(self.device), "peak_flops_per_device": self.peak,
            "peak_flops_source": self.peak_source, "speed_settings": speed_settings(self.device),
            "host": socket.gethostname(), "git_sha": git_sha() or None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if tb:
            summary["traceback"] = tb
        if self.main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def set_determinism(setting: bool | str, device: torch.device) -> bool:
    """``run.deterministic``: "auto" is bit-exact on CPU (free there) and fast on CUDA, where deterministic
    index_select / scatter kernels cost time. Returns the setting applied (summary.json records it)."""
    on = device.type != "cuda" if setting == "auto" else bool(setting)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(on, warn_only=True)
    return on


def train(config: TrainConfig | dict | str | os.PathLike, run_dir: str | os.PathLike | None = None,
          resume: bool = False, overrides: list[str] | None = None) -> dict:
    """Train one run (see the module docstring) and return its summary (also in ``<run>/summary.json``).

    ``config`` is a :class:`TrainConfig`, a dict of sections, or a YAML path. ``run_dir`` overrides
    ``run.dir``. Bad input raises :class:`WxscaleError` before anything is trained; a non-finite loss returns a
    summary with status "failed"; any other error writes a failed summary and is raised.
    """
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides)
    else:
        cfg = validate_config(config.model_dump() if isinstance(config, TrainConfig) else config)
        if overrides:
            from wxscale.training.config import apply_overrides

            cfg = validate_config(apply_overrides(config_to_dict(cfg), overrides))
    if run_dir is not None:
        cfg = validate_config({**config_to_dict(cfg), "run": {**config_to_dict(cfg)["run"], "dir": str(run_dir)}})
    if cfg.run.dir is None:
        raise ConfigError("no run dir: pass --run-dir DIR or set run.dir in the config")
    if cfg.run.cpu_threads is not None:
        torch.set_num_threads(cfg.run.cpu_threads)
    world = distributed.detect_world(cfg.distributed.launcher)
    if cfg.run.global_batch % world.world_size:  # before any process group exists: every rank says the same
        raise ConfigError(f"run.global_batch={cfg.run.global_batch} is not divisible by the world size "
                          f"{world.world_size}; use a multiple of {world.world_size}")
    device = distributed.device_for(world, cfg.run.device)
    set_determinism(cfg.run.deterministic, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
    distributed.init(world, device, cfg.distributed.backend, cfg.distributed.timeout_s)
    try:
        trainer = Trainer(cfg, Path(cfg.run.dir), resume, world, device)
        return trainer.run()
    finally:
        distributed.destroy()
