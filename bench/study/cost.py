"""What a planned sweep will cost before anything runs: device-hours and wall time per run and in total.

``wxscale sweep plan ... --cost FILE`` prices every run of the plan (each constant-LR trunk and each cooldown
branch, as `wxscale sweep run` will start them) with one of two cost models, and says which:

* **measured**: FILE is a ``wxscale bench throughput`` CSV (throughput.csv) measured on the target system. A run
  takes the samples/s of the row with its size, precision and per-device batch (rows on another grid or channel
  count are refused: throughput does not transfer between grids). Preferred: the row measured at the run's
  device count; else the row at the same per-device batch on another device count, scaled per device (linear
  scaling assumed, and said); else the nearest per-device batch of that size (said).
* **assumed**: FILE is ``peak:DEVICE`` (a name in :data:`wxscale.hardware.GPU_PEAKS`, e.g. ``peak:H100``), with
  ``--mfu``: samples/s = devices x peak FLOP/s x MFU / training FLOPs per sample, the plan's analytic count
  (:func:`wxscale.model.model_flops`: 3 x forward, x rollout steps). MFU is the fraction of the data-sheet
  peak the training loop reaches, as defined in ``wxscale bench throughput``.

A run's wall time is its samples over that rate plus a fixed per-run overhead (``--cost-overhead-s``: process
start, data checks, model build, validation and checkpoints, which the rate does not see); its device-hours are
wall time x the devices it holds. A trunk trains to its last branch point and a branch its cooldown
samples, both at the base config's rollout steps (``SweepSpec.rollout_steps``): the plan's FLOPs per sample
already hold them (k-step rollout costs k times per sample). The sweep's wall time comes from replaying the local
runner's order (`wxscale sweep run --jobs J`: trunks first, a branch as soon as its trunk is complete, J runs at a
time) with J = devices // devices per run.

Writes, next to plan.csv (which gains ``planned_samples_per_s, planned_wall_s, planned_device_hours`` per
branch), ``cost.csv``: one row per run, trunks and branches, with the basis of each price.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from pathlib import Path

import pandas as pd

from wxscale.errors import WxscaleError
from wxscale.files import write_csv

COST_CSV = "cost.csv"
PEAK_PREFIX = "peak:"
PLAN_COST_COLUMNS = ["planned_samples_per_s", "planned_wall_s", "planned_device_hours"]
COST_COLUMNS = ["run_id", "kind", "trunk_id", "size", "params", "samples", "rollout_steps", "train_flops",
                "devices", "samples_per_s", "wall_s", "device_hours", "basis"]


@dataclasses.dataclass
class CostModel:
    """Samples/s of a run from measured throughput rows or an assumed fraction of a device's peak."""

    kind: str  # "measured" or "assumed"
    description: str  # one line: what the prices rest on
    precision: str
    rows: pd.DataFrame | None = None  # measured: throughput.csv rows of the plan's grid, channels, precision
    peak_flops: float | None = None  # assumed: FLOP/s of one device
    mfu: float | None = None

    def rate(self, size: str, params: int, flops_per_sample: float, global_batch: int, devices: int,
             rollout_steps: int) -> tuple[float, str]:
        """(samples/s of one run on `devices` devices, the basis of that number)."""
        if self.kind == "assumed":
            sps = devices * self.peak_flops * self.mfu / flops_per_sample  # the plan's count holds the rollout
            return sps, f"assumed MFU {self.mfu:g} x {self.peak_flops / 1e12:g} TFLOP/s x {devices} device(s)"
        return self._measured(size, params, global_batch, devices, rollout_steps)

    def _measured(self, size: str, params: int, global_batch: int, devices: int,
                  rollout_steps: int) -> tuple[float, str]:
        rows = self.rows[self.rows["size"] == size]
        if rows.empty:
            have = ", ".join(sorted(set(self.rows["size"])))
            raise WxscaleError(
                f"--cost: the throughput CSV has no {self.precision} row for size {size} (it has {have}); measure "
                f"it with `wxscale bench throughput --sizes {size} --precision {self.precision}` on the target "
                "system, or price with --cost peak:DEVICE --mfu F")
        if "params" in rows and not (rows["params"] == params).any():
            raise WxscaleError(
                f"--cost: the throughput CSV's {size} has {int(rows['params'].iloc[0])} parameters but the plan's "
                f"{params} (another model override or channel count?); measure with the plan's --model overrides")
        notes = []
        k_rows = rows[rows["rollout_steps"] == rollout_steps] if "rollout_steps" in rows else rows
        scale = 1.0
        if k_rows.empty:  # rollout k costs k x the FLOPs per sample of rollout 1
            k_rows = rows[rows["rollout_steps"] == rows["rollout_steps"].min()]
            k0 = int(k_rows["rollout_steps"].iloc[0])
            scale = k0 / rollout_steps
            notes.append(f"rollout {k0} row scaled by {k0}/{rollout_steps}")
        per_device_batch = global_batch / devices
        exact = k_rows[(k_rows["batch_per_rank"] == per_device_batch) & (k_rows["world_size"] == devices)]
        if not exact.empty:
            row = exact.iloc[0]
            sps = float(row["samples_per_s"])
        else:
            same = k_rows[k_rows["batch_per_rank"] == per_device_batch]
            if not same.empty:
                row = same.iloc[0]
                notes.append(f"measured on {int(row['world_size'])} device(s), scaled linearly to {devices}")
            else:
                dist = (k_rows["batch_per_rank"].astype(float) / per_device_batch).map(lambda r: abs(math.log(r)))
                row = k_rows.loc[dist.idxmin()]
                notes.append(f"nearest batch {int(row['batch_per_rank'])} per device for {per_device_batch:g}")
            sps = float(row["samples_per_s"]) / int(row["world_size"]) * devices
        basis = (f"measured {size} {self.precision} batch {int(row['batch_per_rank'])}/device x "
                 f"{int(row['world_size'])}")
        return sps * scale, basis + ("; " + "; ".join(notes) if notes else "")


def load_cost_model(source: str, *, precision: str, grid: tuple[int, int], channels: int, tf32: bool = False,
                    mfu: float | None = None, loader: str | None = None) -> CostModel:
    """The cost model `--cost` names: a throughput CSV, or ``peak:DEVICE`` with ``mfu`` (module doc)."""
    if source.startswith(PEAK_PREFIX):
        from wxscale.hardware import GPU_PEAK_SOURCE, GPU_PEAKS

        name = source[len(PEAK_PREFIX):]
        entry = next((GPU_PEAKS[k] for k in GPU_PEAKS if k.lower() == name.lower()), None)
        if entry is None:
            raise WxscaleError(f"--cost {source}: unknown device; the peak table has {', '.join(GPU_PEAKS)}")
        if mfu is None or not 0 < mfu <= 1:
            raise WxscaleError(f"--cost {source} needs --mfu F with 0 < F <= 1 (the fraction of the peak that "
                               "training reaches), e.g. --mfu 0.35")
        key = "tf32" if precision == "fp32" and tf32 else precision
        peak = entry[key]
        return CostModel("assumed", f"assumed: {name} {key} peak {peak / 1e12:g} TFLOP/s per device "
                         f"({GPU_PEAK_SOURCE}) x MFU {mfu:g} (--mfu)", precision, peak_flops=peak, mfu=mfu)
    if mfu is not None:
        raise WxscaleError(f"--mfu {mfu}: only for --cost peak:DEVICE; a throughput CSV brings its own rates")
    path = Path(source)
    if not path.is_file():
        raise WxscaleError(f"--cost {source}: no such file; give a `wxscale bench throughput` CSV "
                           "(throughput.csv) or peak:DEVICE (e.g. peak:H100) with --mfu")
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise WxscaleError(f"--cost {path}: not a readable CSV ({err})") from err
    need = {"size", "precision", "batch_per_rank", "world_size", "samples_per_s", "grid", "channels"}
    missing = sorted(need - set(rows.columns))
    if missing:
        raise WxscaleError(f"--cost {path}: not a `wxscale bench throughput` CSV (no column {', '.join(missing)})")
    want_grid = f"{grid[0]}x{grid[1]}"
    on_grid = rows[(rows["grid"].astype(str) == want_grid) & (rows["channels"] == channels)]
    if on_grid.empty:
        have = sorted({f"{g} x {c} channels" for g, c in zip(rows["grid"], rows["channels"], strict=True)})
        raise WxscaleError(f"--cost {path}: measured on {', '.join(have)}, but the plan is {want_grid} x {channels} "
                           "channels; throughput does not transfer between grids: measure on the plan's dataset")
    rows = on_grid[on_grid["precision"] == precision]
    if rows.empty:
        raise WxscaleError(f"--cost {path}: no {precision} rows (the runs' precision, from the training config); "
                           f"it has {', '.join(sorted(set(on_grid['precision'])))}")
    if loader is not None and "loader" in rows and (rows["loader"] == loader).any():
        rows = rows[rows["loader"] == loader]
    rows = rows[pd.to_numeric(rows["samples_per_s"], errors="coerce") > 0]
    device = rows["device"].iloc[0] if "device" in rows and len(rows) else "?"
    host = rows["host"].iloc[0] if "host" in rows and len(rows) else "?"
    # on CPU a device's rate depends on its threads: say what was measured (sweep run gives cores // jobs)
    threads = (f", {'/'.join(str(t) for t in sorted(set(rows['threads_per_rank'])))} thread(s) per rank"
               if "threads_per_rank" in rows and str(rows.get("device_kind", pd.Series(["cpu"])).iloc[0]) == "cpu"
               else "")
    return CostModel("measured", f"measured: {path} ({len(rows)} {precision} rows, device {device}{threads}, "
                     f"host {host})", precision, rows=rows.reset_index(drop=True))


def run_costs(plan: pd.DataFrame, global_batch: int, rollout_steps: int, model: CostModel, devices_per_run: int,
              overhead_s: float = 0.0) -> pd.DataFrame:
    """One row per run of the sweep (:data:`COST_COLUMNS`): trunks in trunk order, then branches in plan order."""
    from wxscale.study.plan import trunks_of

    if devices_per_run < 1:
        raise WxscaleError(f"--devices-per-run {devices_per_run}: must be >= 1")
    if global_batch % devices_per_run:
        raise WxscaleError(f"--devices-per-run {devices_per_run} does not divide the global batch {global_batch}: "
                           "each device takes an equal share of it")
    rows = []

    def add(run_id, kind, trunk_id, size, params, fps, samples, k):
        sps, basis = model.rate(size, params, fps, global_batch, devices_per_run, k)
        wall = samples / sps + overhead_s if samples > 0 else 0.0
        if overhead_s and samples > 0:
            basis += f"; + {overhead_s:g} s per run"
        rows.append({"run_id": run_id, "kind": kind, "trunk_id": trunk_id, "size": size, "params": int(params),
                     "samples": int(samples), "rollout_steps": k, "train_flops": float(samples) * fps,
                     "devices": devices_per_run, "samples_per_s": sps, "wall_s": wall,
                     "device_hours": wall * devices_per_run / 3600, "basis": basis})

    for t in trunks_of(plan).itertuples():
        add(t.trunk_id, "trunk", t.trunk_id, t.size, t.params, t.flops_per_sample, t.samples, rollout_steps)
    for b in plan.itertuples():
        add(b.run_id, "branch", b.trunk_id, b.size, b.params, b.flops_per_sample, b.cooldown_samples, rollout_steps)
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def sweep_wall_s(runs: pd.DataFrame, jobs: int) -> float:
    """Wall time of the whole sweep with `jobs` runs at a time, replaying `wxscale sweep run`'s local order: scan
    the runs in order, start each whose trunk is complete while a slot is free; when a run ends, scan again."""
    if jobs < 1:
        raise WxscaleError(f"{jobs} runs at a time: the devices must hold at least one run (--devices)")
    todo = list(runs.itertuples())
    done_at: dict[str, float] = {}
    running: list[tuple[float, str]] = []  # (end time, run_id)
    now = 0.0
    while todo or running:
        for r in list(todo):
            if len(running) >= jobs:
                break
            if r.kind == "branch" and r.trunk_id not in done_at:
                continue
            todo.remove(r)
            heapq.heappush(running, (now + r.wall_s, r.run_id))
        if not running:  # a branch without its trunk in the table: cannot happen for a plan's own runs
            raise WxscaleError(f"runs {[r.run_id for r in todo]} wait for trunks that are not planned")
        now, run_id = heapq.heappop(running)
        done_at[run_id] = now
    return now


def cost_summary(runs: pd.DataFrame, plan: pd.DataFrame, model: CostModel, devices: int,
                 devices_per_run: int, overhead_s: float = 0.0) -> dict:
    """Totals for sweep.json and the printed summary: device-hours (continual and if every point ran alone),
    wall time of the sweep on `devices` devices."""
    jobs = devices // devices_per_run
    if jobs < 1:
        raise WxscaleError(f"--devices {devices} is fewer than --devices-per-run {devices_per_run}")
    branches = runs[runs["kind"] == "branch"].set_index("run_id")
    # if each IsoFLOP point were trained from scratch: its full samples at the branch's rate, one run each
    independent_h = float(sum((b.samples / branches.loc[b.run_id, "samples_per_s"] + overhead_s) * devices_per_run
                              / 3600 for b in plan.itertuples()))
    return {
        "basis": model.kind,
        "description": model.description,
        "devices": devices,
        "devices_per_run": devices_per_run,
        "jobs": jobs,
        "device_hours": float(runs["device_hours"].sum()),
        "trunk_device_hours": float(runs.loc[runs["kind"] == "trunk", "device_hours"].sum()),
        "branch_device_hours": float(branches["device_hours"].sum()),
        "independent_device_hours": independent_h,
        "sweep_wall_s": sweep_wall_s(runs, jobs),
    }


def add_plan_columns(plan: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """plan.csv's per-branch cost columns (:data:`PLAN_COST_COLUMNS`), from the branch rows of `runs`."""
    branches = runs[runs["kind"] == "branch"].set_index("run_id")
    out = plan.copy()
    out["planned_samples_per_s"] = out["run_id"].map(branches["samples_per_s"])
    out["planned_wall_s"] = out["run_id"].map(branches["wall_s"])
    out["planned_device_hours"] = out["run_id"].map(branches["device_hours"])
    return out


def write_costs(sweep_dir: Path, runs: pd.DataFrame) -> Path:
    path = Path(sweep_dir) / COST_CSV
    write_csv(path, runs, COST_COLUMNS)
    return path


def read_costs(sweep_dir: Path) -> pd.DataFrame | None:
    path = Path(sweep_dir) / COST_CSV
    return pd.read_csv(path) if path.is_file() else None


def format_hours(hours: float) -> str:
    """Device-hours or wall hours readably: seconds and minutes for small values, else hours or days."""
    s = hours * 3600
    if s < 120:
        return f"{s:.0f} s"
    if hours < 2:
        return f"{s / 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


def summary_lines(runs: pd.DataFrame, summary: dict) -> list[str]:
    """The printed cost summary: per size, then the totals."""
    lines = [f"cost basis: {summary['description']}"]
    per = runs.groupby(["size", "kind"], sort=False).agg(runs=("run_id", "count"), wall_s=("wall_s", "sum"),
                                                         device_hours=("device_hours", "sum"),
                                                         sps=("samples_per_s", "first"))
    table = per.unstack("kind")
    for size in dict.fromkeys(runs["size"]):
        t = table.loc[size]
        lines.append(f"  {size:>10}: {t[('sps', 'trunk')]:10.4g} samples/s; trunk "
                     f"{format_hours(t[('wall_s', 'trunk')] / 3600):>8}, {int(t[('runs', 'branch')])} branch(es) "
                     f"{format_hours(t[('wall_s', 'branch')] / 3600):>8} wall; "
                     f"{t[('device_hours', 'trunk')] + t[('device_hours', 'branch')]:.4g} device-h")
    lines.append(
        f"total: {summary['device_hours']:.4g} device-hours (trunks {summary['trunk_device_hours']:.4g}, branches "
        f"{summary['branch_device_hours']:.4g}; {summary['independent_device_hours']:.4g} if every point ran "
        f"alone); sweep wall time {format_hours(summary['sweep_wall_s'] / 3600)} on {summary['devices']} "
        f"device(s), {summary['jobs']} run(s) at a time of {summary['devices_per_run']} device(s)")
    return lines
