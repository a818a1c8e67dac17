"""Swin configuration, its validation, and the named size ladder.

A :class:`SwinConfig` fixes the network's shape (width, depth, heads, window, patch); the grid and the channel
count come from the dataset when the model is built. The ladder :data:`LADDER` names sizes ``s0`` .. ``s18``,
about 2x apart in parameters from ~1e4 to ~1e9 (counted on a 32x64 grid with 3 channels; the embedding and
head depend a little on the channel count), so IsoFLOP curves have a dense set of model sizes to choose from;
``s-2`` and ``s-1`` (~3e3, ~6e3) extend it below s0 for small datasets.
Any other (width, depth) point is a dict or a ``SwinConfig`` given to :func:`resolve_config`.

The ladder's patch (4) and window (4x8 tokens, i.e. 16x32 grid points) suit global grids such as 32x64 or
721x1440. Given the dataset's grid, :func:`resolve_config` fits the window, and the patch where needed, to it
(:func:`fit_window_patch` states the rule), unless the config or its overrides fix them.
"""

from __future__ import annotations

import dataclasses
import functools
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

    @property
    def padding_fraction(self) -> float:
        """Share of the padded grid (patch and window padding, in grid points) that is padding, in [0, 1)."""
        p = self.padded_grid[0] // self.tokens[0]
        return 1.0 - self.grid[0] * self.grid[1] / (self.padded_tokens[0] * p * self.padded_tokens[1] * p)


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
    lay = _tile((h, w), p, cfg.window)
    ht, wt = lay.tokens
    wh, ww = cfg.window
    if wh > ht or ww > wt:
        raise ConfigError(f"SwinConfig.window={list(cfg.window)} is larger than the token grid {ht}x{wt} "
                          f"(grid {h}x{w} / patch {p}): use a smaller window or patch")
    if (ht % wh or wt % ww) and not cfg.pad_ok:
        raise ConfigError(f"SwinConfig.window={list(cfg.window)} does not divide the token grid {ht}x{wt} "
                          "and pad_ok is false: choose a window that divides it or set pad_ok: true")
    return lay


def _tile(grid: tuple[int, int], patch: int, window: tuple[int, int]) -> GridLayout:
    """The tiling arithmetic alone: pad the grid to the patch, then the token grid to the window."""
    (h, w), p, (wh, ww) = grid, patch, window
    hp, wp = _ceil_to(h, p), _ceil_to(w, p)
    ht, wt = hp // p, wp // p
    htp, wtp = _ceil_to(ht, wh), _ceil_to(wt, ww)
    return GridLayout((h, w), (hp, wp), (ht, wt), (htp, wtp), (htp // wh) * (wtp // ww))


# ------------------------------------------------------------------------------------------------------------
# Fitting the window and patch to a grid (the rule of fit_window_patch)

# A window 2x larger or smaller than its target along an axis costs as much as 10 % padding of that axis
# (chosen so the window stays near 1 : 2 on most grids while sizes that divide the token grid still win).
WINDOW_SIZE_COST = 0.1
# The patch is halved while the padded grid holds more padding than this.
MAX_PADDING = 0.10


def _patch_chain(base_patch: int) -> list[int]:
    out = [base_patch]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def min_grid(base_patch: int = 4, base_window: tuple[int, int] = (4, 8)) -> tuple[int, int]:
    """The smallest grid (n_lat, n_lon) the rule fits: half the base window's extent in grid points per axis."""
    return (-(-base_window[0] * base_patch // 2), -(-base_window[1] * base_patch // 2))


@functools.lru_cache(maxsize=65536)
def _axis_window(n_points: int, patch: int, target: int) -> int:
    """Window size (tokens) along one axis: the least cost in [ceil(target/2), min(2 target, tokens)]."""
    n = -(-n_points // patch)
    lo, hi = -(-target // 2), min(2 * target, n)
    if hi < lo:  # fewer tokens than half the target: the whole axis is one window
        return n
    best, best_cost = hi, math.inf
    for w in range(hi, lo - 1, -1):  # from the largest, so that ties go to the larger window
        pad = 1.0 - n_points / (_ceil_to(n, w) * patch)
        cost = pad + WINDOW_SIZE_COST * abs(math.log2(w / target))
        if cost < best_cost - 1e-12:
            best, best_cost = w, cost
    return best


def fit_window_patch(grid: tuple[int, int], base_patch: int = 4, base_window: tuple[int, int] = (4, 8),
                     patch: int | None = None, window: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """The patch and window (tokens) for ``grid`` (n_lat, n_lon): the ladder's rule, deterministic.

    ``patch`` or ``window`` fix that part (``--model patch=...``/``window=...``): only the other is chosen.

    1. The base shape (``base_window`` at ``base_patch``: the ladder's 4x8 tokens at patch 4, i.e. 16x32 grid
       points, height : width = 1 : 2; or the fixed part in its place) is kept if it fits the token grid with
       at most ``MAX_PADDING`` of the padded grid being padding. So every grid that suits the ladder keeps it
       (32x64, 720x1440, 721x1440).
    2. Otherwise the patch is the base patch, halved (4, 2, 1) until the padded grid holds at most
       ``MAX_PADDING`` padding; if no patch gets there, the one with the least padding (the larger on a tie).
       At a patch ``p`` chosen this way the target window keeps the base window's extent in grid points,
       ``base_window * base_patch / p`` tokens, as the seed code's ``get_window_size`` keeps the window's
       physical area; at a fixed patch the target is ``base_window``.
    3. Along each axis the window is the size in [target / 2, min(2 target, tokens)] with the least
       ``padding fraction of that axis + WINDOW_SIZE_COST * |log2(size / target)|`` (ties: the larger size), so a
       size that divides the token grid wins unless it is far from the target; a whole axis shorter than
       target / 2 is one window.

    When both are free, grids smaller than :func:`min_grid` (8x16 for the ladder: there the window can no longer
    stay within a factor 2 of its extent) are refused with a :class:`ConfigError` that names that grid.
    """
    h, w = grid
    if patch is not None and window is not None:
        return patch, tuple(window)
    if patch is None and window is None:
        mh, mw = min_grid(base_patch, base_window)
        if h < mh or w < mw:
            raise ConfigError(
                f"grid {h}x{w} is smaller than the smallest grid the model ladder supports, {mh}x{mw} points "
                f"(half its {base_window[0] * base_patch}x{base_window[1] * base_patch}-point window along each "
                f"axis): give the patch and window yourself, e.g. patch 1 and window [{max(1, h // 2)}, "
                f"{max(1, w // 2)}] (--model patch=1 --model window=[{max(1, h // 2)},{max(1, w // 2)}], or "
                "model.overrides in a training config)")
    first = (patch or base_patch, tuple(window or base_window))
    lay = _tile((h, w), *first)
    if _fits(lay, first[1]) and lay.padding_fraction <= MAX_PADDING:
        return first
    extent = (base_window[0] * base_patch, base_window[1] * base_patch)
    fallback: tuple[float, int, tuple[int, int]] | None = None
    for p in [patch] if patch is not None else _patch_chain(base_patch):
        if window is not None:
            win = tuple(window)
        else:
            targets = base_window if patch is not None else (max(1, round(e / p)) for e in extent)
            win = tuple(_axis_window(n, p, t) for n, t in zip(grid, targets))
        lay = _tile((h, w), p, win)
        if not _fits(lay, win):
            continue
        if lay.padding_fraction <= MAX_PADDING:
            return p, win
        if fallback is None or lay.padding_fraction < fallback[0]:
            fallback = (lay.padding_fraction, p, win)
    if fallback is None:
        raise ConfigError(f"window={list(window or ())} is larger than the token grid of {h}x{w} at every patch "
                          f"in {_patch_chain(base_patch)}: use a smaller window")
    return fallback[1], fallback[2]


def _fits(lay: GridLayout, window: tuple[int, int]) -> bool:
    return window[0] <= lay.tokens[0] and window[1] <= lay.tokens[1]


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
                   overrides: Mapping[str, Any] | None = None,
                   grid: tuple[int, int] | None = None) -> SwinConfig:
    """A config from a ladder name (``"s3"``), a :class:`SwinConfig`, or a dict of fields, with overrides.

    A dict needs at least ``embed_dim`` and ``depth``; ``num_heads`` defaults to :func:`default_heads`.
    Overrides replace fields (e.g. ``{"patch": 2, "window": [4, 4]}``); unknown field names raise
    :class:`ConfigError`. With ``grid`` (n_lat, n_lon), the window and patch that neither the dict nor the
    overrides give are fitted to it (:func:`fit_window_patch`); a :class:`SwinConfig` given whole is kept as is.
    """
    cfg = _resolve(size, overrides)
    if grid is None or isinstance(size, SwinConfig):
        return cfg
    given = set(overrides or ()) | (set(size) if isinstance(size, Mapping) else set())
    patch, window = fit_window_patch(tuple(grid), cfg.patch, cfg.window,
                                     patch=cfg.patch if "patch" in given else None,
                                     window=cfg.window if "window" in given else None)
    return dataclasses.replace(cfg, patch=patch, window=window)


def overrides_for_grid(size: str | Mapping[str, Any], overrides: Mapping[str, Any] | None,
                       grid: tuple[int, int]) -> dict[str, Any]:
    """``overrides`` plus the window and patch fitted to ``grid`` where they differ from the config's own.

    The trainer stores these in the run's config.yaml, so the run records the shape the grid chose and
    ``resolve_config(size, overrides_for_grid(...))`` rebuilds it without the grid.
    """
    out = dict(overrides or {})
    plain, fitted = _resolve(size, overrides), resolve_config(size, overrides, grid)
    if fitted.patch != plain.patch:
        out["patch"] = fitted.patch
    if fitted.window != plain.window:
        out["window"] = list(fitted.window)
    return out


def _resolve(size: str | SwinConfig | Mapping[str, Any], overrides: Mapping[str, Any] | None) -> SwinConfig:
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
