"""The package layout: one installed name, and data flowing one way through the stages.

The repository's folders map into one import package (pyproject.toml): bench/ is ``wxscale``, model/ is
``wxscale.model``, data_prep/ is ``wxscale.data_prep``. These tests build the wheel, install it outside the checkout
and import it, and read every module's imports to check the layering that ``wxscale/__init__.py`` documents.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"bench": "wxscale", "model": "wxscale.model", "data_prep": "wxscale.data_prep"}

# Layers, earliest first. A module may import its own layer or an earlier one, never a later one.
# wxscale.cli counts as a foundation: the dispatcher imports its commands by name only when one is run, so a stage
# may run another command through it, as a user would, without importing that command's stage.
FOUNDATIONS = {"wxscale", "wxscale.cli", "wxscale.errors", "wxscale.files", "wxscale.args", "wxscale.provenance",
               "wxscale.hardware", "wxscale.metrics", "wxscale.submit", "wxscale.launch"}
STAGES = ["wxscale.data_prep", "wxscale.model", "wxscale.training", "wxscale.evaluation", "wxscale.study",
          "wxscale.perf"]
TOP = {"wxscale.demo", "wxscale.report"}


def _module_files() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _layer(module: str) -> tuple[int, str]:
    """(rank, name) of a module's layer; data_prep and model share a rank but may not import each other."""
    if module in FOUNDATIONS:
        return 0, "foundation"
    for rank, stage in enumerate(STAGES, start=1):
        if module == stage or module.startswith(stage + "."):
            return (1 if stage in ("wxscale.data_prep", "wxscale.model") else rank), stage
    if module in TOP:
        return len(STAGES) + 1, "top"
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layout.py and the package docstring")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_module_imports_as_wxscale_only():
    for path in _module_files().values():
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FOLDERS, f"{path.relative_to(REPO)} imports {name!r}: import it as wxscale.*"


def test_no_stage_imports_a_later_one():
    modules = _module_files()
    problems = []
    for module, path in modules.items():
        rank, stage = _layer(module)
        for name in _imports(path):
            if name not in modules or name == module:
                continue
            their_rank, their_stage = _layer(name)
            same_rank_other_stage = their_rank == rank and their_stage != stage and rank == 1
            if their_rank > rank or same_rank_other_stage:
                problems.append(f"{module} ({stage}) imports {name} ({their_stage})")
    assert not problems, "imports against the data flow:\n" + "\n".join(problems)


def test_the_model_knows_nothing_of_data_prep_or_training():
    for module, path in _module_files().items():
        if module.startswith("wxscale.model"):
            for name in _imports(path):
                assert not name.startswith(("wxscale.data_prep", "wxscale.training", "wxscale.study")), (
                    f"{module} imports {name}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No matching distribution" in proc.stderr:
        pytest.skip("setuptools for the build could not be fetched (no package index reachable)")
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("wxscale-*.whl")
    return whl


def test_the_wheel_holds_one_top_level_name(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wxscale"}
    assert "wxscale/configs/sweep_base.yaml" in names  # package data travels
    for sub in ("model/swin.py", "data_prep/prep.py", "training/trainer.py", "study/fit.py", "cli.py"):
        assert f"wxscale/{sub}" in names
    assert not any(n.startswith("tests/") for n in names)


def test_a_regular_install_imports_as_wxscale_only(wheel: Path, tmp_path: Path):
    """A fresh venv with the wheel installed (not editable), run from outside the checkout."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(target)
    run = lambda code: subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=120)
    ok = run("import wxscale, sys; print(wxscale.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(str(target))
    for name in ("model", "bench", "data_prep"):
        proc = run(f"import {name}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (name, proc.stdout, proc.stderr)
