"""Behaviour of the Swin emulator: shapes, gradients, the sphere's geometry, seeds, ladder, bad configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wxscale.errors import ConfigError
from wxscale.model import LADDER, SwinConfig, build_model, count_params, model_flops, resolve_config

torch.set_num_threads(1)


def tiny(**kw) -> SwinConfig:
    base = dict(embed_dim=16, depth=2, num_heads=2, window=(2, 4), patch=2)
    base.update(kw)
    return SwinConfig(**base)


def test_shapes_and_gradients_reach_every_parameter():
    # A padded grid (36/2 = 18 token rows, not a multiple of 4) with shifted windows and QK-norm.
    cfg = tiny(window=(4, 4), qk_norm=True)
    torch.manual_seed(0)
    net = build_model(cfg, (36, 40), 3, static=np.random.rand(1, 36, 40))
    x = torch.randn(2, 3, 36, 40)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_increment_option():
    x = torch.randn(1, 3, 16, 32)
    for increment in (True, False):
        net = build_model(tiny(predict_increment=increment), (16, 32), 3)
        torch.nn.init.zeros_(net.head.weight)
        with torch.no_grad():
            y = net(x)
        torch.testing.assert_close(y, x if increment else torch.zeros_like(x))


def test_longitude_roll_by_a_window_rolls_the_output():
    # Without longitude coordinates nothing in the network knows absolute longitude, so rolling the input by
    # one window of tokens (window 4 x patch 2 = 8 grid points) must roll the output exactly, shifted blocks
    # included (their windows wrap across the date line).
    torch.manual_seed(1)
    net = build_model(tiny(coords="lat", depth=4), (16, 64), 3).eval()
    x = torch.randn(2, 3, 16, 64)
    with torch.no_grad():
        y = net(x)
        y_rolled = net(torch.roll(x, 8, dims=-1))
    torch.testing.assert_close(y_rolled, torch.roll(y, 8, dims=-1), atol=1e-5, rtol=1e-5)
    # With longitude coordinates the network may depend on longitude: the same check no longer holds.
    torch.manual_seed(1)
    net = build_model(tiny(coords="latlon", depth=4), (16, 64), 3).eval()
    with torch.no_grad():
        assert not torch.allclose(net(torch.roll(x, 8, dims=-1)), torch.roll(net(x), 8, dims=-1), atol=1e-5)


def _influence(net, x, rows=None, cols=None) -> torch.Tensor:
    """|output change| per grid point after perturbing the input at the given rows/columns."""
    x2 = x.clone()
    x2[:, :, rows if rows is not None else slice(None), cols if cols is not None else slice(None)] += 10.0
    with torch.no_grad():
        return (net(x2) - net(x)).abs().sum(dim=(0, 1))


def test_shifted_windows_wrap_the_date_line():
    # 8 x 8 tokens, window 2 x 4 tokens: an unshifted block keeps token column 0 apart from column 7; the
    # shifted block's window wraps the date line and joins them.
    x = torch.randn(1, 3, 16, 16)
    torch.manual_seed(0)
    one_block = build_model(tiny(depth=1, rel_pos_bias=False), (16, 16), 3).eval()
    torch.manual_seed(0)
    two_blocks = build_model(tiny(depth=2, rel_pos_bias=False), (16, 16), 3).eval()
    assert _influence(one_block, x, cols=slice(0, 2))[:, 14:].max() == 0
    assert _influence(two_blocks, x, cols=slice(0, 2))[:, 14:].max() > 1e-6


def test_no_information_crosses_between_north_and_south_edges():
    # 8 token rows, window 4: after an unshifted and a shifted block, the northernmost token row can influence
    # rows up to 5 but never rows 6..7, although the shifted (rolled) grid puts them in one window.
    torch.manual_seed(0)
    net = build_model(tiny(window=(4, 4), depth=2), (16, 32), 3).eval()
    x = torch.randn(1, 3, 16, 32)
    infl = _influence(net, x, rows=slice(0, 2))
    assert infl[12:].max() == 0  # token rows 6..7
    assert infl[8:12].max() > 1e-6  # token rows 4..5: the perturbation did travel through the shifted window
    # Without the latitude mask of the shifted block, the wrapped window would leak north into south.
    net.blocks[1].mask = None
    assert _influence(net, x, rows=slice(0, 2))[12:].max() > 1e-6


def test_window_padding_is_masked_out(monkeypatch):
    # 6 x 8 token grid, window 4 x 4: two padded token rows. Whatever the padding holds, real outputs agree.
    torch.manual_seed(0)
    net = build_model(tiny(window=(4, 4), depth=2), (12, 16), 3).eval()
    x = torch.randn(2, 3, 12, 16)
    with torch.no_grad():
        y0 = net(x)
        orig = torch.nn.functional.pad
        monkeypatch.setattr(torch.nn.functional, "pad", lambda t, pad, *a, **k: orig(t, pad, value=1e3))
        y1 = net(x)
    torch.testing.assert_close(y0, y1)


def test_same_seed_same_weights():
    cfg = resolve_config("s2")
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(build_model(cfg, (32, 64), 3).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 16, 32)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = build_model(tiny(checkpoint=ckpt), (16, 32), 3)
        net(x).square().mean().backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_runs():
    net = build_model(tiny(), (16, 32), 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(2, 3, 16, 32))
    y.float().mean().backward()
    assert torch.isfinite(y.float()).all()


def test_ladder_params_increase_and_match_the_built_models():
    params = [model_flops(cfg, (32, 64), 3).params for cfg in LADDER.values()]
    assert all(b > a for a, b in zip(params, params[1:], strict=False))
    assert params[0] < 2e4 and params[-1] > 5e8
    ratios = np.array(params[1:]) / np.array(params[:-1])
    assert ratios.min() > 1.5 and ratios.max() < 2.5
    for name in list(LADDER)[:9]:  # building the big ones would only cost memory
        net = build_model(LADDER[name], (32, 64), 3)
        assert sum(p.numel() for p in net.parameters()) == count_params(LADDER[name], 3), name
    static = np.random.rand(2, 32, 64)
    net = build_model(LADDER["s1"], (32, 64), 5, static=static)
    assert sum(p.numel() for p in net.parameters()) == net.flops().params == count_params(LADDER["s1"], 5, 2)


def test_resolve_config_custom_points_and_overrides():
    cfg = resolve_config({"embed_dim": 96, "depth": 3, "window": [2, 4]})
    assert cfg.num_heads == 3 and cfg.window == (2, 4)
    cfg = resolve_config("s3", {"patch": 2, "embed_dim": 64})
    assert cfg.patch == 2 and cfg.embed_dim == 64 and cfg.num_heads == 2 and cfg.name == "custom"
    assert resolve_config(cfg) is cfg


@pytest.mark.parametrize("make, field", [
    (lambda: SwinConfig(embed_dim=30, depth=2, num_heads=4), "embed_dim"),
    (lambda: SwinConfig(embed_dim=32, depth=0, num_heads=4), "depth"),
    (lambda: SwinConfig(embed_dim=32, depth=2, num_heads=4, norm="batchnorm"), "norm"),
    (lambda: SwinConfig(embed_dim=32, depth=2, num_heads=4, window=(4,)), "window"),
    (lambda: build_model(tiny(window=(4, 16)), (16, 16), 3), "window"),
    (lambda: build_model(tiny(patch=3, pad_ok=False), (16, 32), 3), "patch"),
    (lambda: build_model(tiny(window=(3, 4), pad_ok=False), (16, 32), 3), "window"),
    (lambda: resolve_config("s99"), "s99"),
    (lambda: resolve_config("s1", {"widht": 3}), "widht"),
    (lambda: build_model(tiny(), (16, 32), 3, static=np.zeros((1, 8, 8))), "static"),
])
def test_bad_configs_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_wrong_input_shape_is_reported():
    net = build_model(tiny(), (16, 32), 3)
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 32\]"):
        net(torch.randn(1, 3, 16, 16))
