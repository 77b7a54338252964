"""Helpers shared by the tests: a training run watched from outside, gradients compared up to
float32 reduction order, parameter counts."""

import os
import shutil
import socket
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


class StepRecorder:
    """Watches ``fit(task)`` through torch's global optimizer-step hooks, so the trainers carry no
    test callbacks: before every optimizer step of one of ``task``'s modules, ``on_step(phase)``
    (optional) runs, and the first step's gradients of each phase are kept in ``grads[phase]``
    (by parameter name, as the optimizer receives them: after DDP's all-reduce, unscaling and
    clipping). After ``fit``, ``task.modules`` hold this process's trained weights."""

    def __init__(self, task, on_step=None):
        self.names = {id(p): (phase, n) for phase, m in task.modules.items() for n, p in m.named_parameters()}
        self.on_step, self.grads, self.handle = on_step, {}, None

    def __enter__(self):
        self.handle = register_optimizer_step_pre_hook(self._before_step)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _before_step(self, optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        phases = {self.names[id(p)][0] for p in params if id(p) in self.names}
        if len(phases) != 1:  # another optimizer than one of this task's
            return
        phase = phases.pop()
        if self.on_step is not None:
            self.on_step(phase)
        if phase not in self.grads:
            self.grads[phase] = {self.names[id(p)][1]: p.grad.detach().clone() for p in params if p.grad is not None}


def first_step_gradients(task, **fit_kwargs) -> dict[str, torch.Tensor]:
    """``fit(task)`` (no progress bar), and the gradients of its first optimizer step of the main
    module, as the optimizer receives them."""
    from coordtok.loop import fit

    with StepRecorder(task) as recorder:
        fit(task, progress=False, **fit_kwargs)
    return recorder.grads["model"]


def assert_same_gradients(a: dict, b: dict, rel: float = 1e-4) -> None:
    """Gradients equal up to float32 reduction order.

    Two runs that see the same clips and coordinates differ only in the order float32 sums are
    taken (a batch of 2 at once vs two accumulated micro-batches, one process vs two). A sum of
    n terms then differs by about sqrt(n) * 6e-8 of its magnitude, a few 1e-6 here, compounded over
    a few layers of backpropagation; ``rel`` = 1e-4 of each tensor's largest entry leaves a wide
    margin and still catches any real difference (a summed instead of averaged micro-batch loss
    is off by 2x, other coordinates by O(1)). Comparing weights after AdamW instead would not
    work: Adam's first step is lr * sign(g), so a 1e-7 difference in a near-zero g is an
    lr-sized difference in the weight.
    """
    assert a.keys() == b.keys() and a
    for name, ga in a.items():
        gb = b[name]
        scale = max(float(gb.abs().max()), 1e-12)
        assert float((ga - gb).abs().max()) <= rel * scale, (name, float((ga - gb).abs().max()), scale)


def param_count(module: torch.nn.Module) -> int:
    """Parameters of a module (built on the meta device for paper-scale layouts)."""
    return sum(p.numel() for p in module.parameters())


def accelerate_launch(processes: int = 2) -> list[str]:
    """The command-line head that runs a script as ``processes`` CPU processes over gloo:
    ``accelerate launch --multi_gpu ...`` (with ``ACCELERATE_USE_CPU=1`` in the environment;
    ``--multi_gpu`` picks torchrun, ``--cpu`` alone would start a single process). Each launch
    gets a free rendezvous port: with the default (29500) two launches at once (``make test``
    runs tests in parallel) would meet on the same port."""
    exe = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if exe is None:
        pytest.fail("the accelerate launcher is not installed")
    return [
        exe,
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it; another process could take it before
    the launch binds it, which the OS makes unlikely by cycling through its ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
