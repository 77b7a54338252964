"""Two CPU processes through `accelerate launch` (gloo) train what one process trains.

What is exact: both ranks hold bit-identical weights (DDP gives every rank the same averaged
gradient). What is equal up to float32 summation order: the gradient of 2 processes x half the
batch against 1 process x the whole batch; after AdamW steps the weights would differ by up to the
learning rate on any CPU whose reduction order differs, so the gradients are compared."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import accelerate_launch, assert_same_gradients
from sit_common import tiny_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "mp_train.py")


def _run(cmd, env=None):
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tokenizer", "sit", "magvit2", "regen"])
def test_two_processes_match_one_with_the_same_global_batch(kind, tmp_path):
    """MAGVIT-v2 runs with its GAN, R1 (a double backward through the DDP-wrapped discriminator),
    LeCAM (statistics all-reduced) and the LFQ entropy (codebook term over the global batch) on;
    REGEN with both of its tasks (batch-wide reconstruction and extension steps)."""
    latents = str(tiny_cache(str(tmp_path / "cache"))) if kind == "sit" else ""
    args = [kind, None, "3", latents] if latents else [kind, None, "3"]
    two, one = tmp_path / "two", tmp_path / "one"
    # --multi_gpu picks torchrun; ACCELERATE_USE_CPU makes the ranks CPU processes over gloo
    # (`--cpu` alone would start a single process).
    _run(
        [
            *accelerate_launch(),
            SCRIPT,
            *[str(two) if a is None else a for a in args],
        ],
        env={"ACCELERATE_USE_CPU": "1"},
    )
    _run([sys.executable, SCRIPT, *[str(one) if a is None else a for a in args]])
    assert sorted(p.name for p in two.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"], "expected two ranks"
    r0, r1, single = (torch.load(p) for p in (two / "rank0.pt", two / "rank1.pt", one / "rank0.pt"))
    for name in single:
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
    phases = ["", "disc_"] if kind == "magvit2" else [""]
    for phase in phases:
        g0, g1, g_single = (torch.load(d / f"{phase}grads{r}.pt") for d, r in ((two, 0), (two, 1), (one, 0)))
        assert any(float(g.abs().max()) > 0 for g in g_single.values()), f"no {phase}gradient"
        assert all(torch.equal(g0[n], g1[n]) for n in g0), f"ranks saw different averaged {phase}gradients"
        assert_same_gradients(g0, g_single)
    if kind in ("tokenizer", "sit"):
        torch.manual_seed(0)  # the trainers build their model right after seeding with train.seed (0)
        if kind == "tokenizer":
            from coordtok import CoordTok

            init = CoordTok.from_config("configs/tokenizer/tiny.yaml").state_dict()
        else:
            from sit.models import TriplaneSiT

            init = TriplaneSiT.from_config("configs/sit/tiny.yaml").state_dict()
        assert any(not torch.equal(init[k], single[k]) for k in single), "training did not move the weights"
