"""The embedded default dataset: a spherical shallow-water simulator (``wxscale prep --builtin swe``).

Physics
-------
The rotating shallow-water equations on the sphere in vorticity-divergence form (Williamson et al. 1992,
J. Comput. Phys. 102; Hack & Jakob 1992, NCAR/TN-343), with absolute vorticity eta = zeta + f, geopotential
Phi = g h, kinetic energy E = |V|^2 / 2::

    d zeta / dt = - div(eta V)
    d delta / dt = curl(eta V) - lap(E + Phi)          (curl(A) = k . rot A)
    d Phi / dt   = - div(Phi V)

V = grad(chi) + k x grad(psi) with lap(psi) = zeta and lap(chi) = delta. Everything is spectral in space:
products are formed on a Gauss-Legendre grid fine enough to be alias-free for quadratic terms (3T + 1 points
in longitude, (3T + 1) / 2 rings), and all transforms are ``ducc0.sht`` (spin 0 for scalars, spin 1 for
vectors, whose E/B modes give divergence and curl directly). Mass is the l = 0 coefficient of Phi, which no
tendency touches (divergences have no l = 0 component), so it is conserved to round-off.

Time stepping: semi-implicit leapfrog (Robert 1969; Hack & Jakob 1992 sec. 3): the linear gravity-wave terms
(-lap(Phi) in the divergence equation, -Phi_bar delta in the continuity equation) are averaged over t - dt and
t + dt, everything else is explicit at t. Why this and not RK4: gravity waves (sqrt(g H) ~ 313 m/s) are 4x
faster than the jet, so at T31 an explicit RK4 is limited to dt ~ 1400 s and needs 4 right-hand sides per
step, while the semi-implicit scheme needs one right-hand side per step at dt = 1800 s (set by the advective
CFL only): ~5x fewer transforms, which is what makes years of data in about a minute possible. The
leapfrog computational mode is damped by the Robert-Asselin-Williams (RAW) filter (Williams 2009, Mon. Wea.
Rev. 137), which keeps the physical mode's amplitude better than the plain Robert-Asselin filter.
Scale-selective hyperdiffusion nu del^(2p) (default del^8) is applied implicitly to zeta, delta and Phi, so
it needs no stability limit and never touches l = 0 (mass). Without it, energy is conserved to ~1e-4 over 5
days; with the default it drains ~7-8% of the energy over a 30-day trajectory (the enstrophy cascade).

Initial state (Galewsky, Scott & Polvani 2004, Tellus A 56): a zonal jet u(phi) = (u_max / e_n)
exp(1 / ((phi - phi0)(phi - phi1))) between phi0 and phi1, height in gradient-wind balance
g dh/dphi = -a u (f + u tan(phi) / a), integrated numerically, mean depth H = 10 km, plus a localized bump
h' = h_hat cos(phi) exp(-(lambda / alpha)^2) exp(-((phi2 - phi) / beta)^2) that triggers barotropic
instability. Per trajectory a seeded generator draws u_max, the jet latitude, the bump position and amplitude;
by default each hemisphere gets its own (mirrored) jet so the whole globe is active.

Physics parameters (``--physics NAME=VALUE``, :data:`PHYSICS`): the mean depth H (gravity-wave speed
sqrt(g H), Rossby radius sqrt(g H) / f), the rotation rate Omega, the centre of the jet-latitude draw, the centre of
the jet-speed draw, and the hyperdiffusion time. A mixture config (``SimConfig.mixture``, the flag given several
times) cycles its trajectories through several settings; every trajectory records the physics it ran with.

Output
------
An ``xarray.Dataset`` with ``h`` (fluid depth, m; the shallow-water analogue of geopotential height), ``u``,
``v`` (m/s) and optionally ``vo`` (relative vorticity, 1/s) on dims (time, lat, lon), float32. The grid is
equiangular with cell-centred rings and no poles (Fejer's first rule, as WeatherBench's 5.625 deg grid):
``lat = 90 - (i + 0.5) * 180 / n_lat`` (north to south), ``lon = j * 360 / n_lon``. Fields are synthesized
exactly from the spectral state on that grid, truncated to what the grid can carry (no interpolation).
Several trajectories (each a fresh random jet) are laid out in time, every one inside one calendar year,
with a gap between trajectories, so splits by year and samples that never cross a gap both work. Default
(``SimConfig()``): T31 on a 48 x 96 Gaussian grid, output 32 x 64, 3 years of 11 trajectories of 3 + 30
days (spin-up + output), 3960 six-hourly states. At T31 the truncated Galewsky jet shows weak Gibbs ripples
(< 1 m/s) away from the jet at t = 0; the eddies soon dominate them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from wxscale.errors import ConfigError

SIMULATOR_NAME = "wxscale-swe"
SIMULATOR_VERSION = "1.1"  # 1.1: physics parameters, mixtures, the inertial time-step cap

# Constants of Galewsky et al. (2004), as in SCIENCE.md.
EARTH_RADIUS = 6.37122e6  # a [m]
OMEGA = 7.292e-5  # [1/s]
GRAVITY = 9.80616  # [m/s^2]


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines the simulated dataset (with ``seed``, it is reproducible bit for bit).

    Output grid ``n_lat`` x ``n_lon``; ``years`` calendar years from ``start_year``, each filled with
    trajectories of ``traj_days`` output days (after ``spinup_days`` of unrecorded spin-up), separated by
    ``gap_days`` without data. ``trunc`` (triangular truncation T) and ``dt_seconds`` default from the grid.
    """

    n_lat: int = 32
    n_lon: int = 64
    years: int = 4  # 2 train years (so the train span allows a climatology), 1 valid, 1 test
    seed: int = 0
    start_year: int = 2000
    traj_days: float = 30.0
    spinup_days: float = 3.0
    gap_days: float = 1.0
    traj_per_year: int | None = None  # None: as many as fit in a year
    dhours: int = 6
    trunc: int | None = None  # None: n_lat - 1 (what the output grid can carry)
    dt_seconds: float | None = None  # None: 1800 s at T31, scaled by 31 / T, rounded to divide dhours
    mean_depth: float = 10_000.0  # H [m]
    omega: float = OMEGA  # rotation rate [1/s]
    hyperdiff_order: int = 4  # p in nu del^(2p): 2 = del^4, 4 = del^8
    # e-folding time at l = T: 12 h keeps the T31 vorticity free of grid-scale noise while taking only ~2%
    # of the energy during spin-up (6 h: 3.5%, 24 h: visible noise at the truncation)
    hyperdiff_hours: float = 12.0
    raw_nu: float = 0.2  # RAW filter strength (Williams 2009)
    raw_alpha: float = 0.53  # RAW filter alpha (0.5 conserves the 3-level mean; 1 = plain Robert-Asselin)
    jets: str = "both"  # "north": one Galewsky jet; "both": an independent jet in each hemisphere
    u_max_range: tuple[float, float] = (60.0, 90.0)  # [m/s], Galewsky: 80
    jet_lat_range: tuple[float, float] = (35.0, 55.0)  # jet centre [deg], Galewsky: 45
    bump_amp_range: tuple[float, float] = (60.0, 180.0)  # h_hat [m], Galewsky: 120
    bump_lat_offset: float = 5.0  # bump latitude = jet centre +- this [deg], Galewsky: 0
    vorticity: bool = False  # also write relative vorticity `vo`
    workers: int = 0  # processes over trajectories; 0: min(#trajectories, CPU count)
    nthreads: int = 1  # ducc0 threads per process (processes over trajectories scale better at T31)
    # Physics settings ((name, value) pairs, names from PHYSICS) that the trajectories cycle through
    # (trajectory i uses setting i mod len): a mixture dataset. Empty: every trajectory uses the fields above.
    mixture: tuple[tuple[tuple[str, float], ...], ...] = ()

    def __post_init__(self) -> None:
        def bad(field: str, flag: str, why: str) -> ConfigError:
            return ConfigError(f"SimConfig.{field} ({flag}): {why}")

        if self.n_lat < 4 or self.n_lon < 8:
            raise bad("n_lat/n_lon", "--grid", f"grid {self.n_lat}x{self.n_lon} too small; use e.g. 32x64")
        if self.years < 1:
            raise bad("years", "--years", f"must be >= 1, got {self.years}")
        if self.dhours <= 0 or 24 % self.dhours:
            raise bad("dhours", "--sim-dhours", f"must divide 24, got {self.dhours}")
        if not 0 < self.traj_days <= 365 or self.traj_days * 24 % self.dhours:
            raise bad("traj_days", "--sim-traj-days",
                      f"must be in (0, 365] and a multiple of dhours={self.dhours} h, got {self.traj_days}")
        if self.spinup_days < 0 or self.spinup_days * 24 % self.dhours:
            raise bad("spinup_days", "--sim-spinup-days", f"must be >= 0 and a multiple of dhours, got "
                      f"{self.spinup_days}")
        if self.gap_days < 1:
            raise bad("gap_days", "--sim-gap-days", f"must be >= 1 day (trajectories must not touch), got "
                      f"{self.gap_days}")
        if self.traj_per_year is not None and self.traj_per_year < 1:
            raise bad("traj_per_year", "--sim-traj-per-year", f"must be >= 1, got {self.traj_per_year}")
        if self.trunc is not None and not 4 <= self.trunc:
            raise bad("trunc", "--sim-trunc", f"must be >= 4, got {self.trunc}")
        if self.dt_seconds is not None and (self.dt_seconds <= 0 or (self.dhours * 3600) % self.dt_seconds):
            raise bad("dt_seconds", "--sim-dt", f"must divide dhours*3600 = {self.dhours * 3600} s, got "
                      f"{self.dt_seconds}")
        if self.hyperdiff_order not in (1, 2, 3, 4) or self.hyperdiff_hours <= 0:
            raise bad("hyperdiff_order/hours", "--sim-hyperdiff-hours", "order must be 1..4 and hours > 0")
        if self.jets not in ("north", "both"):
            raise bad("jets", "--sim-jets", f"must be 'north' or 'both', got {self.jets!r}")
        for name in ("u_max_range", "jet_lat_range", "bump_amp_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise bad(name, "no flag", f"low {lo} > high {hi}")
        if self.u_max_range[0] <= 0:
            raise bad("u_max_range", "--physics u_max", f"jet speeds must be > 0 m/s, got {self.u_max_range}")
        if not (20.0 <= self.jet_lat_range[0] and self.jet_lat_range[1] <= 70.0):
            raise bad("jet_lat_range", "no flag", "jet centres must lie in 20..70 deg (in one hemisphere)")
        if self.workers < 0 or self.nthreads < 1:
            raise bad("workers/nthreads", "--sim-workers", "workers must be >= 0 and nthreads >= 1")
        if self.mean_depth <= 0 or self.omega <= 0:
            raise bad("mean_depth/omega", "--physics", f"must be > 0, got mean_depth={self.mean_depth}, "
                      f"omega={self.omega}")
        for setting in self.mixture:
            with_physics(dataclasses.replace(self, mixture=()), dict(setting))  # validates names and values

    def physics(self) -> dict[str, float]:
        """The values of the :data:`PHYSICS` parameters (of the fields, not of a mixture's settings)."""
        return {name: spec.get(self) for name, spec in PHYSICS.items()}

    def physics_settings(self) -> list[dict[str, float]]:
        """Every physics setting the dataset's trajectories use: one, or the mixture's (in full)."""
        n = max(1, len(self.mixture))
        return [self.trajectory_config(i).physics() for i in range(n)]

    def trajectory_config(self, index: int) -> SimConfig:
        """The config trajectory ``index`` runs with: this one, or its mixture setting ``index mod len``."""
        if not self.mixture:
            return self
        return with_physics(dataclasses.replace(self, mixture=()), dict(self.mixture[index % len(self.mixture)]))

    @property
    def resolved_trunc(self) -> int:
        return self.trunc if self.trunc is not None else self.n_lat - 1

    @property
    def resolved_dt(self) -> float:
        if self.dt_seconds is not None:
            return float(self.dt_seconds)
        # 1800 s at T31 keeps the advective Courant number below ~0.9 for 100 m/s winds (leapfrog limit 1).
        guess = 1800.0 * 31 / self.resolved_trunc
        # The Coriolis term is explicit: leapfrog needs f dt < 1 for inertial oscillations; 2 Omega dt <= 0.6
        # leaves a margin and does not bind at Earth's rotation down to T15 (it matters for --physics omega=...).
        guess = min(guess, 0.6 / (2 * self.omega))
        return self.dhours * 3600 / math.ceil(self.dhours * 3600 / guess)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        """The config recorded in a dataset's ``config`` attribute (JSON turned the ranges into lists)."""
        fields = json.loads(text)
        if "mixture" in fields:
            fields["mixture"] = tuple(tuple((str(k), float(v)) for k, v in s) for s in fields["mixture"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


# ----------------------------------------------------------------------------------------------------------
# Physics parameters (`--physics NAME=VALUE`): what a transfer study shifts


@dataclass(frozen=True)
class PhysicsParam:
    """One physics knob: how to read it from a SimConfig and which fields to set for a value."""

    help: str
    get: Callable[[SimConfig], float]
    set: Callable[[SimConfig, float], dict]


def _centre(rng: tuple[float, float]) -> float:
    return 0.5 * (rng[0] + rng[1])


def _recentre(rng: tuple[float, float], value: float) -> tuple[float, float]:
    """The range moved to centre ``value``, its width kept (the per-trajectory randomisation stays)."""
    half = 0.5 * (rng[1] - rng[0])
    return (value - half, value + half)


PHYSICS: dict[str, PhysicsParam] = {
    "mean_depth": PhysicsParam(
        "mean layer depth H [m]; sets the gravity-wave speed sqrt(g H) and the Rossby radius (default 10000)",
        lambda c: c.mean_depth, lambda c, v: {"mean_depth": v}),
    "omega": PhysicsParam(
        "rotation rate [1/s]; the Coriolis parameter 2 Omega sin(lat) (default 7.292e-5)",
        lambda c: c.omega, lambda c, v: {"omega": v}),
    "jet_lat": PhysicsParam(
        "centre of the jet-latitude draw [deg], range width kept (default 45: 35..55)",
        lambda c: _centre(c.jet_lat_range), lambda c, v: {"jet_lat_range": _recentre(c.jet_lat_range, v)}),
    "u_max": PhysicsParam(
        "centre of the jet-speed draw [m/s], range width kept (default 75: 60..90)",
        lambda c: _centre(c.u_max_range), lambda c, v: {"u_max_range": _recentre(c.u_max_range, v)}),
    "hyperdiff_hours": PhysicsParam(
        "hyperdiffusion e-folding time at the truncation scale [h] (default 12)",
        lambda c: c.hyperdiff_hours, lambda c, v: {"hyperdiff_hours": v}),
}


def with_physics(cfg: SimConfig, setting: dict[str, float]) -> SimConfig:
    """``cfg`` with the physics parameters of ``setting`` (names from :data:`PHYSICS`) set; validated."""
    unknown = sorted(set(setting) - set(PHYSICS))
    if unknown:
        raise ConfigError(f"--physics: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PHYSICS)}")
    fields: dict = {}
    for name, value in setting.items():
        fields.update(PHYSICS[name].set(cfg, float(value)))
    try:
        return dataclasses.replace(cfg, **fields)
    except ConfigError as err:
        raise ConfigError(f"--physics {setting}: {err}") from None


def parse_physics(items: list[str]) -> dict[str, float]:
    """One ``--physics NAME=VALUE ...`` occurrence -> {name: value}."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name.strip() not in PHYSICS:
            raise ConfigError(f"--physics {item!r}: expected NAME=VALUE with NAME one of {', '.join(PHYSICS)}")
        try:
            out[name.strip()] = float(text)
        except ValueError:
            raise ConfigError(f"--physics {item!r}: {text!r} is not a number") from None
    return out


# ----------------------------------------------------------------------------------------------------------
# Spectral operators


class SphereOps:
    """Spectral transforms and operators at triangular truncation T on an alias-free Gauss-Legendre grid."""

    def __init__(self, trunc: int, nthreads: int = 1, omega: float = OMEGA) -> None:
        import ducc0.sht  # local: only the simulator needs it

        self.sht = ducc0.sht
        self.lmax = trunc
        self.nthreads = nthreads
        # Quadratic products of T fields are exact with (3T+1)/2 GL rings and 3T+1 longitudes (Orszag 1970).
        self.nlat = 2 * math.ceil((3 * trunc + 1) / 4)
        self.nlon = 2 * self.nlat
        x, _ = np.polynomial.legendre.leggauss(self.nlat)
        self.theta = np.arccos(x)[::-1]  # colatitude, north to south, as ducc0's "GL" rings
        self.lat = np.pi / 2 - self.theta
        self.lon = 2 * np.pi * np.arange(self.nlon) / self.nlon
        w = self.sht.get_gridweights("GL", self.nlat)
        self.area_w = (w / w.sum() / self.nlon)[:, None]  # sum over the grid of area_w = 1
        # healpy ordering of a_lm: m-major, l = m..T.
        self.ell = np.concatenate([np.arange(m, trunc + 1) for m in range(trunc + 1)]).astype(np.float64)
        self.mval = np.concatenate([np.full(trunc + 1 - m, m) for m in range(trunc + 1)])
        self.lap = -self.ell * (self.ell + 1) / EARTH_RADIUS**2  # eigenvalues of the Laplacian
        self.inv_lap = np.zeros_like(self.lap)
        self.inv_lap[1:] = 1.0 / self.lap[1:]  # index 0 is (l=0, m=0): the mean has no inverse
        self.sq = np.sqrt(self.ell * (self.ell + 1)) / EARTH_RADIUS
        self.inv_sq = np.zeros_like(self.sq)
        self.inv_sq[1:] = 1.0 / self.sq[1:]
        self.omega = omega
        self.coriolis = (2 * omega * np.sin(self.lat))[:, None]

    def _kw(self) -> dict:
        return dict(lmax=self.lmax, geometry="GL", nthreads=self.nthreads)

    def to_grid(self, alm: np.ndarray) -> np.ndarray:
        return self.sht.synthesis_2d(alm=alm[None], spin=0, ntheta=self.nlat, nphi=self.nlon, **self._kw())[0]

    def to_spec(self, grid: np.ndarray) -> np.ndarray:
        return self.sht.analysis_2d(map=grid[None], spin=0, **self._kw())[0]

    def wind(self, vort: np.ndarray, div: np.ndarray) -> np.ndarray:
        """(V_theta, V_phi) on the grid from vorticity and divergence.

        ducc0's spin-1 synthesis of (E, B) = sqrt(l(l+1)) (alpha, beta) gives grad(alpha) + k x grad(beta) on
        the unit sphere; with V = grad(chi) + k x grad(psi) and radius a, E = sqrt(l(l+1))/a chi_lm, i.e.
        E = sq * inv_lap * delta = -delta / sq, likewise B from zeta.
        """
        eb = np.stack([-div * self.inv_sq, -vort * self.inv_sq])
        return self.sht.synthesis_2d(alm=eb, spin=1, ntheta=self.nlat, nphi=self.nlon, **self._kw())

    def div_curl(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spectral divergence and curl (k . rot) of a grid vector (V_theta, V_phi); the inverse of wind."""
        eb = self.sht.analysis_2d(map=vec, spin=1, **self._kw())
        return -self.sq * eb[0], -self.sq * eb[1]


# ----------------------------------------------------------------------------------------------------------
# Initial state (Galewsky et al. 2004)


@dataclass(frozen=True)
class JetParams:
    """One randomised Galewsky jet and its bump (angles in degrees, hemisphere +1 north / -1 south)."""

    hemisphere: int
    u_max: float
    lat_center: float
    bump_lon: float
    bump_lat: float
    bump_amp: float


def draw_jets(cfg: SimConfig, index: int) -> list[JetParams]:
    """Random jets for trajectory ``index``: a generator seeded by (seed, index), so it never depends on
    which process runs the trajectory or in what order."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index,)))
    jets = []
    for hemi in (1, -1) if cfg.jets == "both" else (1,):
        lat_c = rng.uniform(*cfg.jet_lat_range)
        jets.append(JetParams(
            hemisphere=hemi,
            u_max=float(rng.uniform(*cfg.u_max_range)),
            lat_center=float(lat_c),
            bump_lon=float(rng.uniform(0.0, 360.0)),
            bump_lat=float(lat_c + rng.uniform(-cfg.bump_lat_offset, cfg.bump_lat_offset)),
            bump_amp=float(rng.uniform(*cfg.bump_amp_range)),
        ))
    return jets


# Galewsky's jet spans phi1 - phi0 = pi/2 - 2 pi/7; we keep its width and move its centre.
JET_WIDTH = np.pi / 2 - 2 * np.pi / 7
BUMP_ALPHA, BUMP_BETA = 1.0 / 3.0, 1.0 / 15.0


def jet_wind(lat: np.ndarray, jet: JetParams) -> np.ndarray:
    """Galewsky's u(phi) = (u_max / e_n) exp(1 / ((phi - phi0)(phi - phi1))) inside (phi0, phi1), else 0."""
    phi = jet.hemisphere * lat  # mirror: a southern jet is the northern profile at -phi (still westerly)
    phi0 = np.deg2rad(jet.lat_center) - JET_WIDTH / 2
    phi1 = phi0 + JET_WIDTH
    e_n = np.exp(-4.0 / JET_WIDTH**2)
    inside = (phi > phi0) & (phi < phi1)
    u = np.zeros_like(lat)
    u[inside] = jet.u_max / e_n * np.exp(1.0 / ((phi[inside] - phi0) * (phi[inside] - phi1)))
    return u


def balanced_height(lat: np.ndarray, jets: list[JetParams], mean_depth: float, omega: float = OMEGA) -> np.ndarray:
    """Zonal h(phi) in gradient-wind balance with the jets: g dh/dphi = -a u (f + u tan(phi) / a)
    (Galewsky et al. 2004, eq. 3), integrated by the trapezoid rule on a fine latitude grid and interpolated,
    with the constant chosen so the area mean of h is ``mean_depth``."""
    fine = np.linspace(-np.pi / 2, np.pi / 2, 20_001)
    u = sum(jet_wind(fine, j) for j in jets)
    # u vanishes well before the poles, so tan(phi) never meets its singularity inside the jet
    dh = -EARTH_RADIUS * u * (2 * omega * np.sin(fine) + u * np.tan(np.clip(fine, -1.5, 1.5)) / EARTH_RADIUS)
    h = np.concatenate([[0.0], np.cumsum(0.5 * (dh[1:] + dh[:-1]) * np.diff(fine))]) / GRAVITY
    h += mean_depth - np.trapezoid(h * np.cos(fine), fine) / 2.0  # area mean of a zonal field: int h cos / 2
    return np.interp(lat, fine, h)


def bump(lat: np.ndarray, lon: np.ndarray, jet: JetParams) -> np.ndarray:
    """Galewsky's localized height perturbation, centred at (bump_lat, bump_lon) in the jet's hemisphere."""
    dlon = (lon[None, :] - np.deg2rad(jet.bump_lon) + np.pi) % (2 * np.pi) - np.pi  # in [-pi, pi)
    phi = jet.hemisphere * lat[:, None]
    return (jet.bump_amp * np.cos(phi) * np.exp(-((dlon / BUMP_ALPHA) ** 2))
            * np.exp(-(((np.deg2rad(jet.bump_lat) - phi) / BUMP_BETA) ** 2)))


def initial_state(ops: SphereOps, jets: list[JetParams], mean_depth: float) -> np.ndarray:
    """Spectral state [3, nalm]: (vorticity, divergence, geopotential) of balanced jets plus bumps."""
    u = sum(jet_wind(ops.lat, j) for j in jets)[:, None] * np.ones((1, ops.nlon))
    vort, div = ops.div_curl(np.stack([np.zeros_like(u), u]))[::-1]
    h = balanced_height(ops.lat, jets, mean_depth, ops.omega)[:, None] + sum(bump(ops.lat, ops.lon, j) for j in jets)
    phi = ops.to_spec(GRAVITY * h)
    phi[0] = GRAVITY * mean_depth * math.sqrt(4 * math.pi)  # a_00 = mean * sqrt(4 pi): exact mean depth H
    return np.stack([vort, 0.0 * div, phi])


# ----------------------------------------------------------------------------------------------------------
# Time integration


class ShallowWater:
    """Semi-implicit leapfrog integration of the spectral shallow-water equations (see module docstring)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.ops = SphereOps(cfg.resolved_trunc, cfg.nthreads, cfg.omega)
        self.dt = cfg.resolved_dt
        self.phi_bar = GRAVITY * cfg.mean_depth  # reference geopotential of the implicit gravity waves
        ell = self.ops.ell
        t = self.ops.lmax
        self.hyper = (ell * (ell + 1) / (t * (t + 1))) ** cfg.hyperdiff_order / (cfg.hyperdiff_hours * 3600)

    def tendencies(self, state: np.ndarray):
        """Explicit tendencies [3, nalm] (N_zeta, N_delta, N_Phi) of a state, and the grid fields used."""
        ops = self.ops
        vort, div, phi = state
        vel = ops.wind(vort, div)
        eta = ops.to_grid(vort) + ops.coriolis
        phi_g = ops.to_grid(phi)
        div_eta, curl_eta = ops.div_curl(eta * vel)
        div_phiv, _ = ops.div_curl((phi_g - self.phi_bar) * vel)
        ke = ops.to_spec(0.5 * (vel[0] ** 2 + vel[1] ** 2))
        # The gravity-wave terms -lap(Phi) and -Phi_bar delta are left to the implicit part of the step.
        return np.stack([-div_eta, curl_eta - ops.lap * ke, -div_phiv]), (vel, phi_g)

    def step(self, prev: np.ndarray, cur: np.ndarray, dt2: float):
        """One semi-implicit step from (prev, cur) over 2 dt (= dt2; dt2 = dt for the first, forward step).

        delta+ = delta- + dt2 N_delta + (dt2/2) L (Phi+ + Phi-),  Phi+ = Phi- + dt2 N_Phi - (dt2/2) Phi_bar
        (delta+ + delta-), with L = l(l+1)/a^2, solved mode by mode; then implicit hyperdiffusion over dt2.
        """
        tend, grids = self.tendencies(cur)
        new = prev + dt2 * tend  # explicit part; the implicit gravity-wave terms come next
        h = 0.5 * dt2
        hl = h * -self.ops.lap
        new[2] -= h * self.phi_bar * prev[1]  # new[2] is now A = Phi- + dt2 N_Phi - h Phi_bar delta-
        new[1] = (new[1] + hl * (new[2] + prev[2])) / (1.0 + h * hl * self.phi_bar)
        new[2] -= h * self.phi_bar * new[1]
        new *= 1.0 / (1.0 + dt2 * self.hyper)
        return new, grids

    def energy(self, grids) -> float:
        """Area-mean kinetic plus available potential energy, 1/2 h |V|^2 + 1/2 g (h - H)^2 [J/m^2 per
        unit density]; exact on the GL grid (the integrand is a polynomial of degree <= 3T)."""
        vel, phi_g = grids
        h = phi_g / GRAVITY
        e = 0.5 * h * (vel[0] ** 2 + vel[1] ** 2) + 0.5 * GRAVITY * (h - self.cfg.mean_depth) ** 2
        return float((self.ops.area_w * e).sum())


class OutputGrid:
    """Exact synthesis of the spectral state on the equiangular, cell-centred output grid (Fejer-1 rings)."""

    def __init__(self, cfg: SimConfig, trunc: int, nthreads: int) -> None:
        import ducc0.sht

        self.sht = ducc0.sht
        self.n_lat, self.n_lon, self.nthreads = cfg.n_lat, cfg.n_lon, nthreads
        # Keep only what the output grid resolves: a spectral low-pass instead of aliasing small scales.
        self.lmax = min(trunc, cfg.n_lat - 1, (cfg.n_lon - 1) // 2)
        ell = np.concatenate([np.arange(m, trunc + 1) for m in range(trunc + 1)])
        mval = np.concatenate([np.full(trunc + 1 - m, m) for m in range(trunc + 1)])
        self.keep = (ell <= self.lmax) & (mval <= self.lmax)

    def _synth(self, alm: np.ndarray, spin: int) -> np.ndarray:
        return self.sht.synthesis_2d(alm=alm[:, self.keep], spin=spin, lmax=self.lmax, geometry="F1",
                                     ntheta=self.n_lat, nphi=self.n_lon, nthreads=self.nthreads)

    def fields(self, ops: SphereOps, vort, div, phi, with_vorticity: bool) -> dict[str, np.ndarray]:
        vel = self._synth(np.stack([-div * ops.inv_sq, -vort * ops.inv_sq]), spin=1)
        out = {"h": self._synth(phi[None] / GRAVITY, 0)[0], "u": vel[1], "v": -vel[0]}  # V_theta points south
        if with_vorticity:
            out["vo"] = self._synth(vort[None], 0)[0]
        return {k: v.astype(np.float32) for k, v in out.items()}


def trajectory_steps(cfg: SimConfig) -> tuple[int, int, int]:
    """(steps per output, spin-up steps, number of outputs) of one trajectory."""
    per_out = round(cfg.dhours * 3600 / cfg.resolved_dt)
    n_out = round(cfg.traj_days * 24 / cfg.dhours)
    return per_out, round(cfg.spinup_days * 24 / cfg.dhours) * per_out, n_out


def run_trajectory(cfg: SimConfig, index: int, progress_cb=None) -> dict:
    """Simulate trajectory ``index``: returns output fields [n_out, lat, lon] (float32), the jets, and
    per-output diagnostics ``mass`` (area-mean h from the l = 0 coefficient, m) and ``energy``. A mixture
    config runs the trajectory with its setting (:meth:`SimConfig.trajectory_config`)."""
    cfg = cfg.trajectory_config(index)
    model = ShallowWater(cfg)
    ops = model.ops
    out_grid = OutputGrid(cfg, ops.lmax, cfg.nthreads)
    jets = draw_jets(cfg, index)
    per_out, n_spin, n_out = trajectory_steps(cfg)
    cur = initial_state(ops, jets, cfg.mean_depth)
    prev = cur
    names = ["h", "u", "v"] + (["vo"] if cfg.vorticity else [])
    fields = {k: np.empty((n_out, cfg.n_lat, cfg.n_lon), np.float32) for k in names}
    mass, energy = np.empty(n_out), np.empty(n_out)
    nu, alpha = cfg.raw_nu, cfg.raw_alpha
    total = n_spin + (n_out - 1) * per_out
    for n in range(total + 1):
        k, rem = divmod(n - n_spin, per_out)
        record = n >= n_spin and rem == 0
        if record:
            for name, arr in out_grid.fields(ops, *cur, with_vorticity=cfg.vorticity).items():
                fields[name][k] = arr
            mass[k] = cur[2][0].real / GRAVITY / math.sqrt(4 * math.pi)
        if n == total:
            energy[k] = model.energy((ops.wind(cur[0], cur[1]), ops.to_grid(cur[2])))
            break
        new, grids = model.step(prev, cur, model.dt if n == 0 else 2 * model.dt)
        if record:
            energy[k] = model.energy(grids)  # the grids of the tendency evaluation are those of `cur`
        if n == 0:
            prev, cur = cur, new  # a forward first step has nothing to filter
        else:
            # RAW filter (Williams 2009): displace cur by alpha d and new by -(1 - alpha) d
            d = (0.5 * nu) * (prev - 2 * cur + new)
            prev = cur + alpha * d
            cur = new - (1 - alpha) * d
        if progress_cb is not None and (n + 1) % per_out == 0:
            progress_cb(per_out)
        if record and not np.isfinite(cur).all():
            raise FloatingPointError(f"trajectory {index} blew up at step {n}: reduce --sim-dt or raise "
                                     f"hyperdiffusion")
    if progress_cb is not None:
        progress_cb(total % per_out)
    return {"index": index, "fields": fields, "mass": mass, "energy": energy,
            "jets": [dataclasses.asdict(j) for j in jets], "physics": cfg.physics()}


# ----------------------------------------------------------------------------------------------------------
# The dataset


def quadrature_weights(n_lat: int) -> np.ndarray:
    """Exact area weights [n_lat] (summing to 1) of the output rings: Fejer's first rule, which integrates
    every field the output grid carries exactly. Plain cos(lat) weights err by ~1e-5 relative on h."""
    import ducc0.sht

    w = ducc0.sht.get_gridweights("F1", n_lat)
    return w / w.sum()


def trajectory_starts(cfg: SimConfig) -> list[np.datetime64]:
    """Start time of every trajectory: as many as fit in each calendar year, none crossing a year's end,
    with ``gap_days`` without data between one trajectory's last output and the next one's first."""
    dh = np.timedelta64(cfg.dhours, "h")
    n_out = trajectory_steps(cfg)[2]
    stride = n_out * dh + np.timedelta64(round(cfg.gap_days * 24), "h")
    starts = []
    for year in range(cfg.start_year, cfg.start_year + cfg.years):
        t, end = np.datetime64(f"{year}-01-01T00", "ns"), np.datetime64(f"{year + 1}-01-01T00", "ns")
        n_year = 0
        while t + (n_out - 1) * dh < end and n_year < (cfg.traj_per_year or math.inf):
            starts.append(t)
            t, n_year = t + stride, n_year + 1
        if cfg.traj_per_year and n_year < cfg.traj_per_year:
            raise ConfigError(f"SimConfig.traj_per_year (--sim-traj-per-year): only {n_year} trajectories of "
                              f"{cfg.traj_days:g} days fit in {year}; ask for fewer or shorter ones")
    return starts


def _worker(args: tuple[SimConfig, int]) -> dict:
    return run_trajectory(*args)


def simulate_swe(cfg: SimConfig | None = None, progress: bool = False):
    """Simulate all trajectories of ``cfg`` and return them as one ``xarray.Dataset`` (see module docstring).

    Trajectories run in ``cfg.workers`` processes; each depends only on (config, seed, index), so the result
    is the same for any number of workers. The processes are spawned, so a script calling this with more
    than one worker needs the usual ``if __name__ == "__main__":`` guard. The attribute ``trajectories``
    records each trajectory's jets, start, and relative drift of mass and energy over its output window.
    """
    import xarray as xr
    from tqdm.auto import tqdm

    cfg = cfg or SimConfig()
    starts = trajectory_starts(cfg)
    per_out, n_spin, n_out = trajectory_steps(cfg)
    steps = n_spin + (n_out - 1) * per_out
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cfg.workers or cpus, len(starts))
    bar = tqdm(total=steps * len(starts), unit="day", unit_scale=cfg.resolved_dt / 86400,
               desc=f"swe: {len(starts)} trajectories x {cfg.spinup_days:g}+{cfg.traj_days:g} days",
               disable=not progress)
    if workers == 1:
        results = [run_trajectory(cfg, i, bar.update) for i in range(len(starts))]
    else:
        # spawn, not fork: the caller may hold threads (loaders, torch) that a forked child would inherit
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = []
            for res in pool.map(_worker, [(cfg, i) for i in range(len(starts))]):
                results.append(res)
                bar.update(steps)
    bar.close()

    dh = np.timedelta64(cfg.dhours, "h")
    time = np.concatenate([s + np.arange(n_out) * dh for s in starts]).astype("datetime64[ns]")
    lat = 90.0 - (np.arange(cfg.n_lat) + 0.5) * 180.0 / cfg.n_lat
    lon = np.arange(cfg.n_lon) * 360.0 / cfg.n_lon
    meta = {
        "h": ("m", "fluid depth (shallow-water analogue of geopotential height)"),
        "u": ("m s-1", "eastward wind"),
        "v": ("m s-1", "northward wind"),
        "vo": ("s-1", "relative vorticity"),
    }
    data_vars = {}
    for name in results[0]["fields"]:
        arr = np.concatenate([r["fields"][name] for r in results])
        data_vars[name] = (("time", "lat", "lon"), arr, {"units": meta[name][0], "long_name": meta[name][1]})
    trajectories = [{
        "index": r["index"], "start": str(starts[r["index"]]), "n_steps": n_out, "jets": r["jets"],
        "physics": r["physics"],
        "mass_rel_drift": float(np.abs(r["mass"] - r["mass"][0]).max() / r["mass"][0]),
        "energy_rel_drift": float((r["energy"][-1] - r["energy"][0]) / r["energy"][0]),
    } for r in results]
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", time, {"long_name": "time"}),
            "lat": ("lat", lat, {"units": "degrees_north", "long_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "long_name": "longitude"}),
        },
        attrs={
            "title": "wxscale built-in dataset: spherical shallow-water equations, randomised Galewsky jets",
            "source": f"{SIMULATOR_NAME} {SIMULATOR_VERSION} (spectral T{cfg.resolved_trunc}, ducc0.sht, "
                      f"semi-implicit leapfrog + RAW filter, dt={cfg.resolved_dt:g} s)",
            "simulator": SIMULATOR_NAME,
            "simulator_version": SIMULATOR_VERSION,
            "config": cfg.to_json(),
            "physics": json.dumps(cfg.physics_settings()),
            "seed": cfg.seed,
            "grid": "equiangular cell centres without poles: lat = 90 - (i+0.5)*180/n_lat (north to south), "
                    "lon = j*360/n_lon",
            "trajectories": json.dumps(trajectories),
            "references": "Galewsky, Scott & Polvani 2004, Tellus A 56; Williamson et al. 1992, JCP 102",
        },
    )
    return ds


# ----------------------------------------------------------------------------------------------------------
# Command-line flags (used by `wxscale prep --builtin swe`)


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        n_lat, n_lon = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--grid {text!r}: expected NLATxNLON, e.g. 32x64") from None
    return n_lat, n_lon


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the built-in simulator; those that could clash with prep's own carry a ``--sim-`` prefix."""
    d = SimConfig()
    g = parser.add_argument_group("built-in simulator (--builtin swe)")
    g.add_argument("--grid", default=f"{d.n_lat}x{d.n_lon}", help="grid NLATxNLON (default %(default)s)")
    g.add_argument("--years", type=int, default=d.years, help="simulated years (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the random jets (default %(default)s)")
    g.add_argument("--sim-start-year", type=int, default=d.start_year,
                   help="first year (default %(default)s)")
    g.add_argument("--sim-traj-days", type=float, default=d.traj_days,
                   help="output days per trajectory (default %(default)s)")
    g.add_argument("--sim-spinup-days", type=float, default=d.spinup_days,
                   help="unrecorded days at the start of each trajectory (default %(default)s)")
    g.add_argument("--sim-gap-days", type=float, default=d.gap_days,
                   help="days without data between trajectories (default %(default)s)")
    g.add_argument("--sim-dhours", type=int, default=d.dhours,
                   help="hours between output states (default %(default)s)")
    g.add_argument("--sim-traj-per-year", type=int, default=None,
                   help="trajectories per year (default: as many as fit)")
    g.add_argument("--sim-trunc", type=int, default=None, help="spectral truncation T (default: NLAT-1)")
    g.add_argument("--sim-dt", type=float, default=None,
                   help="time step in seconds, must divide 6 h (default: 1800 at T31, scaled by 31/T)")
    g.add_argument("--sim-hyperdiff-hours", type=float, default=d.hyperdiff_hours,
                   help="hyperdiffusion e-folding time at the truncation scale (default %(default)s)")
    g.add_argument("--sim-jets", choices=["north", "both"], default=d.jets,
                   help="a jet in the north only (Galewsky) or one in each hemisphere (default %(default)s)")
    g.add_argument("--sim-vorticity", action="store_true", help="also write relative vorticity `vo`")
    g.add_argument("--sim-workers", type=int, default=d.workers,
                   help="processes over trajectories, 0 = one per CPU (default %(default)s)")
    g.add_argument("--physics", nargs="+", action="append", metavar="NAME=VALUE",
                   help="physics parameters of the trajectories; give the flag again for a mixture dataset whose "
                        "trajectories cycle through the settings, e.g. --physics mean_depth=5000 --physics "
                        "mean_depth=10000 omega=1e-4. Names: " + "; ".join(f"{k}: {v.help}" for k, v in
                                                                         PHYSICS.items()))


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig that the flags of :func:`add_simulator_arguments` describe."""
    n_lat, n_lon = _parse_grid(args.grid)
    cfg = SimConfig(
        n_lat=n_lat, n_lon=n_lon, years=args.years, seed=args.seed, start_year=args.sim_start_year,
        traj_days=args.sim_traj_days, spinup_days=args.sim_spinup_days, gap_days=args.sim_gap_days,
        traj_per_year=args.sim_traj_per_year, dhours=args.sim_dhours,
        trunc=args.sim_trunc, dt_seconds=args.sim_dt, hyperdiff_hours=args.sim_hyperdiff_hours,
        jets=args.sim_jets, vorticity=args.sim_vorticity, workers=args.sim_workers,
    )
    settings = [parse_physics(items) for items in getattr(args, "physics", None) or []]
    if len(settings) == 1:
        return with_physics(cfg, settings[0])
    if settings:
        return dataclasses.replace(cfg, mixture=tuple(tuple(sorted(s.items())) for s in settings))
    return cfg
