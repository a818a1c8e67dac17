"""The one place that picks the norm layers: apex's fused kernels when apex is importable, else torch's.

NGC images ship apex (``FusedLayerNorm``, ``FusedRMSNorm``: one fused CUDA kernel forward and backward);
elsewhere torch's ``nn.LayerNorm`` / ``nn.RMSNorm`` do the same maths. apex's modules fall back to the plain
maths for CPU tensors, so a model built with them still runs anywhere. :func:`norm_backend` says which was
chosen, for logs and benchmark CSVs.
"""

from __future__ import annotations

import functools

from torch import nn


@functools.lru_cache(maxsize=1)
def _apex() -> tuple[type[nn.Module], type[nn.Module]] | None:
    try:
        from apex.normalization import FusedLayerNorm, FusedRMSNorm
    except Exception:  # ImportError, or an apex built for another torch/CUDA: use torch's
        return None
    return FusedLayerNorm, FusedRMSNorm


def norm_backend() -> str:
    """``"apex"`` when apex's fused norms are used, else ``"torch"``."""
    return "apex" if _apex() is not None else "torch"


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """A LayerNorm (``kind="layernorm"``) or RMSNorm (``"rmsnorm"``) over a last dimension of size ``dim``."""
    apex = _apex()
    if kind == "layernorm":
        return apex[0](dim, eps=eps) if apex else nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return apex[1](dim, eps=eps) if apex else nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: use layernorm or rmsnorm")
