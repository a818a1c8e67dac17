"""`wxscale schedules`: the WSD-vs-cosine comparison runs through the suite's trainer and writes its tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.conftest import make_tiny_dataset
from wxscale.cli import main as cli
from wxscale.study.schedules import compare


def test_schedules_command_compares_both_schedules_at_equal_compute(tmp_path: Path, capsys):
    data = make_tiny_dataset(tmp_path / "data", n_steps=80)
    out = tmp_path / "cmp"
    args = ["schedules", "--dataset", str(data), "--out", str(out), "--sizes", "s0", "--budget", "2e8",
            "--batch", "4", "--warmup-samples", "8", "--val-batches", "2", "--threads", "1",
            "--model", "patch=2", "--model", "window=[2, 4]"]
    assert cli(args) == 0
    rows = pd.read_csv(out / "schedules.csv")
    assert sorted(rows["schedule"]) == ["cosine", "wsd_1sqrt"]
    assert (rows["status"] == "complete").all()
    # Equal compute: both schedules spend the same budget on the same number of samples.
    assert rows["samples"].nunique() == 1 and rows["flops"].nunique() == 1
    assert abs(rows["flops"].iloc[0] - 2e8) / 2e8 < 0.05  # the budget, to within one global batch
    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 1
    r = comparison.iloc[0]
    assert r["winner"] == ("wsd_1sqrt" if r["val_loss_wsd_1sqrt"] < r["val_loss_cosine"] else "cosine")
    assert (out / "loss_curves.png").stat().st_size > 0
    assert "wins" in capsys.readouterr().out
    # Rerun: the runs are complete and are not trained again.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    assert len(stamps) == 2
    assert cli(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_schedules_command_refuses_a_missing_dataset(tmp_path: Path, capsys):
    rc = cli(["schedules", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--dataset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compare_names_the_lower_loss_the_winner():
    rows = [{"size": "s0", "schedule": "wsd_1sqrt", "val_loss": 0.9, "params": 10, "samples": 8},
            {"size": "s0", "schedule": "cosine", "val_loss": 1.0, "params": 10, "samples": 8}]
    (c,) = compare(rows)
    assert c["winner"] == "wsd_1sqrt" and abs(c["relative"] - (-0.1)) < 1e-12
