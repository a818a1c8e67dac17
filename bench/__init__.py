"""wxscale: an HPC benchmark suite for neural scaling studies of weather emulators.

One import package, built from the repository's folders (see ``pyproject.toml``). Data flows one way through
the stages; no module imports a later stage (``tests/test_layout.py`` checks this)::

    wxscale.errors, .files, .args,           foundations every stage may import: the error type, atomic writes and
    .provenance, .hardware, .metrics,        CSV, flag parsing, git SHA and environment, device peaks, WeatherBench 2
    .submit, .launch                         metrics, Slurm script rendering and submission, the launcher's world
    wxscale.data_prep   (data_prep/)         raw reanalysis or the built-in simulator -> dataset dir; loaders
    wxscale.model       (model/)             the Swin emulator, its size ladder and analytic FLOPs
    wxscale.training    (bench/training/)    trainer, config, optimizer, schedules, losses, checkpoints, wireup
    wxscale.evaluation  (bench/evaluation/)  autoregressive rollouts of a run dir scored against baselines
    wxscale.study       (bench/study/)       sweep plan/run/status, scaling-law fits and their plots, comparisons
    wxscale.perf        (bench/perf/)        benchmarks: throughput and MFU, scaling, loader, model
    wxscale.demo, .report                    the miniature study, the report

``wxscale.cli`` dispatches ``wxscale COMMAND`` to the module of that command, imported only when it runs, so any
stage may run another command through it as a user would (the sweep runs ``train``, the transfer study ``prep``).

The model imports nothing from data preparation or training; the contracts between stages (dataset dir, run dir,
sweep and fit CSVs) are documented in the modules that own them and in the README.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wxscale")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
