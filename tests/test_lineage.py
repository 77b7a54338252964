"""Pruning and resuming follow the run's lineage after a branch.

The issue's case scaled down: a run with checkpoints at steps 3 and 6 (the issue's 400 and 500)
is resumed from 3 with a checkpoint every step. Before, pruning kept this run id's newest files
(6, the abandoned branch, and 5) and deleted 3 and 4; a later plain --resume then continued from
6 without a word."""

import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.config import load_tokenizer_config
from coordtok.train import train


def run_cfg(out, steps, every, keep=2):
    return load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(out),
                "batch_size": 2,
                "num_coords": 256,
                "log_every": 1,
                "ckpt_every": every,
                "val_every": 10**9,
                "keep_checkpoints": keep,
                "mixed_precision": "no",
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )


def names(folder):
    return sorted(p.name for p in ckpt.list_checkpoints(folder))


@pytest.mark.slow
def test_a_branch_prunes_its_own_lineage_and_names_the_abandoned_one(tmp_path, capsys):
    w = tmp_path / "W"
    train(run_cfg(w, 6, 3), progress=False)
    assert names(w) == ["ckpt-0000003.pt", "ckpt-0000006.pt"]
    abandoned = (w / "ckpt-0000006.pt").read_bytes()
    capsys.readouterr()

    # the user goes back to step 3 (the issue's --resume W/ckpt-0000400.pt ... ckpt_every=1)
    train(run_cfg(w, 5, 1), resume=w / "ckpt-0000003.pt", progress=False)
    err = capsys.readouterr().err
    assert "ckpt-0000006.pt is not on the branch this run continues" in err and "kept" in err
    # pruning followed the branch (keep 2: 4 and 5; 3 is older on it); the abandoned 6 is kept
    assert names(w) == ["ckpt-0000004.pt", "ckpt-0000005.pt", "ckpt-0000006.pt"]
    assert (w / "ckpt-0000006.pt").read_bytes() == abandoned
    five = ckpt.load(w / "ckpt-0000005.pt")
    assert five["parent"]["name"] == "ckpt-0000004.pt"
    assert ckpt.load(w / "ckpt-0000004.pt")["parent"]["name"] == "ckpt-0000003.pt"

    # a plain --resume continues the branch last written (5), not the abandoned higher step, and
    # says so; its step-6 checkpoint moves the abandoned one aside instead of replacing it
    state, path = ckpt.load_latest(w)
    assert path.name == "ckpt-0000005.pt"
    result = train(run_cfg(w, 6, 1), resume=True, progress=False)
    err = capsys.readouterr().err
    assert "resuming from" in err and "ckpt-0000005.pt (step 5)" in err
    assert "ckpt-0000006.pt is not on the branch this run continues" in err
    assert "ckpt-0000006.pt (another branch) renamed to ckpt-0000006.abandoned-1.pt" in err
    assert result["step"] == 6
    assert (w / "ckpt-0000006.abandoned-1.pt").read_bytes() == abandoned
    new = ckpt.load(w / "ckpt-0000006.pt")
    assert new["parent"]["name"] == "ckpt-0000005.pt"
    # (same config and seed: the branch retraced the same steps bit for bit, as a resume does)
    old = torch.load(w / "ckpt-0000006.abandoned-1.pt", weights_only=True)
    assert old["serial"] < new["serial"] and all(torch.equal(old["model"][k], new["model"][k]) for k in old["model"])
    assert names(w) == ["ckpt-0000005.pt", "ckpt-0000006.pt"]
