"""`wxscale bench scaling`: weak and strong data-parallel scaling over ranks.

    wxscale bench scaling --dataset DIR [--ranks 1,2] [--mode weak|strong|both] [--sizes s0] [--batch 8]
        [--global-batch 16] [--launcher mpiexec|srun] [--out out/bench_scaling] [KEY=VALUE ...]

For each rank count R this command launches ``wxscale bench throughput`` as R ranks (``mpiexec -n R``, the
``mpiexec`` installed next to this Python, wired up with mpi4py; or ``srun --ntasks R`` inside a Slurm
allocation), which times the training loop's own step (:meth:`Trainer.loop_step`, DDP: gloo on CPU, NCCL on
GPUs) per configuration. One launch per R
covers both modes: it runs every per-rank batch either mode needs.

- Weak scaling keeps the per-rank batch b fixed (global batch R b): efficiency E_w(R) = X(R) / (R X(R0)).
- Strong scaling keeps the global batch B fixed (per-rank B / R): efficiency E_s(R) = X(R) / (R X(R0)).

X is the global samples/s (over the median step, each step the slowest rank's) and R0 the smallest rank count
asked (normally 1), so ``efficiency`` = 1 is perfect scaling; ``speedup`` = X(R) / X(R0); ``efficiency_best`` is
the same ratio of the fastest steps (the least disturbed on a shared machine). ``--rounds N`` launches the rank
counts N times in turn (1, 2, 1, 2, ...) and keeps, per configuration and rank count, the round with the highest
median: load from other jobs that comes and goes then hits every rank count alike rather than one of them. Weak
scaling is the regime of Gustafson's law (1988, "Reevaluating Amdahl's law"), strong scaling that of Amdahl's law
(1967).

CPU threads: each rank gets ``--threads`` torch threads, by default usable cores // R, so R ranks on C cores do
not oversubscribe them (2 ranks on 2 cores: 1 thread each; one rank: 2). The CSV records threads per rank and
whether the node is oversubscribed. Note that on CPU the comparison is then of R ranks x C/R threads against one
rank x C threads on the same cores: scaling efficiency measures how well data parallelism uses the cores compared
with intra-op threading, plus the gloo all-reduce, which shares those cores.

Writes ``<out>/scaling.csv`` (columns :data:`COLUMNS`), ``<out>/scaling.png``, and per R the launch's own
``<out>/ranks_<R>/throughput.csv`` and ``<out>/ranks_<R>.log``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from wxscale.args import parse_list
from wxscale.errors import WxscaleError
from wxscale.files import write_csv
from wxscale.perf.throughput import add_step_arguments, finish_figure, usable_cores
from wxscale.provenance import PROVENANCE_COLUMNS

COLUMNS = [
    "mode", "ranks", "size", "params", "precision", "loader", "batch_per_rank", "global_batch", "samples_per_s",
    "samples_per_s_min", "samples_per_s_max", "samples_per_s_per_rank", "step_s_median", "step_s_min",
    "step_s_max", "baseline_ranks", "speedup", "ideal_samples_per_s", "efficiency", "efficiency_best",
    "allreduce_s_median", "allreduce_fraction", "mfu", "threads_per_rank", "cores", "oversubscribed", "rounds",
    "launcher",
] + PROVENANCE_COLUMNS
# Variables of an enclosing launch that would make a child rank misjudge its world (mpiexec children).
_WORLD_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_WORLD_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="DIR", help="dataset dir (from `wxscale prep`)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    parser.add_argument("--mode", default="both", choices=("weak", "strong", "both"))
    parser.add_argument("--sizes", default="s0", help="comma-separated ladder sizes (default s0)")
    parser.add_argument("--batch", default="8", help="weak scaling: per-rank batch sizes (default 8)")
    parser.add_argument("--global-batch", default=None,
                        help="strong scaling: global batch sizes (default: --batch x the largest rank count)")
    add_step_arguments(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per rank (default 0: usable cores // ranks)")
    parser.add_argument("--launcher", default="mpiexec", choices=("mpiexec", "srun"),
                        help="mpiexec (next to this Python, else on PATH) or srun (inside a Slurm allocation)")
    parser.add_argument("--launcher-args", default="",
                        help="extra launcher arguments, e.g. '--mpi=pmi2 --gpus-per-task=1' for srun")
    parser.add_argument("--rounds", type=int, default=1,
                        help="launch the rank counts this many times in turn and keep each one's best round")
    parser.add_argument("--timeout-s", type=float, default=3600, help="limit per launch (default 3600 s)")
    parser.add_argument("--out", default="out/bench_scaling", help="output dir (default out/bench_scaling)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="trainer config overrides, e.g. model.overrides.patch=2")


def launcher_command(launcher: str, ranks: int, extra: str = "") -> list[str]:
    """The command prefix that starts ``ranks`` copies of a program."""
    if launcher == "mpiexec":
        exe = Path(sys.executable).parent / "mpiexec"
        path = str(exe) if exe.exists() else shutil.which("mpiexec")
        if path is None:
            raise WxscaleError("--launcher mpiexec: no mpiexec next to this Python or on PATH; install mpich and "
                               "mpi4py (pip install mpich mpi4py), or use --launcher srun inside Slurm")
        return [path, "-n", str(ranks), *shlex.split(extra)]
    if launcher == "srun":
        path = shutil.which("srun")
        if path is None:
            raise WxscaleError("--launcher srun: srun is not on PATH; run inside a Slurm allocation, or use "
                               "--launcher mpiexec")
        return [path, "--ntasks", str(ranks), *shlex.split(extra)]
    raise WxscaleError(f"--launcher {launcher!r}: use mpiexec or srun")


def child_env(launcher: str, threads: int) -> dict[str, str]:
    """Environment of a launch: no world variables inherited from our own launch, threads pinned."""
    env = {k: v for k, v in os.environ.items()
           if k not in _WORLD_VARS and not k.startswith(_WORLD_PREFIXES)}
    if launcher == "mpiexec":  # a Slurm job around us must not make the mpiexec ranks think srun started them
        env = {k: v for k, v in env.items() if k in ("SLURM_JOB_ID",) or not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def efficiencies(rows: list[dict], mode: str, ranks: list[int], batches: list[int]) -> list[dict]:
    """Scaling rows of one mode from throughput rows keyed by ranks (each has world_size, batch_per_rank, ...).

    weak: per-rank batch b fixed; strong: global batch B fixed (per-rank B / R). Efficiency against the smallest
    rank count R0: X(R) / (R / R0 * X(R0)).
    """
    def key(r: dict) -> tuple:
        return r["size"], r["precision"], r["loader"]

    def pick(r_count: int, per_rank: int, k: tuple) -> dict | None:
        return next((r for r in rows if int(r["world_size"]) == r_count and int(r["batch_per_rank"]) == per_rank
                     and key(r) == k), None)

    out = []
    r0 = min(ranks)
    for k in sorted({key(r) for r in rows}):
        for b in batches:
            per_rank = (lambda r, b=b: b) if mode == "weak" else (lambda r, b=b: b // r)
            base = pick(r0, per_rank(r0), k)
            for r_count in sorted(ranks):
                row = pick(r_count, per_rank(r_count), k)
                if row is None:
                    continue
                x = float(row["samples_per_s"])
                x0 = float(base["samples_per_s"]) if base is not None else float("nan")
                xb = float(row["samples_per_s_max"]) if row.get("samples_per_s_max") else float("nan")
                xb0 = float(base["samples_per_s_max"]) if base is not None and base.get("samples_per_s_max") \
                    else float("nan")
                ideal = x0 * r_count / r0
                out.append({
                    **{c: row.get(c) for c in COLUMNS if c in row}, "mode": mode, "ranks": r_count,
                    "samples_per_s_per_rank": x / r_count, "baseline_ranks": r0, "speedup": x / x0,
                    "ideal_samples_per_s": ideal, "efficiency": x / ideal,
                    "efficiency_best": xb / (xb0 * r_count / r0),
                    "launcher": row.get("wireup", ""),
                })
    return out


def best_of_rounds(rows: list[dict]) -> list[dict]:
    """Per configuration and rank count, the row (round) with the highest median samples/s."""
    best: dict[tuple, dict] = {}
    for r in rows:
        k = (r["world_size"], r["batch_per_rank"], r["size"], r["precision"], r["loader"])
        if k not in best or float(r["samples_per_s"]) > float(best[k]["samples_per_s"]):
            best[k] = r
    return list(best.values())


def plot(rows: list[dict], path: Path) -> None:
    """Samples/s against ranks (with the ideal line) and efficiency against ranks, per mode and configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        b = r["batch_per_rank"] if r["mode"] == "weak" else r["global_batch"]
        groups.setdefault((r["mode"], r["size"], r["precision"], r["loader"], b), []).append(r)
    for (mode, size, prec, loader, b), sel in groups.items():
        sel = sorted(sel, key=lambda r: int(r["ranks"]))
        n = [int(r["ranks"]) for r in sel]
        label = f"{mode}: {size} {prec} {loader}, " + (f"b={b}/rank" if mode == "weak" else f"B={b}")
        style = "o-" if mode == "weak" else "s--"
        line, = ax1.plot(n, [float(r["samples_per_s"]) for r in sel], style, label=label)
        ax1.plot(n, [float(r["ideal_samples_per_s"]) for r in sel], ":", color=line.get_color(), lw=1)
        ax2.plot(n, [100 * float(r["efficiency"]) for r in sel], style, color=line.get_color(), label=label)
    ax1.set_ylabel("samples / s (dotted: ideal)")
    ax2.set_ylabel("scaling efficiency (%)")
    ax2.axhline(100, color="grey", lw=0.8)
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xlabel("ranks")
        ax.set_xticks(sorted({int(r["ranks"]) for r in rows}))
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    r0 = rows[0]
    finish_figure(fig, f"data-parallel scaling on {r0.get('device', '')} ({r0.get('cores', '?')} cores, "
                       f"threads per rank = cores // ranks)", path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wxscale.data_prep.layout import load_meta

    ranks = sorted(set(parse_list(args.ranks, "--ranks", int)))
    if ranks[0] < 1:
        raise WxscaleError(f"--ranks {args.ranks}: rank counts must be >= 1")
    batches = parse_list(args.batch, "--batch", int)
    globals_ = (parse_list(args.global_batch, "--global-batch", int) if args.global_batch
                else [b * ranks[-1] for b in batches])
    modes = ["weak", "strong"] if args.mode == "both" else [args.mode]
    if "strong" in modes:
        odd = [(g, r) for g in globals_ for r in ranks if g % r]
        if odd:
            raise WxscaleError(f"--global-batch: {odd[0][0]} is not divisible by {odd[0][1]} ranks; use a multiple "
                               f"of every rank count in --ranks {args.ranks}")
    if min(batches + globals_) < 1:
        raise WxscaleError("batch sizes must be >= 1")
    if args.rounds < 1:
        raise WxscaleError("--rounds must be >= 1")
    load_meta(args.dataset)  # fail early on a bad dataset dir
    cores = usable_cores()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    all_rows: list[dict] = []
    launches = [(rnd, r) for rnd in range(args.rounds) for r in ranks]
    for rnd, r_count in tqdm(launches, desc="launches", unit="launch", file=sys.stderr):
        per_rank = sorted(({b for b in batches} if "weak" in modes else set())
                          | ({g // r_count for g in globals_} if "strong" in modes else set()))
        threads = args.threads or max(1, cores // r_count)
        name = f"ranks_{r_count}" + (f"_round{rnd + 1}" if args.rounds > 1 else "")
        sub = out / name
        cmd = launcher_command(args.launcher, r_count, args.launcher_args) + [
            sys.executable, "-m", "wxscale.cli", "bench", "throughput", "--dataset", args.dataset,
            "--sizes", args.sizes, "--batch", ",".join(map(str, per_rank)), "--precision", args.precision,
            "--loader", args.loader, "--num-workers", str(args.num_workers), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--repeats", str(args.repeats), "--run-steps", str(args.run_steps),
            "--device", args.device,
            "--threads", str(threads), "--skip-loader", "--out", str(sub),
            "--wireup", "mpi" if args.launcher == "mpiexec" else "slurm", *args.overrides,
        ]
        log = out / f"{name}.log"
        tqdm.write(f"{r_count} rank(s) x {threads} thread(s): {shlex.join(cmd)}", file=sys.stderr)
        with open(log, "w") as fh:
            try:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(args.launcher, threads),
                                      timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                raise WxscaleError(f"the {r_count}-rank launch ran past --timeout-s {args.timeout_s}; see {log}")\
                    from None
        if proc.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise WxscaleError(f"the {r_count}-rank launch failed (exit {proc.returncode}); the end of {log}:\n{tail}")
        with open(sub / "throughput.csv", newline="") as fh:
            all_rows += list(csv.DictReader(fh))
    all_rows = best_of_rounds(all_rows)
    for r in all_rows:
        r["rounds"] = args.rounds

    rows: list[dict] = []
    for mode in modes:
        rows += efficiencies(all_rows, mode, ranks, batches if mode == "weak" else globals_)
    write_csv(out / "scaling.csv", rows, COLUMNS)
    plot(rows, out / "scaling.png")
    print(f"{'mode':<7}{'ranks':>6}{'size':>6}{'b/rank':>8}{'global':>8}{'samples/s':>11}{'speedup':>9}"
          f"{'efficiency':>12}{'threads':>9}")
    for r in rows:
        print(f"{r['mode']:<7}{r['ranks']:>6}{r['size']:>6}{r['batch_per_rank']:>8}{r['global_batch']:>8}"
              f"{float(r['samples_per_s']):>11.1f}{r['speedup']:>9.2f}{100 * r['efficiency']:>11.1f}%"
              f"{r['threads_per_rank']:>9}")
    print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    return 0
