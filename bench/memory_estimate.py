"""Per-GPU memory of every paper configuration's training step, with and without activation
checkpointing, and the ``grad_accum`` each needs to fit a GPU; optionally the measured saving on
this machine's CPU.

    python -m bench.memory_estimate                 # the table (meta device: nothing allocated)
    python -m bench.memory_estimate --measure       # + CoordTok-S 128 frames, batch 1, on this CPU

Estimates come from :func:`eval.profile.step_memory_estimate` (fp32 weights, gradients and AdamW
moments + the input batch + every tensor autograd saves, with attention saving what
memory-efficient kernels save). The per-GPU batch is the paper's global batch over ``--gpus`` GPUs
(8 by default): CoordTok 256 -> 32, CoordTok-SiT 64 -> 8, MAGVIT-v2 256 -> 32, ProMAG and REGEN
32 -> 4. Every saved activation scales with the batch, so the bytes of a micro-batch ``m`` are
``fixed + m * per_clip`` exactly; ``grad_accum`` is the smallest divisor ``g`` of the per-GPU
batch whose micro-batch ``batch / g`` fits ``--budget-gb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import yaml

from coordtok.config import load_model_config
from eval.profile import step_memory, step_memory_estimate

# (label, family, config, step mode, decoded coordinates, frames of the clip, global batch)
PAPER = [
    *[
        (
            f"CoordTok-{s} {tok} tokens, stage {st}",
            "coordtok",
            f"configs/tokenizer/{name}{suffix}.yaml",
            "coordtok" if st == 1 else "stage2",
            1024 if st == 1 else 16 * 256,
            128,
            256,
        )
        for s, name in (("S", "small"), ("B", "base"), ("L", "large"))
        for tok, suffix in (("1280", ""), ("3072", "-3072"))
        for st in (1, 2)
    ],
    ("CoordTok-SiT-L/2, 1280-token triplane", "sit", "configs/sit/L2-1280.yaml", "sit", 0, 128, 64),
    ("CoordTok-SiT-L/2, 3072-token triplane", "sit", "configs/sit/L2-3072.yaml", "sit", 0, 128, 64),
    ("MAGVIT-v2 (17 x 128^2 chunks)", "magvit2", "configs/baselines/magvit2.yaml", "magvit2", 0, 16, 256),
    ("ProMAG 4x (17 x 256^2 chunks)", "promag", "configs/baselines/promag-4x.yaml", "promag", 0, 16, 32),
    ("ProMAG 8x (17 x 256^2 chunks)", "promag", "configs/baselines/promag-8x.yaml", "promag", 0, 16, 32),
    ("ProMAG 16x (17 x 256^2 chunks)", "promag", "configs/baselines/promag-16x.yaml", "promag", 0, 16, 32),
    ("REGEN (17 x 256^2 chunks)", "regen", "configs/baselines/regen.yaml", "regen", 0, 17, 32),
]


def _model_cfg(family: str, path: str) -> dict:
    if family == "coordtok":
        return dataclasses.asdict(load_model_config(path))
    return yaml.safe_load(open(path))["model"]


def grad_accum_needed(fixed: float, per_clip: float, batch: int, budget: float) -> int | None:
    """Smallest divisor ``g`` of ``batch`` with ``fixed + (batch / g) per_clip <= budget`` (None: none)."""
    for g in range(1, batch + 1):
        if batch % g == 0 and fixed + batch // g * per_clip <= budget:
            return g
    return None


def paper_table(gpus: int, budget_gb: float, progress=print) -> list[str]:
    budget = budget_gb * 1e9
    lines = [
        f"| model and step | per-GPU batch | parameters | estimated GB | fits {budget_gb:g} GB | grad_accum "
        f"| checkpointed GB | fits | grad_accum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, family, path, mode, coords, frames, global_batch in PAPER:
        batch = global_batch // gpus
        cfg = _model_cfg(family, path)
        one = step_memory_estimate(family, cfg, frames, mode, coords, 1)
        full = step_memory_estimate(family, cfg, frames, mode, coords, batch)
        cells = []
        for key in ("total_bytes", "total_bytes_checkpointed"):
            per_clip = (full[key] - one[key]) / max(batch - 1, 1)
            g = grad_accum_needed(one[key] - per_clip, per_clip, batch, budget)
            cells += [
                f"{full[key] / 1e9:.1f}",
                "yes" if full[key] <= budget else "no",
                str(g) if g is not None else f"none (batch 1: {one[key] / 1e9:.1f} GB)",
            ]
        lines.append(
            f"| {label} ({path}) | {batch} ({global_batch} / {gpus}) | {full['trainable_params'] / 1e6:.1f} M | "
            + " | ".join(cells)
            + " |"
        )
        progress(lines[-1])
    return lines


def measure_cpu(steady_state: bool = True) -> list[str]:
    """CoordTok-S, 128 x 128 x 128 clip, 1024 coordinates, batch 1: peak RSS of a step with and
    without activation checkpointing (fresh processes), beside the estimate."""
    cfg = dataclasses.asdict(load_model_config("configs/tokenizer/small.yaml"))
    est = step_memory_estimate("coordtok", cfg, 128, "coordtok", 1024, 1)
    lines = ["| | measured peak (VmHWM growth) | time to measure | estimated |", "|---|---|---|---|"]
    peaks = {}
    for ckpt, key in ((False, "total_bytes"), (True, "total_bytes_checkpointed")):
        tic = time.time()
        peaks[ckpt] = step_memory(
            cfg, "coordtok", 1024, 1, "cpu", frames=128, activation_checkpointing=ckpt, steady_state=steady_state
        )["peak_bytes"]
        lines.append(
            f"| {'with' if ckpt else 'without'} activation checkpointing | {peaks[ckpt] / 1e9:.3f} GB | "
            f"{time.time() - tic:.0f} s | {est[key] / 1e9:.3f} GB |"
        )
    lines.append(
        f"| saving | {(peaks[False] - peaks[True]) / 1e9:.3f} GB | | "
        f"{(est['activation_bytes'] - est['checkpointed_activation_bytes']) / 1e9:.3f} GB |"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8, help="GPUs the paper's global batch is split over")
    ap.add_argument("--budget-gb", type=float, default=80.0, help="memory of one GPU (1e9 bytes)")
    ap.add_argument("--measure", action="store_true", help="also measure CoordTok-S's saving on this CPU")
    ap.add_argument("--no-table", action="store_true", help="skip the paper table")
    args = ap.parse_args()
    from bench.common import machine

    print(f"machine: {machine()}")
    if not args.no_table:
        print("\n".join(paper_table(args.gpus, args.budget_gb, progress=lambda *_: None)))
    if args.measure:
        print("\n".join(measure_cpu()))


if __name__ == "__main__":
    main()
