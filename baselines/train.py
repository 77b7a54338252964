"""Training the conv-3D baseline tokenizers: ``coordtok train --config configs/baselines/<x>.yaml``.

Two :class:`coordtok.loop.Task` s for :func:`coordtok.loop.fit`, named by the config's ``kind:``
(rows of :data:`coordtok.kinds.KINDS`): ``magvit2`` (:class:`MagvitV2Task`) and ``promag``
(:class:`ProMAGTask`); REGEN's is in :mod:`baselines.regen_train`. Per clip ``x`` and
reconstruction ``x^`` (``P``: LPIPS, :mod:`coordtok.lpips`, standing in for each paper's
perceptual loss)::

    MAGVIT-v2 (Yu et al., ICLR 2024, supplement A.2)
    generator:     5.0 |x^ - x|^2 + 0.1 P(x^, x) + 0.25 commitment + w_H(step) entropy
                   + 0.1 softplus(-D(x^))                                      (non-saturating)
    discriminator: softplus(-D(x)) + softplus(D(sg(x^))) + 10 R1(x) + 0.001 LeCAM

    ProMAG (Mahapatra et al. 2025, supplement)
    generator:     1.0 |x^ - x|_1 + 1.0 P(x^, x) + 1e-12 KL + 0.1 (-D(x^))     (hinge; at 4x only)
                   [grown:  + 1.0 |x^_sub - x[:, :, ::2]|_1]
    discriminator: relu(1 - D(x)) + relu(1 + D(sg(x^)))  (PatchGAN3D, R1 weight 0)

``w_H`` is :func:`baselines.gan.entropy_weight`. ProMAG's growing (``train.grow_from``) starts a
grown config from its parent's checkpoint through :func:`baselines.promag.grow` (the task's
``start`` hook). Optimizers, schedules, what is ours where the papers are silent, the random draws
and the discriminator's batch: README.md, "The baselines as this project reads their papers".
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from coordtok.checkpoint import CheckpointError, check_same_model
from coordtok.config import (
    ConfigError,
    DataConfig,
    LoopConfig,
    RunConfig,
    data_section,
    from_dict,
    positive,
    read_sections,
    to_dict,
)
from coordtok.ema import update_ema
from coordtok.loop import StepContext, fit
from coordtok.seeds import SeedTag
from coordtok.train import VideoTask, psnr_from_mse

from .discriminator import build_discriminator
from .gan import LeCAM, entropy_weight, nonsaturating_d_loss, nonsaturating_g_loss, r1_penalty
from .magvit2 import MagvitV2, MagvitV2Config
from .promag import PatchGAN3D, ProMAG, ProMAGConfig, grow, hinge_d_loss, hinge_g_loss

__all__ = [
    "SECTIONS",
    "BaselineTrainConfig",
    "MagvitV2TrainConfig",
    "ProMAGTrainConfig",
    "BaselineRunConfig",
    "MagvitV2RunConfig",
    "ProMAGRunConfig",
    "read_run_sections",
    "baseline_data_section",
    "load_magvit2_run_config",
    "load_promag_run_config",
    "load_baseline_run_config",
    "psnr_from_mse",
    "call_frozen",
    "BaselineTask",
    "MagvitV2Task",
    "posterior_noise",
    "inherited_names",
    "ProMAGTask",
    "train_baseline",
]

SECTIONS = ("kind", "model", "train", "data", "val_data")


# ---------------------------------------------------------------------------- configs


@dataclass
class BaselineTrainConfig(LoopConfig):
    """Keys both baselines' ``train:`` sections share beyond :class:`~coordtok.config.LoopConfig`'s."""

    perceptual_weight: float = 0.0  # LPIPS weight (needs the VGG16 weights; 0 on CPU machines)
    gan_weight: float = 0.0  # 0: no discriminator, one phase per step
    r1_weight: float = 0.0  # R1 gradient penalty on real clips (discriminator phase)
    lpips_vgg_path: str | None = None  # vgg16-397923af.pth; default: $COORDTOK_VGG16 or the torch hub cache
    val_clips: int = 8

    def validate(self) -> None:
        super().validate()
        positive(
            self,
            "perceptual_weight",
            "gan_weight",
            "r1_weight",
            "val_clips",
            allow_zero=("perceptual_weight", "gan_weight", "r1_weight", "val_clips"),
        )


@dataclass
class MagvitV2TrainConfig(BaselineTrainConfig):
    """MAGVIT-v2 training (supplement A.2); defaults are the paper's where it gives them."""

    l2_weight: float = 5.0
    perceptual_weight: float = 0.1  # LPIPS standing in for the paper's ResNet-50 logit L2
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1  # LFQ entropy, annealed: x (1 + factor max(0, 1 - step / anneal_steps))
    entropy_anneal_steps: int = 2000
    entropy_anneal_factor: float = 3.0
    gan_weight: float = 0.1  # non-saturating
    r1_weight: float = 10.0
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999  # EMA of the mean real / fake logits
    ema: float | None = 0.999
    lr: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 5000  # ours: A.2 names a warm-up, not its length
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    batch_size: int = 256
    max_steps: int = 500_000  # ours
    out_dir: str = "runs/magvit2"

    def validate(self) -> None:
        super().validate()
        positive(
            self,
            "l2_weight",
            "commitment_weight",
            "entropy_weight",
            "entropy_anneal_steps",
            "entropy_anneal_factor",
            "lecam_weight",
            allow_zero=("l2_weight", "commitment_weight", "entropy_weight", "entropy_anneal_factor", "lecam_weight"),
        )
        if not 0.0 <= self.lecam_decay < 1.0:
            raise ConfigError(f"'lecam_decay' must be in [0, 1), got {self.lecam_decay}")


@dataclass
class ProMAGTrainConfig(BaselineTrainConfig):
    """ProMAG training (supplement); defaults are the paper's 4x stage."""

    recon_loss: str = "l1"  # l1 | l2 (the paper: "reconstruction"; SD-VAE's is L1)
    recon_weight: float = 1.0
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-12
    gan_weight: float = 0.1  # hinge; the paper uses it at 4x only (0 when growing)
    sub_weight: float = 1.0  # grown models: the subsampled reconstruction of the frozen path (ours)
    grow_from: str | None = None  # the parent stage's checkpoint or run folder (grown models)
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_steps: int = 300_000  # 4x: 300K; each grown stage +100K
    out_dir: str = "runs/promag"

    def validate(self) -> None:
        super().validate()
        if self.recon_loss not in ("l1", "l2"):
            raise ConfigError(f"'recon_loss' must be l1 or l2, got {self.recon_loss!r}")
        positive(
            self, "recon_weight", "kl_weight", "sub_weight", allow_zero=("recon_weight", "kl_weight", "sub_weight")
        )
        if self.grow_from and self.init_from:
            raise ConfigError("set 'grow_from' (start from the parent stage) or 'init_from' (same model), not both")


@dataclass
class BaselineRunConfig(RunConfig):
    """A whole baseline run config: ``kind``, ``model``, ``train``, ``data`` and optional ``val_data``."""

    model: typing.Any
    train: typing.Any
    data: DataConfig
    val_data: DataConfig | None = None
    source: str = "<dict>"
    kind: typing.ClassVar[str] = ""

    def validate(self) -> None:
        m = self.model
        for name, d in (("data", self.data), ("val_data", self.val_data)):
            if d is not None and (d.frames != m.frames or d.size != m.size):
                raise ConfigError(
                    f"{self.source}: {name} gives {d.frames}x{d.size}x{d.size} clips but the model is "
                    f"built for {m.frames}x{m.size}x{m.size} (model.frames, model.size)"
                )


@dataclass
class MagvitV2RunConfig(BaselineRunConfig):
    kind: typing.ClassVar[str] = "magvit2"


@dataclass
class ProMAGRunConfig(BaselineRunConfig):
    kind: typing.ClassVar[str] = "promag"

    def validate(self) -> None:
        super().validate()
        m, tc = self.model, self.train
        if m.grown_levels and not (tc.grow_from or tc.init_from):
            raise ConfigError(
                f"{self.source}: model.grown_levels is {m.grown_levels}: a grown model starts from its "
                f"parent stage; set train.grow_from to the parent's checkpoint or run folder"
            )
        if tc.grow_from and not m.grown_levels:
            raise ConfigError(
                f"{self.source}: train.grow_from needs a grown model (model.grown_levels >= 1, e.g. "
                f"configs/baselines/promag-8x.yaml)"
            )


def read_run_sections(path_or_dict, overrides: dict | None, kind: str) -> tuple[dict, str]:
    """The raw sections of a baseline config, its top-level ``kind`` checked against ``kind``."""
    required = ("model",) if isinstance(path_or_dict, dict) else ("model", "train")
    raw, source = read_sections(path_or_dict, SECTIONS, overrides, required)
    found = raw.get("kind")
    if found is not None and found != kind:
        raise ConfigError(f"{source}: kind: {found!r}, but this loader reads kind: {kind} configs")
    return raw, source


def baseline_data_section(raw: dict | None, frames: int, size: int, where: str) -> DataConfig:
    """A ``data``-like section for chunk tokenizers: clips of the model's ``frames x size^2``, only
    full-length windows (``min_frames = frames``: a zero-padded clip would teach black frames);
    the sample clips when the section is absent."""
    raw = {"kind": "samples"} if raw is None else raw
    return data_section({"min_frames": frames, **raw}, frames, size, where)


def _load_run_config(cls, model_cls, train_cls, kind: str, path_or_dict, overrides):
    raw, source = read_run_sections(path_or_dict, overrides, kind)
    model = from_dict(model_cls, raw.get("model"), f"{source}: model")
    cfg = cls(
        model=model,
        train=from_dict(train_cls, raw.get("train"), f"{source}: train"),
        data=baseline_data_section(raw.get("data"), model.frames, model.size, f"{source}: data"),
        val_data=(
            baseline_data_section(raw["val_data"], model.frames, model.size, f"{source}: val_data")
            if raw.get("val_data")
            else None
        ),
        source=source,
    )
    cfg.validate()
    return cfg


def load_magvit2_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> MagvitV2RunConfig:
    """A ``kind: magvit2`` YAML (or dict) with sections model/train/data/val_data, read strictly."""
    return _load_run_config(MagvitV2RunConfig, MagvitV2Config, MagvitV2TrainConfig, "magvit2", path_or_dict, overrides)


def load_promag_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None) -> ProMAGRunConfig:
    """A ``kind: promag`` YAML (or dict) with sections model/train/data/val_data, read strictly."""
    return _load_run_config(ProMAGRunConfig, ProMAGConfig, ProMAGTrainConfig, "promag", path_or_dict, overrides)


def load_baseline_run_config(path_or_dict: str | Path | dict, overrides: dict | None = None):
    """The run config of a ``kind: magvit2`` or ``kind: promag`` file (REGEN: :mod:`baselines.regen_train`)."""
    raw, source = read_sections(path_or_dict, SECTIONS, None, ())
    loaders = {"magvit2": load_magvit2_run_config, "promag": load_promag_run_config}
    kind = raw.get("kind")
    if kind not in loaders:
        raise ConfigError(f"{source}: kind: {kind!r} is not a conv-3D baseline tokenizer (magvit2 or promag)")
    return loaders[kind](path_or_dict, overrides)


# ---------------------------------------------------------------------------- shared pieces


def as_frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W) -> (B T, 3, H, W)``: the frames of clips, for an image loss."""
    return rearrange(video, "b c t h w -> (b t) c h w")


def call_frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as a fixed function of ``x``: no gradient reaches the module's parameters and
    its buffers (a BatchNorm's running statistics) do not change. The generator's adversarial
    term uses it, so the generator phase leaves the discriminator exactly as it was."""
    state = {name: p.detach() for name, p in module.named_parameters()}
    state.update({name: b.clone() for name, b in module.named_buffers()})
    return torch.func.functional_call(module, state, (x,))


class BaselineTask(VideoTask):
    """What MAGVIT-v2 and ProMAG training share: data, LPIPS, the discriminator phase, the EMA,
    validation, init and extra checkpoint state. Subclasses build the modules and define
    :meth:`autoencoder_loss` and the adversarial terms on the discriminator's logits
    (:meth:`g_adv`, :meth:`d_adv`)."""

    def __init__(self, cfg: BaselineRunConfig):
        tc = cfg.train
        super().__init__(cfg, tc.perceptual_weight, tc.lpips_vgg_path)
        self.modules = {"model": self.build_model()}
        self.phases = ("model",)
        if tc.gan_weight > 0:
            self.modules["disc"] = self.build_discriminator()
            self.phases = ("model", "disc")
        self._fakes: dict[int, torch.Tensor] = {}  # generator output per micro-batch, for the disc phase

    # -- what a subclass defines
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The tokenizer to train."""

    @abc.abstractmethod
    def build_discriminator(self) -> nn.Module:
        """The discriminator (built only with ``train.gan_weight > 0``)."""

    @abc.abstractmethod
    def autoencoder_loss(self, video: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """``(loss, metrics, reconstruction)`` of the model phase without the adversarial term."""

    @abc.abstractmethod
    def g_adv(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss on the discriminator's logits of its output."""

    @abc.abstractmethod
    def d_adv(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's adversarial loss on real and fake logits."""

    @abc.abstractmethod
    def codec(self, model: nn.Module):
        """``clip -> reconstruction`` for validation."""

    # -- the task
    def add_perceptual(self, loss: torch.Tensor, out: dict, recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """``loss`` plus ``perceptual_weight`` x the mean LPIPS over every frame of the clips (reported
        in ``out["lpips"]``); ``loss`` itself when the run has no LPIPS term."""
        if self.lpips is None:
            return loss
        lp = self.lpips(as_frames(recon), as_frames(video)).mean()
        out["lpips"] = lp.detach()
        return loss + self.config.train.perceptual_weight * lp

    def loss(self, phase, batch, ctx: StepContext):
        video = batch["video"]
        tc = self.config.train
        if phase == "model":
            loss, out, recon = self.autoencoder_loss(video, ctx)
            if tc.gan_weight > 0:
                adv = self.g_adv(call_frozen(self.modules["disc"], recon))
                loss = loss + tc.gan_weight * adv
                out["gan"] = adv.detach()
                # The discriminator phase of this step judges this very output (as every GAN
                # tokenizer's trainer does: both losses from one forward), detached.
                self._fakes[ctx.micro] = recon.detach()
            out["loss"] = loss
            return out
        return self.disc_loss(video, self._fakes.pop(ctx.micro), ctx)

    def disc_loss(self, video: torch.Tensor, fake: torch.Tensor, ctx: StepContext) -> dict:
        """The discriminator phase's loss on real clips and the generator's (detached) output.

        Real and fake go through the DDP-wrapped discriminator in one batch: one forward per
        backward, as DDP requires (for the MAGVIT-v2 discriminator, without normalization, the
        same logits as two calls)."""
        tc = self.config.train
        real = video.detach().requires_grad_(tc.r1_weight > 0)
        logits = self.wrapped["disc"](torch.cat([real, fake.to(real.dtype)]))
        real_logits, fake_logits = logits[: len(real)], logits[len(real) :]
        loss = self.d_adv(real_logits, fake_logits)
        out = {"real": real_logits.detach().float().mean(), "fake": fake_logits.detach().float().mean()}
        if tc.r1_weight > 0:
            r1 = r1_penalty(real_logits, real)
            loss = loss + tc.r1_weight * r1
            out["r1"] = r1.detach()
        out["loss"] = loss + self.d_regularizer(real_logits, fake_logits, out)
        return out

    def d_regularizer(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, out: dict) -> torch.Tensor | float:
        """A further discriminator term (MAGVIT-v2: LeCAM); may add metrics to ``out``."""
        return 0.0

    def summarize(self, metrics):
        return {**metrics, "psnr": psnr_from_mse(metrics["mse"])} if "mse" in metrics else metrics

    def val_codec(self, model):
        codec = self.codec(model)
        return lambda i, video, num_frames: codec(video)

    def check_resume(self, state, where):
        super().check_resume(state, where)
        if "disc" in self.modules and state.get("disc") is None:
            raise CheckpointError(
                f"{where}: cannot resume with a discriminator (train.gan_weight > 0): the run was "
                f"trained without one; keep train.gan_weight=0, or start a new run from it with "
                f"train.init_from"
            )


# ---------------------------------------------------------------------------- MAGVIT-v2


class MagvitV2Task(BaselineTask):
    """MAGVIT-v2 (supplement A.2) as a :class:`coordtok.loop.Task`; the objective is in the module
    docstring. The LeCAM statistics are checkpointed with the run (``extra_state``)."""

    kind = "magvit2"
    what = "MAGVIT-v2"

    def __init__(self, cfg: MagvitV2RunConfig):
        super().__init__(cfg)
        self.lecam = LeCAM(cfg.train.lecam_decay)
        self._logit_sums = torch.zeros(3)  # this step's sum of real logits, of fake logits, count

    def build_model(self):
        return MagvitV2(self.config.model)

    def build_discriminator(self):
        return build_discriminator(self.config.model)

    def setup(self):
        super().setup()
        self.lecam.to(self.accelerator.device)
        self._logit_sums = self._logit_sums.to(self.accelerator.device)

    def autoencoder_loss(self, video, ctx):
        tc = self.config.train
        if ctx.micro == 0:
            self._logit_sums.zero_()
        recon, aux = self.wrapped["model"](video)
        mse = F.mse_loss(recon.float(), video.float())
        w_h = entropy_weight(ctx.step, tc.entropy_weight, tc.entropy_anneal_steps, tc.entropy_anneal_factor)
        loss = tc.l2_weight * mse + tc.commitment_weight * aux["commitment"] + w_h * aux["entropy"]
        out = {
            "mse": mse.detach(),
            "commitment": aux["commitment"].detach(),
            "entropy": aux["entropy"].detach(),
            "codebook_use": torch.tensor(aux["codebook_use"], device=video.device),
            "perplexity": torch.tensor(aux["perplexity"], device=video.device),
        }
        loss = self.add_perceptual(loss, out, recon, video)
        return loss, out, recon

    def g_adv(self, fake_logits):
        return nonsaturating_g_loss(fake_logits)

    def d_adv(self, real_logits, fake_logits):
        return nonsaturating_d_loss(real_logits, fake_logits)

    def d_regularizer(self, real_logits, fake_logits, out):
        tc = self.config.train
        if tc.lecam_weight == 0:
            return 0.0
        # Against the statistics as they were before this step; they move once the step is done
        # (after_step), with the mean logits of the whole global batch.
        reg = self.lecam(real_logits, fake_logits, update=False)
        out["lecam"] = reg.detach()
        self._logit_sums += torch.stack(
            [
                real_logits.detach().float().sum(),
                fake_logits.detach().float().sum(),
                real_logits.new_tensor(float(len(real_logits)), dtype=torch.float32),
            ]
        )
        return tc.lecam_weight * reg

    def after_step(self, step):
        super().after_step(step)
        if "disc" in self.modules and self.config.train.lecam_weight > 0:
            sums = self._logit_sums
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums.clone(), reduction="sum")
            count = sums[2].clamp_min(1)
            self.lecam.update((sums[0] / count).view(1), (sums[1] / count).view(1))

    def codec(self, model):
        return lambda clip: model(clip)[0]

    def extra_state(self):
        return {**super().extra_state(), "lecam": self.lecam.state_dict()}

    def load_extra_state(self, state, log):
        super().load_extra_state(state, log)
        if state.get("lecam") is not None:
            self.lecam.load_state_dict(state["lecam"])


# ---------------------------------------------------------------------------- ProMAG


def posterior_noise(seeds: list[int], shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(B, *shape)`` standard normal noise, item ``b`` from a CPU generator seeded by ``seeds[b]``
    (the same numbers on any device)."""
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(draws).to(device=device, dtype=dtype)


def inherited_names(cfg: ProMAGConfig) -> set[str]:
    """Parameter names a grown ``cfg`` shares with its parent (the frozen ones); built on the meta
    device, so nothing is allocated."""
    with torch.device("meta"):
        return {name for name, _ in ProMAG(cfg.parent()).named_parameters()}


class ProMAGTask(BaselineTask):
    """ProMAG as a :class:`coordtok.loop.Task`: a stage trained from scratch, or a grown stage
    (``model.grown_levels >= 1``) started from its parent with :func:`~baselines.promag.grow`.
    The objective is in the module docstring."""

    kind = "promag"
    what = "ProMAG"

    def build_model(self):
        cfg = self.config.model
        model = ProMAG(cfg)
        if cfg.grown_levels:
            # The same freezing as grow(): a resumed grown run rebuilds this model from its config,
            # and the optimizer must see exactly the parameters it saw before.
            frozen = inherited_names(cfg)
            for name, p in model.named_parameters():
                p.requires_grad_(name not in frozen)
        return model

    def build_discriminator(self):
        return PatchGAN3D.from_config(self.config.model)

    def start(self, log):
        """A grown stage starts from its parent stage (``train.grow_from``, :func:`grow`); a stage
        trained from scratch from ``train.init_from`` as every task."""
        path = self.config.train.grow_from
        if not path:
            return super().start(log)
        from .checkpoint import load_baseline

        parent, state = load_baseline(path)
        check_same_model(
            path,
            to_dict(parent.cfg) if isinstance(parent, ProMAG) else {},
            to_dict(self.config.model.parent()),
            "cannot grow from it",
            "train.grow_from takes the checkpoint of this config's parent stage",
        )
        child = grow(parent, self.config.model)
        model = self.modules["model"]
        model.load_state_dict(child.state_dict())
        for (name, p), (_, q) in zip(model.named_parameters(), child.named_parameters()):
            if p.requires_grad != q.requires_grad:
                raise RuntimeError(f"{name}: grow() and the task disagree on whether it is frozen")
        if self.ema is not None:
            update_ema(self.ema, model, 0.0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(
            f"grown from {path} (step {state.get('step')}, {'EMA' if state.get('ema') is not None else 'model'} "
            f"weights): {trainable:,} of {total:,} parameters train, the parent's are frozen"
        )

    def recon_error(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = recon.float() - target.float()
        return diff.abs().mean() if self.config.train.recon_loss == "l1" else diff.pow(2).mean()

    def autoencoder_loss(self, video, ctx):
        tc = self.config.train
        # each clip's posterior noise from its own seed (the same draw at any world size)
        shape = self.modules["model"].latent_shape(video.shape[2], video.shape[3])
        noise = posterior_noise(ctx.item_seeds(len(video), SeedTag.BASELINE), shape, video.device, video.dtype)
        recon, aux = self.wrapped["model"](video, noise=noise)
        rec = self.recon_error(recon, video)
        loss = tc.recon_weight * rec + tc.kl_weight * aux["kl"]
        mse = F.mse_loss(recon.float(), video.float())
        out = {"recon": rec.detach(), "kl": aux["kl"].detach(), "mse": mse.detach()}
        loss = self.add_perceptual(loss, out, recon, video)
        if "recon_sub" in aux:
            sub = self.recon_error(aux["recon_sub"], aux["video_sub"])
            loss = loss + tc.sub_weight * sub
            out["recon_sub"] = sub.detach()
        return loss, out, recon

    def g_adv(self, fake_logits):
        return hinge_g_loss(fake_logits)

    def d_adv(self, real_logits, fake_logits):
        return hinge_d_loss(real_logits, fake_logits)

    def codec(self, model):
        return model.codec  # decodes the posterior mean


# ---------------------------------------------------------------------------- entry point


def train_baseline(
    cfg: MagvitV2RunConfig | ProMAGRunConfig,
    resume: bool | str | Path | None = None,
    progress: bool = True,
    config_text: str | None = None,
) -> dict:
    """Train a MAGVIT-v2 or ProMAG tokenizer; returns ``{"step", "loss", "mse", "psnr", ...,
    ("val_psnr"), "run_dir", "checkpoint"}`` (the last step's metrics; ``disc_*`` for the
    discriminator phase).

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file. A grown ProMAG run starts from ``train.grow_from``.
    """
    task = {MagvitV2RunConfig: MagvitV2Task, ProMAGRunConfig: ProMAGTask}[type(cfg)](cfg)
    return fit(task, resume=resume, progress=progress, config_text=config_text)
