"""`wxscale sweep plan`: compute budgets x model sizes -> constant-LR trunks and their cooldown branches.

Continual training after Subramanian et al. 2026 ("On Neural Scaling Laws for Weather Emulation through Continual
Training"): each model size has ONE trunk at constant learning rate; the IsoFLOP point (budget C, size N) is a
branch cut from the trunk at ``samples - cooldown_samples`` that cools down (1-sqrt by default; Hagele et al. 2024)
to ``samples = C / flops_per_sample``. The trunk runs only to the last branch point its size needs, so the whole
IsoFLOP grid costs far less than independent runs of every point; the plan reports both.

The plan is written to ``<sweep>/plan.csv`` (columns in ARCHITECTURE.md) with ``<sweep>/sweep.json`` holding the
spec and a hash of the plan, so a sweep dir is never silently reused with a different plan. With ``--cost`` the
plan is also priced before anything runs (:mod:`wxscale.study.cost`: device-hours and wall time per run and in
total, from a measured throughput CSV or an assumed MFU): plan.csv gains ``planned_*`` columns, ``cost.csv``
lists every trunk and branch, and sweep.json's summary holds the totals under ``cost``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from wxscale.args import float_list, parse_list
from wxscale.errors import WxscaleError
from wxscale.files import write_csv, write_json_atomic, write_text_atomic
from wxscale.model.config import parse_overrides

PLAN_CSV = "plan.csv"
SWEEP_JSON = "sweep.json"
BASE_YAML = "train_base.yaml"
DEFAULT_BASE = Path(__file__).resolve().parents[1] / "configs" / "sweep_base.yaml"
PLAN_COLUMNS = [
    "run_id", "trunk_id", "budget_flops", "params", "flops_per_sample", "samples", "branch_from_samples",
    "cooldown_samples", "schedule",
]
COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine")
# The demo's IsoFLOP grid on the built-in simulator: seven budgets sqrt(2) apart (a denser grid narrows the
# intervals and lets more branches share each trunk) and the sizes around their optima. `wxscale demo` runs it;
# `wxscale fit --calibrate` measures the intervals' coverage on it by default.
DEMO_BUDGETS = (3.75e10, 5.3e10, 7.5e10, 1.06e11, 1.5e11, 2.12e11, 3e11)
DEMO_SIZES = "s-1:s3"
# Optional plan columns that change what a run trains, so they enter the plan hash when present: the peak learning
# rate of the run's trunk, and a trunk that continues another (its parent) from a checkpoint at start samples.
HASHED_EXTRA_COLUMNS = ["lr", "trunk_parent", "trunk_start_samples"]
# Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models"): up to about 4 epochs, repeated data is
# almost as good as new; beyond that the returns fall off and the loss departs from a law fitted on unique data.
MAX_EPOCHS = 4.0


@dataclasses.dataclass
class SweepSpec:
    """What a sweep is: budgets, candidate sizes, the grid they run on, and the limits that make a point sensible."""

    budgets: list[float]
    sizes: list[str]  # ladder names, smallest first
    grid: tuple[int, int]
    channels: int
    global_batch: int = 16
    min_steps: int = 50  # fewer optimizer steps than this is not a training run
    max_steps: int = 100_000
    cooldown_fraction: float = 0.2  # of each branch's samples (Hagele et al. 2024: 10-20 % matches cosine)
    cooldown_shape: str = "1-sqrt"
    rollout_steps: int = 1  # the base config's loss.rollout_steps: rollout k trains k steps per sample
    warmup_samples: int = 0  # the base config's schedule.warmup_samples: no branch may start inside it
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str | None = None

    def validate(self) -> None:
        if not self.budgets:
            raise WxscaleError("--budgets is empty: give at least one compute budget in FLOPs, e.g. 1e12,3e12")
        if any(not math.isfinite(b) or b <= 0 for b in self.budgets):
            raise WxscaleError(f"--budgets {self.budgets}: every budget must be a positive number of FLOPs")
        if any(b2 <= b1 for b1, b2 in zip(self.budgets, self.budgets[1:])):
            raise WxscaleError(f"--budgets {self.budgets}: budgets must be strictly increasing")
        if not self.sizes:
            raise WxscaleError("--sizes is empty: name ladder sizes (see `wxscale model list`)")
        if self.global_batch < 1 or self.min_steps < 1 or self.max_steps < self.min_steps:
            raise WxscaleError("--global-batch and --min-steps must be >= 1 and --max-steps >= --min-steps")
        if not 0 < self.cooldown_fraction < 1:
            raise WxscaleError(f"--cooldown-fraction {self.cooldown_fraction}: must lie in (0, 1)")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise WxscaleError(f"--cooldown-shape {self.cooldown_shape!r}: use one of {', '.join(COOLDOWN_SHAPES)}")


def size_costs(spec: SweepSpec) -> pd.DataFrame:
    """Parameters and training FLOPs per sample of each candidate size on the spec's grid (analytic counts), with
    the patch and window the ladder fits to that grid (as the trainer will).

    FLOPs per sample include the rollout: with ``rollout_steps`` k, one sample trains k autoregressive steps,
    so it costs k times a one-step sample. It is the same count the trainer spends (``model_flops`` with the
    config's ``loss.rollout_steps``), so a budget is the FLOPs a branch actually uses."""
    from wxscale.model import model_flops, resolve_config

    rows = []
    for name in spec.sizes:
        cfg = resolve_config(name, spec.model_overrides or None, grid=spec.grid)
        f = model_flops(cfg, spec.grid, spec.channels, rollout_steps=int(spec.rollout_steps))
        rows.append({"size": name, "params": f.params, "flops_per_sample": f.train_flops_per_sample,
                     "patch": cfg.patch, "window": f"{cfg.window[0]}x{cfg.window[1]}"})
    return pd.DataFrame(rows)


def train_samples_of(dataset: str | Path, rollout_steps: int = 1) -> int:
    """Samples in a dataset's train split (one epoch), as the loader counts them (no sample crosses a gap)."""
    from wxscale.data_prep.loader import SampleIndex

    return len(SampleIndex(dataset, "train", rollout_steps=rollout_steps))


def plan_sweep(spec: SweepSpec, lr: float | dict[str, float] | None = None,
               train_samples: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """The branches of the sweep, one row per (budget, size) that fits the step limits, and a compute summary.

    ``lr`` (one rate, or one per size name) fills the plan's ``lr`` column: the peak rate of the size's trunk and
    branches (without it, the base config's rate applies and the column is left out). ``train_samples`` (one epoch;
    counted from ``spec.dataset`` when not given) fills ``epochs``: the passes over the train split a branch makes.
    """
    spec.validate()
    if train_samples is None and spec.dataset is not None and Path(spec.dataset, "data.json").is_file():
        train_samples = train_samples_of(spec.dataset, spec.rollout_steps)
    costs = size_costs(spec)
    b = spec.global_batch
    rows = []
    budget_names = budget_labels(spec.budgets)
    for budget, budget_name in zip(spec.budgets, budget_names):
        n_fit = 0
        for c in costs.itertuples():
            # Whole global batches only, so a branch ends exactly at its sample count.
            steps = round(budget / c.flops_per_sample / b)
            if not spec.min_steps <= steps <= spec.max_steps:
                continue
            n_fit += 1
            samples = steps * b
            cooldown_steps = max(1, round(spec.cooldown_fraction * steps))
            branch_from = samples - cooldown_steps * b
            if branch_from < spec.warmup_samples:
                raise WxscaleError(
                    f"budget {budget:.4g} FLOPs, size {c.size}: the branch would start at {branch_from} samples, "
                    f"inside the warmup ({spec.warmup_samples} samples of schedule.warmup_samples), so its "
                    "cooldown would begin before the learning rate is reached; raise the budget or --min-steps, "
                    "drop the size, or shorten the warmup in --train-config")
            rows.append({
                "run_id": f"C{budget_name}_{c.size}",
                "trunk_id": f"trunk_{c.size}",
                "budget_flops": float(budget),
                "params": int(c.params),
                "flops_per_sample": int(c.flops_per_sample),
                "samples": int(samples),
                "branch_from_samples": int(branch_from),
                "cooldown_samples": int(cooldown_steps * b),
                "schedule": f"wsd-{spec.cooldown_shape}",
                "size": c.size,
                "steps": int(steps),
                "patch": int(c.patch),
                "window": c.window,
                **({} if lr is None else {"lr": float(lr[c.size] if isinstance(lr, dict) else lr)}),
                **({} if not train_samples else {"epochs": samples / train_samples}),
            })
        if n_fit == 0:
            need = ", ".join(f"{c.size}: {budget / c.flops_per_sample / b:.3g}" for c in costs.itertuples())
            raise WxscaleError(
                f"budget {budget:.3g} FLOPs: no size in the ladder range gives between --min-steps "
                f"{spec.min_steps} and --max-steps {spec.max_steps} optimizer steps at global batch {b} "
                f"(steps per size: {need}); change the budget, the sizes or the step limits"
            )
    plan = pd.DataFrame(rows)
    continual = continual_flops(plan)
    # In float: samples x FLOPs per sample passes int64's 9.2e18 at the seed paper's budgets (1e19 and up).
    independent = float((plan["samples"] * plan["flops_per_sample"].astype(float)).sum())
    summary = {
        "n_branches": len(plan),
        "n_trunks": int(plan["trunk_id"].nunique()),
        "continual_flops": continual,
        "independent_flops": independent,
        "saved_fraction": 1 - continual / independent,
    }
    return plan, summary


def budget_labels(budgets: list[float]) -> list[str]:
    """Distinct short names of strictly increasing budgets: the fewest significant digits (3 or more) that
    tell every budget apart, so 1e12 and 1.004e12 become "1e12" and "1.004e12" (run ids must be unique)."""
    for digits in range(3, 18):
        names = [f"{b:.{digits}g}".replace("+", "") for b in budgets]
        if len(set(names)) == len(names):
            return names
    return [repr(float(b)) for b in budgets]  # distinct floats always have distinct reprs


def trunks_of(plan: pd.DataFrame) -> pd.DataFrame:
    """One row per trunk: its size, where it must save checkpoints, and how far it runs.

    A trunk with a ``parent`` continues that trunk from its checkpoint at ``start_samples`` (added when a sweep
    grows after its trunks ran: :func:`add_points`); ``lr`` is its peak rate (NaN: the base config's)."""
    out = []
    for trunk_id, g in plan.groupby("trunk_id", sort=False):
        points = sorted(set(int(s) for s in g["branch_from_samples"]))
        parent = g["trunk_parent"].iloc[0] if "trunk_parent" in g else None
        parent = parent if isinstance(parent, str) and parent else ""
        start = g["trunk_start_samples"].iloc[0] if "trunk_start_samples" in g else 0
        out.append({"trunk_id": trunk_id, "size": g["size"].iloc[0], "params": int(g["params"].iloc[0]),
                    "flops_per_sample": int(g["flops_per_sample"].iloc[0]), "samples": points[-1],
                    "checkpoint_at_samples": points, "parent": parent,
                    "start_samples": int(start) if parent and pd.notna(start) else 0,
                    "lr": float(g["lr"].iloc[0]) if "lr" in g else math.nan})
    return pd.DataFrame(out)


def plan_hash(plan: pd.DataFrame) -> str:
    cols = PLAN_COLUMNS + [c for c in HASHED_EXTRA_COLUMNS if c in plan.columns]
    return hashlib.sha256(plan[cols].to_csv(index=False).encode()).hexdigest()[:16]


def repetition_warnings(plan: pd.DataFrame, max_epochs: float = MAX_EPOCHS) -> list[str]:
    """One line per size whose branches would pass over the train split more than ``max_epochs`` times."""
    if "epochs" not in plan.columns:
        return []
    over = plan[plan["epochs"] > max_epochs]
    lines = []
    for size, g in over.groupby("size", sort=False):
        worst = g.loc[g["epochs"].idxmax()]
        lines.append(f"warning: {size} repeats the train split more than {max_epochs:g} times in {len(g)} run(s) "
                     f"(up to {worst['epochs']:.1f} epochs at C={worst['budget_flops']:.3g}); Muennighoff et al. "
                     "2023: beyond about 4 epochs repeated data departs from the law; the fit marks these points")
    return lines


def continual_flops(plan: pd.DataFrame) -> float:
    """Training FLOPs of the whole plan with continual training: each trunk once (from its start), plus cooldowns.
    FLOPs per sample already hold the rollout steps (:func:`size_costs`)."""
    t = trunks_of(plan)
    trunk = float(((t["samples"] - t["start_samples"]) * t["flops_per_sample"].astype(float)).sum())
    return trunk + float((plan["cooldown_samples"] * plan["flops_per_sample"].astype(float)).sum())


def write_plan(out: Path, spec: SweepSpec, plan: pd.DataFrame, summary: dict[str, float], base: dict,
               overwrite: bool = False) -> None:
    """Write plan.csv, the base training config and sweep.json; refuse to put a different plan (or base config)
    into a sweep dir that already has one."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    base_text = yaml.safe_dump(base, sort_keys=False)
    digest = hashlib.sha256((plan_hash(plan) + base_text).encode()).hexdigest()[:16]
    existing = out / SWEEP_JSON
    old = _old_plan_hash(existing)
    if existing.exists() and old != digest:
        if not overwrite:
            raise WxscaleError(f"{out} already holds a different sweep plan (hash {old}, new {digest}); "
                               "use another --out, or --overwrite to replace the plan")
        removed = remove_plan_outputs(out)
        if removed:
            print(f"--overwrite: a different plan; removed the old plan's {', '.join(removed)} from {out}")
    write_csv(out / PLAN_CSV, plan)
    write_text_atomic(out / BASE_YAML, base_text)
    spec_d = dataclasses.asdict(spec)
    spec_d["grid"] = list(spec.grid)
    write_json_atomic(existing, {"spec": spec_d, "plan_hash": digest, "summary": summary})


# What a sweep dir holds besides the plan itself: results of one plan, meaningless under another.
PLAN_OUTPUTS = ("runs", "configs", "runs.csv", "slurm", "fit")


def _old_plan_hash(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("plan_hash")
    except (OSError, ValueError, AttributeError):
        return None  # damaged: treated as a different plan


def remove_plan_outputs(sweep_dir: Path) -> list[str]:
    """Remove the runs, configs, runs.csv, Slurm records and default fit of the plan in ``sweep_dir`` (before a
    different plan replaces it), refusing while any of its runs is running or queued. Returns what was removed."""
    import shutil

    from wxscale.study.sweep import run_state, runs_dir

    runs = runs_dir(sweep_dir)
    busy = sorted(d.name for d in runs.iterdir() if d.is_dir() and run_state(d) in ("running", "queued")) \
        if runs.is_dir() else []
    if busy:
        raise WxscaleError(f"{sweep_dir}: run(s) {', '.join(busy)} of the old plan are running or queued; wait "
                           "for them or cancel them before replacing the plan with --overwrite")
    removed = []
    for name in PLAN_OUTPUTS:
        path = Path(sweep_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def validate_base_config(base: dict, spec: SweepSpec, plan: pd.DataFrame, where: str) -> None:
    """Every run's config (the base plus what the sweep fills in) must be a valid training config: an unknown key
    or a bad value in --train-config is refused here, not by each trainer after the sweep has started."""
    from wxscale.study.sweep import branch_config, trunk_config
    from wxscale.training.config import validate_config

    for _, t in trunks_of(plan).iterrows():
        validate_config(trunk_config(base, spec, t), f"{where} (as the config of {t['trunk_id']})")
    for _, b in plan.iterrows():
        validate_config(branch_config(base, spec, b, Path("runs") / b["trunk_id"]),
                        f"{where} (as the config of {b['run_id']})")


def load_plan(sweep_dir: Path) -> tuple[SweepSpec, pd.DataFrame]:
    """Read a sweep dir's spec and plan, checking that the plan is the one its hash names."""
    meta_path, plan_path = Path(sweep_dir) / SWEEP_JSON, Path(sweep_dir) / PLAN_CSV
    if not meta_path.is_file() or not plan_path.is_file():
        raise WxscaleError(f"{sweep_dir} is not a sweep dir (no {SWEEP_JSON} or {PLAN_CSV}); "
                           "create it with `wxscale sweep plan --out DIR`")
    meta = json.loads(meta_path.read_text())
    d = dict(meta["spec"])
    d["grid"] = tuple(d["grid"])
    spec = SweepSpec(**d)
    plan = pd.read_csv(plan_path)
    base_path = Path(sweep_dir) / BASE_YAML
    base_text = base_path.read_text() if base_path.is_file() else ""
    if hashlib.sha256((plan_hash(plan) + base_text).encode()).hexdigest()[:16] != meta["plan_hash"]:
        raise WxscaleError(f"{plan_path} or {BASE_YAML} was changed after planning (hash differs from {meta_path}); "
                           "plan again with `wxscale sweep plan --overwrite`")
    return spec, plan


# --------------------------------------------------------------------------------------------------------------
# growing a planned sweep (validation budgets, `sweep extend`, learning rates from a scan)


def base_lr(base: dict) -> float:
    """The peak learning rate a base training config gives (the trainer's default when it names none)."""
    from wxscale.training.config import OptimConfig

    return float((base.get("optim") or {}).get("lr", OptimConfig().lr))


def update_plan(sweep_dir: Path, plan: pd.DataFrame, spec: SweepSpec | None = None) -> None:
    """Replace a sweep dir's plan (and spec) in place, re-hashing it, for the commands that grow a sweep.

    Callers keep every row that already ran unchanged (:func:`add_points` only appends), so runs on disk stay
    valid; ``sweep plan --overwrite`` is the way to replace a plan wholesale."""
    meta_path = Path(sweep_dir) / SWEEP_JSON
    old_spec, _ = load_plan(sweep_dir)
    spec = spec or old_spec
    meta = json.loads(meta_path.read_text())
    base_text = (Path(sweep_dir) / BASE_YAML).read_text() if (Path(sweep_dir) / BASE_YAML).is_file() else ""
    spec_d = dataclasses.asdict(spec)
    spec_d["grid"] = list(spec.grid)
    meta.update(spec=spec_d, plan_hash=hashlib.sha256((plan_hash(plan) + base_text).encode()).hexdigest()[:16])
    continual = continual_flops(plan)
    independent = float((plan["samples"] * plan["flops_per_sample"].astype(float)).sum())
    meta.setdefault("summary", {}).update(n_branches=len(plan), n_trunks=int(plan["trunk_id"].nunique()),
                                          continual_flops=continual, independent_flops=independent,
                                          saved_fraction=1 - continual / independent)
    write_csv(Path(sweep_dir) / PLAN_CSV, plan)
    write_json_atomic(meta_path, meta)


def _trunk_started(sweep_dir: Path, trunk_id: str) -> bool:
    return (Path(sweep_dir) / "runs" / trunk_id).exists()


def _place_on_trunk(sweep_dir: Path, plan: pd.DataFrame, size: str, point: int) -> dict[str, Any]:
    """trunk_id, trunk_parent, trunk_start_samples for a new branch of ``size`` cut at ``point`` samples.

    Trunks are continual: a trunk that has not started simply runs further; one that has (its run dir exists)
    is continued by a new trunk from its last checkpoint at or before ``point``, so only the new stretch costs."""
    root = f"trunk_{size}"
    chain = plan[plan["size"] == size]
    if chain.empty:
        return {"trunk_id": root, "trunk_parent": "", "trunk_start_samples": 0}
    trunks = trunks_of(chain)
    last = trunks.iloc[-1]
    if not _trunk_started(sweep_dir, last["trunk_id"]) and point >= last["start_samples"]:
        return {"trunk_id": last["trunk_id"], "trunk_parent": last["parent"],
                "trunk_start_samples": int(last["start_samples"])}
    for t in trunks.itertuples():  # a checkpoint exactly there already
        if point in t.checkpoint_at_samples:
            return {"trunk_id": t.trunk_id, "trunk_parent": t.parent, "trunk_start_samples": int(t.start_samples)}
    below = [(p, t.trunk_id) for t in trunks.itertuples() for p in t.checkpoint_at_samples if p < point]
    new_id = f"{root}.{len(trunks)}"
    if not below:  # before the first checkpoint: a fresh trunk repeats the same steps (same seed and data order)
        return {"trunk_id": new_id, "trunk_parent": "", "trunk_start_samples": 0}
    start, parent = max(below)
    return {"trunk_id": new_id, "trunk_parent": parent, "trunk_start_samples": int(start)}


def add_points(sweep_dir: Path, points: list[tuple[float, str]], lr: dict[str, float] | None = None,
               role: str = "", write: bool = True) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Add (budget, size) branches to a planned sweep; returns the new rows, why any point was not added, and the
    whole new plan (written to the sweep dir unless ``write`` is False).

    Each new row is planned exactly as ``sweep plan`` would (:func:`plan_sweep`), takes its size's learning rate
    (from the plan, else ``lr``, else the base config's) and is placed on its size's trunk (:func:`_place_on_trunk`).
    ``role`` (e.g. "validation") is recorded in the plan's ``role`` column. ``sweep run`` then runs only what is
    new: finished runs keep their run dirs and rows."""
    import yaml

    spec, plan = load_plan(sweep_dir)
    base = yaml.safe_load((Path(sweep_dir) / BASE_YAML).read_text()) or {}
    default_lr = base_lr(base)
    for col, fill in (("lr", default_lr), ("trunk_parent", ""), ("trunk_start_samples", 0), ("role", "")):
        if col not in plan.columns:
            plan[col] = fill
    plan["trunk_parent"] = plan["trunk_parent"].astype(object).fillna("").astype(str)
    plan["role"] = plan["role"].astype(object).fillna("").astype(str)
    train_samples = None
    if spec.dataset is not None and Path(spec.dataset, "data.json").is_file():
        train_samples = train_samples_of(spec.dataset, spec.rollout_steps)
    new_rows, skipped = [], []
    for budget, size in points:
        size_lr = plan.loc[plan["size"] == size, "lr"]
        rate = float(size_lr.iloc[0]) if len(size_lr) else float((lr or {}).get(size, default_lr))
        try:
            rows, _ = plan_sweep(dataclasses.replace(spec, budgets=[float(budget)], sizes=[size]), lr=rate,
                                 train_samples=train_samples)
        except WxscaleError:
            steps = budget / size_costs(dataclasses.replace(spec, sizes=[size]))["flops_per_sample"].iloc[0]
            skipped.append(f"C={budget:.3g} {size}: {steps / spec.global_batch:.3g} steps, outside --min-steps "
                           f"{spec.min_steps} .. --max-steps {spec.max_steps}")
            continue
        row = rows.iloc[0].to_dict()
        if (plan["run_id"] == row["run_id"]).any():
            continue
        row.update(_place_on_trunk(sweep_dir, plan, size, int(row["branch_from_samples"])), role=role)
        plan = pd.concat([plan, pd.DataFrame([row])], ignore_index=True)
        new_rows.append(row)
    if new_rows and write:
        budgets = sorted(set(spec.budgets) | {float(r["budget_flops"]) for r in new_rows})
        from wxscale.model import LADDER

        sizes = sorted(set(spec.sizes) | {r["size"] for r in new_rows}, key=list(LADDER).index)
        update_plan(sweep_dir, plan, dataclasses.replace(spec, budgets=budgets, sizes=sizes))
    return pd.DataFrame(new_rows), skipped, plan


# --------------------------------------------------------------------------------------------------------------
# command line



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", type=float_list, required=True, help="increasing FLOP budgets, e.g. 1e12,3e12")
    parser.add_argument("--out", type=Path, required=True, help="sweep dir to create")
    parser.add_argument("--sizes", default="s0:s4",
                        help="ladder sizes: a range s0:s4 (inclusive) or a list s0,s2,s3 (default s0:s4)")
    parser.add_argument("--dataset", type=Path, required=True,
                        help="dataset dir the runs train on (grid and channels are read from it)")
    parser.add_argument("--train-config", type=Path, default=DEFAULT_BASE,
                        help="base training config every run starts from (default: bench/configs/sweep_base.yaml)")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--min-steps", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--cooldown-fraction", type=float, default=0.2)
    parser.add_argument("--cooldown-shape", default="1-sqrt", choices=COOLDOWN_SHAPES)
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model field for every size, e.g. --model patch=2 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different plan in --out")
    cost = parser.add_argument_group("cost (wxscale.study.cost): device-hours and wall time before anything runs")
    cost.add_argument("--cost", metavar="FILE", help="a `wxscale bench throughput` CSV measured on the target "
                      "system, or peak:DEVICE (e.g. peak:H100) from the device peak table with --mfu")
    cost.add_argument("--mfu", type=float, help="with --cost peak:DEVICE: the fraction of peak training reaches")
    cost.add_argument("--devices", type=int, default=1, help="devices the sweep may use at once (default 1)")
    cost.add_argument("--devices-per-run", type=int, default=None,
                      help="devices one run trains on, data-parallel (default: all of --devices)")
    cost.add_argument("--cost-overhead-s", type=float, default=0.0,
                      help="fixed seconds per run beside training (start-up, checks, validation); default 0")


def parse_sizes(text: str) -> list[str]:
    from wxscale.model import LADDER

    names = list(LADDER)
    if ":" in text:
        lo, hi = text.split(":")
        if lo not in LADDER or hi not in LADDER:
            raise WxscaleError(f"--sizes {text!r}: unknown size; the ladder is {', '.join(names)}")
        return names[names.index(lo) : names.index(hi) + 1]
    sizes = parse_list(text, "--sizes")
    unknown = [s for s in sizes if s not in LADDER]
    if unknown:
        raise WxscaleError(f"--sizes: unknown size(s) {unknown}; the ladder is {', '.join(names)}")
    return sizes


def run(args: argparse.Namespace) -> int:
    from wxscale.data_prep.layout import load_meta
    from wxscale.files import ensure_writable_dir
    from wxscale.training.config import read_yaml_file

    meta = load_meta(args.dataset)
    base = read_yaml_file(args.train_config, "--train-config") or {}
    if not isinstance(base, dict):
        raise WxscaleError(f"--train-config {args.train_config}: expected a mapping of config sections")
    base.setdefault("data", {})["dataset"] = str(args.dataset.resolve())
    rollout_steps = (base.get("loss") or {}).get("rollout_steps", 1)
    warmup_samples = (base.get("schedule") or {}).get("warmup_samples", 0)
    if not isinstance(rollout_steps, int) or rollout_steps < 1:
        raise WxscaleError(f"--train-config {args.train_config}: loss.rollout_steps={rollout_steps!r} must be an "
                           "integer >= 1")
    spec = SweepSpec(
        budgets=args.budgets, sizes=parse_sizes(args.sizes), grid=tuple(meta.grid), channels=meta.n_channels,
        global_batch=args.global_batch, min_steps=args.min_steps, max_steps=args.max_steps,
        cooldown_fraction=args.cooldown_fraction, cooldown_shape=args.cooldown_shape,
        model_overrides=parse_overrides(args.model),
        dataset=str(args.dataset.resolve()),
        rollout_steps=rollout_steps, warmup_samples=int(warmup_samples or 0),
    )
    plan, summary = plan_sweep(spec, lr=base_lr(base))
    validate_base_config(base, spec, plan, f"--train-config {args.train_config}")
    ensure_writable_dir(args.out, "--out")
    cost_lines, cost_runs = None, None
    if args.cost:
        plan, summary, cost_runs, cost_lines = _price(args, spec, plan, summary, base)
    elif args.mfu is not None:
        raise WxscaleError("--mfu is for --cost peak:DEVICE; give --cost too")
    write_plan(args.out, spec, plan, summary, base, overwrite=args.overwrite)
    if args.cost:
        from wxscale.study.cost import write_costs

        write_costs(args.out, cost_runs)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(plan[["run_id", "params", "samples", "steps", "branch_from_samples", "cooldown_samples"]]
              .to_string(index=False))
    print(f"\n{summary['n_branches']} branches on {summary['n_trunks']} trunks. Continual training: "
          f"{summary['continual_flops']:.3g} FLOPs; independent runs: {summary['independent_flops']:.3g} FLOPs "
          f"({100 * summary['saved_fraction']:.0f} % saved).")
    for line in repetition_warnings(plan):
        print(line)
    if cost_lines:
        print("\n" + "\n".join(cost_lines))
    print(f"wrote {args.out / PLAN_CSV} and {args.out / SWEEP_JSON}" + (" and cost.csv" if args.cost else ""))
    return 0


def _price(args: argparse.Namespace, spec: SweepSpec, plan: pd.DataFrame, summary: dict, base: dict):
    """--cost: price every run (wxscale.study.cost); plan.csv gains per-branch columns, sweep.json the totals."""
    from wxscale.study.cost import add_plan_columns, cost_summary, load_cost_model, run_costs, summary_lines

    precision = base.get("precision") or {}
    if args.devices < 1:
        raise WxscaleError(f"--devices {args.devices}: must be >= 1")
    per_run = args.devices_per_run or args.devices
    model = load_cost_model(args.cost, precision=precision.get("dtype", "fp32"), grid=spec.grid,
                            channels=spec.channels, tf32=bool(precision.get("tf32", False)), mfu=args.mfu,
                            loader=(base.get("data") or {}).get("loader"))
    runs = run_costs(plan, spec.global_batch, spec.rollout_steps, model, per_run, args.cost_overhead_s)
    totals = cost_summary(runs, plan, model, args.devices, per_run, args.cost_overhead_s)
    return add_plan_columns(plan, runs), {**summary, "cost": totals}, runs, summary_lines(runs, totals)
