"""Swin configuration, its validation, and the named size ladder.

A :class:`SwinConfig` fixes the network's shape (width, depth, heads, window, patch); the grid and the channel
count come from the dataset when the model is built. The ladder :data:`LADDER` names sizes ``s0`` .. ``s18``,
about 2x apart in parameters from ~1e4 to ~1e9 (counted on a 32x64 grid with 3 channels; the embedding and
head depend a little on the channel count), so IsoFLOP curves have a dense set of model sizes to choose from;
``s-2`` and ``s-1`` (~3e3, ~6e3) extend it below s0 for small datasets.
Any other (width, depth) point is a dict or a ``SwinConfig`` given to :func:`resolve_config`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wxscale.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
# Static coordinate channels fed with the state: cos/sin of latitude and of longitude ("latlon"), of latitude
# only ("lat": the network is then exactly equivariant to longitude shifts by whole windows), or none.
COORDS = ("latlon", "lat", "none")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SwinConfig:
    """Shape of a single-stage Swin emulator (no patch merging).

    Sizes are in tokens for ``window`` (lat, lon) and in grid points for ``patch``. Shifted windows move by
    half a window in every other block (Liu et al. 2021, "Swin Transformer"). ``pad_ok`` allows grids whose
    size is not a multiple of the patch, or whose token grid is not a multiple of the window: they are padded
    and the padding is masked out of attention.
    """

    embed_dim: int
    depth: int
    num_heads: int
    window: tuple[int, int] = (4, 8)
    patch: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    norm: str = "layernorm"
    predict_increment: bool = True
    pad_ok: bool = True
    shift: bool = True  # shifted windows in every second block
    rel_pos_bias: bool = True  # learned relative position bias per window (Swin), one table per block
    coords: str = "latlon"
    checkpoint: bool = False  # gradient checkpointing per block: one extra forward for less activation memory
    name: str = "custom"

    def __post_init__(self) -> None:
        # Accept lists for the window (YAML gives lists) and store a tuple so the config stays hashable.
        if isinstance(self.window, list):
            object.__setattr__(self, "window", tuple(self.window))
        for field in ("embed_dim", "depth", "num_heads", "patch"):
            v = getattr(self, field)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"SwinConfig.{field}={v!r}: must be a positive integer")
        if (not isinstance(self.window, tuple) or len(self.window) != 2
                or not all(_is_int(w) and w >= 1 for w in self.window)):
            raise ConfigError(f"SwinConfig.window={self.window!r}: must be two positive integers (lat, lon) "
                              "in tokens, e.g. [4, 8]")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"SwinConfig.embed_dim={self.embed_dim} is not divisible by "
                              f"num_heads={self.num_heads}: choose a width that is a multiple of the heads")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) \
                or not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0 or self.hidden_dim < 1:
            raise ConfigError(f"SwinConfig.mlp_ratio={self.mlp_ratio!r}: must be a positive number")
        if self.norm not in NORMS:
            raise ConfigError(f"SwinConfig.norm={self.norm!r}: must be one of {', '.join(NORMS)}")
        if self.coords not in COORDS:
            raise ConfigError(f"SwinConfig.coords={self.coords!r}: must be one of {', '.join(COORDS)}")
        for field in ("qk_norm", "predict_increment", "pad_ok", "shift", "rel_pos_bias", "checkpoint"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"SwinConfig.{field}={getattr(self, field)!r}: must be true or false")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer."""
        return int(round(self.mlp_ratio * self.embed_dim))

    @property
    def coord_channels(self) -> int:
        return {"latlon": 4, "lat": 2, "none": 0}[self.coords]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["window"] = list(self.window)
        return d


@dataclass(frozen=True)
class GridLayout:
    """How a config tiles a grid: pixel padding to the patch, token grid, and its padding to the window."""

    grid: tuple[int, int]  # (n_lat, n_lon) grid points
    padded_grid: tuple[int, int]  # grid padded to a multiple of the patch
    tokens: tuple[int, int]  # (Ht, Wt) token grid
    padded_tokens: tuple[int, int]  # token grid padded to a multiple of the window
    n_windows: int  # windows per sample

    @property
    def n_tokens(self) -> int:
        return self.tokens[0] * self.tokens[1]

    @property
    def n_padded_tokens(self) -> int:
        return self.padded_tokens[0] * self.padded_tokens[1]


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def grid_layout(cfg: SwinConfig, grid: tuple[int, int]) -> GridLayout:
    """Check that ``cfg`` fits ``grid`` and say how it is tiled (:class:`ConfigError` if it does not)."""
    if len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
        raise ConfigError(f"grid={grid!r}: must be two positive integers (n_lat, n_lon)")
    h, w = grid
    p = cfg.patch
    if (h % p or w % p) and not cfg.pad_ok:
        raise ConfigError(f"SwinConfig.patch={p} does not divide the grid {h}x{w} and pad_ok is false: "
                          "choose a patch that divides both sizes or set pad_ok: true")
    hp, wp = _ceil_to(h, p), _ceil_to(w, p)
    ht, wt = hp // p, wp // p
    wh, ww = cfg.window
    if wh > ht or ww > wt:
        raise ConfigError(f"SwinConfig.window={list(cfg.window)} is larger than the token grid {ht}x{wt} "
                          f"(grid {h}x{w} / patch {p}): use a smaller window or patch")
    if (ht % wh or wt % ww) and not cfg.pad_ok:
        raise ConfigError(f"SwinConfig.window={list(cfg.window)} does not divide the token grid {ht}x{wt} "
                          "and pad_ok is false: choose a window that divides it or set pad_ok: true")
    htp, wtp = _ceil_to(ht, wh), _ceil_to(wt, ww)
    return GridLayout((h, w), (hp, wp), (ht, wt), (htp, wtp), (htp // wh) * (wtp // ww))


def default_heads(embed_dim: int) -> int:
    """Heads for a width: head size 16 below width 64, 32 below 512, 64 above (falls back to a divisor)."""
    head = 16 if embed_dim < 64 else 32 if embed_dim < 512 else 64
    while embed_dim % head:
        head //= 2
    return max(1, embed_dim // head)


def _size(name: str, embed_dim: int, depth: int) -> SwinConfig:
    return SwinConfig(embed_dim=embed_dim, depth=depth, num_heads=default_heads(embed_dim), name=name)


# (width, depth) per size at patch 4 and window 4x8 tokens. Width and depth grow together (width/depth from
# ~10 at the bottom to ~40 at the top, like language-model ladders); each step is 1.7x..2.2x in parameters.
_SHAPES = [
    (16, 2), (24, 2), (24, 4), (32, 4), (48, 4), (64, 4), (64, 8), (96, 6), (128, 6), (160, 8), (192, 12),
    (256, 12), (320, 16), (448, 16), (576, 20), (768, 22), (1024, 24), (1280, 32), (1664, 40),
]
# Below s0, for small datasets whose IsoFLOP minima lie below s0 (`wxscale sweep extend` grows the ladder down):
# one block at width 16, then two at width 8 (one head). Smaller than s-2 is not a transformer worth fitting.
_SHAPES_BELOW = [(8, 2), (16, 1)]  # s-2, s-1
LADDER: dict[str, SwinConfig] = {
    **{f"s-{i}": _size(f"s-{i}", d, n) for i, (d, n) in zip(range(len(_SHAPES_BELOW), 0, -1), _SHAPES_BELOW)},
    **{f"s{i}": _size(f"s{i}", d, n) for i, (d, n) in enumerate(_SHAPES)},
}


def resolve_config(size: str | SwinConfig | Mapping[str, Any],
                   overrides: Mapping[str, Any] | None = None) -> SwinConfig:
    """A config from a ladder name (``"s3"``), a :class:`SwinConfig`, or a dict of fields, with overrides.

    A dict needs at least ``embed_dim`` and ``depth``; ``num_heads`` defaults to :func:`default_heads`.
    Overrides replace fields (e.g. ``{"patch": 2, "window": [4, 4]}``); unknown field names raise
    :class:`ConfigError`.
    """
    fields = {f.name for f in dataclasses.fields(SwinConfig)}
    if isinstance(size, SwinConfig):
        cfg = size
    elif isinstance(size, str):
        if size not in LADDER:
            raise ConfigError(f"model size {size!r} is unknown: use one of {', '.join(LADDER)} or give "
                              "embed_dim and depth for a custom size")
        cfg = LADDER[size]
    elif isinstance(size, Mapping):
        unknown = sorted(set(size) - fields)
        if unknown:
            raise ConfigError(f"model config has unknown field(s) {', '.join(unknown)}: "
                              f"known fields are {', '.join(sorted(fields))}")
        if "embed_dim" not in size or "depth" not in size:
            raise ConfigError("model config needs embed_dim and depth (or name a ladder size such as 's3')")
        d = dict(size)
        if _is_int(d["embed_dim"]) and d["embed_dim"] > 0:
            d.setdefault("num_heads", default_heads(d["embed_dim"]))
        else:
            d.setdefault("num_heads", 1)
        cfg = SwinConfig(**d)
    else:
        raise ConfigError(f"model size {size!r}: give a ladder name, a SwinConfig or a dict of fields")
    if overrides:
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"model override(s) {', '.join(unknown)} unknown: "
                              f"known fields are {', '.join(sorted(fields))}")
        ov = dict(overrides)
        if "embed_dim" in ov and "num_heads" not in ov and _is_int(ov["embed_dim"]) and ov["embed_dim"] > 0:
            ov["num_heads"] = default_heads(ov["embed_dim"])  # keep the head size when only the width changes
        if ("embed_dim" in ov or "depth" in ov) and "name" not in ov:
            ov["name"] = "custom"
        cfg = dataclasses.replace(cfg, **ov)
    return cfg


def parse_overrides(items: list[str], flag: str = "--model") -> dict[str, Any]:
    """Command-line ``FIELD=VALUE`` items -> a dict of SwinConfig overrides (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected FIELD=VALUE, e.g. patch=2")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
