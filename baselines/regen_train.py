"""REGEN training: ``coordtok train --config configs/baselines/regen.yaml`` (``kind: regen``).

One :class:`coordtok.loop.Task` (:class:`RegenTask`) for :func:`coordtok.loop.fit`. The causal
encoder and the diffusion-transformer decoder learn together through the decoder's flow-matching
loss (:meth:`baselines.regen.Regen.loss` on :func:`sit.transport.training_loss`): the velocity of
the linear path from noise ``x0`` to the chunk ``x1`` at time ``t``, conditioned on the chunk's latent.

Each optimizer step trains one of two tasks (ours; the paper's task mix and schedule are not
published): reconstruction of a ``1 + k``-frame chunk, or, with probability ``train.extend_prob``,
the backward extension that latent extension decodes (the chunk plus the previous chunk's last
frame). Training clips are two consecutive chunks. What is not implemented, and the random draws:
README.md, "The baselines as this project reads their papers".
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from coordtok.checkpoint import load_model
from coordtok.config import ConfigError, DataConfig, LoopConfig, RunConfig, from_dict, positive
from coordtok.loop import StepContext, fit
from coordtok.seeds import SeedTag, mix_seed
from coordtok.train import VideoTask
from sit.train import time_and_noise

from .regen import Regen, RegenConfig
from .train import baseline_data_section, read_run_sections

__all__ = [
    "RegenTrainConfig",
    "RegenRunConfig",
    "load_regen_run_config",
    "extension_step",
    "TrainingRegen",
    "RegenTask",
    "validation_decoder",
    "train_regen",
    "load_regen",
]


@dataclass
class RegenTrainConfig(LoopConfig):
    """REGEN training (the ``train:`` section); the paper gives no optimizer settings: ours (SiT's)."""

    extend_prob: float = 0.25  # fraction of steps that train the backward-extension window
    t_eps: float = 0.0  # training times drawn from U(t_eps, 1 - t_eps)
    decode_steps: int = 1  # Euler steps of the validation decode (1: REGEN's one-step decoder)
    val_clips: int = 8
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    batch_size: int = 32
    max_steps: int = 300_000
    out_dir: str = "runs/regen"

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.extend_prob <= 1.0:
            raise ConfigError(f"'extend_prob' must be in [0, 1], got {self.extend_prob}")
        if not 0.0 <= self.t_eps < 0.5:
            raise ConfigError(f"'t_eps' must be in [0, 0.5), got {self.t_eps}")
        positive(self, "decode_steps", "val_clips", allow_zero=("val_clips",))


@dataclass
class RegenRunConfig(RunConfig):
    """A REGEN run: ``kind: regen``, ``model`` (:class:`~baselines.regen.RegenConfig`), ``train``, ``data``
    (clips of two chunks when ``extend_prob > 0``, else one) and optional ``val_data`` (one chunk)."""

    model: RegenConfig
    train: RegenTrainConfig
    data: DataConfig
    val_data: DataConfig | None = None
    source: str = "<dict>"
    kind: typing.ClassVar[str] = "regen"

    def validate(self) -> None:
        m, n = self.model, self.model.frames
        # Clips of two chunks: the second is the chunk, the first its predecessor (needed by the
        # extension task, allowed without it); of one chunk: reconstruction only.
        allowed = (2 * n,) if self.train.extend_prob > 0 else (n, 2 * n)
        d = self.data
        if d.frames not in allowed or d.size != m.size:
            why = (
                " (two consecutive chunks: train.extend_prob > 0)"
                if self.train.extend_prob > 0
                else f" or {2 * n}x{m.size}x{m.size}"
            )
            raise ConfigError(
                f"{self.source}: data gives {d.frames}x{d.size}x{d.size} clips but this run needs "
                f"{allowed[0]}x{m.size}x{m.size}{why}"
            )
        v = self.val_data
        if v is not None and (v.frames != n or v.size != m.size):
            raise ConfigError(
                f"{self.source}: val_data gives {v.frames}x{v.size}x{v.size} clips but validation "
                f"reconstructs single chunks of {n}x{m.size}x{m.size}"
            )


def load_regen_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> RegenRunConfig:
    """A ``kind: regen`` YAML (or dict) with sections model/train/data/val_data, read strictly."""
    raw, source = read_run_sections(path_or_dict, overrides, "regen")
    model = from_dict(RegenConfig, raw.get("model"), f"{source}: model")
    train = from_dict(RegenTrainConfig, raw.get("train"), f"{source}: train")
    clip = 2 * model.frames if train.extend_prob > 0 else model.frames  # the default clip length
    cfg = RegenRunConfig(
        model=model,
        train=train,
        data=baseline_data_section(raw.get("data"), clip, model.size, f"{source}: data"),
        val_data=(
            baseline_data_section(raw["val_data"], model.frames, model.size, f"{source}: val_data")
            if raw.get("val_data")
            else None
        ),
        source=source,
    )
    cfg.validate()
    return cfg


def extension_step(seed: int, step: int, p: float) -> bool:
    """Whether optimizer step ``step`` trains the extension window (probability ``p``): a function
    of ``(seed, step)`` only, so every process and micro-batch of the step agree."""
    g = torch.Generator().manual_seed(mix_seed(seed, step, int(SeedTag.REGEN)))
    return p > 0 and float(torch.rand((), generator=g)) < p


def validation_decoder(model: Regen, steps: int, seed: int):
    """``(i, video, num_frames) -> reconstruction`` for :func:`coordtok.train.validation_psnr`:
    clip ``i`` decoded from its latent with ``steps`` Euler steps from noise seeded by ``(seed, i)``,
    the same noise at every validation."""

    def decode(i, video, num_frames):
        g = torch.Generator().manual_seed(mix_seed(seed, i, int(SeedTag.REGEN)))
        return model.decode(model.encode(video), steps=steps, generator=g).frames

    return decode


class TrainingRegen(Regen):
    """:class:`~baselines.regen.Regen` whose ``forward`` is its flow-matching loss: DDP all-reduces the
    gradients of what runs inside ``forward`` only. Same parameters and state dict as ``Regen``."""

    def forward(
        self, video: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, prev_video: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """``video (B, 3, 1 + k, H, W)``, ``t (B,)``, ``x0`` shaped like the target window ->
        :meth:`Regen.loss`'s ``(loss, stats)``."""
        return self.loss(video, prev_video=prev_video, t=t, x0=x0)


class RegenTask(VideoTask):
    """REGEN as a :class:`coordtok.loop.Task` (the module docstring says what it trains)."""

    kind = "regen"
    what = "REGEN"

    def __init__(self, cfg: RegenRunConfig):
        super().__init__(cfg)
        self.modules = {"model": TrainingRegen(cfg.model)}

    def loss(self, phase, batch, ctx: StepContext):
        clip = batch["video"]
        n = self.config.model.frames
        prev, video = (clip[:, :, :n], clip[:, :, n:]) if clip.shape[2] == 2 * n else (None, clip)
        if not extension_step(self.config.train.seed, ctx.step, self.config.train.extend_prob):
            prev = None
        b, _, _, h, w = video.shape
        frames = n + (1 if prev is not None else 0)
        tt, x0 = time_and_noise(ctx.item_seeds(b, SeedTag.REGEN), (3, frames, h, w))
        t_eps = self.config.train.t_eps
        tt = t_eps + (1 - 2 * t_eps) * tt
        loss, _ = self.wrapped["model"](video, tt.to(video.device, video.dtype), x0.to(video.device, video.dtype), prev)
        return {"loss": loss, ("extend_loss" if prev is not None else "recon_loss"): loss.detach()}

    def val_codec(self, model):
        return validation_decoder(model, self.config.train.decode_steps, self.config.train.seed)

    def val_note(self, model):
        return f"{self.config.train.decode_steps}-step decode, {super().val_note(model)}"


def train_regen(
    cfg: RegenRunConfig, resume: bool | str | Path | None = None, progress: bool = True, config_text: str | None = None
) -> dict:
    """Train REGEN; returns ``{"step", "loss", "recon_loss", "extend_loss", "val_psnr", "run_dir",
    "checkpoint"}`` (the latest value of each).

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    return fit(RegenTask(cfg), resume=resume, progress=progress, config_text=config_text)


def load_regen(path: str | Path, map_location="cpu", weights: str = "ema") -> tuple[Regen, dict]:
    """A :class:`~baselines.regen.Regen` in eval mode from a checkpoint file or run folder: ``(model, state)``.

    ``weights``: ``"ema"`` (the EMA where the run keeps one, else the training weights) or
    ``"model"``. One-line :class:`~coordtok.checkpoint.CheckpointError` for another kind of
    checkpoint, a missing config or weights that do not fit it.
    """
    return load_model(path, {"regen": ("REGEN", RegenConfig, Regen)}, map_location, weights)
