"""The video autoencoders researchers already use (diffusers' Wan, HunyuanVideo, CogVideoX,
LTX-Video, Mochi, Cosmos) beside CoordTok: profiled, counted and evaluated as this project's
tokenizers are.

A kind ``diffusers:<source>`` (:data:`coordtok.kinds.PREFIXED`) names one:

* ``diffusers:AutoencoderKLWan`` -- a class of the installed diffusers with its default config
  (the released model's architecture) and random weights, seeded (the same name builds the same
  model). FLOPs, parameters and memory do not depend on the weights; reconstruction quality does,
  and a randomly initialised autoencoder's is noise: the reconstructor's name says so.
* ``diffusers:<folder>`` -- a pretrained model the user has (``config.json`` and weights, or a
  pipeline folder with a ``vae/`` subfolder), read with ``local_files_only=True``: nothing is
  ever downloaded.

diffusers is an optional extra (``pip install -e ".[diffusers]"``); this module is the only one of
the project that imports it, and only when a ``diffusers:`` kind is used.

Every model is a causal 3-D autoencoder: a clip of ``1 + k t`` frames becomes ``1 + k`` latent
frames of ``C`` channels on a ``(H / s) x (W / s)`` grid (``t x s x s`` its compression, found by
encoding once on the meta device, so a custom config's factors are its own). A clip of another
length is padded with copies of its last frame to the next such length and the padding cut off
after decoding. Tokens are the latent positions ``(1 + k) (H / s) (W / s)``, each ``C`` floats.

Long clips go through each model's own handling (``tiling=True``, the reconstructor's default,
calls the class's ``enable_tiling()``): Wan and CogVideoX run causally over frame groups with a
feature cache (no seams), HunyuanVideo cuts 17-frame temporal tiles every 12 frames and blends
their overlaps (diffusers' default for it, tiling or not), Mochi's tiling also decodes frame by
frame, LTX-Video and Cosmos take the whole clip in one pass; frames larger than a class's tile
size are cut into blended spatial tiles (none at 128 x 128: every class's tile is 240 px or more).

FLOPs (:func:`coding_flops`) are counted with :func:`eval.flops.counter` on the meta device (every
default class builds and runs there); a model that cannot run on meta is counted on a real CPU
instead, and the result says which (``counted_on``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from coordtok.config import ConfigError

from .flops import counter
from .tokenizers import Reconstructor

PREFIX = "diffusers"
# The video autoencoders of diffusers this project tabulates (BENCHMARKS.md), with the model each
# default config is the architecture of.
VIDEO_AUTOENCODERS = {
    "AutoencoderKLWan": "Wan 2.1 VAE",
    "AutoencoderKLHunyuanVideo": "HunyuanVideo VAE",
    "AutoencoderKLCogVideoX": "CogVideoX VAE",
    "AutoencoderKLLTXVideo": "LTX-Video VAE",
    "AutoencoderKLMochi": "Mochi VAE",
    "AutoencoderKLCosmos": "Cosmos tokenizer CV8x8x8",
}
# Classes whose encode/decode cut long clips into temporal tiles blended across their overlaps
# (``_temporal_tiled_encode``), and the attribute that switches it on: their tile starts are the
# seams the seam measure looks at. The others carry a cache across frame groups or take the clip
# whole, so they have no seams of their own.
TEMPORAL_TILES = {
    "AutoencoderKLHunyuanVideo": "use_framewise_encoding",
    "AutoencoderKLLTXVideo": "use_framewise_decoding",
}
SEED = 0  # random weights of a default config


class DiffusersError(ConfigError):
    """A ``diffusers:`` kind that cannot be built: diffusers missing, an unknown class, a bad folder."""


def import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise DiffusersError(
            'diffusers is not installed: pip install -e ".[diffusers]" (the optional extra) to use the diffusers: kinds'
        ) from None
    return diffusers


@dataclass(frozen=True)
class Source:
    """What a ``diffusers:<...>`` name points at: a class (default config) or a local folder."""

    cls: type
    folder: Path | None = None
    subfolder: str | None = None

    @property
    def label(self) -> str:
        return self.cls.__name__ if self.folder is None else str(self.folder)


def parse_source(spec: str) -> Source:
    """``diffusers:<ClassName>`` or ``diffusers:<folder>`` -> :class:`Source` (one-line errors)."""
    prefix, _, rest = str(spec).partition(":")
    if prefix != PREFIX or not rest:
        raise DiffusersError(f"{spec}: not a diffusers kind (diffusers:<ClassName> or diffusers:<folder>)")
    diffusers = import_diffusers()
    path = Path(rest).expanduser()
    if path.is_dir():
        sub = None if (path / "config.json").is_file() else "vae" if (path / "vae" / "config.json").is_file() else ""
        if sub == "":
            raise DiffusersError(
                f"{spec}: {path} has neither config.json nor vae/config.json (a diffusers model "
                f"folder, or a pipeline folder with its autoencoder in vae/)"
            )
        config_file = path / (sub or "") / "config.json"
        try:
            name = json.loads(config_file.read_text()).get("_class_name")
        except (OSError, ValueError) as e:
            raise DiffusersError(f"{spec}: cannot read {config_file} ({e})") from None
        cls = getattr(diffusers, name or "", None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise DiffusersError(
                f"{spec}: {config_file} names class {name!r}, which diffusers {diffusers.__version__} does not have"
            )
        return Source(cls, path, sub)
    cls = getattr(diffusers, rest, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and rest.startswith("Autoencoder")):
        known = [n for n in VIDEO_AUTOENCODERS if hasattr(diffusers, n)]
        raise DiffusersError(
            f"{spec}: neither a folder nor an autoencoder class of diffusers {diffusers.__version__} "
            f"(video autoencoders: {', '.join(known)})"
        )
    return Source(cls)


def build_autoencoder(spec: str, config: dict | None = None, device="cpu", weights: bool = True) -> nn.Module:
    """The autoencoder ``spec`` names, in eval mode on ``device``.

    A class: its default config updated by ``config`` (e.g. a small test model), random weights
    from seed :data:`SEED`. A folder: its config (``weights=False``, or on the meta device) or the
    pretrained model, read with ``local_files_only=True``; ``config`` must then be empty.
    """
    src = parse_source(spec)
    device = torch.device(device)
    config = dict(config or {})
    if src.folder is not None and config:
        raise DiffusersError(f"{spec}: a pretrained folder's config is its own (got overrides {sorted(config)})")
    try:
        if src.folder is not None and weights and device.type != "meta":
            model = src.cls.from_pretrained(src.folder, subfolder=src.subfolder, local_files_only=True)
        else:
            if src.folder is not None:
                config = src.cls.load_config(src.folder, subfolder=src.subfolder, local_files_only=True)
            with torch.random.fork_rng(devices=[]), device:
                torch.manual_seed(SEED)
                model = src.cls.from_config(config)
    except (OSError, TypeError, ValueError) as e:  # diffusers' own messages for a bad folder or config key
        raise DiffusersError(
            f"{spec}: cannot build it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    # (a default device builds parameters there, but a buffer cloned from a module-level tensor,
    # such as Cosmos' wavelet filters, stays on the CPU: .to() moves it too)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """A causal autoencoder's compression: ``1 + k time`` frames of side ``S`` -> ``(channels,
    1 + k, S / space, S / space)``."""

    time: int
    space: int
    channels: int
    latent_step: int = 1  # latent frames come in multiples of this (CogVideoX: 2, it decodes in pairs)

    def clip_frames(self, frames: int) -> int:
        """The shortest length it takes that covers ``frames`` frames: ``1 + k time``, ``k`` a
        multiple of :attr:`latent_step`."""
        n = self.time * self.latent_step
        return 1 + math.ceil(max(frames - 1, 0) / n) * n

    def latent_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        """``(C, t, h, w)`` of a ``frames``-frame clip of side ``size`` (padded to :meth:`clip_frames`)."""
        return self.channels, 1 + (self.clip_frames(frames) - 1) // self.time, size // self.space, size // self.space

    def __str__(self) -> str:
        return f"{self.time}x{self.space}x{self.space}"  # (the clip's frames in multiples of time x latent_step)


PROBE_FRAMES, PROBE_SIZE = 1 + 24, 64  # 24: a multiple of every time factor (4, 6, 8); 64 of 8 and 32


@functools.lru_cache(maxsize=32)
def _geometry(cls: type, config_json: str) -> Geometry:
    try:
        return _probe(cls, config_json, "meta")
    except (RuntimeError, NotImplementedError):  # a model that needs values: one small real clip
        return _probe(cls, config_json, "cpu")


def _probe(cls: type, config_json: str, device: str) -> Geometry:
    with torch.random.fork_rng(devices=[]), torch.device(device):
        model = cls.from_config(json.loads(config_json))
    model.to(device).eval()
    with torch.no_grad():
        z = encode(model, torch.zeros(1, 3, PROBE_FRAMES, PROBE_SIZE, PROBE_SIZE, device=device))
    c, t, h = z.shape[1], z.shape[2], z.shape[3]
    if t < 2 or (PROBE_FRAMES - 1) % (t - 1) or PROBE_SIZE % h:
        raise DiffusersError(
            f"{cls.__name__}: a {PROBE_FRAMES}-frame {PROBE_SIZE}^2 clip encodes to {t} x {h} x {h} "
            f"latents, not a causal 1 + k t frames, S / s side autoencoder this project can compare"
        )
    time = (PROBE_FRAMES - 1) // (t - 1)
    # Which latent lengths decode back to 1 + k time frames: CogVideoX decodes latent frames in
    # pairs after the first, so only odd counts do (2 latents give 8 frames, not 5).
    for step in (1, 2):
        with torch.no_grad():
            y = decode(model, torch.zeros(1, c, 1 + step, h, h, device=device))
        if y.shape[2] == 1 + step * time:
            return Geometry(time, PROBE_SIZE // h, c, step)
    raise DiffusersError(f"{cls.__name__}: its latents do not decode back to 1 + k {time} frames")


def geometry(model: nn.Module) -> Geometry:
    """Compression and channels of ``model``, found by encoding one clip on the meta device (a
    real 25-frame 64^2 clip on the CPU for a model that fails there; cached per class and config)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}  # (not its folder)
    return _geometry(type(model), json.dumps(config, sort_keys=True, default=list))


# ---------------------------------------------------------------------------- coding


def encode(model: nn.Module, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """``(B, 3, 1 + k t, H, W)`` in [-1, 1] -> latents ``(B, C, 1 + k, H / s, W / s)``: the
    posterior's mode, or (``sample``) a reparameterised sample (training)."""
    posterior = model.encode(video).latent_dist
    return posterior.sample(generator) if sample else posterior.mode()


def decode(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Latents -> ``(B, 3, 1 + k t, H, W)``, unclamped."""
    return model.decode(z).sample


def pad_to(video: torch.Tensor, frames: int) -> torch.Tensor:
    """``video`` ``(B, C, T, H, W)`` extended to ``frames`` frames with copies of its last frame."""
    extra = frames - video.shape[2]
    return video if extra <= 0 else torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)


# ---------------------------------------------------------------------------- profile and FLOPs


@dataclass
class DiffusersVAEConfig:
    """The model section ``coordtok profile`` builds a ``diffusers:`` kind from."""

    source: str = ""  # the kind's name, diffusers:<ClassName> or diffusers:<folder>
    size: int = 128  # frame side of the profiled clips (the CoordTok config's beside it)
    config: dict = field(default_factory=dict)  # overrides of a class's default config (small test models)

    def clip_frames(self, frames: int) -> int:
        """Frames of the profiled clip for ``frames``: the shortest ``1 + k t`` covering them."""
        return geometry(build_autoencoder(self.source, self.config, "meta")).clip_frames(frames)


def autoencoder_step(kind, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """The kind's ``profile`` entry: one training step of a ``diffusers:`` autoencoder on a batch
    of the shortest ``1 + k t`` frame clips covering ``frames``: encode, a reparameterised posterior
    sample, decode, reconstruction MSE, backward.
    (Its KL term is elementwise, no FLOPs; the discriminator is left out of every tokenizer alike.)"""
    cfg = DiffusersVAEConfig(**{**model_cfg, "source": kind.name})
    model = build_autoencoder(kind.name, cfg.config, device, weights=False).train()
    clip = geometry(model).clip_frames(frames)
    video = torch.empty(batch, 3, clip, cfg.size, cfg.size, device=device).uniform_(-1, 1)

    def step(m, x, opt=None):
        recon = decode(m, encode(m, x, sample=True))
        torch.nn.functional.mse_loss(recon.float(), x.float()).backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return model, video, step


def coding_flops(
    spec: str,
    frames: int,
    size: int = 128,
    config: dict | None = None,
    batch: int = 1,
    train: bool = False,
    device: str = "meta",
) -> dict:
    """FLOPs of encoding and of decoding one batch of ``frames``-frame clips (padded to the model's
    ``1 + k t``; ``train``: also a training step, :func:`autoencoder_step`), counted on ``device``
    (meta: nothing allocated; a model that fails there is counted on a real CPU, and
    ``counted_on`` says so).

    Returns ``{"encode", "decode", ["train"], "clip_frames", "latent_shape", "counted_on"}``."""
    try:
        return _coding_flops(spec, frames, size, config, batch, train, device)
    except (RuntimeError, NotImplementedError) as e:
        if device != "meta":
            raise
        try:
            return _coding_flops(spec, frames, size, config, batch, train, "cpu")
        except RuntimeError:
            raise DiffusersError(
                f"{spec}: cannot be counted on the meta device ({str(e).splitlines()[0]}) nor on "
                f"this CPU at {frames} frames of {size}^2"
            ) from None


def _coding_flops(spec, frames, size, config, batch, train, device) -> dict:
    model = build_autoencoder(spec, config, device, weights=False)
    geo = geometry(model)
    clip = geo.clip_frames(frames)
    x = torch.empty(batch, 3, clip, size, size, device=device).uniform_(-1, 1)
    with torch.no_grad():
        with counter() as fc:
            z = encode(model, x)
        enc = int(fc.get_total_flops())
        with counter() as fc:
            decode(model, z)
        dec = int(fc.get_total_flops())
    out = {
        "encode": enc,
        "decode": dec,
        "clip_frames": clip,
        "latent_shape": tuple(z.shape[1:]),
        "counted_on": torch.device(device).type,
    }
    if train:
        from coordtok.kinds import get_kind

        m, inputs, step = autoencoder_step(
            get_kind(spec), {"size": size, "config": dict(config or {})}, frames, spec, 0, batch, device
        )
        with counter() as fc:
            step(m, inputs)
        out["train"] = int(fc.get_total_flops())
    return out


# ---------------------------------------------------------------------------- reconstruction


class DiffusersReconstructor(Reconstructor):
    """A diffusers video autoencoder: the clip padded to ``1 + k t`` frames, encoded to its
    posterior's mode, decoded, the padding cut off; long clips by the class's own tiling."""

    def __init__(
        self, model: nn.Module, source: str, tiling: bool = True, size: int = 128, random_weights: bool = False
    ):
        self.model, self.source, self.tiling = model.eval(), source, tiling
        self.geometry = geo = geometry(model)
        if tiling and hasattr(model, "enable_tiling"):
            model.enable_tiling()
        elif hasattr(model, "disable_tiling"):
            model.disable_tiling()
        self.max_frames, self.default_frames = None, 128
        self.at_size(size)
        self.token_channels = geo.channels
        cls = type(model).__name__
        what = VIDEO_AUTOENCODERS.get(cls, cls)
        weights = "default config, random weights" if random_weights else f"weights of {Path(source.partition(':')[2])}"
        self.name = f"{what} ({PREFIX} {cls}, {weights}), {geo}, {geo.channels} channels, {self.long_clips()}"

    @classmethod
    def load(cls, path, tiling: bool = True, size: int = 128):
        """``path``: ``diffusers:<ClassName>`` (default config, random weights) or ``diffusers:<folder>``."""
        spec = str(path)
        src = parse_source(spec)
        return cls(build_autoencoder(spec), spec, tiling=tiling, size=size, random_weights=src.folder is None)

    any_size = True  # eval-recon gives it the frame side of the tokenizers it is compared with

    def at_size(self, size: int) -> None:
        """Take frames of side ``size`` (a multiple of its spatial factor)."""
        if size % self.geometry.space:
            raise ConfigError(
                f"{self.source}: frame side {size} is not a multiple of its spatial factor {self.geometry.space}"
            )
        self.size = size

    def long_clips(self) -> str:
        """How a long clip goes through the model (the reconstructor's name says it)."""
        m, cls = self.model, type(self.model).__name__
        flag = TEMPORAL_TILES.get(cls)
        if flag and getattr(m, flag, False):
            n, s = m.tile_sample_min_num_frames, m.tile_sample_stride_num_frames
            how = f"temporal tiles of {n + 1} frames every {s}, overlaps blended"
        elif cls in ("AutoencoderKLWan", "AutoencoderKLCogVideoX") or getattr(m, "use_framewise_encoding", False):
            how = "causal over frame groups with a feature cache"
        else:
            how = "whole clip in one pass"
        if getattr(m, "use_tiling", False) and hasattr(m, "tile_sample_min_height"):
            how += f", spatial tiles above {m.tile_sample_min_height}x{m.tile_sample_min_width} px (its tiling)"
        else:
            how += ", no spatial tiling"
        return how

    def tokens(self, frames: int) -> int:
        _, t, h, w = self.geometry.latent_shape(frames, self.size)
        return t * h * w

    def seams(self, frames: int) -> list[int]:
        """Frames where a temporal tile's own frames start (none: the 17-frame reference's are used)."""
        m = self.model
        flag = TEMPORAL_TILES.get(type(m).__name__)
        clip = self.geometry.clip_frames(frames)
        if not (flag and getattr(m, flag, False)) or clip <= m.tile_sample_min_num_frames:
            return []
        return list(range(m.tile_sample_stride_num_frames, frames, m.tile_sample_stride_num_frames))

    @torch.no_grad()
    def reconstruct(self, video):
        T = video.shape[2]
        if video.shape[-1] % self.geometry.space or video.shape[-2] % self.geometry.space:
            raise ConfigError(
                f"{self.source}: frames of {video.shape[-2]}x{video.shape[-1]} are not multiples of its "
                f"spatial factor {self.geometry.space}"
            )
        x = pad_to(video, self.geometry.clip_frames(T))
        rec = decode(self.model, encode(self.model, x))[:, :, :T]
        return rec.clamp(-1, 1), self.seams(T)

    def to(self, device):
        self.model.to(device)
        return self


__all__ = [
    "DiffusersReconstructor",
    "DiffusersVAEConfig",
    "Geometry",
    "VIDEO_AUTOENCODERS",
    "autoencoder_step",
    "build_autoencoder",
    "coding_flops",
    "geometry",
    "parse_source",
]
