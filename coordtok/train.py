"""Tokenizer training: ``coordtok train --config configs/tokenizer/small.yaml``.

One task on the project's training skeleton (:func:`coordtok.loop.fit`), both stages of the
CoordTok paper (section 3.3):

* stage 1: ``num_coords`` random patch coordinates per clip, L2;
* stage 2: ``num_frames_stage2`` random whole frames per clip, L2 + ``lpips_weight`` * LPIPS,
  weights taken from a stage-1 checkpoint (``train.init_from``; a checkpoint of the public
  reference implementation works too).

The coordinates of a clip are a pure function of ``(seed, step, clip position in the global
batch)``, like the clips and their windows; so a resumed run continues exactly, and a run on
``N`` processes sees the same global batches as a run on one process (each rank takes its slice).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .checkpoint import CheckpointError, load_run, load_tokenizer, module_key
from .config import TokenizerRunConfig
from .ema import update_ema
from .loop import EpochIndexed, SeedTag, StepContext, Task, fit
from .model import CoordTok, frame_coords, frames_from_patches, gather_patches, random_coords, random_frames


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] values (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def sample_targets(model: CoordTok, num_frames: torch.Tensor, stage: int, n: int,
                   seeds: list[int]) -> torch.Tensor:
    """Coordinates ``(B, N, 3)`` for one micro-batch: ``n`` random patches per clip (stage 1) or
    all patches of ``n`` random frames (stage 2), drawn only from each clip's valid frames, from
    one generator per clip seeded by ``seeds``."""
    valid_pf = model.valid_patch_frames(num_frames, len(seeds), "cpu")
    coords = []
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        if stage == 1:
            coords.append(random_coords(valid_pf[b:b + 1], n, model.patch_grid, g))
        else:
            coords.append(frame_coords(random_frames(valid_pf[b:b + 1], n, g), model.patch_grid))
    return torch.cat(coords)


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
        if frames_per_clip is None:
            raise ValueError("LPIPS needs whole frames (stage 2)")
        as_frames = lambda p: rearrange(frames_from_patches(p, frames_per_clip, core.patch_grid),
                                        "b c t h w -> (b t) c h w")
        lp = lpips(as_frames(pred), as_frames(target)).mean()
        out["lpips"] = lp
        out["loss"] = out["loss"] + lpips_weight * lp
    return out


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
        total.append(psnr_from_mse(F.mse_loss(rec[:, :, valid], video[:, :, valid]).item()))
    core.train(was_training)
    return float(np.mean(total)) if total else float("nan")


class VideoTask(Task):
    """A tokenizer trained on video clips (CoordTok, the baselines): its training and validation
    sets (``cfg.data``, ``cfg.val_data``), an optional LPIPS loss network, the seed set before the
    modules are built. Batches are ``{"video", "num_frames"}``."""

    what = "tokenizer"  # how messages name this task's checkpoints

    def __init__(self, cfg, lpips_weight: float = 0.0, lpips_vgg_path: str | None = None):
        super().__init__()
        from .data import build_dataset  # decord is imported only when data is needed

        self.config, t = cfg, cfg.train
        # LPIPS first: a missing weight file must stop the run before any heavy work.
        self.lpips = None
        if lpips_weight > 0:
            from .lpips import LPIPS
            self.lpips = LPIPS.from_pretrained(lpips_vgg_path)
        self.train_set = build_dataset(cfg.data, t.seed, uint8=True)  # floats on the device: collate_to
        self.val_set = build_dataset(cfg.val_data, t.seed, deterministic=True) if cfg.val_data is not None else None
        torch.manual_seed(t.seed)  # the subclass builds its modules next

    def dataset(self):
        return EpochIndexed(self.train_set, lambda item: {"video": item["video"], "num_frames": item["num_frames"]})

    def collate_to(self, batch, device):
        """The batch on ``device``, its uint8 clips made float in [-1, 1] there: they cross the
        DataLoader's worker, shared and pinned memory as uint8, a quarter of float32's bytes."""
        from .data import to_model_video

        batch = super().collate_to(batch, device)
        return {**batch, "video": to_model_video(batch["video"], batch["num_frames"])}

    def init_from(self, path, log):
        """``train.init_from``: the weights of a checkpoint of the same model (and of this task's
        other modules, a discriminator, where the checkpoint has them); its EMA where it keeps one,
        else the EMA starts at the weights."""
        state, where = load_run(path, self.kind, self.what, "cpu")
        old = (state.get("config") or {}).get("model")
        new = self.config.to_dict()["model"]
        if old != new:
            key = next((k for k in new if (old or {}).get(k) != new[k]), "?")
            raise CheckpointError(f"{where}: cannot initialise from it: its model differs from the config's "
                                  f"(model.{key}: {(old or {}).get(key)!r} in the checkpoint, {new.get(key)!r} in the "
                                  f"config)")
        for name, module in self.modules.items():
            if state.get(module_key(name)) is not None:
                module.load_state_dict(state[module_key(name)])
            elif name == "model":
                raise CheckpointError(f"{where}: the checkpoint holds no model weights")
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                update_ema(self.ema, self.modules["model"], 0.0)
        log(f"initialised from {where} (step {state.get('step')})")

    def setup(self):
        for helper in (self.lpips, self.ema):
            if helper is not None:
                helper.to(self.accelerator.device)


def train_video_task(task: VideoTask, cfg, resume=None, progress: bool = True, config_text: str | None = None,
                     on_finish=None, on_gradients=None, loop_config=None) -> dict:
    """:func:`coordtok.loop.fit` for a :class:`VideoTask`: validation every ``train.val_every``
    steps when the config has ``val_data``; ``loop_config`` replaces ``cfg.train`` for the loop."""
    t = cfg.train
    result = fit(task, loop_config or t, resume=resume, progress=progress, num_workers=cfg.data.num_workers,
                 source=cfg.source, config_text=config_text,
                 periodic_every=t.val_every if cfg.val_data is not None else None,
                 on_finish=on_finish, on_gradients=on_gradients)
    result.setdefault("val_psnr", float("nan"))
    return result


class TokenizerTask(VideoTask):
    """CoordTok stage 1 or 2 as a :class:`coordtok.loop.Task`."""

    kind = "coordtok"

    def __init__(self, cfg: TokenizerRunConfig):
        t = cfg.train
        super().__init__(cfg, t.lpips_weight, t.lpips_vgg_path)
        self.modules = {"model": CoordTok(cfg.model)}
        self.per_clip = t.num_coords if t.stage == 1 else t.num_frames_stage2

    def init_from(self, path: str, log) -> None:
        m = self.config.model  # a reference file's heads and clip shape are the config's
        init, _, info = load_tokenizer(path, with_info=True, enc_heads=m.enc_heads, dec_heads=m.dec_heads,
                                       frames=m.frames, size=m.size)
        if init.config != self.config.model:
            raise_mismatch(path, init.config, self.config.model)
        self.modules["model"].load_state_dict(init.state_dict())
        log(f"initialised from {path}" + (f" ({info})" if info else ""))

    def loss(self, phase, batch, ctx: StepContext):
        core = self.modules["model"]
        video, num_frames = batch["video"], batch["num_frames"]
        seeds = ctx.item_seeds(video.shape[0], SeedTag.COORDS)
        coords = sample_targets(core, num_frames.cpu(), self.config.train.stage, self.per_clip, seeds)
        t = self.config.train
        return tokenizer_loss(self.wrapped["model"], core, video, num_frames, coords.to(ctx.device),
                              self.per_clip if t.stage == 2 else None, t.l2_weight, t.lpips_weight, self.lpips)

    def summarize(self, metrics):
        return {**metrics, "psnr": psnr_from_mse(metrics["mse"])}

    def periodic(self, step, log):
        if self.val_set is None:
            return {}
        psnr = validate(self.modules["model"], self.val_set, self.config.train.val_clips, self.accelerator.device)
        log(f"step {step}: validation PSNR {psnr:.2f} dB on {min(self.config.train.val_clips, len(self.val_set))} clips")
        return {"val_psnr": psnr}

    def check_resume(self, state, where):
        from .config import model_config_from_checkpoint

        old = model_config_from_checkpoint(state["config"]["model"])
        if old != self.config.model:
            raise_mismatch(where, old, self.config.model, resuming=True)


def raise_mismatch(where, old, new, resuming: bool = False) -> None:
    """A one-line error naming the first model key where a checkpoint and the config differ."""
    from .checkpoint import CheckpointError
    from .config import to_dict

    a, b = to_dict(old), to_dict(new)
    key = next(k for k in b if a.get(k) != b[k])
    action = "cannot resume" if resuming else "cannot initialise from it"
    raise CheckpointError(f"{where}: {action}: its model differs from the config's (model.{key}: {a.get(key)!r} "
                          f"in the checkpoint, {b[key]!r} in the config); use the checkpoint's model settings")


def train(cfg: TokenizerRunConfig, resume: bool | str | Path | None = None, progress: bool = True,
          config_text: str | None = None, on_finish=None, on_gradients=None) -> dict:
    """Train a tokenizer; returns ``{"step", "loss", "mse", "psnr", "val_psnr", "run_dir", "checkpoint"}``.

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    return train_video_task(TokenizerTask(cfg), cfg, resume, progress, config_text, on_finish, on_gradients)
