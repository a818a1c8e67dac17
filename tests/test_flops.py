"""The analytic FLOP counts of model.flops against torch.utils.flop_counter, and the `model list` command."""

from __future__ import annotations

import csv
import io
from contextlib import redirect_stdout

import pytest
import torch

from wxscale.model import LADDER, build_model, model_flops, resolve_config, torch_flop_counter
from wxscale.model.flops import MATMUL_KEYS, OTHER_KEYS

torch.set_num_threads(1)

# (size, overrides, grid, channels, rollout steps): shifted windows everywhere (depth >= 2); padded patch
# grids (33x62 with patch 4) and padded token grids (window 3x5); rollouts; both SDPA paths (the math path
# when the position bias is learned, CPU flash without it); QK-norm and RMSNorm.
CASES = [
    ("s0", {}, (32, 64), 3, 1),
    ("s3", {"patch": 2}, (32, 64), 3, 2),
    ("s2", {"window": [3, 5]}, (30, 60), 2, 1),
    ("s2", {"rel_pos_bias": False}, (32, 64), 3, 1),
    ("s2", {"rel_pos_bias": False, "window": [3, 3], "qk_norm": True}, (33, 62), 3, 3),
    ("s4", {"norm": "rmsnorm", "depth": 3}, (32, 64), 4, 2),
    ("s1", {"patch": 3, "window": [2, 4], "predict_increment": False}, (31, 65), 1, 1),
]


@pytest.mark.parametrize("size, overrides, grid, channels, rollout", CASES)
def test_formula_matches_torch_flop_counter(size, overrides, grid, channels, rollout):
    _check_against_counter(resolve_config(size, overrides), grid, channels, rollout)


# Shapes the ladder fits to odd regional grids (model.config.fit_window_patch): patch 1 with one 13x17 window,
# patch 2 with one 9x17 window, patch 1 with 17x25 windows on a padded 34x50 token grid; regional masks.
FITTED = [("s1", (13, 17), 2, 1), ("s2", (17, 33), 1, 2), ("s0", (33, 49), 3, 1)]


@pytest.mark.parametrize("size, grid, channels, rollout", FITTED)
def test_formula_matches_torch_flop_counter_on_fitted_shapes(size, grid, channels, rollout):
    cfg = resolve_config(size, grid=grid)
    assert (cfg.patch, cfg.window) != (4, (4, 8))  # the ladder's own shape does not fit these grids
    _check_against_counter(cfg, grid, channels, rollout, periodic_lon=False)


def _check_against_counter(cfg, grid, channels, rollout, periodic_lon=True):
    torch.manual_seed(0)
    net = build_model(cfg, grid, channels, periodic_lon=periodic_lon)
    f = model_flops(cfg, grid, channels, rollout_steps=rollout, periodic_lon=periodic_lon)
    assert sum(p.numel() for p in net.parameters()) == f.params
    batch = 2
    x = torch.randn(batch, channels, *grid, requires_grad=True)  # so the first layer's input gradient exists
    with torch_flop_counter() as fc:
        net(x)
    assert fc.get_total_flops() == pytest.approx(batch * f.forward_matmul_flops, rel=0.01)
    with torch_flop_counter() as fc:
        y = x
        for _ in range(rollout):
            y = net(y)
        y.square().mean().backward()
    assert fc.get_total_flops() == pytest.approx(batch * f.train_flops_per_sample, rel=0.01)


def test_first_layer_input_gradient_is_the_only_difference():
    # When the input needs no gradient, autograd skips exactly one matmul: the patch embedding's input
    # gradient.
    cfg = resolve_config("s1")
    net = build_model(cfg, (32, 64), 3)
    f = model_flops(cfg, (32, 64), 3)
    with torch_flop_counter() as fc:
        net(torch.randn(1, 3, 32, 64)).sum().backward()
    assert f.train_flops_per_sample - fc.get_total_flops() == f.breakdown["patch_embed"]


def test_torch_alone_misses_cpu_flash_attention():
    # Documents why torch_flop_counter exists: stock FlopCounterMode counts 0 for CPU flash attention.
    from torch.utils.flop_counter import FlopCounterMode

    cfg = resolve_config("s1", {"rel_pos_bias": False})
    net = build_model(cfg, (32, 64), 3)
    f = model_flops(cfg, (32, 64), 3)
    with FlopCounterMode(display=False) as fc:
        net(torch.randn(1, 3, 32, 64))
    attn = f.breakdown["attn_scores"] + f.breakdown["attn_values"]
    assert fc.get_total_flops() == f.forward_matmul_flops - attn


def test_breakdown_adds_up_and_rollout_scales_training():
    cfg = resolve_config("s5")
    f1 = model_flops(cfg, (32, 64), 3)
    f3 = model_flops(cfg, (32, 64), 3, rollout_steps=3)
    assert sum(f1.breakdown[k] for k in MATMUL_KEYS) == f1.forward_matmul_flops
    assert sum(f1.breakdown[k] for k in OTHER_KEYS) == f1.forward_other_flops
    assert f1.forward_flops == f1.forward_matmul_flops + f1.forward_other_flops
    assert f3.train_flops_per_sample == 3 * f1.train_flops_per_sample == 9 * f1.forward_matmul_flops
    assert sum(f1.param_breakdown.values()) == f1.params
    # Large models are dominated by the 2 N FLOPs per token of their dense layers (Kaplan et al. 2020).
    big = model_flops(resolve_config("s14"), (32, 64), 3)
    assert big.forward_matmul_flops / (2 * big.params * big.tokens) == pytest.approx(1.0, abs=0.05)


def test_model_list_command_prints_every_size():
    import argparse

    from wxscale.model.cli import add_arguments, run
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    with redirect_stdout(out):
        assert run(parser.parse_args(["--grid", "32x64", "--channels", "3", "--csv", "--rollout", "2"])) == 0
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["size"] for r in rows] == list(LADDER)
    f = model_flops(LADDER["s3"], (32, 64), 3, rollout_steps=2)
    i3 = list(LADDER).index("s3")
    assert int(rows[i3]["train_flops_per_sample"]) == f.train_flops_per_sample
    assert {r["window"] for r in rows} == {"4x8"} and {float(r["pad_fraction"]) for r in rows} == {0.0}
    # A regional grid the ladder's window does not fit: the fitted shape, its FLOPs and its padding are listed.
    out = io.StringIO()
    with redirect_stdout(out):
        assert run(parser.parse_args(["--grid", "17x33", "--channels", "1", "--csv"])) == 0
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    cfg = resolve_config("s3", grid=(17, 33))
    fitted = (f"{cfg.window[0]}x{cfg.window[1]}", cfg.patch)
    assert (rows[i3]["window"], int(rows[i3]["patch"])) == ("9x17", 2) == fitted
    assert int(rows[i3]["train_flops_per_sample"]) == model_flops(cfg, (17, 33), 1).train_flops_per_sample
    assert float(rows[i3]["pad_fraction"]) == pytest.approx(1 - 17 * 33 / (18 * 34), abs=1e-4)
    out = io.StringIO()
    with redirect_stdout(out):  # the table shows the padding in per cent
        assert run(parser.parse_args(["--grid", "17x33", "--channels", "1"])) == 0
    assert "pad %" in out.getvalue() and " 8.3" in out.getvalue()
    from wxscale.errors import WxscaleError
    with pytest.raises(WxscaleError, match="--grid"):
        run(parser.parse_args(["--grid", "32by64"]))
