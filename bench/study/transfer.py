"""`wxscale transfer`: pretrain, then fine-tune across physics shifts (Subramanian et al. 2023).

Subramanian et al. 2023 ("Towards Foundation Models for Scientific Machine Learning: Characterizing Scaling and
Transfer Behavior") pretrain an operator on one physics setting (or a mixture), fine-tune it on downstream data
of the same or shifted physics, and compare with training from scratch as the downstream data grows and as the
model grows. This command measures that on any dataset dirs of one grid and channel set, usually the built-in
simulator at several ``--physics`` settings (``wxscale prep --builtin swe --physics NAME=VALUE``)::

    wxscale transfer --out DIR --pretrain DATA --target in=DATA_A --target deep=DATA_B \\
                     [--sizes s0,s3] [--counts 8,16,32,64] [--steps 60] [--pretrain-steps 300] ...
    wxscale transfer --demo --out DIR        # the miniature: builds its datasets, then the same

Grid: model sizes x downstream sample counts (powers of 2, a fixed seeded subset of the target's train split,
``data.train_samples``; smaller subsets lie inside larger ones) x mode {finetune, scratch} x targets.

Every stage is an ordinary sweep dir, run by the sweep runner (:mod:`wxscale.study.run`, local or Slurm,
resumable: a finished run is never run twice) with the one trainer::

    DIR/transfer.json                   the spec and its hash (a different spec needs --overwrite)
    DIR/pretrain/                       sweep: per size a constant-LR trunk on the pretraining data and its
                                        1-sqrt cooldown branch (the pretrained model's own loss)
    DIR/downstream/<target>/n<count>/finetune/   sweep: per size a branch from the pretrain trunk's checkpoint
                                        (``run.init_weights_only``: weights only, fresh optimizer and schedule),
                                        its trunk dir a link to the pretrain trunk
    DIR/downstream/<target>/n<count>/scratch/    sweep: per size a trunk + cooldown branch from random weights
    DIR/transfer.csv                    one row per downstream run (columns below)
    DIR/transfer_fits.csv               L = k D^a per (size, target, mode): loss against downstream samples
    DIR/transfer_savings.csv            effective data transferred per (size, target, count)
    DIR/transfer_<target>.png           loss against downstream samples per size, finetune against scratch
    DIR/transfer_savings.png            effective data multiplier against downstream samples
    DIR/transfer_summary.md             the answers, with the figures

Fixed step budget, not convergence: every downstream run, finetune and scratch alike, takes ``--steps``
optimizer steps of ``--global-batch`` samples with the same WSD schedule (warmup 10 %, 1-sqrt cooldown over the
last ``--cooldown-fraction``). Why: the two modes then spend the same compute, so a gap between them is the
pre-training's and not the optimiser's; the trainer has no early stopping (and must not grow a second loop);
and a convergence criterion on a validation loss that is noisy at 8 samples would end runs at arbitrary
points. Pick ``--steps`` so that scratch at the largest count has flattened out: then the small counts,
revisited for many epochs, are data-limited, which is the regime the study is about. The summary's budget check
says whether it has (transfer.csv ``train_loss_drop_2nd_half``: how much the train loss fell over the second half
of the run). The CPU miniature cannot afford that: at its 60 steps scratch is still improving, so its gap at the
larger counts includes pre-training compute.

The pretrained model for fine-tuning is the pretrain trunk's constant-LR checkpoint (before its cooldown): the
point continual training resumes from (Hagele et al. 2024); every downstream run then warms up and cools down
on its own.

transfer.csv columns: ``size, params, pretrain, target, shift, downstream_samples, mode, steps, val_loss``,
``rmse_<channel>_<lead>h`` (rollout RMSE at ``--lead-hours`` on the target's test split, lat-weighted, physical
units, :func:`wxscale.evaluation.evaluate.evaluate_run`), and ``shift_params, samples, wall_s, status,
run_dir, train_loss_drop_2nd_half``. ``shift`` is the size of the physics shift: max over the
:data:`~wxscale.data_prep.simulator.PHYSICS` parameters of |ln(target / pretrain)| (0 in distribution; to the
nearest setting of a mixture pretraining); NaN when a dataset records no simulator physics.

The summary: the effective data transferred (Hernandez et al. 2021, "Scaling Laws for Transfer"): with the
scratch power law L_s(D) = k D^a fitted over the counts, the data scratch would need to reach the fine-tuned
loss at D is D_E = (L_ft / k)^(1/a); D_T = D_E - D is the data pre-training saved and D_E / D the multiplier.
D_E outside the measured counts is an extrapolation and flagged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from wxscale.args import parse_list
from wxscale.errors import WxscaleError
from wxscale.files import save_figure, write_csv, write_json_atomic, write_text_atomic
from wxscale.study.fit import fit_power_law
from wxscale.study.plan import DEFAULT_BASE, SweepSpec, parse_sizes, size_costs, train_samples_of, write_plan
from wxscale.study.sweep import run_state, runs_dir

SPEC_JSON = "transfer.json"
TRANSFER_CSV = "transfer.csv"
FITS_CSV = "transfer_fits.csv"
SAVINGS_CSV = "transfer_savings.csv"
SUMMARY_MD = "transfer_summary.md"
MODES = ("finetune", "scratch")
COLUMNS = ["size", "params", "pretrain", "target", "shift", "downstream_samples", "mode", "steps", "val_loss"]

# The miniature (--demo): sized so that on 2 busy CPU cores it finishes well inside 15 minutes.
DEMO_GRID = "16x32"
DEMO_SIZES = "s0,s3"
DEMO_COUNTS = "8,16,32,64"
DEMO_TARGETS = {"in_dist": [], "shallow": ["mean_depth=5000"]}  # --physics of each target dataset


@dataclasses.dataclass
class TransferSpec:
    """What a transfer study is: the data, the grid of runs, and their length."""

    pretrain: str  # dataset dir
    targets: dict[str, str]  # name -> dataset dir
    sizes: list[str]
    counts: list[int]  # downstream samples, powers of 2
    global_batch: int = 8
    pretrain_steps: int = 300
    steps: int = 60  # per downstream run
    cooldown_fraction: float = 0.2
    lead_hours: int = 24
    eval_inits: int = 8
    model_overrides: dict = dataclasses.field(default_factory=dict)

    def pretrain_samples(self) -> int:
        return self.pretrain_steps * self.global_batch

    def downstream_samples(self) -> int:
        return self.steps * self.global_batch

    def cooldown(self, steps: int) -> int:
        """Cooldown samples of a run of ``steps`` steps: whole batches, at least one."""
        return max(1, round(self.cooldown_fraction * steps)) * self.global_batch


# --------------------------------------------------------------------------------------------------------------
# input checks


def _meta(path: str, flag: str):
    from wxscale.data_prep.layout import load_meta

    if not (Path(path) / "data.json").is_file():
        raise WxscaleError(f"{flag} {path}: not a dataset dir (no data.json); write one with `wxscale prep`")
    return load_meta(path)


def check_spec(spec: TransferSpec) -> None:
    """Refuse, before anything runs, what would fail or mislead later (each message names the flag)."""
    if not spec.targets:
        raise WxscaleError("--target: give at least one target dataset as NAME=DIR")
    if not spec.sizes:
        raise WxscaleError("--sizes: give at least one ladder size")
    bad = [n for n in spec.counts if n < 1 or n & (n - 1)]
    if bad or not spec.counts or sorted(set(spec.counts)) != list(spec.counts):
        why = f"not powers of 2: {bad}" if bad else "in increasing order; the power-law fits need two or more"
        raise WxscaleError(f"--counts {spec.counts}: give increasing powers of 2 ({why})")
    if spec.counts[0] < spec.global_batch:
        raise WxscaleError(f"--counts {spec.counts}: the smallest count {spec.counts[0]} is below one global batch "
                           f"(--global-batch {spec.global_batch}); lower the batch or raise the counts")
    if spec.steps < 2 or spec.pretrain_steps < 2 or not 0 < spec.cooldown_fraction < 1:
        raise WxscaleError("--steps and --pretrain-steps must be >= 2 and --cooldown-fraction in (0, 1)")
    pre = _meta(spec.pretrain, "--pretrain")
    for name, path in spec.targets.items():
        meta = _meta(path, f"--target {name}=")
        if meta.grid != pre.grid or list(meta.channels) != list(pre.channels):
            raise WxscaleError(
                f"--target {name}={path}: grid {meta.grid[0]}x{meta.grid[1]} with channels {list(meta.channels)}, "
                f"but the pretrained model's data {spec.pretrain} has grid {pre.grid[0]}x{pre.grid[1]} with channels "
                f"{list(pre.channels)}; fine-tuning needs the same grid and channels (prep the target with "
                "the pretraining data's --grid and --vars)")
        holds = train_samples_of(path)
        if spec.counts[-1] > holds:
            raise WxscaleError(f"--counts {spec.counts}: {spec.counts[-1]} downstream samples, but the train split "
                               f"of --target {name}={path} holds {holds}; lower --counts or prep a longer target")


# --------------------------------------------------------------------------------------------------------------
# physics shift


def physics_settings(path: str) -> list[dict[str, float]]:
    """The simulator physics a dataset dir records (data.json source), one dict per setting; [] if none."""
    source = _meta(path, "dataset").source or {}
    return list((source.get("simulator") or {}).get("physics") or [])


def physics_shift(pretrain: list[dict[str, float]], target: list[dict[str, float]]) -> tuple[float, str]:
    """(shift, what differs): max over parameters of |ln(target / pretrain)|, to the nearest pretraining setting,
    and the worst target setting; (nan, "") when either side records no physics."""
    if not pretrain or not target:
        return math.nan, ""
    worst, words = 0.0, ""
    for t in target:
        best, best_words = math.inf, ""
        for p in pretrain:
            diffs = {k: abs(math.log(t[k] / p[k])) for k in t if k in p and t[k] > 0 and p[k] > 0}
            d = max(diffs.values(), default=0.0)
            if d < best:
                best = d
                best_words = ", ".join(f"{k} {p[k]:g}->{t[k]:g}" for k, v in diffs.items() if v > 1e-12)
        if best > worst or not words:
            worst, words = best, best_words
    return float(worst), words


def _describe(path: str) -> str:
    settings = physics_settings(path)
    name = Path(path).name
    if not settings:
        return name
    if len(settings) > 1:
        return f"{name} (mixture of {len(settings)})"
    s = settings[0]
    return f"{name} (" + ", ".join(f"{k}={v:g}" for k, v in s.items()) + ")"


# --------------------------------------------------------------------------------------------------------------
# the sweeps


def _base(template: dict, spec: TransferSpec, dataset: str, steps: int, train_samples: int | None = None,
          weights_only: bool = False) -> dict:
    base = copy.deepcopy(template)
    base.setdefault("data", {}).update({"dataset": str(Path(dataset).resolve()), "train_samples": train_samples})
    # warm up over 10 % of the run: the base config's absolute warmup may exceed a short downstream run
    base.setdefault("schedule", {})["warmup_samples"] = max(1, round(0.1 * steps)) * spec.global_batch
    base.setdefault("run", {})["init_weights_only"] = weights_only
    return base


def _sweep_spec(spec: TransferSpec, dataset: str, costs: pd.DataFrame, samples: int, grid, channels) -> SweepSpec:
    return SweepSpec(budgets=sorted({float(samples * f) for f in costs["flops_per_sample"]}), sizes=spec.sizes,
                     grid=tuple(grid), channels=channels, global_batch=spec.global_batch, min_steps=1,
                     cooldown_fraction=spec.cooldown_fraction, model_overrides=dict(spec.model_overrides),
                     dataset=str(Path(dataset).resolve()))


def _rows(costs: pd.DataFrame, spec: TransferSpec, prefix: str, trunk_prefix: str, steps: int,
          branch_from: int | None) -> pd.DataFrame:
    """Plan rows (plan.py's columns) of one stage: a run of ``steps`` steps per size, branching from
    ``branch_from`` samples of its trunk (None: its own trunk, at the start of its cooldown)."""
    g = spec.global_batch
    samples, cooldown = steps * g, spec.cooldown(steps)
    rows = []
    for c in costs.itertuples():
        rows.append({
            "run_id": f"{prefix}_{c.size}", "trunk_id": f"{trunk_prefix}_{c.size}",
            "budget_flops": float(samples * c.flops_per_sample), "params": int(c.params),
            "flops_per_sample": int(c.flops_per_sample), "samples": samples,
            "branch_from_samples": samples - cooldown if branch_from is None else branch_from,
            "cooldown_samples": cooldown, "schedule": "wsd-1-sqrt", "size": c.size, "steps": steps,
        })
    return pd.DataFrame(rows)


def _summary(plan: pd.DataFrame) -> dict:
    flops = float((plan["samples"] * plan["flops_per_sample"]).sum())
    return {"n_branches": len(plan), "n_trunks": plan["trunk_id"].nunique(), "continual_flops": flops,
            "independent_flops": flops, "saved_fraction": 0.0}


def downstream_dir(out: Path, target: str, count: int, mode: str) -> Path:
    return Path(out) / "downstream" / target / f"n{count}" / mode


def pretrain_trunk_checkpoint(spec: TransferSpec) -> int:
    """Samples at the pretrain trunk's checkpoint (the start of the pretrain cooldown): what fine-tuning loads."""
    return spec.pretrain_samples() - spec.cooldown(spec.pretrain_steps)


def plan_study(out: Path, spec: TransferSpec, template: dict, overwrite: bool = False) -> list[Path]:
    """Write every sweep dir of the study (idempotent: an unchanged plan is kept, a changed one refused)."""
    from wxscale.data_prep.layout import load_meta

    meta = load_meta(spec.pretrain)
    costs = size_costs(SweepSpec(budgets=[1.0], sizes=spec.sizes, grid=meta.grid, channels=meta.n_channels,
                                 model_overrides=dict(spec.model_overrides)))
    pre_dir = Path(out) / "pretrain"
    pre_plan = _rows(costs, spec, "pre", "trunk", spec.pretrain_steps, None)
    write_plan(pre_dir, _sweep_spec(spec, spec.pretrain, costs, spec.pretrain_samples(), meta.grid,
                                    meta.n_channels),
               pre_plan, _summary(pre_plan), _base(template, spec, spec.pretrain, spec.pretrain_steps),
               overwrite=overwrite)
    dirs = [pre_dir]
    ckpt = pretrain_trunk_checkpoint(spec)
    for target, path in spec.targets.items():
        for n in spec.counts:
            for mode in MODES:
                d = downstream_dir(out, target, n, mode)
                ft = mode == "finetune"
                plan = _rows(costs, spec, "ft" if ft else "sc", "pre" if ft else "trunk", spec.steps,
                             ckpt if ft else None)
                write_plan(d, _sweep_spec(spec, path, costs, spec.downstream_samples(), meta.grid, meta.n_channels),
                           plan, _summary(plan), _base(template, spec, path, spec.steps, n, weights_only=ft),
                           overwrite=overwrite)
                if ft:  # the fine-tune branches' trunk is the pretrain trunk: a link, so it is never rerun
                    runs_dir(d).mkdir(parents=True, exist_ok=True)
                    for size in spec.sizes:
                        link, target_dir = runs_dir(d) / f"pre_{size}", runs_dir(pre_dir) / f"trunk_{size}"
                        if not link.is_symlink():  # may dangle until the pretrain trunk starts
                            os.symlink(os.path.relpath(target_dir, link.parent), link)
                dirs.append(d)
    return dirs


# --------------------------------------------------------------------------------------------------------------
# running


def _run_sweep(sweep: Path, executor: str, threads: int, template: str, params: dict, retry_failed: bool) -> bool:
    """Run one sweep dir with the sweep runner (locally one run at a time, on ``threads`` torch threads); True
    when every run in it is complete."""
    from wxscale.study.run import run_local, run_slurm
    from wxscale.study.sweep import sweep_table

    if executor == "local":
        states = run_local(sweep, jobs=1, retry_failed=retry_failed, threads=threads, progress=False)
        return all(s == "complete" for s in states.values())
    table = sweep_table(sweep)
    if (table["state"] == "complete").all():
        return True
    if not table["state"].isin(["running", "queued"]).any():
        run_slurm(sweep, template, params, retry_failed=retry_failed)
    return False


def run_study(out: Path, spec: TransferSpec, executor: str = "local", jobs: int = 2, template: str = "sweep",
              params: dict | None = None, retry_failed: bool = False) -> bool:
    """Pretrain, then every downstream sweep; True when all is complete. With Slurm each call submits what
    can start now (the downstream sweeps once the pretrain trunks are complete): call again to go on."""
    from concurrent.futures import ThreadPoolExecutor

    params = params or {}
    pre_dir = Path(out) / "pretrain"
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0 = time.perf_counter()

    def one(sweep: Path) -> bool:
        ok = _run_sweep(sweep, executor, threads, template, params, retry_failed)
        name = "pretraining" if sweep == pre_dir else str(sweep.relative_to(Path(out) / "downstream"))
        print(f"transfer: {name} {'complete' if ok else 'not complete'} [{time.perf_counter() - t0:.0f} s]",
              flush=True)
        return ok

    scratch = [downstream_dir(out, t, n, "scratch") for t in spec.targets for n in spec.counts]
    finetune = [downstream_dir(out, t, n, "finetune") for t in spec.targets for n in spec.counts]
    # `jobs` sweeps at a time, each running one run at a time: the cores stay busy while a sweep waits on its
    # trunk or starts a process. Scratch needs no pretraining, so it runs beside it.
    with ThreadPoolExecutor(max_workers=jobs if executor == "local" else 1) as pool:
        oks = list(pool.map(one, [pre_dir, *scratch]))
        trunks_ok = all(run_state(runs_dir(pre_dir) / f"trunk_{s}") == "complete" for s in spec.sizes)
        if not trunks_ok:
            print(f"transfer: the pretrain trunks are not complete (see `wxscale sweep status {pre_dir}`); "
                  "fine-tuning waits for them" + ("; run this command again when they are" if executor == "slurm"
                                                  else ""))
            return False
        oks += list(pool.map(one, finetune))
    return all(oks)


# --------------------------------------------------------------------------------------------------------------
# collecting, evaluating, fitting


def rollout_rmse(run_dir: Path, lead_hours: int, max_inits: int) -> dict[str, float]:
    """Rollout RMSE per channel at ``lead_hours`` on the run's test split (wxscale eval; cached in RUN/eval_*,
    named by the settings, and recomputed when the run finished after it)."""
    out = run_dir / f"eval_{lead_hours}h_{max_inits}inits"
    csv = out / "rmse.csv"
    info = out / "eval.json"
    fresh = csv.is_file() and info.is_file() and info.stat().st_mtime >= (run_dir / "summary.json").stat().st_mtime
    if fresh:
        rmse = pd.read_csv(csv)
    else:
        from wxscale.data_prep.layout import load_meta
        from wxscale.evaluation.evaluate import evaluate_run  # the suite's one rollout scorer (a later layer)

        with open(run_dir / "config.yaml") as f:
            dataset = yaml.safe_load(f)["data"]["dataset"]
        steps = max(1, round(lead_hours / load_meta(dataset).dhours))
        rmse = evaluate_run(run_dir, lead_steps=steps, max_inits=max_inits, out=out, progress=False,
                            plots=False)["rmse"]
    at = rmse[np.isclose(rmse["lead_hours"], lead_hours)]
    return {f"rmse_{r.channel}_{lead_hours}h": float(r.model) for r in at.itertuples()}


def collect(out: Path, spec: TransferSpec, evaluate: bool = True) -> pd.DataFrame:
    """transfer.csv: one row per finished downstream run, with the rollout RMSE at the fixed lead."""
    pre_phys = physics_settings(spec.pretrain)
    pretrain = _describe(spec.pretrain)
    rows = []
    for target, path in spec.targets.items():
        shift, words = physics_shift(pre_phys, physics_settings(path))
        for n in spec.counts:
            for mode in MODES:
                d = downstream_dir(out, target, n, mode)
                for size in spec.sizes:
                    run = runs_dir(d) / f"{'ft' if mode == 'finetune' else 'sc'}_{size}"
                    summary_path = run / "summary.json"
                    if not summary_path.is_file():
                        continue
                    s = json.loads(summary_path.read_text())
                    if s.get("status") not in ("complete", "failed"):
                        continue
                    row = {"size": size, "params": s.get("params"), "pretrain": pretrain, "target": target,
                           "shift": shift, "downstream_samples": n, "mode": mode, "steps": spec.steps,
                           "val_loss": s.get("val_loss")}
                    if evaluate and s.get("status") == "complete":
                        row.update(rollout_rmse(run, spec.lead_hours, spec.eval_inits))
                    row.update({"shift_params": words, "samples": s.get("samples"), "wall_s": s.get("wall_s"),
                                "status": s.get("status"), "run_dir": str(run),
                                "train_loss_drop_2nd_half": still_improving(run, d / "runs", mode)})
                    rows.append(row)
    df = pd.DataFrame(rows)
    write_csv(Path(out) / TRANSFER_CSV, df)
    return df


def still_improving(run: Path, runs: Path, mode: str) -> float:
    """1 - (train loss at the end) / (train loss half way), over the whole run (for scratch, its trunk's
    metrics.csv and then the branch's): clearly above 0 means the fixed step budget ended a still-improving run."""
    parts = [run / "metrics.csv"]
    if mode == "scratch":
        parts.insert(0, runs / run.name.replace("sc_", "trunk_", 1) / "metrics.csv")
    frames = [pd.read_csv(p) for p in parts if p.is_file()]
    if not frames:
        return math.nan
    m = pd.concat(frames).dropna(subset=["train_loss"]).sort_values("step")
    if len(m) < 2:
        return math.nan
    half = m.iloc[(m["step"] - m["step"].iloc[-1] / 2).abs().argmin()]
    return float(1 - m["train_loss"].iloc[-1] / half["train_loss"])


def pretrain_losses(out: Path, spec: TransferSpec) -> dict[str, float]:
    """val_loss of each size's pretrained model (the cooled pretrain branch) on the pretraining data."""
    res = {}
    for size in spec.sizes:
        p = runs_dir(Path(out) / "pretrain") / f"pre_{size}" / "summary.json"
        if p.is_file():
            res[size] = json.loads(p.read_text()).get("val_loss")
    return res


def fit_curves(table: pd.DataFrame) -> pd.DataFrame:
    """L = k D^a per (size, target, mode) over the downstream counts (least squares in log-log space;
    :func:`wxscale.study.fit.fit_power_law`)."""
    rows = []
    ok = table[(table["status"] == "complete") & np.isfinite(pd.to_numeric(table["val_loss"], errors="coerce"))]
    for (size, target, mode), g in ok.groupby(["size", "target", "mode"], sort=False):
        if g["downstream_samples"].nunique() < 2:
            continue
        k, a = fit_power_law(g["downstream_samples"].to_numpy(float), g["val_loss"].to_numpy(float))
        rows.append({"size": size, "params": int(g["params"].iloc[0]), "target": target,
                     "shift": g["shift"].iloc[0], "mode": mode, "coefficient": k, "exponent": a,
                     "n_points": len(g)})
    return pd.DataFrame(rows, columns=["size", "params", "target", "shift", "mode", "coefficient", "exponent",
                                       "n_points"])


def effective_data(table: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Effective data transferred (Hernandez et al. 2021): D_E = (L_ft / k_s)^(1 / a_s) from scratch's law
    L_s = k_s D^a_s, D_T = D_E - D, multiplier D_E / D; ``extrapolated`` when D_E lies outside the counts."""
    rows = []
    ok = table[table["status"] == "complete"]
    for (size, target), g in ok.groupby(["size", "target"], sort=False) if len(fits) else []:
        f = fits[(fits["size"] == size) & (fits["target"] == target) & (fits["mode"] == "scratch")]
        if f.empty:
            continue
        k, a = float(f["coefficient"].iloc[0]), float(f["exponent"].iloc[0])
        counts = sorted(g["downstream_samples"].unique())
        for n in counts:
            ft = g[(g["downstream_samples"] == n) & (g["mode"] == "finetune")]["val_loss"]
            sc = g[(g["downstream_samples"] == n) & (g["mode"] == "scratch")]["val_loss"]
            if ft.empty or sc.empty:
                continue
            l_ft, l_sc = float(ft.iloc[0]), float(sc.iloc[0])
            d_e = (l_ft / k) ** (1 / a) if a < 0 else math.nan  # scratch must improve with data to invert
            rows.append({"size": size, "params": int(g["params"].iloc[0]), "target": target,
                         "shift": g["shift"].iloc[0], "downstream_samples": int(n), "val_loss_finetune": l_ft,
                         "val_loss_scratch": l_sc, "loss_ratio": l_ft / l_sc, "effective_samples": d_e,
                         "effective_data_transferred": d_e - n, "multiplier": d_e / n,
                         "extrapolated": bool(not counts[0] <= d_e <= counts[-1]) if math.isfinite(d_e) else True})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# plots and the summary


def plot_target(table: pd.DataFrame, fits: pd.DataFrame, target: str, path: Path) -> Path:
    """Downstream val_loss against downstream samples, one panel per size: finetune against scratch, with the
    fitted power laws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[(table["target"] == target) & (table["status"] == "complete")]
    sizes = list(dict.fromkeys(t["size"]))
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(4.2 * max(1, len(sizes)), 3.8), sharey=True,
                             squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for mode, style in (("finetune", "o-"), ("scratch", "s--")):
            g = t[(t["size"] == size) & (t["mode"] == mode)].sort_values("downstream_samples")
            line = ax.plot(g["downstream_samples"], g["val_loss"], style, label=mode)[0]
            f = fits[(fits["size"] == size) & (fits["target"] == target) & (fits["mode"] == mode)]
            if len(f) and len(g):
                x = np.geomspace(g["downstream_samples"].min(), g["downstream_samples"].max(), 50)
                r = f.iloc[0]
                ax.plot(x, r["coefficient"] * x ** r["exponent"], ":", color=line.get_color(),
                        label=f"fit D^{r['exponent']:.2f}")
        params = t[t["size"] == size]["params"].iloc[0]
        ax.set(xscale="log", yscale="log", xlabel="downstream samples", title=f"{size} ({params:.3g} params)")
        ax.set_xticks(sorted(t["downstream_samples"].unique()))
        ax.set_xticklabels([str(int(v)) for v in sorted(t["downstream_samples"].unique())])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("val loss (normalised MSE)")
    shift = t["shift"].iloc[0] if len(t) else math.nan
    fig.suptitle(f"target {target} (shift {shift:.2g})")
    return save_figure(fig, path)


def plot_savings(savings: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (size, target), g in savings.groupby(["size", "target"], sort=False):
        g = g.sort_values("downstream_samples")
        line = ax.plot(g["downstream_samples"], g["multiplier"], "-", label=f"{size}, {target}")[0]
        inside = ~g["extrapolated"].astype(bool)
        ax.plot(g["downstream_samples"][inside], g["multiplier"][inside], "o", color=line.get_color())
        ax.plot(g["downstream_samples"][~inside], g["multiplier"][~inside], "o", mfc="none", color=line.get_color())
    ax.axhline(1.0, color="grey", lw=0.8)
    counts = sorted(savings["downstream_samples"].unique())
    ax.set(xscale="log", yscale="log", xlabel="downstream samples D", ylabel="effective data multiplier D_E / D",
           title="data saved by pre-training (hollow: D_E extrapolated)")
    ax.set_xticks(counts)
    ax.set_xticklabels([str(int(c)) for c in counts])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def summarise(table: pd.DataFrame, fits: pd.DataFrame, savings: pd.DataFrame, pre: dict[str, float]) -> str:
    """The study's answers, from the numbers (Markdown)."""
    lines = ["# Transfer study", ""]
    lines += ["Pretrained models (val loss on the pretraining data): "
              + ", ".join(f"{s}: {v:.4g}" for s, v in pre.items() if v is not None), ""]
    if savings.empty:
        return "\n".join(lines + ["No complete finetune/scratch pairs yet."])
    lo, hi = savings["downstream_samples"].min(), savings["downstream_samples"].max()
    size_order = list(dict.fromkeys(table.sort_values("params")["size"]))
    lines += ["| size | target | shift | D | L finetune | L scratch | L_ft/L_sc | D_E | D_E/D |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in savings.itertuples():
        de = f"{r.effective_samples:.3g}" + (" (extrap.)" if r.extrapolated else "")
        lines.append(f"| {r.size} | {r.target} | {r.shift:.2g} | {r.downstream_samples} | {r.val_loss_finetune:.4g} "
                     f"| {r.val_loss_scratch:.4g} | {r.loss_ratio:.3f} | {de} | {r.multiplier:.3g} |")
    lines += ["", "## Answers", ""]
    small = savings[savings["downstream_samples"] == lo]
    wins = small[small["loss_ratio"] < 1]
    lines.append(f"- Fine-tuning beats scratch at the smallest count (D = {lo}) in {len(wins)} of {len(small)} "
                 f"(size, target) pairs"
                 + ("" if len(wins) == len(small) else ": not in " + ", ".join(
                     f"{r.size}/{r.target} (ratio {r.loss_ratio:.3f})" for r in small[small['loss_ratio'] >= 1]
                     .itertuples())) + ".")
    for (size, target), g in savings.groupby(["size", "target"], sort=False):
        a, b = g[g["downstream_samples"] == lo], g[g["downstream_samples"] == hi]
        if len(a) and len(b):
            ra, rb = float(a["loss_ratio"].iloc[0]), float(b["loss_ratio"].iloc[0])
            closes = "closes" if abs(1 - rb) < abs(1 - ra) else "does not close"
            lines.append(f"- {size}/{target}: L_ft/L_sc {ra:.3f} at D = {lo}, {rb:.3f} at D = {hi}: the gap {closes}.")
    if len(size_order) >= 2:
        small_s, large_s = size_order[0], size_order[-1]
        for target, g in small.groupby("target", sort=False):
            a, b = g[g["size"] == small_s], g[g["size"] == large_s]
            if len(a) and len(b):
                ma, mb = float(a["multiplier"].iloc[0]), float(b["multiplier"].iloc[0])
                ra, rb = float(a["loss_ratio"].iloc[0]), float(b["loss_ratio"].iloc[0])
                more = "gains more" if rb < ra else "does not gain more"
                lines.append(f"- {target}, D = {lo}: the larger model {large_s} {more} than {small_s} "
                             f"(L_ft/L_sc {rb:.3f} vs {ra:.3f}; D_E/D {mb:.3g} vs {ma:.3g}).")
    if small["target"].nunique() >= 2:
        for size, g in small.groupby("size", sort=False):
            g = g.sort_values("shift")
            parts = [f"{r.target} (shift {r.shift:.2g}): L_ft/L_sc {r.loss_ratio:.3f}, D_E/D {r.multiplier:.3g}"
                     for r in g.itertuples()]
            trend = "shrinks" if g["loss_ratio"].iloc[-1] > g["loss_ratio"].iloc[0] else "does not shrink"
            lines.append(f"- {size}, D = {lo}, by shift: " + "; ".join(parts)
                         + f": the benefit {trend} as the shift grows.")
    top = table[(table["downstream_samples"] == hi) & (table["mode"] == "scratch")]
    if "train_loss_drop_2nd_half" in top and len(top):
        drops = ", ".join(f"{r.size}/{r.target} {100 * r.train_loss_drop_2nd_half:.0f} %" for r in top.itertuples())
        steps = int(top["steps"].iloc[0])
        lines.append(f"- Budget check: scratch's train loss fell over the second half of its {steps}"
                     f" steps at D = {hi} by {drops}. Where this is large, scratch had not converged, and part of "
                     "the gap at the larger counts is pre-training compute rather than data.")
    lines += ["", "## Power laws L = k D^a (downstream samples D)", "", "| size | target | mode | k | a | points |",
              "|---|---|---|---|---|---|"]
    for r in fits.itertuples():
        lines.append(f"| {r.size} | {r.target} | {r.mode} | {r.coefficient:.4g} | {r.exponent:.3f} | {r.n_points} |")
    return "\n".join(lines) + "\n"


def report(out: Path, spec: TransferSpec, evaluate: bool = True) -> str:
    """transfer.csv, the fits, the savings, the plots and the summary from what has finished."""
    out = Path(out)
    table = collect(out, spec, evaluate=evaluate)
    if table.empty:
        return "no finished downstream runs yet"
    fits = fit_curves(table)
    savings = effective_data(table, fits)
    write_csv(out / FITS_CSV, fits)
    write_csv(out / SAVINGS_CSV, savings)
    for target in spec.targets:
        if (table["target"] == target).any():
            plot_target(table, fits, target, out / f"transfer_{target}.png")
    if not savings.empty:
        plot_savings(savings, out / "transfer_savings.png")
    text = summarise(table, fits, savings, pretrain_losses(out, spec))
    write_text_atomic(out / SUMMARY_MD, text)
    return text


# --------------------------------------------------------------------------------------------------------------
# spec file, demo data, command line


def save_spec(out: Path, spec: TransferSpec, overwrite: bool) -> None:
    """Write DIR/transfer.json; refuse a different spec in a dir that has one (unless ``overwrite``)."""
    d = dataclasses.asdict(spec)
    d["pretrain"] = str(Path(spec.pretrain).resolve())
    d["targets"] = {k: str(Path(v).resolve()) for k, v in spec.targets.items()}
    # what the runs depend on; the evaluation settings may change between calls (its cache is keyed by them)
    trained = {k: v for k, v in d.items() if k not in ("lead_hours", "eval_inits")}
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(out) / SPEC_JSON
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text()).get("hash")
        if old != digest:
            raise WxscaleError(f"{out} already holds a different transfer study ({path}); use another --out, or "
                               "--overwrite to plan it anew (finished runs of unchanged sweeps are kept)")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"spec": d, "hash": digest})


def demo_datasets(out: Path, grid: str = DEMO_GRID) -> tuple[str, dict[str, str]]:
    """The miniature's datasets under DIR/data (reused when they check clean): pretraining data at the
    default physics, and one target per :data:`DEMO_TARGETS` entry (another seed, its physics)."""
    from wxscale.cli import main as cli
    from wxscale.data_prep.check import check_dataset

    common = ["--builtin", "swe", "--grid", grid, "--sim-traj-days", "10", "--sim-spinup-days", "2",
              "--no-progress", "--overwrite"]
    wanted = {"pretrain": common + ["--years", "4", "--sim-traj-per-year", "4", "--seed", "0"]}
    for i, (name, physics) in enumerate(DEMO_TARGETS.items()):
        flags = common + ["--years", "3", "--sim-traj-per-year", "2", "--seed", str(100 + i)]
        wanted[name] = flags + (["--physics", *physics] if physics else [])
    paths = {}
    for name, flags in wanted.items():
        path = Path(out) / "data" / name
        if not ((path / "data.json").is_file() and not check_dataset(path, checksums=False, values=False)):
            if cli(["prep", "--out", str(path), *flags]) != 0:
                raise WxscaleError(f"transfer --demo: `wxscale prep` for {path} failed (its message is above)")
        paths[name] = str(path)
    pre = paths.pop("pretrain")
    return pre, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + (
        ". Pretrain each size, then fine-tune it and train from scratch on subsets of each target's train split; "
        "writes DIR/transfer.csv, power-law fits, the effective data transferred, plots and a summary. Run again, "
        "it reuses what is done. See the module docstring of wxscale.study.transfer for the layout.")
    parser.add_argument("--out", type=Path, required=True, help="study dir")
    parser.add_argument("--demo", action="store_true",
                        help=f"the CPU miniature: simulate its datasets ({DEMO_GRID}; targets "
                             f"{', '.join(DEMO_TARGETS)}) under DIR/data and use the demo defaults")
    parser.add_argument("--pretrain", help="dataset dir to pretrain on")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=DIR",
                        help="downstream dataset (same grid and channels), repeatable: one in distribution, "
                             "one or more with shifted physics")
    parser.add_argument("--sizes", default=DEMO_SIZES, help=f"ladder sizes (default {DEMO_SIZES})")
    parser.add_argument("--counts", default=DEMO_COUNTS,
                        help=f"downstream sample counts, powers of 2 (default {DEMO_COUNTS})")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=300, help="optimizer steps of pretraining")
    parser.add_argument("--steps", type=int, default=60,
                        help="optimizer steps of every downstream run (a fixed budget; see the module docstring)")
    parser.add_argument("--cooldown-fraction", type=float, default=0.2)
    parser.add_argument("--lead-hours", type=int, default=24, help="lead of the rollout RMSE column")
    parser.add_argument("--eval-inits", type=int, default=8, help="rollout init times per evaluation (default 8)")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="model field for every size (repeatable)")
    parser.add_argument("--train-config", type=Path, default=DEFAULT_BASE,
                        help="base training config of every run (default: bench/configs/sweep_base.yaml)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--jobs", type=int, default=2, help="local: runs at a time (default 2)")
    parser.add_argument("--template", default="sweep", help="slurm: template name in submit/ or a path")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="slurm: template parameter (repeatable)")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--no-run", action="store_true", help="only collect, fit and plot what has finished")
    parser.add_argument("--no-eval", action="store_true", help="no rollout RMSE column")
    parser.add_argument("--overwrite", action="store_true", help="replace a different study plan in --out")


def spec_from_args(args: argparse.Namespace) -> TransferSpec:
    from wxscale.model.config import parse_overrides

    if args.demo:
        pretrain, targets = demo_datasets(args.out)
    else:
        if not args.pretrain or not args.target:
            raise WxscaleError("give --pretrain DIR and at least one --target NAME=DIR (or --demo)")
        pretrain, targets = args.pretrain, {}
        for item in args.target:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise WxscaleError(f"--target {item!r}: expected NAME=DIR")
            if name in targets:
                raise WxscaleError(f"--target {name}: given twice")
            targets[name] = path
    return TransferSpec(
        pretrain=pretrain, targets=targets, sizes=parse_sizes(args.sizes),
        counts=parse_list(args.counts, "--counts", int), global_batch=args.global_batch,
        pretrain_steps=args.pretrain_steps, steps=args.steps, cooldown_fraction=args.cooldown_fraction,
        lead_hours=args.lead_hours, eval_inits=args.eval_inits, model_overrides=parse_overrides(args.model))


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    if args.jobs < 1 or args.global_batch < 1:
        raise WxscaleError("--jobs and --global-batch must be >= 1")
    spec = spec_from_args(args)
    check_spec(spec)
    if not args.train_config.is_file():
        raise WxscaleError(f"--train-config {args.train_config}: file not found")
    template = yaml.safe_load(args.train_config.read_text()) or {}
    save_spec(args.out, spec, args.overwrite)
    plan_study(args.out, spec, template, overwrite=args.overwrite)
    done = True
    if not args.no_run:
        params = dict(p.split("=", 1) for p in args.param if "=" in p)
        done = run_study(args.out, spec, args.executor, args.jobs, args.template, params, args.retry_failed)
    text = report(args.out, spec, evaluate=not args.no_eval)
    print(text)
    print(f"transfer: wrote {args.out / TRANSFER_CSV} and its fits, plots and {SUMMARY_MD} "
          f"[{(time.perf_counter() - t_start) / 60:.1f} min]")
    return 0 if done else 1
