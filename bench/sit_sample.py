"""CoordTok-SiT on this CPU: SiT-L/2 (1280-token triplane) forward time at batch 1 and 8, and the
wall time of one unconditional 250-step Euler-Maruyama sample decoded to a 128-frame clip by
CoordTok-S (random weights: the cost does not depend on them), with its network evaluations.

The reference SiT sampler evaluates the network twice per Euler-Maruyama step (once for the
velocity, once more for the score); ours derives the score from the same velocity, so one
evaluation per step. The count below is taken by wrapping the network.

    python -m bench.sit_sample [--steps 250] [--batches 1,8] [--skip-sample]

Two more measurements (``python -m bench.sit_sample --tiny`` / ``--flops``):

* ``--tiny``: the tiny configs' time per 128-frame video (batch 1: sampling + decoding) for every
  sampler in :data:`sit.samplers.SAMPLERS` at the step counts given (the network calls counted).
  The weights are random with the zero-initialised output layers drawn small, so the velocity is
  not zero: the time of a fixed-step sampler does not depend on the weights; an adaptive one's
  number of calls does, and is the one figure here that a trained model would change.
* ``--flops``: exact FLOPs (``torch.utils.flop_counter`` on the meta device, :mod:`eval.flops`) of
  one 128-frame video: one SiT-L/2 forward at batch 1 times the sampler's network calls, plus
  CoordTok-L decoding all coordinates of the clip at once.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import machine, peak_rss_gb
from coordtok import CoordTok, Triplane
from sit.models import TriplaneSiT
from sit.samplers import euler_maruyama


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
    p.add_argument("--tiny", action="store_true", help="time per video of every sampler, tiny configs, then stop")
    p.add_argument("--tiny-steps", default="250,50,10", help="--tiny: step counts for the fixed-step samplers")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (--tiny: 1 by default; tiny tensors gain nothing from more)",
    )
    p.add_argument("--flops", action="store_true", help="exact FLOPs per 128-frame video, then stop")
    p.add_argument("--large-tokenizer-config", default="configs/tokenizer/large.yaml")
    a = p.parse_args()
    if a.threads or a.tiny:
        torch.set_num_threads(a.threads or 1)
    if a.tiny:
        return tiny_samplers([int(x) for x in a.tiny_steps.split(",")])
    if a.flops:
        return video_flops(a.sit_config, a.large_tokenizer_config, a.steps)
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
    print(
        f"  one {a.steps}-step Euler-Maruyama sample: {sampled:.0f} s sampling + {total - sampled:.0f} s decoding "
        f"(all 32768 coordinates at once) = {total:.0f} s; {calls} network evaluations "
        f"(the reference sampler: {2 * a.steps}, two per step); peak RSS {peak_rss_gb():.2f} GB"
    )


def tiny_samplers(
    step_counts: list[int], tiny_sit: str = "configs/sit/tiny.yaml", tiny_tokenizer: str = "configs/tokenizer/tiny.yaml"
) -> None:
    """Per sampler and step count: seconds of sampling and decoding per 128-frame video (batch 1,
    median of 3 runs after a warm-up), and the network calls."""
    from sit.samplers import SAMPLERS

    print(f"machine: {machine()}; threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    sit = TriplaneSiT.from_config(tiny_sit).eval()
    with torch.no_grad():  # the zero-initialised output layers, drawn small: a non-zero velocity
        for name, param in sit.named_parameters():
            if name.startswith("final_layer") and not param.any():
                param.normal_(0, 0.02)
    tok = CoordTok.from_config(tiny_tokenizer).eval()
    noise = torch.randn(1, latent_tokens(sit), sit.config.channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = sit(noise, torch.zeros(1))
        decode_times = []
        for _ in range(3):
            tic = time.perf_counter()
            tok.decode_video(Triplane.unflatten(z, tok.config.latent_grid))
            decode_times.append(time.perf_counter() - tic)
    decode = sorted(decode_times)[1]
    print(f"tiny SiT ({tiny_sit}), tiny CoordTok ({tiny_tokenizer}): decoding one 128-frame video {decode:.3f} s")
    print("| sampler | steps | network calls | sampling s | sampling + decoding s per video |")
    print("|---|---|---|---|---|")
    for name, fn in SAMPLERS.items():
        fixed = fn.calls(step_counts[0]) is not None  # an adaptive solver picks its own steps
        for steps in step_counts if fixed else [step_counts[0]]:
            calls = 0

            def velocity(x, t):
                nonlocal calls
                calls += 1
                return sit(x, t)

            times = []
            try:
                for _ in range(3):
                    calls = 0
                    tic = time.perf_counter()
                    fn(velocity, noise, num_steps=steps, generator=torch.Generator().manual_seed(1))
                    times.append(time.perf_counter() - tic)
            except ValueError as e:  # a sampler that does not take this step count
                print(f"| {name} | {steps} | - | {type(e).__name__}: {str(e).splitlines()[0]} | - |")
                continue
            t = sorted(times)[1]
            label = steps if fixed else "adaptive (dopri5)"
            print(f"| {name} | {label} | {calls} | {t:.3f} | {t + decode:.3f} |")


def video_flops(sit_config: str, tokenizer_config: str, steps: int) -> None:
    """Exact FLOPs of one 128-frame video: SiT forward (batch 1) x network calls + CoordTok decoding."""
    from einops import repeat

    from coordtok.model import frame_coords
    from eval.flops import counter

    with torch.device("meta"):
        sit = TriplaneSiT.from_config(sit_config).eval()
        tok = CoordTok.from_config(tokenizer_config).eval()
    x = torch.empty(1, latent_tokens(sit), sit.config.channels, device="meta")
    with torch.no_grad(), counter() as fc:
        sit(x, torch.zeros(1, device="meta"))
    per_call = fc.get_total_flops()
    c = tok.config
    tri = Triplane.unflatten(torch.empty(1, latent_tokens(sit), c.latent_channels, device="meta"), c.latent_grid)
    tp = tok.patch_grid[0]
    coords = frame_coords(repeat(torch.arange(tp, device="meta"), "f -> b f", b=1), tok.patch_grid)
    with torch.no_grad(), counter() as fc:
        tok.decode(tri, coords, None)
    decode = fc.get_total_flops()
    sde_calls = steps  # 249 Euler-Maruyama steps + the mean step (sit.samplers.euler_maruyama)
    print(f"SiT ({sit_config}), batch 1, one forward: {per_call} FLOPs")
    print(
        f"CoordTok ({tokenizer_config}) decoding one {c.frames}-frame {c.size}x{c.size} clip "
        f"({coords.shape[1]} coordinates at once): {decode} FLOPs"
    )
    print(
        f"one video, {steps}-step Euler-Maruyama ({sde_calls} calls): {sde_calls * per_call + decode} FLOPs "
        f"(the reference sampler, {2 * steps} calls: {2 * steps * per_call + decode})"
    )


if __name__ == "__main__":
    main()
