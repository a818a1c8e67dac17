"""The training config: one validated tree, loaded from YAML, with dotted ``key=value`` overrides.

Every field is checked at the edge, strictly: no type coercion (``run.global_batch: true`` is an error, not batch 1),
no non-finite numbers (``optim.lr: inf`` is an error, not a failure at step 2), ranges; an unknown key is refused
with the nearest valid name. YAML is read with the safe loader (no tags that build objects) and YAML 1.2 number
rules (``1e-3`` is a float, as in every other YAML reader). The
resolved config (what was asked plus every default) is saved as ``<run>/config.yaml`` and is enough to rerun the
same run: ``wxscale train --config RUN/config.yaml --run-dir NEW``.

Sections::

    data        dataset dir, loader kind and workers, the channels the run expects
    model       ladder size + SwinConfig overrides, torch.compile
    optim       AdamW hyper-parameters, implementation, gradient clipping
    schedule    warmup / WSD cooldown (linear, 1-sqrt, cosine) / cosine baseline, in samples
    loss        rollout steps, AMSE weight (Subich et al. 2025), latitude weighting
    run         length (target_samples and/or budget_flops), batch, seed, branch source, checkpoints
    validation  interval and size of the validation pass
    precision   fp32 | bf16 | fp16 (CUDA only), TF32
    distributed launcher detection and backend
    logging     metrics interval and progress bar
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wxscale.errors import ConfigError
from wxscale.files import write_text_atomic


def _fspath(value: Any) -> Any:
    """A path object (from Python callers) as the string the YAML would hold; anything else as it is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class _Section(BaseModel):
    # strict: YAML's true is no integer and "8" is no number; allow_inf_nan: inf / nan are no learning rates.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: str = Field(description="dataset dir written by `wxscale prep`")
    loader: Literal["torch", "dali"] = "torch"
    num_workers: int = Field(0, ge=0)
    # The channels the run is meant for; when given, the dataset's channels must be exactly these (in order).
    channels: list[str] | None = None
    # validate the dataset dir before training like `wxscale check`: "quick" skips checksums and the NaN scan
    check: Literal["full", "quick", "off"] = "quick"
    # Train on a fixed subset of this many train-split samples (a downstream data size in a transfer study): the
    # first n of one seeded permutation, so smaller subsets lie inside larger ones; None: the whole split.
    train_samples: int | None = Field(None, ge=1)

    _path = field_validator("dataset", mode="before")(lambda v: _fspath(v))


class ModelConfig(_Section):
    size: str = "s0"  # a name on model.LADDER
    overrides: dict[str, Any] = Field(default_factory=dict)  # SwinConfig fields, e.g. {patch: 2, window: [2, 4]}
    compile: bool = False  # torch.compile the network
    # torch.compile mode: "reduce-overhead" records CUDA graphs (GPU: no per-kernel launch cost for tiny models)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"

    @field_validator("overrides")
    @classmethod
    def _finite_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = non_finite_paths(v)
        if bad:
            raise ValueError(f"non-finite number(s) at {', '.join(bad)}; give finite values")
        return v


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max global grad norm; 0 disables clipping
    impl: Literal["auto", "apex", "fused", "foreach", "plain"] = "auto"

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML has lists, not tuples; the items stay strict

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v


class ScheduleConfig(_Section):
    """Learning rate as a function of samples seen (see wxscale.training.schedules)."""

    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_samples: int = Field(0, ge=0)
    # WSD cooldown length: the last `cooldown_samples` of the run (0 = a constant-LR trunk). Alternatively a
    # fraction of the run's length; give at most one of the two.
    cooldown_samples: int | None = Field(None, ge=0)
    cooldown_fraction: float | None = Field(None, ge=0, le=1)
    cooldown_shape: Literal["linear", "1-sqrt", "cosine"] = "1-sqrt"
    lr_min: float = Field(0.0, ge=0)  # absolute learning rate at the end of the cooldown / cosine

    @model_validator(mode="after")
    def _one_cooldown(self) -> ScheduleConfig:
        if self.cooldown_samples is not None and self.cooldown_fraction is not None:
            raise ValueError("give schedule.cooldown_samples or schedule.cooldown_fraction, not both")
        return self


class LossConfig(_Section):
    rollout_steps: int = Field(1, ge=1)  # k autoregressive steps in the training loss
    amse_weight: float = Field(0.0, ge=0, le=1)  # loss = (1 - w) MSE + w AMSE
    amse_eps: float = Field(1e-12, gt=0)
    lat_weighted: bool = True  # area weights (WeatherBench 2) in the MSE


class RunConfig(_Section):
    dir: str | None = None  # run dir; `--run-dir` overrides it
    seed: int = 0
    global_batch: int = Field(8, ge=1)  # samples per optimizer step, summed over ranks
    target_samples: int | None = Field(None, ge=1)  # run length in samples (a multiple of global_batch)
    budget_flops: float | None = Field(None, gt=0)  # stop at the first step whose training FLOPs reach this
    max_wall_s: float | None = Field(None, gt=0)  # stop (status: stopped) after this much wall time
    init_from: str | None = None  # a checkpoint dir (<trunk run>/checkpoints/<name>): branch from it
    # With init_from: take the model weights only (fine-tuning): fresh optimizer, schedule, loader and counters.
    init_weights_only: bool = False
    checkpoint_at_samples: list[int] = Field(default_factory=list)  # trunk checkpoints kept by name
    checkpoint_every_steps: int | None = Field(None, ge=1)  # rolling checkpoint for --resume
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(None, ge=1)  # torch intra-op threads (None: torch's default)
    # torch.use_deterministic_algorithms: "auto" = on for CPU (bit-exact resume, free there), off on CUDA
    # (deterministic index_select / scatter kernels cost time); recorded in summary.json
    deterministic: bool | Literal["auto"] = "auto"

    _paths = field_validator("dir", "init_from", mode="before")(lambda v: _fspath(v))

    @field_validator("checkpoint_at_samples")
    @classmethod
    def _ckpts(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v):
            raise ValueError("sample counts must be positive")
        return sorted(set(v))

    @model_validator(mode="after")
    def _length(self) -> RunConfig:
        if self.target_samples is None and self.budget_flops is None:
            raise ValueError("give run.target_samples or run.budget_flops (or both): the run needs a length")
        return self


class ValidationConfig(_Section):
    every_samples: int | None = Field(None, ge=1)  # validate each time this many samples have passed
    max_batches: int | None = Field(None, ge=1)  # cap per validation pass (None: the whole valid split)
    batch_size: int | None = Field(None, ge=1)  # per rank; default: the training per-rank batch


class PrecisionConfig(_Section):
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    tf32: bool = False  # allow TF32 matmuls on CUDA in fp32 runs


class DistributedConfig(_Section):
    launcher: Literal["auto", "none", "torchrun", "slurm", "mpi"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_s: float = Field(600, gt=0)


class LoggingConfig(_Section):
    every_steps: int = Field(1, ge=1)
    progress: bool = True  # tqdm bar on rank 0


class TrainConfig(_Section):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    run: RunConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _cross(self) -> TrainConfig:
        g = self.run.global_batch
        if self.run.target_samples is not None and self.run.target_samples % g:
            lo = max(g, self.run.target_samples // g * g)
            raise ValueError(f"run.target_samples={self.run.target_samples} is not a multiple of "
                             f"run.global_batch={g}; use {lo} or {lo + g} so the run ends exactly there")
        bad = [s for s in self.run.checkpoint_at_samples if s % g]
        if bad:
            raise ValueError(f"run.checkpoint_at_samples {bad} are not multiples of run.global_batch={g}")
        if self.schedule.kind != "wsd" and (self.schedule.cooldown_samples or self.schedule.cooldown_fraction):
            raise ValueError(f"schedule.cooldown_* applies to kind 'wsd', not {self.schedule.kind!r}")
        return self


def non_finite_paths(value: Any, prefix: str = "") -> list[str]:
    """Where in a nested dict / list a float is inf or nan (the free-form fields pydantic does not type)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [prefix or "(value)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, f"{prefix}[{i}]")]
    return []


# --------------------------------------------------------------------------------------------------------------
# errors with the nearest valid key


def _section_fields(loc: tuple) -> list[str]:
    """Field names valid at the parent of ``loc`` (for the 'did you mean' hint)."""
    cls: Any = TrainConfig
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def _format_errors(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if isinstance(p, str))
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = _section_fields(loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join((*loc[:-1], near[0]))!r}?" if near else ""
            lines.append(f"unknown key {key!r}{hint} (valid here: {', '.join(valid)})")
        elif e["type"] == "missing":
            lines.append(f"{key}: required but missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg} (got {e.get('input')!r})" if e["loc"] else msg)
    if len(lines) == 1:  # the common case reads as one line
        return f"{where}: invalid config: {lines[0]}"
    return f"{where}: invalid config:\n  " + "\n  ".join(lines)


# --------------------------------------------------------------------------------------------------------------
# overrides, load, save


class _YamlLoader(yaml.SafeLoader):
    """The safe loader (plain data only: a tag such as !!python/object is an error) with YAML 1.2 floats."""


# PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; YAML 1.2 and users read it as a number.
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where (PyYAML's own text spans several lines)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML text safely; broken YAML or an object-building tag is a one-line :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - _YamlLoader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(err)}); only plain YAML data is accepted"
                          ) from None


def read_yaml_file(path: str | os.PathLike, flag: str = "config file") -> Any:
    """A YAML file's data; missing, unreadable or invalid files are one-line errors naming ``flag`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag} {path} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{flag} {path}: cannot be read ({err})") from None
    return load_yaml_text(text, f"{flag} {path}")


def parse_scalar(text: str, where: str = "value") -> Any:
    """A command-line value as YAML would read it ('3e-4' is a float); 'inf' and 'nan' become floats, so the
    config refuses them as non-finite numbers rather than as strings."""
    value = load_yaml_text(text, where) if text.strip() else ""
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return float(value)
    return value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply dotted ``a.b.c=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty part in the key {key!r}")
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = parse_scalar(text, f"override {item!r}")
    return tree


def validate_config(tree: dict | TrainConfig, where: str = "config") -> TrainConfig:
    if isinstance(tree, TrainConfig):
        return tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections (data, model, optim, ...)")
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply dotted overrides, validate. Relative dataset / init_from paths stay as given."""
    path = Path(path)
    tree = read_yaml_file(path) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, optim, ...)")
    apply_overrides(tree, list(overrides or []))
    return validate_config(tree, str(path))


def config_to_dict(cfg: TrainConfig) -> dict:
    return cfg.model_dump(mode="json")


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------------------
# resuming a run: which config changes keep what is computed


# Config keys that may change when a run is resumed (they do not change what is computed; cpu_threads changes
# only the speed, and the order of floating-point sums inside some kernels).
RESUMABLE_CHANGES = ("run.dir", "run.max_wall_s", "run.checkpoint_every_steps", "run.cpu_threads",
                     "data.num_workers", "data.check", "logging.", "distributed.")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every difference that is not in :data:`RESUMABLE_CHANGES`."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b, name = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, name + ".")
        elif a != b and not any(name == r or (r.endswith(".") and name.startswith(r)) for r in RESUMABLE_CHANGES):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def check_resume_config(run_dir: str | os.PathLike, cfg: TrainConfig) -> None:
    """Refuse ``--resume`` with a config that computes something else than the run's own config.yaml (finished
    runs too: "already complete" must not answer a question about another config)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    changes = config_changes(config_to_dict(load_config(path)), config_to_dict(cfg))
    if changes:
        raise ConfigError(f"--resume with a config that differs from {path} in: " + "; ".join(changes)
                          + ". Resume with the run's own config.yaml, or train into a new --run-dir")
