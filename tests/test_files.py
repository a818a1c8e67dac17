"""wxscale.files: the atomic writers every stage uses."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from wxscale.errors import WxscaleError
from wxscale.files import (
    RESUME_DIR,
    atomic_file,
    atomic_output_dir,
    partial_leftovers,
    resumable_partial,
    write_csv,
    write_json_atomic,
)


def test_atomic_file_keeps_the_old_content_on_error(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left


def test_write_csv_takes_rows_or_a_dataframe(tmp_path: Path):
    write_csv(tmp_path / "r.csv", [{"a": 1, "b": 0.1234567891}, {"a": None, "b": float("nan")}], ["a", "b"])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", "1,0.123457", ","]
    write_csv(tmp_path / "d.csv", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "d.csv").read_text().splitlines() == ["x", "1", "2"]
    write_json_atomic(tmp_path / "j.json", {"k": 1})
    assert (tmp_path / "j.json").read_text() == '{\n "k": 1\n}\n'


def test_atomic_output_dir_replaces_only_when_complete(tmp_path: Path):
    out = tmp_path / "d"
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("1")
    assert (out / "f").read_text() == "1"
    with pytest.raises(WxscaleError, match="--overwrite"), atomic_output_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "f").write_text("2")
        raise RuntimeError("failed")
    assert (out / "f").read_text() == "1" and not partial_leftovers(out)


def test_leftovers_are_only_those_of_the_same_output(tmp_path: Path):
    mine = tmp_path / ".d.ab_c1234.partial"
    theirs = tmp_path / ".d.x.ab_c1234.partial"  # a leftover of a dataset named "d.x"
    mine.mkdir()
    theirs.mkdir()
    assert partial_leftovers(tmp_path / "d") == [mine]
    with atomic_output_dir(tmp_path / "d"):
        pass
    assert not mine.exists() and theirs.exists()


def test_a_kill_during_the_swap_is_repaired(tmp_path: Path):
    out, old = tmp_path / "d", tmp_path / ".d.old"
    old.mkdir()
    (old / "f").write_text("previous")  # killed after out -> .d.old, before the new dir landed
    with pytest.raises(WxscaleError, match="exists"), atomic_output_dir(out):
        pass
    assert (out / "f").read_text() == "previous" and not old.exists()
    old.mkdir()  # killed after the new dir landed, before .d.old was removed
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new" and not old.exists()


def test_a_resume_key_gets_the_killed_write_back(tmp_path: Path):
    """A temporary dir left by a kill (simulated: its block never ended) is handed back to a write with the same
    key, with its files; the resume folder is dropped before the rename; other keys' leftovers are removed."""
    out = tmp_path / "d"
    killed = atomic_output_dir(out, resume_key="plan-a")
    tmp = killed.__enter__()  # entered, never exited: what a SIGKILL leaves
    (tmp / "done.h5").write_text("kept")
    assert (tmp / RESUME_DIR / "key").read_text() == "plan-a"
    assert resumable_partial(out, "plan-a") == tmp and resumable_partial(out, "plan-b") is None
    other = tmp_path / ".d.abcd1234.partial"  # a leftover without a key (or with another): stale
    other.mkdir()

    with atomic_output_dir(out, resume_key="plan-a") as again:
        assert again == tmp and (again / "done.h5").read_text() == "kept"
        assert not other.exists()
        (again / "new.h5").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["done.h5", "new.h5"]  # no .resume
    assert not partial_leftovers(out)
    killed = atomic_output_dir(tmp_path / "e", resume_key="plan-a").__enter__()
    with atomic_output_dir(tmp_path / "e", resume_key="plan-b") as fresh:  # another plan starts over
        assert fresh != killed and not killed.exists()


def test_a_resumable_write_that_fails_still_leaves_nothing(tmp_path: Path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError), atomic_output_dir(out, resume_key="k") as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError("failed")
    assert not out.exists() and not partial_leftovers(out)
    with atomic_output_dir(out) as tmp:  # no key: a leftover with one is stale like any other
        assert not (tmp / RESUME_DIR).exists()
