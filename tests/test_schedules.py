"""Learning-rate schedules in samples: WSD (linear, 1-sqrt, cosine cooldowns), cosine baseline, warmup."""

from __future__ import annotations

import math

import pytest

from wxscale.errors import ConfigError
from wxscale.training.config import ScheduleConfig
from wxscale.training.schedules import Schedule, build_schedule, cooldown_factor


def test_cooldown_shapes():
    assert cooldown_factor("linear", 0.25) == 0.75
    assert cooldown_factor("1-sqrt", 0.25) == 0.5
    assert cooldown_factor("cosine", 0.5) == pytest.approx(0.5)
    for shape in ("linear", "1-sqrt", "cosine"):
        assert cooldown_factor(shape, 0.0) == 1.0 and cooldown_factor(shape, 1.0) == pytest.approx(0.0, abs=1e-15)
        assert cooldown_factor(shape, 2.0) == cooldown_factor(shape, 1.0)  # clamped
    with pytest.raises(ConfigError, match="unknown"):
        cooldown_factor("square", 0.5)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt", "cosine"])
def test_wsd(shape):
    s = Schedule("wsd", lr=1.0, total_samples=1000, warmup_samples=100, cooldown_samples=200, cooldown_shape=shape,
                 lr_min=0.1)
    assert s.cooldown_start == 800
    assert s(50) == pytest.approx(0.5) and s(100) == 1.0  # linear warmup
    assert all(s(n) == 1.0 for n in range(100, 801, 50))  # stable
    assert s(1000) == pytest.approx(0.1)  # ends exactly at lr_min
    assert s(850) == pytest.approx(0.1 + 0.9 * cooldown_factor(shape, 0.25))
    values = [s(n) for n in range(800, 1001, 10)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_branch_equals_trunk_until_its_cooldown():
    trunk = Schedule("wsd", lr=3e-4, total_samples=10_000, warmup_samples=500)
    branch = Schedule("wsd", lr=3e-4, total_samples=4_000, warmup_samples=500, cooldown_samples=800)
    assert all(branch(n) == trunk(n) for n in range(0, 3_201, 16))
    assert branch(3_216) < trunk(3_216) and branch(4_000) == 0.0


def test_cosine_and_constant():
    s = Schedule("cosine", lr=2.0, total_samples=1100, warmup_samples=100, lr_min=0.2)
    assert s(100) == pytest.approx(2.0) and s(600) == pytest.approx(1.1) and s(1100) == pytest.approx(0.2)
    assert s(350) == pytest.approx(0.2 + 1.8 * (1 + math.cos(math.pi * 0.25)) / 2)
    c = Schedule("constant", lr=2.0, total_samples=100, warmup_samples=10)
    assert c(5) == 1.0 and c(100) == 2.0


def test_build_from_config_and_bad_values():
    s = build_schedule(ScheduleConfig(cooldown_fraction=0.2, cooldown_shape="linear"), 1.0, 5000)
    assert s.cooldown_samples == 1000 and s.cooldown_start == 4000
    assert build_schedule(ScheduleConfig(), 1.0, 5000).cooldown_samples == 0  # a trunk: constant
    with pytest.raises(ConfigError, match="longer than the run"):
        Schedule("wsd", lr=1.0, total_samples=100, cooldown_samples=200)
    with pytest.raises(ConfigError, match="lr_min"):
        Schedule("wsd", lr=1.0, total_samples=100, lr_min=2.0)
