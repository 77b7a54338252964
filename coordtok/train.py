"""Tokenizer training: ``coordtok train --config configs/tokenizer/small.yaml``.

One loop for both stages (DESIGN.md section 2):

* stage 1: ``num_coords`` random patch coordinates per clip, L2;
* stage 2: ``num_frames_stage2`` random whole frames per clip, L2 + ``lpips_weight`` * LPIPS,
  weights taken from a stage-1 checkpoint (``train.init_from``).

Everything random is a pure function of ``(seed, step, clip position in the global batch)``:
the clips, their windows and their coordinates. So a resumed run continues exactly, and a run on
``N`` processes sees the same global batches as a run on one process (each rank takes its slice).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from einops import rearrange
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, DataConfig, TokenizerRunConfig
from .loop import (NonFiniteGuard, TrainingDiverged, close_run, make_run_dir, split_global_batch,  # noqa: F401
                   step_loader, tensorboard_writer)  # noqa: F401 (re-exported)
from .model import CoordTok, frame_coords, frames_from_patches, gather_patches, random_coords, random_frames


# ---------------------------------------------------------------------------- data


def dataset_from_config(d: DataConfig, seed: int, deterministic: bool = False):
    """A :class:`coordtok.data.VideoClipDataset` for a ``data`` config section."""
    from .data import build_dataset  # decord is imported only when data is needed

    spec = {"kind": d.kind, "num_frames": d.frames, "size": d.size, "stride": d.stride, "seed": seed,
            "min_frames": min(d.min_frames, d.frames), "clips_per_video": d.clips_per_video,
            "frame_range": d.frame_range, "deterministic_start": deterministic}
    if d.kind == "samples":
        spec["names"] = tuple(d.names)
        spec["preload"] = True
    else:
        spec["root"] = d.root
        if d.split is not None:
            spec["split"] = d.split
        if d.kind == "ucf101":
            spec["fold"] = d.fold
    return build_dataset(spec)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers; stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's slice of every global micro-batch, forever, from micro-step ``start``.

    The stream of clips is a new permutation of the dataset each epoch (seeded by ``(seed,
    epoch)``); an index is encoded as ``epoch * len(dataset) + i`` so the dataset knows which
    epoch's random window to draw, also inside DataLoader workers.
    """

    def __init__(self, n: int, global_micro_batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.n, self.gmb, self.rank, self.world, self.seed, self.start = n, global_micro_batch, rank, world, seed, start
        self.local = global_micro_batch // world
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, micro_step: int) -> list[int]:
        """Global (virtual) indices of global micro-batch ``micro_step``."""
        first = micro_step * self.gmb
        out = []
        for pos in range(first, first + self.gmb):
            epoch, k = divmod(pos, self.n)
            perm = self._perm(epoch)
            out.append(epoch * self.n + int(perm[k]))
        return out

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def __iter__(self):
        step = self.start
        while True:
            idx = self.indices(step)
            yield idx[self.rank * self.local:(self.rank + 1) * self.local]
            step += 1


class EpochIndexed(torch.utils.data.Dataset):
    """Decodes ``epoch * n + i`` into ``dataset.set_epoch(epoch); dataset[i]``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, virtual: int):
        epoch, i = divmod(int(virtual), len(self.dataset))
        self.dataset.set_epoch(epoch)
        item = self.dataset[i]
        return {"video": item["video"], "num_frames": item["num_frames"]}


# ---------------------------------------------------------------------------- loss


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] values (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def sample_targets(model: CoordTok, video: torch.Tensor, num_frames: torch.Tensor, stage: int, n: int,
                   seeds: list[int]) -> tuple[torch.Tensor, int | None]:
    """Coordinates for one micro-batch: ``(B, N, 3)`` and (stage 2) frames per clip."""
    valid_pf = model.valid_patch_frames(num_frames, video.shape[0], "cpu")
    coords = []
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        if stage == 1:
            coords.append(random_coords(valid_pf[b:b + 1], n, model.patch_grid, g))
        else:
            frames = random_frames(valid_pf[b:b + 1], n, g)
            coords.append(frame_coords(frames, model.patch_grid))
    return torch.cat(coords).to(video.device), (n if stage == 2 else None)


def tokenizer_loss(model, core: CoordTok, video: torch.Tensor, num_frames: torch.Tensor, coords: torch.Tensor,
                   frames_per_clip: int | None, l2_weight: float, lpips_weight: float, lpips=None) -> dict:
    """Mean L2 over clips, coordinates and values (+ LPIPS over the decoded frames in stage 2).

    ``model`` is what to call (possibly DDP-wrapped), ``core`` the bare :class:`CoordTok`.
    """
    pred = model(video, coords, num_frames).float()
    target = gather_patches(video, coords, core.patch_shape).float()
    mse = F.mse_loss(pred, target)
    out = {"mse": mse, "loss": l2_weight * mse}
    if lpips is not None and lpips_weight > 0:
        assert frames_per_clip is not None, "LPIPS needs whole frames (stage 2)"
        as_frames = lambda p: rearrange(frames_from_patches(p, frames_per_clip, core.patch_grid),
                                        "b c t h w -> (b t) c h w")
        lp = lpips(as_frames(pred), as_frames(target)).mean()
        out["lpips"] = lp
        out["loss"] = out["loss"] + lpips_weight * lp
    return out


# ---------------------------------------------------------------------------- helpers


def _resolve_precision(requested: str, log) -> str:
    if requested != "no" and not torch.cuda.is_available():
        log(f"note: mixed_precision={requested} needs a GPU here; training in fp32 on the CPU")
        return "no"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.mixed_precision=bf16: this GPU does not support bf16; use fp16")
    return requested


def build_optimizer(model: torch.nn.Module, t) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm gains (1-D parameters), as nanoGPT / timm."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates every parameter in one pass instead of a Python
    # loop of per-tensor ops (70 ms per CoordTok-S step on the 2-core CPU, BENCHMARKS.md setup).
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=True)


def load_tokenizer(path: str | Path, map_location="cpu") -> tuple[CoordTok, dict]:
    """A :class:`CoordTok` from a training checkpoint (or a run folder: its newest good one)."""
    state, _ = ckpt.load_run(path, "coordtok", "CoordTok tokenizer", map_location)
    model = CoordTok.from_config(state["config"]["model"])
    model.load_state_dict(state["model"])
    return model.eval(), state


@torch.no_grad()
def validate(core: CoordTok, dataset, n: int, device, frames_per_chunk: int | None = None) -> float:
    """Mean PSNR (dB, [0, 1] pixels) of full-clip reconstructions of the first ``n`` held-out clips."""
    was_training = core.training
    core.eval()
    total = []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        video = item["video"][None].to(device)
        nf = torch.tensor([item["num_frames"]], device=device)
        rec = core.reconstruct(video, nf, frames_per_chunk).clamp(-1, 1)
        valid = slice(0, int(nf))
        mse = F.mse_loss(rec[:, :, valid], video[:, :, valid]).item()
        total.append(psnr_from_mse(mse))
    core.train(was_training)
    return float(np.mean(total)) if total else float("nan")


# ---------------------------------------------------------------------------- the loop


def train(cfg: TokenizerRunConfig, resume: bool | str | None = None, progress: bool = True,
          config_text: str | None = None, on_finish=None) -> dict:
    """Train a tokenizer; returns ``{"step", "loss", "psnr", "val_psnr", "run_dir", "checkpoint"}``.

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    t, m = cfg.train, cfg.model
    run_dir = Path(t.out_dir)
    log = lambda msg: tqdm.write(msg, file=sys.stderr)
    precision = _resolve_precision(t.mixed_precision, log)
    accelerator = Accelerator(
        mixed_precision=precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    is_main, rank = accelerator.is_main_process, accelerator.process_index
    local_batch, global_micro = split_global_batch(t.batch_size, t.grad_accum, accelerator.num_processes, cfg.source)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # LPIPS first: a missing weight file must stop the run before any heavy work.
    lpips = None
    if t.lpips_weight > 0:
        from .lpips import LPIPS
        lpips = LPIPS.from_pretrained(t.lpips_vgg_path).to(accelerator.device)
    make_run_dir(run_dir, is_main)

    torch.manual_seed(t.seed)
    model = CoordTok(m)
    resume_state = ckpt.resume_state(run_dir, resume, "coordtok", log)
    if t.init_from and resume_state is None:
        init, _ = load_tokenizer(t.init_from)
        model.load_state_dict(init.state_dict())
        log(f"initialised from {t.init_from}")
    optimizer = build_optimizer(model, t)

    dataset = dataset_from_config(cfg.data, t.seed)
    val_set = (dataset_from_config(cfg.val_data, t.seed, deterministic=True) if cfg.val_data is not None else None)

    step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        step = int(resume_state["step"])

    model, optimizer = accelerator.prepare(model, optimizer)
    core: CoordTok = accelerator.unwrap_model(model)
    if resume_state is not None:
        if resume_state.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resume_state["scaler"])
        ckpt.set_rng_state(resume_state["rng"])

    sampler = GlobalBatchSampler(len(dataset), global_micro, rank, accelerator.num_processes, t.seed, start=step * t.grad_accum)
    batches = step_loader(EpochIndexed(dataset), sampler, cfg.data.num_workers, accelerator.device)
    writer = tensorboard_writer(run_dir, is_main)

    def save(step_: int) -> Path | None:
        if not is_main:
            return None
        state = {
            "kind": "coordtok", "version": 1, "step": step_,
            "model": core.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": ckpt.rng_state(), "config": cfg.to_dict(), "config_text": config_text, "metrics": dict(last),
        }
        path = ckpt.checkpoint_path(run_dir, step_)
        ckpt.atomic_save(state, path)
        ckpt.prune(run_dir, t.keep_checkpoints)
        return path

    n_per_clip = t.num_coords if t.stage == 1 else t.num_frames_stage2
    bar = tqdm(total=t.max_steps, initial=step, disable=not (progress and is_main), desc=f"stage {t.stage}",
               dynamic_ncols=True, file=sys.stderr)
    guard = NonFiniteGuard(accelerator, t.max_bad_steps, "Lower train.lr or use bf16/fp32")
    last = {"loss": float("nan"), "psnr": float("nan"), "val_psnr": float("nan")}
    if resume_state is not None:  # a finished run reports what it last measured
        last.update(resume_state.get("metrics") or {})
    last_ckpt = None
    model.train()
    tic, clips_seen = time.time(), 0
    while step < t.max_steps:
        losses = {}
        finite = True
        for micro in range(t.grad_accum):
            batch = next(batches)
            video = batch["video"].to(accelerator.device, non_blocking=True)
            num_frames = batch["num_frames"].to(accelerator.device)
            # Coordinates of a clip depend on (step, its position in the global batch) only, so
            # the same global batch gives the same targets for any processes x grad_accum split.
            first = micro * global_micro + rank * local_batch
            seeds = [mix_seed(t.seed, step, first + b, 7) for b in range(video.shape[0])]
            coords, fpc = sample_targets(core, video, num_frames.cpu(), t.stage, n_per_clip, seeds)
            sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                out = tokenizer_loss(model, core, video, num_frames, coords, fpc, t.l2_weight, t.lpips_weight, lpips)
                finite = finite and bool(torch.isfinite(out["loss"]))
                if finite:
                    accelerator.backward(out["loss"] / t.grad_accum)
            for k, v in out.items():
                losses[k] = losses.get(k, 0.0) + v.detach().float() / t.grad_accum
        if not guard.step_ok(finite, step, optimizer, save):
            continue
        if t.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        clips_seen += t.batch_size

        losses = {k: accelerator.reduce(v, reduction="mean").item() for k, v in losses.items()}
        last["loss"], last["psnr"] = losses["loss"], psnr_from_mse(losses["mse"])
        bar.update(1)
        if step % max(1, t.log_every) == 0 or step == t.max_steps:
            rate = clips_seen / max(time.time() - tic, 1e-9)
            bar.set_postfix(loss=f"{last['loss']:.4f}", psnr=f"{last['psnr']:.2f}", clips_s=f"{rate:.2f}")
            if writer is not None:
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/psnr", last["psnr"], step)
                writer.add_scalar("train/clips_per_s", rate, step)
            tic, clips_seen = time.time(), 0
        if val_set is not None and (step % max(1, t.val_every) == 0 or step == t.max_steps) and is_main:
            last["val_psnr"] = validate(core, val_set, t.val_clips, accelerator.device)
            log(f"step {step}: validation PSNR {last['val_psnr']:.2f} dB on {min(t.val_clips, len(val_set))} clips")
            if writer is not None:
                writer.add_scalar("val/psnr", last["val_psnr"], step)
        if step % max(1, t.ckpt_every) == 0 or step == t.max_steps:
            last_ckpt = save(step)
        accelerator.wait_for_everyone()
    close_run(bar, writer, on_finish, core, accelerator)
    return {"step": step, **last, "run_dir": str(run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None}
