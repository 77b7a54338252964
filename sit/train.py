"""CoordTok-SiT training: ``coordtok sit-train --config configs/sit/L2-1280.yaml --latents DIR``.

One task on the project's training skeleton (:func:`coordtok.loop.fit`, which owns devices,
precision, DDP, resume, checkpoints and the data order). What is SiT's own:

* the loss: :func:`sit.transport.training_loss` (velocity MSE, averaged) on latents normalized
  with the cache's per-plane, per-channel statistics (:mod:`sit.stats`); each latent's time ``t``
  and noise ``x0`` are drawn from a generator seeded by ``(seed, step, position in the global
  batch)``, so a resumed run continues bit for bit and N processes see what one process sees;
* class labels (``model.num_classes > 1``): each latent's label from the cache, replaced by the
  null class with probability ``model.class_dropout_prob`` (label dropout, which trains the
  unconditional half of classifier-free guidance), drawn from a generator seeded by ``(seed, step,
  position in the global batch)`` like ``t`` and ``x0``; ``num_classes: 1`` ignores labels;
* the EMA (decay ``train.ema``, 0.9999 in the paper) stepped after every optimizer step over
  parameters and buffers; sampling uses it;
* a periodic look: a few EMA samples and their per-plane statistics;
* checkpoints also hold the EMA, the statistics and the tokenizer config the latents came from,
  so sampling needs nothing else.

``train.init_from`` fine-tunes from a SiT checkpoint (this project's or the reference's): the
model starts from its training weights and the EMA from its EMA weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from coordtok import checkpoint as ckpt
from coordtok.config import ConfigError, to_dict
from coordtok.loop import EpochIndexed, StepContext, Task, fit
from coordtok.seeds import SeedTag, mix_seed
from coordtok.triplane import PLANES

from .cache import LabelledLatents, LatentDataset, short_fingerprint
from .checkpoint import load_sit
from .config import SiTRunConfig
from .models import TriplaneSiT
from .samplers import euler_maruyama
from .stats import STATS_NAME, LatentStats, compute_stats, plane_values
from .transport import make_path, training_loss


def time_and_noise(seeds: list[int], shape) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` ``(B,)`` ~ U(0, 1) and ``x0`` ``(B, *shape)`` ~ N(0, I), each latent's from its own
    generator seeded by ``seeds[b]``."""
    ts, x0s = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        ts.append(torch.rand((), generator=g))
        x0s.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(ts), torch.stack(x0s)


def label_drops(seeds: list[int], prob: float) -> torch.Tensor:
    """``(B,)`` bool: which labels become the null class, each latent's from its own generator
    seeded by ``seeds[b]`` (a draw ``u ~ U(0, 1)``, dropped when ``u < prob``)."""
    return torch.stack([torch.rand((), generator=torch.Generator().manual_seed(seed)) < prob for seed in seeds])


def load_or_compute_stats(latents_dir: Path, accelerator, seed: int, log) -> LatentStats:
    """``stats.json`` of the cache; if it is missing the main process computes it (2048 latents)."""
    path = Path(latents_dir) / STATS_NAME
    if not path.is_file():
        if accelerator.is_main_process:
            log(f"{path} not found; computing the normalization statistics over 2048 random latents")
            compute_stats(latents_dir, 2048, seed).save(path)
        accelerator.wait_for_everyone()
    return LatentStats.load(path)


@torch.no_grad()
def sample_look(ema: TriplaneSiT, stats: LatentStats, cfg: SiTRunConfig, device) -> dict[str, float]:
    """Draw ``train.sample_num`` latents with the EMA model (Euler-Maruyama, ``train.sample_steps``
    steps, fixed seed so looks are comparable across steps) and return their per-plane statistics
    in normalized units (a good model gives mean ~ 0, std ~ 1) and in latent units."""
    tc, s = cfg.train, cfg.sample
    g = torch.Generator().manual_seed(mix_seed(tc.seed, SeedTag.SIT_LOOK))
    num_tokens = stats.per_token()[0].shape[1]
    noise = torch.randn(tc.sample_num, num_tokens, stats.channels, generator=g).to(device)
    x = euler_maruyama(
        ema,
        noise,
        num_steps=tc.sample_steps,
        diffusion_norm=s.diffusion_norm,
        last_step_size=s.last_step_size,
        generator=g,
        path=make_path(tc.path),
    )
    out = {"finite": float(torch.isfinite(x).all())}
    for space, flat in (("norm", x), ("latent", stats.denormalize(x))):
        planes = plane_values(flat.float().cpu(), stats.grid)
        for name in PLANES:
            out[f"{space}_mean_{name}"] = planes[name].mean().item()
            out[f"{space}_std_{name}"] = planes[name].std().item()
    return out


class SiTTask(Task):
    """CoordTok-SiT as a :class:`coordtok.loop.Task`."""

    kind = "sit"

    def __init__(self, cfg: SiTRunConfig, latents_dir: str | Path):
        super().__init__()
        self.config, tc, m = cfg, cfg.train, cfg.model
        self.latents_dir = Path(latents_dir)
        self.latents = LatentDataset(self.latents_dir)
        if tuple(m.grid) != self.latents.grid or m.channels != self.latents.channels:
            raise ConfigError(
                f"{cfg.source}: model.grid {list(m.grid)} with model.channels {m.channels} does not fit the latents "
                f"in {self.latents_dir} (grid {list(self.latents.grid)}, {self.latents.channels} channels); set them "
                f"to the tokenizer's"
            )
        if m.num_classes > 1 and self.latents.classes is None:
            raise ConfigError(
                f"{cfg.source}: model.num_classes is {m.num_classes} but the latents in "
                f"{self.latents_dir} have no class labels (an unlabelled data set, or a cache written "
                f"before labels were recorded); set model.num_classes: 1, or re-encode labelled data"
            )
        if m.num_classes > 1 and m.num_classes != len(self.latents.classes):
            raise ConfigError(
                f"{cfg.source}: model.num_classes is {m.num_classes} but the latents in "
                f"{self.latents_dir} have {len(self.latents.classes)} classes; set model.num_classes: "
                f"{len(self.latents.classes)}"
            )
        torch.manual_seed(tc.seed)
        self.modules = {"model": TriplaneSiT(m)}  # fit() keeps its EMA (train.ema): sampling uses it
        self.path = make_path(tc.path)
        self.stats: LatentStats | None = None
        self.shape = (self.latents.num_tokens, self.latents.channels)

    def setup(self):
        # The cache's statistics, also on resume: a corrected stats.json takes effect.
        self.stats = load_or_compute_stats(self.latents_dir, self.accelerator, self.config.train.seed, print)
        if self.stats.grid != self.latents.grid or self.stats.channels != self.latents.channels:
            raise ConfigError(
                f"normalization statistics are for grid {self.stats.grid} x {self.stats.channels} "
                f"channels, the latents in {self.latents_dir} are {self.latents.grid} x "
                f"{self.latents.channels}"
            )
        if self.config.model.num_classes > 1:  # the checkpoint carries the classes for `coordtok sample`
            self.stats.classes, self.stats.class_counts = self.latents.classes, self.latents.class_counts()
        elif self.latents.classes and self.accelerator.is_main_process:
            print(
                f"note: model.num_classes is 1: training unconditionally, ignoring the {len(self.latents.classes)} "
                f"classes of {self.latents_dir}",
                file=sys.stderr,
            )

    def dataset(self):
        return EpochIndexed(LabelledLatents(self.latents))

    def init_from(self, path, log):
        model, _, configs = load_sit(path, weights="model", log=log, heads=self.config.model.heads)
        ckpt.check_same_model(
            path,
            to_dict(model.config),
            to_dict(self.config.model),
            "cannot initialise from it",
            "fine-tune with the checkpoint's model settings",
        )
        self.modules["model"].load_state_dict(model.state_dict())
        self.ema.load_state_dict(configs["ema"])
        log(f"initialised from {path} (model and EMA weights)")

    def loss(self, phase, batch, ctx: StepContext):
        x1 = self.stats.normalize(batch["latent"])
        tt, x0 = time_and_noise(ctx.item_seeds(x1.shape[0], SeedTag.SIT_NOISE), self.shape)
        model, m = self.wrapped["model"], self.config.model
        if m.num_classes > 1:
            y = batch["label"]
            drop = label_drops(ctx.item_seeds(x1.shape[0], SeedTag.SIT_LABEL_DROP), m.class_dropout).to(y.device)
            model = lambda x, t: self.wrapped["model"](x, t, y, drop)  # noqa: E731
        loss, _ = training_loss(model, x1, path=self.path, t=tt.to(x1.device), x0=x0.to(x1.device))
        return {"loss": loss}

    def periodic(self, step, log):
        look = sample_look(self.ema, self.stats, self.config, self.accelerator.device)
        log(
            f"step {step}: EMA samples, normalized std per plane "
            + ", ".join(f"{p} {look[f'norm_std_{p}']:.3f}" for p in PLANES)
            + ("" if look["finite"] else " (NON-FINITE values)")
        )
        return {f"sample_{k}": v for k, v in look.items()}

    def check_resume(self, state, where):
        """Also refuse latents of another tokenizer: their latent space is not the one the weights
        learned, whatever their grid (the fingerprint of the tokenizer's weights, recorded by encode)."""
        super().check_resume(state, where)
        old, new = state.get("tokenizer_fingerprint"), self.latents.tokenizer_fingerprint
        if old and new and old != new:
            raise ckpt.CheckpointError(
                f"{where}: cannot resume on {self.latents_dir}: its latents come from another tokenizer (fingerprint "
                f"{short_fingerprint(new)}) than the checkpoint was trained on ({short_fingerprint(old)}, "
                f"{state.get('tokenizer_ckpt')}); pass the run's own --latents, or start a new run (another out_dir, "
                f"--init-from {where} to fine-tune)"
            )
        if not (old and new) and self.accelerator.is_main_process:
            print(
                f"note: {where if not old else self.latents_dir} records no tokenizer fingerprint (written before "
                f"they were recorded); cannot check that the latents come from the checkpoint's tokenizer",
                file=sys.stderr,
            )

    def extra_state(self):
        return {
            "stats": self.stats.to_dict(),
            "tokenizer_config": self.latents.tokenizer_config,
            "tokenizer_fingerprint": self.latents.tokenizer_fingerprint,
            "tokenizer_ckpt": self.latents.index.get("tokenizer_ckpt"),
            "latents": str(self.latents_dir.resolve()),
        }

    def load_extra_state(self, state, log):
        super().load_extra_state(state, log)
        old = state.get("stats")
        if old is not None and (self.latents_dir / STATS_NAME).is_file():
            now = LatentStats.load(self.latents_dir / STATS_NAME).to_dict()
            if {k: now[k] for k in ("mean", "std")} != {k: old[k] for k in ("mean", "std")}:
                log(
                    f"resume: the latent statistics in {self.latents_dir / STATS_NAME} differ from the checkpoint's; "
                    f"training continues with the new ones"
                )


def train_sit(
    cfg: SiTRunConfig,
    latents_dir: str | Path,
    resume: bool | str | Path | None = None,
    progress: bool = True,
    config_text: str | None = None,
) -> dict:
    """Train a TriplaneSiT on a latent cache; returns ``{"step", "loss", "run_dir", "checkpoint"}``.

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    return fit(SiTTask(cfg, latents_dir), resume=resume, progress=progress, config_text=config_text)
