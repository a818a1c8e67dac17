"""Hostile input to train, sweep, fit, eval and submit (issue 12): each case asserts the exit code, the message
(it names the file, field or flag) and what is left on disk. The tests build their own broken files: pickled
payloads, truncated checkpoints, damaged pointers, hostile template values run under a stub `srun`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import REPO, child_env, read_metrics, tiny_config, write_config, write_sweep_base
from wxscale import submit
from wxscale.cli import main as cli
from wxscale.errors import ConfigError, WxscaleError
from wxscale.training import config as C
from wxscale.training.checkpoint import STATE, latest_checkpoint, load_checkpoint
from wxscale.training.trainer import train

TINY_MODEL = ["--model", "patch=2", "--model", "window=[2, 4]"]


def one_line(err: str, *needles: str) -> str:
    """The error a command printed: exactly one line, no traceback, naming every needle."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class _Payload:
    """Unpickling this runs a shell command: what a crafted state.pt carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant_payload(path: Path, mark: Path) -> None:
    torch.save({"model": _Payload(f"touch {mark}")}, path)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------------------------------
# 4: strict config types, finite numbers, YAML errors in one line


def _fields(kind: type) -> list[str]:
    """Dotted names of every config field whose type is exactly ``kind`` (or ``kind | None``)."""
    out = []
    for section, field in C.TrainConfig.model_fields.items():
        for name, f in field.annotation.model_fields.items():
            if f.annotation in (kind, kind | None):
                out.append(f"{section}.{name}")
    return out


BASE = {"data": {"dataset": "d"}, "run": {"target_samples": 64, "global_batch": 8}}


def _with(key: str, value) -> dict:
    tree = json.loads(json.dumps(BASE))
    section, name = key.split(".")
    tree.setdefault(section, {})[name] = value
    return tree


@pytest.mark.parametrize("key", _fields(int))
def test_no_lax_coercion_into_integer_fields(key):
    for value in (True, "8", 8.0):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            C.validate_config(_with(key, value))


@pytest.mark.parametrize("key", _fields(float))
def test_every_float_field_refuses_non_finite_and_bool(key):
    for value in (float("inf"), float("-inf"), float("nan"), True, "1e-3"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            C.validate_config(_with(key, value))


def test_non_finite_in_free_form_and_tuple_fields():
    with pytest.raises(ConfigError, match=r"model.overrides.*mlp_ratio"):
        C.validate_config({**BASE, "model": {"overrides": {"mlp_ratio": float("inf")}}})
    with pytest.raises(ConfigError, match=r"optim.betas"):
        C.validate_config({**BASE, "optim": {"betas": [0.9, float("nan")]}})
    with pytest.raises(ConfigError, match=r"optim.betas"):
        C.validate_config({**BASE, "optim": {"betas": [True, 0.9]}})


def test_cli_global_batch_true_and_lr_inf_are_refused(tiny_dataset, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_dataset))
    for override, field in (("run.global_batch=true", "run.global_batch"), ("optim.lr=inf", "optim.lr"),
                            ("optim.lr=nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"),
                            ("run.seed=1.5", "run.seed")):
        assert cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), override]) == 2
        one_line(capsys.readouterr().err, field, str(cfg))
        assert not (tmp_path / "r").exists()  # nothing was started


def test_yaml_numbers_as_yaml_12_reads_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: d}\nrun: {target_samples: 64, global_batch: 8, budget_flops: 1e15}\n"
                    "optim: {lr: 3e-4, eps: 1.0e-8}\n")
    cfg = C.load_config(path)
    assert cfg.optim.lr == 3e-4 and cfg.run.budget_flops == 1e15 and cfg.optim.eps == 1e-8


@pytest.mark.parametrize("override", [
    'optim.lr=!!python/object/apply:os.system ["touch {mark}"]',
    "run.checkpoint_at_samples=[8,",
    "optim.lr=!custom 3",
])
def test_yaml_tag_or_broken_yaml_in_override_is_one_line(tiny_dataset, tmp_path, capsys, override):
    mark = tmp_path / "pwned"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_dataset))
    rc = cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), override.format(mark=mark)])
    assert rc == 2
    one_line(capsys.readouterr().err, "override", "not valid YAML")
    assert not mark.exists() and not (tmp_path / "r").exists()


def test_yaml_tag_in_config_file_is_one_line(tiny_dataset, tmp_path, capsys):
    mark = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'data: !!python/object/apply:os.system ["touch {mark}"]\nrun: {{target_samples: 8}}\n')
    assert cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    one_line(capsys.readouterr().err, str(cfg), "not valid YAML", "line 1")
    assert not mark.exists()


# --------------------------------------------------------------------------------------------------------------
# a finished tiny run, shared by the resume, checkpoint-safety and eval cases


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    cfg = write_config(root / "cfg.yaml", tiny_config(tiny_dataset, run={"target_samples": 16,
                                                                          "checkpoint_at_samples": [8]}))
    assert train(cfg, run_dir=root / "run")["status"] == "complete"
    return root / "run", cfg


def _copy_run(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["run"]["dir"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


# 5: --resume on a finished run with a changed config


def test_resume_finished_run_with_changed_config_is_refused(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    before = (run / "summary.json").read_bytes()
    cfg = finished[1]
    assert cli(["train", "--config", str(cfg), "--run-dir", str(run), "--resume", "optim.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.002 -> 0.001" in err and str(run / "config.yaml") in err
    assert (run / "summary.json").read_bytes() == before
    # the same config: "already complete", exit 0, nothing rewritten
    assert cli(["train", "--config", str(cfg), "--run-dir", str(run), "--resume"]) == 0
    assert (run / "summary.json").read_bytes() == before


# 11: checkpoints load weights-only; a pickled payload never runs


def test_checkpoints_hold_only_what_a_weights_only_load_reads(finished):
    state = torch.load(finished[0] / "checkpoints" / "final" / STATE, weights_only=True)
    assert {"model", "optimizer", "scheduler", "loader", "rng"} <= set(state)


def test_legacy_numpy_rng_loads_but_a_payload_beside_it_does_not(finished, tmp_path):
    """Checkpoints from before the tensor RNG format (numpy's state as an ndarray) still load weights-only; the
    numpy allowance lets nothing else through."""
    import random

    from wxscale.training.checkpoint import load_state, set_rng_state

    state = torch.load(finished[0] / "checkpoints" / "final" / STATE, weights_only=True)
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    torch.save(state, tmp_path / "legacy.pt")
    loaded = load_state(tmp_path / "legacy.pt")
    set_rng_state(loaded["rng"][0])
    assert np.array_equal(np.random.get_state()[1], state["rng"][0]["numpy"][1])
    mark = tmp_path / "pwned"
    state["extra"] = _Payload(f"touch {mark}")
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(WxscaleError, match=r"refused.*system") as err:
        load_state(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(err.value) and "weights_only` set to `False" not in str(err.value)
    assert not mark.exists()


def test_payload_in_state_pt_does_not_run_on_eval(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    mark = tmp_path / "pwned"
    plant_payload(run / "checkpoints" / "final" / STATE, mark)
    assert cli(["eval", str(run), "--no-progress", "--no-plots", "--max-inits", "2", "--lead-steps", "2"]) == 2
    one_line(capsys.readouterr().err, str(run / "checkpoints" / "final" / STATE), "refused", "--checkpoint")
    assert not mark.exists()
    assert not (run / "eval").exists()


def test_payload_in_init_from_does_not_run(finished, tiny_dataset, tmp_path, capsys):
    trunk = _copy_run(finished, tmp_path)
    mark = tmp_path / "pwned"
    plant_payload(trunk / "checkpoints" / "samples_8" / STATE, mark)
    cfg = write_config(tmp_path / "b.yaml", tiny_config(
        tiny_dataset, run={"target_samples": 16, "init_from": str(trunk / "checkpoints" / "samples_8")}))
    assert cli(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "branch")]) == 2
    one_line(capsys.readouterr().err, "samples_8", "refused")
    assert not mark.exists()


def test_payload_in_resume_checkpoint_does_not_run(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    mark = tmp_path / "pwned"
    (run / "summary.json").unlink()  # an unfinished run
    for name in ("final", "samples_8"):
        plant_payload(run / "checkpoints" / name / STATE, mark)
    assert cli(["train", "--config", str(run / "config.yaml"), "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "refused" in err and "Traceback" not in err
    assert not mark.exists()
    assert (run / "checkpoints" / "final" / STATE).is_file()  # nothing deleted


# 6: damaged latest pointer, truncated checkpoints


@pytest.fixture
def stopped_run(tiny_dataset, tmp_path) -> tuple[Path, Path]:
    """A run stopped twice by its wall limit: samples_4 (step 1) and step_00000002 (step 2), latest -> step 2."""
    cfg = write_config(tmp_path / "c.yaml", tiny_config(
        tiny_dataset, run={"target_samples": 40, "max_wall_s": 1e-6, "checkpoint_at_samples": [4]}))
    run = tmp_path / "run"
    assert train(cfg, run_dir=run)["step"] == 1
    assert train(cfg, run_dir=run, resume=True)["step"] == 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert (run / "checkpoints" / "samples_4" / STATE).is_file()
    return run, cfg


@pytest.mark.parametrize("pointer", ["", "step_00000005\n", "../../etc\n"])
def test_damaged_pointer_falls_back_to_newest_intact(stopped_run, pointer, capsys):
    run, cfg = stopped_run
    (run / "checkpoints" / "latest").write_text(pointer)
    summary = train(cfg, run_dir=run, resume=True)
    err = capsys.readouterr().err
    assert "latest" in err and "step_00000002 (step 2)" in err
    assert summary["step"] == 3 and summary["resumed_from"].endswith("step_00000002")  # not a restart at 0
    assert [int(r["step"]) for r in read_metrics(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "samples_4" / STATE).is_file()


def test_pointer_to_deleted_checkpoint_keeps_the_older_one(stopped_run, capsys):
    run, cfg = stopped_run
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    summary = train(cfg, run_dir=run, resume=True)
    assert "step_00000002" in capsys.readouterr().err
    assert summary["step"] == 2 and summary["resumed_from"].endswith("samples_4")
    assert (run / "checkpoints" / "samples_4" / STATE).is_file()
    assert [int(r["step"]) for r in read_metrics(run)] == [1, 2]


def test_damaged_metrics_log_on_resume_keeps_the_rows_that_read(stopped_run, capsys):
    run, cfg = stopped_run
    log = run / "metrics.csv"
    log.write_text(log.read_text() + "garbage,\x00,row\n3")  # a torn and a garbled row after the good ones
    summary = train(cfg, run_dir=run, resume=True)
    assert "damaged row(s) left out" in capsys.readouterr().err
    assert summary["step"] == 3 and [int(r["step"]) for r in read_metrics(run)] == [1, 2, 3]


def test_a_damaged_launch_marker_reads_as_not_running(tmp_path):
    import socket

    from wxscale.study.sweep import LAUNCH_MARK, run_state

    for text in (json.dumps({"host": socket.gethostname(), "pid": "abc"}), "[1, 2]", "{not json"):
        (tmp_path / LAUNCH_MARK).write_text(text)
        assert run_state(tmp_path) == "pending"


def test_truncated_checkpoint_on_resume_falls_back(stopped_run, capsys):
    run, cfg = stopped_run
    truncate(run / "checkpoints" / "step_00000002" / STATE)
    summary = train(cfg, run_dir=run, resume=True)
    err = capsys.readouterr().err
    assert "damaged or truncated" in err and "samples_4 (step 1)" in err
    assert summary["step"] == 2 and summary["resumed_from"].endswith("samples_4")


def test_no_intact_checkpoint_is_an_error_not_a_restart(stopped_run, capsys):
    run, cfg = stopped_run
    for name in ("step_00000002", "samples_4"):
        truncate(run / "checkpoints" / name / STATE)
    metrics = (run / "metrics.csv").read_bytes()
    assert cli(["train", "--config", str(cfg), "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and str(run / "checkpoints") in err and "Traceback" not in err
    assert (run / "metrics.csv").read_bytes() == metrics  # not rewritten
    assert (run / "checkpoints" / "samples_4").is_dir() and (run / "checkpoints" / "step_00000002").is_dir()


def test_truncated_checkpoint_on_eval_is_a_clear_error(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    truncate(run / "checkpoints" / "final" / STATE)
    assert cli(["eval", str(run), "--no-progress", "--no-plots"]) == 2
    one_line(capsys.readouterr().err, "final", "damaged or truncated", "--checkpoint", "samples_8")
    assert not (run / "eval").exists()
    with pytest.raises(WxscaleError, match="damaged or truncated"):
        load_checkpoint(run / "checkpoints" / "final")


def test_yaml_tag_in_a_run_dirs_config_runs_nothing(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    mark = tmp_path / "pwned"
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("data:", f'x: !!python/object/apply:os.system ["touch {mark}"]\n'
                                                           "data:", 1))
    assert cli(["eval", str(run), "--no-progress", "--no-plots"]) == 2
    one_line(capsys.readouterr().err, str(run / "config.yaml"), "not valid YAML")
    assert cli(["train", "--config", str(finished[1]), "--run-dir", str(run), "--resume"]) == 2
    one_line(capsys.readouterr().err, str(run / "config.yaml"), "not valid YAML")
    assert not mark.exists()


def test_eval_checkpoint_name_is_not_a_path(finished, tmp_path, capsys):
    other = _copy_run(finished, tmp_path)
    name = f"../../{other.parent.name}/{other.name}/checkpoints/final"
    assert cli(["eval", str(finished[0]), "--checkpoint", name, "--no-progress", "--out", str(tmp_path / "e")]) == 2
    one_line(capsys.readouterr().err, "--checkpoint", "not a path", "final, samples_8")
    assert not (tmp_path / "e").exists()


def test_eval_and_train_unwritable_output(finished, tiny_dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert cli(["eval", str(finished[0]), "--out", str(blocker / "eval"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, "--out", str(blocker / "eval"))
    assert cli(["train", "--config", str(finished[1]), "--run-dir", str(blocker / "run")]) == 2
    one_line(capsys.readouterr().err, "run dir", "not writable")
    assert blocker.read_text() == "a file, not a folder"


# --------------------------------------------------------------------------------------------------------------
# 7, 8 and the sweep's weak cases


def _plan(data: Path, out: Path, budgets: str = "2e8,4e8", base: Path | None = None, *extra: str) -> int:
    base = base or write_sweep_base(data.parent / "base.yaml")
    return cli(["sweep", "plan", "--dataset", str(data), "--out", str(out), "--budgets", budgets, "--sizes", "s0",
                "--global-batch", "8", "--min-steps", "2", "--train-config", str(base), *TINY_MODEL, *extra])


@pytest.fixture
def small_data(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "data", n_steps=120)


def test_plan_rejects_unknown_key_and_yaml_tag_in_train_config(small_data, tmp_path, capsys):
    base = write_sweep_base(tmp_path / "base.yaml")
    tree = yaml.safe_load(base.read_text())
    tree["optim"]["lrr"] = 1e-3
    base.write_text(yaml.safe_dump(tree))
    assert _plan(small_data, tmp_path / "sw", base=base) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr'" in err and "did you mean 'optim.lr'" in err and str(base) in err
    assert not (tmp_path / "sw").exists()
    mark = tmp_path / "pwned"
    base.write_text(f'optim: !!python/object/apply:os.system ["touch {mark}"]\n')
    assert _plan(small_data, tmp_path / "sw", base=base) == 2
    one_line(capsys.readouterr().err, "--train-config", str(base), "not valid YAML")
    assert not mark.exists() and not (tmp_path / "sw").exists()
    tree["optim"] = {"lr": float("inf")}
    base.write_text(yaml.safe_dump(tree))
    assert _plan(small_data, tmp_path / "sw", base=base) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_plan_overwrite_with_a_different_plan_removes_the_old_runs(small_data, tmp_path, capsys):
    sw = tmp_path / "sw"
    assert _plan(small_data, sw) == 0
    run = sw / "runs" / "C2e08_s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "complete", "val_loss": 0.5}))
    (sw / "runs.csv").write_text("run_id,val_loss\nC2e08_s0,0.5\n")
    (sw / "fit").mkdir()
    (sw / "fit" / "fits.csv").write_text("old")
    assert _plan(small_data, sw) == 0  # the same plan again keeps everything
    assert (run / "summary.json").is_file()
    assert _plan(small_data, sw, "2e8,5e8") == 2  # a different one: refused without --overwrite
    assert (run / "summary.json").is_file()
    assert _plan(small_data, sw, "2e8,5e8", None, "--overwrite") == 0
    assert "removed the old plan's runs" in capsys.readouterr().out
    assert not (sw / "runs").exists() and not (sw / "runs.csv").exists() and not (sw / "fit").exists()
    assert "C5e08_s0" in (sw / "plan.csv").read_text()


def test_plan_and_sweep_run_unwritable_out(small_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _plan(small_data, blocker / "sw") == 2
    one_line(capsys.readouterr().err, "--out", str(blocker / "sw"))
    sw = tmp_path / "sw"
    assert _plan(small_data, sw) == 0
    (sw / "configs").write_text("a file where the run configs go")
    assert cli(["sweep", "run", str(sw)]) == 2
    one_line(capsys.readouterr().err, "sweep dir", str(sw / "configs"), "not a folder")


def _sweep_run(sw: Path, timeout: float = 180, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxscale.cli", "sweep", "run", str(sw), "--threads", "1", *extra],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_sweep_run_with_dataset_gone_fails_and_blocks_without_hanging(small_data, tmp_path):
    sw = tmp_path / "sw"
    assert _plan(small_data, sw) == 0
    shutil.rmtree(small_data)
    t0 = time.monotonic()
    result = _sweep_run(sw)  # a hang raises TimeoutExpired
    assert time.monotonic() - t0 < 120
    assert result.returncode == 1, result.stderr
    assert "trunk_s0 (failed)" in result.stderr and "C2e08_s0 (blocked)" in result.stderr
    summary = json.loads((sw / "runs" / "trunk_s0" / "summary.json").read_text())
    assert summary["status"] == "failed" and "status 2" in summary["reason"] and "does not exist" in summary["reason"]
    assert not (sw / "runs" / "C2e08_s0" / "summary.json").exists()  # never started
    status = subprocess.run([sys.executable, "-m", "wxscale.cli", "sweep", "status", str(sw)], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "failed" in status.stdout


@contextlib.contextmanager
def _sweep_at_first_checkpoint(sw: Path, trunk: Path):
    """`wxscale sweep run SW` as a process, handed over once the trunk has written its first checkpoint (killed on
    the way out if the test left it running)."""
    proc = subprocess.Popen([sys.executable, "-m", "wxscale.cli", "sweep", "run", str(sw), "--threads", "1"],
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(trunk) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_to_sweep_run_stops_trainers_at_a_checkpoint(small_data, tmp_path):
    sw = tmp_path / "sw"
    assert _plan(small_data, sw, "2e10,4e10") == 0  # a trunk of ~2900 steps: minutes on this machine
    trunk = sw / "runs" / "trunk_s0"
    # a rolling checkpoint long before the trunk's first branch point (~1440 steps)
    with _sweep_at_first_checkpoint(sw, trunk) as proc:
        assert latest_checkpoint(trunk) is not None and latest_checkpoint(trunk).name.startswith("step_")
        trainer_pid = json.loads((trunk / ".sweep_launch.json").read_text())["pid"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "stopped by SIGTERM" in err and "sweep run" in err
    with pytest.raises(ProcessLookupError):
        os.kill(trainer_pid, 0)  # the trainer ended before the runner did (no orphan)
    summary = json.loads((trunk / "summary.json").read_text())
    assert summary["status"] == "stopped" and "SIGTERM" in summary["reason"]
    meta = json.loads((latest_checkpoint(trunk) / "meta.json").read_text())
    assert meta["step"] == summary["step"] > 0  # stopped at a clean point: its checkpoint
    assert not (trunk / ".sweep_launch.json").exists()
    cfg = yaml.safe_load((sw / "configs" / "trunk_s0.yaml").read_text())
    assert cfg["run"]["checkpoint_every_steps"] >= 1


def test_killed_trunk_resumes_from_its_rolling_checkpoint(small_data, tmp_path):
    """kill -9 of a trunk's trainer before its first branch point: the sweep says so and exits 1 (its branches
    blocked, nothing recorded as failed); the next `sweep run` resumes the trunk from its rolling checkpoint."""
    sw = tmp_path / "sw"
    assert _plan(small_data, sw, "1.5e9") == 0  # one branch at ~134 steps, cut from the trunk at ~107
    trunk = sw / "runs" / "trunk_s0"
    with _sweep_at_first_checkpoint(sw, trunk) as proc:
        os.kill(json.loads((trunk / ".sweep_launch.json").read_text())["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "trunk_s0 (killed by SIGKILL)" in err and "(blocked)" in err
    assert not (trunk / "summary.json").exists()
    at = json.loads((latest_checkpoint(trunk) / "meta.json").read_text())["step"]
    assert 0 < at < 100
    again = _sweep_run(sw, 300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((trunk / "summary.json").read_text())
    assert summary["status"] == "complete" and "step_" in summary["resumed_from"]
    assert int(read_metrics(trunk)[0]["step"]) == 1  # the rows before the checkpoint were kept


def test_demo_with_bad_train_config_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "demo"
    make_tiny_dataset(out / "data" / "swe", n_steps=120)  # reused: the demo does not simulate
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lrr: 1}\n")
    rc = cli(["demo", "--out", str(out), "--train-config", str(bad), "--budgets", "2e8", "--sizes", "s0",
              "--min-steps", "2", "--global-batch", "8", "--model", "patch=2", "--model", "window=[2, 4]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "demo stopped" in err and "sweep plan" in err and "unknown key 'optim.lrr'" in err
    assert not (out / "sweep").exists()


# --------------------------------------------------------------------------------------------------------------
# 9, 10: fit


def _runs() -> pd.DataFrame:
    from tests.test_fit import isoflop_runs

    return isoflop_runs(budgets=np.logspace(14, 16, 3), sizes=5)


def test_fit_refuses_duplicated_run_ids(tmp_path, capsys):
    runs = _runs()
    runs = pd.concat([runs, runs.iloc[[2, 7]]])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert cli(["fit", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "fit"), "--n-bootstrap", "5"]) == 2
    one_line(capsys.readouterr().err, str(tmp_path / "runs.csv"), runs["run_id"].iloc[2], runs["run_id"].iloc[7])
    assert not (tmp_path / "fit").exists()


def test_fit_header_only_runs_csv_is_one_line(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text(",".join(_runs().columns) + "\n")
    assert cli(["fit", str(tmp_path), "--n-bootstrap", "5"]) == 2
    one_line(capsys.readouterr().err, str(tmp_path / "runs.csv"), "no rows")
    (tmp_path / "runs.csv").write_text("")
    assert cli(["fit", str(tmp_path), "--n-bootstrap", "5"]) == 2
    one_line(capsys.readouterr().err, str(tmp_path / "runs.csv"))
    assert not (tmp_path / "fit").exists()


def test_refit_without_plots_removes_the_earlier_plots(tmp_path, capsys):
    _runs().to_csv(tmp_path / "runs.csv", index=False)
    out = tmp_path / "fit"
    assert cli(["fit", str(tmp_path), "--n-bootstrap", "5", "--predict", "1e18"]) == 0
    assert (out / "isoflop.png").is_file() and (out / "predictions.csv").is_file()
    (out / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    assert cli(["fit", str(tmp_path), "--n-bootstrap", "5", "--no-plots"]) == 0
    assert "removed the earlier fit's" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fits.csv", "fits_bootstrap.csv", "isoflop.csv", "notes.txt"]


def test_fit_unwritable_out(tmp_path, capsys):
    _runs().to_csv(tmp_path / "runs.csv", index=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli(["fit", str(tmp_path), "--out", str(blocker / "fit"), "--n-bootstrap", "5"]) == 2
    one_line(capsys.readouterr().err, "--out", str(blocker / "fit"))


# --------------------------------------------------------------------------------------------------------------
# 12: submit renders no value as code


def _stub_bin(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """srun records its arguments one per line (and runs nothing); scontrol names one host; sbatch keeps the
    script it was given. A Slurm job's variables are set, so the scripts run here under bash as in a job."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stubs = {
        "srun": f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/srun_args\n',
        "scontrol": "#!/bin/bash\necho node001\n",
        "sbatch": f"#!/bin/bash\ncat > {tmp_path}/submitted.sh\necho 4242\n",
    }
    for name, text in stubs.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod((bindir / name).stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node001"}
    return bindir, env


def _params(tmp_path: Path, template: str, **extra: str) -> list[str]:
    (tmp_path / "cfg.yaml").write_text("x: 1\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    base = {"config": str(tmp_path / "cfg.yaml"), "run_dir": str(tmp_path / "run"),
            "data_dir": str(tmp_path / "data"), "sweep_dir": str(tmp_path / "sw"), "run_id": "r1"}
    declared = submit.template_params(template)
    return [f"{k}={v}" for k, v in {**base, **extra}.items() if k in declared]


def _submit_and_run(tmp_path: Path, template: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`wxscale submit` through the stub sbatch, then the submitted script under bash with the stub srun."""
    _, env = _stub_bin(tmp_path)
    cmd = [sys.executable, "-m", "wxscale.cli", "submit", template, *_params(tmp_path, template, **extra)]
    sub = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0 and sub.stdout.strip() == "4242", sub.stderr
    ran = subprocess.run(["bash", str(tmp_path / "submitted.sh")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    args = (tmp_path / "srun_args").read_text().splitlines() if (tmp_path / "srun_args").exists() else []
    return ran, args


def test_extra_args_are_arguments_never_commands(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    ran, args = _submit_and_run(tmp_path, "cpu", extra_args=f"--resume; rm -rf {victim}")
    assert ran.returncode == 0, ran.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert args[-4:] == ["--resume;", "rm", "-rf", str(victim)]  # handed to wxscale train as text


@pytest.mark.parametrize("template", ["one_node", "sweep"])
def test_apptainer_and_run_id_values_run_nothing(tmp_path, template):
    mark = tmp_path / "pwned"
    extra = {"apptainer": f"apptainer $(touch {mark})", "extra_args": f"`touch {mark}` $(touch {mark})"}
    if template == "sweep":
        extra["run_id"] = f"r1$(touch${{IFS}}{mark})"
    ran, args = _submit_and_run(tmp_path, template, **extra)
    assert ran.returncode == 0, ran.stderr
    assert not mark.exists()
    assert f"apptainer $(touch {mark})" in args  # one word: the runtime's (odd) name, not a command line
    if template == "sweep":
        assert f"r1$(touch${{IFS}}{mark}) 4242" in (tmp_path / "sw" / "slurm" / "jobs.txt").read_text()


def test_submit_save_to_unwritable_path_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "wxscale.cli", "submit", "cpu", "config=c", "run_dir=r",
                             "--dry-run", "--save", str(blocker / "job.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    one_line(result.stderr, "--save", str(blocker / "job.sh"))


def test_unquoted_placeholder_takes_plain_values_only(tmp_path):
    template = tmp_path / "t.sbatch"
    template.write_text("#!/bin/bash\n# wxscale:param n=2  a count\n#SBATCH --ntasks={{n}}\necho {{n}}\n")
    assert submit.render_template(template, {"n": "4"}).endswith("echo 4\n")
    for hostile in ("4; rm -rf /", "$(id)", "`id`", "4|cat", "a b"):
        with pytest.raises(WxscaleError, match=r"parameter n=.*may hold only|may not hold whitespace"):
            submit.render_template(template, {"n": hostile})
    with pytest.raises(WxscaleError, match="extra_args=.*not a list of arguments"):
        submit.render_template("cpu", {"config": "c", "run_dir": "r", "extra_args": "--x 'unclosed"})


def test_every_placeholder_in_the_templates_is_quoted_or_on_an_sbatch_line():
    """The same class of fault anywhere in submit/: a bare {{name}} outside #SBATCH lines must have choices."""
    import re

    for path in sorted((REPO / "submit").rglob("*")):
        if not path.is_file() or path.suffix not in (".sbatch", ".sh"):
            continue
        for line in path.read_text().splitlines():
            if line.startswith(("#SBATCH", "# wxscale:param")):
                continue
            for name in re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", line):
                declared = {p.name: p for t in submit.list_templates() for p in submit.template_params(t).values()}
                assert declared[name].choices, f"{path.name}: {{{{{name}}}}} is unquoted and free-form: {line}"
