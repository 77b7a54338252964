"""Resume on several nodes: rank 0 decides the checkpoint file and step and
every rank loads that one, or the run stops with one line naming the rank and the file it lacks.

Two gloo processes, each with its own run folder (``node0``, ``node1``): what two nodes without
a shared ``out_dir`` see. Before, each rank took its own newest checkpoint: the ranks started at
different steps and the run diverged (or hung in a collective)."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_rank_agreement import launch_two

from coordtok import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mp_resume import config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "mp_resume.py")


def _prepare(tmp_path, node0_steps, node1_steps):
    """A 3-step run with a checkpoint per step (one process, the same global batch of 4), copied
    to ``node0`` and ``node1`` with only the listed checkpoints."""
    from coordtok.train import train

    train(config(tmp_path / "first", 3), progress=False)
    for node, steps in (("node0", node0_steps), ("node1", node1_steps)):
        (tmp_path / node).mkdir()
        for s in steps:
            shutil.copy2(tmp_path / "first" / f"ckpt-{s:07d}.pt", tmp_path / node)


@pytest.mark.slow
def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path):
    """node1 also holds a newer checkpoint (step 3): rank 1 still continues from rank 0's step 2,
    so both ranks end with the same weights, and every rank's RNG state is in the checkpoint."""
    _prepare(tmp_path, [1, 2], [1, 2, 3])
    code, output = launch_two([SCRIPT, str(tmp_path), "4"])
    assert code == 0, output[-4000:]
    assert "resuming from" in output and "ckpt-0000002.pt (step 2)" in output, output[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the ranks continued from different checkpoints"
    state = ckpt.load(tmp_path / "node0" / "ckpt-0000004.pt")
    assert len(state["rng_ranks"]) == 2 and torch.equal(state["rng_ranks"][0]["torch"], state["rng"]["torch"])


@pytest.mark.slow
def test_a_rank_without_the_chosen_file_stops_the_run_in_one_line(tmp_path):
    _prepare(tmp_path, [1, 2], [1])
    code, output = launch_two([SCRIPT, str(tmp_path), "4"])
    assert code != 0
    errors = sorted({line for line in output.splitlines() if line.startswith("error: ")})
    missing = tmp_path / "node1" / "ckpt-0000002.pt"
    assert errors == [
        f"error: rank 1: {missing}: checkpoint not found, but rank 0 resumes from ckpt-0000002.pt "
        f"(step 2); every process must read the same checkpoint (a train.out_dir shared by all "
        f"nodes, or that file copied to each)"
    ], output[-3000:]
    assert not (tmp_path / "node0" / "ckpt-0000003.pt").exists(), "nothing may be trained"
