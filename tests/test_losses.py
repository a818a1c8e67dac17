"""Losses: latitude-weighted MSE, AMSE (Subich et al. 2025) along longitude, rollouts."""

from __future__ import annotations

import pytest
import torch

from wxscale.training.losses import amse, mse, rollout_loss, step_loss


def _w(h: int) -> torch.Tensor:
    w = torch.linspace(0.2, 1.0, h)
    return w / w.mean()


def test_mse_weights():
    torch.manual_seed(0)
    p, t = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    w = _w(4)
    manual = ((p - t) ** 2 * w[:, None]).mean()
    assert mse(p, t, w) == pytest.approx(float(manual), rel=1e-6)
    assert mse(p, t) == pytest.approx(float(((p - t) ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize("n_lon", [16, 15])
def test_amse_properties(n_lon):
    torch.manual_seed(1)
    t = torch.randn(2, 3, 5, n_lon, dtype=torch.float64)
    w = _w(5)
    # a perfect forecast costs nothing; a damped one (a positive multiple) costs exactly its MSE (Parseval)
    assert amse(t, t, w) == pytest.approx(0.0, abs=1e-9)
    assert amse(0.5 * t, t, w) == pytest.approx(float(mse(0.5 * t, t, w)), rel=1e-5)
    # an uncorrelated forecast costs more than its MSE (no double-penalty discount for blurring)
    p = torch.randn_like(t)
    assert amse(p, t, w) > mse(p, t, w)
    # a forecast shifted in longitude has the right spectrum but the wrong phase: AMSE is the MSE's upper side
    shifted = torch.roll(t, 3, dims=-1)
    assert amse(shifted, t, w) >= mse(shifted, t, w) - 1e-6


def test_amse_prefers_sharp_over_blurred():
    """The point of AMSE: a sharp forecast with small phase errors beats a blurred (smoothed) one."""
    torch.manual_seed(2)
    t = torch.randn(4, 1, 6, 32)
    sharp = torch.roll(t, 1, dims=-1)
    blurred = (t + torch.roll(t, 1, -1) + torch.roll(t, -1, -1)) / 3
    assert amse(sharp, t) / mse(sharp, t) < amse(blurred, t) / mse(blurred, t)


def test_amse_safe_at_zero_spectra():
    zero = torch.zeros(2, 2, 4, 8, requires_grad=True)
    loss = amse(zero, torch.zeros(2, 2, 4, 8))
    loss.backward()
    assert torch.isfinite(loss) and loss == 0 and torch.isfinite(zero.grad).all()
    # zonally constant fields: every k > 0 spectrum is zero on both sides
    p = torch.ones(2, 2, 4, 8, requires_grad=True)
    loss = amse(p, 2 * torch.ones(2, 2, 4, 8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all() and loss.item() == pytest.approx(1.0, rel=1e-4)
    q = torch.zeros(2, 2, 4, 8, requires_grad=True)
    amse(q, torch.randn(2, 2, 4, 8)).backward()
    assert torch.isfinite(q.grad).all()


def test_mix_and_rollout():
    torch.manual_seed(3)
    p, t = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    w = _w(4)
    assert step_loss(w, 0.0)(p, t) == mse(p, t, w)
    assert step_loss(w, 1.0)(p, t) == amse(p, t, w)
    assert step_loss(w, 0.25)(p, t) == pytest.approx(float(0.75 * mse(p, t, w) + 0.25 * amse(p, t, w)))

    scale = torch.tensor(0.9, requires_grad=True)
    model = lambda x: scale * x  # noqa: E731
    x = torch.randn(2, 2, 4, 8)
    y = torch.stack([0.5 * x, 0.25 * x], dim=1)
    loss = rollout_loss(model, x, y, step_loss(None, 0.0))
    expected = (mse(0.9 * x, 0.5 * x) + mse(0.81 * x, 0.25 * x)) / 2
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)
    loss.backward()  # the gradient flows through both steps
    s = 0.9
    g = ((2 * (s - 0.5) * x * x).mean() + (2 * (s * s - 0.25) * 2 * s * x * x).mean()) / 2
    assert scale.grad == pytest.approx(float(g), rel=1e-5)


@pytest.mark.parametrize("n_lon", [17, 16])
def test_regional_amse_keeps_its_properties_with_the_dct(n_lon):
    # On a grid that does not wrap, AMSE uses the DCT: Parseval still makes a damped forecast cost its MSE.
    torch.manual_seed(4)
    t = torch.randn(2, 3, 5, n_lon, dtype=torch.float64)
    w = _w(5)
    assert amse(t, t, w, periodic_lon=False) == pytest.approx(0.0, abs=1e-9)
    assert amse(0.5 * t, t, w, periodic_lon=False) == pytest.approx(float(mse(0.5 * t, t, w)), rel=1e-9)
    p = torch.randn_like(t, requires_grad=True)
    loss = amse(p, t, w, periodic_lon=False)
    assert loss > mse(p, t, w)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    # It is another loss than the periodic one, and step_loss passes the choice on.
    with torch.no_grad():
        assert float(amse(p, t, w, periodic_lon=False)) != pytest.approx(float(amse(p, t, w)), rel=1e-3)
        assert step_loss(w, 1.0, periodic_lon=False)(p, t) == amse(p, t, w, periodic_lon=False)


def test_regional_amse_does_not_see_the_edge_jump():
    # A zonal gradient across a regional domain. The FFT reads the jump from the east edge back to the west as
    # power at every wavenumber, so a forecast that adds a spurious small-scale wave looks coherent with the
    # truth there and costs little more than its MSE. With the DCT the truth (a ramp: odd modes only) has no
    # power at the wave's even mode, so the spurious wave costs what AMSE charges for power the truth lacks:
    # (|x| - 0)^2 + 2 |x|^2 (1 - 0) = 3 x its MSE.
    n_lon = 32
    ramp = torch.linspace(-1, 1, n_lon, dtype=torch.float64).expand(1, 1, 4, n_lon)
    j = torch.arange(n_lon, dtype=torch.float64)
    p = ramp + 0.05 * torch.cos(torch.pi * (j + 0.5) * 24 / n_lon)  # DCT mode 24 (12 whole waves)
    m = float(mse(p, ramp))
    assert amse(p, ramp, periodic_lon=False) == pytest.approx(3 * m, rel=1e-3)
    assert amse(p, ramp) < 1.5 * m
