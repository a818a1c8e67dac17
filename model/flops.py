"""Analytic parameter and FLOP counts of the Swin emulator in :mod:`wxscale.model.swin`.

Convention (the one place it is written down; see SCIENCE.md):

- A multiply-add is 2 FLOPs. A linear layer on T tokens, d_in -> d_out, costs 2 T d_in d_out matmul FLOPs; its
  bias add (T d_out) is counted with the "other" FLOPs.
- Windowed attention over W windows of S tokens with H heads of size h costs 2 W H S^2 h for Q K^T and the
  same for A V (Liu et al. 2021, "Swin Transformer", Sec. 3.2; padded windows count in full, since they are
  computed).
- "Other" FLOPs are elementwise work, counted per element with fixed, documented costs (estimates, not kernel
  measurements): LayerNorm 7, RMSNorm 4, softmax 5 per score, GELU 8, attention scale 1, bias or mask add 1,
  residual add 1. They are reported apart from matmul FLOPs; ``forward_flops`` is their sum.
- Training FLOPs per sample = 3 x forward matmul FLOPs x rollout steps: the backward pass costs twice the
  forward (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Sec. 2.1; the C ~ 6 N D of
  Hoffmann et al. 2022 is the same rule for dense transformers). This counts model FLOPs: recomputation (flash-attention
  backward, gradient checkpointing) is not included, and the input gradient of the first layer is counted
  although autograd skips it when the input needs no gradient (a difference of 2 T (C_in p^2) D per step,
  below 1 % for all but the tiniest models).

Everything here is plain integer arithmetic on the config, so ``wxscale model list`` needs no torch;
:func:`torch_flop_counter` is the cross-check against ``torch.utils.flop_counter`` used by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wxscale.model.config import SwinConfig, grid_layout

# Elementwise costs per element (see the module docstring).
_NORM_COST = {"layernorm": 7, "rmsnorm": 4}
_SOFTMAX_COST = 5
_GELU_COST = 8

MATMUL_KEYS = ("patch_embed", "qkv", "attn_scores", "attn_values", "attn_proj", "mlp", "head")
OTHER_KEYS = ("norm", "softmax", "activation", "attn_scale_bias", "bias_add", "residual")


@dataclass(frozen=True)
class ModelFlops:
    """Parameters and per-sample FLOPs of one configuration on one grid.

    ``forward_*`` are for one forward step of one sample; ``forward_flops = forward_matmul_flops +
    forward_other_flops``. ``train_flops_per_sample = 3 * forward_matmul_flops * rollout_steps`` (matmul only,
    the convention for budgets and MFU). ``breakdown`` maps each component (keys in ``MATMUL_KEYS`` and
    ``OTHER_KEYS``) to its forward FLOPs per sample and step; ``param_breakdown`` splits the parameters
    likewise.
    """

    params: int
    forward_matmul_flops: int
    forward_other_flops: int
    forward_flops: int
    train_flops_per_sample: int
    rollout_steps: int
    tokens: int  # real tokens per sample
    padded_tokens: int  # tokens including window padding
    breakdown: dict[str, int] = field(default_factory=dict)
    param_breakdown: dict[str, int] = field(default_factory=dict)


def _norm_params(cfg: SwinConfig, dim: int) -> int:
    return 2 * dim if cfg.norm == "layernorm" else dim


def param_breakdown(cfg: SwinConfig, in_channels: int, static_channels: int = 0) -> dict[str, int]:
    """Trainable parameters per component for ``in_channels`` state channels and extra static fields."""
    d, hid, p = cfg.embed_dim, cfg.hidden_dim, cfg.patch
    c_in = (in_channels + cfg.coord_channels + static_channels) * p * p
    c_out = in_channels * p * p
    wh, ww = cfg.window
    block = {
        "norm": 2 * _norm_params(cfg, d) + (2 * _norm_params(cfg, cfg.head_dim) if cfg.qk_norm else 0),
        "qkv": d * 3 * d + 3 * d,
        "attn_proj": d * d + d,
        "rel_pos_bias": (2 * wh - 1) * (2 * ww - 1) * cfg.num_heads if cfg.rel_pos_bias else 0,
        "mlp": d * hid + hid + hid * d + d,
    }
    out = {"patch_embed": c_in * d + d}
    out.update({k: cfg.depth * v for k, v in block.items()})
    out["norm"] += _norm_params(cfg, d)  # final norm
    out["head"] = d * c_out + c_out
    return out


def count_params(cfg: SwinConfig, in_channels: int, static_channels: int = 0) -> int:
    """All trainable parameters (equals ``sum(p.numel() for p in build_model(...).parameters())``)."""
    return sum(param_breakdown(cfg, in_channels, static_channels).values())


def model_flops(cfg: SwinConfig, grid: tuple[int, int], in_channels: int, rollout_steps: int = 1,
                static_channels: int = 0, periodic_lon: bool = True) -> ModelFlops:
    """Analytic parameters and FLOPs per sample of ``cfg`` on ``grid`` (n_lat, n_lon) with ``in_channels``.

    ``static_channels`` counts extra static fields given to ``build_model`` (land-sea mask, orography), on top
    of the coordinate channels the config adds itself. ``periodic_lon=False`` (a regional grid) adds the mask
    of the longitude wrap to shifted blocks, as ``build_model`` does. See the module docstring for the
    convention.
    """
    if not isinstance(rollout_steps, int) or rollout_steps < 1:
        from wxscale.errors import ConfigError
        raise ConfigError(f"rollout_steps={rollout_steps!r}: must be a positive integer")
    lay = grid_layout(cfg, tuple(grid))
    d, hid, p, n_heads, hd = cfg.embed_dim, cfg.hidden_dim, cfg.patch, cfg.num_heads, cfg.head_dim
    t, tp, n_win = lay.n_tokens, lay.n_padded_tokens, lay.n_windows
    s = cfg.window[0] * cfg.window[1]
    c_in = (in_channels + cfg.coord_channels + static_channels) * p * p
    c_out = in_channels * p * p
    n = cfg.depth
    scores = n_win * n_heads * s * s  # attention scores per block
    matmul = {
        "patch_embed": 2 * t * c_in * d,
        "qkv": n * 2 * t * d * 3 * d,
        "attn_scores": n * 2 * scores * hd,
        "attn_values": n * 2 * scores * hd,
        "attn_proj": n * 2 * t * d * d,
        "mlp": n * 2 * 2 * t * d * hid,
        "head": 2 * t * d * c_out,
    }
    # Blocks that pass a bias or mask to attention: all with a relative position bias or padding, else those
    # whose shifted windows wrap in latitude, or in longitude on a regional grid (they need the wrap mask);
    # mirrors SwinBlock and window_mask in model/swin.py.
    padded = tp != t
    wraps_masked = cfg.window[0] > 1 or (not periodic_lon and cfg.window[1] > 1)
    shifted_masked = sum(1 for i in range(n) if cfg.shift and i % 2 == 1 and wraps_masked)
    masked_blocks = n if (cfg.rel_pos_bias or padded) else shifted_masked
    norm_cost = _NORM_COST[cfg.norm]
    other = {
        "norm": norm_cost * ((2 * n + 1) * t * d + (n * 2 * tp * d if cfg.qk_norm else 0)),
        "softmax": n * _SOFTMAX_COST * scores,
        "activation": n * _GELU_COST * t * hid,
        "attn_scale_bias": n * tp * d + masked_blocks * scores,
        "bias_add": t * d + n * t * (3 * d + d + hid + d) + t * c_out,
        "residual": n * 2 * t * d + (in_channels * lay.grid[0] * lay.grid[1] if cfg.predict_increment else 0),
    }
    fm, fo = sum(matmul.values()), sum(other.values())
    return ModelFlops(
        params=count_params(cfg, in_channels, static_channels),
        forward_matmul_flops=fm,
        forward_other_flops=fo,
        forward_flops=fm + fo,
        train_flops_per_sample=3 * fm * rollout_steps,
        rollout_steps=rollout_steps,
        tokens=t,
        padded_tokens=tp,
        breakdown={**matmul, **other},
        param_breakdown=param_breakdown(cfg, in_channels, static_channels),
    )


def _sdpa_forward(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    *batch, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    b = 1
    for x in batch:
        b *= x
    return 2 * b * s_q * s_k * d_q + 2 * b * s_q * s_k * d_v


def _sdpa_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                   **kwargs: Any) -> int:
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward. The recomputation of Q K^T that
    # memory-efficient kernels do is hardware work, not model FLOPs, so it is left out on purpose.
    return 2 * _sdpa_forward(query_shape, key_shape, value_shape)


def torch_flop_counter() -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` that also counts SDPA the way this module does.

    torch 2.13 has no formula for CPU flash attention (it counts 0) and counts a recomputed Q K^T in SDPA
    backward; both are set here to the model-FLOP convention above, for CPU and GPU kernels alike.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
                               aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward}
    for name in ("efficient", "flash", "cudnn"):
        mapping[getattr(aten, f"_scaled_dot_product_{name}_attention_backward")] = _sdpa_backward
    return FlopCounterMode(display=False, custom_mapping=mapping)
