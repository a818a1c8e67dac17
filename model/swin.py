"""A single-stage Swin Transformer emulator on a latitude-longitude grid.

The seed paper's minimal, scalable design: patch embedding -> a stack of identical Swin blocks at one
resolution (no patch merging) -> linear head back to the grid. Each block is pre-norm windowed multi-head
self-attention followed by a pre-norm MLP (Liu et al. 2021, "Swin Transformer"); every second block shifts
its windows by half a window so information moves between windows. On the sphere:

- longitude is periodic on a global grid: the shift rolls the token grid (a precomputed gather, like
  ``torch.roll``), so a shifted window wraps the date line;
- latitude is not: rows rolled from the north edge to the south edge form their own region, and a mask keeps
  them from attending to the south rows they now share a window with (Swin's cyclic-shift mask);
- on a regional grid (``periodic_lon=False``) longitude is masked the same way: the columns rolled from the
  west edge to the east edge form their own region, so nothing travels between the two edges;
- a token grid that is not a multiple of the window is padded at its south and east ends, and the padding is
  masked out of attention as keys (its query rows are never gathered back).

Input ``x`` is ``[B, C, H, W]`` (normalised state, latitude north to south); the static fields (cos/sin of
latitude and longitude, optional land-sea mask or orography) are concatenated as extra input channels. The
model predicts the next state, or ``x + f(x)`` when ``cfg.predict_increment``. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``. The module does no I/O and knows nothing of devices or
ranks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wxscale.errors import ConfigError
from wxscale.model.config import GridLayout, SwinConfig, grid_layout
from wxscale.model.flops import ModelFlops, model_flops
from wxscale.model.norms import make_norm, norm_backend

# ----------------------------------------------------------------------------------------------------
# Static input fields


def default_lat_lon(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre latitudes (north to south) and longitudes (from 0 east) of a regular grid, in degrees."""
    n_lat, n_lon = grid
    lat = 90.0 - (np.arange(n_lat) + 0.5) * 180.0 / n_lat
    lon = np.arange(n_lon) * 360.0 / n_lon
    return lat, lon


def static_fields(coords: str, lat_deg: np.ndarray, lon_deg: np.ndarray,
                  static: np.ndarray | None = None) -> np.ndarray:
    """``[S, H, W]`` float32: the coordinate channels ``coords`` asks for, then ``static`` standardised.

    Standardising (zero mean, unit std) keeps orography in metres on the same scale as the normalised state.
    """
    n_lat, n_lon = len(lat_deg), len(lon_deg)
    lat = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))[:, None] * np.ones((1, n_lon))
    lon = np.deg2rad(np.asarray(lon_deg, dtype=np.float64))[None, :] * np.ones((n_lat, 1))
    fields = []
    if coords in ("lat", "latlon"):
        fields += [np.cos(lat), np.sin(lat)]
    if coords == "latlon":
        fields += [np.cos(lon), np.sin(lon)]
    if static is not None:
        for f in np.asarray(static, dtype=np.float64):
            std = f.std()
            fields.append((f - f.mean()) / (std if std > 0 else 1.0))
    if not fields:
        return np.zeros((0, n_lat, n_lon), dtype=np.float32)
    return np.stack(fields).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Patches and windows


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H/p, W/p, C*p*p]`` (non-overlapping p x p patches, channels-last tokens)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, h // p, w // p, c * p * p)


def unpatchify(t: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, Ht, Wt, C*p*p]`` -> ``[B, C, Ht*p, Wt*p]``."""
    b, ht, wt, _ = t.shape
    t = t.view(b, ht, wt, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, ht * p, wt * p)


def window_mask(layout: GridLayout, window: tuple[int, int], shift: tuple[int, int],
                periodic_lon: bool = True) -> torch.Tensor | None:
    """``[n_windows, S, S]`` bool, True where query token q may attend to key token k; None if all may.

    Built on the token grid as a block sees it: rolled north by ``shift[0]`` rows and west by ``shift[1]``
    columns, then padded south and east. Region ids: 0 for ordinary tokens, +1 for the rows that wrapped from
    the north edge to the south, +2 for the columns that wrapped from the west edge to the east when longitude
    is not periodic, -1 for padding. A real query attends only to keys of its own region; padding queries
    attend to everything (their output is cropped; a row with every key masked would give NaN, which would
    poison the backward pass).
    """
    (ht, wt), (hp, wp) = layout.tokens, layout.padded_tokens
    lat_shift, lon_shift = shift[0], 0 if periodic_lon else shift[1]
    if lat_shift == 0 and lon_shift == 0 and (ht, wt) == (hp, wp):
        return None
    region = torch.zeros(hp, wp, dtype=torch.long)
    if lat_shift:
        region[ht - lat_shift:ht, :wt] += 1
    if lon_shift:
        region[:ht, wt - lon_shift:wt] += 2
    region[ht:, :] = -1
    region[:, wt:] = -1
    wh, ww = window
    win = region.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    same = win[:, :, None] == win[:, None, :]
    return same | (win < 0)[:, :, None]


def window_index(layout: GridLayout, window: tuple[int, int],
                 shift: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices between the token grid and the windows of a block.

    ``win_index`` [n_windows * S]: for each window slot (windows in row-major order, tokens row-major inside),
    the flat token index it holds, after rolling the grid by ``-shift`` (the wrapped rows, and the wrapped
    columns of a regional grid, are masked by :func:`window_mask`) and padding it south and east. Padding slots
    point at token 0: they are masked as keys and their outputs are never gathered back. ``tok_index`` [T]: the
    slot of each token.
    """
    (ht, wt), (hp, wp) = layout.tokens, layout.padded_tokens
    wh, ww = window
    rows = (torch.arange(hp) + shift[0]) % ht
    cols = (torch.arange(wp) + shift[1]) % wt
    grid = rows[:, None] * wt + cols[None, :]
    grid[ht:, :] = 0
    grid[:, wt:] = 0
    slots = torch.arange(hp * wp).view(hp // wh, wp // ww, wh, ww).permute(0, 2, 1, 3).reshape(hp, wp)
    win_index = torch.empty(hp * wp, dtype=torch.long)
    win_index[slots.flatten()] = grid.flatten()
    tok_index = torch.empty(ht * wt, dtype=torch.long)
    tok_index[grid[:ht, :wt].flatten()] = slots[:ht, :wt].flatten()
    return win_index, tok_index


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``[S*S]`` index into a ``(2wh-1)(2ww-1)`` bias table for every (query, key) pair of a window (Swin)."""
    wh, ww = window
    ii, jj = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    pos = torch.stack([ii.flatten(), jj.flatten()])  # [2, S]
    rel = pos[:, :, None] - pos[:, None, :]  # [2, S, S], in [-(w-1), w-1]
    return ((rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1).flatten()


# ----------------------------------------------------------------------------------------------------
# The network


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP on a ``[B, Ht, Wt, D]`` token grid."""

    def __init__(self, cfg: SwinConfig, layout: GridLayout, shifted: bool, periodic_lon: bool = True) -> None:
        super().__init__()
        d, self.n_heads = cfg.embed_dim, cfg.num_heads
        self.window, self.layout = cfg.window, layout
        # Half-window shifts (Swin); a window of 1 along an axis has nothing to shift.
        self.shift = (cfg.window[0] // 2, cfg.window[1] // 2) if shifted else (0, 0)
        self.norm1 = make_norm(cfg.norm, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = make_norm(cfg.norm, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg.norm, cfg.head_dim) if cfg.qk_norm else None
        self.proj = nn.Linear(d, d)
        self.norm2 = make_norm(cfg.norm, d)
        self.mlp = MLP(d, cfg.hidden_dim)
        wh, ww = cfg.window
        if cfg.rel_pos_bias:
            self.rel_bias = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), cfg.num_heads))
            self.register_buffer("rel_index", relative_position_index(cfg.window), persistent=False)
        else:
            self.rel_bias = None
        mask = window_mask(layout, cfg.window, self.shift, periodic_lon)
        # Additive form (0 or -inf) so it sums with the position bias; bool when there is no bias to add.
        if mask is not None and cfg.rel_pos_bias:
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        self.register_buffer("mask", mask, persistent=False)
        win_index, tok_index = window_index(layout, cfg.window, self.shift)
        self.register_buffer("win_index", win_index, persistent=False)
        self.register_buffer("tok_index", tok_index, persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, ht, wt, d = x.shape
        n_heads, hd, n_win = self.n_heads, d // self.n_heads, self.layout.n_windows
        s = self.window[0] * self.window[1]
        # One gather of token rows does the shift, the padding and the window partition ([B, windows*S, 3D]);
        # then split q/k/v and heads: [3, B, heads*windows, S, hd], heads outer.
        qkv = self.qkv(x).view(b, ht * wt, 3 * d).index_select(1, self.win_index)
        qkv = qkv.view(b, n_win, s, 3, n_heads, hd).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.reshape(3, b, n_heads * n_win, s, hd).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        bias = self._attn_bias()
        if bias is not None and bias.dtype != torch.bool:
            bias = bias.to(q.dtype)  # under autocast q is bf16 and SDPA wants the bias in the same dtype
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # [B, heads*windows, S, hd] -> [B, windows*S, D] -> gather the real tokens back, in grid order
        o = o.view(b, n_heads, n_win * s, hd).transpose(1, 2).reshape(b, n_win * s, d)
        return self.proj(o.index_select(1, self.tok_index).view(b, ht, wt, d))

    def _attn_bias(self) -> torch.Tensor | None:
        """None or ``[1, heads*windows, S, S]`` (heads outer, as q is laid out)."""
        s, n_win = self.window[0] * self.window[1], self.layout.n_windows
        bias = None
        if self.rel_bias is not None:
            bias = self.rel_bias[self.rel_index].view(s, s, self.n_heads).permute(2, 0, 1)[:, None]
        if self.mask is not None:
            bias = self.mask[None] if bias is None else bias + self.mask[None]
        if bias is None:
            return None
        return bias.expand(self.n_heads, n_win, s, s).reshape(1, self.n_heads * n_win, s, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SwinEmulator(nn.Module):
    """Patch embedding -> ``depth`` Swin blocks -> norm -> linear head; see the module docstring."""

    def __init__(self, cfg: SwinConfig, grid: tuple[int, int], in_channels: int, static: np.ndarray,
                 periodic_lon: bool = True) -> None:
        super().__init__()
        self.cfg, self.grid, self.in_channels = cfg, tuple(grid), in_channels
        self.periodic_lon = bool(periodic_lon)
        self.layout = grid_layout(cfg, self.grid)
        self.static_channels = static.shape[0] - cfg.coord_channels  # extra static fields beyond coordinates
        self.register_buffer("static", torch.from_numpy(static), persistent=False)
        p, d = cfg.patch, cfg.embed_dim
        self.embed = nn.Linear((in_channels + static.shape[0]) * p * p, d)
        self.blocks = nn.ModuleList(
            SwinBlock(cfg, self.layout, shifted=cfg.shift and i % 2 == 1, periodic_lon=self.periodic_lon)
            for i in range(cfg.depth))
        self.norm = make_norm(cfg.norm, d)
        self.head = nn.Linear(d, in_channels * p * p)
        self.apply(self._init_weights)
        self.norm_backend = norm_backend()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # ViT/Swin init: truncated normal(0.02) weights, zero biases; norms keep ones/zeros.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, SwinBlock) and m.rel_bias is not None:
            nn.init.trunc_normal_(m.rel_bias, std=0.02)

    def flops(self, rollout_steps: int = 1) -> ModelFlops:
        """Analytic parameter and FLOP counts of this network (see :mod:`wxscale.model.flops`)."""
        return model_flops(self.cfg, self.grid, self.in_channels, rollout_steps, self.static_channels,
                           periodic_lon=self.periodic_lon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.in_channels, *self.grid):
            raise ValueError(f"input of shape {tuple(x.shape)}; this model was built for "
                             f"[B, {self.in_channels}, {self.grid[0]}, {self.grid[1]}]")
        p = self.cfg.patch
        hp, wp = self.layout.padded_grid
        z = torch.cat([x, self.static.to(x.dtype).expand(b, -1, -1, -1)], dim=1)
        if (hp, wp) != (h, w):
            z = F.pad(z, (0, wp - w, 0, hp - h))  # south and east, to a multiple of the patch
        t = self.embed(patchify(z, p))
        for blk in self.blocks:
            if self.cfg.checkpoint and self.training and torch.is_grad_enabled():
                t = checkpoint(blk, t, use_reentrant=False)
            else:
                t = blk(t)
        y = unpatchify(self.head(self.norm(t)), p, c)[:, :, :h, :w]
        return x + y if self.cfg.predict_increment else y


def build_model(cfg: SwinConfig, grid: tuple[int, int], in_channels: int, lat_deg: np.ndarray | None = None,
                lon_deg: np.ndarray | None = None, static: np.ndarray | None = None,
                periodic_lon: bool = True) -> SwinEmulator:
    """The emulator for ``grid`` = (n_lat, n_lon) and ``in_channels`` state channels.

    ``lat_deg``/``lon_deg`` (1-d, degrees; default: a regular grid, north to south) give the coordinate
    channels; ``static`` ``[S, n_lat, n_lon]`` adds extra static fields (land-sea mask, orography).
    ``periodic_lon=False`` is for a regional grid, whose east and west edges are not neighbours: shifted
    windows then mask the longitude wrap as they mask the latitude wrap (the caller says which; the dataset
    dir records it). Weights are initialised from torch's global RNG, so ``torch.manual_seed`` makes them
    reproducible.
    """
    if not isinstance(cfg, SwinConfig):
        raise ConfigError(f"build_model needs a SwinConfig (use resolve_config), got {type(cfg).__name__}")
    grid = tuple(int(g) for g in grid)
    lay = grid_layout(cfg, grid)  # validates the grid against patch and window
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels={in_channels!r}: must be a positive integer")
    dlat, dlon = default_lat_lon(lay.grid)
    lat = dlat if lat_deg is None else np.asarray(lat_deg, dtype=np.float64).ravel()
    lon = dlon if lon_deg is None else np.asarray(lon_deg, dtype=np.float64).ravel()
    if lat.shape != (grid[0],) or lon.shape != (grid[1],):
        raise ConfigError(f"lat_deg/lon_deg have {lat.size}/{lon.size} values for a {grid[0]}x{grid[1]} grid")
    if static is not None:
        static = np.asarray(static)
        if static.ndim == 2:
            static = static[None]
        if static.ndim != 3 or static.shape[1:] != grid:
            raise ConfigError(f"static fields have shape {static.shape}: need [S, {grid[0]}, {grid[1]}]")
        if not np.isfinite(static).all():
            raise ConfigError("static fields contain NaN or inf: fill them before building the model")
    if not isinstance(periodic_lon, (bool, np.bool_)):
        raise ConfigError(f"periodic_lon={periodic_lon!r}: must be true or false")
    return SwinEmulator(cfg, grid, in_channels, static_fields(cfg.coords, lat, lon, static), bool(periodic_lon))
