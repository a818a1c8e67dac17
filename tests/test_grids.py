"""Grids as they come: whether a dataset's grid wraps in longitude (data.json), and a regional dataset trained,
planned and evaluated with the window and patch the ladder fits to its grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import tiny_config
from wxscale.data_prep.layout import load_meta, lon_wraps
from wxscale.files import write_json_atomic

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.mark.parametrize("lon, wraps", [
    (np.arange(144) * 2.5, True),  # 0 .. 357.5
    (np.arange(-180, 180, 2.5), True),
    (np.arange(0, 360.1, 2.5), True),  # the first longitude repeated at 360
    (np.arange(1440) * 0.25, True),
    (np.arange(120) * 3.0, True),
    (np.arange(-70, 10.1, 2.5), False),  # the North Atlantic file: 70W..10E
    (np.arange(350, 370, 1.0) % 360, False),  # regional across the 0 meridian
    (np.arange(119) * 3.0, False),  # one column short of the circle: a 6-degree gap
    (np.array([10.0]), False),
])
def test_lon_wraps_decides_from_the_coordinates(lon, wraps):
    assert lon_wraps(lon) is wraps


def _regionalise(path: Path, lon: list[float], keep_key: bool = False) -> None:
    """Give a tiny dataset regional longitudes; without the key, as a dataset written before it existed."""
    d = json.loads((path / "data.json").read_text())
    d["coords"]["lon"] = lon
    if keep_key:
        d["coords"]["lon_periodic"] = False
    else:
        d["coords"].pop("lon_periodic", None)
    write_json_atomic(path / "data.json", d)


def test_data_json_records_the_wrap_and_old_datasets_get_it_from_lon(tmp_path):
    path = make_tiny_dataset(tmp_path / "d", grid=(8, 16), n_steps=40, gaps=())
    assert json.loads((path / "data.json").read_text())["coords"]["lon_periodic"] is True
    _regionalise(path, list(json.loads((path / "data.json").read_text())["coords"]["lon"]))
    assert load_meta(path).lon_periodic is True  # no key: decided from the stored (global) longitudes
    _regionalise(path, [-70.0 + 5 * i for i in range(16)])
    assert load_meta(path).lon_periodic is False
    d = json.loads((path / "data.json").read_text())
    d["coords"]["lon"] = [22.5 * i for i in range(16)]
    d["coords"]["lon_periodic"] = False  # a stored decision wins over the default
    write_json_atomic(path / "data.json", d)
    assert load_meta(path).lon_periodic is False


REAL_FILES = [
    ("ncep_msl_z500_europe_daily_2000_2002.nc", False),
    ("ncep_slp_natl_daily_2001_2010.nc", False),
    ("ncl_storm_jan1996_6hourly.nc", False),
    ("era5-2mt-2019-03-uk.grib", False),
    ("wfde5_uk_hourly_2017-01_air_temperature.nc", False),
    ("wfde5_uk_hourly_2017-01_wind_speed.nc", False),
    ("era5-levels-members.grib", True),
]


@pytest.mark.real
@pytest.mark.parametrize("name, wraps", REAL_FILES)
def test_six_of_the_seven_real_files_are_regional(name, wraps):
    import xarray as xr

    p = REAL / name
    if not p.is_file():
        pytest.skip(f"{p} not present (../shared/data is not part of a fresh clone)")
    kw = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}} if p.suffix == ".grib" else {}
    with xr.open_dataset(p, **kw) as ds:
        lon = next(ds[n].values for n in ("lon", "longitude") if n in ds.coords)
    assert lon_wraps(lon) is wraps


@pytest.mark.real
def test_prep_records_a_regional_grid(tmp_path, capsys):
    from wxscale.cli import main as cli

    p = REAL / "ncep_msl_z500_europe_daily_2000_2002.nc"
    if not p.is_file():
        pytest.skip(f"{p} not present (../shared/data is not part of a fresh clone)")
    assert cli(["prep", "--no-progress", "--input", str(p), "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "data.json").read_text())["coords"]["lon_periodic"] is False


def test_regional_dataset_trains_plans_and_evaluates_with_the_fitted_shape(tmp_path):
    # A 9 x 17 regional grid: the ladder's 4x8 window at patch 4 does not fit its 3x5 token grid.
    from wxscale.evaluation.evaluate import evaluate_model, load_run
    from wxscale.model import fit_window_patch, resolve_config
    from wxscale.study.plan import SweepSpec, plan_sweep, size_costs
    from wxscale.training.trainer import train

    grid = (9, 17)
    path = make_tiny_dataset(tmp_path / "d", grid=grid, n_steps=60, gaps=())
    _regionalise(path, [-70.0 + 5 * i for i in range(17)], keep_key=True)
    patch, window = fit_window_patch(grid)
    assert (patch, window) != (4, (4, 8))

    cfg = tiny_config(path, loss={"amse_weight": 0.5}, run={"target_samples": 8})
    cfg["model"]["overrides"] = {}  # the ladder's s0, as a new user would ask for it
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["status"] == "complete"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["overrides"] == {"patch": patch, "window": list(window)}  # the choice, recorded
    swin = resolve_config("s0", grid=grid)
    from wxscale.model import model_flops

    assert summary["flops_per_sample"] == model_flops(swin, grid, 3).train_flops_per_sample

    # The plan records the same shape per size, and its FLOPs are the trainer's.
    fps = size_costs(SweepSpec(budgets=[1.0], sizes=["s0"], grid=grid, channels=3)).loc[0, "flops_per_sample"]
    plan, _ = plan_sweep(SweepSpec(budgets=[fps * 8 * 20], sizes=["s0", "s1"], grid=grid, channels=3,
                                   global_batch=8, min_steps=2))
    assert set(plan["patch"]) == {patch} and set(plan["window"]) == {f"{window[0]}x{window[1]}"}
    assert plan.set_index("size").loc["s0", "flops_per_sample"] == summary["flops_per_sample"]

    # Evaluation rebuilds the same network, regional, and its spectra use the DCT: one wavenumber per column.
    net, _, meta, _, _ = load_run(tmp_path / "run")
    assert net.periodic_lon is False and net.cfg == swin and meta.lon_periodic is False
    ev = evaluate_model(net, path, split="test", lead_steps=2, progress=False, meta=meta)
    assert ev.tables["spectra"]["wavenumber"].max() == grid[1] - 1
