"""CUDA device placement, checked on the CPU: every model's training step (its task's loss, each
phase, in fp32 and under CUDA bf16 autocast: CoordTok stages 1 and 2, SiT, MAGVIT-v2 with its
discriminator, ProMAG with its discriminator, REGEN with and without latent extension) and the
samplers run with every parameter, buffer and input on "cuda:0" (tests/cuda_on_cpu.py). A tensor
made on the CPU inside such a step fails the test, as it would fail the first step on a GPU."""

from types import SimpleNamespace

import pytest
import torch
from cuda_on_cpu import CUDA, DeviceMismatch, OnCuda, cuda_on_cpu, module_on_cuda, on_cuda

from coordtok.loop import StepContext

CTX = StepContext(step=0, micro=0, first=0, seed=0, device=CUDA)
NO_VAL = {"val_data": None}


def _video(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1


def _run_phases(task, batch, autocast: bool = True) -> dict:
    """Each phase's loss, as :func:`coordtok.loop.fit` computes it, with the task on "CUDA"
    (its modules there, then its own ``setup`` moving what else it keeps to the device)."""
    helpers = (getattr(task, "ema", None), getattr(task, "lpips", None))
    for module in [*task.modules.values(), *(m for m in helpers if m is not None)]:
        module_on_cuda(module)
    task.wrapped = dict(task.modules)
    task.accelerator = SimpleNamespace(
        device=CUDA, num_processes=1, process_index=0, is_main_process=True, wait_for_everyone=lambda: None
    )
    losses = {}
    with cuda_on_cpu():
        task.setup()
        batch = on_cuda(batch)
        # fp32, then under CUDA bf16 autocast as a bf16 run trains (its casts are device ops too)
        for bf16 in (False, True) if autocast else (False,):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                for phase in task.phases:
                    out = task.loss(phase, batch, CTX)
                    assert isinstance(out["loss"], OnCuda), (phase, type(out["loss"]))
                    if not bf16:
                        losses[phase] = float(out["loss"])
                    assert torch.isfinite(out["loss"]), (phase, bf16)
    return losses


# ---------------------------------------------------------------------------- the harness itself
class _CpuTensorInForward(torch.nn.Module):
    """The fault this file exists for: a tensor made on the CPU inside forward."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + torch.arange(4.0)  # no device=x.device


class _Placed(_CpuTensorInForward):
    def forward(self, x):
        return self.lin(x) + torch.arange(4.0, device=x.device)


def test_a_cpu_tensor_inside_a_cuda_forward_fails():
    x = torch.randn(2, 4)
    wrong, right = module_on_cuda(_CpuTensorInForward()), _Placed()
    right.load_state_dict(_CpuTensorInForward().state_dict())
    expected = right(x)
    module_on_cuda(right)
    with cuda_on_cpu():
        with pytest.raises(DeviceMismatch, match="CPU tensor of shape \\(4,\\)"):
            wrong(on_cuda(x))
        out = right(on_cuda(x))
        assert out.device == CUDA and torch.equal(out.elem, expected)  # real values, the CPU's
        with pytest.raises(DeviceMismatch, match="CPU generator"):
            torch.randn(3, device=x.new_empty(0, device=CUDA).device, generator=torch.Generator())
        with pytest.raises(DeviceMismatch, match="numpy"):
            out.numpy()
        # What CUDA accepts passes: 0-dim CPU scalars, copies between devices, CUDA generators' absence.
        assert (out * torch.tensor(2.0)).device == CUDA and out.cpu().device.type == "cpu"
        assert torch.zeros(2, device="cuda").device == CUDA and int(torch.tensor([3], device="cuda")[0]) == 3


# ---------------------------------------------------------------------------- CoordTok
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_coordtok_step(stage):
    from coordtok.config import load_tokenizer_config
    from coordtok.train import TokenizerTask

    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {"train": {"stage": stage, "num_coords": 64, "num_frames_stage2": 2, "lpips_weight": 0.0}, **NO_VAL},
    )
    m = cfg.model
    batch = {"video": _video(2, m.frames, m.size), "num_frames": torch.tensor([m.frames, m.frames - 5])}
    task = TokenizerTask(cfg)
    task.wrapped = task.modules
    with torch.no_grad():
        cpu = float(task.loss("model", batch, StepContext(0, 0, 0, 0, torch.device("cpu")))["loss"])
    assert _run_phases(task, batch) == {"model": cpu}  # the same computation, on "CUDA"


# ---------------------------------------------------------------------------- SiT and its samplers
def _sit_task(cache):
    from sit.config import load_sit_run_config
    from sit.train import SiTTask

    return SiTTask(load_sit_run_config("configs/sit/tiny.yaml"), cache)


@pytest.mark.slow
def test_sit_step(cache):
    task = _sit_task(cache)
    batch = torch.utils.data.default_collate([task.dataset()[i] for i in range(2)])  # {"latent", "label"}
    assert set(_run_phases(task, batch)) == {"model"}


@pytest.mark.parametrize("sampler", ["sde", "heun_sde", "ode"])
def test_samplers(cache, sampler):
    from sit.samplers import SAMPLERS
    from sit.transport import make_path

    task = _sit_task(cache)
    model = module_on_cuda(task.modules["model"].eval())
    noise = torch.randn(2, *task.shape, generator=torch.Generator().manual_seed(0))
    kw = (
        {"method": "euler", "num_steps": 3}
        if sampler == "ode"
        else {"num_steps": 3, "generator": torch.Generator().manual_seed(1), "path": make_path("linear")}
    )
    with cuda_on_cpu():
        x = SAMPLERS[sampler](lambda x, t: model(x, t), on_cuda(noise), **kw)
        assert isinstance(x, OnCuda) and x.shape == noise.shape and bool(torch.isfinite(x).all())


# ---------------------------------------------------------------------------- baselines and REGEN
@pytest.mark.slow
def test_magvit2_step_with_its_discriminator():
    from baselines.train import MagvitV2Task, load_magvit2_run_config

    # R1 takes input gradients: this harness runs without autograd (module docstring).
    cfg = load_magvit2_run_config(
        "configs/baselines/magvit2-tiny.yaml", {"train": {"gan_weight": 0.1, "r1_weight": 0.0}, **NO_VAL}
    )
    task = MagvitV2Task(cfg)
    assert task.phases == ("model", "disc")
    # fp32 only: its bf16 3-D convolutions take two minutes on a CPU without native bf16 (ProMAG
    # runs the same causal convolutions under autocast; the LFQ switches autocast off itself).
    assert set(_run_phases(task, {"video": _video(2, 17, 64)}, autocast=False)) == {"model", "disc"}


@pytest.mark.slow
def test_promag_step_with_its_discriminator():
    from baselines.train import ProMAGTask, load_promag_run_config

    cfg = load_promag_run_config(
        "configs/baselines/promag-tiny-4x.yaml", {"train": {"gan_weight": 0.1, "r1_weight": 0.0}, **NO_VAL}
    )
    task = ProMAGTask(cfg)
    assert task.phases == ("model", "disc")
    m = cfg.model
    assert set(_run_phases(task, {"video": _video(2, m.frames, m.size)})) == {"model", "disc"}


@pytest.mark.slow
@pytest.mark.parametrize("extend", [False, True])
def test_regen_step(extend):
    from baselines.regen_train import RegenTask, load_regen_run_config

    cfg = load_regen_run_config(
        "configs/baselines/regen-tiny.yaml", {"train": {"extend_prob": 1.0 if extend else 0.0}, **NO_VAL}
    )
    m = cfg.model
    frames = 2 * m.frames if extend else m.frames
    assert set(_run_phases(RegenTask(cfg), {"video": _video(2, frames, m.size)})) == {"model"}


def test_a_planted_fault_in_a_sampler_fails(cache, monkeypatch):
    """The samplers' test catches a real-code fault: the Brownian increments drawn on the CPU
    (from the CPU generator, without ``device=x.device``). (A CPU time vector would not be one:
    the model and the path move ``t`` to the latents' device.)"""
    import sit.samplers

    monkeypatch.setattr(sit.samplers, "_noise_like", lambda x, g: torch.randn(x.shape, generator=g, dtype=x.dtype))
    with pytest.raises(DeviceMismatch):
        test_samplers(cache, "sde")
