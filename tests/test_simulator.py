"""The built-in shallow-water simulator is physics, not noise: conservation, balance, evolution, layout."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from wxscale.data_prep.simulator import (
    EARTH_RADIUS,
    GRAVITY,
    OMEGA,
    PHYSICS,
    SimConfig,
    SphereOps,
    add_simulator_arguments,
    config_from_args,
    draw_jets,
    quadrature_weights,
    run_trajectory,
    simulate_swe,
    with_physics,
)
from wxscale.errors import ConfigError

# A small dataset: 16 x 32 output (T15), two years with two 3-day trajectories each.
SMALL = SimConfig(n_lat=16, n_lon=32, years=2, traj_per_year=2, traj_days=3, spinup_days=0.5, seed=1,
                  workers=1)


@pytest.fixture(scope="module")
def traj():
    """One default-resolution (T31, 32 x 64) trajectory: 4 days of spin-up, then 8 days of output."""
    return run_trajectory(SimConfig(traj_days=8, spinup_days=4), index=0)


@pytest.fixture(scope="module")
def small_ds():
    return simulate_swe(SMALL)


def area_mean(field: np.ndarray) -> np.ndarray:
    """Area mean over (lat, lon) of [..., lat, lon] with the exact weights of the output grid."""
    w = quadrature_weights(field.shape[-2])[:, None] / field.shape[-1]
    return (field.astype(np.float64) * w).sum(axis=(-2, -1))


def test_vector_transforms_match_analytic_fields():
    ops = SphereOps(15)
    coslat, sinlat = np.cos(ops.lat)[:, None], np.sin(ops.lat)[:, None]
    ones = np.ones((1, ops.nlon))
    # Solid-body rotation u = U cos(lat): vorticity 2 U sin(lat) / a, no divergence.
    u = 20.0 * coslat * ones
    div, vort = ops.div_curl(np.stack([0 * u, u]))
    np.testing.assert_allclose(ops.to_grid(vort), 2 * 20.0 * sinlat * ones / EARTH_RADIUS, atol=1e-15)
    np.testing.assert_allclose(ops.to_grid(div), 0.0, atol=1e-15)
    # Northward v = V cos(lat) (V_theta = -v): divergence -2 V sin(lat) / a, no vorticity.
    div, vort = ops.div_curl(np.stack([-5.0 * coslat * ones, 0 * u]))
    np.testing.assert_allclose(ops.to_grid(div), -2 * 5.0 * sinlat * ones / EARTH_RADIUS, atol=1e-15)
    np.testing.assert_allclose(ops.to_grid(vort), 0.0, atol=1e-15)
    # and back: the wind of (vorticity, divergence) is the field we started from
    vel = ops.wind(vort, div)
    np.testing.assert_allclose(vel[0], -5.0 * coslat * ones, atol=1e-10)
    np.testing.assert_allclose(vel[1], 0.0, atol=1e-10)


def test_unperturbed_balanced_jet_stays_steady():
    """Galewsky's jet without its bump is a steady solution: the balanced height must keep it still."""
    cfg = SimConfig(jets="north", u_max_range=(80.0, 80.0), jet_lat_range=(45.0, 45.0),
                    bump_amp_range=(0.0, 0.0), traj_days=2, spinup_days=0, hyperdiff_hours=1e6)
    out = run_trajectory(cfg, index=0)["fields"]
    h, u, v = out["h"], out["u"], out["v"]
    assert u.max() > 60  # the jet is there (its 80 m/s peak lies between output rows) ...
    assert np.ptp(h[0]) > 500  # ... with its balancing height gradient ...
    assert np.abs(h[-1] - h[0]).max() < 2.0  # ... and neither moves in 2 days (measured: 0.4 m)
    assert np.abs(u[-1] - u[0]).max() < 0.1
    assert np.abs(v).max() < 0.1


def test_mass_conserved_energy_bounded_no_nan(traj):
    h = traj["fields"]["h"]
    for name, field in traj["fields"].items():
        assert np.isfinite(field).all(), name
    mass = area_mean(h)
    assert abs(mass[0] - 1e4) < 1e-3  # mean depth H = 10 km
    assert np.abs(mass / mass[0] - 1).max() < 1e-7  # float32 output; the spectral mean never changes
    assert np.all(traj["mass"] == traj["mass"][0])
    energy = traj["energy"] / traj["energy"][0]
    assert energy.max() < 1.001  # nothing creates energy ...
    assert energy[-1] > 0.9  # ... and hyperdiffusion takes only a little of it


def test_energy_conserved_without_diffusion():
    """The inviscid equations conserve energy: while the jet breaks up (days 4-8, winds near 50 m/s) the
    scheme keeps it to ~4e-4 (measured); a wrong sign in any tendency, even the small nonlinear part of
    the continuity equation, breaks this (measured 6e-3) or blows up."""
    out = run_trajectory(SimConfig(traj_days=4, spinup_days=4, hyperdiff_hours=1e6), index=0)
    assert np.abs(out["fields"]["v"]).max() > 20  # the flow is active, not a resting jet
    assert np.abs(out["energy"] / out["energy"][0] - 1).max() < 2e-3


def test_flow_evolves_smoothly(traj):
    f = traj["fields"]

    def rmse(x: np.ndarray, lead: int) -> float:
        return float(np.sqrt(area_mean((x[lead:] - x[:-lead]) ** 2).mean()))

    for name, one_day in (("h", 10.0), ("u", 2.0)):
        leads = [rmse(f[name], k) for k in (1, 4, 8, 16)]  # 6 h, 1, 2, 4 days
        assert leads[1] > one_day, (name, leads)  # persistence is a poor forecast ...
        assert np.all(np.diff(leads) > 0), (name, leads)  # ... and worse at longer leads
    # Not noise: consecutive 6-hourly states are strongly correlated.
    v = f["v"] - f["v"].mean(axis=(1, 2), keepdims=True)
    corr = (v[1:] * v[:-1]).sum() / np.sqrt((v[1:] ** 2).sum() * (v[:-1] ** 2).sum())
    assert corr > 0.9


def test_wind_is_geostrophic_in_midlatitudes(traj):
    """h and u are tied by physics: zonal-mean u follows the geostrophic wind -g/(f a) dh/dphi."""
    lat = np.deg2rad(90 - (np.arange(32) + 0.5) * 180 / 32)
    h = traj["fields"]["h"][-1].mean(axis=1).astype(np.float64)
    u = traj["fields"]["u"][-1].mean(axis=1)
    u_geo = -GRAVITY / (2 * OMEGA * np.sin(lat) * EARTH_RADIUS) * np.gradient(h, lat)
    mid = (np.abs(np.rad2deg(lat)) > 25) & (np.abs(np.rad2deg(lat)) < 70)
    assert np.corrcoef(u[mid], u_geo[mid])[0, 1] > 0.9


def test_dataset_layout_and_provenance(small_ds):
    ds = small_ds
    assert set(ds.data_vars) == {"h", "u", "v"}
    for name in ("h", "u", "v"):
        assert ds[name].dims == ("time", "lat", "lon")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] and ds[name].attrs["long_name"]
    assert ds.lat.attrs["units"] == "degrees_north" and ds.lon.attrs["units"] == "degrees_east"
    np.testing.assert_allclose(ds.lat.values, 90 - (np.arange(16) + 0.5) * 180 / 16)
    np.testing.assert_allclose(ds.lon.values, np.arange(32) * 11.25)
    assert SimConfig.from_json(ds.attrs["config"]) == SMALL
    assert ds.attrs["seed"] == 1 and ds.attrs["simulator"]
    trajectories = json.loads(ds.attrs["trajectories"])
    assert len(trajectories) == 4

    time = ds.time.values
    assert time.dtype == np.dtype("datetime64[ns]") and time[0] == np.datetime64("2000-01-01T00")
    steps = np.diff(time) / np.timedelta64(1, "h")
    assert steps.min() == 6
    gaps = np.flatnonzero(steps != 6)
    assert len(gaps) == 3 and np.all(steps[gaps] >= 30)  # a day without data between trajectories
    segments = np.split(time, gaps + 1)
    assert [len(s) for s in segments] == [12] * 4
    years = [s.astype("datetime64[Y]") for s in segments]
    assert all(y[0] == y[-1] for y in years)  # no trajectory crosses a year: year splits are clean
    assert sorted({int(str(y[0])) for y in years}) == [2000, 2001]


def test_deterministic_for_a_seed_and_any_worker_count(small_ds):
    again = simulate_swe(dataclasses.replace(SMALL, workers=2))
    for name in small_ds.data_vars:
        np.testing.assert_array_equal(small_ds[name].values, again[name].values)
    other = simulate_swe(dataclasses.replace(SMALL, seed=2))
    assert np.abs(other["h"].values - small_ds["h"].values).max() > 10.0


def test_jets_are_random_within_ranges_and_reproducible():
    cfg = SimConfig()
    jets = [draw_jets(cfg, i) for i in range(20)]
    assert draw_jets(cfg, 3) == jets[3]
    flat = [j for pair in jets for j in pair]
    assert {j.hemisphere for j in flat} == {1, -1}
    for field, (lo, hi) in (("u_max", cfg.u_max_range), ("lat_center", cfg.jet_lat_range),
                            ("bump_amp", cfg.bump_amp_range)):
        values = np.array([getattr(j, field) for j in flat])
        assert values.min() >= lo and values.max() <= hi and np.ptp(values) > 0.5 * (hi - lo), field


def test_cli_flags_build_the_config():
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    args = parser.parse_args(["--grid", "16x32", "--years", "2", "--seed", "7", "--sim-traj-days", "10"])
    cfg = config_from_args(args)
    assert (cfg.n_lat, cfg.n_lon, cfg.years, cfg.seed, cfg.traj_days) == (16, 32, 2, 7, 10.0)
    assert config_from_args(parser.parse_args([])) == SimConfig()


@pytest.mark.parametrize("argv, flag", [
    (["--grid", "32by64"], "--grid"),
    (["--grid", "2x4"], "--grid"),
    (["--years", "0"], "--years"),
    (["--sim-dt", "1000"], "--sim-dt"),
    (["--sim-gap-days", "0"], "--sim-gap-days"),
    (["--sim-traj-days", "100", "--sim-traj-per-year", "5"], "--sim-traj-per-year"),
])
def test_bad_flags_name_the_flag(argv, flag):
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    with pytest.raises(ConfigError, match=flag):
        cfg = config_from_args(parser.parse_args(argv))
        simulate_swe(cfg)  # the last case is only found when laying out the trajectories


# ----- physics parameters (--physics) and mixtures


def _physics_args(*argv: str) -> SimConfig:
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_physics_flags_set_the_config_and_a_repeat_makes_a_mixture():
    cfg = _physics_args("--physics", "mean_depth=5000", "omega=1e-4", "jet_lat=40", "u_max=70",
                        "hyperdiff_hours=6")
    assert (cfg.mean_depth, cfg.omega, cfg.hyperdiff_hours) == (5000.0, 1e-4, 6.0)
    assert cfg.jet_lat_range == (30.0, 50.0) and cfg.u_max_range == (55.0, 85.0)  # widths kept
    assert cfg.physics() == {"mean_depth": 5000.0, "omega": 1e-4, "jet_lat": 40.0, "u_max": 70.0,
                             "hyperdiff_hours": 6.0}
    assert set(cfg.physics()) == set(PHYSICS)
    mix = _physics_args("--physics", "mean_depth=5000", "--physics", "mean_depth=20000", "omega=1e-4")
    assert mix.mean_depth == SimConfig().mean_depth  # the fields stay; the trajectories cycle the settings
    assert [mix.trajectory_config(i).mean_depth for i in range(4)] == [5000.0, 20000.0, 5000.0, 20000.0]
    assert mix.trajectory_config(1).omega == 1e-4 and mix.trajectory_config(0).omega == OMEGA
    assert [s["mean_depth"] for s in mix.physics_settings()] == [5000.0, 20000.0]
    assert SimConfig.from_json(mix.to_json()) == mix


@pytest.mark.parametrize("argv, needle", [
    (["--physics", "depth=5000"], "mean_depth"),  # the message lists the known names
    (["--physics", "mean_depth=deep"], "not a number"),
    (["--physics", "mean_depth=-1"], "--physics"),
    (["--physics", "jet_lat=80"], "jet_lat_range"),
    (["--physics", "omega=1e-4", "--physics", "u_max=-20"], "u_max"),
])
def test_bad_physics_name_the_flag(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        _physics_args(*argv)


def test_physics_change_the_data():
    """Same seed, same jets: a shallower layer or a faster rotation gives other fields."""
    base = run_trajectory(SMALL, index=0)
    shallow = run_trajectory(with_physics(SMALL, {"mean_depth": 5000.0}), index=0)
    fast = run_trajectory(with_physics(SMALL, {"omega": 2 * OMEGA}), index=0)
    assert base["jets"] == shallow["jets"] == fast["jets"]
    w = quadrature_weights(SMALL.n_lat)[:, None]
    for out, depth in ((base, 10_000.0), (shallow, 5000.0)):
        np.testing.assert_allclose((w * out["fields"]["h"][-1]).sum() / SMALL.n_lon, depth, rtol=1e-4)
    for other in (shallow, fast):
        du = np.abs(other["fields"]["u"][-1] - base["fields"]["u"][-1]).max()
        assert du > 0.1  # m/s, after 3 days from the same balanced jets: dynamics, not round-off (~1e-5)
    # the balanced height drop across a jet is ~ f u: twice the rotation, about twice the height anomaly
    spread = {k: np.std(v["fields"]["h"][-1]) for k, v in (("base", base), ("fast", fast))}
    assert 1.6 < spread["fast"] / spread["base"] < 2.4
    assert shallow["physics"]["mean_depth"] == 5000.0 and fast["physics"]["omega"] == 2 * OMEGA


def test_prep_records_the_physics_of_a_mixture(tmp_path):
    from wxscale.cli import main
    from wxscale.data_prep.layout import load_meta

    out = tmp_path / "mix"
    rc = main(["prep", "--builtin", "swe", "--out", str(out), "--grid", "16x32", "--years", "3",
               "--sim-traj-per-year", "2", "--sim-traj-days", "2", "--sim-spinup-days", "0.5", "--seed", "1",
               "--sim-workers", "1", "--no-progress", "--physics", "mean_depth=5000", "--physics", "mean_depth=8000"])
    assert rc == 0
    sim = load_meta(out).source["simulator"]
    assert [s["mean_depth"] for s in sim["physics"]] == [5000.0, 8000.0]
    assert [t["physics"]["mean_depth"] for t in sim["trajectories"]] == [5000.0, 8000.0] * 3
    assert load_meta(out).source["simulator_config"]["mixture"] == [[["mean_depth", 5000.0]],
                                                                    [["mean_depth", 8000.0]]]
