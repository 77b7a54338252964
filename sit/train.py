"""CoordTok-SiT training: ``coordtok sit-train --config configs/sit/L2-1280.yaml --latents DIR``.

The loop mirrors the tokenizer's (:mod:`coordtok.train`): ``accelerate`` for devices, mixed
precision and DDP; a global batch per step cut into per-process slices by
:class:`coordtok.train.GlobalBatchSampler`; every random draw a pure function of
``(seed, step, position in the global batch)`` -- the latents of a batch, their times ``t`` and
their noise ``x0`` -- so a resumed run continues bit for bit and ``N`` processes see the batches
one process would. After every optimizer step the EMA (decay ``train.ema``, 0.9999 in the paper)
is stepped over parameters and buffers; sampling uses it.

Loss: :func:`sit.transport.training_loss` (velocity MSE, averaged) on latents normalized with the
cache's per-plane, per-channel statistics. Checkpoints (``ckpt-<step>.pt``, atomic, with
fall-back) hold model, EMA, optimizer, scaler, step, RNG, the normalization statistics, the SiT
config and the tokenizer config the latents came from, so sampling needs nothing else.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from coordtok import checkpoint as ckpt
from coordtok.config import ConfigError
from coordtok.loop import NonFiniteGuard, close_run, make_run_dir, split_global_batch, step_loader, tensorboard_writer
from coordtok.train import GlobalBatchSampler, _resolve_precision, build_optimizer, mix_seed
from coordtok.triplane import PLANES

from .config import SiTRunConfig
from .ema import create_ema, update_ema
from .latents import STATS_NAME, LatentDataset, LatentStats, plane_values, compute_stats
from .models import TriplaneSiT
from .samplers import euler_maruyama
from .transport import make_path, training_loss

_NOISE_TAG, _LOOK_TAG = 11, 23  # separate streams of mix_seed


class _Virtual(torch.utils.data.Dataset):
    """Decodes the sampler's ``epoch * n + i`` into latent ``i``."""

    def __init__(self, dataset: LatentDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, virtual: int) -> torch.Tensor:
        return self.dataset[int(virtual) % len(self.dataset)]


def time_and_noise(seed: int, step: int, first: int, batch: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` ``(B,)`` ~ U(0, 1) and ``x0`` ``(B, *shape)`` ~ N(0, I) for the latents at positions
    ``first .. first + B - 1`` of step ``step``'s global batch: each from its own seeded generator."""
    ts, x0s = [], []
    for b in range(batch):
        g = torch.Generator().manual_seed(mix_seed(seed, step, first + b, _NOISE_TAG))
        ts.append(torch.rand((), generator=g))
        x0s.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(ts), torch.stack(x0s)


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
    t, s = cfg.train, cfg.sample
    g = torch.Generator().manual_seed(mix_seed(t.seed, _LOOK_TAG))
    num_tokens = stats.per_token()[0].shape[1]
    noise = torch.randn(t.sample_num, num_tokens, stats.channels, generator=g).to(device)
    x = euler_maruyama(lambda x_, t_: ema(x_, t_), noise, num_steps=t.sample_steps, diffusion_norm=s.diffusion_norm,
                       last_step_size=s.last_step_size, generator=g, path=make_path(t.path))
    out = {"finite": float(torch.isfinite(x).all())}
    for space, flat in (("norm", x), ("latent", stats.denormalize(x))):
        planes = plane_values(flat.float().cpu(), stats.grid)
        for name in PLANES:
            out[f"{space}_mean_{name}"] = planes[name].mean().item()
            out[f"{space}_std_{name}"] = planes[name].std().item()
    return out


def train_sit(cfg: SiTRunConfig, latents_dir: str | Path, resume: bool | str | None = None, progress: bool = True,
              config_text: str | None = None, on_finish=None) -> dict:
    """Train a TriplaneSiT on a latent cache; returns ``{"step", "loss", "run_dir", "checkpoint"}``.

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    t = cfg.train
    run_dir = Path(t.out_dir)
    latents_dir = Path(latents_dir)
    log = lambda msg: tqdm.write(msg, file=sys.stderr)
    precision = _resolve_precision(t.mixed_precision, log)
    accelerator = Accelerator(mixed_precision=precision)
    is_main, rank = accelerator.is_main_process, accelerator.process_index
    local_batch, global_micro = split_global_batch(t.batch_size, t.grad_accum, accelerator.num_processes, cfg.source)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = t.allow_tf32
        torch.backends.cudnn.allow_tf32 = t.allow_tf32

    dataset = LatentDataset(latents_dir)
    m = cfg.model
    if tuple(m.grid) != dataset.grid or m.channels != dataset.channels:
        raise ConfigError(
            f"{cfg.source}: model.grid {list(m.grid)} with model.channels {m.channels} does not fit the latents in "
            f"{latents_dir} (grid {list(dataset.grid)}, {dataset.channels} channels); set them to the tokenizer's")
    make_run_dir(run_dir, is_main)

    torch.manual_seed(t.seed)
    model = TriplaneSiT(m)
    ema = create_ema(model)
    optimizer = build_optimizer(model, t)
    path = make_path(t.path)

    # ---- resume
    resume_state = ckpt.resume_state(run_dir, resume, "sit", log)
    step = 0
    if resume_state is not None:
        if resume_state["config"]["model"] != m.to_dict():
            raise ckpt.CheckpointError(f"cannot resume: the checkpoint's model config {resume_state['config']['model']} "
                                       f"differs from {cfg.source}'s")
        model.load_state_dict(resume_state["model"])
        ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        step = int(resume_state["step"])
        stats = LatentStats.from_dict(resume_state["stats"])  # the run's own, even if the cache changed
    else:
        stats = load_or_compute_stats(latents_dir, accelerator, t.seed, log)
    if stats.grid != dataset.grid or stats.channels != dataset.channels:
        raise ConfigError(f"normalization statistics are for grid {stats.grid} x {stats.channels} channels, the "
                          f"latents in {latents_dir} are {dataset.grid} x {dataset.channels}")

    model, optimizer = accelerator.prepare(model, optimizer)
    core: TriplaneSiT = accelerator.unwrap_model(model)
    ema.to(accelerator.device)
    if resume_state is not None:
        if resume_state.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resume_state["scaler"])
        ckpt.set_rng_state(resume_state["rng"])

    sampler = GlobalBatchSampler(len(dataset), global_micro, rank, accelerator.num_processes, t.seed, start=step * t.grad_accum)
    batches = step_loader(_Virtual(dataset), sampler, t.num_workers, accelerator.device)
    writer = tensorboard_writer(run_dir, is_main)

    def save(step_: int) -> Path | None:
        if not is_main:
            return None
        state = {
            "kind": "sit", "version": 1, "step": step_,
            "model": core.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": ckpt.rng_state(), "stats": stats.to_dict(), "config": cfg.to_dict(), "config_text": config_text, "metrics": dict(last),
            "tokenizer_config": dataset.tokenizer_config, "tokenizer_ckpt": dataset.index.get("tokenizer_ckpt"),
            "latents": str(latents_dir.resolve()),
        }
        where = ckpt.checkpoint_path(run_dir, step_)
        ckpt.atomic_save(state, where)
        ckpt.prune(run_dir, t.keep_checkpoints)
        return where

    bar = tqdm(total=t.max_steps, initial=step, disable=not (progress and is_main), desc="sit",
               dynamic_ncols=True, file=sys.stderr)
    guard = NonFiniteGuard(accelerator, t.max_bad_steps, "Lower train.lr, set train.max_grad_norm or use bf16/fp32")
    last = {"loss": float("nan")}
    if resume_state is not None:  # a finished run reports what it last measured
        last.update(resume_state.get("metrics") or {})
    last_ckpt = None
    model.train()
    tic, steps_done = time.time(), 0
    shape = (dataset.num_tokens, dataset.channels)
    while step < t.max_steps:
        loss_sum = torch.zeros((), device=accelerator.device)
        finite = True
        for micro in range(t.grad_accum):
            x1 = next(batches).to(accelerator.device, non_blocking=True)
            x1 = stats.normalize(x1)
            # t and x0 of a latent depend on (step, its position in the global batch) only, so the
            # same global batch gets the same draws for any processes x grad_accum split.
            first = micro * global_micro + rank * local_batch
            tt, x0 = time_and_noise(t.seed, step, first, x1.shape[0], shape)
            sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                loss, _ = training_loss(model, x1, path=path, t=tt.to(x1.device), x0=x0.to(x1.device))
                finite = finite and bool(torch.isfinite(loss))
                if finite:
                    accelerator.backward(loss / t.grad_accum)
            loss_sum += loss.detach().float() / t.grad_accum
        if not guard.step_ok(finite, step, optimizer, save):
            continue
        grad_norm = None
        if t.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, core, t.ema)
        step += 1
        steps_done += 1

        last["loss"] = accelerator.reduce(loss_sum, reduction="mean").item()
        bar.update(1)
        if step % max(1, t.log_every) == 0 or step == t.max_steps:
            rate = steps_done / max(time.time() - tic, 1e-9)
            bar.set_postfix(loss=f"{last['loss']:.4f}", steps_s=f"{rate:.2f}")
            if writer is not None:
                writer.add_scalar("train/loss", last["loss"], step)
                writer.add_scalar("train/steps_per_s", rate, step)
                if grad_norm is not None:
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
            tic, steps_done = time.time(), 0
        if t.sample_every and step % t.sample_every == 0 and is_main:
            look = sample_look(ema, stats, cfg, accelerator.device)
            log(f"step {step}: EMA samples, normalized std per plane "
                + ", ".join(f"{p} {look[f'norm_std_{p}']:.3f}" for p in PLANES)
                + ("" if look["finite"] else " (NON-FINITE values)"))
            if writer is not None:
                for k, v in look.items():
                    writer.add_scalar(f"sample/{k}", v, step)
        if step % max(1, t.ckpt_every) == 0 or step == t.max_steps:
            last_ckpt = save(step)
        accelerator.wait_for_everyone()
    close_run(bar, writer, on_finish, core, accelerator)
    return {"step": step, **last, "run_dir": str(run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None}
