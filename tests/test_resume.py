"""Bit-exact resume: a run killed with SIGKILL mid-way and resumed with --resume equals an uninterrupted run
(CPU, fp32): the same loss at every step, bit for bit, and the same final weights."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from tests.train_utils import REPO, child_env, read_metrics, tiny_config, train_cmd, write_config
from wxscale.errors import ConfigError
from wxscale.training.checkpoint import latest_checkpoint, load_checkpoint
from wxscale.training.trainer import train

STEPS = 60  # about 2.6 epochs of the tiny dataset at batch 4: the resume crosses epoch boundaries


def _config(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, run={"target_samples": 4 * STEPS, "checkpoint_every_steps": 7},
                      validation={"every_samples": 40})
    return write_config(tmp_path / "cfg.yaml", cfg)


def test_sigkill_and_resume_is_bit_exact(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # The reference and the resumed run run in this process (cpu_threads=1 like the child): only the run that is
    # killed needs its own process, and its memory dies with it, so the resume restores everything from disk.
    assert train(cfg, run_dir=ref)["status"] == "complete"

    proc = subprocess.Popen(train_cmd(cfg, killed), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(killed) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    at = json.loads((latest_checkpoint(killed) / "meta.json").read_text())["step"]
    assert 0 < at < STEPS

    assert train(cfg, run_dir=killed, resume=True)["status"] == "complete"
    a, b = read_metrics(ref), read_metrics(killed)
    assert [int(r["step"]) for r in b] == list(range(1, STEPS + 1))  # rows after the checkpoint were rewritten
    for key in ("train_loss", "lr", "samples", "flops", "val_loss", "grad_norm", "val_rmse_z"):
        assert [r[key] for r in b] == [r[key] for r in a], key  # string equality: bit for bit
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, killed))
    assert sb["status"] == "complete" and sb["resumed_from"] and sb["val_loss"] == sa["val_loss"]
    wa, wb = (load_checkpoint(d / "checkpoints" / "final")[0]["model"] for d in (ref, killed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_changed_config_and_skips_finished_runs(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, run={"target_samples": 16, "checkpoint_every_steps": 2})
    first = train(cfg, run_dir=tmp_path / "r")
    assert first["status"] == "complete"
    again = train(cfg, run_dir=tmp_path / "r", resume=True)  # complete: nothing to do
    assert again == json.loads((tmp_path / "r" / "summary.json").read_text())
    (tmp_path / "r" / "summary.json").unlink()  # pretend it was killed after its last checkpoint
    changed = tiny_config(tiny_dataset, optim={"lr": 1e-3}, run={"target_samples": 16, "checkpoint_every_steps": 2})
    with pytest.raises(ConfigError, match=r"optim.lr: 0.002 -> 0.001"):
        train(changed, run_dir=tmp_path / "r", resume=True)
    # allowed changes (logging, wall limit) resume fine
    ok = tiny_config(tiny_dataset, run={"target_samples": 16, "checkpoint_every_steps": 2, "max_wall_s": 1e6},
                     logging={"every_steps": 2})
    resumed = train(ok, run_dir=tmp_path / "r", resume=True)  # resumed at its very end: validated, complete
    assert resumed["status"] == "complete" and resumed["samples"] == 16
    assert resumed["val_loss"] == first["val_loss"]


def test_resume_without_checkpoint_starts_fresh(tiny_dataset, tmp_path):
    summary = train(tiny_config(tiny_dataset, run={"target_samples": 8}), run_dir=tmp_path / "new", resume=True)
    assert summary["status"] == "complete" and summary["resumed_from"] is None


def test_wall_limit_stops_with_checkpoint_then_resumes(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, run={"target_samples": 40, "max_wall_s": 1e-3})
    stopped = train(cfg, run_dir=tmp_path / "w")
    assert stopped["status"] == "stopped" and "max_wall_s" in stopped["reason"] and stopped["step"] == 1
    assert latest_checkpoint(tmp_path / "w") is not None and stopped["val_loss"] is not None
    cfg["run"]["max_wall_s"] = None
    cfg["run"]["target_samples"] = 40
    done = train(cfg, run_dir=tmp_path / "w", resume=True)
    assert done["status"] == "complete" and done["samples"] == 40
