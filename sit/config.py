"""CoordTok-SiT configs: plain dataclasses read by the project's one config loader
(:mod:`coordtok.config`).

A SiT YAML file has three sections, each a dataclass below:

* ``model:`` -> :class:`SiTConfig` (the architecture of :class:`sit.models.TriplaneSiT`);
* ``train:`` -> :class:`SiTTrainConfig` (``coordtok sit-train``; the common training keys come
  from :class:`coordtok.config.LoopConfig`);
* ``sample:`` -> :class:`SampleConfig` (``coordtok sample`` and the periodic look during training).

Defaults are the CoordTok paper's (Table 6: SiT-L/2 over the 1280-token triplane, AdamW lr 1e-4
without weight decay, batch 64, 600K iterations, EMA 0.9999, Euler-Maruyama with 250 steps).
Unknown keys, unknown sections and wrong types raise a one-line
:class:`coordtok.config.ConfigError` naming the file, the section and the key.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

from coordtok.config import ConfigError, LoopConfig, RunConfig, Section, from_dict, positive, read_sections


@dataclass
class SiTConfig(Section):
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
    # 1: unconditional (the paper's, the released SiT-L/2); N > 1: class-conditional with a learned
    # null class (label index N) for classifier-free guidance
    num_classes: int = 1
    # labels replaced by the null class in training; None: 0.1 when conditional (DiT/SiT), 0 for 1 class
    class_dropout_prob: float | None = None

    def validate(self) -> None:
        self.grid = tuple(self.grid)
        positive(self, "hidden", "depth", "heads", "patch", "channels", "mlp_ratio", "num_classes")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"'class_dropout_prob' must be in [0, 1), got {self.class_dropout_prob}")
        if self.num_classes == 1 and self.class_dropout:
            raise ConfigError(
                f"'class_dropout_prob' ({self.class_dropout_prob}) needs 'num_classes' > 1: an "
                f"unconditional SiT has no null class to drop labels to"
            )
        if len(self.grid) != 3 or any(g <= 0 for g in self.grid):
            raise ConfigError(f"'grid' must be three positive ints (Tl, Hl, Wl), got {self.grid}")
        if self.hidden % self.heads:
            raise ConfigError(f"'hidden' ({self.hidden}) must be divisible by 'heads' ({self.heads})")
        if self.hidden % 4:
            raise ConfigError(f"'hidden' ({self.hidden}) must be divisible by 4 (2D sin-cos embedding)")
        if any(g % self.patch for g in self.grid):
            raise ConfigError(f"'grid' {list(self.grid)} must be divisible by 'patch' ({self.patch})")
        tl, hl, wl = self.grid
        if hl != wl:
            # yt is (Tl, Wl) and xt is (Tl, Hl); they share one learnable positional embedding.
            raise ConfigError(f"'grid' needs Hl == Wl (yt and xt share a positional embedding), got {list(self.grid)}")

    @property
    def class_dropout(self) -> float:
        """The label dropout rate in effect: ``class_dropout_prob``, or its default (0.1 when
        conditional, 0 for one class) when it is unset."""
        if self.class_dropout_prob is None:
            return 0.1 if self.num_classes > 1 else 0.0
        return float(self.class_dropout_prob)


@dataclass
class SiTTrainConfig(LoopConfig):
    """The ``train:`` section (``coordtok sit-train``); defaults are the paper's SiT settings."""

    SECTION: typing.ClassVar[str] = "train"
    RENAMED: typing.ClassVar[dict] = {"sample_every": "val_every"}

    weight_decay: float = 0.0
    batch_size: int = 64
    max_steps: int = 600_000  # optimizer steps ("iterations" in the paper)
    mixed_precision: str = "no"  # SiT trains in fp32 with TF32 matmuls on GPUs
    log_every: int = 100
    ckpt_every: int = 10_000
    out_dir: str = "runs/sit"
    ema: float = 0.9999  # EMA decay over parameters (buffers are copied); sampling uses the EMA
    val_every: int = 10_000  # draw sample_num latents with the EMA model every this many steps; 0 = off
    num_workers: int | None = 0  # DataLoader workers reading latent shards (memory-mapped: cheap in-process)
    sample_num: int = 4
    sample_steps: int = 50  # Euler-Maruyama steps of that periodic look (cheap, not the 250 of `sample`)
    path: str = "linear"  # "linear" | "gvp"
    prediction: str = "velocity"
    # init_from (LoopConfig): a SiT checkpoint (this project's or the reference's) to fine-tune;
    # its EMA starts from the same weights.

    def validate(self) -> None:
        super().validate()
        if self.path not in ("linear", "gvp"):
            raise ConfigError(f"'path' must be 'linear' or 'gvp', got {self.path!r}")
        if self.prediction != "velocity":
            raise ConfigError(f"'prediction' must be 'velocity', got {self.prediction!r}")
        if self.ema is None:
            raise ConfigError("'ema' must be a decay in [0, 1]: sampling uses the EMA weights")
        positive(self, "sample_num")
        if self.sample_steps < 2:
            raise ConfigError(f"'sample_steps' must be >= 2, got {self.sample_steps}")

    @property
    def iterations(self) -> int:
        """The paper's name for :attr:`max_steps`."""
        return self.max_steps


@dataclass
class SampleConfig(Section):
    """The ``sample:`` section: the paper's sampler (Euler-Maruyama SDE, 250 steps)."""

    SECTION: typing.ClassVar[str] = "sample"

    sampler: str = "sde"  # a name of sit.samplers.SAMPLERS; "sde" is the paper's Euler-Maruyama
    steps: int = 250
    diffusion_norm: float = 1.0
    last_step_size: float = 0.04
    ode_method: str = "dopri5"
    atol: float = 1e-6
    rtol: float = 1e-3

    def validate(self) -> None:
        from .samplers import SAMPLERS  # here, not at the top: samplers pulls in torchdiffeq

        if self.sampler not in SAMPLERS:
            raise ConfigError(f"'sampler' must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.steps < 2:
            raise ConfigError(f"'steps' must be >= 2, got {self.steps}")
        if not 0.0 <= self.last_step_size < 1.0:
            raise ConfigError(f"'last_step_size' must be in [0, 1), got {self.last_step_size}")
        positive(self, "atol", "rtol", "diffusion_norm", allow_zero=("diffusion_norm",))


SECTIONS = {"model": SiTConfig, "train": SiTTrainConfig, "sample": SampleConfig}


@dataclass
class SiTRunConfig(RunConfig):
    """A whole SiT config file: the three sections plus where it came from."""

    model: SiTConfig
    train: SiTTrainConfig = field(default_factory=SiTTrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    source: str = "<dict>"


def load_sit_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> SiTRunConfig:
    """Read a SiT YAML (or a dict of sections) strictly, with optional nested ``overrides``
    applied on top, e.g. ``{"train": {"max_steps": 10}}``. ``model:`` is required; a missing
    ``train:`` or ``sample:`` section gives the paper's defaults."""
    raw, source = read_sections(path_or_dict, SECTIONS, overrides, required=("model",))
    parts = {name: from_dict(cls, raw.get(name), f"{source}: {name}") for name, cls in SECTIONS.items()}
    return SiTRunConfig(**parts, source=source)


def load_sit_configs(path: str | Path) -> tuple[SiTConfig, SiTTrainConfig, SampleConfig]:
    """The three sections of a SiT YAML file (see :func:`load_sit_run_config`)."""
    cfg = load_sit_run_config(path)
    return cfg.model, cfg.train, cfg.sample
