"""A sweep dir's runs: their configs, their state on disk, and the runs.csv they collect into.

Layout (ARCHITECTURE.md, "Sweep dir")::

    <sweep>/plan.csv, sweep.json     the plan (wxscale.study.plan)
    <sweep>/train_base.yaml          the training config every run starts from (data, optimizer, precision...)
    <sweep>/runs/<trunk_id>/         one run dir per constant-LR trunk
    <sweep>/runs/<run_id>/           one run dir per cooldown branch
    <sweep>/runs.csv                 one row per finished branch (plan columns + results)

A run's state is read from its run dir alone (summary.json, and a `.sweep_launch.json` marker with the pid and host
of the process running it), so `sweep run` and `sweep status` agree with each other and with a crashed executor.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pandas as pd
import yaml

from wxscale.errors import WxscaleError
from wxscale.files import write_csv, write_json_atomic
from wxscale.study.plan import BASE_YAML, MAX_EPOCHS, PLAN_COLUMNS, SweepSpec, load_plan, trunks_of

RUNS_CSV = "runs.csv"
LAUNCH_MARK = ".sweep_launch.json"
# Plan columns runs.csv carries on when the plan has them: the run's learning rate, the passes over the train
# split it made (with ``repeats_data`` where that is more than MAX_EPOCHS), and its role (e.g. "validation").
PLAN_EXTRA_COLUMNS = ["lr", "epochs", "role"]
RESULT_COLUMNS = ["val_loss", "wall_s", "samples_per_s", "mfu", "status", "git_sha", "host", "device",
                  "world_size", "precision"]


def runs_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "runs"


def load_base(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / BASE_YAML
    if not path.is_file():
        raise WxscaleError(f"{path} missing: plan the sweep with `wxscale sweep plan` (it writes the base config)")
    return yaml.safe_load(path.read_text())


def _set_lr(cfg: dict, row: pd.Series) -> None:
    """The plan's per-size peak learning rate, where it has one (else the base config's stays)."""
    lr = row.get("lr") if hasattr(row, "get") else None
    if lr is not None and pd.notna(lr):
        cfg.setdefault("optim", {})["lr"] = float(lr)


def trunk_config(base: dict, spec: SweepSpec, trunk: pd.Series, runs_root: Path | None = None) -> dict:
    """A constant-LR trunk: warmup then constant, checkpoints at every branch point of its size.

    A trunk with a ``parent`` (:func:`wxscale.study.plan.trunks_of`) starts from the parent's checkpoint at
    ``start_samples`` under ``runs_root``: model, optimizer, data order and RNG continue, so it is the parent run
    further, at the cost of the new stretch only."""
    cfg = copy.deepcopy(base)
    _set_lr(cfg, trunk)
    cfg.setdefault("model", {}).update({"size": trunk["size"], "overrides": dict(spec.model_overrides)})
    sched = cfg.setdefault("schedule", {})
    sched.update({"kind": "wsd", "cooldown_samples": 0})
    sched.pop("cooldown_fraction", None)
    cfg.setdefault("run", {}).update({
        "global_batch": spec.global_batch,
        "target_samples": int(trunk["samples"]),
        "checkpoint_at_samples": [int(s) for s in trunk["checkpoint_at_samples"]],
    })
    cfg["run"].pop("init_from", None)
    parent = trunk.get("parent") if hasattr(trunk, "get") else None
    if isinstance(parent, str) and parent:
        if runs_root is None:
            raise WxscaleError(f"trunk {trunk.name} continues {parent}: give runs_root to find its checkpoint")
        start = int(trunk["start_samples"])
        cfg["run"]["init_from"] = str(Path(runs_root) / parent / "checkpoints" / f"samples_{start}")
    cfg["run"].pop("budget_flops", None)
    # A trunk's own loss is not a result; its branches are validated.
    cfg.setdefault("validation", {})["every_samples"] = None
    return cfg


def branch_config(base: dict, spec: SweepSpec, branch: pd.Series, trunk_dir: Path) -> dict:
    """A cooldown branch: from the trunk's checkpoint at branch_from_samples, cooling to exactly `samples`."""
    cfg = copy.deepcopy(base)
    _set_lr(cfg, branch)
    cfg.setdefault("model", {}).update({"size": branch["size"], "overrides": dict(spec.model_overrides)})
    sched = cfg.setdefault("schedule", {})
    sched.update({"kind": "wsd", "cooldown_samples": int(branch["cooldown_samples"]),
                  "cooldown_shape": spec.cooldown_shape})
    sched.pop("cooldown_fraction", None)
    cfg.setdefault("run", {}).update({
        "global_batch": spec.global_batch,
        "target_samples": int(branch["samples"]),
        "init_from": str(trunk_dir / "checkpoints" / f"samples_{int(branch['branch_from_samples'])}"),
        "checkpoint_at_samples": [],
    })
    cfg["run"].pop("budget_flops", None)
    cfg.setdefault("validation", {})["every_samples"] = None
    return cfg


# --------------------------------------------------------------------------------------------------------------
# state on disk


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(run_dir: Path) -> str:
    """complete | failed | stopped | running | queued | pending (not started or interrupted)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status", "failed")
        except ValueError:
            status = "failed"
        if status in ("complete", "failed"):
            return status
    info = launch_info(run_dir)
    if info:
        if info.get("executor") == "slurm" and not summary.is_file():
            return "queued" if slurm_job_alive(info.get("job_id")) else "pending"
        pid = info.get("pid")
        # A damaged marker (no pid, or not a number) says nothing is running: the run is resumed, never lost.
        if info.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0 and _pid_alive(pid):
            return "running"
    return "stopped" if summary.is_file() else "pending"


def slurm_job_alive(job_id: str | None) -> bool:
    """Whether Slurm still knows the job as pending or running (squeue); unknown -> False."""
    import shutil
    import subprocess

    if not job_id or shutil.which("squeue") is None:
        return False
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")


def launch_info(run_dir: Path) -> dict:
    """What :func:`mark_launched` recorded for a run (executor, host, pid or Slurm job_id); {} when nothing."""
    mark = Path(run_dir) / LAUNCH_MARK
    try:
        info = json.loads(mark.read_text()) if mark.is_file() else {}
    except (ValueError, OSError):
        return {}
    return info if isinstance(info, dict) else {}


def mark_launched(run_dir: Path, **info: object) -> None:

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / LAUNCH_MARK, {"host": socket.gethostname(), **info})


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """Every trunk and branch of the sweep with its kind, dependency and state."""
    _, plan = load_plan(sweep_dir)
    rows = []
    for t in trunks_of(plan).itertuples():
        rows.append({"run_id": t.trunk_id, "kind": "trunk", "depends_on": t.parent, "size": t.size,
                     "samples": t.samples, "state": run_state(runs_dir(sweep_dir) / t.trunk_id)})
    for b in plan.itertuples():
        rows.append({"run_id": b.run_id, "kind": "branch", "depends_on": b.trunk_id, "size": b.size,
                     "samples": b.samples, "state": run_state(runs_dir(sweep_dir) / b.run_id)})
    return pd.DataFrame(rows)


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """Write <sweep>/runs.csv: one row per finished branch (complete or failed) with its results."""
    _, plan = load_plan(sweep_dir)
    rows = []
    for b in plan.to_dict("records"):
        summary_path = runs_dir(sweep_dir) / b["run_id"] / "summary.json"
        if not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        if s.get("status") not in ("complete", "failed"):
            continue
        row = {k: b[k] for k in PLAN_COLUMNS}
        row["size"] = b["size"]
        row.update({k: b[k] for k in PLAN_EXTRA_COLUMNS if k in b})
        if "epochs" in b:
            row["repeats_data"] = bool(b["epochs"] > MAX_EPOCHS)
        for k in RESULT_COLUMNS:
            v = s.get(k)
            row[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
        if isinstance(s.get("device"), dict):
            row["device"] = s["device"].get("name", row["device"])
        row["reason"] = s.get("reason")
        row.update({k: v for k, v in s.items() if k.startswith("val_rmse_")})
        rows.append(row)
    df = pd.DataFrame(rows)
    out = Path(sweep_dir) / RUNS_CSV
    write_csv(out, df)
    return df
