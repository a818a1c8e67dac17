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


# ------------------------------------------------------------------------------------------------------------
# Regional grids: no information crosses the east-west edge


@pytest.mark.parametrize("n_lon", [64, 66])  # 66: a token grid (33 columns) padded to the window (36)
def test_regional_grid_keeps_east_and_west_edges_apart(n_lon):
    # 8 x 32(33) tokens, window 2 x 4, four blocks: from a west-edge perturbation the interior path reaches token
    # column 9 at most, so the east quarter can only hear of it through the shifted windows' longitude wrap.
    x = torch.randn(1, 3, 16, n_lon)
    east, west = slice(n_lon - 16, n_lon), slice(0, 16)
    for periodic in (False, True):
        torch.manual_seed(0)
        net = build_model(tiny(depth=4), (16, n_lon), 3, periodic_lon=periodic).eval()
        from_west = _influence(net, x, cols=slice(0, 2))[:, east].max()
        from_east = _influence(net, x, cols=slice(n_lon - 2, n_lon))[:, west].max()
        if periodic:  # a global grid still wraps the date line
            assert from_west > 1e-6 and from_east > 1e-6
        else:
            assert from_west == 0 and from_east == 0


def test_regional_mask_without_position_bias_and_its_flops():
    # Without a position bias or padding, only the longitude wrap needs a mask on a window one row high.
    cfg = tiny(window=(1, 4), depth=2, rel_pos_bias=False)
    glob = build_model(cfg, (16, 32), 3)
    reg = build_model(cfg, (16, 32), 3, periodic_lon=False)
    assert glob.blocks[1].mask is None and reg.blocks[1].mask is not None and reg.blocks[0].mask is None
    extra = reg.flops().forward_other_flops - glob.flops().forward_other_flops
    assert extra == reg.layout.n_windows * cfg.num_heads * 4 * 4  # one mask add per score of the shifted block
    with pytest.raises(ConfigError, match="periodic_lon"):
        build_model(cfg, (16, 32), 3, periodic_lon="no")


# ------------------------------------------------------------------------------------------------------------
# The ladder's window and patch fitted to the grid (issue 18)

from wxscale.model.config import MAX_PADDING, fit_window_patch, grid_layout, min_grid  # noqa: E402

ODD_GRIDS = [(13, 17), (17, 33), (33, 49), (181, 360), (33, 36), (20, 28), (61, 120), (121, 240), (9, 17)]


def _grids_8x16_to_721x1440():
    """Every latitude size with a spread of longitude sizes, every longitude size with a spread of latitude
    sizes, the corners, and the odd sizes of real files."""
    lats, lons = range(8, 722), range(16, 1441)
    out = {(h, w) for h in lats for w in (16, 17, 33, 49, 64, 100, 360, 1439, 1440)}
    out |= {(h, w) for w in lons for h in (8, 9, 13, 17, 33, 181, 720, 721)}
    out |= {(h, w) for h in range(8, 722, 23) for w in range(16, 1441, 37)}
    return sorted(out | set(ODD_GRIDS))


def test_every_grid_from_8x16_to_721x1440_gets_a_small_padding_fit():
    extent = np.array([16, 32])  # the ladder's window in grid points: 4x8 tokens at patch 4
    for grid in _grids_8x16_to_721x1440():
        patch, window = fit_window_patch(grid)
        lay = grid_layout(SwinConfig(embed_dim=16, depth=2, num_heads=1, patch=patch, window=window), grid)
        assert lay.padding_fraction <= MAX_PADDING, (grid, patch, window)
        assert patch in (4, 2, 1)
        # The window keeps its extent in grid points within a factor 2, or is the whole axis of a small grid.
        span = np.array(window) * patch
        whole = np.array(window) == np.array(lay.tokens)
        assert np.all(((span >= extent / 2) & (span <= 2 * extent)) | whole), (grid, patch, window)
    assert fit_window_patch((13, 17)) == fit_window_patch((13, 17))  # deterministic (no state, no randomness)


def test_fit_keeps_the_ladder_shape_where_it_suits_and_changes_it_where_not():
    for grid in [(32, 64), (64, 128), (720, 1440), (721, 1440), (16, 32)]:
        assert fit_window_patch(grid) == (4, (4, 8)), grid
    # The cases: the default 4x8 window does not fit 13x17 at patch 4 (4x5 tokens).
    assert fit_window_patch((13, 17)) == (1, (13, 17))
    assert fit_window_patch((17, 33)) == (2, (9, 17))
    assert fit_window_patch((33, 49)) == (1, (17, 25))
    assert fit_window_patch((181, 360)) == (4, (4, 9))  # 4x8 would pad 11.6 %; 9 divides 90 token columns


def test_every_ladder_size_fits_the_odd_grids_and_builds():
    from wxscale.model.config import LADDER as ladder

    for grid in ODD_GRIDS:
        shapes = {(resolve_config(n, grid=grid).patch, resolve_config(n, grid=grid).window) for n in ladder}
        assert shapes == {fit_window_patch(grid)}, grid  # one shape for the whole ladder on a grid
        for name in ladder:
            cfg = resolve_config(name, grid=grid)
            assert model_flops(cfg, grid, 2).params == count_params(cfg, 2)
    for grid, name in [((13, 17), "s1"), ((17, 33), "s0"), ((33, 49), "s0")]:  # build only a few
        cfg = resolve_config(name, grid=grid)
        net = build_model(cfg, grid, 2, periodic_lon=False)
        assert sum(p.numel() for p in net.parameters()) == model_flops(cfg, grid, 2).params
        with torch.no_grad():
            assert net(torch.randn(1, 2, *grid)).shape == (1, 2, *grid)


def test_small_grids_are_refused_naming_the_smallest_supported():
    assert min_grid() == (8, 16)
    for grid in [(7, 16), (8, 15), (4, 4)]:
        with pytest.raises(ConfigError, match="8x16"):
            resolve_config("s0", grid=grid)
    # Given both patch and window, a user may still go below it.
    cfg = resolve_config("s0", {"patch": 1, "window": [2, 2]}, grid=(4, 4))
    assert (cfg.patch, cfg.window) == (1, (2, 2))


def test_overrides_fix_the_window_or_the_patch():
    from wxscale.model.config import overrides_for_grid

    # A fixed window: the patch is fitted to it. Window 2x4 on 13x17 pads 57 % at patch 4, 42 % at 2 and 21 %
    # at 1: no patch gets under MAX_PADDING, so the least padding wins.
    cfg = resolve_config("s2", {"window": [2, 4]}, grid=(13, 17))
    assert (cfg.window, cfg.patch) == ((2, 4), 1)
    # A fixed patch: the window is fitted at that patch, aiming at the ladder's 4x8 tokens.
    cfg = resolve_config("s2", {"patch": 2}, grid=(32, 64))
    assert (cfg.patch, cfg.window) == (2, (4, 8))  # the ladder's window fits: kept
    cfg = resolve_config("s2", {"patch": 2}, grid=(13, 17))
    assert cfg.patch == 2 and cfg.window == (7, 9)  # 7x9 tokens: one window, no padding beyond the patch's
    assert resolve_config("s2", {"patch": 3, "window": [2, 2]}, grid=(13, 17)).window == (2, 2)
    # What a run records: only what differs from the ladder, and it rebuilds the same shape without the grid.
    rec = overrides_for_grid("s3", {"qk_norm": True}, (17, 33))
    assert rec == {"qk_norm": True, "patch": 2, "window": [9, 17]}
    assert resolve_config("s3", rec) == resolve_config("s3", {"qk_norm": True}, grid=(17, 33))
    assert overrides_for_grid("s3", {}, (32, 64)) == {}
