"""Training losses: latitude-weighted MSE, the adjusted MSE (AMSE) of Subich et al. 2025, autoregressive rollouts.

On a regional grid (``periodic_lon=False``) AMSE decomposes longitude with the orthonormal DCT-II instead of the
FFT, which would read the east-west edge jump as spectral error (see :func:`amse`).

All losses are computed in float32 (float64 if given) whatever the autocast dtype (FFTs have no bf16 kernels
on CPU, and a loss summed in bf16 loses the small differences a cooldown is after).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from wxscale.metrics import dct_lon


def _full(t: Tensor) -> Tensor:
    """float32, or float64 when given float64 (half-precision autocast outputs are promoted)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _lat_w(lat_weights: Tensor | None, n_lat: int, like: Tensor) -> Tensor:
    """Weights over latitude that average (sum to 1): area weights of mean 1 divided by n_lat, or uniform."""
    if lat_weights is None:
        return torch.full((n_lat,), 1.0 / n_lat, dtype=_full(like).dtype, device=like.device)
    return lat_weights.to(device=like.device, dtype=_full(like).dtype) / n_lat


def mse(pred: Tensor, target: Tensor, lat_weights: Tensor | None = None) -> Tensor:
    """Mean squared error over batch, channels and grid, with optional area weights [H] (mean 1) over latitude."""
    diff2 = (_full(pred) - _full(target)).square()  # [B, C, H, W]
    w = _lat_w(lat_weights, pred.shape[-2], pred)
    return (diff2.mean(dim=-1) * w).sum(dim=-1).mean()


def amse(pred: Tensor, target: Tensor, lat_weights: Tensor | None = None, eps: float = 1e-12,
         periodic_lon: bool = True) -> Tensor:
    """Adjusted MSE (Subich et al. 2025, "Fixing the Double Penalty in Data-Driven Weather Forecasting Through a
    Modified Spherical Harmonic Loss Function"), with the zonal wavenumber k in place of the spherical degree l.

    Per latitude, F_k = rfft along longitude (norm="forward"); the degree-k "vector" collects F_k over all
    latitudes (area-weighted), counted twice for k > 0 as in ||x_l||^2 = |x_l0|^2 + 2 sum_m |x_lm|^2, so that
    sum_k ||x_k - y_k||^2 is exactly the latitude-weighted MSE (Parseval). Then::

        coh_k  = Re<x, y>_k / (||x_k|| ||y_k||)
        loss_k = (||x_k|| - ||y_k||)^2 + 2 max(||x_k||^2, ||y_k||^2) (1 - coh_k)

    summed over k, averaged over batch and channels. MSE_k is the same with ||x|| ||y|| in place of the max, so
    AMSE >= MSE, with equality when the forecast is a positive multiple of the truth. The norms are
    sqrt(||.||^2 + eps): finite gradients at zero spectra and no 0/0 in the coherence (the seed code has no guard).

    ``periodic_lon=False`` (a regional grid): the FFT assumes the row repeats, so the jump from the east edge
    back to the west edge would count as error at every wavenumber. The row is decomposed with the orthonormal
    DCT-II instead (its mirror-image extension has no jump; Denis et al. 2002, Mon. Wea. Rev. 130), c_k for
    k = 0 .. n_lon - 1, each counted once with weight 1 / n_lon: Parseval again makes sum_k ||x_k - y_k||^2 the
    latitude-weighted MSE, so AMSE >= MSE still holds, with equality for a positive multiple of the truth. The
    coefficients are real, so a zonal shift changes c_k itself and is penalised more than with the FFT.
    """
    n_lon = pred.shape[-1]
    if periodic_lon:
        x = torch.fft.rfft(_full(pred), dim=-1, norm="forward")  # [B, C, H, K]
        y = torch.fft.rfft(_full(target), dim=-1, norm="forward")
        mult = torch.full((x.shape[-1],), 2.0, device=x.device, dtype=x.real.dtype)
        mult[0] = 1.0
        if n_lon % 2 == 0:
            mult[-1] = 1.0  # the Nyquist wavenumber has no conjugate partner
        xs, ys = (x.real, x.imag), (y.real, y.imag)
    else:
        xs, ys = (dct_lon(_full(pred)),), (dct_lon(_full(target)),)  # [B, C, H, n_lon], real
        mult = torch.full((n_lon,), 1.0 / n_lon, device=pred.device, dtype=xs[0].dtype)
    w = _lat_w(lat_weights, pred.shape[-2], pred)[:, None] * mult  # [H, K]
    nx2 = sum(a.square() for a in xs).mul(w).sum(dim=-2)  # [B, C, K]
    ny2 = sum(b.square() for b in ys).mul(w).sum(dim=-2)
    cross = sum(a * b for a, b in zip(xs, ys)).mul(w).sum(dim=-2)
    nx, ny = torch.sqrt(nx2 + eps), torch.sqrt(ny2 + eps)
    coh = (cross / (nx * ny)).clamp(-1.0, 1.0)
    loss_k = (nx - ny).square() + 2.0 * torch.maximum(nx2, ny2) * (1.0 - coh)
    return loss_k.sum(dim=-1).mean()


def step_loss(lat_weights: Tensor | None = None, amse_weight: float = 0.0, amse_eps: float = 1e-12,
              periodic_lon: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-step loss: (1 - w) MSE + w AMSE (w = amse_weight; w = 0 skips the FFTs; ``periodic_lon=False``:
    the regional AMSE of :func:`amse`)."""

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        out = mse(pred, target, lat_weights) if amse_weight < 1 else None
        if amse_weight > 0:
            a = amse(pred, target, lat_weights, amse_eps, periodic_lon)
            out = a if out is None else (1 - amse_weight) * out + amse_weight * a
        return out

    return loss


def rollout_loss(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                 loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Mean loss over k autoregressive steps: x -> model(x) -> model(model(x)) ... against y[:, 0..k-1].

    x is [B, C, H, W], y is [B, K, C, H, W]. Gradients flow through the whole rollout (as in the seed paper's
    rollout cooldowns), so a step costs k forward and k backward passes: training FLOPs per sample scale by k.
    """
    state, total = x, None
    k = y.shape[1]
    for i in range(k):
        state = model(state)
        term = loss_fn(state, y[:, i])
        total = term if total is None else total + term
    return total / k
