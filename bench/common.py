"""Shared helpers for the benchmarks: machine matmul rate, child-process peak memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository: children run ``python -m bench.x`` from it


def matmul_rate(dtype=torch.float32, n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained GEMM rate of this machine in FLOP/s (square ``n x n`` matmuls, all threads)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tic)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB), from /proc (VmHWM): unlike ru_maxrss it
    does not carry a parent's peak across exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024 / 1e9
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def machine() -> str:
    """The CPU model, the instruction sets that decide CPU speed and precision, and what
    ``mixed_precision: auto`` picks on it (bf16 only with native bf16)."""
    from coordtok.devices import cpu_info, resolve_precision

    info = cpu_info()
    auto = resolve_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")
    return (
        f"{info['model']} [{', '.join(info['instruction_sets']) or 'no listed extensions'}], {os.cpu_count()} "
        f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads; mixed_precision auto -> {auto}"
    )


def run_child(module: str, *args: str) -> dict:
    """Run ``python -m module --child args...`` in a fresh process (its own peak RSS), from the
    repository root whatever the caller's folder, and parse its JSON line."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
