"""submit/ templates and `wxscale submit`: every template renders, passes `bash -n` and shellcheck, and the
renderer names unknown, missing and malformed parameters. Submission itself is faked here (a stub sbatch on
PATH); tests/test_slurm.py submits to a real local Slurm."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wxscale import submit
from wxscale.errors import WxscaleError

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "submit"
TEMPLATES = ["one_node", "multi_node", "sweep", "cpu"]

# Values for every required parameter any template has (each template takes the ones it declares).
REQUIRED = {"config": "cfg/train.yaml", "run_dir": "runs/a", "data_dir": "/data/era5",
            "sweep_dir": "sweeps/s1", "run_id": "b0001"}


def required_for(name: str) -> dict[str, str]:
    return {k: v for k, v in REQUIRED.items() if k in submit.template_params(name)}


def sbatch_options(text: str) -> list[str]:
    """The #SBATCH options sbatch would read: those before the first line that is not a comment or blank."""
    options = []
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            options.append(line.split(None, 1)[1])
        elif line.strip() and not line.startswith("#"):
            break
    return options


def test_every_template_is_found():
    assert set(TEMPLATES) <= set(submit.list_templates())


NETWORKS = ["slingshot", "infiniband", "ethernet", "none"]
CASES = [(name, net) for name in TEMPLATES if name != "cpu" for net in NETWORKS] + [("cpu", None)]


@pytest.mark.parametrize(("name", "network"), CASES)
def test_template_renders_and_is_valid_bash(name, network, tmp_path):
    params = required_for(name)
    if network is not None:
        params["network"] = network
    text = submit.render_template(name, params)
    assert text.startswith("#!/bin/bash\n")
    assert "{{" not in text and "wxscale:param" not in text
    script = tmp_path / f"{name}.sh"
    script.write_text(text)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck, or run .ci/setup_system.sh)")
    result = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["one_node", "multi_node", "sweep"])
def test_gpu_templates_launch_one_task_per_gpu_in_the_container(name):
    text = submit.render_template(name, {**required_for(name), "gpus_per_node": "8", "account": "proj42",
                                         "partition": "gpu", "image": "/images/wx.sif"})
    options = sbatch_options(text)
    assert "--ntasks-per-node=8" in options and "--gpus-per-node=8" in options
    assert "--account=proj42" in options and "--partition=gpu" in options
    unset = ("--constraint", "--qos", "--error")
    assert not any(o.startswith(unset) for o in options), "empty options are left out"
    assert "apptainer exec --nv --bind" in text
    assert "IMAGE=/images/wx.sif" in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in text
    assert "wxscale train --config" in text and "srun " in text


def test_network_defaults_are_overridable():
    text = submit.render_template("multi_node", {**required_for("multi_node"), "network": "slingshot"})
    assert 'export FI_PROVIDER="${FI_PROVIDER:-cxi}"' in text
    assert 'export NCCL_NET="${NCCL_NET:-AWS Libfabric}"' in text
    assert "WXSCALE_NETWORK=slingshot" in text
    ib = submit.render_template("multi_node", {**required_for("multi_node"), "network": "infiniband"})
    assert 'NCCL_IB_HCA="${NCCL_IB_HCA:-mlx5}"' in ib and "WXSCALE_NETWORK=infiniband" in ib


def test_network_block_exports_what_it_says(tmp_path):
    """Run the rendered network block in bash: defaults apply, and a value set beforehand wins."""
    text = submit.render_template("multi_node", {**required_for("multi_node"), "network": "slingshot"})
    block = text[text.index("WXSCALE_NETWORK="):text.index("esac") + 4]
    script = tmp_path / "net.sh"
    script.write_text(block + '\necho "$FI_PROVIDER|$NCCL_NET|$FI_CXI_RX_MATCH_MODE"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FI_", "NCCL_"))}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cxi|AWS Libfabric|hybrid"
    out = subprocess.run(["bash", str(script)], env={**env, "FI_CXI_RX_MATCH_MODE": "software"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cxi|AWS Libfabric|software"


def test_cpu_template_runs_the_given_executable_without_container():
    text = submit.render_template("cpu", {**required_for("cpu"), "wxscale": "/opt/venv/bin/wxscale",
                                          "ntasks": "2"})
    assert "apptainer" not in text and "--nv" not in text and "--gpus" not in text
    assert "--ntasks=2" in sbatch_options(text)
    assert "--mpi=pmi2" in text and "/opt/venv/bin/wxscale train --config" in text


def test_values_are_quoted_for_bash():
    text = submit.render_template("cpu", {**required_for("cpu"), "run_dir": "runs/it's a $HOME"})
    assert "RUN_DIR='runs/it'\"'\"'s a $HOME'" in text


def test_record_of_parameters_and_dependency_options():
    text = submit.render_template("sweep", required_for("sweep"))
    assert "# Rendered by 'wxscale submit' from sweep.sbatch with:" in text
    assert "#   run_id=b0001" in text
    options = sbatch_options(text)
    assert "--job-name=wxs-b0001" in options and "--kill-on-invalid-dep=yes" in options


def test_unknown_parameter_is_named_with_the_valid_ones():
    with pytest.raises(WxscaleError) as err:
        submit.render_template("one_node", {**required_for("one_node"), "gpus_per_nod": "4"})
    message = str(err.value)
    assert "unknown parameter(s) gpus_per_nod" in message and "gpus_per_node" in message


def test_missing_required_parameter_is_named():
    with pytest.raises(WxscaleError, match=r"missing required parameter\(s\) run_dir.*valid parameters"):
        submit.render_template("cpu", {"config": "c.yaml"})


def test_bad_choice_and_multiline_and_spaced_sbatch_values():
    base = required_for("multi_node")
    with pytest.raises(WxscaleError, match="network='omnipath' is not one of slingshot"):
        submit.render_template("multi_node", {**base, "network": "omnipath"})
    with pytest.raises(WxscaleError, match="must be one line"):
        submit.render_template("multi_node", {**base, "extra_args": "a\nrm -rf /"})
    with pytest.raises(WxscaleError, match="job_name may not hold whitespace"):
        submit.render_template("multi_node", {**base, "job_name": "my job"})


def test_unknown_template_lists_the_templates():
    with pytest.raises(WxscaleError, match="template 'two_node' not found.*one_node"):
        submit.render_template("two_node", {})


def test_template_from_a_path_with_includes_and_overrides(tmp_path):
    (tmp_path / "partials").mkdir()
    (tmp_path / "partials" / "body.sh").write_text("# wxscale:param greeting=hello  what to say\n"
                                                   "echo {{greeting|q}} {{who}}\n")
    template = tmp_path / "t.sbatch"
    template.write_text("#!/bin/bash\n# wxscale:param who=<required>  whom\n"
                        "# wxscale:param greeting=hi\n#SBATCH --job-name={{who}}\n{{> body.sh}}\n")
    params = submit.template_params(template)
    assert params["greeting"].default == "hi" and params["greeting"].help == "what to say"
    text = submit.render_template(template, {"who": "world"})
    assert text.splitlines()[-1] == "echo hi world"
    undeclared = tmp_path / "u.sbatch"
    undeclared.write_text("#!/bin/bash\necho {{nobody}}\n")
    with pytest.raises(WxscaleError, match="undeclared parameter.*nobody"):
        submit.render_template(undeclared, {})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wxscale.cli", "submit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_dry_run_prints_the_script_and_saves_it(tmp_path):
    saved = tmp_path / "job.sh"
    result = _cli("cpu", "config=c.yaml", "--set", "run_dir=r", "--dry-run", "--save", str(saved))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash") and "--ntasks=2" in result.stdout
    assert saved.read_text() == result.stdout
    bad = _cli("cpu", "config=c.yaml", "--dry-run")
    assert bad.returncode == 2 and "missing required parameter(s) run_dir" in bad.stderr
    listing = _cli("cpu", "--list")
    assert listing.returncode == 0 and "run_dir" in listing.stdout and "(required)" in listing.stdout


def _fake_sbatch(tmp_path: Path, reply: str, code: int = 0) -> dict[str, str]:
    """A stub sbatch that records its arguments and stdin and answers like `sbatch --parsable`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "sbatch"
    stub.write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/args\ncat > {tmp_path}/script\n'
                    f'echo "{reply}" >&{2 if code else 1}\nexit {code}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_submit_script_passes_dependency_and_returns_job_id(tmp_path, monkeypatch):
    env = _fake_sbatch(tmp_path, "4242;cluster")
    monkeypatch.setenv("PATH", env["PATH"])
    text = submit.render_template("cpu", required_for("cpu"))
    job = submit.submit_script(text, ["--hold"], dependency=submit.afterok(17, "18"))
    assert job == "4242"
    assert (tmp_path / "args").read_text().split() == ["--parsable", "--hold", "--dependency=afterok:17:18"]
    assert (tmp_path / "script").read_text() == text


def test_cli_submits_and_prints_the_job_id(tmp_path):
    env = _fake_sbatch(tmp_path, "99")
    result = _cli("cpu", "config=c.yaml", "run_dir=r", "--dependency", "afterok:98", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "99"
    assert "--dependency=afterok:98" in (tmp_path / "args").read_text()


def test_sbatch_refusal_and_absence_are_clear_errors(tmp_path, monkeypatch):
    env = _fake_sbatch(tmp_path, "sbatch: error: Invalid account", code=1)
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(WxscaleError, match="sbatch refused the job.*Invalid account"):
        submit.submit_script("#!/bin/bash\n", [])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(WxscaleError, match="sbatch not found on PATH"):
        submit.submit_script("#!/bin/bash\n", [])


def test_extra_args_render_as_quoted_arguments():
    text = submit.render_template("cpu", {**required_for("cpu"), "extra_args": "--resume 'run.seed=3' a;b $(x)"})
    assert text.rstrip().endswith("--run-dir \"$RUN_DIR\" --resume run.seed=3 'a;b' '$(x)'")
    empty = submit.render_template("cpu", required_for("cpu"))
    assert empty.rstrip().endswith('--run-dir "$RUN_DIR"')
