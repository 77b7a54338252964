"""One rank's non-finite loss under two gloo processes.

Before the fix the rank whose loss was NaN skipped its backward while the other entered DDP's
gradient all-reduce (and, for MAGVIT-v2, the LFQ entropy's backward all-reduce): gloo aborted
with "Received data size doesn't match expected size" (NCCL hangs). Now every rank agrees on one
flag per rank before any backward. Checked per model: the run finishes, both ranks skip the step
and say so, both hold bit-identical weights, and those are bit-identical to a run whose data
stream simply lacks that step's batch (same operations on the same numbers in the same order,
so exact equality is the right test, not a tolerance)."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import accelerate_launch
from sit_common import tiny_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "mp_nonfinite.py")
BAD_STEP = 1  # 0-based: the second step


def launch_two(args, timeout=400):
    """``accelerate launch`` two CPU (gloo) processes; the whole process group is killed on a
    timeout (a collective mismatch can hang), so no worker outlives the test."""
    cmd = [
        *accelerate_launch(),
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the two-process run hung:\n{output[-3000:]}")
    return proc.returncode, output


@pytest.mark.parametrize(
    "kind,phase", [("tokenizer", "model"), ("sit", "model"), ("magvit2", "model"), ("magvit2", "disc")]
)
@pytest.mark.slow
def test_one_rank_nan_is_skipped_by_every_rank(kind, phase, tmp_path):
    latents = [str(tiny_cache(str(tmp_path / "cache")))] if kind == "sit" else []
    code, output = launch_two([SCRIPT, kind, str(tmp_path / "out"), "1", str(BAD_STEP), phase, *latents])
    assert code == 0, output[-4000:]
    poisoned, reference = tmp_path / "out" / "poisoned", tmp_path / "out" / "reference"
    for r in (0, 1):
        said = (poisoned / f"warnings{r}.txt").read_text()
        assert (
            f"step {BAD_STEP + 1}: non-finite {phase} loss on rank 1 of 2, update skipped on every rank "
            f"(this is rank {r}) (1 in a row)" in said
        ), said
        assert said.count("non-finite") == 1, said
        assert (reference / f"warnings{r}.txt").read_text().count("non-finite") == (phase == "disc"), (
            "the reference run skipped only what it should"
        )
    p0, p1, ref = (torch.load(p) for p in (poisoned / "rank0.pt", poisoned / "rank1.pt", reference / "rank0.pt"))
    assert p0.keys() == ref.keys() and (kind != "magvit2" or any(k.startswith("disc.") for k in ref))
    for name in ref:
        assert torch.equal(p0[name], p1[name]), f"ranks disagree on {name}"
        assert torch.equal(p0[name], ref[name]), f"{name} differs from the run without the bad batch"
