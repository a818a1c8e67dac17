"""Starting the local sweep's trainers without paying torch's start-up for every run.

A sweep of small models is dominated by per-run start-up, not by training: on a 2-core CPU ``import torch`` and
the ``torch._dynamo`` import that torch's optimizers trigger take 5-15 s, while a demo run trains for 5-20 s. So
the local executor starts each run from a fork server (:mod:`multiprocessing`, "forkserver" start method) that has
imported the trainer once; every run is still its own process, with its own pid, exit status, signals and
``train.log``, exactly as if started with ``wxscale train --resume``. The server imports modules only: it starts
no threads and touches no GPU, so forking it is safe (CUDA is initialised in each run, never before).

``WXSCALE_SWEEP_LAUNCH=subprocess`` starts each run as a fresh ``python -m wxscale.cli train`` instead (the way to
rule the fork server out when debugging), as does a platform without the "forkserver" start method.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ENV = "WXSCALE_SWEEP_LAUNCH"
# Imported once by the fork server: the trainer and everything it imports, and what torch.optim pulls in lazily.
PRELOAD = ["wxscale.training.trainer", "torch._dynamo"]


def _train_in_child(argv: list[str], log_path: str) -> None:
    """The body of one forked run: output to its train.log, then `wxscale <argv>`; exits with its status."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own stdout
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from wxscale.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class ForkedRun:
    """A run started from the fork server, with the part of :class:`subprocess.Popen` the runner uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess, argv: list[str]):
        self.process, self.args = process, argv

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # negative: killed by that signal, as Popen reports it

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.process.pid, signum)

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode


_context: multiprocessing.context.BaseContext | None = None


def _forkserver() -> multiprocessing.context.BaseContext | None:
    global _context
    if os.environ.get(ENV, "forkserver") != "forkserver" or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start_train(argv: list[str], log: Path) -> ForkedRun | subprocess.Popen:
    """Start `wxscale <argv>` (a `train` command) as its own process writing to ``log``; returns its handle."""
    context = _forkserver()
    if context is None:
        with open(log, "a") as out:
            return subprocess.Popen([sys.executable, "-m", "wxscale.cli", *argv], stdout=out,
                                    stderr=subprocess.STDOUT)
    process = context.Process(target=_train_in_child, args=(argv, str(log)), name=f"wxscale-{log.parent.name}")
    with _main_module_hidden():
        process.start()
    return ForkedRun(process, argv)


@contextlib.contextmanager
def _main_module_hidden():
    """multiprocessing re-imports the parent's ``__main__`` in each child (as ``__mp_main__``), which runs a
    script's top level again unless it is guarded by ``if __name__ == "__main__"``. A run needs nothing from the
    caller's ``__main__`` (its target lives here), so hide it while the child is started: a user's unguarded
    script or notebook that calls ``wxscale sweep run`` must not run twice."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
