"""CoordTok-SiT configs: plain dataclasses read strictly from YAML.

A SiT YAML file has three sections, each a dataclass below:

* ``model:`` -> :class:`SiTConfig` (the architecture of :class:`sit.models.TriplaneSiT`);
* ``train:`` -> :class:`SiTTrainConfig` (``coordtok sit-train``);
* ``sample:`` -> :class:`SampleConfig` (``coordtok sample`` and the periodic look during training).

Defaults are the paper's (SiT-L/2 over the 1280-token triplane, AdamW lr 1e-4 without weight
decay, batch 64, 600K iterations, EMA 0.9999, Euler-Maruyama with 250 steps). Unknown keys,
unknown sections and wrong types raise a one-line :class:`coordtok.config.ConfigError` (a
``ValueError``) naming the key and the file.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from coordtok.config import ConfigError, _check_type


def _check_and_coerce(cls, values: dict, source: str, section: str) -> dict:
    """Strictly map a YAML section onto dataclass ``cls``: unknown keys and bad types raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"section '{section}' in {source} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key '{section}.{key}' in {source}; known keys: {', '.join(sorted(known))}")
        kind = hints[key]
        bad = ConfigError(f"key '{section}.{key}' in {source} must be {kind}, got {value!r}")
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise bad
        elif typing.get_origin(kind) is tuple:
            args = typing.get_args(kind)
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise bad
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise bad
            value = tuple(value)
        else:  # optionals and lists: the tokenizer config's checker
            try:
                value = _check_type(value, kind, f"{section}.{key}")
            except ConfigError:
                raise bad from None
        out[key] = value
    return out


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping at the top level")
    return data


class _SectionConfig:
    """Mixin: build a dataclass from a dict or from one section of a YAML file, strictly."""

    SECTION: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls, values: dict, source: str = "<dict>"):
        try:
            return cls(**_check_and_coerce(cls, values, source, cls.SECTION))
        except ValueError as e:
            msg = str(e)
            if source not in msg:
                msg = f"{msg} (in {source})"
            raise ConfigError(msg) from None

    @classmethod
    def from_yaml(cls, path: str | Path):
        data = _read_yaml(path)
        if cls.SECTION not in data:
            raise ConfigError(f"{path} has no '{cls.SECTION}:' section")
        return cls.from_dict(data[cls.SECTION] or {}, source=str(path))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class SiTConfig(_SectionConfig):
    """Every hyper-parameter of :class:`TriplaneSiT` (the ``model:`` section). Defaults: SiT-L/2
    over the paper's 1280-token triplane (grid ``(Tl, Hl, Wl) = (32, 16, 16)``, C = 8)."""

    SECTION: typing.ClassVar[str] = "model"

    hidden: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    patch: int = 2
    grid: tuple[int, int, int] = (32, 16, 16)  # latent (Tl, Hl, Wl)
    channels: int = 8
    learn_sigma: bool = False  # reference: True, with the second half of the output unused

    def __post_init__(self):
        self.grid = tuple(self.grid)
        for name in ("hidden", "depth", "heads", "patch", "channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if len(self.grid) != 3 or any(g <= 0 for g in self.grid):
            raise ConfigError(f"model.grid must be three positive ints (Tl, Hl, Wl), got {self.grid}")
        if self.hidden % self.heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        if self.hidden % 4:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by 4 (2D sin-cos embedding)")
        if any(g % self.patch for g in self.grid):
            raise ConfigError(f"model.grid {self.grid} must be divisible by model.patch ({self.patch})")
        tl, hl, wl = self.grid
        if hl != wl:
            # yt is (Tl, Wl) and xt is (Tl, Hl); they share one learnable positional embedding.
            raise ConfigError(f"model.grid needs Hl == Wl (yt and xt share a positional embedding), got {self.grid}")


@dataclass
class SiTTrainConfig(_SectionConfig):
    """The ``train:`` section (``coordtok sit-train``); defaults are the paper's SiT settings."""

    SECTION: typing.ClassVar[str] = "train"

    lr: float = 1e-4  # constant
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 64  # global batch: per-process batch x processes x grad_accum
    grad_accum: int = 1
    max_steps: int = 600_000  # optimizer steps ("iterations" in the paper)
    ema: float = 0.9999  # EMA decay over parameters (buffers are copied); sampling uses the EMA
    mixed_precision: str = "no"  # no | fp16 | bf16 (SiT trains in fp32 with TF32 matmuls)
    allow_tf32: bool = True
    max_grad_norm: float | None = None
    seed: int = 0
    num_workers: int = 0  # DataLoader workers reading latent shards (memory-mapped, cheap)
    log_every: int = 100
    ckpt_every: int = 10_000
    keep_checkpoints: int = 2
    sample_every: int = 10_000  # draw sample_num latents with the EMA model every this many steps; 0 = off
    sample_num: int = 4
    sample_steps: int = 50  # Euler-Maruyama steps of that periodic look (cheap, not the 250 of `sample`)
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    out_dir: str = "runs/sit"
    path: str = "linear"  # "linear" | "gvp"
    prediction: str = "velocity"

    def __post_init__(self):
        if self.path not in ("linear", "gvp"):
            raise ConfigError(f"train.path must be 'linear' or 'gvp', got {self.path!r}")
        if self.prediction != "velocity":
            raise ConfigError(f"train.prediction must be 'velocity', got {self.prediction!r}")
        if not 0.0 <= self.ema <= 1.0:
            raise ConfigError(f"train.ema must be in [0, 1], got {self.ema}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("batch_size", "grad_accum", "max_bad_steps", "sample_num"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "sample_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_steps < 2:
            raise ConfigError(f"train.sample_steps must be >= 2, got {self.sample_steps}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must have two values, got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be positive (or null), got {self.max_grad_norm}")

    @property
    def iterations(self) -> int:
        """The paper's name for :attr:`max_steps`."""
        return self.max_steps


@dataclass
class SampleConfig(_SectionConfig):
    """The ``sample:`` section: the paper's sampler (Euler-Maruyama SDE, 250 steps)."""

    SECTION: typing.ClassVar[str] = "sample"

    sampler: str = "sde"  # "sde" (Euler-Maruyama) | "heun_sde" | "ode"
    steps: int = 250
    diffusion_norm: float = 1.0
    last_step_size: float = 0.04
    ode_method: str = "dopri5"
    atol: float = 1e-6
    rtol: float = 1e-3

    def __post_init__(self):
        if self.sampler not in ("sde", "heun_sde", "ode"):
            raise ConfigError(f"sample.sampler must be 'sde', 'heun_sde' or 'ode', got {self.sampler!r}")
        if self.steps < 2:
            raise ConfigError(f"sample.steps must be >= 2, got {self.steps}")
        if not 0.0 <= self.last_step_size < 1.0:
            raise ConfigError(f"sample.last_step_size must be in [0, 1), got {self.last_step_size}")


SECTIONS = {"model": SiTConfig, "train": SiTTrainConfig, "sample": SampleConfig}


def load_sit_configs(path: str | Path) -> tuple[SiTConfig, SiTTrainConfig, SampleConfig]:
    """Read all three sections of a SiT YAML file; unknown sections or keys raise ``ConfigError``.

    A missing ``train:`` or ``sample:`` section gives the paper defaults; ``model:`` is required.
    """
    cfg = load_sit_run_config(path)
    return cfg.model, cfg.train, cfg.sample


@dataclass
class SiTRunConfig:
    """A whole SiT config file: the three sections plus where it came from."""

    model: SiTConfig
    train: SiTTrainConfig
    sample: SampleConfig
    source: str = "<dict>"

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "train": self.train.to_dict(), "sample": self.sample.to_dict()}


def load_sit_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> SiTRunConfig:
    """Read a SiT YAML (or a dict of sections) strictly, with optional nested ``overrides``
    applied on top, e.g. ``{"train": {"max_steps": 10}}``. ``model:`` is required."""
    if isinstance(path_or_dict, dict):
        raw, source = dict(path_or_dict), "<dict>"
    else:
        raw, source = _read_yaml(path_or_dict), str(path_or_dict)
    for key in list(raw) + list(overrides or {}):
        if key not in SECTIONS:
            raise ConfigError(f"unknown section '{key}' in {source}; known sections: {', '.join(SECTIONS)}")
    if "model" not in raw:
        raise ConfigError(f"{source} has no 'model:' section")
    for section, values in (overrides or {}).items():
        raw[section] = {**(raw.get(section) or {}), **(values or {})}
    parts = {name: cls.from_dict(raw.get(name) or {}, source=source) for name, cls in SECTIONS.items()}
    return SiTRunConfig(**parts, source=source)
