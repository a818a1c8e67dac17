"""Scaling-law fits: synthetic laws are recovered, the real Chinchilla points fit, bad input is refused."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wxscale.cli import main as cli_main
from wxscale.errors import WxscaleError
from wxscale.study import fit as F

CHINCHILLA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chinchilla" / "svg_extracted_data.csv"

# A weather-emulator-sized law (N ~ 1e5..1e7 parameters, D ~ 1e3..1e6 samples, loss < 1), alpha != beta.
E, A, B, ALPHA, BETA = 0.05, 30.0, 5.0, 0.4, 0.3
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
A_EXP = BETA / (ALPHA + BETA)  # N_opt ~ C^a


def law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def n_opt_true(c):
    return G * (c / 6) ** A_EXP


def isoflop_runs(budgets=None, spread=0.6, sizes=7, noise=0.003, seed=0):
    """IsoFLOP grid centred on the true optimum, C = 6 N D."""
    budgets = np.logspace(14, 17, 5) if budgets is None else budgets
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for f in np.logspace(-spread, spread, sizes):
            n = n_opt_true(c) * f
            d = c / (6 * n)
            rows.append({"run_id": f"c{c:.0e}_n{n:.0f}", "budget_flops": c, "params": n, "samples": d,
                         "flops_per_sample": 6 * n, "val_loss": law(n, d) * np.exp(noise * rng.normal()),
                         "status": "complete"})
    return pd.DataFrame(rows)


def test_isoflop_recovers_known_exponent():
    runs = isoflop_runs()
    res = F.isoflop_fit(runs, n_bootstrap=100)
    iso = res.isoflop
    assert list(iso.columns[:9]) == ["budget_flops", "n_opt", "n_opt_lo", "n_opt_hi", "d_opt", "l_opt", "l_opt_lo",
                                     "l_opt_hi", "n_points"]
    assert iso["interior"].all() and (iso["n_points"] == 7).all()
    # Each budget's optimum is close to the truth (a centred, narrow grid: small parabola bias).
    assert np.allclose(iso["n_opt"], n_opt_true(iso["budget_flops"]), rtol=0.15)
    assert np.allclose(iso["d_opt"], iso["budget_flops"] / (6 * iso["n_opt"]))
    row = res.fits.set_index("quantity").loc["n_opt"]
    assert row["exponent_lo"] <= A_EXP <= row["exponent_hi"]
    assert abs(row["exponent"] - A_EXP) < 0.02
    assert row["exponent_hi"] - row["exponent_lo"] < 0.1
    d = res.fits.set_index("quantity").loc["d_opt"]
    assert d["exponent"] == pytest.approx(1 - row["exponent"], abs=1e-9)  # C = 6 N D exactly


def test_isoflop_flags_edge_optimum_and_never_extrapolates():
    runs = isoflop_runs(budgets=np.logspace(14, 17, 4))
    # The smallest budget's sizes all lie above its optimum: the minimum sits at the grid's edge.
    low = runs["budget_flops"] == runs["budget_flops"].min()
    runs.loc[low, "params"] *= 10
    runs.loc[low, "samples"] /= 10
    runs.loc[low, "flops_per_sample"] *= 10
    runs.loc[low, "val_loss"] = law(runs.loc[low, "params"], runs.loc[low, "samples"])
    res = F.isoflop_fit(runs, n_bootstrap=20)
    first = res.isoflop.iloc[0]
    assert not first["interior"] and np.isnan(first["n_opt"]) and "smallest" in first["note"]
    assert res.isoflop["interior"].sum() == 3
    assert res.fits.set_index("quantity").loc["n_opt", "n_points"] == 3
    assert any("left out" in n for n in res.notes)
    # With only 2 interior budgets left, no law is made up.
    with pytest.raises(WxscaleError, match="at least 3 budgets with an interior"):
        F.isoflop_fit(runs[runs["budget_flops"] < runs["budget_flops"].max()], n_bootstrap=5)


def test_parametric_fit_recovers_known_law_and_predicts():
    rng = np.random.default_rng(1)
    n = np.repeat(np.logspace(5, 7.5, 6), 6)
    d = np.tile(np.logspace(3, 6, 6), 6)
    runs = pd.DataFrame({"params": n, "samples": d, "flops_per_sample": 6 * n, "budget_flops": 6 * n * d,
                         "val_loss": law(n, d) * np.exp(0.003 * rng.normal(size=n.size))})
    res = F.parametric_law_fit(runs, n_bootstrap=40, seed=1)
    t = res.fits.set_index("quantity")
    for q, true in (("alpha", ALPHA), ("beta", BETA)):
        assert t.loc[q, "exponent_lo"] <= true <= t.loc[q, "exponent_hi"], q
        assert abs(t.loc[q, "exponent"] - true) < 0.01
    assert t.loc["E", "coefficient_lo"] <= E <= t.loc["E", "coefficient_hi"]
    assert t.loc["n_opt", "exponent_lo"] <= A_EXP <= t.loc["n_opt", "exponent_hi"]
    assert t.loc["flops_per_param_sample", "coefficient"] == pytest.approx(6.0)
    # Predict 100x beyond the largest budget: the true optimum lies in the interval.
    c = 100 * runs["budget_flops"].max()
    p = F.predict(res, [c]).iloc[0]
    assert p["n_opt_lo"] <= n_opt_true(c) <= p["n_opt_hi"]
    n_true = n_opt_true(c)
    assert p["l_opt_lo"] * 0.99 <= law(n_true, c / (6 * n_true)) <= p["l_opt_hi"] * 1.01


def test_parametric_fit_refuses_data_without_a_law():
    rng = np.random.default_rng(0)
    n = np.repeat(np.logspace(5, 7, 5), 5)
    d = np.tile(np.logspace(3, 6, 5), 5)
    fit = F.parametric_fit(n, d, 1 + 1e-4 * rng.normal(size=n.size))
    assert not fit.converged and fit.message
    runs = pd.DataFrame({"params": n, "samples": d, "flops_per_sample": 6 * n, "budget_flops": 6 * n * d,
                         "val_loss": 1 + 1e-4 * rng.normal(size=n.size)})
    with pytest.raises(WxscaleError, match="did not converge"):
        F.parametric_law_fit(runs, n_bootstrap=5)


def test_bad_input_is_refused_with_clear_messages():
    runs = isoflop_runs()
    with pytest.raises(WxscaleError, match="at least 8 runs.*found 5"):
        F.parametric_law_fit(runs.iloc[:5], n_bootstrap=5)
    bad = runs.copy()
    bad.loc[3, "val_loss"] = -1.0
    with pytest.raises(WxscaleError, match="val_loss must be a finite number > 0.*run_id"):
        F.isoflop_fit(bad)
    with pytest.raises(WxscaleError, match="missing column"):
        F.isoflop_fit(runs.drop(columns=["samples"]))
    with pytest.raises(WxscaleError, match="2 model size"):
        F.isoflop_fit(runs[runs["params"] < runs.groupby("budget_flops")["params"].transform("min") * 1.8])
    # failed runs are ignored, not fitted
    failed = runs.copy()
    failed.loc[0, ["status", "val_loss"]] = ["failed", np.nan]
    assert F.isoflop_fit(failed, n_bootstrap=5).isoflop["n_points"].iloc[0] == 6
    with pytest.raises(WxscaleError, match="--predict"):
        F.predict(F.isoflop_fit(runs, n_bootstrap=5), [-1.0])


def test_cli_on_sweep_dir_writes_tables_plots_and_predictions(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    isoflop_runs(budgets=np.logspace(14, 16, 3), sizes=5).to_csv(sweep / "runs.csv", index=False)
    pd.DataFrame({"run_id": ["b1"], "trunk_id": ["t1"]}).to_csv(sweep / "plan.csv", index=False)
    for name in ("t1", "b1"):
        (sweep / "runs" / name).mkdir(parents=True)
        pd.DataFrame({"step": [1, 2, 3], "samples": [10, 20, 30], "flops": [1e9, 2e9, 3e9],
                      "train_loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.8]}).to_csv(
            sweep / "runs" / name / "metrics.csv", index=False)
    rc = cli_main(["fit", str(sweep), "--n-bootstrap", "10", "--predict", "1e18"])
    assert rc == 0
    out = sweep / "fit"
    for name in ("isoflop.csv", "fits.csv", "fits_bootstrap.csv", "predictions.csv", "isoflop.png",
                 "scaling_laws.png", "loss_curves.png"):
        assert (out / name).is_file(), name
    fits = pd.read_csv(out / "fits.csv")
    assert list(fits.columns[:7]) == ["quantity", "approach", "coefficient", "exponent", "exponent_lo",
                                      "exponent_hi", "n_points"]
    assert {"E", "A", "B", "alpha", "beta", "n_opt"} <= set(fits["quantity"])
    text = capsys.readouterr().out
    assert "N_opt" in text and "predict C=1e+18" in text
    # predict() works again from what was written
    again = F.predict(F.load_fit(out), [1e18])
    written = pd.read_csv(out / "predictions.csv")
    for col in ("n_opt", "n_opt_lo", "n_opt_hi"):
        assert np.allclose(again[col], written[col], equal_nan=True), col
    # A fits.csv from before the interval and world columns is read with the percentiles it was written with.
    fits.drop(columns=["interval", "world_coefficient", "world_exponent"]).to_csv(out / "fits.csv", index=False)
    old = F.load_fit(out)
    row = old.fits[(old.fits["approach"] == "2") & (old.fits["quantity"] == "n_opt")].iloc[0]
    _, lo, hi = F.law_band(old, row, 1e18)
    expected = F.percentile_interval(F.law_replicates(old.replicates, "2", "n_opt", 1e18)[:, 0], old.level)
    assert np.isfinite(expected).all() and np.allclose([lo[0], hi[0]], expected)


def test_cli_columns_mapping_and_errors(tmp_path, capsys):
    runs = isoflop_runs(budgets=np.logspace(14, 16, 3), sizes=5)
    foreign = runs.rename(columns={"params": "N", "budget_flops": "C", "val_loss": "loss"})
    foreign = foreign.drop(columns=["samples", "flops_per_sample"])
    csv = tmp_path / "foreign.csv"
    foreign.to_csv(csv, index=False)
    out = tmp_path / "out"
    rc = cli_main(["fit", str(csv), "--out", str(out), "--columns", "params=N,budget_flops=C,val_loss=loss",
                   "--flops-per-param", "6", "--approach", "2", "--n-bootstrap", "10", "--no-plots"])
    assert rc == 0 and (out / "isoflop.csv").is_file() and not (out / "isoflop.png").exists()
    assert cli_main(["fit", str(csv), "--n-bootstrap", "5"]) == 2  # a CSV needs --out
    assert "--out" in capsys.readouterr().err
    assert cli_main(["fit", str(csv), "--out", str(out), "--columns", "size=N"]) == 2
    assert cli_main(["fit", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.real
def test_chinchilla_points_fit():
    if not CHINCHILLA.is_file():
        pytest.skip(f"{CHINCHILLA} absent (../shared/data is not part of a fresh clone)")
    runs = F.chinchilla_runs(CHINCHILLA)
    assert len(runs) == 240  # 245 points less the 5 with the fewest tokens per parameter
    res = F.parametric_law_fit(runs, n_bootstrap=20)
    t = res.fits.set_index("quantity")
    values = t[["coefficient", "coefficient_lo", "coefficient_hi", "exponent", "exponent_lo", "exponent_hi"]]
    for q in ("E", "A", "B"):
        assert np.isfinite(values.loc[q, ["coefficient", "coefficient_lo", "coefficient_hi"]]).all()
    for q in ("alpha", "beta", "n_opt"):
        assert np.isfinite(values.loc[q, ["exponent", "exponent_lo", "exponent_hi"]]).all()
    # Besiroglu et al. 2024: E = 1.82, A = 482, B = 2085, alpha = 0.35, beta = 0.37.
    assert t.loc["E", "coefficient"] == pytest.approx(1.82, abs=0.05)
    assert t.loc["alpha", "exponent"] == pytest.approx(0.35, abs=0.02)
    assert t.loc["beta", "exponent"] == pytest.approx(0.37, abs=0.02)
    assert 300 < t.loc["A", "coefficient"] < 700 and 1000 < t.loc["B", "coefficient"] < 5000
    # Approach 2 on budgets grouped by rounding log10 C to 0.1 dex; Hoffmann et al. report a = 0.49 for it.
    iso = F.isoflop_fit(runs, n_bootstrap=50)
    a = iso.fits.set_index("quantity").loc["n_opt"]
    assert 0.45 < a["exponent"] < 0.55 and a["exponent_lo"] < a["exponent"] < a["exponent_hi"]
    assert iso.isoflop["interior"].sum() >= 10


# ------------------------------------------------------------------------------------ bootstrap and calibration

def test_failed_replicates_widen_the_interval_never_shift_it():
    values = np.linspace(0.0, 1.0, 1001)
    lo, hi = F.percentile_interval(values, 0.9)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.95)
    # 2 % failed: taken as lying beyond both ends, the interval widens (dropping them would keep it).
    with_failures = np.concatenate([values, np.full(20, np.nan)])
    lo2, hi2 = F.percentile_interval(with_failures, 0.9)
    assert lo2 < lo and hi2 > hi
    # More failures than the level leaves room for: no interval at all.
    assert all(np.isnan(F.percentile_interval(np.concatenate([values, np.full(200, np.nan)]), 0.9)))


def test_basic_interval_reflects_the_replicates_bias_around_the_estimate():
    # Replicates drawn around an estimate of 2 sit a factor 1.5 above it: the fit is biased up by that factor, so
    # the basic interval (in log) lies below the estimate, where the percentile interval would double the bias.
    replicates = 3.0 * np.exp(np.linspace(-0.1, 0.1, 2001))
    p_lo, p_hi = F.percentile_interval(replicates, 0.9)
    lo, hi = F.basic_interval(replicates, 0.9, estimate=2.0)
    assert lo == pytest.approx(4 / p_hi) and hi == pytest.approx(4 / p_lo)
    assert hi < 2.0 < p_lo
    assert math.sqrt(lo * hi) == pytest.approx(2.0 / 1.5)
    # Failures widen it as they widen the percentile interval, and too many leave none.
    assert F.basic_interval(np.append(replicates, [np.nan] * 20), 0.9, 2.0)[0] < lo
    assert all(np.isnan(F.basic_interval(np.append(replicates, [np.nan] * 400), 0.9, 2.0)))
    assert all(np.isnan(F.basic_interval(replicates, 0.9, estimate=math.nan)))


def test_centred_interval_subtracts_the_noise_bias_from_the_estimate():
    # A world whose noise-free IsoFLOP exponent is 0.50; its noisy replicates average 0.53 (the noise biases the
    # fit up by 0.03) and spread over [0.43, 0.63]. An estimate of 0.58 is then taken as 0.55 +- 0.09, where the
    # percentile interval would sit on the world and not move with the estimate.
    replicates = np.linspace(0.43, 0.63, 2001)
    p_lo, p_hi = F.percentile_interval(replicates, 0.9)
    lo, hi = F.centred_interval(replicates, 0.9, estimate=0.58, world=0.50)
    assert (lo + hi) / 2 == pytest.approx(0.55) and hi - lo == pytest.approx(p_hi - p_lo)
    assert F.centred_interval(replicates, 0.9, 0.80, 0.50)[0] > p_hi  # follows the estimate
    # In log: factors instead of differences, so a positive quantity keeps a positive interval.
    lo, hi = F.centred_interval(2.0 * np.exp(replicates), 0.9, estimate=1.0, world=2.0 * math.exp(0.53), log=True)
    assert math.sqrt(lo * hi) == pytest.approx(1.0) and hi / lo == pytest.approx(math.exp(p_hi - p_lo))
    # Failures widen it as they widen the percentile interval, and too many leave none.
    assert F.centred_interval(np.append(replicates, [np.nan] * 20), 0.9, 0.58, 0.50)[0] < 0.55 - (p_hi - p_lo) / 2
    assert all(np.isnan(F.centred_interval(np.append(replicates, [np.nan] * 400), 0.9, 0.58, 0.50)))
    assert all(np.isnan(F.centred_interval(-replicates, 0.9, 0.58, 0.50, log=True)))
    assert F.INTERVALS == {"2": "centred", "3": "basic"}
    with pytest.raises(WxscaleError, match="interval kind"):
        F.bootstrap_interval(replicates, 0.9, "studentized", 0.5)


def test_trunk_bootstrap_draws_branches_with_their_trunk():
    runs = pd.DataFrame({"trunk_id": ["t0", "t0", "t1", "t1", "t2"], "params": [1, 1, 2, 2, 3],
                         "budget_flops": [1, 2, 1, 2, 2]})
    resampler = F.Resampler(runs, by_budget=True)
    assert resampler.kind == "trunk" and resampler.n_units == 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = resampler.weights(rng)
        assert w[0] == w[1] and w[2] == w[3]
        assert w[0] + w[2] + w[4] == 3  # three trunks drawn with replacement


def test_trunk_effects_bootstrap_moves_branches_together_with_a_t_spread():
    from scipy import stats

    from wxscale.study import calibrate as K

    law = K.Law()
    runs = K.synthetic_runs(K.study_grid(), law, 0.0, 0.0, np.random.default_rng(0))
    fitted = np.log(runs["val_loss"].to_numpy())
    shift = np.where(runs["trunk_id"] == "trunk_s2", 0.05, -0.05 / 4)  # pure trunk effects, no point noise
    runs["val_loss"] *= np.exp(shift)
    resampler = F.ParametricResampler(runs, F.ParametricFit(law.E, law.A, law.B, law.alpha, law.beta))
    assert resampler.n_units == 5 and resampler.dof_u == 3
    assert resampler.var_u == pytest.approx(0.05**2 * 5 / 4 / 3) and resampler.var_e < 1e-20
    rng = np.random.default_rng(1)
    draws = np.array([np.log(resampler.losses(rng)) - fitted for _ in range(20000)])
    for _, g in pd.DataFrame(draws.T).groupby(runs["trunk_id"].to_numpy()):
        assert np.ptp(g.to_numpy(), axis=0).max() < 1e-12  # one shared draw per trunk
    # The trunk variance is drawn too (3 degrees of freedom), so a trunk's effect spreads like s_u t_3, whose
    # 97.5 % point is 3.18 s_u; with the variance held fixed it would be 1.96 s_u.
    z = draws[:, 0] / math.sqrt(resampler.var_u)
    assert np.quantile(np.abs(z), 0.95) == pytest.approx(stats.t.ppf(0.975, 3), rel=0.08)


def test_runs_without_trunks_get_independent_draws_around_the_law():
    from scipy import stats

    from wxscale.study import calibrate as K

    law = K.Law()
    runs = K.synthetic_runs(K.study_grid(), law, 0.0, 0.03, np.random.default_rng(0)).drop(columns=["trunk_id"])
    fit = F.ParametricFit(law.E, law.A, law.B, law.alpha, law.beta, converged=True)
    resampler, notes = F.make_resampler(runs, "auto", by_budget=True, law=fit)
    assert isinstance(resampler, F.ParametricResampler) and resampler.codes is None and not notes
    assert resampler.described == f"drew new run noise around the fitted law ({len(runs)} runs)"
    r = np.log(runs["val_loss"].to_numpy()) - resampler.fitted
    assert resampler.dof_e == len(runs) - 5 and resampler.var_e == pytest.approx((r**2).sum() / (len(runs) - 5))
    rng = np.random.default_rng(2)
    draws = np.array([np.log(resampler.losses(rng)) - resampler.fitted for _ in range(20000)])
    assert abs(np.corrcoef(draws[:, :6].T)[np.triu_indices(6, 1)]).max() < 0.03  # no shared effect
    z = draws[:, 0] / math.sqrt(resampler.var_e)  # t with n - 5 degrees of freedom
    assert np.quantile(np.abs(z), 0.95) == pytest.approx(stats.t.ppf(0.975, len(runs) - 5), rel=0.05)
    # Asked for by name, the trunk schemes need trunks; resampling runs stays available.
    with pytest.raises(WxscaleError, match="trunk_id.*run-effects"):
        F.make_resampler(runs, "trunk-effects", by_budget=True, law=fit)
    assert isinstance(F.make_resampler(runs, "run", by_budget=True, law=fit)[0], F.Resampler)
    # A law that does not fit: auto falls back to resampling runs and says so; run-effects refuses.
    bad = F.ParametricFit(math.nan, math.nan, math.nan, math.nan, math.nan, converged=False, message="diverged")
    resampler, notes = F.make_resampler(runs, "auto", by_budget=True, law=bad)
    assert isinstance(resampler, F.Resampler) and "runs are resampled" in notes[0]
    with pytest.raises(WxscaleError, match="run-effects needs the parametric law.*diverged.*--bootstrap run"):
        F.make_resampler(runs, "run-effects", by_budget=True, law=bad)


def test_fit_reports_the_bootstrap_scheme_and_usable_replicates():
    from wxscale.study import calibrate as K

    runs = K.synthetic_runs(K.study_grid(), K.Law(), 0.01, 0.01, np.random.default_rng(3))
    res = F.isoflop_fit(runs, n_bootstrap=20)
    assert any("bootstrap drew new trunk and run noise around the fitted law (5 trunks), centred intervals" in n
               for n in res.notes), res.notes
    assert any("noise-free losses gives an N_opt exponent" in n for n in res.notes), res.notes
    # The interval is centred on the estimate less the replicates' bias against the world's noise-free fit.
    row = res.fits.set_index("quantity").loc["n_opt"]
    assert row["interval"] == "centred" and np.isfinite(row["world_exponent"])
    assert row["world_exponent"] != row["exponent"]
    reps = F.replicate_values(res.replicates, "2", "n_opt", "exponent")
    centre = row["exponent"] - (np.nanmean(reps) - row["world_exponent"])
    assert (row["exponent_lo"] + row["exponent_hi"]) / 2 == pytest.approx(centre)
    assert 0 < row["n_bootstrap_ok"] <= 20 and row["n_bootstrap"] == 20
    with pytest.raises(WxscaleError, match="trunk_id"):
        F.isoflop_fit(runs.drop(columns=["trunk_id"]), n_bootstrap=5, bootstrap="trunk")


def test_calibration_covers_the_approach2_exponent_under_shared_trunk_noise():
    """The fast version of `wxscale fit --calibrate` on the demo's grid and law, at the harder of the issue's
    noise settings (5 % per trunk, shared by its branches, 1 % per run). Resampling the observed trunk effects
    covered 30 and reflecting around the bootstrap world 34 of these 40 studies; 36 is the 90 % floor.

    The interval must also move with the estimate: percentiles of the world's replicates sat on the world's
    exponent (midpoint against estimate over these studies: slope 0.78 here, 0.54 at 2 % / 2 %, where they
    covered 398 of 400), the centred interval has slope 0.96."""
    from wxscale.study import calibrate as K

    grid = K.study_grid()
    table, summary = K.calibrate(grid, K.Law(), trunk_noise=0.05, point_noise=0.01, n_studies=40,
                                 n_bootstrap=200, approaches="2", processes=2)
    s = summary.set_index("quantity").loc["approach2_exponent"]
    assert s["n_studies"] == 40 and s["truth"] == pytest.approx(K.true_approach2_exponent(grid, K.Law()))
    assert s["n_covered"] >= 36, table
    assert s["n_without_interval"] <= 2 and 0 < s["median_width"] < 0.5  # no interval counts as a miss above
    ok = table.dropna(subset=["lo"])
    assert np.polyfit(ok["estimate"], (ok["lo"] + ok["hi"]) / 2, 1)[0] > 0.9


def test_calibration_covers_the_parametric_exponents():
    """Approach 3's alpha and beta on the same grid and noise; a small guard (the full figures come from the
    command: 100 studies of 200 replicates per noise setting)."""
    from wxscale.study import calibrate as K

    table, summary = K.calibrate(K.study_grid(), K.Law(), trunk_noise=0.05, point_noise=0.01, n_studies=10,
                                 n_bootstrap=60, approaches="3", processes=2)
    s = summary.set_index("quantity")
    assert s.loc["alpha", "n_covered"] >= 9 and s.loc["beta", "n_covered"] >= 9, table
    assert (table["lo"] > 0).all()  # the basic interval in log keeps the exponents positive


def test_calibrate_command_writes_table_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "cal"
    rc = cli_main(["fit", "--calibrate", "--out", str(out), "--studies", "2", "--n-bootstrap", "6",
                   "--trunk-noise", "0.01", "--point-noise", "0.01"])
    assert rc == 0
    summary = pd.read_csv(out / "calibration_summary.csv")
    assert set(summary["quantity"]) == {"approach2_exponent", "alpha", "beta"}
    assert {"coverage", "median_width", "n_without_interval", "median_bootstrap_ok"} <= set(summary.columns)
    table = pd.read_csv(out / "calibration.csv")
    assert len(table) == 6 and (out / "calibration.png").is_file()
    assert "coverage" in capsys.readouterr().out
    assert cli_main(["fit", "--calibrate"]) == 2  # needs --out
