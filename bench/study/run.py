"""`wxscale sweep run DIR`: run a planned sweep's trunks and branches in dependency order, resumably.

Executors:
- ``local`` (default): one `wxscale train` process per run, ``--jobs`` at a time, each with its share of the
  cores; a branch starts as soon as its trunk is complete. Every run is started with ``--resume``, so an
  interrupted trunk continues from its last checkpoint and a finished run is never run again.
- ``slurm``: one sbatch job per run from ``submit/sweep.sbatch`` (or ``--template``); a branch depends on its
  trunk's job with ``--dependency=afterok`` whenever the trunk is not complete (also a trunk an earlier call
  submitted and Slurm still holds); a branch of a failed trunk is reported blocked, not submitted. Run
  ``wxscale sweep status DIR`` to follow and collect.

A failed run is recorded (its summary.json says why) and not retried unless ``--retry-failed`` is given.
Results are collected into ``<sweep>/runs.csv`` after every finished run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from wxscale.errors import WxscaleError
from wxscale.files import write_text_atomic
from wxscale.study.plan import load_plan, trunks_of
from wxscale.study.sweep import (
    branch_config,
    collect_runs,
    launch_info,
    load_base,
    mark_launched,
    run_state,
    runs_dir,
    sweep_table,
    trunk_config,
)

CONFIGS = "configs"


def write_run_configs(sweep_dir: Path) -> dict[str, Path]:
    """One resolved training config per run under <sweep>/configs/, from the base config and the plan.

    Paths in them are absolute, so a run finds its trunk and dataset from any working directory or node."""
    sweep_dir = Path(sweep_dir).resolve()
    spec, plan = load_plan(sweep_dir)
    base = load_base(sweep_dir)
    out = Path(sweep_dir) / CONFIGS
    out.mkdir(exist_ok=True)
    paths = {}
    trunks = trunks_of(plan).set_index("trunk_id")
    for trunk_id, t in trunks.iterrows():
        paths[trunk_id] = _write_yaml(out / f"{trunk_id}.yaml", trunk_config(base, spec, t))
    for _, b in plan.iterrows():
        cfg = branch_config(base, spec, b, runs_dir(sweep_dir) / b["trunk_id"])
        paths[b["run_id"]] = _write_yaml(out / f"{b['run_id']}.yaml", cfg)
    return paths


def _write_yaml(path: Path, tree: dict) -> Path:
    write_text_atomic(path, yaml.safe_dump(tree, sort_keys=False))
    return path


def _train_command(config: Path, run_dir: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "wxscale.cli", "train", "--config", str(config), "--run-dir", str(run_dir),
           "--resume", "logging.progress=false"]
    if threads:
        cmd.append(f"run.cpu_threads={threads}")
    return cmd


def run_local(sweep_dir: Path, jobs: int = 1, retry_failed: bool = False, threads: int | None = None,
              progress: bool = True) -> dict[str, str]:
    """Run every unfinished run of the sweep on this machine; returns the final state of each run."""
    sweep_dir = Path(sweep_dir).resolve()
    configs = write_run_configs(sweep_dir)
    table = sweep_table(sweep_dir)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    states = dict(zip(table["run_id"], table["state"]))
    deps = dict(zip(table["run_id"], table["depends_on"]))
    todo = [r for r in table["run_id"] if states[r] in ("pending", "stopped")
            or (retry_failed and states[r] == "failed")]
    busy = [r for r in table["run_id"] if states[r] in ("running", "queued")]
    if busy:
        raise WxscaleError(f"{sweep_dir}: run(s) {', '.join(busy)} are running or queued elsewhere; wait for them "
                           "(`wxscale sweep status`) before running the sweep again")
    bar = tqdm(total=len(table), initial=len(table) - len(todo), desc="sweep", unit="run", disable=not progress)
    running: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        while todo or running:
            for run_id in list(todo):
                if len(running) >= jobs:
                    break
                dep = deps[run_id]
                if dep and states[dep] != "complete":
                    if states[dep] == "failed":  # the branch can never start: say so in its state
                        todo.remove(run_id)
                        states[run_id] = "blocked"
                        bar.update(1)
                    continue
                todo.remove(run_id)
                run_dir = runs_dir(sweep_dir) / run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                logs[run_id] = open(run_dir / "train.log", "a")  # noqa: SIM115 (closed when the process ends)
                proc = subprocess.Popen(_train_command(configs[run_id], run_dir, threads), stdout=logs[run_id],
                                        stderr=subprocess.STDOUT)
                mark_launched(run_dir, executor="local", pid=proc.pid)
                running[run_id] = proc
                bar.set_postfix_str(run_id)
            for run_id, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run_id]
                logs.pop(run_id).close()
                (runs_dir(sweep_dir) / run_id / ".sweep_launch.json").unlink(missing_ok=True)
                states[run_id] = run_state(runs_dir(sweep_dir) / run_id)
                if states[run_id] != "complete":
                    tqdm.write(f"sweep: {run_id} {states[run_id]} (exit {proc.returncode}); "
                               f"see {runs_dir(sweep_dir) / run_id / 'train.log'}")
                bar.update(1)
                collect_runs(sweep_dir)
            if running:
                time.sleep(0.2)
    finally:
        for proc in running.values():
            proc.terminate()
        bar.close()
    collect_runs(sweep_dir)
    return states


def run_slurm(sweep_dir: Path, template: str, params: dict[str, str], retry_failed: bool = False,
              dry_run: bool = False) -> dict[str, str]:
    """Submit one job per unfinished run; returns run_id -> job id, or "blocked" for a branch not submitted.

    A branch waits (``--dependency=afterok``) on its trunk's job whenever the trunk is not complete: the job
    submitted in this call, or the one an earlier call submitted that is still queued or running (its id is
    read from the trunk's launch record). A branch whose trunk failed (and is not retried) is not submitted:
    it could never start; it is reported as blocked.
    """
    from wxscale.submit import afterok, render_template, submit_script

    configs = write_run_configs(sweep_dir)
    spec, _ = load_plan(sweep_dir)
    table = sweep_table(sweep_dir)
    states = dict(zip(table["run_id"], table["state"]))
    jobs: dict[str, str] = {}
    blocked: dict[str, str] = {}
    params = {"data_dir": spec.dataset, **params}  # the container must see the dataset the plan was made for
    for row in table.itertuples():
        if states[row.run_id] in ("complete", "running", "queued"):
            continue
        if states[row.run_id] == "failed" and not retry_failed:
            continue
        run_dir = runs_dir(sweep_dir) / row.run_id
        dependency, after = None, None
        if row.depends_on:
            trunk_state = states[row.depends_on]
            if row.depends_on in jobs:  # submitted just now
                after = jobs[row.depends_on]
            elif trunk_state in ("queued", "running"):  # submitted by an earlier call, not finished
                after = str(launch_info(runs_dir(sweep_dir) / row.depends_on).get("job_id") or "")
                if not after:
                    blocked[row.run_id] = f"trunk {row.depends_on} is {trunk_state} but has no recorded Slurm job"
                    continue
            elif trunk_state != "complete":  # failed (not retried), or otherwise not submittable
                blocked[row.run_id] = f"trunk {row.depends_on} is {trunk_state}"
                continue
            dependency = afterok(after) if after else None
        text = render_template(template, {**params, "sweep_dir": str(Path(sweep_dir).resolve()),
                                          "run_id": row.run_id, "config": str(configs[row.run_id].resolve()),
                                          "run_dir": str(run_dir.resolve())})
        if dry_run:
            print(f"# --- {row.run_id}" + (f" (after {row.depends_on})" if dependency else ""))
            print(text)
            jobs[row.run_id] = f"DRYRUN-{row.run_id}"
            continue
        job_id = submit_script(text, dependency=dependency)
        mark_launched(run_dir, executor="slurm", job_id=job_id)
        jobs[row.run_id] = job_id
        print(f"submitted {row.run_id} as job {job_id}"
              + (f" after {row.depends_on} (job {after})" if dependency else ""))
    for run_id, why in blocked.items():
        print(f"blocked {run_id}: not submitted, {why} (see `wxscale sweep status`; --retry-failed reruns it)",
              file=sys.stderr)
        jobs[run_id] = "blocked"
    return jobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, help="sweep dir made by `wxscale sweep plan`")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--jobs", type=int, default=1, help="local: runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="local: torch threads per run (cores / jobs)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--template", default="sweep", help="slurm: template name in submit/ or a path")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="slurm: template parameter (account, partition, time, ...); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="slurm: print the job scripts, submit nothing")


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise WxscaleError(f"--jobs {args.jobs}: must be >= 1")
    if args.executor == "local":
        states = run_local(args.sweep_dir, jobs=args.jobs, retry_failed=args.retry_failed, threads=args.threads)
        bad = {r: s for r, s in states.items() if s != "complete"}
        done = sum(s == "complete" for s in states.values())
        print(f"sweep: {done}/{len(states)} runs complete; results in {args.sweep_dir / 'runs.csv'}")
        if bad:
            print("not complete: " + ", ".join(f"{r} ({s})" for r, s in bad.items()), file=sys.stderr)
            return 1
        return 0
    params = {}
    for item in args.param:
        if "=" not in item:
            raise WxscaleError(f"--param {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        params[k] = v
    jobs = run_slurm(args.sweep_dir, args.template, params, retry_failed=args.retry_failed, dry_run=args.dry_run)
    return 1 if "blocked" in jobs.values() else 0
