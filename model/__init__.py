"""The network (a single-stage Swin on a lat-lon grid), its size ladder and its analytic FLOP counts.

``resolve_config(size, overrides, grid)`` gives a :class:`SwinConfig` from a ladder name (``LADDER``: ``s0`` ..
``s18``) or a custom point, its window and patch fitted to the grid (``fit_window_patch``);
``build_model(cfg, grid, in_channels, ...)`` builds the network; ``model_flops(cfg, grid, in_channels,
rollout_steps)`` counts its parameters and FLOPs per sample (convention
in :mod:`wxscale.model.flops`). The torch-dependent names are imported on first use, so ``wxscale model list`` runs
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from wxscale.model.config import (
    LADDER,
    SwinConfig,
    fit_window_patch,
    grid_layout,
    overrides_for_grid,
    resolve_config,
)
from wxscale.model.flops import ModelFlops, count_params, model_flops, torch_flop_counter

_LAZY = {"build_model": "swin", "SwinEmulator": "swin", "norm_backend": "norms"}  # modules under wxscale.model

__all__ = [
    "LADDER", "ModelFlops", "SwinConfig", "SwinEmulator", "build_model", "count_params", "fit_window_patch",
    "grid_layout", "model_flops", "norm_backend", "overrides_for_grid", "resolve_config", "torch_flop_counter",
]


def __getattr__(name: str) -> Any:  # PEP 562: import torch only when the network is asked for
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
