"""REGEN's latent-extension claim at CPU scale: does it bring the chunk-boundary jump down to the
within-chunk level?

Zhang et al. 2025 decode a long video chunk by chunk and close the seams by *latent extension*
(``baselines/regen.py``): each chunk after the first is decoded one frame wider, that frame guided by the
previous chunk's stored sampling states. This trains the tiny REGEN (``configs/baselines/regen-tiny.yaml``)
on the sample clips' frames 0..127 at ``--size`` (default 32 x 32: at 64 x 64 the tiny decoder does
not learn to reconstruct within a CPU budget), then reconstructs ``--num-clips`` random 128-frame
windows of the training frames and the held-out window (bikes 122..249) with and without latent
extension, at each ``--steps`` count, and prints PSNR and the seam jump (``eval/seams.py``): at chunk
boundaries, within chunks, and their difference.

    python -m bench.regen_extension                    # ~12 min on 2 shared cores (6000 steps)
    python -m bench.regen_extension --run RUN_DIR      # evaluate a finished run only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from baselines.regen_train import load_regen_run_config, train_regen
from bench.common import machine
from coordtok.config import DataConfig
from eval.recon import eval_recon

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "baselines" / "regen-tiny.yaml"
# (videos, frame range, clips): the training frames, and bikes' last 128 frames (122..249; 128..249
# never trained on), the only held-out 128-frame window the sample clips have, decoded with 4 noise draws.
WINDOWS = {
    "training frames (bikes, bigbuckbunny 0..127)": (["bikes", "bigbuckbunny"], [0, 128], None),
    "held-out window (bikes 122..249)": (["bikes"], [122, 250], 4),
}


def train(out: Path, args) -> Path:
    size = {"size": args.size}
    cfg = load_regen_run_config(
        CONFIG,
        {
            "model": size,
            "data": size,
            "val_data": None,
            "train": {
                "max_steps": args.train_steps,
                "lr": args.lr,
                "lr_schedule": "cosine",
                "seed": args.seed,
                "out_dir": str(out),
                "ckpt_every": args.train_steps,
                "log_every": 500,
                "val_every": 10**9,
                "mixed_precision": args.precision,
                "extend_prob": args.extend_prob,
            },
        },
    )
    tic = time.perf_counter()
    result = train_regen(cfg, progress=False)
    print(f"trained {args.train_steps} steps in {time.perf_counter() - tic:.0f} s, final loss {result['loss']:.4f}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a finished REGEN run folder or checkpoint (skips training)")
    p.add_argument("--size", type=int, default=32, help="frame side in pixels (default 32)")
    p.add_argument("--train-steps", type=int, default=6000)
    p.add_argument("--lr", type=float, default=3e-3, help="peak lr, cosine decay (default 3e-3)")
    p.add_argument("--precision", default="auto", help="train.mixed_precision (auto: bf16 only with native bf16)")
    p.add_argument(
        "--extend-prob",
        type=float,
        default=0.25,
        help="share of steps that train the extended window (default: the config's 0.25)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-clips", type=int, default=16, help="128-frame windows per frame range (default 16)")
    p.add_argument("--steps", default="1,4", help="decoder sampling steps to compare (default 1,4)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train(Path(tmp) / "regen", args)
        for title, (names, frame_range, clips) in WINDOWS.items():
            clips = clips or args.num_clips
            data = DataConfig(
                kind="samples", names=names, frames=128, size=args.size, frame_range=frame_range, num_workers=0
            )
            results = []
            for steps in (int(s) for s in args.steps.split(",")):
                found = eval_recon(
                    run,
                    data,
                    Path(tmp) / f"eval-{steps}",
                    num_clips=clips,
                    seed=args.seed,
                    detector=None,
                    write_videos=0,
                    progress=False,
                    steps=steps,
                )
                results += found["results"]
            print(f"\n### {title}: {clips} random 128-frame clips at {args.size} x {args.size}\n")
            print("| tokenizer | PSNR | seam jump at boundaries | within chunks | boundaries minus within |")
            print("|---|---|---|---|---|")
            for r in results:
                print(
                    f"| {r['tokenizer']} | {r['psnr']:.2f} dB | {r['seam_boundary']:+.4f} | {r['seam_within']:+.4f} "
                    f"| {r['seam_boundary'] - r['seam_within']:+.4f} |"
                )


if __name__ == "__main__":
    main()
