"""`wxscale eval`: rollout scores of a tiny trained run, checked against an independent numpy computation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import make_tiny_dataset
from tests.train_utils import tiny_config
from wxscale.cli import main
from wxscale.data_prep.layout import Stats, load_meta, read_stats, write_stats
from wxscale.evaluation.evaluate import evaluate_model, evaluate_run

CLIM_HOURS = np.array([0, 6, 12, 18])
SCORE_COLUMNS = ["channel", "lead_hours", "model", "persistence", "climatology"]


@pytest.fixture(scope="module")
def clim_dataset(tmp_path_factory) -> Path:
    """The tiny dataset plus a climatology in stats.h5: the train split's mean field per hour of day (the same for
    every day of the year), so ACC and the climatology baseline have something to work with."""
    path = make_tiny_dataset(tmp_path_factory.mktemp("evaldata") / "tiny_clim")
    meta, stats = load_meta(path), read_stats(path)
    fields, hours = [], []
    for shard in meta.shards_of("train"):
        with h5py.File(path / shard.path, "r") as f:
            fields.append(f["fields"][:])
            hours.append(f["time"][:] % 24)
    fields, hours = np.concatenate(fields).astype(np.float64), np.concatenate(hours)
    by_hour = np.stack([fields[hours == h].mean(axis=0) for h in CLIM_HOURS])  # [4, C, H, W]
    clim = np.broadcast_to(by_hour[None], (366, *by_hour.shape)).copy()
    write_stats(path / "stats.h5", Stats(stats.mean, stats.std, stats.diff_std, clim, CLIM_HOURS))
    return path


@pytest.fixture(scope="module")
def trained(clim_dataset, tmp_path_factory) -> Path:
    from wxscale.training.trainer import train

    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    summary = train(tiny_config(clim_dataset, run={"target_samples": 32, "checkpoint_at_samples": [16]}),
                    run_dir=run_dir)
    assert summary["status"] == "complete"
    return run_dir


def _truth(dataset: Path, inits: pd.DataFrame, lead_steps: int) -> np.ndarray:
    """[N, L + 1, C, H, W] float64 straight from the shards."""
    out = []
    for shard, i in zip(inits["shard"], inits["index"]):
        with h5py.File(dataset / shard, "r") as f:
            out.append(f["fields"][i:i + lead_steps + 1])
    return np.stack(out).astype(np.float64)


def _cell_weights(lat_deg) -> np.ndarray:
    """Cell areas of an equally spaced grid whose cells tile the sphere pole to pole, normalised to mean 1."""
    lat = np.asarray(lat_deg)
    edges = np.deg2rad(np.linspace(90, -90, lat.size + 1))
    assert np.allclose(np.rad2deg((edges[:-1] + edges[1:]) / 2), lat)
    w = np.sin(edges[:-1]) - np.sin(edges[1:])
    return w / w.mean()


def test_outputs_of_a_trained_run(trained, tmp_path):
    out = tmp_path / "eval"
    tables = evaluate_run(trained, lead_steps=6, max_inits=5, out=out, batch_size=2, progress=False)
    for name in ("rmse.csv", "acc.csv", "spectra.csv", "inits.csv", "eval.json", "rmse_acc.png", "spectra.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rmse, acc = pd.read_csv(out / "rmse.csv"), pd.read_csv(out / "acc.csv")
    spectra = pd.read_csv(out / "spectra.csv")
    assert list(rmse.columns) == SCORE_COLUMNS and list(acc.columns) == SCORE_COLUMNS
    assert list(spectra.columns) == ["channel", "lead_hours", "wavenumber", "wavelength_km", "forecast", "truth"]
    pd.testing.assert_frame_equal(rmse, tables["rmse"], check_dtype=False)
    assert len(pd.read_csv(out / "inits.csv")) == 5
    assert sorted(rmse["lead_hours"].unique()) == [6 * k for k in range(7)]
    assert set(rmse["channel"]) == {"z", "u", "v"}

    scores = rmse[["model", "persistence", "climatology"]].to_numpy()
    assert np.isfinite(scores).all() and (scores >= 0).all()
    for _, sub in rmse.groupby("channel"):
        p = sub.sort_values("lead_hours")["persistence"].to_numpy()
        assert p[0] == 0 and sub["model"].iloc[0] == pytest.approx(0, abs=1e-3)
        assert np.all(np.diff(p) > 0), "the waves travel: persistence error grows with lead"
        assert sub["climatology"].min() > 0
    # ACC: persistence is the truth at lead 0; the model's is a correlation; the climatology's is 0 by convention.
    assert np.isfinite(acc[["model", "persistence", "climatology"]].to_numpy()).all()
    assert np.allclose(acc.loc[acc["lead_hours"] == 0, "persistence"], 1)
    assert acc["model"].between(-1, 1).all()
    assert (acc["climatology"] == 0).all()
    assert np.isfinite(spectra[["forecast", "truth"]].to_numpy()).all()
    assert (spectra[["forecast", "truth"]] >= 0).all().all() and (spectra["wavenumber"] >= 1).all()
    assert sorted(spectra["lead_hours"].unique()) == [6, 18, 36]
    info = json.loads((out / "eval.json").read_text())
    assert info["checkpoint"].endswith("final") and info["n_inits"] == 5 and info["climatology"]


def test_scores_match_an_independent_numpy_computation(clim_dataset):
    """An identity 'model' is the persistence forecast: through the pipeline (read, normalise, roll out,
    de-normalise, weight, average) its RMSE must equal persistence computed here from the files with numpy."""
    L = 5
    ev = evaluate_model(lambda x: x, clim_dataset, lead_steps=L, init_every=3, batch_size=4, progress=False)
    rmse, acc, inits = ev.tables["rmse"], ev.tables["acc"], ev.tables["inits"]
    assert len(inits) == 9 and ev.info["n_inits"] == 9  # 27 valid starts (0..26) of 32 test steps, every 3rd

    meta, stats = load_meta(clim_dataset), read_stats(clim_dataset, with_climatology=True)
    w = _cell_weights(meta.lat)[:, None]
    o = _truth(clim_dataset, inits, L)  # [N, L + 1, C, H, W]
    mse = (w * (o - o[:, :1]) ** 2).mean(axis=(-2, -1))  # per init, lead, channel
    expected = np.sqrt(mse.mean(axis=0))  # MSE over inits first, then the root
    hour_idx = ((inits["time_hours"].to_numpy()[:, None] + 6 * np.arange(L + 1)) % 24) // 6
    c = stats.climatology[0][hour_idx]  # every day of the year holds the same field per hour
    expected_clim = np.sqrt((w * (o - c) ** 2).mean(axis=(-2, -1)).mean(axis=0))
    fa, oa = o[:, :1] - c, o - c
    per_init = (w * fa * oa).sum(axis=(-2, -1)) / np.sqrt((w * fa**2).sum(axis=(-2, -1))
                                                          * (w * oa**2).sum(axis=(-2, -1)))
    expected_acc = per_init.mean(axis=0)

    def column(df, name):  # [L + 1, C] in the dataset's channel order
        return np.stack([df[df["channel"] == ch].sort_values("lead_hours")[name].to_numpy()
                         for ch in meta.channels], axis=1)

    np.testing.assert_allclose(column(rmse, "persistence"), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(column(rmse, "model"), expected, rtol=1e-4, atol=1e-4)  # float32 round trip
    np.testing.assert_allclose(column(rmse, "climatology"), expected_clim, rtol=1e-6)
    np.testing.assert_allclose(column(acc, "persistence"), expected_acc, rtol=1e-6)
    np.testing.assert_allclose(column(acc, "model"), expected_acc, rtol=1e-4, atol=1e-5)


def test_dataset_without_climatology_leaves_acc_out(tiny_dataset):
    ev = evaluate_model(lambda x: x, tiny_dataset, lead_steps=2, max_inits=2, progress=False)
    assert "acc" not in ev.tables and ev.tables["rmse"]["climatology"].isna().all()
    assert any("no climatology" in n for n in ev.info["notes"])


def test_bad_input_exits_2(trained, clim_dataset, tmp_path, capsys):
    # a test split too short for the requested lead: say the longest it allows (32 gap-free steps -> 31)
    assert main(["eval", str(trained), "--lead-steps", "100", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "too short" in err and "at most 31 steps" in err

    # an unfinished run: no final checkpoint; the message lists the checkpoints there
    stopped = tmp_path / "stopped"
    shutil.copytree(trained, stopped)
    shutil.rmtree(stopped / "checkpoints" / "final")
    (stopped / "checkpoints" / "latest").write_text("samples_16\n")
    summary = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**summary, "status": "stopped", "reason": "signal SIGTERM"}))
    assert main(["eval", str(stopped), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and "samples_16" in err and "--checkpoint" in err
    assert main(["eval", str(stopped), "--checkpoint", "samples_16", "--lead-steps", "2", "--max-inits", "2",
                 "--no-plots", "--no-progress"]) == 0
    assert (stopped / "eval" / "rmse.csv").is_file()

    # the dataset moved: name the config file and key, and the flag; the flag then works
    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["data"]["dataset"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", str(moved), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "data.dataset" in err and "--dataset" in err
    out = tmp_path / "out"
    out.mkdir()
    (out / "rmse_acc.png").write_bytes(b"from an earlier evaluation")
    assert main(["eval", str(moved), "--dataset", str(clim_dataset), "--lead-steps", "2", "--max-inits", "2",
                 "--out", str(out), "--no-plots", "--no-progress"]) == 0
    assert (out / "acc.csv").is_file() and not (out / "rmse_acc.png").exists()  # no stale plot left behind
    assert main(["eval", str(tmp_path / "nothing"), "--no-progress"]) == 2
