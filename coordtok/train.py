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

import abc
import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .checkpoint import CheckpointError, check_same_model, load_run, load_tokenizer, module_key
from .config import TokenizerRunConfig, to_dict
from .ema import update_ema
from .loop import EpochIndexed, StepContext, Task, fit
from .model import CoordTok, frame_coords, frames_from_patches, gather_patches, random_coords, random_frames
from .seeds import SeedTag


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] values (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def sample_targets(model: CoordTok, num_frames: torch.Tensor, stage: int, n: int, seeds: list[int]) -> torch.Tensor:
    """Coordinates ``(B, N, 3)`` for one micro-batch: ``n`` random patches per clip (stage 1) or
    all patches of ``n`` random frames (stage 2), drawn only from each clip's valid frames, from
    one generator per clip seeded by ``seeds``."""
    valid_pf = model.valid_patch_frames(num_frames, len(seeds), "cpu")
    coords = []
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        if stage == 1:
            coords.append(random_coords(valid_pf[b : b + 1], n, model.patch_grid, g))
        else:
            coords.append(frame_coords(random_frames(valid_pf[b : b + 1], n, g), model.patch_grid))
    return torch.cat(coords)


def tokenizer_loss(
    model,
    core: CoordTok,
    video: torch.Tensor,
    num_frames: torch.Tensor | None,
    coords: torch.Tensor,
    frames_per_clip: int | None = None,
    l2_weight: float = 1.0,
    lpips_weight: float = 0.0,
    lpips=None,
) -> dict:
    """Mean L2 over clips, coordinates and values (+ LPIPS over the decoded frames in stage 2).

    ``model`` is what to call (possibly DDP-wrapped), ``core`` the bare :class:`CoordTok`. The
    defaults are the stage-1 step (L2 only); the profile and the benchmarks time this same step.
    """
    pred = model(video, coords, num_frames).float()
    target = gather_patches(video, coords, core.patch_shape).float()
    mse = F.mse_loss(pred, target)
    out = {"mse": mse, "loss": l2_weight * mse}
    if lpips is not None and lpips_weight > 0:
        if frames_per_clip is None:
            raise ValueError("LPIPS needs whole frames (stage 2)")
        as_frames = lambda p: rearrange(
            frames_from_patches(p, frames_per_clip, core.patch_grid), "b c t h w -> (b t) c h w"
        )
        lp = lpips(as_frames(pred), as_frames(target)).mean()
        out["lpips"] = lp
        out["loss"] = out["loss"] + lpips_weight * lp
    return out


@torch.no_grad()
def validation_psnr(reconstruct, dataset, n: int, device) -> float:
    """Mean PSNR (dB, [-1, 1] pixels, reconstructions clamped) over the first ``n`` clips of
    ``dataset``, each over its valid frames. ``reconstruct(i, video (1, 3, T, H, W), num_frames (1,))``
    returns clip ``i``'s reconstruction; the caller puts its model in eval mode. Every trainer's
    validation metric."""
    scores = []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        video = item["video"][None].to(device)
        nf = int(item.get("num_frames", video.shape[2]))
        rec = reconstruct(i, video, torch.tensor([nf], device=device)).float().clamp(-1, 1)
        scores.append(psnr_from_mse(F.mse_loss(rec[:, :, :nf], video[:, :, :nf].float()).item()))
    return float(np.mean(scores)) if scores else float("nan")


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """``model`` in eval mode for the block, back in the mode it was in afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class VideoTask(Task):
    """A tokenizer trained on video clips (CoordTok, the baselines): its training and validation
    sets (``cfg.data``, ``cfg.val_data``), an optional LPIPS loss network, the seed set before the
    modules are built. Batches are ``{"video", "num_frames"}``."""

    what = "tokenizer"

    def __init__(self, cfg, lpips_weight: float = 0.0, lpips_vgg_path: str | None = None):
        super().__init__()
        from .data import build_dataset  # decord is imported only when data is needed

        self.config, tc = cfg, cfg.train
        # LPIPS first: a missing weight file must stop the run before any heavy work.
        self.lpips = None
        if lpips_weight > 0:
            from .lpips import LPIPS

            self.lpips = LPIPS.from_pretrained(lpips_vgg_path)
        self.train_set = build_dataset(cfg.data, tc.seed, uint8=True)  # floats on the device: collate_to
        self.val_set = build_dataset(cfg.val_data, tc.seed, deterministic=True) if cfg.val_data is not None else None
        self.num_workers = cfg.data.num_workers
        torch.manual_seed(tc.seed)  # the subclass builds its modules next

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
        check_same_model(
            where,
            (state.get("config") or {}).get("model") or {},
            self.config.to_dict()["model"],
            "cannot initialise from it",
            "use the checkpoint's model settings",
        )
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
        if self.lpips is not None:
            self.lpips.to(self.accelerator.device)

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and evaluation use: the EMA where the run keeps one."""
        return self.ema if self.ema is not None else self.modules["model"]

    def periodic(self, step, log):
        if self.val_set is None:
            return {}
        n = min(self.config.train.val_clips, len(self.val_set))
        with evaluating(self.eval_model()) as model:
            psnr = validation_psnr(self.val_codec(model), self.val_set, n, self.accelerator.device)
        log(f"step {step}: validation PSNR {psnr:.2f} dB on {n} clips ({self.val_note(model)})")
        return {"val_psnr": psnr}

    @abc.abstractmethod
    def val_codec(self, model):
        """``(i, video, num_frames) -> reconstruction`` of validation clip ``i`` by ``model``."""

    def val_note(self, model) -> str:
        return "EMA" if model is self.ema else "model"


class TokenizerTask(VideoTask):
    """CoordTok stage 1 or 2 as a :class:`coordtok.loop.Task`."""

    kind = "coordtok"

    def __init__(self, cfg: TokenizerRunConfig):
        tc = cfg.train
        super().__init__(cfg, tc.lpips_weight, tc.lpips_vgg_path)
        self.modules = {"model": CoordTok(cfg.model)}
        self.per_clip = tc.num_coords if tc.stage == 1 else tc.num_frames_stage2

    def init_from(self, path: str, log) -> None:
        m = self.config.model  # a reference file's heads and clip shape are the config's
        init, _, info = load_tokenizer(
            path, with_info=True, enc_heads=m.enc_heads, dec_heads=m.dec_heads, frames=m.frames, size=m.size
        )
        check_same_model(
            path, to_dict(init.config), to_dict(m), "cannot initialise from it", "use the checkpoint's model settings"
        )
        self.modules["model"].load_state_dict(init.state_dict())
        log(f"initialised from {path}" + (f" ({info})" if info else ""))

    def loss(self, phase, batch, ctx: StepContext):
        core, tc = self.modules["model"], self.config.train
        video, num_frames = batch["video"], batch["num_frames"]
        seeds = ctx.item_seeds(video.shape[0], SeedTag.COORDS)
        coords = sample_targets(core, num_frames.cpu(), tc.stage, self.per_clip, seeds)
        return tokenizer_loss(
            self.wrapped["model"],
            core,
            video,
            num_frames,
            coords.to(ctx.device),
            self.per_clip if tc.stage == 2 else None,
            tc.l2_weight,
            tc.lpips_weight,
            self.lpips,
        )

    def summarize(self, metrics):
        return {**metrics, "psnr": psnr_from_mse(metrics["mse"])}

    def val_codec(self, model):
        return lambda i, video, num_frames: model.reconstruct(video, num_frames)

    def check_resume(self, state, where):
        from .config import model_config_from_checkpoint

        old = model_config_from_checkpoint(state["config"]["model"])
        check_same_model(
            where, to_dict(old), to_dict(self.config.model), "cannot resume", "use the checkpoint's model settings"
        )


def train(
    cfg: TokenizerRunConfig,
    resume: bool | str | Path | None = None,
    progress: bool = True,
    config_text: str | None = None,
) -> dict:
    """Train a tokenizer; returns ``{"step", "loss", "mse", "psnr", ("val_psnr"), "run_dir", "checkpoint"}``.

    ``resume``: ``True`` continues from the newest good checkpoint of ``cfg.train.out_dir`` (if
    any), a path continues from that file.
    """
    return fit(TokenizerTask(cfg), resume=resume, progress=progress, config_text=config_text)
