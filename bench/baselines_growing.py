"""ProMAG's growing claim at CPU scale: grow 4x -> 8x vs train 8x from scratch, same data and seeds.

ProMAG (Mahapatra et al. 2025) reports that growing a 4x tokenizer to 8x reaches better
reconstruction than training the 8x model from scratch for the same number of steps, at a lower
cost per step (frozen layers, no discriminator; about 2.2x cheaper at 8x in the paper's setting).
This runs that comparison with the tiny configs on the sample clips:

1. train ``promag-tiny-4x`` for ``--steps-4x`` steps;
2. (a) grow it to ``promag-tiny-8x`` (``train.grow_from``) and train ``--steps-8x`` steps;
   (b) train the same 8x layout from scratch (``grown_levels: 0``) for ``--steps-8x`` steps, with
   the same data order and seed (and ``--scratch-gan`` > 0 adds the paper's discriminator to (b));
3. evaluate both on held-out 17-frame windows of bikes (frames 128..249, never trained on):
   MSE and PSNR of the posterior mean's reconstruction, and the median wall time of a step.

    python -m bench.baselines_growing                       # ~6-10 min on 2 shared cores
    python -m bench.baselines_growing --steps-4x 2000 --steps-8x 1000 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from baselines.checkpoint import load_baseline
from baselines.train import ProMAGTask, load_promag_run_config, psnr_from_mse
from coordtok.config import DataConfig
from coordtok.data import build_dataset
from coordtok.devices import cpu_info, resolve_precision
from coordtok.loop import fit

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "baselines"


def run(config: str, out: Path, steps: int, args, **train) -> tuple[dict, list[float]]:
    """Train one stage; returns the result and the wall time of every step (between consecutive
    generator-phase gradient hooks: data, forward, backward, optimizer, EMA, logging)."""
    over = {
        "train": {
            "max_steps": steps,
            "out_dir": str(out),
            "ckpt_every": steps,
            "log_every": 50,
            "batch_size": args.batch,
            "seed": args.seed,
            "mixed_precision": args.precision,
            "val_every": 10**9,
            **train,
        },
        "val_data": None,
    }
    if args.model_over:
        over["model"] = args.model_over
    cfg = load_promag_run_config(CONFIGS / config, over)
    task = ProMAGTask(cfg)
    model_params = {id(p) for p in task.modules["model"].parameters()}
    marks: list[float] = []

    def mark(optimizer, args, kwargs):  # the model's optimizer step ends each training step
        if any(id(p) in model_params for group in optimizer.param_groups for p in group["params"]):
            marks.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(mark)
    try:
        result = fit(task, progress=False)
    finally:
        handle.remove()
    return result, [b - a for a, b in zip(marks, marks[1:])]


@torch.no_grad()
def held_out(run_dir: Path, windows: int) -> tuple[float, float]:
    """``(MSE, PSNR)`` of the run's posterior-mean reconstructions over ``windows`` evenly spaced
    17-frame windows of bikes' frames 128..249, pixels in [-1, 1] (clamped)."""
    model, _ = load_baseline(run_dir)
    data = build_dataset(
        DataConfig(
            kind="samples",
            names=["bikes"],
            frames=17,
            size=model.cfg.size,
            frame_range=[128, 250],
            clips_per_video=windows,
            min_frames=17,
            num_workers=0,
        ),
        0,
        deterministic=True,
    )
    errors = [F.mse_loss(model.codec(item["video"][None]).clamp(-1, 1), item["video"][None]).item() for item in data]
    mse = sum(errors) / len(errors)
    return mse, psnr_from_mse(mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps-4x", type=int, default=300, help="steps of the 4x parent (default 300)")
    p.add_argument("--steps-8x", type=int, default=300, help="steps of each 8x run (default 300)")
    p.add_argument("--batch", type=int, default=2, help="clips per step (default 2; >= 2 is faster on a CPU)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the tiny convs gain nothing from a second, busy core)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="train.mixed_precision (auto: fp32 unless native bf16)")
    p.add_argument(
        "--scratch-gan",
        type=float,
        default=0.0,
        help="discriminator weight of the from-scratch 8x run (the paper's 4x recipe: 0.1; default 0)",
    )
    p.add_argument("--windows", type=int, default=4, help="held-out 17-frame windows (default 4)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    args.model_over = None
    torch.set_num_threads(args.threads)

    info = cpu_info()
    precision = resolve_precision(args.precision, "cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"CPU: {info['model']} ({', '.join(info['instruction_sets']) or 'no listed SIMD'}), "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, precision {precision}"
    )
    print(
        f"steps: 4x {args.steps_4x}, 8x {args.steps_8x} each; batch {args.batch}; seed {args.seed}; data: "
        f"bikes + bigbuckbunny frames 0..127 (17 x 64 x 64 windows)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        _, t4 = run("promag-tiny-4x.yaml", root / "4x", args.steps_4x, args)
        grown, tg = run("promag-tiny-8x.yaml", root / "8x-grown", args.steps_8x, args, grow_from=str(root / "4x"))
        args.model_over = {"grown_levels": 0}
        scratch, ts = run(
            "promag-tiny-8x.yaml", root / "8x-scratch", args.steps_8x, args, grow_from=None, gan_weight=args.scratch_gan
        )
        rows = [
            ("4x parent", root / "4x", t4),
            ("8x grown (a)", root / "8x-grown", tg),
            ("8x scratch (b)", root / "8x-scratch", ts),
        ]
        print(f"\nheld-out: {args.windows} windows of bikes frames 128..249, posterior mean, PSNR on [-1, 1]")
        print(f"{'run':16s} {'MSE':>9s} {'PSNR dB':>8s} {'s/step (median)':>16s} {'trainable':>10s}")
        figures = {}
        for name, run_dir, times in rows:
            mse, psnr = held_out(run_dir, args.windows)
            model, _ = load_baseline(run_dir)
            trainable = sum(p.numel() for p in model.parameters())
            if "grown" in name:
                from baselines.train import inherited_names

                frozen = inherited_names(model.cfg)
                trainable = sum(p.numel() for n, p in model.named_parameters() if n not in frozen)
            step_s = statistics.median(times[2:] or times)
            figures[name] = (mse, psnr, step_s)
            print(f"{name:16s} {mse:9.5f} {psnr:8.2f} {step_s:16.3f} {trainable:10,d}")
        (_, pg, sg), (_, ps, ss) = figures["8x grown (a)"], figures["8x scratch (b)"]
        print(
            f"\ngrown - scratch: {pg - ps:+.2f} dB; step time scratch / grown: {ss / sg:.2f}x "
            f"(paper: grown better, about 2.2x cheaper at 8x)"
        )


if __name__ == "__main__":
    main()
