"""AdamW with the fastest available implementation, decoupled weight decay on matrices only, and grad clipping.

Implementation order for ``impl: auto``: apex ``FusedAdam`` (NGC images; CUDA only), then torch's fused AdamW
(one kernel for all parameters), then the multi-tensor ``foreach`` path. The choice is returned and recorded in
the run dir, since it changes speed (and, in the last bits, numerics).

No weight decay on biases, norm weights, or position-bias tables: decaying them pulls the network towards a
degenerate scale rather than regularising it (the usual practice since Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization", and Swin's own training recipe).
"""

from __future__ import annotations

import torch
from torch import nn

from wxscale.errors import ConfigError

NO_DECAY_KEYWORDS = ("relative_position_bias", "rel_bias", "rel_pos", "pos_embed", "bias_table")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay for matrices, none for biases, norms and position-bias tables."""
    norm_params = set()
    for module in model.modules():
        if isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or id(p) in norm_params or any(k in name for k in NO_DECAY_KEYWORDS)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def _apex_fused_adam():
    try:
        from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - apex may be absent or built without its CUDA extensions
        return None
    return FusedAdam


def build_optimizer(model: nn.Module, optim_cfg, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW for ``model`` per :class:`~wxscale.training.config.OptimConfig`; returns (optimizer, implementation)."""
    groups = param_groups(model, optim_cfg.weight_decay)
    kw = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    impl = optim_cfg.impl
    if impl in ("auto", "apex"):
        fused_adam = _apex_fused_adam() if device.type == "cuda" else None
        if fused_adam is not None:
            return fused_adam(groups, adam_w_mode=True, **kw), "apex"
        if impl == "apex":
            raise ConfigError("optim.impl=apex: apex.optimizers.FusedAdam is not importable here (or the device is "
                              "not CUDA); use optim.impl=auto")
    if impl in ("auto", "fused"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw), "fused"
        except (RuntimeError, ValueError, TypeError) as err:
            if impl == "fused":
                raise ConfigError(f"optim.impl=fused: torch's fused AdamW is unavailable on {device} ({err}); "
                                  "use optim.impl=auto") from err
    if impl in ("auto", "foreach"):
        return torch.optim.AdamW(groups, foreach=True, **kw), "foreach"
    return torch.optim.AdamW(groups, foreach=False, fused=False, **kw), "plain"


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (0 = only measure); returns the norm before clipping.

    The norm stays a tensor on the device: clipping scales by ``min(1, max_norm / norm)`` on the device, so no
    step waits for the host (the caller reads the norm only when it logs). ``params``: a list built once.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return torch.nn.utils.get_total_norm(grads)
