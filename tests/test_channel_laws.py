"""Laws per channel and lead time (Kiefer et al. 2026): the frontier fit, the flags, the table and heat map.

The rollouts themselves are wxscale.evaluation.evaluate's (tested in test_evaluate.py); the command end to end on
a tiny real sweep runs in test_demo.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wxscale.evaluation import channel_laws as CL

BUDGETS = np.array([1e11, 2e11, 4e11, 8e11])
SIZES = np.array([1e4, 3e4, 1e5])


def synthetic_points(seed: int = 0) -> pd.DataFrame:
    """RMSE per run, channel and lead: z improves as C^-0.3 at every lead, u only at short leads (flat at 48 h),
    v gets worse with compute at 48 h. The smallest size at each budget is best, the others 10 % worse."""
    rng = np.random.default_rng(seed)
    rows = []
    exponents = {("z", 6): 0.3, ("z", 48): 0.3, ("u", 6): 0.2, ("u", 48): 0.0, ("v", 6): 0.2, ("v", 48): -0.2}
    for c in BUDGETS:
        for j, n in enumerate(SIZES):
            for (ch, lead), e in exponents.items():
                rmse = 2.0 * (c / 1e11) ** -e * (1 + 0.1 * j) * np.exp(0.005 * rng.normal())
                rows.append({"run_id": f"C{c:.0e}_{j}", "budget_flops": c, "params": n, "channel": ch,
                             "lead_hours": lead, "rmse": rmse})
            for ch in ("z", "u", "v"):
                rows.append({"run_id": f"C{c:.0e}_{j}", "budget_flops": c, "params": n, "channel": ch,
                             "lead_hours": 0, "rmse": 0.0})
    return pd.DataFrame(rows)


def test_frontier_laws_recover_exponents_and_flag_what_does_not_improve(tmp_path):
    pooled = pd.DataFrame({"budget_flops": BUDGETS, "val_loss": 0.5 * (BUDGETS / 1e11) ** -0.25})
    laws = CL.fit_channel_laws(synthetic_points(), level=0.95, pooled=pooled)
    assert list(laws.columns) == CL.LAW_COLUMNS
    t = laws.set_index(["channel", "lead_hours"])
    assert 0 not in set(laws["lead_hours"])  # lead 0 is the initial state: no law
    assert t.loc[("z", 6), "exponent"] == pytest.approx(0.3, abs=0.02)
    assert t.loc[("v", 48), "exponent"] == pytest.approx(-0.2, abs=0.02)
    for key in [("z", 6), ("z", 48), ("u", 6), ("v", 6)]:
        assert t.loc[key, "improves"] == "yes" and not t.loc[key, "flagged"], key
        assert t.loc[key, "exponent_lo"] < t.loc[key, "exponent"] < t.loc[key, "exponent_hi"]
    assert t.loc[("u", 48), "improves"] == "unclear" and t.loc[("u", 48), "flagged"]
    assert t.loc[("v", 48), "improves"] == "no" and t.loc[("v", 48), "flagged"]
    pooled_row = laws[laws["channel"] == CL.POOLED].iloc[0]
    assert pooled_row["exponent"] == pytest.approx(0.25) and pooled_row["improves"] == "yes"
    assert (laws["n_budgets"] == 4).all()
    png = CL.plot_channel_laws(laws, tmp_path / "channel_laws.png")
    assert png.is_file() and png.stat().st_size > 1000


def test_too_few_budgets_give_no_interval_and_are_flagged():
    points = synthetic_points()
    laws = CL.fit_channel_laws(points[points["budget_flops"] <= 2e11])
    assert (laws["n_budgets"] == 2).all() and laws["exponent_lo"].isna().all() and laws["flagged"].all()
    assert np.isfinite(laws["exponent"]).all()  # the point estimate is still reported


def test_command_refuses_a_dir_without_runs(tmp_path, capsys):
    from wxscale.cli import main as cli

    assert cli(["fit", "channels", str(tmp_path)]) == 2
    assert "runs.csv" in capsys.readouterr().err
