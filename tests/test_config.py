"""The training config: validation at the edge, nearest-key hints, dotted overrides, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from wxscale.errors import ConfigError
from wxscale.training.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    parse_scalar,
    save_config,
    validate_config,
)

BASE = {"data": {"dataset": "d"}, "run": {"target_samples": 64, "global_batch": 8}}


def _tree(**extra) -> dict:
    t = yaml.safe_load(yaml.safe_dump(BASE))
    for section, values in extra.items():
        t.setdefault(section, {}).update(values)
    return t


def test_defaults_fill_in():
    cfg = validate_config(_tree())
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr > 0 and cfg.schedule.kind == "wsd" and cfg.precision.dtype == "fp32"
    assert cfg.loss.rollout_steps == 1 and cfg.model.size == "s0"


@pytest.mark.parametrize("key, hint", [
    ({"optim": {"lrr": 1}}, "did you mean 'optim.lr'"),
    ({"shedule": {}}, "did you mean 'schedule'"),
    ({"run": {"checkpoint_at_sample": [8]}}, "did you mean 'run.checkpoint_at_samples'"),
    ({"schedule": {"cooldown_shap": "linear"}}, "did you mean 'schedule.cooldown_shape'"),
])
def test_unknown_keys_name_the_nearest(key, hint):
    tree = _tree()
    for k, v in key.items():
        if isinstance(tree.get(k), dict):
            tree[k].update(v)
        else:
            tree[k] = v
    with pytest.raises(ConfigError, match=hint):
        validate_config(tree, "cfg.yaml")


@pytest.mark.parametrize("extra, match", [
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"optim": {"betas": [0.9, 1.5]}}, "betas"),
    ({"schedule": {"cooldown_shape": "square"}}, "schedule.cooldown_shape"),
    ({"precision": {"dtype": "fp8"}}, "precision.dtype"),
    ({"run": {"target_samples": 60}}, "not a multiple of run.global_batch=8; use 56 or 64"),
    ({"run": {"checkpoint_at_samples": [12]}}, r"\[12\] are not multiples"),
    ({"run": {"target_samples": None}}, "needs a length"),
    ({"schedule": {"cooldown_samples": 8, "cooldown_fraction": 0.1}}, "not both"),
    ({"schedule": {"kind": "cosine", "cooldown_samples": 8}}, "applies to kind 'wsd'"),
    ({"loss": {"amse_weight": 2}}, "loss.amse_weight"),
])
def test_bad_values_name_the_field(extra, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(_tree(**extra))


def test_missing_dataset():
    with pytest.raises(ConfigError, match="data.dataset: required"):
        validate_config({"data": {}, "run": {"target_samples": 8}})


def test_scalars_and_overrides():
    assert parse_scalar("3e-4") == 3e-4 and isinstance(parse_scalar("3e-4"), float)  # YAML 1.1 reads a str
    assert parse_scalar("16") == 16 and parse_scalar("true") is True and parse_scalar("null") is None
    assert parse_scalar("[2, 4]") == [2, 4] and parse_scalar("1-sqrt") == "1-sqrt"
    tree = apply_overrides(_tree(), ["optim.lr=3e-4", "model.overrides.patch=2", "run.checkpoint_at_samples=[8,16]",
                                     "schedule.cooldown_shape=linear"])
    cfg = validate_config(tree)
    assert cfg.optim.lr == 3e-4 and cfg.model.overrides == {"patch": 2}
    assert cfg.run.checkpoint_at_samples == [8, 16] and cfg.schedule.cooldown_shape == "linear"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    # 1e-3 and 1e15 unquoted: numbers in YAML 1.2 (PyYAML's YAML 1.1 rules would read strings)
    path.write_text("data: {dataset: d}\nrun: {target_samples: 64, global_batch: 8, budget_flops: 1e15}\n"
                    "optim: {lr: 1e-3}\n")
    cfg = load_config(path, ["run.seed=7"])
    assert cfg.optim.lr == 1e-3 and cfg.run.budget_flops == 1e15 and cfg.run.seed == 7
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    text = (tmp_path / "resolved.yaml").read_text()
    assert "lr_min" in text and "cooldown_shape" in text  # defaults are written out: the file is the whole config


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(tmp_path / "list.yaml")
