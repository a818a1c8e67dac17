"""`wxscale sweep plan`: compute budgets x model sizes -> constant-LR trunks and their cooldown branches.

Continual training after Subramanian et al. 2026 ("On Neural Scaling Laws for Weather Emulation through Continual
Training"): each model size has ONE trunk at constant learning rate; the IsoFLOP point (budget C, size N) is a
branch cut from the trunk at ``samples - cooldown_samples`` that cools down (1-sqrt by default; Hagele et al. 2024)
to ``samples = C / flops_per_sample``. The trunk runs only to the last branch point its size needs, so the whole
IsoFLOP grid costs far less than independent runs of every point; the plan reports both.

The plan is written to ``<sweep>/plan.csv`` (columns in ARCHITECTURE.md) with ``<sweep>/sweep.json`` holding the
spec and a hash of the plan, so a sweep dir is never silently reused with a different plan.
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

from wxscale.args import float_list
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
    """Parameters and training FLOPs per sample of each candidate size on the spec's grid (analytic counts).

    FLOPs per sample include the rollout: with ``rollout_steps`` k, one sample trains k autoregressive steps,
    so it costs k times a one-step sample. It is the same count the trainer spends (``model_flops`` with the
    config's ``loss.rollout_steps``), so a budget is the FLOPs a branch actually uses."""
    from wxscale.model import model_flops, resolve_config

    rows = []
    for name in spec.sizes:
        cfg = resolve_config(name, spec.model_overrides or None)
        f = model_flops(cfg, spec.grid, spec.channels, rollout_steps=int(spec.rollout_steps))
        rows.append({"size": name, "params": f.params, "flops_per_sample": f.train_flops_per_sample})
    return pd.DataFrame(rows)


def plan_sweep(spec: SweepSpec) -> tuple[pd.DataFrame, dict[str, float]]:
    """The branches of the sweep, one row per (budget, size) that fits the step limits, and a compute summary."""
    spec.validate()
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
            })
        if n_fit == 0:
            need = ", ".join(f"{c.size}: {budget / c.flops_per_sample / b:.3g}" for c in costs.itertuples())
            raise WxscaleError(
                f"budget {budget:.3g} FLOPs: no size in the ladder range gives between --min-steps "
                f"{spec.min_steps} and --max-steps {spec.max_steps} optimizer steps at global batch {b} "
                f"(steps per size: {need}); change the budget, the sizes or the step limits"
            )
    plan = pd.DataFrame(rows)
    trunk_samples = plan.groupby("trunk_id").agg(to=("branch_from_samples", "max"), fps=("flops_per_sample", "first"))
    # flops_per_sample already holds the rollout steps (size_costs): trunk and cooldowns cost the same per sample.
    continual = float((trunk_samples["to"] * trunk_samples["fps"]).sum()
                      + (plan["cooldown_samples"] * plan["flops_per_sample"]).sum())
    independent = float((plan["samples"] * plan["flops_per_sample"]).sum())
    summary = {
        "n_branches": len(plan),
        "n_trunks": len(trunk_samples),
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
    """One row per trunk: its size, where it must save checkpoints, and how far it runs."""
    out = []
    for trunk_id, g in plan.groupby("trunk_id", sort=False):
        points = sorted(set(int(s) for s in g["branch_from_samples"]))
        out.append({"trunk_id": trunk_id, "size": g["size"].iloc[0], "params": int(g["params"].iloc[0]),
                    "flops_per_sample": int(g["flops_per_sample"].iloc[0]), "samples": points[-1],
                    "checkpoint_at_samples": points})
    return pd.DataFrame(out)


def plan_hash(plan: pd.DataFrame) -> str:
    return hashlib.sha256(plan[PLAN_COLUMNS].to_csv(index=False).encode()).hexdigest()[:16]


def write_plan(out: Path, spec: SweepSpec, plan: pd.DataFrame, summary: dict[str, float], base: dict,
               overwrite: bool = False) -> None:
    """Write plan.csv, the base training config and sweep.json; refuse to put a different plan (or base config)
    into a sweep dir that already has one."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    base_text = yaml.safe_dump(base, sort_keys=False)
    digest = hashlib.sha256((plan_hash(plan) + base_text).encode()).hexdigest()[:16]
    existing = out / SWEEP_JSON
    if existing.exists() and not overwrite:
        old = json.loads(existing.read_text()).get("plan_hash")
        if old != digest:
            raise WxscaleError(f"{out} already holds a different sweep plan (hash {old}, new {digest}); "
                               "use another --out, or --overwrite to replace the plan")
    write_csv(out / PLAN_CSV, plan)
    write_text_atomic(out / BASE_YAML, base_text)
    spec_d = dataclasses.asdict(spec)
    spec_d["grid"] = list(spec.grid)
    write_json_atomic(existing, {"spec": spec_d, "plan_hash": digest, "summary": summary})


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


def parse_sizes(text: str) -> list[str]:
    from wxscale.model import LADDER

    names = list(LADDER)
    if ":" in text:
        lo, hi = text.split(":")
        if lo not in LADDER or hi not in LADDER:
            raise WxscaleError(f"--sizes {text!r}: unknown size; the ladder is {', '.join(names)}")
        return names[names.index(lo) : names.index(hi) + 1]
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in LADDER]
    if unknown:
        raise WxscaleError(f"--sizes: unknown size(s) {unknown}; the ladder is {', '.join(names)}")
    return sizes


def run(args: argparse.Namespace) -> int:
    import yaml

    from wxscale.data_prep.layout import load_meta

    meta = load_meta(args.dataset)
    if not args.train_config.is_file():
        raise WxscaleError(f"--train-config {args.train_config}: file not found")
    base = yaml.safe_load(args.train_config.read_text()) or {}
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
    plan, summary = plan_sweep(spec)
    write_plan(args.out, spec, plan, summary, base, overwrite=args.overwrite)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(plan[["run_id", "params", "samples", "steps", "branch_from_samples", "cooldown_samples"]]
              .to_string(index=False))
    print(f"\n{summary['n_branches']} branches on {summary['n_trunks']} trunks. Continual training: "
          f"{summary['continual_flops']:.3g} FLOPs; independent runs: {summary['independent_flops']:.3g} FLOPs "
          f"({100 * summary['saved_fraction']:.0f} % saved).")
    print(f"wrote {args.out / PLAN_CSV} and {args.out / SWEEP_JSON}")
    return 0
