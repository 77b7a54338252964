"""The suite passes on a machine with CUDA too (``make test`` on a GPU node): conftest.py hides
CUDA from every test (in this process and in the processes tests start), a test's own mock of
``torch.cuda`` still wins, and the tests that once took the GPU's branches (the precision test's
training run, the profile test's max-batch search) stay on the CPU with ``torch.cuda`` reporting
a GPU."""

import subprocess
import sys

import pytest
import test_precision
import test_profile
import torch

from coordtok.devices import resolve_device


def _gpu_machine(monkeypatch):
    """What the code sees on a GPU node where nothing hid CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.get_rng_state())  # a checkpoint's


@pytest.mark.slow
def test_cuda_is_hidden_here_and_in_the_processes_tests_start():
    assert not torch.cuda.is_available() and resolve_device(None) == torch.device("cpu")
    code = (
        "import os, torch; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['ACCELERATE_USE_CPU'], "
        "torch.cuda.is_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["''", "1", "False"]


def test_a_tests_own_cuda_mock_wins(monkeypatch):
    _gpu_machine(monkeypatch)
    assert torch.cuda.is_available() and resolve_device(None) == torch.device("cuda")


@pytest.mark.slow
def test_the_precision_test_trains_on_the_cpu_in_the_cpus_precision(tmp_path, monkeypatch, capsys):
    """Training takes its device type, and so its precision and TF32 switches, from the device
    accelerate runs on (here the CPU, as under ``ACCELERATE_USE_CPU=1`` on a GPU node), not from
    whether CUDA exists: the CPU test's expectations hold with a GPU present."""
    _gpu_machine(monkeypatch)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        test_precision.test_cpu_training_runs_in_the_precision_auto_chose(tmp_path, monkeypatch, capsys)
        assert torch.backends.cuda.matmul.allow_tf32 is False  # a CPU run leaves CUDA's switches alone
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow
def test_the_profile_test_searches_no_max_batch(tmp_path, monkeypatch):
    import eval.profile

    def no_search(*a, **k):
        raise AssertionError("the profile test started a max-batch search")

    def memory_on_the_cpu(*a, **k):  # (the real measurement is test_profile's; here only where)
        assert a[4] == "cpu", f"the profile test measures memory on {a[4]}"
        return {"peak_bytes": 1}

    _gpu_machine(monkeypatch)
    monkeypatch.setattr(eval.profile, "max_batch", no_search)
    monkeypatch.setattr(eval.profile, "step_memory", memory_on_the_cpu)
    test_profile.test_profile_report_with_memory_beside_magvit2(tmp_path)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_the_profiler_searches_where_it_measures(device, monkeypatch):
    """The behaviour the profile test must not trigger is real: by default on a GPU machine the
    profiler searches the max batch on CUDA; on the CPU it does not."""
    import eval.profile

    calls = []
    _gpu_machine(monkeypatch)
    monkeypatch.setattr(eval.profile, "max_batch", lambda *a, **k: calls.append(a[4]) or 1)
    monkeypatch.setattr(eval.profile, "step_memory", lambda *a, **k: {"peak_bytes": 1})
    monkeypatch.setattr(eval.profile, "available_memory", lambda device: (10**13, "a mocked GPU"))
    eval.profile.profile(
        "configs/tokenizer/tiny.yaml", [16], device=device, modes=("coordtok",), progress=lambda *_: None
    )
    assert calls == (["cuda"] if device is None else [])
