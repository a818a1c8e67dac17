"""`wxscale sweep run DIR`: run a planned sweep's trunks and branches in dependency order, resumably.

Executors:
- ``local`` (default): one `wxscale train` process per run (forked from a server that imported the trainer once:
  :mod:`wxscale.study.preloaded`), ``--jobs`` at a time, each with its share of the cores; a branch starts as soon
  as its trunk is complete. Every run is started with ``--resume``, so an interrupted trunk continues from its last
  checkpoint and a finished run is never run again.
- ``slurm``: one sbatch job per run from ``submit/sweep.sbatch`` (or ``--template``); a branch depends on its
  trunk's job with ``--dependency=afterok`` whenever the trunk is not complete (also a trunk an earlier call
  submitted and Slurm still holds); a branch of a failed trunk is reported blocked, not submitted. Run
  ``wxscale sweep status DIR`` to follow and collect.

A failed run is recorded (its summary.json says why) and not retried unless ``--retry-failed`` is given; the
branches of a trunk that did not complete are reported 'blocked' and the command exits 1. SIGTERM (or Ctrl-C) to
the local runner is passed on to its trainers, which stop after their current step with a checkpoint; the runner
waits for them and exits 3, and the next `sweep run` continues. Trunks write a rolling checkpoint about every
5 % of their length, so a killed trunk resumes near where it was instead of at step 0.
Results are collected into ``<sweep>/runs.csv`` after every finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from wxscale.errors import WxscaleError
from wxscale.files import ensure_writable_dir, write_json_atomic, write_text_atomic
from wxscale.study.plan import load_plan, trunks_of
from wxscale.study.preloaded import ForkedRun, start_train
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
EXIT_STOPPED = 3  # as `wxscale train` when it stops at a clean point
STOP_WAIT_S = 600  # how long the runner waits for a trainer to reach a clean point after SIGTERM
# Rolling checkpoints per trunk (unless the base config sets run.checkpoint_every_steps): a trunk killed before
# its first branch point resumes from the last of them instead of step 0.
TRUNK_ROLLING_CHECKPOINTS = 20


def write_run_configs(sweep_dir: Path) -> dict[str, Path]:
    """One resolved training config per run under <sweep>/configs/, from the base config and the plan.

    Paths in them are absolute, so a run finds its trunk and dataset from any working directory or node."""
    sweep_dir = Path(sweep_dir).resolve()
    spec, plan = load_plan(sweep_dir)
    base = load_base(sweep_dir)
    out = ensure_writable_dir(Path(sweep_dir) / CONFIGS, "sweep dir")
    paths = {}
    trunks = trunks_of(plan).set_index("trunk_id")
    for trunk_id, t in trunks.iterrows():
        paths[trunk_id] = _write_yaml(out / f"{trunk_id}.yaml",
                                      with_rolling_checkpoint(trunk_config(base, spec, t, runs_dir(sweep_dir))))
    for _, b in plan.iterrows():
        cfg = branch_config(base, spec, b, runs_dir(sweep_dir) / b["trunk_id"])
        paths[b["run_id"]] = _write_yaml(out / f"{b['run_id']}.yaml", cfg)
    return paths


def with_rolling_checkpoint(cfg: dict) -> dict:
    """A trunk config with a rolling checkpoint about every 1/TRUNK_ROLLING_CHECKPOINTS of its length (the
    base config's own run.checkpoint_every_steps wins)."""
    run = cfg.setdefault("run", {})
    if run.get("checkpoint_every_steps") is None:
        steps = int(run["target_samples"]) // int(run["global_batch"])
        run["checkpoint_every_steps"] = max(1, math.ceil(steps / TRUNK_ROLLING_CHECKPOINTS))
    return cfg


def _write_yaml(path: Path, tree: dict) -> Path:
    write_text_atomic(path, yaml.safe_dump(tree, sort_keys=False))
    return path


def _train_command(config: Path, run_dir: Path, threads: int | None) -> list[str]:
    """The arguments of `wxscale` that train one run of the sweep."""
    cmd = ["train", "--config", str(config), "--run-dir", str(run_dir), "--resume", "logging.progress=false"]
    if threads:
        cmd.append(f"run.cpu_threads={threads}")
    return cmd


class _StopRequest:
    """SIGTERM / SIGINT to the runner: pass SIGTERM on to every running trainer (each stops after its current step
    with a checkpoint and a 'stopped' summary), start nothing new, and wait for them."""

    def __init__(self, running: dict[str, ForkedRun | subprocess.Popen]):
        self.running, self.signum, self._old = running, None, {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, nothing to forward
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for proc in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _record_exit_without_summary(run_dir: Path, returncode: int) -> None:
    """A trainer that ended without a summary (bad config, dataset gone, killed): record it as failed, so the
    sweep, `sweep status` and runs.csv say so and its branches are blocked instead of waited for."""
    log = run_dir / "train.log"
    last = _tail(log)
    write_json_atomic(run_dir / "summary.json", {
        "status": "failed",
        "reason": f"the trainer exited with status {returncode} without writing a summary"
                  + (f": {last}" if last else "") + f" (see {log})",
        "exit_code": returncode,
        "recorded_by": "wxscale sweep run",
    })


def run_local(sweep_dir: Path, jobs: int = 1, retry_failed: bool = False, threads: int | None = None,
              progress: bool = True) -> dict[str, str]:
    """Run every unfinished run of the sweep on this machine; returns the final state of each run.

    A run that does not complete blocks the branches that depend on it ('blocked'); nothing waits for a run
    that can no longer finish. A trainer that exits with an error and no summary is recorded as failed (its
    summary.json says so; `--retry-failed` runs it again); one killed by a signal from outside is left as it is,
    and the next `sweep run` resumes it from its last checkpoint (trunks have rolling ones).
    SIGTERM or SIGINT stops the sweep at a clean point (see :class:`_StopRequest`);
    the runs it stopped report 'stopped' and continue on the next `sweep run`.
    """
    sweep_dir = Path(sweep_dir).resolve()
    ensure_writable_dir(sweep_dir, "sweep dir")
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
    running: dict[str, ForkedRun | subprocess.Popen] = {}
    with _StopRequest(running) as stop:
        try:
            while todo or running:
                for run_id in list(todo):
                    if len(running) >= jobs or stop.signum is not None:
                        break
                    dep = deps[run_id]
                    if dep and states[dep] != "complete":
                        if dep not in running and dep not in todo:  # it ended without completing: never
                            todo.remove(run_id)
                            states[run_id] = "blocked"
                            tqdm.write(f"sweep: {run_id} blocked: its trunk {dep} is {states[dep]}")
                            bar.update(1)
                        continue
                    todo.remove(run_id)
                    run_dir = runs_dir(sweep_dir) / run_id
                    run_dir.mkdir(parents=True, exist_ok=True)
                    proc = start_train(_train_command(configs[run_id], run_dir, threads), run_dir / "train.log")
                    mark_launched(run_dir, executor="local", pid=proc.pid)
                    running[run_id] = proc
                    bar.set_postfix_str(run_id)
                if stop.signum is not None and not running:
                    break  # what is left stays pending for the next `sweep run`
                for run_id, proc in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[run_id]
                    run_dir = runs_dir(sweep_dir) / run_id
                    (run_dir / ".sweep_launch.json").unlink(missing_ok=True)
                    states[run_id] = run_state(run_dir)
                    if not (run_dir / "summary.json").is_file() and stop.signum is None:
                        if proc.returncode < 0:  # killed from outside (OOM killer, kill -9): resumable later
                            states[run_id] = f"killed by {_signal_name(-proc.returncode)}"
                        else:
                            _record_exit_without_summary(run_dir, proc.returncode)
                            states[run_id] = run_state(run_dir)
                    if states[run_id] != "complete":
                        tqdm.write(f"sweep: {run_id} {states[run_id]} (exit {proc.returncode}); "
                                   f"see {run_dir / 'train.log'}")
                    bar.update(1)
                    collect_runs(sweep_dir)
                if todo or running:
                    time.sleep(0.2)  # never a busy loop, whatever the states
        finally:
            # An error in the runner itself: stop the trainers at a clean point too, and wait for them.
            for proc in running.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            for run_id, proc in running.items():
                try:
                    proc.wait(timeout=STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                (runs_dir(sweep_dir) / run_id / ".sweep_launch.json").unlink(missing_ok=True)
                states[run_id] = run_state(runs_dir(sweep_dir) / run_id)
            bar.close()
    collect_runs(sweep_dir)
    if stop.signum is not None:
        for run_id in todo:
            states[run_id] = "pending"
        raise SweepStopped(signal.Signals(stop.signum).name, states)
    return states


class SweepStopped(WxscaleError):
    """The sweep was asked to stop (SIGTERM / SIGINT); its trainers stopped at a checkpoint."""

    def __init__(self, signame: str, states: dict[str, str]):
        self.states = states
        stopped = [r for r, s in states.items() if s in ("stopped", "pending")]
        super().__init__(f"stopped by {signame}: {len(stopped)} run(s) left to do ({', '.join(stopped)}); the "
                         "running trainers stopped at a checkpoint. Run `wxscale sweep run` again to continue")


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
        try:
            states = run_local(args.sweep_dir, jobs=args.jobs, retry_failed=args.retry_failed,
                               threads=args.threads)
        except SweepStopped as stopped:
            print(f"wxscale sweep run: {stopped}", file=sys.stderr)
            return EXIT_STOPPED
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
