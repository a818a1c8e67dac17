"""`wxscale`: one console command, one subcommand per stage.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Only the module of the command that is asked for is imported, so ``wxscale --help`` and light commands stay
fast (torch is imported only by the commands that train or benchmark).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shlex
import sys

# (command words, module under `wxscale.`, one-line help). Order is the order shown in --help.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("prep",), "data_prep.prep", "raw reanalysis files or the built-in simulator -> dataset dir (HDF5 shards)"),
    (("check",), "data_prep.check", "validate a dataset dir: schema, shapes, dtype, NaN, time order, checksums"),
    (("model", "list"), "model.cli", "the size ladder: parameters and FLOPs per sample for a grid"),
    (("train",), "training.trainer", "train one run (a trunk, a cooldown branch, or a plain run) into a run dir"),
    (("sweep", "plan"), "study.plan", "plan a scaling sweep: budgets x sizes -> trunks and branches"),
    (("sweep", "run"), "study.run", "run a planned sweep locally or through Slurm (resumable)"),
    (("sweep", "status"), "study.status", "show what a sweep has done, is running, or failed"),
    (("sweep", "lr-scan"), "study.lr_scan", "choose each size's learning rate by a short scan (before sweep run)"),
    (("sweep", "extend"), "study.extend", "add the sizes or budgets a sweep needs for its IsoFLOP minima"),
    (("sweep", "validate"), "study.validate", "check the fitted laws with runs at a held-out budget"),
    (("transfer",), "study.transfer", "transfer study: pretrain, fine-tune vs scratch across physics shifts"),
    (("fit",), "study.fit_cli", "IsoFLOP and scaling-law fits with bootstrap intervals from runs.csv"),
    (("schedules",), "study.schedules", "WSD with a 1-sqrt cooldown against cosine at equal compute, per size"),
    (("fit", "channels"), "evaluation.channel_laws",
     "roll out every IsoFLOP point; loss-vs-compute laws per channel and lead time, flag those not improving"),
    (("eval",), "evaluation.evaluate", "roll a trained model out over the test split: RMSE, ACC, spectra"),
    (("bench", "loader"), "perf.loader_bench", "loader throughput: DALI and torch against a plain read"),
    (("bench", "model"), "perf.model_bench", "model forward+backward speed and GFLOP/s against matmul peak"),
    (("bench", "throughput"), "perf.throughput", "training throughput, MFU and memory per configuration"),
    (("bench", "scaling"), "perf.scaling", "weak and strong scaling over ranks"),
    (("bench", "prep"), "perf.prep_bench", "prep GB/s written, serial against N ranks, against a plain read"),
    (("report",), "report", "one Markdown page with plots from a benchmark or study folder"),
    (("submit",), "submit", "render an sbatch template from submit/ and submit it (or --dry-run)"),
    (("demo",), "demo", "the main job: a miniature scaling study on the built-in dataset"),
]


def _available() -> list[tuple[tuple[str, ...], str, str]]:
    return [c for c in COMMANDS if importlib.util.find_spec(f"wxscale.{c[1]}") is not None]


def _top_help(commands: list[tuple[tuple[str, ...], str, str]]) -> str:
    width = max((len(" ".join(words)) for words, _, _ in commands), default=0)
    lines = ["usage: wxscale COMMAND [options]   (wxscale COMMAND --help for each)", "", "commands:"]
    lines += [f"  {' '.join(words):<{width}}  {text}" for words, _, text in commands]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from wxscale.errors import WxscaleError

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    # Longest match first, so "sweep run" wins over a hypothetical "sweep".
    match = None
    for words, module_name, text in sorted(commands, key=lambda c: -len(c[0])):
        if tuple(argv[: len(words)]) == words:
            match = (words, module_name, text)
            break
    if match is None:
        if not argv or argv[0] in ("-h", "--help"):
            print(_top_help(commands))
            return 0
        print(_top_help(commands), file=sys.stderr)
        print(f"\nwxscale: error: unknown command {' '.join(argv[:2])!r}", file=sys.stderr)
        return 2
    words, module_name, text = match
    module = importlib.import_module(f"wxscale.{module_name}")
    parser = argparse.ArgumentParser(prog="wxscale " + " ".join(words), description=text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[len(words):])
    # The command as the user gave it, for provenance records (sys.argv is another program's when called in-process).
    args.command_line = "wxscale " + shlex.join(argv)
    try:
        return int(module.run(args) or 0)
    except WxscaleError as err:
        print(f"wxscale {' '.join(words)}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `wxscale model list | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
