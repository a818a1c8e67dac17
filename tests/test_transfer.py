"""`wxscale transfer`: downstream subsets, fine-tuning from pretrained weights, the study table and its reuse,
and the errors for bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import make_tiny_dataset
from tests.train_utils import tiny_config
from wxscale.data_prep.loader import build_loader
from wxscale.errors import WxscaleError
from wxscale.study.plan import train_samples_of
from wxscale.study.transfer import (
    COLUMNS,
    TransferSpec,
    check_spec,
    effective_data,
    fit_curves,
    physics_shift,
    plan_study,
    pretrain_trunk_checkpoint,
    report,
    run_study,
)
from wxscale.training.checkpoint import load_checkpoint
from wxscale.training.trainer import train

TINY_MODEL = {"patch": 2, "window": [2, 4]}


def test_train_samples_is_a_fixed_nested_subset(tiny_dataset):
    def ids(n):
        loader = build_loader(tiny_dataset, "train", batch_size=4, num_workers=0, max_samples=n)
        assert loader.n_samples == n
        return set(zip(loader.index.shard_of.tolist(), loader.index.start_of.tolist()))

    assert ids(8) < ids(16)  # the same seeded permutation: a smaller subset lies inside a larger one
    assert ids(8) == ids(8)
    holds = train_samples_of(str(tiny_dataset))
    with pytest.raises(WxscaleError, match=f"data.train_samples={holds + 1}.*holds {holds}"):
        build_loader(tiny_dataset, "train", batch_size=4, num_workers=0, max_samples=holds + 1)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(run_dir / "checkpoints" / "final")
    return state["model"]


def test_finetune_starts_from_the_pretrained_weights(tiny_dataset, tmp_path):
    pre = tmp_path / "pre"
    train(tiny_config(tiny_dataset, run={"target_samples": 16}), run_dir=pre)
    # One step at a negligible learning rate: the fine-tuned weights must still be the pretrained ones.
    still = {"optim": {"lr": 1e-12}, "schedule": {"warmup_samples": 0},
             "run": {"target_samples": 4}, "data": {"train_samples": 8}}
    ft_cfg = tiny_config(tiny_dataset, **copy.deepcopy(still))
    ft_cfg["run"].update(init_from=str(pre / "checkpoints" / "final"), init_weights_only=True)
    ft = train(ft_cfg, run_dir=tmp_path / "ft")
    scratch = train(tiny_config(tiny_dataset, **copy.deepcopy(still)), run_dir=tmp_path / "scratch")
    w_pre, w_ft, w_sc = _weights(pre), _weights(tmp_path / "ft"), _weights(tmp_path / "scratch")
    diff_ft = max(float((w_ft[k] - w_pre[k]).abs().max()) for k in w_pre)
    diff_sc = max(float((w_sc[k] - w_pre[k]).abs().max()) for k in w_pre)
    # scratch shares the seed, so it differs from the pretrained weights by what the 4 pretraining steps moved
    assert diff_ft < 1e-6 and diff_sc > 1e-3
    # fresh counters (not the pretraining's 16 samples), and the source is recorded
    assert (ft["step"], ft["samples"]) == (1, 4)
    assert ft["init_from"].endswith("final") and scratch["init_from"] is None
    assert ft["val_loss"] < scratch["val_loss"]  # the pretrained model is already better than random weights


def _spec(tmp_path: Path, **kw) -> TransferSpec:
    base = dict(pretrain=str(tmp_path / "pre"), targets={"near": str(tmp_path / "near")}, sizes=["s0"],
                counts=[4], global_batch=4, pretrain_steps=3, steps=2, lead_hours=6, eval_inits=2,
                model_overrides=TINY_MODEL)
    base.update(kw)
    return TransferSpec(**base)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transfer")
    make_tiny_dataset(root / "pre", seed=0)
    make_tiny_dataset(root / "near", seed=1)
    return root


def test_bad_target_grid_or_channels_names_both(two_datasets, tmp_path):
    make_tiny_dataset(tmp_path / "wide", grid=(8, 32))
    make_tiny_dataset(tmp_path / "two", channels=("z", "t"))
    spec = _spec(two_datasets, targets={"wide": str(tmp_path / "wide")})
    with pytest.raises(WxscaleError, match=r"--target wide=.*grid 8x32.*pretrained model's data .* grid 8x16"):
        check_spec(spec)
    spec = _spec(two_datasets, targets={"two": str(tmp_path / "two")})
    with pytest.raises(WxscaleError, match=r"channels \['z', 't'\].*channels \['z', 'u', 'v'\]"):
        check_spec(spec)


def test_count_above_the_train_split_is_refused(two_datasets):
    holds = train_samples_of(str(two_datasets / "near"))
    with pytest.raises(WxscaleError, match=f"--counts .*256 downstream samples.*near=.*holds {holds}"):
        check_spec(_spec(two_datasets, counts=[4, 256]))
    with pytest.raises(WxscaleError, match="powers of 2"):
        check_spec(_spec(two_datasets, counts=[4, 12]))


def test_study_table_and_reuse(two_datasets, tmp_path):
    spec = _spec(two_datasets)
    check_spec(spec)
    template = {"data": {"num_workers": 0}, "optim": {"lr": 2e-3}, "validation": {"max_batches": 2},
                "logging": {"progress": False}}
    out = tmp_path / "study"
    plan_study(out, spec, template)
    assert run_study(out, spec, jobs=2)
    report(out, spec)
    table = pd.read_csv(out / "transfer.csv")
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert "rmse_z_6h" in table.columns and np.isfinite(table["rmse_z_6h"]).all()
    assert sorted(table["mode"]) == ["finetune", "scratch"] and (table["downstream_samples"] == 4).all()
    assert (table["steps"] == 2).all() and (table["status"] == "complete").all()
    ft_run = Path(table[table["mode"] == "finetune"]["run_dir"].iloc[0])
    summary = json.loads((ft_run / "summary.json").read_text())
    ckpt = out / "pretrain" / "runs" / "trunk_s0" / "checkpoints" / f"samples_{pretrain_trunk_checkpoint(spec)}"
    assert Path(summary["init_from"]).resolve() == ckpt.resolve()  # through the finetune sweep's trunk link
    assert (out / "transfer_near.png").is_file() and (out / "transfer_summary.md").is_file()

    finished = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert len(finished) >= 5  # pretrain trunk + branch, finetune, scratch trunk + branch
    plan_study(out, spec, template)
    assert run_study(out, spec, jobs=2)  # everything is done: nothing runs again
    report(out, spec)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == finished
    pd.testing.assert_frame_equal(pd.read_csv(out / "transfer.csv"), table)
    with pytest.raises(WxscaleError, match="different"):
        plan_study(out, _spec(two_datasets, steps=3), template)


def test_shift_and_effective_data():
    pre = [{"mean_depth": 10_000.0, "omega": 7e-5}]
    assert physics_shift(pre, pre) == (0.0, "")
    shift, words = physics_shift(pre, [{"mean_depth": 5000.0, "omega": 7e-5}])
    assert shift == pytest.approx(np.log(2)) and words == "mean_depth 10000->5000"
    mixture = pre + [{"mean_depth": 5000.0, "omega": 7e-5}]
    assert physics_shift(mixture, [{"mean_depth": 5000.0, "omega": 7e-5}])[0] == 0.0  # nearest setting
    assert np.isnan(physics_shift([], pre)[0])
    # scratch follows L = 2 D^-0.5 exactly; finetune at D = 4 reaches scratch's loss at D = 64: 60 samples saved
    counts = [4, 16, 64]
    rows = [{"size": "s0", "params": 10, "target": "t", "shift": 0.0, "downstream_samples": d, "mode": "scratch",
             "val_loss": 2 * d**-0.5, "status": "complete"} for d in counts]
    rows += [{**r, "mode": "finetune", "val_loss": 2 * 64**-0.5 if r["downstream_samples"] == 4 else
              r["val_loss"]} for r in rows]
    table = pd.DataFrame(rows)
    fits = fit_curves(table)
    sc = fits[fits["mode"] == "scratch"].iloc[0]
    assert sc["coefficient"] == pytest.approx(2) and sc["exponent"] == pytest.approx(-0.5)
    saved = effective_data(table, fits).set_index("downstream_samples")
    assert saved.loc[4, "effective_samples"] == pytest.approx(64)
    assert saved.loc[4, "effective_data_transferred"] == pytest.approx(60)
    assert saved.loc[16, "multiplier"] == pytest.approx(1) and not saved.loc[4, "extrapolated"]
