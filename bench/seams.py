"""Seams of long-video reconstruction: every tokenizer the demo trained, on 128-frame windows of the
sample clips, its chunk-boundary jump against its within-chunk jump (``eval/seams.py``).

The claims measured: ProMAG's blending of overlapping chunks and REGEN's latent extension bring
the jump at chunk boundaries down to the within-chunk level; CoordTok has no boundaries. Uses the
runs of a finished ``make demo`` (``demo_out/runs``, or ``--runs``); REGEN is decoded with one and
with several sampling steps (latent extension guides the overlapped frame at every step, so a
one-step decode gives it one step to act).

    python -m bench.seams [--runs demo_out/runs] [--num-clips 8] [--regen-steps 1,8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import machine
from coordtok.config import DataConfig
from eval.recon import eval_recon, markdown_table


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="demo_out/runs")
    p.add_argument("--num-clips", type=int, default=8)
    p.add_argument("--regen-steps", default="1,8")
    a = p.parse_args()
    runs = Path(a.runs)
    print(f"machine: {machine()}")
    data = DataConfig(kind="samples", names=["bikes", "bigbuckbunny"], frames=128, size=64, num_workers=0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(num_clips=a.num_clips, seed=0, detector=None, write_videos=0, progress=False)
        found = eval_recon(
            [runs / "tokenizer-stage2", runs / "magvit2", runs / "promag-8x"], data, Path(tmp) / "a", **common
        )
        results += found["results"]
        for steps in (int(s) for s in a.regen_steps.split(",")):
            found = eval_recon(runs / "regen", data, Path(tmp) / f"regen{steps}", steps=steps, **common)
            results += found["results"]
    print(markdown_table(results, 128))
    print("| tokenizer | seam jump at boundaries minus within chunks |")
    print("|---|---|")
    for r in results:
        print(f"| {r['tokenizer']} | {r['seam_boundary'] - r['seam_within']:+.4f} |")


if __name__ == "__main__":
    main()
