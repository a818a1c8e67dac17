"""Forecast metrics with the WeatherBench 2 conventions (Rasp et al. 2024, "WeatherBench 2: A benchmark for the
next generation of data-driven global weather models").

Arrays end in ``[..., lat, lon]`` (fields) or ``[..., channel, lat, lon]``; latitude in degrees, any order.
The grid metrics accept numpy arrays or torch tensors (the trainer's validation calls them on tensors) and
return the same kind; torch is never imported here, so numpy-only callers stay light.

- Area weights: a latitude cell with edges phi +- dphi/2 (clipped at +-90 deg) has area proportional to
  sin(upper) - sin(lower); weights are normalised to mean 1 over latitudes, so a weighted mean over the grid is
  ``mean(w[:, None] * x)``.
- RMSE per lead time: sqrt(mean over init times of the weighted spatial MSE): the MSE is averaged over time
  before the square root.
- ACC: per init time sum(w f' o') / sqrt(sum(w f'^2) sum(w o'^2)) with anomalies against a climatology, then
  averaged over init times.
- Zonal energy spectrum: per latitude, F_k = rfft along longitude (norm="forward"), circumference
  C = 2 pi R cos(phi); S(0) = C |F_0|^2, S(k) = 2 C |F_k|^2 (k > 0), averaged over a latitude band.
  On a regional grid (longitude not periodic) the FFT would see the jump between the east and west edges as
  power at every wavenumber, so the spectrum uses the orthonormal DCT-II instead (Denis et al. 2002, "Spectral
  decomposition of two-dimensional atmospheric fields on limited-area domains using the discrete cosine
  transform (DCT)", Mon. Wea. Rev. 130): it extends the row by its mirror image, which has no edge jump.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

EARTH_RADIUS_M = 6.37122e6


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def area_weights(lat_deg):
    """Cell-area weights per latitude, mean 1 (WeatherBench 2).

    Cell edges lie halfway between neighbouring latitudes; the outer edges are half a spacing beyond the first
    and last latitude, clipped at +-90 deg, so a grid with points on the poles gets thin polar cells.
    A torch tensor in gives a float tensor out, on the same device.
    """
    if _is_torch(lat_deg):
        import torch

        w = area_weights(lat_deg.detach().cpu().double().numpy())
        return torch.as_tensor(w, dtype=lat_deg.dtype if lat_deg.is_floating_point() else torch.float32,
                               device=lat_deg.device)
    lat = np.asarray(lat_deg, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"lat_deg must be a non-empty 1-D array, got shape {lat.shape}")
    if lat.size == 1:
        return np.ones(1)
    mid = (lat[1:] + lat[:-1]) / 2
    edges = np.concatenate([[lat[0] - (lat[1] - lat[0]) / 2], mid, [lat[-1] + (lat[-1] - lat[-2]) / 2]])
    edges = np.clip(edges, -90.0, 90.0)
    w = np.abs(np.sin(np.deg2rad(edges[1:])) - np.sin(np.deg2rad(edges[:-1])))
    return w / w.mean()


def _lat_weights_like(weights, x):
    """Weights [lat] shaped to broadcast over [..., lat, lon] and of x's kind, dtype and device."""
    if _is_torch(x):
        import torch

        w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    else:
        w = np.asarray(weights, dtype=np.result_type(x, np.float32))
    return w[:, None]


def weighted_mean(x, weights):
    """Area-weighted mean over the last two axes [..., lat, lon] (weights of mean 1 over lat)."""
    return (x * _lat_weights_like(weights, x)).mean(axis=(-2, -1))


def weighted_mse(forecast, truth, weights):
    """Area-weighted mean squared error over the grid: [..., lat, lon] -> [...] (e.g. per channel)."""
    return weighted_mean((forecast - truth) ** 2, weights)


def rmse_over_time(forecast, truth, weights, time_axis: int = 0):
    """RMSE with the MSE averaged over init times before the square root (WeatherBench 2).

    forecast, truth: [..., lat, lon] with init times along ``time_axis`` (e.g. [time, lead, channel, lat, lon]
    -> [lead, channel]).
    """
    return weighted_mse(forecast, truth, weights).mean(axis=time_axis) ** 0.5


def lat_weighted_rmse(pred, target, weights):
    """Per-channel RMSE of a batch: pred, target [B, C, H, W], weights [H] -> [C] (MSE meaned over B first).

    Works on torch tensors (the trainer's validation) and numpy arrays alike.
    """
    return rmse_over_time(pred, target, weights, time_axis=0)


def acc(forecast, truth, clim, weights, time_axis: int = 0):
    """Anomaly correlation coefficient against climatology ``clim`` (broadcastable to the fields).

    Per init time: sum(w f' o') / sqrt(sum(w f'^2) sum(w o'^2)) over the grid, then averaged over init times
    (WeatherBench 2). Inputs [..., lat, lon] with init times along ``time_axis``; returns the rest, e.g.
    [time, lead, channel, lat, lon] -> [lead, channel]. A constant forecast (zero anomaly) gives NaN.
    """
    fa, oa = forecast - clim, truth - clim
    num = weighted_mean(fa * oa, weights)
    den = (weighted_mean(fa * fa, weights) * weighted_mean(oa * oa, weights)) ** 0.5
    return (num / den).mean(axis=time_axis)


@functools.lru_cache(maxsize=32)
def _dct_matrix(n: int) -> np.ndarray:
    """[n, n] orthonormal DCT-II: M[k, j] = s_k cos(pi (j + 1/2) k / n), s_0 = sqrt(1/n), s_k = sqrt(2/n)."""
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (j + 0.5) * k / n)
    m[0] /= np.sqrt(2.0)
    return m


def dct_lon(x):
    """Orthonormal DCT-II along the last axis (scipy.fft.dct(x, norm="ortho")) of a numpy array or torch tensor.

    Orthonormal, so sum_k c_k^2 = sum_j x_j^2 (Parseval). A matrix product: differentiable in torch and cheap
    for the regional grids it is used on (Denis et al. 2002; see the module docstring).
    """
    m = _dct_matrix(x.shape[-1])
    if _is_torch(x):
        import torch

        return x @ torch.as_tensor(m.T, dtype=x.dtype, device=x.device)
    return np.asarray(x) @ m.T


def zonal_energy_spectrum(x, lat_deg, radius: float = EARTH_RADIUS_M, lat_band: tuple[float, float] | None = None,
                          periodic_lon: bool = True, lon_deg=None):
    """Zonal energy spectrum of fields x [..., lat, lon], averaged over latitudes in ``lat_band`` (deg, inclusive).

    Per latitude: F_k = rfft(x, norm="forward") along longitude, circumference C = 2 pi R cos(phi),
    S(0) = C |F_0|^2, S(k) = 2 C |F_k|^2 for 0 < k < nlon/2 and C |F_k|^2 at the Nyquist wavenumber of an even
    grid (its coefficient has no conjugate twin: not doubling it keeps Parseval exact,
    sum_k S(k) = C mean_lon(x^2)). Returns (wavenumbers [K], wavelengths_m [K], spectrum [..., K]); the
    wavelength C_band / k uses the band's mean circumference (inf at k = 0). Works on numpy arrays and torch
    tensors (spectrum of the input's kind; wavenumbers and wavelengths as numpy).

    ``periodic_lon=False`` (a regional grid; ``lon_deg`` then gives the domain's width): per latitude the
    orthonormal DCT-II c_k of the row, domain width L = nlon * dlon * R cos(phi) (each point a cell of width
    dlon), S(k) = L c_k^2 / nlon for k = 0 .. nlon - 1, so again sum_k S(k) = L mean_lon(x^2); wavenumber k is
    k half-waves across the domain, wavelength 2 L_band / k (Denis et al. 2002).
    """
    lat = np.asarray(lat_deg.detach().cpu().numpy() if _is_torch(lat_deg) else lat_deg, dtype=np.float64)
    if x.shape[-2] != lat.size:
        raise ValueError(f"x has {x.shape[-2]} latitudes but lat_deg has {lat.size}")
    lo, hi = (-90.0, 90.0) if lat_band is None else (min(lat_band), max(lat_band))
    rows = np.flatnonzero((lat >= lo) & (lat <= hi))
    if rows.size == 0:
        raise ValueError(f"no latitude of the grid lies in the band {lat_band}")
    nlon = x.shape[-1]
    if not periodic_lon:
        return _regional_spectrum(x, lat[rows], rows, radius, lon_deg)
    k = np.arange(nlon // 2 + 1)
    factor = np.where(k == 0, 1.0, 2.0)
    if nlon % 2 == 0:
        factor[-1] = 1.0
    circ = 2 * np.pi * radius * np.cos(np.deg2rad(lat[rows]))
    circ = np.clip(circ, 0.0, None)  # cos(90 deg) is 6e-17, not 0
    scale = circ[:, None] * factor[None, :]  # [band lat, K]
    if _is_torch(x):
        import torch

        power = torch.fft.rfft(x[..., rows, :], dim=-1, norm="forward").abs() ** 2
        spectrum = (power * torch.as_tensor(scale, dtype=power.dtype, device=power.device)).mean(dim=-2)
    else:
        power = np.abs(np.fft.rfft(np.asarray(x)[..., rows, :], axis=-1, norm="forward")) ** 2
        spectrum = (power * scale).mean(axis=-2)
    with np.errstate(divide="ignore"):
        wavelengths = np.where(k == 0, np.inf, circ.mean() / np.maximum(k, 1))
    return k, wavelengths, spectrum


def _regional_spectrum(x, lat_rows, rows, radius: float, lon_deg):
    """The DCT spectrum of :func:`zonal_energy_spectrum` for a grid that does not wrap in longitude."""
    nlon = x.shape[-1]
    if lon_deg is None:
        raise ValueError("a regional grid's spectrum (periodic_lon=False) needs lon_deg, for the domain's width")
    lon = np.asarray(lon_deg.detach().cpu().numpy() if _is_torch(lon_deg) else lon_deg, dtype=np.float64).ravel()
    if lon.size != nlon or nlon < 2:
        raise ValueError(f"x has {nlon} longitudes but lon_deg has {lon.size} (need at least 2)")
    dlon = float(np.median(np.diff(lon) % 360.0))
    width = np.clip(nlon * np.deg2rad(dlon) * radius * np.cos(np.deg2rad(lat_rows)), 0.0, None)  # L per latitude
    k = np.arange(nlon)
    scale = width[:, None] / nlon * np.ones((1, nlon))  # [band lat, K]
    if _is_torch(x):
        import torch

        power = dct_lon(x[..., rows, :]) ** 2
        spectrum = (power * torch.as_tensor(scale, dtype=power.dtype, device=power.device)).mean(dim=-2)
    else:
        power = dct_lon(np.asarray(x)[..., rows, :]) ** 2
        spectrum = (power * scale).mean(axis=-2)
    with np.errstate(divide="ignore"):
        wavelengths = np.where(k == 0, np.inf, 2 * width.mean() / np.maximum(k, 1))
    return k, wavelengths, spectrum
