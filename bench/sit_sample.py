"""CoordTok-SiT on this CPU: SiT-L/2 (1280-token triplane) forward time at batch 1 and 8, and the
wall time of one unconditional 250-step Euler-Maruyama sample decoded to a 128-frame clip by
CoordTok-S (random weights: the cost does not depend on them), with its network evaluations.

The reference SiT sampler evaluates the network twice per Euler-Maruyama step (once for the
velocity, once more for the score); ours derives the score from the same velocity, so one
evaluation per step. The count below is taken by wrapping the network.

    python bench/sit_sample.py [--steps 250] [--batches 1,8] [--skip-sample]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine, peak_rss_gb  # noqa: E402
from coordtok import CoordTok, Triplane  # noqa: E402
from sit.models import TriplaneSiT  # noqa: E402
from sit.samplers import euler_maruyama  # noqa: E402


def latent_tokens(model) -> int:
    tl, hl, wl = model.config.grid
    return hl * wl + tl * wl + tl * hl


def time_forward(model, batch: int, repeats: int = 3) -> float:
    c = model.config
    x = torch.randn(batch, latent_tokens(model), c.channels)
    t = torch.rand(batch)
    with torch.no_grad():
        model(x, t)
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            model(x, t)
            times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sit-config", default="configs/sit/L2-1280.yaml")
    p.add_argument("--tokenizer-config", default="configs/tokenizer/small.yaml")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--skip-sample", action="store_true")
    a = p.parse_args()
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    sit = TriplaneSiT.from_config(a.sit_config).eval()
    n_params = sum(p.numel() for p in sit.parameters() if p.requires_grad)
    print(f"SiT ({a.sit_config}): {n_params / 1e6:.1f} M parameters, {latent_tokens(sit)} latent positions")
    for b in (int(x) for x in a.batches.split(",")):
        s = time_forward(sit, b)
        print(f"  forward, batch {b}: {s:.2f} s ({s / b:.2f} s per sample)")
    if a.skip_sample:
        return
    tok = CoordTok.from_config(a.tokenizer_config).eval()
    calls = 0

    def velocity(x, t):
        nonlocal calls
        calls += 1
        return sit(x, t)

    noise = torch.randn(1, latent_tokens(sit), sit.config.channels, generator=torch.Generator().manual_seed(0))
    tic = time.perf_counter()
    z = euler_maruyama(velocity, noise, num_steps=a.steps, generator=torch.Generator().manual_seed(1))
    sampled = time.perf_counter() - tic
    video = tok.decode_video(Triplane.unflatten(z, tok.config.latent_grid))
    total = time.perf_counter() - tic
    assert video.shape == (1, 3, tok.config.frames, tok.config.size, tok.config.size)
    print(f"  one {a.steps}-step Euler-Maruyama sample: {sampled:.0f} s sampling + {total - sampled:.0f} s decoding "
          f"(all 32768 coordinates at once) = {total:.0f} s; {calls} network evaluations "
          f"(the reference sampler: {2 * a.steps}, two per step); peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
