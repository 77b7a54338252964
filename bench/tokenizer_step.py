"""Stage-1 training step of CoordTok-S at 128x128x128, batch 1, N = 1024 coordinates.

Prints time per step, FLOPs (torch.utils.flop_counter), achieved FLOP/s as a fraction of this
machine's own fp32 matmul rate (measured in the same run) and peak RSS (each variant in a fresh
process), for fp32 and bf16 autocast.

    python -m bench.tokenizer_step [--config configs/tokenizer/small.yaml] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import machine, matmul_rate, peak_rss_gb, run_child
from coordtok import CoordTok
from coordtok.config import TrainConfig
from coordtok.loop import build_optimizer
from coordtok.model import random_coords
from coordtok.train import tokenizer_loss
from eval.flops import attention_flops, counter


def child(config: str, precision: str, steps: int, num_coords: int) -> dict:
    torch.manual_seed(0)
    model = CoordTok.from_config(config).train()
    opt = build_optimizer(model, TrainConfig())
    c = model.config
    video = torch.rand(1, 3, c.frames, c.size, c.size) * 2 - 1
    g = torch.Generator().manual_seed(0)

    def step():
        coords = random_coords(torch.tensor([model.patch_grid[0]]), num_coords, model.patch_grid, g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = tokenizer_loss(model, model, video, None, coords)["loss"]  # the trainer's stage-1 step
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with counter() as fc:
        step()
    step()  # warm-up
    times = []
    for _ in range(steps):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    times.sort()
    attn = attention_flops(fc)
    return {
        "precision": precision,
        "flops": fc.get_total_flops() - attn,
        "attention_flops": attn,
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tokenizer/small.yaml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--num-coords", type=int, default=1024)
    p.add_argument("--child", action="store_true")
    p.add_argument("--precision", default="fp32")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.config, a.precision, a.steps, a.num_coords)))
        return
    print(f"machine: {machine()}")
    rate = matmul_rate()
    print(f"fp32 matmul rate (2048^3 GEMM): {rate / 1e9:.1f} GFLOP/s")
    print(f"stage-1 step, {a.config}, batch 1, N={a.num_coords}:")
    for precision in ("fp32", "bf16"):
        r = run_child(
            "bench.tokenizer_step",
            "--config",
            a.config,
            "--steps",
            str(a.steps),
            "--num-coords",
            str(a.num_coords),
            "--precision",
            precision,
        )
        achieved = r["flops"] / r["median_s"]
        total = (r["flops"] + r["attention_flops"]) / r["median_s"]
        print(f"  {precision}: {r['median_s']:.2f} s/step (min {r['min_s']:.2f}), peak RSS {r['peak_rss_gb']:.2f} GB")
        print(
            f"      {r['flops'] / 1e9:.1f} GFLOP as torch.utils.flop_counter counts on CPU (no CPU attention), "
            f"{achieved / 1e9:.1f} GFLOP/s = {achieved / rate:.0%} of the fp32 matmul rate"
        )
        print(
            f"      + {r['attention_flops'] / 1e9:.1f} GFLOP attention (flash kernel formulas) -> "
            f"{total / 1e9:.1f} GFLOP/s = {total / rate:.0%} of the fp32 matmul rate"
        )


if __name__ == "__main__":
    main()
