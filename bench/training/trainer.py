"""`wxscale train`: one training run, a trunk, or a cooldown branch, into a run dir.

    wxscale train --config FILE.yaml [--run-dir DIR] [--resume] [key=value ...]

From Python (the sweep): ``train(config, run_dir=None, resume=False) -> summary dict``.

Run dir (ARCHITECTURE.md): ``config.yaml`` (fully resolved: rerun with ``--config RUN/config.yaml --run-dir
NEW``), ``metrics.csv`` (one row per log interval), ``checkpoints/`` (bench.checkpoint), and ``summary.json``
written last, atomically, with ``status`` complete | stopped | failed and the reason. Only rank 0 writes.

How a run goes: one optimizer step per global batch (split evenly across ranks, DDP averages the gradients);
the learning rate is the schedule at the sample count after the step (bench.schedules); the loss is the mean over
``loss.rollout_steps`` autoregressive steps of (1 - w) MSE + w AMSE (bench.losses); FLOPs are the model's analytic
training FLOPs per sample (3 x forward matmul FLOPs x rollout steps) times the samples, summed over ranks.

- Trunk: a WSD schedule without cooldown (constant after warmup), checkpoints at ``run.checkpoint_at_samples``.
- Branch: ``run.init_from: <trunk run>/checkpoints/<name>`` loads model, optimizer, loader position and RNG
  states, so until its cooldown starts a branch repeats the trunk's steps exactly; it then cools down over
  ``schedule.cooldown_samples`` and ends exactly at ``run.target_samples``.
- ``run.budget_flops``: the run ends at the first step whose counted FLOPs reach the budget.
- ``--resume`` continues from the run dir's latest checkpoint; on CPU in fp32 the continued run is bit-for-bit
  the uninterrupted one (same losses at every step, same final weights).

Validation (every ``validation.every_samples`` and at the end) reports the one-step latitude-weighted MSE in
normalised units (``val_loss``, the same for every loss variant, so branches compare) and the latitude-weighted
RMSE per channel in physical units (``val_rmse_<channel>``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import random
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wxscale.data_prep.layout import load_meta, read_stats
from wxscale.errors import ConfigError, WxscaleError
from wxscale.files import write_csv, write_json_atomic
from wxscale.hardware import describe_device, peak_flops
from wxscale.provenance import git_sha
from wxscale.training import distributed
from wxscale.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from wxscale.training.config import TrainConfig, config_to_dict, load_config, save_config, validate_config
from wxscale.training.losses import mse, rollout_loss, step_loss
from wxscale.training.optim import build_optimizer, clip_gradients
from wxscale.training.schedules import Schedule, build_schedule

BASE_COLUMNS = ["step", "samples", "flops", "lr", "train_loss", "val_loss", "samples_per_s", "tflops_per_s", "mfu",
                "wall_s", "grad_norm"]
# Config keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = ("run.dir", "run.max_wall_s", "run.checkpoint_every_steps", "data.num_workers", "data.check",
                     "logging.", "distributed.")
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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe."):
            pass
    except OSError as err:
        raise WxscaleError(f"run dir {run_dir} is not writable ({err.strerror or err}); choose another --run-dir "
                           "or fix its permissions") from None
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
    return "resume" if latest_checkpoint(run_dir) is not None else "fresh"


def _config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b, name = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, name + ".")
        elif a != b and not any(name == r or (r.endswith(".") and name.startswith(r)) for r in RESUMABLE_CHANGES):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out



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
            # Drop rows written after the checkpoint we resume from: they will be written again.
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
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
        from wxscale.model import build_model, model_flops, resolve_config

        self.swin = resolve_config(cfg.model.size, cfg.model.overrides or None)
        grid, n_ch = self.meta.grid, len(self.channels)
        self.k = cfg.loss.rollout_steps
        self.flops_info = model_flops(self.swin, grid, n_ch, rollout_steps=self.k)
        self.flops_per_sample = int(self.flops_info.train_flops_per_sample)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        random.seed(cfg.run.seed)
        self.net = build_model(self.swin, grid=grid, in_channels=n_ch, lat_deg=np.asarray(self.meta.lat),
                               lon_deg=np.asarray(self.meta.lon)).to(device)
        self.params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)

        # --- where we start: fresh, resume, or a branch from a trunk checkpoint
        self.mode = _rank0_checked(world, lambda: _prepare_run_dir(run_dir, resume))
        self.state, self.start_meta, self.source = None, None, None
        if self.mode == "complete":
            return
        if self.mode == "resume":
            self.source = latest_checkpoint(run_dir)
            old = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
            if old is not None:
                changes = _config_changes(config_to_dict(old), config_to_dict(cfg))
                if changes:
                    raise ConfigError(f"--resume with a config that differs from {run_dir}/config.yaml in: "
                                      + "; ".join(changes) + ". Resume with the run's own config.yaml")
        elif cfg.run.init_from:
            self.source = resolve_checkpoint(cfg.run.init_from)
        if self.source is not None:
            self.state, self.start_meta = load_checkpoint(self.source, map_location="cpu")
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
        loss_fn = step_loss(self.lat_w if cfg.loss.lat_weighted else None, cfg.loss.amse_weight, cfg.loss.amse_eps)
        net = torch.compile(self.net) if cfg.model.compile else self.net
        self.step_module: nn.Module = _TrainStep(net, loss_fn)
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.peak, self.peak_source = peak_flops(device, cfg.precision.dtype, cfg.precision.tf32)

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

    def run(self) -> dict:
        cfg, run_dir, G = self.cfg, self.run_dir, self.cfg.run.global_batch
        if self.mode == "complete":
            import json

            if self.main:
                print(f"wxscale train: {run_dir} is already complete; nothing to do")
            return json.loads((run_dir / "summary.json").read_text())
        columns = BASE_COLUMNS + [f"val_rmse_{c}" for c in self.channels]
        self.saved: list[str] = []
        metrics = None
        if self.main:
            save_config(cfg, run_dir / "config.yaml")
            metrics = _MetricsWriter(run_dir / "metrics.csv", columns,
                                     self.step0 if self.mode == "resume" else None)
        step, samples, flops = self.step0, self.samples0, self.flops0
        t_start = time.perf_counter()
        wall = lambda: self.wall0 + time.perf_counter() - t_start  # noqa: E731
        status, reason = "complete", f"reached {self.total_samples} samples"
        val_loss, val_rmse, last_loss, last_row = None, {}, None, {}
        interval = {"loss": 0.0, "n": 0, "train_s": 0.0, "samples": 0}
        train_s_total, samples_run = 0.0, 0
        every_val = cfg.validation.every_samples
        ckpt_at = set(cfg.run.checkpoint_at_samples)
        bar = None
        if self.main and cfg.logging.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=step, desc=f"train {run_dir.name}", unit="step",
                       dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        self.step_module.train()
        t_mark = time.perf_counter()
        try:
            with _StopSignal() as stop:
                while step < self.total_steps and status == "complete":
                    for x, y in self.loader:
                        lr = self.schedule(samples + G)
                        for g in self.optimizer.param_groups:
                            g["lr"] = lr
                        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                        with _autocast(self.device, cfg.precision.dtype):
                            loss = self.step_module(x, y)
                        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                        # one reduction per step: the mean loss and whether any rank wants to stop
                        want_stop = float(stop.reason is not None
                                          or (cfg.run.max_wall_s is not None and wall() > cfg.run.max_wall_s))
                        red = distributed.all_reduce(torch.stack([loss.detach().float().double(),
                                                                  torch.tensor(want_stop, dtype=torch.float64,
                                                                               device=loss.device)]))
                        loss_val = float(red[0]) / self.world.world_size
                        if not math.isfinite(loss_val):
                            status, reason = "failed", (f"non-finite training loss ({loss_val}) at step {step + 1} "
                                                        f"({samples + G} samples); the last good checkpoint is kept")
                            self.optimizer.zero_grad(set_to_none=True)
                            break
                        if self.scaler is not None:
                            self.scaler.unscale_(self.optimizer)
                        grad_norm = clip_gradients(self.net.parameters(), cfg.optim.grad_clip)
                        if self.scaler is not None:
                            self.scaler.step(self.optimizer)
                            self.scaler.update()
                        else:
                            self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        step, samples, flops = step + 1, samples + G, flops + G * self.flops_per_sample
                        last_loss = loss_val
                        dt = time.perf_counter() - t_mark  # loading + step: what throughput means
                        interval["loss"] += loss_val
                        interval["n"] += 1
                        interval["train_s"] += dt
                        interval["samples"] += G
                        train_s_total += dt
                        samples_run += G

                        done = step >= self.total_steps
                        stopping = float(red[1]) > 0 and not done
                        if stopping:
                            status = "stopped"
                            reason = stop.reason or f"run.max_wall_s={cfg.run.max_wall_s} reached"
                        validate_now = done or stopping or (
                            every_val is not None and samples // every_val > (samples - G) // every_val)
                        row_val, row_rmse = None, {}
                        if validate_now:
                            val_loss, val_rmse = self.validate()
                            row_val, row_rmse = val_loss, val_rmse
                        if step % cfg.logging.every_steps == 0 or validate_now:
                            sps = interval["samples"] / max(interval["train_s"], 1e-12)
                            fps = sps * self.flops_per_sample
                            last_row = {
                                "step": step, "samples": samples, "flops": flops, "lr": lr,
                                "train_loss": interval["loss"] / interval["n"], "val_loss": row_val,
                                "samples_per_s": sps, "tflops_per_s": fps / 1e12,
                                "mfu": fps / (self.peak * self.world.world_size), "wall_s": wall(),
                                "grad_norm": grad_norm,
                                **{f"val_rmse_{c}": v for c, v in row_rmse.items()},
                            }
                            if metrics is not None:
                                metrics.write(last_row)
                            interval = {"loss": 0.0, "n": 0, "train_s": 0.0, "samples": 0}
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{loss_val:.4g}", lr=f"{lr:.3g}",
                                            sps=f"{last_row.get('samples_per_s', 0):.3g}",
                                            tflops=f"{last_row.get('tflops_per_s', 0):.3g}",
                                            mfu=f"{last_row.get('mfu', 0):.2%}", refresh=False)
                        if done:
                            name = f"samples_{samples}" if samples in ckpt_at else "final"
                            self._save(name, step, samples, flops, wall())
                        elif samples in ckpt_at:
                            self._save(f"samples_{samples}", step, samples, flops, wall())
                        elif stopping or (cfg.run.checkpoint_every_steps
                                          and step % cfg.run.checkpoint_every_steps == 0):
                            self._save(f"step_{step:08d}", step, samples, flops, wall())
                        if done or stopping:
                            break
                        t_mark = time.perf_counter()  # validation and checkpoints are not training time
        except BaseException as err:
            if self.main:
                status = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
                self._write_summary(status, f"{type(err).__name__}: {err}", step, samples, flops, wall(),
                                    train_s_total, samples_run, last_loss, val_loss, val_rmse,
                                    traceback.format_exc(limit=5))
            raise
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        if status == "complete" and val_loss is None:  # resumed at its very end (killed before the summary)
            val_loss, val_rmse = self.validate()
        summary = self._write_summary(status, reason, step, samples, flops, wall(), train_s_total, samples_run,
                                      last_loss, val_loss, val_rmse)
        if self.main:
            vl = f"{val_loss:.5g}" if val_loss is not None else "-"
            print(f"wxscale train: {status} ({reason}); step {step}, {samples} samples, {flops:.3g} FLOPs, "
                  f"val_loss {vl}; run dir {run_dir}", file=sys.stderr)
        return summary

    def _write_summary(self, status, reason, step, samples, flops, wall_s, train_s, samples_run, last_loss,
                       val_loss, val_rmse, tb: str | None = None) -> dict:
        cfg = self.cfg
        sps = samples_run / train_s if train_s > 0 else None
        fps = sps * self.flops_per_sample if sps is not None else None
        summary = {
            "status": status, "reason": reason,
            "step": step, "samples": samples, "flops": flops,
            "target_samples": self.total_samples, "budget_flops": cfg.run.budget_flops,
            "train_loss": last_loss, "val_loss": val_loss,
            **{f"val_rmse_{c}": v for c, v in val_rmse.items()},
            "wall_s": wall_s, "train_s": train_s, "samples_per_s": sps,
            "tflops_per_s": fps / 1e12 if fps is not None else None,
            "mfu": fps / (self.peak * self.world.world_size) if fps is not None else None,
            "params": self.params, "flops_per_sample": self.flops_per_sample,
            "forward_matmul_flops": int(self.flops_info.forward_matmul_flops),
            "forward_other_flops": int(self.flops_info.forward_other_flops),
            "rollout_steps": self.k, "model_size": cfg.model.size, "model_config": self.swin.to_dict(),
            "channels": self.channels, "schedule": self.schedule.state_dict(),
            "cooldown_start_samples": self.schedule.cooldown_start,
            **self.branch,
            "resumed_from": str(self.source) if self.mode == "resume" else None,
            "checkpoints": getattr(self, "saved", []),
            "optimizer_impl": self.optim_impl, "precision": cfg.precision.dtype, "compile": cfg.model.compile,
            "loader": cfg.data.loader, "world_size": self.world.world_size, "launcher": self.world.launcher,
            "device": describe_device(self.device), "peak_flops_per_device": self.peak,
            "peak_flops_source": self.peak_source, "host": socket.gethostname(), "git_sha": git_sha() or None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if tb:
            summary["traceback"] = tb
        if self.main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


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
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)
    world = distributed.detect_world(cfg.distributed.launcher)
    if cfg.run.global_batch % world.world_size:  # before any process group exists: every rank says the same
        raise ConfigError(f"run.global_batch={cfg.run.global_batch} is not divisible by the world size "
                          f"{world.world_size}; use a multiple of {world.world_size}")
    device = distributed.device_for(world, cfg.run.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision.tf32
        torch.backends.cudnn.allow_tf32 = cfg.precision.tf32
    distributed.init(world, device, cfg.distributed.backend, cfg.distributed.timeout_s)
    try:
        trainer = Trainer(cfg, Path(cfg.run.dir), resume, world, device)
        return trainer.run()
    finally:
        distributed.destroy()
