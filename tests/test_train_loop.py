"""The training loop's shape: one step (Trainer.train_step) per optimizer step, the host reading losses only at
sync points, the step-time breakdown in summary.json, the determinism setting, and the phase clock."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.train_utils import read_metrics, tiny_config
from wxscale.training.trainer import BREAKDOWN, StepClock, Trainer, set_determinism, train


def test_training_runs_train_step_and_syncs_only_at_log_points(tiny_dataset, tmp_path, monkeypatch):
    calls = {"step": 0, "sync": 0}
    real_step, real_sync = Trainer.train_step, Trainer._sync

    def step(self, *a, **k):
        calls["step"] += 1
        out = real_step(self, *a, **k)
        loss, grad_norm = out
        assert loss.dim() == 0 and isinstance(grad_norm, torch.Tensor)  # device tensors: nothing read yet
        return out

    def sync(self, *a, **k):
        calls["sync"] += 1
        return real_sync(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(Trainer, "_sync", sync)
    summary = train(tiny_config(tiny_dataset, run={"target_samples": 64}, logging={"every_steps": 4}),
                    run_dir=tmp_path / "r")
    assert summary["status"] == "complete" and summary["step"] == 16
    assert calls == {"step": 16, "sync": 4}  # steps 4, 8, 12, 16
    rows = read_metrics(tmp_path / "r")
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16]
    assert all(float(r["grad_norm"]) > 0 for r in rows)
    breakdown = summary["step_breakdown_s"]
    assert list(breakdown) == list(BREAKDOWN)
    assert all(breakdown[k] > 0 for k in ("data_wait", "forward", "backward", "optimizer", "sync", "validation"))
    assert sum(breakdown.values()) == pytest.approx(summary["wall_s"] / 16, rel=0.25)
    assert summary["deterministic"] is True  # CPU: bit-exact by default
    assert set(summary["speed_settings"]) >= {"tf32_matmul", "omp_num_threads", "cpu_affinity", "nccl_env"}


def test_non_finite_loss_between_syncs_names_its_step(tiny_dataset, tmp_path):
    """Losses are read every 4 steps; the failure still names the first bad step and ends at the last good one."""
    cfg = tiny_config(tiny_dataset, optim={"lr": 1e8, "grad_clip": 0.0}, run={"target_samples": 64},
                      logging={"every_steps": 4})
    summary = train(cfg, run_dir=tmp_path / "nan")
    assert summary["status"] == "failed" and "non-finite" in summary["reason"]
    bad = int(summary["reason"].split(" at step ")[1].split()[0])
    assert summary["step"] == bad - 1 and summary["samples"] == 4 * (bad - 1)
    assert not (tmp_path / "nan" / "checkpoints" / "final").exists()


def test_step_clock_breakdown_with_a_fake_time(monkeypatch):
    now = [0.0]
    clock = StepClock(torch.device("cpu"))
    monkeypatch.setattr(clock, "now", lambda: now[0])
    for timed in (True, False):  # the untimed step adds nothing
        clock.begin_step(timed)
        for phase, dt in (("data_wait", 1.0), ("forward", 2.0), ("backward", 3.0), ("optimizer", 0.5)):
            now[0] += dt
            clock.mark(phase)
    with clock.span("validation"):
        now[0] += 4.0
    b = clock.breakdown(steps=2, loop_s=20.0)
    assert (b["data_wait"], b["forward"], b["backward"], b["optimizer"]) == (1.0, 2.0, 3.0, 0.5)
    assert b["host_to_device"] == 0.0 and b["validation"] == 2.0  # loop phases: amortised over both steps
    assert b["remainder"] == pytest.approx(20.0 / 2 - (1 + 2 + 3 + 0.5 + 2))


def test_determinism_default_per_device():
    try:
        assert set_determinism("auto", torch.device("cpu")) is True
        assert torch.are_deterministic_algorithms_enabled()
        assert set_determinism("auto", torch.device("cuda")) is False  # recorded; no CUDA needed to decide
        assert not torch.are_deterministic_algorithms_enabled()
        assert set_determinism(True, torch.device("cuda")) is True
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.skipif(not os.environ.get("WXSCALE_COMPILE_TESTS"),
                    reason="torch.compile on CPU takes minutes here; set WXSCALE_COMPILE_TESTS=1 to run it")
def test_compiled_step_trains_like_eager(tiny_dataset, tmp_path):
    """model.compile=true (inductor on CPU) runs the same train_step: the first losses match eager closely."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    losses = {}
    for compiled in (False, True):
        cfg = tiny_config(tiny_dataset, run={"target_samples": 12}, model={"compile": compiled})
        summary = train(cfg, run_dir=tmp_path / f"c{compiled}")
        assert summary["status"] == "complete" and summary["compile"] is compiled
        losses[compiled] = [float(r["train_loss"]) for r in read_metrics(tmp_path / f"c{compiled}")]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
