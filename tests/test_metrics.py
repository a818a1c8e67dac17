"""WeatherBench 2 metrics: area weights, RMSE, ACC, zonal spectra (numpy and torch)."""

import numpy as np
import pytest

from wxscale.metrics import (
    EARTH_RADIUS_M,
    acc,
    area_weights,
    dct_lon,
    lat_weighted_rmse,
    rmse_over_time,
    weighted_mse,
    zonal_energy_spectrum,
)

torch = pytest.importorskip("torch")


def grid(nlat=32, nlon=64, poles=True):
    lat = np.linspace(90, -90, nlat) if poles else 90 - (np.arange(nlat) + 0.5) * 180 / nlat
    lon = np.arange(nlon) * 360 / nlon
    return lat, lon


@pytest.mark.parametrize("poles", [True, False])
def test_area_weights_mean_one_and_proportional_to_cell_area(poles):
    lat, _ = grid(poles=poles)
    w = area_weights(lat)
    assert w.mean() == pytest.approx(1.0)
    assert np.all(w > 0)
    assert np.allclose(w, w[::-1])  # symmetric grid
    assert w[len(w) // 2] > 5 * w[0]  # equator cells dwarf polar ones
    # Cell areas sum to the sphere: sum(sin(upper) - sin(lower)) = 2, and the edges are the midpoints.
    d = 180 / (len(lat) - 1) if poles else 180 / len(lat)
    raw = np.sin(np.deg2rad(np.clip(lat + d / 2, -90, 90))) - np.sin(np.deg2rad(np.clip(lat - d / 2, -90, 90)))
    assert raw.sum() == pytest.approx(2.0)
    assert np.allclose(w, raw / raw.mean())
    # Latitude order does not matter.
    assert np.allclose(area_weights(lat[::-1]), w[::-1])


def test_area_weights_torch_matches_numpy():
    lat, _ = grid()
    wt = area_weights(torch.tensor(lat, dtype=torch.float32))
    assert isinstance(wt, torch.Tensor) and wt.dtype == torch.float32
    assert np.allclose(wt.numpy(), area_weights(lat), atol=1e-6)


def test_rmse_of_analytic_field():
    """Error e = cos(lat): the weighted mean of e^2 over the sphere is 2/3 (int cos^3 / int cos)."""
    lat, lon = grid(nlat=721, nlon=8)  # fine in latitude, so the quadrature is accurate
    w = area_weights(lat)
    err = np.cos(np.deg2rad(lat))[:, None] * np.ones(lon.size)
    truth = np.zeros((1, 2, lat.size, lon.size))
    forecast = truth + err * np.array([1.0, 3.0])[None, :, None, None]
    mse = weighted_mse(forecast, truth, w)
    assert mse.shape == (1, 2)
    assert np.allclose(mse[0], [2 / 3, 9 * 2 / 3], rtol=1e-4)
    # An unweighted mean would give 1/2, so the weights matter.
    assert abs((err**2).mean() - 0.5) < 1e-3


def test_rmse_averages_mse_over_time_before_sqrt():
    lat, lon = grid()
    w = area_weights(lat)
    truth = np.zeros((2, 1, lat.size, lon.size))
    forecast = truth.copy()
    forecast[0] += 1.0
    forecast[1] += 3.0
    # sqrt((1 + 9) / 2) = sqrt(5), not the mean of the RMSEs (2).
    assert rmse_over_time(forecast, truth, w)[0] == pytest.approx(np.sqrt(5.0))


def test_lat_weighted_rmse_torch_matches_numpy():
    lat, lon = grid(16, 32)
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 4, 3, 16, 32))
    w = area_weights(lat)
    expected = np.sqrt((((pred - target) ** 2) * w[:, None]).mean(axis=(0, 2, 3)))
    out_np = lat_weighted_rmse(pred, target, w)
    out_t = lat_weighted_rmse(torch.tensor(pred), torch.tensor(target), torch.tensor(w))
    assert out_np.shape == (3,) and tuple(out_t.shape) == (3,)
    assert np.allclose(out_np, expected)
    assert np.allclose(out_t.numpy(), expected)
    # float32 tensors with float64 weights keep float32
    out32 = lat_weighted_rmse(torch.tensor(pred).float(), torch.tensor(target).float(), torch.tensor(w))
    assert out32.dtype == torch.float32


def test_acc_perfect_and_independent():
    lat, lon = grid(32, 64)
    w = area_weights(lat)
    rng = np.random.default_rng(1)
    clim = rng.normal(size=(2, lat.size, lon.size))
    truth = clim + rng.normal(size=(50, 2, lat.size, lon.size))
    assert np.allclose(acc(truth, truth, clim, w), 1.0)
    noise = clim + rng.normal(size=truth.shape)
    a = acc(noise, truth, clim, w)
    assert a.shape == (2,)
    assert np.all(np.abs(a) < 0.02)  # 2048 points, 50 times: sd ~ 0.003
    # Anti-correlated anomalies give -1; torch agrees.
    assert np.allclose(acc(2 * clim - truth, truth, clim, w), -1.0)
    at = acc(torch.tensor(noise), torch.tensor(truth), torch.tensor(clim), torch.tensor(w))
    assert np.allclose(at.numpy(), a)


@pytest.mark.parametrize("nlon", [64, 63])
def test_zonal_spectrum_peaks_at_wavenumber_and_parseval(nlon):
    lat, lon = grid(33, nlon)
    k0, amp = 5, 2.0
    x = amp * np.cos(np.deg2rad(k0 * lon))[None, :] * np.ones((lat.size, 1)) + 0.5
    band = (30, 60)
    k, wl, s = zonal_energy_spectrum(x, lat, lat_band=band)
    assert k.size == nlon // 2 + 1 and s.shape == (k.size,)
    assert np.argmax(s[1:]) + 1 == k0
    inband = (lat >= 30) & (lat <= 60)
    circ = 2 * np.pi * EARTH_RADIUS_M * np.cos(np.deg2rad(lat[inband]))
    # S(k0) = 2 C (amp/2)^2 and S(0) = C 0.5^2, averaged over the band.
    assert s[k0] == pytest.approx(2 * (amp / 2) ** 2 * circ.mean())
    assert s[0] == pytest.approx(0.25 * circ.mean())
    assert wl[k0] == pytest.approx(circ.mean() / k0) and np.isinf(wl[0])
    # Parseval on random fields: sum_k S(k) = C mean_lon(x^2), latitude by latitude.
    rng = np.random.default_rng(2)
    y = rng.normal(size=(3, lat.size, nlon))
    for j in range(lat.size):
        _, _, sj = zonal_energy_spectrum(y[:, j:j + 1], lat[j:j + 1])
        cj = 2 * np.pi * EARTH_RADIUS_M * max(np.cos(np.deg2rad(lat[j])), 0.0)
        assert np.allclose(sj.sum(axis=-1), cj * (y[:, j] ** 2).mean(axis=-1))
    _, _, st = zonal_energy_spectrum(torch.tensor(y), lat, lat_band=band)
    _, _, sn = zonal_energy_spectrum(y, lat, lat_band=band)
    assert np.allclose(st.numpy(), sn)


def test_spectrum_rejects_mismatched_latitudes():
    with pytest.raises(ValueError, match="latitudes"):
        zonal_energy_spectrum(np.zeros((4, 8)), np.linspace(-60, 60, 5))
    with pytest.raises(ValueError, match="band"):
        zonal_energy_spectrum(np.zeros((5, 8)), np.linspace(-60, 60, 5), lat_band=(70, 80))


def test_dct_lon_is_scipys_orthonormal_dct_for_numpy_and_torch():
    from scipy.fft import dct

    x = np.random.default_rng(0).normal(size=(3, 5, 17))
    assert np.allclose(dct_lon(x), dct(x, type=2, norm="ortho", axis=-1))
    assert np.allclose(dct_lon(torch.tensor(x)).numpy(), dct_lon(x))


@pytest.mark.parametrize("nlon", [33, 32])
def test_regional_spectrum_uses_the_dct_and_keeps_parseval(nlon):
    # The North Atlantic file's grid: 17 x 33 points at 2.5 deg, 30-70N, 70W-10E, longitude not periodic.
    lat, lon = np.linspace(70, 30, 17), -70 + 2.5 * np.arange(nlon)
    width = nlon * np.deg2rad(2.5) * EARTH_RADIUS_M * np.cos(np.deg2rad(lat))
    rng = np.random.default_rng(1)
    y = rng.normal(size=(2, lat.size, nlon))
    k, wl, s = zonal_energy_spectrum(y, lat, periodic_lon=False, lon_deg=lon)
    assert k.size == nlon and s.shape == (2, nlon)
    # Parseval per latitude: sum_k S(k) = L mean_lon(x^2), L the domain's width there.
    for j in (0, 8, 16):
        _, _, sj = zonal_energy_spectrum(y[:, j:j + 1], lat[j:j + 1], periodic_lon=False, lon_deg=lon)
        assert np.allclose(sj.sum(axis=-1), width[j] * (y[:, j] ** 2).mean(axis=-1))
    assert wl[3] == pytest.approx(2 * width.mean() / 3) and np.isinf(wl[0])
    _, _, st = zonal_energy_spectrum(torch.tensor(y), lat, periodic_lon=False, lon_deg=torch.tensor(lon))
    assert np.allclose(st.numpy(), s)
    # A zonal gradient across the domain: the FFT reads the east-west edge jump as power at every wavenumber
    # (it falls off like k^-2); the DCT, with no jump to see, leaves the upper half of the spectrum ~ k^-4 lower.
    ramp = np.linspace(0, 1, nlon)[None, :] * np.ones((lat.size, 1))
    _, _, s_dct = zonal_energy_spectrum(ramp - 0.5, lat, periodic_lon=False, lon_deg=lon)
    _, _, s_fft = zonal_energy_spectrum(ramp - 0.5, lat)
    upper = lambda sp: sp[sp.size // 2:].sum() / sp.sum()  # noqa: E731
    assert upper(s_dct) < 1e-3 < 0.02 < upper(s_fft)
    with pytest.raises(ValueError, match="lon_deg"):
        zonal_energy_spectrum(y, lat, periodic_lon=False)
