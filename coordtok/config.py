"""Plain-dataclass configs with one strict loader for every package.

Every runnable setting is one YAML file with sections (``model``, ``train``, ``data``, ...); each
section maps onto a dataclass. :func:`read_sections` reads the file (or a dict), checks the section
names and merges ``--set section.key=value`` overrides (:func:`parse_overrides`); :func:`from_dict`
builds one section strictly. Every mistake is one :class:`ConfigError` line in one format::

    configs/tokenizer/tiny.yaml: train.learning_rate: unknown key (known: stage, num_coords, ...)
    configs/tokenizer/tiny.yaml: train.lr: must be a number, got 'fast'
    configs/tokenizer/tiny.yaml: model: 'size' (60) is not divisible by 'enc_patch_xy' (16)

all before any heavy work starts. The tokenizer's sections are defined here; the SiT's
(:mod:`sit.config`) and the baselines' use the same loader.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import CoordTokError


class ConfigError(CoordTokError, ValueError):
    """A config file or dict is malformed: unknown key, wrong type or impossible value."""


def require(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond`` holds (the checks of every ``validate``)."""
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------------------- reading


def load_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping (``{}`` for an empty file); one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str] | None) -> dict:
    """``["train.lr=3e-4", "data.root=/x", "val_data=null"]`` ->
    ``{"train": {"lr": 0.0003}, "data": {"root": "/x"}, "val_data": None}``.

    Values are read as YAML (``[0, 140]`` is a list, ``null`` is None). ``section=null`` drops an
    optional section.
    """
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if sep and not dot and value.strip() in ("null", "none", "None", "~"):
            out[section] = None
            continue
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
        try:
            # YAML 1.1 reads yes/no/on/off as booleans: `--set train.mixed_precision=no` means the
            # string (true/false stay booleans).
            text = value.strip()
            parsed = text if text.lower() in ("yes", "no", "on", "off", "y", "n") else yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        if out.get(section, {}) is None:
            out[section] = {}
        out.setdefault(section, {})[name] = parsed
    return out


def read_sections(
    path_or_dict: str | Path | dict,
    known: Iterable[str],
    overrides: dict | None = None,
    required: Iterable[str] = ("model",),
) -> tuple[dict, str]:
    """The raw sections of a config file or dict with ``overrides`` merged in: ``(sections, source)``.

    Section names are checked against ``known``; ``required`` sections must be present (an empty
    file is an error, not a run with every default). An override section of None drops it.
    """
    known = tuple(known)
    if isinstance(path_or_dict, dict):
        raw, source = {k: (dict(v) if isinstance(v, dict) else v) for k, v in path_or_dict.items()}, "<dict>"
    else:
        raw, source = load_yaml(path_or_dict), str(path_or_dict)
        if not raw:
            raise ConfigError(
                f"{source}: the config file is empty; it needs at least a "
                f"{', '.join(repr(r + ':') for r in required) or 'section'} section"
            )
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown section '{key}' (known: {', '.join(known)})")
    for section, values in (overrides or {}).items():
        if section not in known:
            raise ConfigError(f"--set: unknown section '{section}' (known: {', '.join(known)})")
        raw[section] = None if values is None else {**(raw.get(section) or {}), **values}
    for section in required:
        if raw.get(section) is None and section not in (overrides or {}):
            raise ConfigError(f"{source}: no '{section}:' section")
    return raw, source


# ---------------------------------------------------------------------------- one section


_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Validate (and lightly coerce: int -> float, list -> tuple) ``value`` against a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        if origin is tuple and len(args) > 1 and len(value) != len(args):
            raise ConfigError(f"{where}: must be a list of {len(args)} values, got {value!r}")
        inner = (lambda i: args[i]) if origin is tuple and len(args) > 1 else (lambda i: args[0] if args else Any)
        items = [_check_type(v, inner(i), f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads 3e-4 (no dot) as a string; a number field means the number.
        try:
            value = float(value)
        except ValueError:
            pass
    if annotation in (bool, int, float, str):
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, (str, Path)),
        }[annotation]
        if not ok:
            raise ConfigError(f"{where}: must be {_TYPE_NAMES[annotation]}, got {value!r}")
        if annotation is float and not math.isfinite(value):
            # NaN passes every range check (nan < 0 and nan > 0 are both false) and reaches torch
            # ("Invalid learning rate: nan") or silently trains to non-finite weights (inf).
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value) if annotation is float else str(value) if annotation is str else value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str):
    """Build dataclass ``cls`` from ``data`` strictly; ``where`` is ``"<file>: <section>"``.

    Unknown keys and wrong types are errors naming ``<file>: <section>.<key>``; the dataclass's
    ``validate()`` (if any) runs last and its message is prefixed with ``where``.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    renamed = getattr(cls, "RENAMED", {})  # old key -> its new name: old files and checkpoints still read
    data = {renamed.get(k, k): v for k, v in data.items()}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(names)})")
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return obj


def to_dict(obj) -> dict:
    """A config dataclass as plain YAML/JSON data (tuples become lists)."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


class Section:
    """Mixin for a config section dataclass: validated on construction, read strictly.

    ``SECTION`` names the YAML section (``model``, ``train``, ...). ``validate()`` raises a
    one-line :class:`ConfigError` naming the field.
    """

    SECTION: typing.ClassVar[str] = ""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks no single value's type can make (ranges, divisibility)."""

    @classmethod
    def from_dict(cls, values: dict | None, source: str = "<dict>"):
        return from_dict(cls, values, f"{source}: {cls.SECTION}")

    @classmethod
    def from_yaml(cls, path: str | Path):
        """This section of a YAML file (``{}`` when the file has none: every default)."""
        raw = load_yaml(path)
        return cls.from_dict(raw.get(cls.SECTION), str(path))

    def to_dict(self) -> dict:
        return to_dict(self)


class RunConfig:
    """Mixin for a whole config file as a dataclass of sections (``model``, ``train``, ...):
    :meth:`to_dict` is what checkpoints store, the file's top-level ``kind`` first when it has one."""

    kind: typing.ClassVar[str] = ""

    def to_dict(self) -> dict:
        out = {"kind": self.kind} if self.kind else {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = to_dict(value)
        return out


def positive(obj, *names: str, allow_zero: Iterable[str] = ()) -> None:
    """Raise a one-line :class:`ConfigError` unless every named field of ``obj`` is > 0
    (``>= 0`` for the names in ``allow_zero``)."""
    zero_ok = set(allow_zero)
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        if (v < 0) if name in zero_ok else (v <= 0):
            raise ConfigError(f"'{name}' must be {'>= 0' if name in zero_ok else 'positive'}, got {v}")


def divisible(obj, *pairs: tuple[str, str]) -> None:
    """Raise a one-line :class:`ConfigError` unless, for each ``(a, b)``, field ``a`` of ``obj`` is a
    multiple of field ``b`` (checked in order; fields already checked positive)."""
    for a, b in pairs:
        va, vb = getattr(obj, a), getattr(obj, b)
        require(va % vb == 0, f"'{a}' ({va}) is not divisible by '{b}' ({vb})")


@dataclass
class ModelConfig(Section):
    """CoordTok architecture (paper section 3, Table 5). Defaults are CoordTok-S, 1280 tokens.

    LayerNorm epsilons: ``vit_norm_eps`` (the 3D ViT's blocks and its final norm),
    ``cross_norm_eps`` (the cross-self blocks and their final norm) and ``dec_norm_eps`` (the
    decoder's blocks and its final norm). The defaults are the public reference
    implementation's (1e-5 / 1e-6 / 1e-5: timm <= 1.0.15 builds its ``Block`` with a plain
    ``nn.LayerNorm``), so its released checkpoints compute what it computes. Checkpoints this
    project wrote before these keys existed were trained with 1e-6 everywhere: read a
    checkpoint's ``config["model"]`` with :func:`model_config_from_checkpoint`, which fills a
    missing epsilon with 1e-6, while YAML files (:func:`load_model_config`) get the defaults.
    """

    SECTION: typing.ClassVar[str] = "model"

    frames: int = 128  # T: clip length the model is built for
    size: int = 128  # H = W
    # 3D ViT video encoder
    enc_patch_t: int = 8
    enc_patch_xy: int = 16
    enc_dim: int = 512  # shared by the ViT and the cross-self encoder (as the reference)
    enc_layers: int = 8
    enc_heads: int = 8
    # cross-self encoder that writes the triplane
    cross_layers: int = 8
    # triplane latent: xy (Hl, Wl) = (latent_xy, latent_xy); yt/xt (latent_t, latent_xy)
    latent_xy: int = 16
    latent_t: int = 32
    latent_channels: int = 8
    latent_patch_xy: int = 8
    latent_patch_t: int = 16
    # coordinate decoder
    dec_dim: int = 512
    dec_layers: int = 8
    dec_heads: int = 8
    dec_patch_xy: int = 8
    dec_patch_t: int = 1
    mlp_ratio: float = 4.0
    # LayerNorm epsilons (see the class docstring)
    vit_norm_eps: float = 1e-5
    cross_norm_eps: float = 1e-6
    dec_norm_eps: float = 1e-5

    def validate(self) -> None:
        positive(
            self,
            "frames",
            "size",
            "enc_dim",
            "enc_layers",
            "enc_heads",
            "cross_layers",
            "latent_xy",
            "latent_t",
            "latent_channels",
            "dec_dim",
            "dec_layers",
            "dec_heads",
            "enc_patch_t",
            "enc_patch_xy",
            "latent_patch_xy",
            "latent_patch_t",
            "dec_patch_xy",
            "dec_patch_t",
            "mlp_ratio",
            "vit_norm_eps",
            "cross_norm_eps",
            "dec_norm_eps",
        )
        divisible(
            self,
            ("frames", "enc_patch_t"),
            ("size", "enc_patch_xy"),
            ("size", "dec_patch_xy"),
            ("frames", "dec_patch_t"),
            ("latent_xy", "latent_patch_xy"),
            ("latent_t", "latent_patch_t"),
            ("enc_dim", "enc_heads"),
            ("dec_dim", "dec_heads"),
        )

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """Decoder patch grid ``(Tp, Hp, Wp)``: 128 x 16 x 16 for the paper setting."""
        return self.frames // self.dec_patch_t, self.size // self.dec_patch_xy, self.size // self.dec_patch_xy

    @property
    def num_patches(self) -> int:
        tp, hp, wp = self.patch_grid
        return tp * hp * wp

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """Triplane resolution ``(Tl, Hl, Wl)``."""
        return self.latent_t, self.latent_xy, self.latent_xy

    @property
    def num_latent_tokens(self) -> int:
        tl, hl, wl = self.latent_grid
        return hl * wl + tl * wl + tl * hl


# The LayerNorm epsilon of every norm in checkpoints written before the epsilon keys existed.
LEGACY_NORM_EPS = 1e-6


def model_config_from_checkpoint(d: dict) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint's ``config["model"]`` dict, read strictly.

    A dict without the epsilon keys comes from a checkpoint written before they existed, whose
    model was built and trained with 1e-6 in every LayerNorm: the missing keys are filled with
    that, not with the defaults (which a YAML file gets).
    """
    eps = {k: LEGACY_NORM_EPS for k in ("vit_norm_eps", "cross_norm_eps", "dec_norm_eps")}
    return from_dict(ModelConfig, {**eps, **(d or {})}, "checkpoint: model")


@dataclass
class DataConfig(Section):
    """Where clips come from; see :func:`coordtok.data.build_dataset`."""

    SECTION: typing.ClassVar[str] = "data"

    kind: str = "folder"  # folder | ucf101 | samples
    root: str | None = None
    split: str | None = None  # ucf101: train | test (default train); folder: a subfolder of root
    fold: int = 1
    names: list[str] = field(default_factory=lambda: ["bikes", "bigbuckbunny"])  # kind=samples
    frames: int = 128
    size: int = 128
    stride: int = 1
    min_frames: int = 16
    clips_per_video: int = 1
    frame_range: list[int] | None = None  # [lo, hi): usable frames of every video
    num_workers: int = 2

    def validate(self) -> None:
        if self.kind not in ("folder", "ucf101", "samples"):
            raise ConfigError(f"'kind' must be folder, ucf101 or samples, got {self.kind!r}")
        if self.kind != "samples" and not self.root:
            raise ConfigError(f"'root' is required for kind={self.kind} (the folder holding the videos)")
        positive(self, "frames", "size", "stride", "min_frames", "clips_per_video")
        positive(self, "num_workers", allow_zero=("num_workers",))
        if self.kind == "ucf101" and self.fold not in (1, 2, 3):
            raise ConfigError(f"'fold' must be 1, 2 or 3 for UCF-101, got {self.fold}")
        if self.frame_range is not None and (
            len(self.frame_range) != 2 or self.frame_range[0] < 0 or self.frame_range[0] >= self.frame_range[1]
        ):
            raise ConfigError(f"'frame_range' must be [lo, hi) with 0 <= lo < hi, got {self.frame_range}")

    @classmethod
    def for_root(cls, root: str | Path, kind: str | None = None, **kw) -> "DataConfig":
        """A data section for a folder given on the command line. ``kind`` defaults to ``ucf101``
        when ``root`` holds the official split lists (``ucfTrainTestlist/``), else ``folder``:
        the one place UCF-101 is recognised."""
        if kind is None:
            kind = "ucf101" if (Path(root) / "ucfTrainTestlist").is_dir() else "folder"
        obj = cls(kind=kind, root=str(root), **{k: v for k, v in kw.items() if v is not None})
        obj.validate()
        return obj


@dataclass
class LoopConfig(Section):
    """What every trainer on :func:`coordtok.loop.fit` shares (the ``train:`` section's common keys).

    Defaults are the CoordTok paper's tokenizer recipe; each trainer's section overrides what
    differs (SiT: batch 64, no weight decay, fp32 with TF32).
    """

    SECTION: typing.ClassVar[str] = "train"

    lr: float = 1e-4  # peak learning rate (constant unless lr_schedule says otherwise)
    lr_schedule: str = "constant"  # constant | cosine: linear warm-up, then cosine decay to min_lr_ratio * lr
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps (both schedules)
    min_lr_ratio: float = 0.0  # cosine: the lr at max_steps, as a fraction of lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-3  # not applied to biases and norm gains
    batch_size: int = 256  # global batch: per-process batch x processes x grad_accum
    grad_accum: int = 1
    max_grad_norm: float | None = None
    # Recompute each block's activations in the backward instead of keeping them (transformer
    # blocks; the conv baselines' res blocks): far less activation memory for ~1/3 more compute.
    # Gradients are unchanged. `coordtok profile` estimates the memory with and without it.
    activation_checkpointing: bool = False
    max_steps: int = 1_000_000
    # auto: bf16 autocast on a CPU with native bf16 (avx512_bf16 / AMX) and on CUDA GPUs that
    # support it (fp16 on older ones), fp32 elsewhere. no | fp16 | bf16 force one.
    mixed_precision: str = "auto"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 5000
    keep_checkpoints: int = 2  # this run's newest checkpoints kept; nothing else is ever deleted
    max_bad_steps: int = 10  # consecutive skipped (non-finite) steps before the run stops
    init_from: str | None = None  # weights to start from (a checkpoint or run folder)
    out_dir: str = "runs/run"
    ema: float | None = None  # EMA decay of the model (stepped every step; evaluation uses it); None: no EMA
    val_every: int = 5000  # steps between the task's periodic figures (validation PSNR, SiT's sample look); 0: never
    allow_tf32: bool = True  # CUDA: TF32 matmuls and convolutions for what runs in fp32
    num_workers: int | None = None  # DataLoader workers; None: the task's (a video task: data.num_workers)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0 for the first): a pure function of the
        step, so a resumed run follows the same schedule."""
        scale = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            scale = (step + 1) / self.warmup_steps
        elif self.lr_schedule == "cosine":
            span = max(1, self.max_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            scale = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * scale

    def validate(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"'lr_schedule' must be constant or cosine, got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        positive(self, "warmup_steps", allow_zero=("warmup_steps",))
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"'mixed_precision' must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        positive(
            self,
            "batch_size",
            "grad_accum",
            "max_steps",
            "log_every",
            "ckpt_every",
            "keep_checkpoints",
            "max_bad_steps",
            "max_grad_norm",
            "lr",
            "weight_decay",
            "seed",
            allow_zero=("max_steps", "lr", "weight_decay", "seed"),
        )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"'betas' must be two values in [0, 1), got {self.betas}")
        if not self.out_dir:
            raise ConfigError("'out_dir' must name a folder")
        if self.ema is not None and not 0.0 <= self.ema <= 1.0:
            raise ConfigError(f"'ema' must be in [0, 1] (or null for no EMA), got {self.ema}")
        positive(self, "val_every", "num_workers", allow_zero=("val_every", "num_workers"))


@dataclass
class TrainConfig(LoopConfig):
    """Tokenizer training (CoordTok paper, section 3.3 and appendix A); defaults are the paper's."""

    stage: int = 1  # 1: N random coordinates, L2. 2: whole random frames, L2 + LPIPS
    num_coords: int = 1024  # stage 1: coordinates per clip
    num_frames_stage2: int = 16  # stage 2: whole frames per clip (16 x 256 = 4096 coordinates)
    l2_weight: float = 1.0
    lpips_weight: float = 0.0  # this run's LPIPS weight (stage 2 of the paper: 1.0)
    stage2_lpips_weight: float = 1.0  # what `coordtok train --stage 2` sets lpips_weight to
    stage2_max_steps: int = 50_000  # what `coordtok train --stage 2` sets max_steps to
    lpips_vgg_path: str | None = None  # vgg16-397923af.pth; default: $COORDTOK_VGG16 or the torch hub cache
    mixed_precision: str = "fp16"  # the paper trains in fp16 on GPUs
    val_clips: int = 8
    out_dir: str = "runs/tokenizer"

    def validate(self) -> None:
        super().validate()
        if self.stage not in (1, 2):
            raise ConfigError(f"'stage' must be 1 or 2, got {self.stage}")
        positive(
            self,
            "num_coords",
            "num_frames_stage2",
            "stage2_max_steps",
            "l2_weight",
            "lpips_weight",
            "stage2_lpips_weight",
            "val_clips",
            allow_zero=("l2_weight", "lpips_weight", "stage2_lpips_weight", "val_clips"),
        )


@dataclass
class TokenizerRunConfig(RunConfig):
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    val_data: DataConfig | None = None
    source: str = "<dict>"

    def validate(self) -> None:
        """Cross-section checks that no single section can make."""
        m, tc = self.model, self.train
        if tc.stage == 1 and tc.num_coords > m.num_patches:
            raise ConfigError(
                f"{self.source}: train.num_coords ({tc.num_coords}) is more than the clip's "
                f"{m.num_patches} patches (model grid {m.patch_grid})"
            )
        if tc.stage == 2 and tc.num_frames_stage2 > m.patch_grid[0]:
            raise ConfigError(
                f"{self.source}: train.num_frames_stage2 ({tc.num_frames_stage2}) is more than the "
                f"{m.patch_grid[0]} frames of the model"
            )
        for name, d in (("data", self.data), ("val_data", self.val_data)):
            if d is not None and (d.frames != m.frames or d.size != m.size):
                raise ConfigError(
                    f"{self.source}: {name} gives {d.frames}x{d.size}x{d.size} clips but the model is built for "
                    f"{m.frames}x{m.size}x{m.size} (model.frames, model.size)"
                )


SECTIONS = ("model", "train", "data", "val_data")


def data_section(raw: dict | None, frames: int, size: int, where: str, default_kind: str | None = None) -> DataConfig:
    """A ``data``-like section whose clip shape defaults to the model's (``frames``, ``size``)."""
    values = {"frames": frames, "size": size, **(raw or {})}
    if raw is None and default_kind:
        values["kind"] = default_kind
    return from_dict(DataConfig, values, where)


def load_tokenizer_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> TokenizerRunConfig:
    """Read a tokenizer YAML (or dict) with sections model/train/data/val_data, strictly.

    ``overrides`` is a nested dict applied on top, e.g. ``{"train": {"max_steps": 10}}``
    (:func:`parse_overrides` turns ``--set`` arguments into one). A file needs ``model:`` and
    ``train:``; a missing ``data:`` trains on the bundled sample clips.
    """
    required = ("model",) if isinstance(path_or_dict, dict) else ("model", "train")
    raw, source = read_sections(path_or_dict, SECTIONS, overrides, required)
    model = from_dict(ModelConfig, raw.get("model"), f"{source}: model")
    cfg = TokenizerRunConfig(
        model=model,
        train=from_dict(TrainConfig, raw.get("train"), f"{source}: train"),
        data=data_section(raw.get("data"), model.frames, model.size, f"{source}: data", default_kind="samples"),
        val_data=(
            data_section(raw["val_data"], model.frames, model.size, f"{source}: val_data")
            if raw.get("val_data")
            else None
        ),
        source=source,
    )
    cfg.validate()
    return cfg


def load_model_config(path_or_dict: str | Path | dict | ModelConfig) -> ModelConfig:
    """The ``model`` section of a config file, a dict of model keys, or a full config dict."""
    if isinstance(path_or_dict, ModelConfig):
        return path_or_dict
    if isinstance(path_or_dict, dict):
        raw, source = path_or_dict, "<dict>"
    else:
        raw, source = load_yaml(path_or_dict), str(path_or_dict)
    return from_dict(ModelConfig, raw["model"] if "model" in raw else raw, f"{source}: model")
