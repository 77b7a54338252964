"""Plain-dataclass configs with strict YAML loading.

Every runnable setting is one YAML file with sections (``model``, ``train``, ``data``); each
section maps onto a dataclass below. Unknown keys and wrong types are rejected with a one-line
:class:`ConfigError` that names the file and the key, before any heavy work starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or dict is malformed: unknown key, wrong type or impossible value."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Validate (and lightly coerce) ``value`` against a dataclass field annotation."""
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
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if annotation is dict or typing.get_origin(annotation) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, where: str):
    """Build dataclass ``cls`` from ``data``; ``where`` prefixes error messages (``file: section``)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(names)})")
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


@dataclass
class ModelConfig:
    """CoordTok architecture (DESIGN.md section 2). Defaults are CoordTok-S, 1280 tokens."""

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

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for name in ("frames", "size", "enc_dim", "enc_layers", "enc_heads", "cross_layers", "latent_xy",
                     "latent_t", "latent_channels", "dec_dim", "dec_layers", "dec_heads"):
            need(getattr(self, name) > 0, f"'{name}' must be positive, got {getattr(self, name)}")
        need(self.frames % self.enc_patch_t == 0,
             f"'frames' ({self.frames}) is not divisible by 'enc_patch_t' ({self.enc_patch_t})")
        need(self.size % self.enc_patch_xy == 0,
             f"'size' ({self.size}) is not divisible by 'enc_patch_xy' ({self.enc_patch_xy})")
        need(self.size % self.dec_patch_xy == 0,
             f"'size' ({self.size}) is not divisible by 'dec_patch_xy' ({self.dec_patch_xy})")
        need(self.frames % self.dec_patch_t == 0,
             f"'frames' ({self.frames}) is not divisible by 'dec_patch_t' ({self.dec_patch_t})")
        need(self.latent_xy % self.latent_patch_xy == 0,
             f"'latent_xy' ({self.latent_xy}) is not divisible by 'latent_patch_xy' ({self.latent_patch_xy})")
        need(self.latent_t % self.latent_patch_t == 0,
             f"'latent_t' ({self.latent_t}) is not divisible by 'latent_patch_t' ({self.latent_patch_t})")
        need(self.enc_dim % self.enc_heads == 0,
             f"'enc_dim' ({self.enc_dim}) is not divisible by 'enc_heads' ({self.enc_heads})")
        need(self.dec_dim % self.dec_heads == 0,
             f"'dec_dim' ({self.dec_dim}) is not divisible by 'dec_heads' ({self.dec_heads})")

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


@dataclass
class DataConfig:
    """Where clips come from; see :func:`coordtok.data.build_dataset`."""

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
            raise ConfigError(f"'root' is required for kind={self.kind}")
        if self.frame_range is not None and (len(self.frame_range) != 2 or self.frame_range[0] >= self.frame_range[1]):
            raise ConfigError(f"'frame_range' must be [lo, hi) with lo < hi, got {self.frame_range}")


@dataclass
class TrainConfig:
    """Tokenizer training (DESIGN.md section 2, 'Tokenizer training'); defaults are the paper's."""

    stage: int = 1  # 1: N random coordinates, L2. 2: whole random frames, L2 + LPIPS
    num_coords: int = 1024  # stage 1: coordinates per clip
    num_frames_stage2: int = 16  # stage 2: whole frames per clip (16 x 256 = 4096 coordinates)
    l2_weight: float = 1.0
    lpips_weight: float = 0.0  # this run's LPIPS weight (stage 2 of the paper: 1.0)
    stage2_lpips_weight: float = 1.0  # what `coordtok train --stage 2` sets lpips_weight to
    stage2_max_steps: int = 50_000  # what `coordtok train --stage 2` sets max_steps to
    lpips_vgg_path: str | None = None  # vgg16-397923af.pth; default: $COORDTOK_VGG16 or the torch hub cache
    init_from: str | None = None  # stage 2: a stage-1 checkpoint to take the weights from
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-3
    batch_size: int = 256  # global batch: per-process batch x processes x grad_accum
    grad_accum: int = 1
    max_grad_norm: float | None = None
    max_steps: int = 1_000_000
    mixed_precision: str = "fp16"  # no | fp16 | bf16
    seed: int = 0
    log_every: int = 50
    val_every: int = 5000
    val_clips: int = 8
    ckpt_every: int = 5000
    keep_checkpoints: int = 2
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    out_dir: str = "runs/tokenizer"

    def validate(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"'stage' must be 1 or 2, got {self.stage}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"'mixed_precision' must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.num_coords < 1:
            raise ConfigError("'batch_size', 'grad_accum' and 'num_coords' must be positive")
        if len(self.betas) != 2:
            raise ConfigError(f"'betas' must have two values, got {self.betas}")


@dataclass
class TokenizerRunConfig:
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    val_data: DataConfig | None = None
    source: str = "<dict>"

    def validate(self) -> None:
        """Cross-section checks that no single section can make."""
        m, t = self.model, self.train
        if t.stage == 1 and t.num_coords > m.num_patches:
            raise ConfigError(
                f"{self.source}: train.num_coords ({t.num_coords}) is more than the clip's "
                f"{m.num_patches} patches (model grid {m.patch_grid})")
        if t.stage == 2 and t.num_frames_stage2 > m.patch_grid[0]:
            raise ConfigError(
                f"{self.source}: train.num_frames_stage2 ({t.num_frames_stage2}) is more than the "
                f"{m.patch_grid[0]} frames of the model")
        for name, d in (("data", self.data), ("val_data", self.val_data)):
            if d is not None and (d.frames != m.frames or d.size != m.size):
                raise ConfigError(
                    f"{self.source}: {name} gives {d.frames}x{d.size}x{d.size} clips but the model is built for "
                    f"{m.frames}x{m.size}x{m.size} (model.frames, model.size)")

    def to_dict(self) -> dict:
        out = {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
               "data": dataclasses.asdict(self.data)}
        if self.val_data is not None:
            out["val_data"] = dataclasses.asdict(self.val_data)
        return out


SECTIONS = ("model", "train", "data", "val_data")


def load_tokenizer_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> TokenizerRunConfig:
    """Read a tokenizer YAML (or dict) with sections model/train/data/val_data, strictly.

    ``overrides`` is a nested dict applied on top, e.g. ``{"train": {"max_steps": 10}}``.
    """
    if isinstance(path_or_dict, dict):
        raw, source = dict(path_or_dict), "<dict>"
    else:
        raw, source = load_yaml(path_or_dict), str(path_or_dict)
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{key}' (known: {', '.join(SECTIONS)})")
    for section, values in (overrides or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"override: unknown section '{section}'")
        raw[section] = None if values is None else {**(raw.get(section) or {}), **values}
    model = from_dict(ModelConfig, raw.get("model"), f"{source}: model")
    data_raw = {"frames": model.frames, "size": model.size, **(raw.get("data") or {})}
    if "data" not in raw:
        data_raw.setdefault("kind", "samples")
    cfg = TokenizerRunConfig(
        model=model,
        train=from_dict(TrainConfig, raw.get("train"), f"{source}: train"),
        data=from_dict(DataConfig, data_raw, f"{source}: data"),
        val_data=(from_dict(DataConfig, {"frames": model.frames, "size": model.size, **raw["val_data"]},
                            f"{source}: val_data") if raw.get("val_data") else None),
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
    if "model" in raw:
        return from_dict(ModelConfig, raw["model"], f"{source}: model")
    return from_dict(ModelConfig, raw, f"{source}: model")
