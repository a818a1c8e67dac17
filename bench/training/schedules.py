"""Learning-rate schedules as pure functions of the number of samples seen.

Defining schedules in samples (not steps) lets a cooldown branch cut from a trunk at any sample count end exactly
at its target, and keeps a schedule the same when the batch or the world size changes.

- WSD, warmup-stable-decay (Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
  Durations"): linear warmup, constant, then a cooldown over the last ``cooldown_samples`` of the run with progress
  p in [0, 1]: linear ``1 - p``, 1-sqrt ``1 - sqrt(p)``, cosine ``(1 + cos(pi p)) / 2``, scaled to end at lr_min.
  A trunk is WSD with no cooldown (constant after warmup); a branch is the same schedule with a cooldown, so its
  learning rate equals the trunk's until the cooldown starts.
- Cosine over the whole run after warmup (the classical baseline).

The learning rate used for a step is the schedule at the sample count reached *after* that step: the first warmup
step then has a non-zero rate and the last cooldown step has exactly lr_min.
"""

from __future__ import annotations

import dataclasses
import math

from wxscale.errors import ConfigError

SHAPES = ("linear", "1-sqrt", "cosine")


def cooldown_factor(shape: str, p: float) -> float:
    """Fraction of the (lr - lr_min) range left at cooldown progress p in [0, 1]."""
    p = min(max(p, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - p
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(p)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise ConfigError(f"cooldown shape {shape!r} unknown: use one of {', '.join(SHAPES)}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """lr(samples) for one run: ``kind`` is "wsd", "cosine" or "constant"."""

    kind: str
    lr: float
    total_samples: int
    warmup_samples: int = 0
    cooldown_samples: int = 0
    cooldown_shape: str = "1-sqrt"
    lr_min: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine", "constant"):
            raise ConfigError(f"schedule.kind={self.kind!r}: use wsd, cosine or constant")
        if self.cooldown_samples > self.total_samples:
            raise ConfigError(f"schedule: cooldown of {self.cooldown_samples} samples is longer than the run "
                              f"({self.total_samples} samples)")
        if self.lr_min > self.lr:
            raise ConfigError(f"schedule.lr_min={self.lr_min} is above optim.lr={self.lr}")
        cooldown_factor(self.cooldown_shape, 0.0)  # validates the shape

    @property
    def cooldown_start(self) -> int:
        """Sample count where the WSD cooldown begins (the run's end if there is none)."""
        if self.kind != "wsd":
            return self.total_samples
        return self.total_samples - self.cooldown_samples

    def __call__(self, samples: float) -> float:
        warm = min(1.0, samples / self.warmup_samples) if self.warmup_samples > 0 else 1.0
        if self.kind == "constant" or (
            self.kind == "wsd" and (samples <= self.cooldown_start or self.cooldown_samples == 0)
        ):
            return self.lr * warm
        if self.kind == "wsd":
            p = (samples - self.cooldown_start) / self.cooldown_samples
            shape = self.cooldown_shape
        else:  # cosine over everything after warmup
            span = max(self.total_samples - self.warmup_samples, 1)
            p = (samples - self.warmup_samples) / span
            shape = "cosine"
        return warm * (self.lr_min + (self.lr - self.lr_min) * cooldown_factor(shape, p))

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_schedule(sched_cfg, lr: float, total_samples: int) -> Schedule:
    """From a :class:`wxscale.training.config.ScheduleConfig`, the peak lr, and the run's length in samples."""
    cooldown = 0
    if sched_cfg.kind == "wsd":
        if sched_cfg.cooldown_samples is not None:
            cooldown = int(sched_cfg.cooldown_samples)
        elif sched_cfg.cooldown_fraction is not None:
            cooldown = int(round(sched_cfg.cooldown_fraction * total_samples))
    return Schedule(kind=sched_cfg.kind, lr=lr, total_samples=int(total_samples),
                    warmup_samples=int(sched_cfg.warmup_samples), cooldown_samples=cooldown,
                    cooldown_shape=sched_cfg.cooldown_shape, lr_min=float(sched_cfg.lr_min))
