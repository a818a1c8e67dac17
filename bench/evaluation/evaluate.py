"""`wxscale eval RUN`: roll a trained model out autoregressively over a split and score it.

    wxscale eval RUN [--lead-steps L] [--max-inits N] [--init-every S] [--out DIR] [--dataset DIR] [--device cuda]

From Python (the demo): ``evaluate_run(run_dir, ...) -> {"rmse", "acc", "spectra", "inits": DataFrame}``.

For each init time t of the split (every ``--init-every`` valid steps, at most ``--max-inits`` of them spread over
the split) the model starts from the true state at t and steps forward L times on its own output; the truth is
the stored states t+1 .. t+L (:func:`data_prep.layout.valid_sample_starts`, so no trajectory crosses a gap).
States are normalised with the dataset's stats.h5 exactly as the training loader does and de-normalised to
physical units before scoring. Scores follow WeatherBench 2 (Rasp et al. 2024), with :mod:`wxscale.metrics`:

- latitude-weighted RMSE per channel and lead: cell-area weights of mean 1, the MSE averaged over inits before
  the square root;
- ACC against the train-split climatology (stats.h5, by day of year and hour of day), per init then averaged;
  left out, and said so, when the dataset has none (a train split shorter than a year);
- baselines: persistence (forecast = the initial state) and climatology (forecast = the climatology; its
  anomaly is zero everywhere, so its ACC is 0/0: reported as 0, the skill of a forecast with no anomaly);
- zonal energy spectra of forecast and truth at a few leads, averaged over inits and over a latitude band
  (default 30-60 N; the whole grid when no latitude lies in it). A blurry forecast loses power at high
  wavenumbers. On a regional grid (data.json ``coords.lon_periodic`` false) the spectra use the DCT
  (``wxscale.metrics.zonal_energy_spectrum``): wavenumber k is then k half-waves across the domain.

Writes into ``--out`` (default ``RUN/eval``), each file atomically: rmse.csv and acc.csv (channel, lead_hours,
model, persistence, climatology), spectra.csv (channel, lead_hours, wavenumber, wavelength_km, forecast, truth;
wavenumbers >= 1), inits.csv (the init times used), eval.json (what was evaluated), rmse_acc.png, spectra.png.
Lead 0 is included: there model and persistence equal the truth (RMSE 0, ACC 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from wxscale.args import float_list
from wxscale.data_prep.layout import (
    FIELDS_KEY,
    SPLITS,
    TIME_KEY,
    DatasetMeta,
    Stats,
    iso,
    load_meta,
    read_stats,
    valid_sample_starts,
)
from wxscale.errors import ConfigError, WxscaleError
from wxscale.files import ensure_writable_dir, save_figure, write_csv, write_json_atomic

DEFAULT_LEAD_STEPS = 20
DEFAULT_BATCH_SIZE = 8
DEFAULT_LAT_BAND = (30.0, 60.0)  # northern mid-latitudes: the storm track (and the Galewsky jet)
BASELINES = ("model", "persistence", "climatology")
OUTPUT_FILES = ("rmse.csv", "acc.csv", "spectra.csv", "inits.csv", "eval.json", "rmse_acc.png", "spectra.png")


# --------------------------------------------------------------------------------------------------------------
# CLI



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run dir written by `wxscale train`")
    parser.add_argument("--checkpoint", default=None, metavar="NAME",
                        help="checkpoint under RUN/checkpoints (default: final, or the last one of a complete run)")
    parser.add_argument("--dataset", default=None, metavar="DIR",
                        help="dataset dir to evaluate on (default: data.dataset of RUN/config.yaml)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to roll out over (default test)")
    parser.add_argument("--lead-steps", type=int, default=None, metavar="L",
                        help=f"autoregressive steps (default {DEFAULT_LEAD_STEPS}, fewer if the split is shorter)")
    parser.add_argument("--init-every", type=int, default=None, metavar="S",
                        help="steps between init times (default: one day of steps, at least 1)")
    parser.add_argument("--max-inits", type=int, default=None, metavar="N",
                        help="at most N init times, spread evenly over the split (default: all)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"init times rolled out together (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--lat-band", type=float_list, default=None, metavar="LO,HI",
                        help="latitude band (deg) of the spectra (default 30,60; the whole grid if empty there; "
                             "a southern band as --lat-band=-60,-30)")
    parser.add_argument("--spectra-leads", type=float_list, default=None, metavar="H,...",
                        help="lead times in hours for the spectra (default: one step, half and all of L)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default RUN/eval)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:i]")
    parser.add_argument("--no-plots", action="store_true", help="CSV and JSON only, no PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    band = args.lat_band
    if band is not None and len(band) != 2:
        raise WxscaleError(f"--lat-band {band}: give two latitudes, e.g. --lat-band 30,60")
    evaluate_run(args.run_dir, split=args.split, lead_steps=args.lead_steps, max_inits=args.max_inits,
                 out=args.out, batch_size=args.batch_size, progress=not args.no_progress, device=args.device,
                 dataset=args.dataset, checkpoint=args.checkpoint, init_every=args.init_every,
                 lat_band=tuple(band) if band else None, spectra_leads_hours=args.spectra_leads,
                 plots=not args.no_plots, verbose=True)
    return 0


# --------------------------------------------------------------------------------------------------------------
# the run: checkpoint, dataset, model


def find_checkpoint(run_dir: Path, name: str | None = None) -> Path:
    """The checkpoint to evaluate: ``name``, else ``final``, else the last checkpoint of a complete run (a trunk
    whose last sample count was a requested checkpoint ends in ``samples_<n>``, not ``final``)."""
    from wxscale.training.checkpoint import STATE, checkpoints_dir, latest_checkpoint

    root = checkpoints_dir(run_dir)
    existing = sorted(p.name for p in root.glob("*") if (p / STATE).is_file()) if root.is_dir() else []
    listed = ", ".join(existing) if existing else "none"
    if name is not None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise WxscaleError(f"--checkpoint {name!r}: give the name of a checkpoint under {root} "
                               f"(checkpoints there: {listed}), not a path")
        if (root / name / STATE).is_file():
            return root / name
        raise WxscaleError(f"--checkpoint {name}: no such checkpoint in {root} (checkpoints there: {listed})")
    if (root / "final" / STATE).is_file():
        return root / "final"
    status, reason = _summary_status(run_dir)
    latest = latest_checkpoint(run_dir)
    if status == "complete" and latest is not None:
        return latest
    state = f"its summary.json says {status!r} ({reason})" if status else "it has no summary.json"
    raise WxscaleError(
        f"run {run_dir} is unfinished: no final checkpoint, and {state}; checkpoints there: {listed}. "
        "Finish it with `wxscale train --config RUN/config.yaml --run-dir RUN --resume`, or evaluate one of its "
        "checkpoints with --checkpoint NAME")


def _summary_status(run_dir: Path) -> tuple[str | None, str | None]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None, None
    try:
        s = json.loads(path.read_text())
    except ValueError:
        return "unreadable", f"{path} is not valid JSON"
    return s.get("status"), s.get("reason")


def _dataset_of(run_dir: Path, cfg, override: str | None) -> tuple[str, DatasetMeta]:
    """The dataset dir and its metadata; a moved dataset names the config key and the flag that fixes it."""
    if override is not None:
        try:
            return str(override), load_meta(override)
        except WxscaleError as err:
            raise WxscaleError(f"--dataset {override}: {err}") from None
    path = cfg.data.dataset
    try:
        return path, load_meta(path)
    except WxscaleError as err:
        raise WxscaleError(
            f"{run_dir / 'config.yaml'}: data.dataset={path} cannot be read ({err}). If the dataset moved, or "
            "the path is relative to another working dir, pass --dataset DIR (the dataset the run was trained "
            "on)") from None


def load_run(run_dir: str | Path, checkpoint: str | None = None, dataset: str | None = None,
             device: str = "cpu"):
    """Rebuild a run's network from ``RUN/config.yaml`` the way the trainer does and load its weights.

    Returns ``(net, dataset_dir, meta, checkpoint_dir, checkpoint_meta)``; ``net`` is in eval mode on ``device``.
    """

    from wxscale.model import build_model, resolve_config
    from wxscale.training.checkpoint import load_checkpoint
    from wxscale.training.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise WxscaleError(f"run dir {run_dir} {what}: give a run dir written by `wxscale train`")
    ckpt = find_checkpoint(run_dir, checkpoint)
    cfg = load_config(run_dir / "config.yaml")
    dataset_dir, meta = _dataset_of(run_dir, cfg, dataset)
    dev = _device(device)

    # The same construction as the trainer's: ladder size + overrides, grid and coordinates from data.json.
    swin = resolve_config(cfg.model.size, cfg.model.overrides or None, grid=meta.grid)
    try:
        state, cmeta = load_checkpoint(ckpt, map_location="cpu")  # weights-only: a crafted state.pt runs nothing
    except WxscaleError as err:
        others = sorted(p.name for p in ckpt.parent.iterdir()
                        if p.is_dir() and p != ckpt and not p.name.startswith("."))
        raise WxscaleError(f"{err}. Evaluate another checkpoint of the run with --checkpoint NAME "
                           f"(others there: {', '.join(others) or 'none'})") from None
    if cmeta.get("channels") != list(meta.channels):
        raise ConfigError(f"checkpoint {ckpt} was trained on channels {cmeta.get('channels')} but {dataset_dir} "
                          f"has {list(meta.channels)}; evaluate on the run's own dataset (--dataset DIR)")
    if cmeta.get("model_config") not in (None, swin.to_dict()):
        raise ConfigError(f"checkpoint {ckpt} holds another model ({cmeta.get('model_config')}) than "
                          f"{run_dir / 'config.yaml'} describes (model.size={cfg.model.size}, overrides "
                          f"{cfg.model.overrides})")
    net = build_model(swin, grid=meta.grid, in_channels=meta.n_channels, lat_deg=np.asarray(meta.lat),
                      lon_deg=np.asarray(meta.lon), periodic_lon=meta.lon_periodic)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as err:
        raise WxscaleError(f"checkpoint {ckpt} does not fit the model for {dataset_dir} ({err})") from None
    return net.to(dev).eval(), dataset_dir, meta, ckpt, cmeta


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise WxscaleError(f"--device {name}: not a torch device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WxscaleError(f"--device {name}: torch sees no CUDA device here; use --device cpu")
    return dev


# --------------------------------------------------------------------------------------------------------------
# init times


def max_lead_steps(dataset_dir: str | Path, meta: DatasetMeta, split: str) -> int:
    """The longest rollout the split allows: the longest run of equally spaced steps in one shard, minus 1."""
    best = 0
    for shard in meta.shards_of(split):
        with h5py.File(Path(dataset_dir) / shard.path, "r") as f:
            t = f[TIME_KEY][:]
        run = 0
        for ok in np.diff(t) == meta.dhours:
            run = run + 1 if ok else 0
            best = max(best, run)
    return best


def select_inits(dataset_dir: str | Path, meta: DatasetMeta, split: str, lead_steps: int, init_every: int,
                 max_inits: int | None) -> pd.DataFrame:
    """Init times with L true steps after them: columns shard (path), index, time_hours, time.

    Every ``init_every``-th valid start of each shard; then at most ``max_inits`` of them, evenly spread over
    the split (so a cap does not keep only its first days).
    """
    rows = []
    for shard in meta.shards_of(split):
        with h5py.File(Path(dataset_dir) / shard.path, "r") as f:
            t = f[TIME_KEY][:]
        for i in valid_sample_starts(t, meta.dhours, lead_steps)[::init_every]:
            rows.append((shard.path, int(i), int(t[i])))
    if not rows:
        if not meta.shards_of(split):
            raise WxscaleError(f"{dataset_dir} has no {split} split; choose another with --split")
        longest = max_lead_steps(dataset_dir, meta, split)
        raise WxscaleError(
            f"the {split} split of {dataset_dir} is too short for --lead-steps {lead_steps} "
            f"({lead_steps * meta.dhours} h): its longest gap-free stretch allows at most {longest} steps "
            f"({longest * meta.dhours} h); use --lead-steps {longest} or less")
    if max_inits is not None and len(rows) > max_inits:
        keep = np.unique(np.linspace(0, len(rows) - 1, max_inits).round().astype(int))
        rows = [rows[i] for i in keep]
    df = pd.DataFrame(rows, columns=["shard", "index", "time_hours"])
    df["time"] = [iso(h) for h in df["time_hours"]]
    return df


def _lat_band(lat: np.ndarray, band: tuple[float, float] | None) -> tuple[float, float]:
    """The band of the spectra: the one asked for (it must hold a latitude of the grid), else 30-60 N when the
    grid has latitudes there, else the whole grid."""
    if band is not None:
        lo, hi = min(band), max(band)
        if not np.any((lat >= lo) & (lat <= hi)):
            raise WxscaleError(f"--lat-band {lo:g},{hi:g}: no latitude of the grid lies in it (the grid spans "
                               f"{lat.min():g} .. {lat.max():g} deg)")
        return lo, hi
    lo, hi = DEFAULT_LAT_BAND
    if np.any((lat >= lo) & (lat <= hi)):
        return lo, hi
    return float(lat.min()), float(lat.max())


# --------------------------------------------------------------------------------------------------------------
# rollout and scores


@dataclasses.dataclass
class Evaluation:
    """Tables (rmse, acc when there is a climatology, spectra, inits) and what was evaluated (info)."""

    tables: dict[str, pd.DataFrame]
    info: dict


def evaluate_model(model: Callable, dataset_dir: str | Path, *, split: str = "test",
                   lead_steps: int | None = None, init_every: int | None = None, max_inits: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                   lat_band: tuple[float, float] | None = None, spectra_leads_hours: Sequence[float] | None = None,
                   progress: bool = True, meta: DatasetMeta | None = None, stats: Stats | None = None) -> Evaluation:
    """Roll ``model`` (normalised state [B, C, H, W] -> next normalised state, a torch module or any callable)
    out over ``split`` of ``dataset_dir`` and score it against the truth and the baselines (module docstring).

    ``lead_steps=None`` takes up to :data:`DEFAULT_LEAD_STEPS`, fewer if the split is shorter; an explicit value
    the split cannot serve raises :class:`WxscaleError` with the maximum it can.
    """
    import torch

    from wxscale.metrics import acc, area_weights, weighted_mse, zonal_energy_spectrum

    meta = meta if meta is not None else load_meta(dataset_dir)
    stats = stats if stats is not None else read_stats(dataset_dir, with_climatology=True)
    for flag, v in (("--lead-steps", lead_steps), ("--init-every", init_every), ("--max-inits", max_inits),
                    ("--batch-size", batch_size)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise WxscaleError(f"{flag} {v!r}: must be a positive integer")
    notes = []
    if lead_steps is None:
        lead_steps = min(DEFAULT_LEAD_STEPS, max_lead_steps(dataset_dir, meta, split)) or DEFAULT_LEAD_STEPS
        if lead_steps < DEFAULT_LEAD_STEPS:
            notes.append(f"lead steps cut to {lead_steps}: the longest the {split} split allows")
    L, dh = int(lead_steps), meta.dhours
    init_every = init_every or max(1, round(24 / dh))
    inits = select_inits(dataset_dir, meta, split, L, init_every, max_inits)
    lat = np.asarray(meta.lat, dtype=np.float64)
    band = _lat_band(lat, lat_band)
    spec_steps = _spectra_steps(spectra_leads_hours, L, dh)
    has_clim = stats.climatology is not None
    if not has_clim:
        notes.append("no ACC and no climatology baseline: the dataset has no climatology (stats.h5 holds one only "
                     "when the train split spans a year)")
    dev = _device(device)

    w = area_weights(lat)
    mean = np.asarray(stats.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(stats.std, dtype=np.float32).reshape(-1, 1, 1)
    inv_std = np.float32(1) / std  # (x - mean) * (1 / std) in float32, as data_prep.loader normalises
    C = meta.n_channels
    se = {b: np.zeros((L + 1, C)) for b in BASELINES}  # sums over inits of the weighted MSE
    ac = {b: np.zeros((L + 1, C)) for b in BASELINES}  # sums over inits of the ACC
    spec_f = spec_t = None
    n = 0

    files: dict[str, h5py.File] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(inits), desc=f"eval {split}", unit="init", dynamic_ncols=True, file=sys.stderr)
    t_start = time.perf_counter()
    try:
        for b0 in range(0, len(inits), batch_size):
            batch = inits.iloc[b0:b0 + batch_size]
            truth = np.stack([_read(files, Path(dataset_dir), s, i, L) for s, i in zip(batch["shard"],
                                                                                      batch["index"])])
            B = truth.shape[0]  # truth [B, L + 1, C, H, W], physical units
            fc = np.empty_like(truth)
            fc[:, 0] = truth[:, 0]
            x = torch.from_numpy((truth[:, 0] - mean) * inv_std).to(dev)
            with torch.no_grad():
                for k in range(1, L + 1):
                    x = model(x)
                    fc[:, k] = x.float().cpu().numpy() * std + mean
            o, f = truth.astype(np.float64), fc.astype(np.float64)
            p = o[:, :1]  # persistence: the initial state at every lead
            se["model"] += weighted_mse(f, o, w).sum(axis=0)
            se["persistence"] += weighted_mse(p, o, w).sum(axis=0)
            if has_clim:
                hours = batch["time_hours"].to_numpy()[:, None] + dh * np.arange(L + 1)[None, :]
                c = stats.climatology_at(hours.ravel()).reshape(o.shape).astype(np.float64)
                se["climatology"] += weighted_mse(c, o, w).sum(axis=0)
                ac["model"] += acc(f, o, c, w) * B
                ac["persistence"] += acc(np.broadcast_to(p, o.shape), o, c, w) * B
            if spec_steps:
                zonal = dict(lat_band=band, periodic_lon=meta.lon_periodic, lon_deg=meta.lon)  # DCT if regional
                _, _, sf = zonal_energy_spectrum(f[:, spec_steps], lat, **zonal)  # [B, S, C, K]
                kk, wl, st = zonal_energy_spectrum(o[:, spec_steps], lat, **zonal)
                spec_f = sf.sum(axis=0) if spec_f is None else spec_f + sf.sum(axis=0)
                spec_t = st.sum(axis=0) if spec_t is None else spec_t + st.sum(axis=0)
            n += B
            if bar is not None:
                bar.update(B)
    finally:
        for fh in files.values():
            fh.close()
        if bar is not None:
            bar.close()

    channels = list(meta.channels)
    leads = np.arange(L + 1) * dh
    grid = {"channel": np.repeat(channels, L + 1), "lead_hours": np.tile(leads, C)}

    def table(values: dict[str, np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame({**grid, **{b: values[b].T.ravel() for b in BASELINES}})

    rmse = {b: np.sqrt(se[b] / n) for b in BASELINES}  # MSE averaged over inits, then the root (WB2)
    if not has_clim:
        rmse["climatology"] = np.full((L + 1, C), np.nan)
    tables = {"rmse": table(rmse)}
    if has_clim:
        # The climatology forecast has zero anomaly: ACC is 0/0; 0 is the skill of a forecast without anomaly.
        tables["acc"] = table({"model": ac["model"] / n, "persistence": ac["persistence"] / n,
                               "climatology": np.zeros((L + 1, C))})
    spectra = []
    if spec_steps:
        keep = kk >= 1  # k = 0 is the band mean: no wavelength
        for j, s in enumerate(spec_steps):
            for ci, ch in enumerate(channels):
                spectra.append(pd.DataFrame({
                    "channel": ch, "lead_hours": s * dh, "wavenumber": kk[keep],
                    "wavelength_km": wl[keep] / 1e3,
                    "forecast": spec_f[j, ci, keep] / n, "truth": spec_t[j, ci, keep] / n}))
    tables["spectra"] = pd.concat(spectra, ignore_index=True) if spectra else pd.DataFrame(
        columns=["channel", "lead_hours", "wavenumber", "wavelength_km", "forecast", "truth"])
    tables["inits"] = inits
    info = {"dataset": str(dataset_dir), "split": split, "lead_steps": L, "dhours": dh, "init_every": init_every,
            "n_inits": n, "first_init": inits["time"].iloc[0], "last_init": inits["time"].iloc[-1],
            "climatology": has_clim, "lat_band_deg": list(band), "spectra_lead_hours": [s * dh for s in spec_steps],
            "channels": channels, "device": str(dev), "wall_s": time.perf_counter() - t_start, "notes": notes}
    return Evaluation(tables, info)


def _read(files: dict[str, h5py.File], root: Path, shard: str, index: int, L: int) -> np.ndarray:
    if shard not in files:
        files[shard] = h5py.File(root / shard, "r")
    return files[shard][FIELDS_KEY][index:index + L + 1]


def _spectra_steps(hours: Sequence[float] | None, L: int, dh: int) -> list[int]:
    if hours is None:
        return sorted({1, max(1, L // 2), L})
    steps = []
    for h in hours:
        k = h / dh
        if k != round(k) or not 1 <= k <= L:
            raise WxscaleError(f"--spectra-leads {h:g}: must be a multiple of the data's {dh} h between {dh} and "
                               f"{L * dh} h (the rollout's length)")
        steps.append(int(round(k)))
    return sorted(set(steps))


# --------------------------------------------------------------------------------------------------------------
# outputs


def write_outputs(ev: Evaluation, out: str | Path, title: str = "", plots: bool = True) -> list[Path]:
    """CSV tables, eval.json and (``plots``) the two PNGs into ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in ev.tables.items():
        write_csv(out / f"{name}.csv", df)
        written.append(out / f"{name}.csv")
    write_json_atomic(out / "eval.json", ev.info)
    written.append(out / "eval.json")
    if plots:
        written.append(plot_rmse_acc(ev.tables["rmse"], ev.tables.get("acc"), out / "rmse_acc.png", title))
        if len(ev.tables["spectra"]):
            written.append(plot_spectra(ev.tables["spectra"], out / "spectra.png", ev.info["lat_band_deg"], title))
    # An earlier evaluation's files that this one did not rewrite (acc.csv of a dataset with a climatology,
    # PNGs before --no-plots) would pass for results of this one.
    for name in OUTPUT_FILES:
        if out / name not in written:
            (out / name).unlink(missing_ok=True)
    return written


def plot_rmse_acc(rmse: pd.DataFrame, acc_df: pd.DataFrame | None, path: Path, title: str = "") -> Path:
    """One column per channel: RMSE (top) and ACC (bottom) against lead, model against the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = list(dict.fromkeys(rmse["channel"]))
    rows = [("RMSE", rmse)] + ([("ACC", acc_df)] if acc_df is not None else [])
    fig, axes = plt.subplots(len(rows), len(channels), figsize=(3.6 * len(channels), 3.0 * len(rows)),
                             squeeze=False)
    styles = {"model": dict(color="C0", lw=2), "persistence": dict(color="C1", ls="--"),
              "climatology": dict(color="C2", ls=":")}
    for r, (label, df) in enumerate(rows):
        for c, ch in enumerate(channels):
            ax, sub = axes[r, c], df[df["channel"] == ch]
            for b in BASELINES:
                if sub[b].notna().any():
                    ax.plot(sub["lead_hours"], sub[b], label=b, **styles[b])
            ax.set_xlabel("lead (h)")
            ax.set_ylabel(label)
            ax.set_title(f"{ch}: {label}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_spectra(spectra: pd.DataFrame, path: Path, band: Sequence[float], title: str = "") -> Path:
    """One panel per channel: zonal energy spectra of forecast (dashed) and truth (solid) at each lead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    channels = list(dict.fromkeys(spectra["channel"]))
    leads = sorted(spectra["lead_hours"].unique())
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(leads)))
    fig, axes = plt.subplots(1, len(channels), figsize=(3.8 * len(channels), 3.3), squeeze=False)
    for ax, ch in zip(axes[0], channels):
        for colour, lead in zip(colours, leads):
            sub = spectra[(spectra["channel"] == ch) & (spectra["lead_hours"] == lead)]
            ax.loglog(sub["wavenumber"], sub["truth"], color=colour, lw=1, label=f"truth {lead:g} h")
            ax.loglog(sub["wavenumber"], sub["forecast"], color=colour, ls="--", lw=1.5, label=f"model {lead:g} h")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # plain wavenumbers, not 2x10^0
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("zonal wavenumber")
        ax.set_ylabel("energy (units$^2$ m)")
        ax.set_title(f"{ch}, latitudes {band[0]:g}..{band[1]:g} deg")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def summary_table(ev: Evaluation, max_rows: int = 4) -> str:
    """RMSE (and ACC) of model and baselines at a few leads per channel, as text."""
    rmse = ev.tables["rmse"]
    L, dh = ev.info["lead_steps"], ev.info["dhours"]
    leads = sorted({dh * s for s in (1, max(1, L // 4), max(1, L // 2), L)})[:max_rows]
    df = rmse[rmse["lead_hours"].isin(leads)].rename(columns={b: f"rmse_{b}" for b in BASELINES})
    if "acc" in ev.tables:
        a = ev.tables["acc"]
        a = a[a["lead_hours"].isin(leads)][["channel", "lead_hours", "model", "persistence"]]
        df = df.merge(a.rename(columns={"model": "acc_model", "persistence": "acc_persistence"}),
                      on=["channel", "lead_hours"])
    else:
        df = df.drop(columns=["rmse_climatology"])
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")


# --------------------------------------------------------------------------------------------------------------
# the API the demo calls


def evaluate_run(run_dir: str | Path, *, split: str = "test", lead_steps: int | None = None,
                 max_inits: int | None = None, out: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True, device: str = "cpu",
                 dataset: str | None = None, checkpoint: str | None = None, init_every: int | None = None,
                 lat_band: tuple[float, float] | None = None, spectra_leads_hours: Sequence[float] | None = None,
                 plots: bool = True, verbose: bool = False) -> dict[str, pd.DataFrame]:
    """Evaluate a run's final checkpoint (``wxscale eval``): returns the tables ``rmse``, ``acc`` (only with a
    climatology), ``spectra`` and ``inits``, and writes them with the plots into ``out`` (default RUN/eval).

    ``lead_steps=None``: up to 20 steps, fewer if the split is shorter. ``plots=False`` skips the PNGs;
    ``verbose`` prints the summary table.
    """
    net, dataset_dir, meta, ckpt, cmeta = load_run(run_dir, checkpoint, dataset, device)
    ev = evaluate_model(net, dataset_dir, split=split, lead_steps=lead_steps, init_every=init_every,
                        max_inits=max_inits, batch_size=batch_size, device=device, lat_band=lat_band,
                        spectra_leads_hours=spectra_leads_hours, progress=progress, meta=meta)
    ev.info.update(run_dir=str(run_dir), checkpoint=str(ckpt), samples=cmeta.get("samples"),
                   params=cmeta.get("params"))
    out = Path(out) if out is not None else Path(run_dir) / "eval"
    ensure_writable_dir(out, "--out")  # before the rollout, not after it
    title = f"{Path(run_dir).name} ({ckpt.name}), {split} split, {ev.info['n_inits']} inits"
    written = write_outputs(ev, out, title, plots)
    if verbose:
        print(f"wxscale eval: {run_dir} checkpoint {ckpt.name} on the {split} split of {dataset_dir}: "
              f"{ev.info['n_inits']} inits ({ev.info['first_init']} .. {ev.info['last_init']}), "
              f"{ev.info['lead_steps']} steps of {ev.info['dhours']} h")
        for note in ev.info["notes"]:
            print(f"note: {note}")
        print(summary_table(ev))
        print("wrote " + ", ".join(str(p) for p in written))
    if not np.isfinite(ev.tables["rmse"]["model"].to_numpy()).all():
        print("warning: the model's rollout produced non-finite values (see rmse.csv)", file=sys.stderr)
    return ev.tables
