"""Resuming with another number of GPUs or processes.

There is no GPU here: ``torch.cuda`` is replaced, inside :mod:`coordtok.checkpoint` only, by a fake
with a chosen number of visible devices that behaves as torch's does (``set_rng_state_all``
sets device i for every i and a device that is not there is an IndexError), so the CUDA branch
of saving and restoring RNG states runs for real inside :func:`coordtok.loop.fit`."""

import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.config import load_tokenizer_config
from coordtok.train import train


class FakeCuda:
    """``torch.cuda`` with ``n`` visible devices; device ``i``'s RNG state starts as ``[i, i, ...]``."""

    def __init__(self, n: int, current: int = 0):
        self.n, self.current = n, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(n)}

    def is_available(self):
        return True

    def device_count(self):
        return self.n

    def current_device(self):
        return self.current

    def _index(self, device):
        i = self.current if device in ("cuda", None) else int(device)
        if i >= self.n:
            raise IndexError(f"device {i} of {self.n}")
        return i

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.n)]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, i)


class TorchWithFakeCuda:
    """The torch module as :mod:`coordtok.checkpoint` sees it, with ``cuda`` replaced."""

    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda

    def __getattr__(self, name):
        return getattr(torch, name)


def fake_torch(monkeypatch, cuda: FakeCuda) -> FakeCuda:
    monkeypatch.setattr(ckpt, "torch", TorchWithFakeCuda(cuda))
    return cuda


def run_cfg(tmp_path, steps):
    return load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(tmp_path),
                "batch_size": 2,
                "num_coords": 256,
                "log_every": 1,
                "ckpt_every": 1,
                "val_every": 10**9,
                "keep_checkpoints": 5,
                "mixed_precision": "no",
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )


@pytest.mark.slow
def test_resume_with_fewer_visible_gpus(tmp_path, monkeypatch):
    """Written on a node with 8 visible GPUs (process on GPU 3), resumed where only one is visible:
    the run continues, and the GPU takes the state GPU 3 had (before: IndexError)."""
    writer = fake_torch(monkeypatch, FakeCuda(8, current=3))
    writer.states[3] = torch.arange(16, dtype=torch.uint8) + 100
    train(run_cfg(tmp_path, 1), progress=False)
    reader = fake_torch(monkeypatch, FakeCuda(1))
    train(run_cfg(tmp_path, 2), resume=tmp_path / "ckpt-0000001.pt", progress=False)
    saved = ckpt.load(tmp_path / "ckpt-0000001.pt")["rng"]["cuda"]
    assert torch.equal(saved, torch.arange(16, dtype=torch.uint8) + 100), "the process's own GPU state is saved"
    assert torch.equal(reader.states[0], saved)
    assert ckpt.load(tmp_path / "ckpt-0000002.pt")["step"] == 2


def test_a_checkpoint_of_the_old_format_restores_this_devices_entry(monkeypatch):
    """Older checkpoints hold every visible GPU's state: a process takes its own device's entry,
    and says so when there is none for it (instead of an IndexError)."""
    old = {
        **ckpt.rng_state(),
        "cuda": [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 8, dtype=torch.uint8)],
    }
    cuda = fake_torch(monkeypatch, FakeCuda(1))
    assert ckpt.set_rng_state(old) is None and int(cuda.states[0][0]) == 7
    cuda = fake_torch(monkeypatch, FakeCuda(3, current=2))
    assert ckpt.set_rng_state(old) == "the checkpoint holds CUDA RNG states of 2 GPU(s), none for GPU 2"
    assert [int(cuda.states[i][0]) for i in range(3)] == [0, 1, 2]  # untouched


def _states(world):
    base = ckpt.rng_state()
    return [{**base, "cuda": torch.full((16,), r + 1, dtype=torch.uint8)} for r in range(world)]


@pytest.mark.parametrize(
    "saved,world,rank,expect_own,line",
    [
        (2, 2, 1, True, None),
        (
            4,
            2,
            1,
            True,
            "resume: the checkpoint was written by 4 process(es), this run has 2: "
            "the RNG states of ranks 2-3 are not used",
        ),
        (
            2,
            3,
            2,
            False,
            "resume: the checkpoint was written by 2 process(es), this run has 3: "
            "rank 2 start(s) with rank 0's CPU RNG state and a fresh device RNG state",
        ),
        (
            1,
            4,
            3,
            False,
            "resume: the checkpoint was written by 1 process(es), this run has 4: "
            "ranks 1-3 start(s) with rank 0's CPU RNG state and a fresh device RNG state",
        ),
    ],
)
def test_each_rank_restores_its_own_state_and_a_new_world_size_is_one_line(
    monkeypatch, saved, world, rank, expect_own, line
):
    cuda = fake_torch(monkeypatch, FakeCuda(1))
    states = _states(saved)
    payload = {"rng": states[0], **({"rng_ranks": states} if saved > 1 else {})}
    lines = []
    ckpt.restore_rng(payload, rank, world, lines.append)
    assert int(cuda.states[0][0]) == (rank + 1 if expect_own else 0)
    assert lines == ([line] if line else [])
