"""The trainer end to end on the tiny dataset: run dir contract, FLOP budget, trunk -> branch, cooldown variants,
NaN handling, bad input, precision, optimizer and hardware helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import read_metrics, tiny_config, write_config
from wxscale import cli
from wxscale.errors import ConfigError, WxscaleError
from wxscale.hardware import _gpu_entry, measure_matmul_peak, peak_flops
from wxscale.training.checkpoint import load_checkpoint
from wxscale.training.config import load_config
from wxscale.training.optim import build_optimizer, param_groups
from wxscale.training.schedules import cooldown_factor
from wxscale.training.trainer import BASE_COLUMNS, train


@pytest.fixture(scope="module")
def trunk(tiny_dataset, tmp_path_factory):
    """A constant-LR trunk of 16 steps with a checkpoint at 32 samples and validation every 16 samples."""
    run_dir = tmp_path_factory.mktemp("trunk") / "trunk"
    cfg = tiny_config(tiny_dataset, run={"target_samples": 64, "checkpoint_at_samples": [32]},
                      validation={"every_samples": 16})
    summary = train(cfg, run_dir=run_dir)
    return run_dir, summary


def test_run_dir_contract(trunk, tiny_dataset):
    run_dir, summary = trunk
    assert summary["status"] == "complete" and summary["samples"] == 64 and summary["step"] == 16
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    rows = read_metrics(run_dir)
    assert list(rows[0])[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert [c for c in rows[0] if c.startswith("val_rmse_")] == ["val_rmse_z", "val_rmse_u", "val_rmse_v"]
    assert [int(r["step"]) for r in rows] == list(range(1, 17))
    fps = summary["flops_per_sample"]
    from wxscale.model import model_flops, resolve_config

    swin = resolve_config("s0", {"patch": 2, "window": [2, 4]})
    assert fps == model_flops(swin, (8, 16), 3, rollout_steps=1).train_flops_per_sample
    for r in rows:  # FLOPs are samples x analytic FLOPs per sample, every step
        assert int(r["flops"]) == int(r["samples"]) * fps
        assert math.isfinite(float(r["train_loss"])) and float(r["lr"]) == 2e-3
    validated = [int(r["samples"]) for r in rows if r["val_loss"]]
    assert validated == [16, 32, 48, 64]
    assert summary["val_loss"] == float(rows[-1]["val_loss"])
    assert summary["val_rmse_z"] > 0 and summary["val_rmse_z"] == float(rows[-1]["val_rmse_z"])
    assert summary["mfu"] > 0 and summary["tflops_per_s"] > 0
    # physical units: RMSE of z is ~ its std times the normalised error, far from the normalised value
    assert summary["val_rmse_z"] != pytest.approx(math.sqrt(summary["val_loss"]), rel=0.1)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "samples_32" / "state.pt").is_file() and (ckpts / "final" / "state.pt").is_file()
    assert (ckpts / "latest").read_text().strip() == "final"
    state, meta = load_checkpoint(ckpts / "samples_32")
    assert meta["samples"] == 32 and meta["step"] == 8 and meta["channels"] == ["z", "u", "v"]
    assert {"model", "optimizer", "scheduler", "loader", "rng"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert state["loader"]["batch"] == 8  # the position after 8 batches


def test_config_yaml_reruns_the_same_run(trunk, tmp_path):
    run_dir, _ = trunk
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["betas"] == [0.9, 0.95] and saved["run"]["checkpoint_at_samples"] == [32]
    again = train(run_dir / "config.yaml", run_dir=tmp_path / "again", overrides=["run.target_samples=24"])
    assert again["status"] == "complete" and again["samples"] == 24
    a, b = read_metrics(run_dir), read_metrics(tmp_path / "again")
    assert [r["train_loss"] for r in b] == [r["train_loss"] for r in a[:6]]


def test_branch_repeats_trunk_until_cooldown(trunk, tiny_dataset, tmp_path):
    run_dir, _ = trunk
    branch_dir = tmp_path / "branch"
    cfg = tiny_config(tiny_dataset, schedule={"cooldown_samples": 16, "cooldown_shape": "1-sqrt", "lr_min": 1e-5},
                      run={"target_samples": 64, "init_from": str(run_dir / "checkpoints" / "samples_32")})
    summary = train(cfg, run_dir=branch_dir)
    assert summary["status"] == "complete" and summary["samples"] == 64 and summary["branch_from_samples"] == 32
    assert summary["cooldown_start_samples"] == 48
    t = {int(r["step"]): r for r in read_metrics(run_dir)}
    b = {int(r["step"]): r for r in read_metrics(branch_dir)}
    assert sorted(b) == list(range(9, 17))
    # Until the cooldown starts (48 samples = step 12) the branch is the trunk, bit for bit; the loss of step 13
    # is still computed with step 12's weights; from step 14 on the lower learning rate shows.
    for s in range(9, 14):
        assert b[s]["train_loss"] == t[s]["train_loss"], s
    for s in range(9, 13):
        assert float(b[s]["lr"]) == float(t[s]["lr"]) == 2e-3
    assert all(float(b[s]["lr"]) < 2e-3 for s in range(13, 17))
    assert float(b[16]["lr"]) == 1e-5  # ends exactly at lr_min on the target sample count
    p = (52 - 48) / 16
    assert float(b[13]["lr"]) == pytest.approx(1e-5 + (2e-3 - 1e-5) * cooldown_factor("1-sqrt", p))
    assert any(b[s]["train_loss"] != t[s]["train_loss"] for s in range(14, 17))
    assert int(b[16]["flops"]) == int(t[16]["flops"])  # same samples, same FLOPs
    meta = json.loads((branch_dir / "checkpoints" / "final" / "meta.json").read_text())
    assert meta["branch_from_samples"] == 32  # kept in checkpoints, so a resumed branch still knows


def test_rollout_and_amse_cooldown_branch(trunk, tmp_path):
    run_dir, trunk_summary = trunk
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["run"].update(target_samples=48, init_from=str(run_dir / "checkpoints" / "samples_32"),
                      checkpoint_at_samples=[])
    cfg["schedule"]["cooldown_samples"] = 16
    cfg["loss"].update(rollout_steps=2, amse_weight=0.5)
    cfg["validation"]["every_samples"] = None
    summary = train(cfg, run_dir=tmp_path / "rollout")
    assert summary["status"] == "complete" and summary["rollout_steps"] == 2
    fps1 = trunk_summary["flops_per_sample"]
    assert summary["flops_per_sample"] == 2 * fps1  # k rollout steps cost k times the FLOPs
    rows = read_metrics(tmp_path / "rollout")
    assert int(rows[0]["flops"]) == 32 * fps1 + 4 * 2 * fps1
    assert int(rows[-1]["flops"]) == 32 * fps1 + 16 * 2 * fps1
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)


def test_budget_stops_at_first_step_reaching_it(tiny_dataset, tmp_path):
    probe = train(tiny_config(tiny_dataset, run={"target_samples": 4}), run_dir=tmp_path / "probe")
    step_flops = 4 * probe["flops_per_sample"]
    cfg = tiny_config(tiny_dataset, run={"target_samples": None, "budget_flops": 2.5 * step_flops},
                      schedule={"kind": "cosine"})
    summary = train(cfg, run_dir=tmp_path / "budget")
    assert summary["status"] == "complete" and summary["step"] == 3
    assert summary["flops"] >= 2.5 * step_flops > summary["flops"] - step_flops
    rows = read_metrics(tmp_path / "budget")
    assert float(rows[-1]["lr"]) == 0.0  # the cosine schedule spans exactly the budget's steps
    with pytest.raises(WxscaleError, match="smaller than one step"):
        train(tiny_config(tiny_dataset, run={"budget_flops": 0.5 * step_flops}), run_dir=tmp_path / "small")


def test_cosine_schedule_in_metrics(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, schedule={"kind": "cosine", "warmup_samples": 8, "lr_min": 1e-4},
                      run={"target_samples": 24})
    train(cfg, run_dir=tmp_path / "cos")
    lrs = [float(r["lr"]) for r in read_metrics(tmp_path / "cos")]
    assert lrs[0] == pytest.approx(2e-3 * 4 / 8)  # warmup: lr at the samples after the step
    assert lrs[1] == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_nan_loss_fails_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, optim={"lr": 1e8, "grad_clip": 0.0},
                      run={"target_samples": 64, "checkpoint_every_steps": 1})
    summary = train(cfg, run_dir=tmp_path / "nan")
    assert summary["status"] == "failed" and "non-finite" in summary["reason"]
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["status"] == "failed"
    state, meta = load_checkpoint(tmp_path / "nan")  # the run dir's latest checkpoint
    assert meta["step"] == summary["step"] < 16
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert cli.main(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
                     "--run-dir", str(tmp_path / "nan2")]) == 1


def test_bf16_autocast_on_cpu(tiny_dataset, tmp_path):
    summary = train(tiny_config(tiny_dataset, precision={"dtype": "bf16"}, run={"target_samples": 8}),
                    run_dir=tmp_path / "bf16")
    assert summary["status"] == "complete" and summary["precision"] == "bf16"
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])


def test_cli_overrides_and_exit_codes(tiny_dataset, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(tiny_dataset))
    assert cli.main(["train", "--config", str(cfg_path), "--run-dir", str(tmp_path / "r"),
                     "run.target_samples=8", "optim.lr=1e-3"]) == 0
    saved = load_config(tmp_path / "r" / "config.yaml")
    assert saved.run.target_samples == 8 and saved.optim.lr == 1e-3 and saved.run.dir == str(tmp_path / "r")
    assert cli.main(["train", "--config", str(cfg_path), "--run-dir", str(tmp_path / "r2"), "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# bad input, each with a clear message


def test_bad_dataset(tiny_dataset, tmp_path):
    with pytest.raises(WxscaleError, match="does not exist"):
        train(tiny_config(tmp_path / "nope"), run_dir=tmp_path / "r1")
    broken = make_tiny_dataset(tmp_path / "broken")
    (broken / "valid" / "000.h5").unlink()
    with pytest.raises(WxscaleError, match="fails `wxscale check`"):
        train(tiny_config(broken), run_dir=tmp_path / "r2")
    assert not (tmp_path / "r2").exists()  # nothing was started


def test_bad_channels(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"data.channels=\['t', 'u', 'v'\].*has channels \['z', 'u', 'v'\]"):
        train(tiny_config(tiny_dataset, data={"channels": ["t", "u", "v"]}), run_dir=tmp_path / "r")
    other = make_tiny_dataset(tmp_path / "two", channels=("z", "u"))
    src = tmp_path / "trunk"
    train(tiny_config(tiny_dataset, run={"target_samples": 4}), run_dir=src)
    with pytest.raises(ConfigError, match="trained on channels"):
        train(tiny_config(other, run={"init_from": str(src / "checkpoints" / "final")}), run_dir=tmp_path / "b")


def test_batch_not_divisible_by_world(tiny_dataset, tmp_path, monkeypatch):
    for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="global_batch=4 is not divisible by the world size 3"):
        train(tiny_config(tiny_dataset), run_dir=tmp_path / "r")


def test_unwritable_or_used_run_dir(tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(WxscaleError, match="not writable"):
        train(tiny_config(tiny_dataset, run={"target_samples": 4}), run_dir=blocker / "run")
    train(tiny_config(tiny_dataset, run={"target_samples": 4}), run_dir=tmp_path / "used")
    with pytest.raises(WxscaleError, match="already holds a run.*--resume"):
        train(tiny_config(tiny_dataset, run={"target_samples": 4}), run_dir=tmp_path / "used")


def test_fp16_refused_on_cpu(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(tiny_config(tiny_dataset, precision={"dtype": "fp16"}, run={"device": "cpu"}),
              run_dir=tmp_path / "r")


def test_branch_must_end_after_and_cool_after_its_branch_point(trunk, tiny_dataset, tmp_path):
    run_dir, _ = trunk
    data = {"dataset": tiny_dataset}
    ck = str(run_dir / "checkpoints" / "samples_32")
    with pytest.raises(ConfigError, match="before the branch point 32"):
        train(tiny_config(data["dataset"], schedule={"cooldown_samples": 48},
                          run={"target_samples": 64, "init_from": ck}), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="already at 32 samples"):
        train(tiny_config(data["dataset"], run={"target_samples": 32, "init_from": ck}), run_dir=tmp_path / "b")
    with pytest.raises(WxscaleError, match="no checkpoint there"):
        train(tiny_config(data["dataset"], run={"init_from": str(tmp_path)}), run_dir=tmp_path / "c")


# --------------------------------------------------------------------------------------------------------------
# optimizer and hardware helpers


def test_param_groups_and_optimizer_choice():
    from wxscale.model import build_model, resolve_config

    net = build_model(resolve_config("s0", {"patch": 2, "window": [2, 4]}), grid=(8, 16), in_channels=3)
    decay, no_decay = param_groups(net, 0.1)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("bias") for n in skipped) and any("norm" in n for n in skipped)
    assert any("rel_bias" in n for n in skipped)
    assert len(decayed) + len(skipped) == len(list(net.parameters()))

    class Cfg:
        lr, betas, eps, weight_decay, impl = 1e-3, (0.9, 0.95), 1e-8, 0.1, "auto"

    opt, impl = build_optimizer(net, Cfg, torch.device("cpu"))
    assert impl in ("fused", "foreach") and isinstance(opt, torch.optim.AdamW)
    Cfg.impl = "apex"
    with pytest.raises(ConfigError, match="apex"):
        build_optimizer(net, Cfg, torch.device("cpu"))


def test_peak_flops():
    a = measure_matmul_peak(torch.float32, "cpu")
    assert a > 1e6 and measure_matmul_peak("fp32", "cpu") == a  # cached per process
    peak, source = peak_flops("cpu", "fp32")
    assert peak == a and "measured" in source
    assert _gpu_entry("NVIDIA H100 80GB HBM3")["bf16"] == 989e12
    assert _gpu_entry("NVIDIA H100 PCIe")["bf16"] == 756e12
    assert _gpu_entry("NVIDIA GH200 480GB")["fp32"] == 67e12
    assert _gpu_entry("NVIDIA A100-SXM4-80GB")["tf32"] == 156e12
    assert _gpu_entry("Tesla T4") is None


def test_examples_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "bench" / "configs").glob("tiny_*.yaml")):
        cfg = load_config(path)
        assert cfg.data.dataset

