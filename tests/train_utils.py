"""Helpers shared by the trainer's tests: a tiny config, reading metrics.csv, running `wxscale train` as a process."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Launcher variables that would make a child process believe it is one rank of a larger world.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def tiny_config(dataset: str | Path, **sections: dict) -> dict:
    """A config for the tiny test dataset (8 x 16 grid): s0 with patch 2 and 2 x 4 windows, one CPU thread."""
    cfg = {
        "data": {"dataset": str(dataset), "num_workers": 0},
        "model": {"size": "s0", "overrides": {"patch": 2, "window": [2, 4]}},
        "optim": {"lr": 2e-3},
        "run": {"global_batch": 4, "target_samples": 32, "cpu_threads": 1, "seed": 0},
        "validation": {"max_batches": 2},
        "logging": {"progress": False},
    }
    return _merge(cfg, sections)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def child_env() -> dict[str, str]:
    """The environment for a child run: one thread, no launcher or Slurm variables from the test's own world."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "PMI_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def train_cmd(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wxscale.cli", "train", "--config", str(config), "--run-dir", str(run_dir), *extra]


def run_train(config: Path, run_dir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, run_dir, *extra), cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def write_sweep_base(path: Path) -> Path:
    """A base training config for sweep and demo tests: tiny, single-threaded, quiet, no dataset re-check."""
    import yaml

    path.write_text(yaml.safe_dump({
        "data": {"num_workers": 0, "check": "off"},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_samples": 8},
        "run": {"target_samples": 8, "cpu_threads": 1},
        "validation": {"max_batches": 2},
        "logging": {"progress": False},
    }))
    return path
