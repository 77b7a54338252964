"""``make gpu-check`` (bench/gpu_check.py) is ready for the day a GPU is lent: every piece that
does not need CUDA runs here, the sections through the same code with tiny models on the CPU."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check as gc

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY_STEPS = [
    ("CoordTok tiny stage 1", "coordtok", "configs/tokenizer/tiny.yaml", "coordtok"),
    ("CoordTok tiny stage 2", "coordtok", "configs/tokenizer/tiny.yaml", "stage2"),
    ("SiT tiny", "sit", "configs/sit/tiny.yaml", "sit"),
    ("MAGVIT-v2 tiny", "magvit2", "configs/baselines/magvit2-tiny.yaml", "magvit2"),
    ("ProMAG tiny 4x", "promag", "configs/baselines/promag-tiny-4x.yaml", "promag"),
    ("REGEN tiny", "regen", "configs/baselines/regen-tiny.yaml", "regen"),
]


@pytest.mark.slow
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "r.md")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [
        f"gpu-check: no CUDA GPU here (torch {torch.__version__}); nothing to check"
    ]
    assert not (tmp_path / "r.md").exists()


def test_the_makefile_target_runs_the_module():
    text = (ROOT / "Makefile").read_text()
    assert "\ngpu-check: $(STAMP)\n\t$(PY) -m bench.gpu_check\n" in text
    assert re.search(r"^\.PHONY:.* gpu-check( |$)", text, re.M)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("Tesla V100-SXM2-32GB", None),
    ],
)
def test_peak_flops_by_gpu_name(name, peak):
    assert gc.peak_flops(name) == peak


def test_mfu_and_table():
    assert gc.mfu_text(2e12, 0.01, 1e15) == "20.0%"
    assert gc.mfu_text(None, 0.01, 1e15) is None and gc.mfu_text(2e12, 0.01, None) is None
    table = gc.markdown_table(["a", "b", "c"], [[1.23456, None, "x|y"], [7, 2e-5, "z"]])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.23 |  | x\\|y |", "| 7 | 2e-05 | z |"]


def test_the_time_budget():
    now = [100.0]
    budget = gc.Budget(450, clock=lambda: now[0])
    shares = sum(gc.SHARES.values())
    assert budget.section(gc.SHARES["train"], shares) == pytest.approx(100 + 450 * gc.SHARES["train"] / shares)
    now[0] += 100  # the train section finished early: what it left goes to the sections after it
    rest = shares - gc.SHARES["train"]
    assert budget.section(gc.SHARES["attention"], rest) == pytest.approx(200 + 350 * gc.SHARES["attention"] / rest)
    assert budget.section(gc.SHARES["sample"], gc.SHARES["sample"]) == pytest.approx(550)  # the last: all of it
    now[0] = 1000
    assert budget.left() == 0 and budget.section(0.2, 0.2) == 1000
    # Sampling keeps the paper's 250 steps when they fit, else fewer (never below the sampler's 2).
    assert gc.sampling_steps(0.1, 100) == 250 and gc.sampling_steps(0.1, 10) == 70 and gc.sampling_steps(1, 0) == 2


def test_paper_step_shapes():
    cfg, frames, n = gc.step_shape("coordtok", "configs/tokenizer/large.yaml", "coordtok")
    assert (frames, n) == (128, 1024) and cfg["enc_dim"] > 512
    _, frames, n = gc.step_shape("coordtok", "configs/tokenizer/large.yaml", "stage2")
    assert (frames, n) == (128, 16 * 16 * 16)  # 16 whole frames of 16 x 16 patches
    cfg, _, _ = gc.step_shape("sit", "configs/sit/L2-1280.yaml", "sit")
    assert cfg["hidden"] == 1024 and cfg["depth"] == 24


def test_the_loss_scaler_skips_a_non_finite_step_and_takes_a_finite_one():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    runner = gc._ScaledOptimizer(opt, scaler)
    w.grad = torch.tensor([1.0, float("inf"), 1.0])
    runner.step()
    assert torch.equal(w.detach(), torch.ones(3)) and scaler.get_scale() == 2.0**15  # skipped, scale halved
    runner.zero_grad()
    assert w.grad is None
    w.grad = torch.ones(3)
    runner.step()
    assert bool((w.detach() < 1).all())


# fp32 for every model (emulated bf16 convolutions take a minute on a CPU without native bf16),
# bf16 and fp16 with the loss scaler on the light ones: the code path is one and the same.
CASES = [(s, "fp32") for s in TINY_STEPS] + [(TINY_STEPS[2], "bf16"), (TINY_STEPS[2], "fp16"), (TINY_STEPS[0], "fp16")]


@pytest.mark.slow
@pytest.mark.parametrize("step, precision", CASES, ids=[f"{s[0]}-{p}" for s, p in CASES])
def test_every_models_step_runs_through_the_same_code_on_the_cpu(step, precision, one_thread):
    name, family, config, mode = step
    cfg, frames, n = gc.step_shape(family, config, mode)
    frames = 16 if family == "coordtok" else frames  # CoordTok built for 16-frame clips: a short test
    r = gc.train_step(family, cfg, frames, mode, min(n, 64), precision, CPU, warmup=0, steps=1)
    assert r["seconds"] > 0 and r["steps"] == 1 and "peak_bytes" not in r
    assert gc.flops_of(family, cfg, frames, mode, min(n, 64)) > 0


def test_max_batch_search_with_a_time_cap(monkeypatch):
    """The search is eval.profile.max_batch's; a fake measurement (peak = batch GB, 20 ms each)
    fits batches up to 37 of a 37 GB budget: without a cap the search finds 37, with one it stops
    early and says ">=" with a batch that did fit."""
    from eval import profile

    probes = []

    def fake_memory(cfg, mode, num_coords, batch, device, **kw):
        probes.append(batch)
        time.sleep(0.02)
        return {"peak_bytes": batch * 10**9}

    monkeypatch.setattr(profile, "step_memory", fake_memory)
    cfg, frames, n = gc.step_shape("coordtok", "configs/tokenizer/tiny.yaml", "coordtok")
    search = lambda seconds: gc.capped_max_batch(
        "coordtok", cfg, frames, "coordtok", n, 37 * 10**9, "cpu", time.monotonic() + seconds
    )
    assert search(60) == "37"
    probes.clear()
    capped = search(0.07)
    assert capped.startswith(">= ") and 1 <= int(capped[3:]) <= 37 and len(probes) <= 5


@pytest.mark.slow
def test_the_whole_report_on_the_cpu_with_tiny_models(tmp_path, monkeypatch, one_thread):
    """run(): every section through its code on the CPU (tiny models, a fake memory probe),
    a first section that runs out of time lists its steps as skipped, and the report is written."""
    from eval import profile

    monkeypatch.setattr(gc, "TRAIN_STEPS", TINY_STEPS[:1] + TINY_STEPS[2:3])
    monkeypatch.setattr(gc, "MAX_BATCH", TINY_STEPS[:1])
    monkeypatch.setattr(profile, "step_memory", lambda *a, **k: {"peak_bytes": a[3] * 10**6})
    monkeypatch.setattr(gc, "train_step", lambda *a, **k: {"seconds": 0.5, "steps": 3})
    monkeypatch.setattr(gc, "PAPER_STEPS", 3)
    text = gc.run(
        tmp_path / "report.md",
        120,
        1,
        device=CPU,
        sample_configs=("configs/sit/tiny.yaml", "configs/tokenizer/tiny.yaml"),
        attention_shape=(1, 16, 32),
    )
    assert (tmp_path / "report.md").read_text() == text
    for heading in ("## Training steps", "## Attention backends", "## Largest batch", "## Sampling"):
        assert heading in text
    assert "| CoordTok tiny stage 1 | bf16 | 500 |" in text and "| SiT tiny | fp16 | 500 |" in text
    assert "| xformers |  | not available here" in text
    assert "| CoordTok tiny stage 1 | " in text.split("## Largest batch")[1]
    sample_row = text.split("## Sampling")[1].splitlines()[-1]
    assert sample_row.startswith("| SiT tiny + CoordTok tiny | 1 | 3 | 128x64x64 |")

    monkeypatch.setattr(gc, "SHARES", {**gc.SHARES, "train": 1e-9})  # no time for the training steps
    text = gc.run(
        tmp_path / "report.md",
        120,
        1,
        device=CPU,
        sample_configs=("configs/sit/tiny.yaml", "configs/tokenizer/tiny.yaml"),
        attention_shape=(1, 16, 32),
    )
    assert text.count("skipped (time budget)") == 4
