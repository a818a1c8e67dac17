"""Local sweep runs start from a fork server that imported the trainer once; each is still its own process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_tiny_dataset
from wxscale.study.preloaded import ENV, start_train


@pytest.mark.parametrize("mode", ["forkserver", "subprocess"])
def test_a_run_is_its_own_process_with_its_status_and_log(tmp_path: Path, monkeypatch, mode: str):
    monkeypatch.setenv(ENV, mode)
    log = tmp_path / "train.log"
    bad = start_train(["check", str(tmp_path / "missing")], log)
    assert bad.wait(timeout=300) == 2 and bad.returncode == 2 and bad.pid != os.getpid()
    assert "wxscale check: error" in log.read_text()
    data = make_tiny_dataset(tmp_path / "d", n_steps=40, gaps=())
    good = start_train(["check", str(data)], log)
    assert good.wait(timeout=300) == 0
    assert log.read_text().count("wxscale check") >= 1  # both runs appended to the same log
