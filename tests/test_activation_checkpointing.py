"""Activation checkpointing (``train.activation_checkpointing``): the same gradients, less memory.

Why the gradients must be *bitwise* equal on a CPU: with ``use_reentrant=False`` the autograd graph
is the one the plain forward builds; checkpointing only drops the tensors saved inside a block and,
when the backward unpacks one, reruns the block's forward to rebuild it. That rerun calls the same
kernels on the same inputs (same values, shapes, strides and 64-byte-aligned buffers, same thread
count, the same RNG state and autocast state restored), and CPU kernels are deterministic for fixed
inputs, so every rebuilt tensor equals the saved one bit for bit, and the backward then performs
exactly the plain step's operations in the same order. Any difference at all (tolerance 0) means
the recomputation saw something else.
"""

import sys

import pytest
import torch
import yaml
from helpers import accelerate_launch

from coordtok.activation_checkpointing import CheckpointedBlock, checkpointed_blocks, set_activation_checkpointing
from coordtok.config import load_model_config, to_dict
from eval.profile import build_step, model_for_frames


def _sit_step(cfg_path="configs/sit/tiny.yaml", batch=2):
    from sit.models import TriplaneSiT
    from sit.transport import training_loss

    model = TriplaneSiT.from_config(cfg_path)
    tl, hl, wl = model.grid
    x1 = torch.randn(batch, hl * wl + tl * wl + tl * hl, model.in_channels)

    def step(m, x, opt=None):
        training_loss(m, x, generator=torch.Generator().manual_seed(3))[0].backward()

    return model, x1, step


def _family_step(family: str):
    """``(model, inputs, step)`` of one small training step of ``family`` (forward + backward)."""
    if family == "sit":
        return _sit_step()
    if family == "coordtok":
        cfg = to_dict(model_for_frames(load_model_config("configs/tokenizer/tiny.yaml"), 32))
        return build_step("coordtok", cfg, 32, "coordtok", 256, 2, "cpu")
    path = {
        "magvit2": "configs/baselines/magvit2-tiny.yaml",
        "promag": "configs/baselines/promag-tiny-8x.yaml",
        "regen": "configs/baselines/regen-tiny.yaml",
    }[family]
    model_cfg = yaml.safe_load(open(path))["model"]
    if family == "regen":
        return build_step(family, model_cfg, model_cfg["frames"], family, 0, 1, "cpu")
    # (fully convolutional: a 9-frame 32 x 32 clip keeps the test fast)
    return build_step(family, {**model_cfg, "size": 32}, 8, family, 0, 2, "cpu")


def _gradients(model, inputs, step, seed: int, autocast: bool = False) -> tuple[dict, dict]:
    """Gradients of one step and how often each block's forward ran (``{block index: calls}``)."""
    calls: dict[int, int] = {}
    handles = [
        b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
        for i, b in enumerate(checkpointed_blocks(model))
    ]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the step's own randomness (ProMAG's posterior sample, the noise)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        step(model, inputs)
    for h in handles:
        h.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, calls


def _perturb(model: torch.nn.Module) -> None:
    """Small random noise on every parameter: adaLN-Zero and zero-initialised heads would otherwise
    leave most block gradients exactly zero, and equal zeros prove nothing."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


@pytest.mark.parametrize(
    "family, autocast",
    [("coordtok", False), ("coordtok", True), ("sit", False), ("regen", False), ("magvit2", False), ("promag", False)],
)
@pytest.mark.slow
def test_gradients_equal_with_and_without_checkpointing(family, autocast):
    torch.manual_seed(0)
    model, inputs, step = _family_step(family)
    _perturb(model)
    model.train()
    n = set_activation_checkpointing(model, False)
    assert n >= 2  # every family has its blocks
    plain, plain_calls = _gradients(model, inputs, step, seed=5, autocast=autocast)
    assert set_activation_checkpointing(model, True) == n
    ckpt, ckpt_calls = _gradients(model, inputs, step, seed=5, autocast=autocast)
    # Every block with trainable weights ran its forward again in the backward. (A grown ProMAG runs
    # its older levels twice per step, once on the frame-subsampled clip through frozen weights: that
    # call has nothing to differentiate, so it is never recomputed.)
    assert set(plain_calls) == set(ckpt_calls) == set(range(n))
    for i, block in enumerate(checkpointed_blocks(model)):
        trainable = any(p.requires_grad for p in block.parameters())
        assert plain_calls[i] + trainable <= ckpt_calls[i] <= 2 * plain_calls[i], (i, plain_calls[i], ckpt_calls[i])
    assert plain.keys() == ckpt.keys() and len(plain) == sum(1 for p in model.parameters() if p.requires_grad)
    nonzero = 0
    for name, g in plain.items():
        assert torch.equal(g, ckpt[name]), (name, float((g - ckpt[name]).abs().max()))
        nonzero += bool(g.abs().max() > 0)
    assert nonzero > 0.9 * len(plain)


@pytest.mark.slow
def test_not_recomputed_in_eval_or_without_grad():
    torch.manual_seed(0)
    model, inputs, step = _family_step("coordtok")
    set_activation_checkpointing(model, True)
    video, coords = inputs
    counts = []
    hook = checkpointed_blocks(model)[0].register_forward_pre_hook(lambda *a: counts.append(1))
    model.eval()
    model(video, coords).float().pow(2).mean().backward()  # eval mode: no recomputation
    model.train()
    with torch.no_grad():
        model(video, coords)
    hook.remove()
    assert len(counts) == 2


class _DropoutBlock(CheckpointedBlock):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 32)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.lin(x))


def test_recomputation_sees_the_same_dropout_mask():
    """The recomputed forward draws the dropout mask again: checkpoint restores the RNG state first,
    so it is the same mask (a different one would give other gradients)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[_DropoutBlock() for _ in range(3)])
    x = torch.randn(8, 32)

    def grads(on):
        set_activation_checkpointing(model, on)
        model.zero_grad()
        torch.manual_seed(7)
        model(x).pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        assert torch.equal(a, b)


def test_nested_blocks_checkpoint_only_the_outermost():
    outer = _DropoutBlock()
    outer.inner = _DropoutBlock()
    model = torch.nn.Sequential(outer, _DropoutBlock())
    assert set_activation_checkpointing(model, True) == 2
    assert outer.activation_checkpointing and not outer.inner.activation_checkpointing


@pytest.mark.slow
def test_training_loop_turns_it_on_from_the_config(tmp_path, capfd):
    """``train.activation_checkpointing: true`` reaches the model's blocks in a real run, logs one line,
    and gives the first step's gradients of the run without it."""
    from helpers import first_step_gradients

    from coordtok.config import load_tokenizer_config
    from coordtok.train import TokenizerTask

    def run(name, on):
        over = {
            "train": {
                "max_steps": 1,
                "out_dir": str(tmp_path / name),
                "batch_size": 1,
                "num_coords": 64,
                "log_every": 1,
                "ckpt_every": 10,
                "val_every": 10**9,
                "mixed_precision": "no",
                "activation_checkpointing": on,
            },
            "model": {"frames": 16, "latent_t": 8},
            "data": {"names": ["bikes"], "frame_range": [0, 40], "frames": 16},
            "val_data": None,
        }
        capfd.readouterr()
        task = TokenizerTask(load_tokenizer_config("configs/tokenizer/tiny.yaml", over))
        grads = first_step_gradients(task)
        flags = {b.activation_checkpointing for b in checkpointed_blocks(task.modules["model"])}
        return grads, capfd.readouterr().err.splitlines(), flags

    plain, plain_lines, plain_flags = run("plain", False)
    ckpt, ckpt_lines, ckpt_flags = run("ckpt", True)
    assert plain_flags == {False} and ckpt_flags == {True}
    assert [ln for ln in ckpt_lines if "activation checkpointing" in ln] == [
        "activation checkpointing: 6 blocks recompute their activations in the backward"
    ]
    assert not [ln for ln in plain_lines if "activation checkpointing" in ln]
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.equal(plain[name], ckpt[name]), name


@pytest.mark.slow
def test_two_processes_with_checkpointing_match_one_without(tmp_path):
    """DDP over two gloo processes with every block checkpointed (its gradient hooks fire during the
    recomputing backward) trains what one plain process trains: bit-identical ranks, the same
    gradient up to float32 summation order (2 x half the batch against the whole batch)."""
    from helpers import assert_same_gradients
    from test_multiprocess import ROOT, _run

    script = str(ROOT / "tests" / "mp_checkpointing.py")
    two, one = tmp_path / "two", tmp_path / "one"
    _run(
        [
            *accelerate_launch(),
            script,
            str(two),
            "2",
            "1",
        ],
        env={"ACCELERATE_USE_CPU": "1"},
    )
    _run([sys.executable, script, str(one), "2", "0"])
    r0, r1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks disagree"
    g0, g1, g_single = (torch.load(p) for p in (two / "grads0.pt", two / "grads1.pt", one / "grads0.pt"))
    assert all(torch.equal(g0[n], g1[n]) for n in g0)
    assert_same_gradients(g0, g_single)
