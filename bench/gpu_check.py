"""One command for the day a GPU is lent: ``make gpu-check`` (``python -m bench.gpu_check``).

On one CUDA GPU, within a time budget (default 450 s, under the 8 minutes a lent machine gives one
command; what does not fit is listed as skipped, never silently dropped), it measures and writes a
markdown report (default ``gpu_check.md``, also printed):

1. **Training steps** of every paper-scale model at batch 1 (CoordTok-S/B/L stage 1 and L stage 2
   at 128 frames, SiT-L/2, MAGVIT-v2, ProMAG 8x, REGEN), in bf16 autocast and in fp16 autocast
   with the loss scaler: time per step (median of timed steps after warm-up, AdamW included), peak
   memory, and MFU = the step's FLOPs (forward + backward, counted exactly by
   :mod:`eval.flops` on the meta device, :func:`eval.profile.step_flops`) / time / the GPU's peak
   dense bf16 rate (:data:`PEAK_BF16_FLOPS`, by GPU name; unknown GPUs get no MFU). The steps are
   :func:`eval.profile.build_step`'s, the ones ``coordtok profile`` measures.
2. **xformers against SDPA** (:func:`coordtok.attention.attention` with each backend) on
   CoordTok-L-sized bf16 attention: time, and whether the outputs agree within bf16 rounding.
3. **Largest batch that fits** the GPU's free memory, CoordTok-S/B/L stages 1 and 2 and SiT-L/2 at
   128 frames (:func:`eval.profile.max_batch`, each search with a time cap: a capped search reports
   the largest batch it saw fit, as ">= N").
4. **Sampling throughput**: SiT-L/2 Euler-Maruyama (the paper's 250 steps, fewer when the budget
   cannot hold them, said in the table) decoded to 128-frame videos by CoordTok-L, bf16: videos per
   second and peak memory.

Weights are random: no cost here depends on them. On a machine without CUDA it says so in one
line and exits 0.

    python -m bench.gpu_check [--out gpu_check.md] [--budget-s 450] [--sample-batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent

# Peak dense bf16 tensor-core rate (FLOP/s, fp32 accumulation, no sparsity) by GPU name, most
# specific names first: ``torch.cuda.get_device_name`` is matched against each substring.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (and NVL / HBM3 boards report as H100 too)
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("RTX 6000 Ada", 364e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L4", 121e12),
]

# (name, family, config, mode): each paper-scale model's training step.
TRAIN_STEPS = [
    ("CoordTok-S stage 1", "coordtok", "configs/tokenizer/small.yaml", "coordtok"),
    ("CoordTok-B stage 1", "coordtok", "configs/tokenizer/base.yaml", "coordtok"),
    ("CoordTok-L stage 1", "coordtok", "configs/tokenizer/large.yaml", "coordtok"),
    ("CoordTok-L stage 2", "coordtok", "configs/tokenizer/large.yaml", "stage2"),
    ("SiT-L/2", "sit", "configs/sit/L2-1280.yaml", "sit"),
    ("MAGVIT-v2", "magvit2", "configs/baselines/magvit2.yaml", "magvit2"),
    ("ProMAG 8x", "promag", "configs/baselines/promag-8x.yaml", "promag"),
    ("REGEN", "regen", "configs/baselines/regen.yaml", "regen"),
]
MAX_BATCH = [s for s in TRAIN_STEPS if s[1] in ("coordtok", "sit")]
PRECISIONS = ("bf16", "fp16")
PAPER_STEPS = 250  # Euler-Maruyama steps of the paper's samples
# Shares of the whole budget per section (what a section leaves unused passes to the next).
SHARES = {"train": 0.40, "attention": 0.04, "max_batch": 0.36, "sample": 0.20}


# ---------------------------------------------------------------------------- pieces tested on a CPU


def peak_flops(gpu_name: str) -> float | None:
    """The GPU's peak dense bf16 rate (FLOP/s) from :data:`PEAK_BF16_FLOPS`, None when unknown."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in gpu_name.lower():
            return flops
    return None


def mfu_text(flops: int | None, seconds: float, peak: float | None) -> str | None:
    """Model FLOPs utilisation as a percentage, None without a FLOP count or a known peak."""
    if not flops or not peak or not seconds > 0:
        return None
    return f"{100 * flops / seconds / peak:.1f}%"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats with 3 significant digits, None as an empty cell."""

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Budget:
    """The run's time budget: a section gets its share of what is left (``clock`` is
    ``time.monotonic`` unless a test passes its own)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.end - self.clock())

    def section(self, share: float, shares_left: float) -> float:
        """Deadline (a ``clock`` value) of a section worth ``share`` of the ``shares_left`` to come."""
        return self.clock() + self.left() * min(1.0, share / shares_left)


def model_config(family: str, config: str) -> dict:
    """The model section of ``config`` as :func:`eval.profile.build_step` takes it."""
    from coordtok.config import load_model_config, load_yaml, to_dict

    if family == "coordtok":
        return to_dict(load_model_config(ROOT / config))
    return dict(load_yaml(ROOT / config)["model"])


def step_shape(family: str, config: str, mode: str) -> tuple[dict, int, int]:
    """``(model_cfg, frames, num_coords)`` of one paper training step: CoordTok's 128-frame clips
    with the config's ``train.num_coords`` (stage 1) or ``num_frames_stage2`` whole frames (stage
    2); a baseline's own clip length; SiT's latents (frames unused)."""
    from coordtok.config import ModelConfig, load_yaml

    cfg = model_config(family, config)
    train = load_yaml(ROOT / config).get("train") or {}
    frames = int(cfg.get("frames", 128))
    num_coords = int(train.get("num_coords", 1024))
    if mode == "stage2":
        _, hp, wp = ModelConfig(**cfg).patch_grid
        num_coords = int(train.get("num_frames_stage2", 16)) * hp * wp  # whole frames
    return cfg, frames, num_coords


def sampling_steps(seconds_per_eval: float, seconds_left: float, margin: float = 0.7) -> int:
    """The paper's 250 sampler steps when ``margin`` of the time left holds them (one network
    evaluation each), else as many as it holds (at least 2, the sampler's minimum)."""
    fit = int(margin * seconds_left / seconds_per_eval) if seconds_per_eval > 0 else PAPER_STEPS
    return PAPER_STEPS if fit >= PAPER_STEPS else max(2, fit)


class _ScaledOptimizer:
    """AdamW behind the fp16 loss scaler, as :func:`eval.profile.build_step`'s steps call an
    optimizer (``step``, ``zero_grad``): the scaling, the unscale with its inf check, the skipped or
    taken step and the scale update run as in training. The steps call ``backward`` themselves, so
    the scale multiplies the gradients after the backward instead of the loss before it: the same
    work within one elementwise pass over the gradients (timing and memory, not fp16 underflow,
    are what this check measures)."""

    def __init__(self, opt, scaler):
        self.opt, self.scaler = opt, scaler

    def step(self):
        if self.scaler.is_enabled():
            params = [p for group in self.opt.param_groups for p in group["params"] if p.grad is not None]
            for p, scaled in zip(params, self.scaler.scale([p.grad for p in params])):
                p.grad = scaled
        self.scaler.step(self.opt)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True):
        self.opt.zero_grad(set_to_none=set_to_none)


def train_step(
    family: str,
    model_cfg: dict,
    frames: int,
    mode: str,
    num_coords: int,
    precision: str,
    device,
    warmup: int = 2,
    steps: int = 3,
    deadline: float | None = None,
) -> dict:
    """Time one training step (batch 1) of ``family`` in ``precision`` (``bf16``, ``fp16`` with the
    loss scaler, or ``fp32``: the CPU tests' choice where emulated bf16 is slow) on ``device``:
    ``{"seconds", "peak_bytes" (CUDA), "steps"}``. Timed steps stop
    early at ``deadline`` (``time.monotonic``), after at least one."""
    from eval.profile import build_step

    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    model, inputs, step = build_step(family, model_cfg, frames, mode, num_coords, 1, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    runner = _ScaledOptimizer(opt, scaler)
    cuda = device.type == "cuda"

    def one() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            step(model, inputs, runner)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - tic

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        one()
    times = []
    for _ in range(steps):
        times.append(one())
        if deadline is not None and time.monotonic() > deadline:
            break
    out = {"seconds": statistics.median(times), "steps": len(times)}
    if cuda:
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out  # (the model, its inputs and optimizer are freed with this frame)


def flops_of(family: str, model_cfg: dict, frames: int, mode: str, num_coords: int) -> int:
    """FLOPs of one training step at batch 1 (forward + backward), counted on the meta device."""
    from eval.profile import step_flops

    return step_flops(model_cfg, mode, num_coords, 1, family=family, frames=frames)["flops"]


def capped_max_batch(
    family: str,
    model_cfg: dict,
    frames: int,
    mode: str,
    num_coords: int,
    budget_bytes: int,
    device: str,
    deadline: float,
) -> str:
    """:func:`eval.profile.max_batch` with a deadline: ``"N"``, or ``">= N"`` when the search was cut."""
    from eval import profile

    n = profile.max_batch(
        model_cfg, mode, num_coords, budget_bytes, device, family=family, frames=frames, deadline=deadline
    )
    return f">= {n}" if time.monotonic() > deadline else str(n)


# ---------------------------------------------------------------------------- the sections


def _gb(b: int | None) -> float | None:
    return None if b is None else b / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _fail(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"


def section_train(device, peak: float | None, deadline: float) -> str:
    rows = []
    for name, family, config, mode in TRAIN_STEPS:
        cfg, frames, num_coords = step_shape(family, config, mode)
        flops, flops_note = None, ""
        try:
            flops = flops_of(family, cfg, frames, mode, num_coords)
        except Exception as e:  # noqa: BLE001 (a row says what failed; the check goes on)
            flops_note = f"; FLOPs not counted: {_fail(e)}"
        tflop = None if flops is None else flops / 1e12
        for precision in PRECISIONS:
            if time.monotonic() > deadline:
                rows.append([name, precision, None, None, None, tflop, "skipped (time budget)"])
                continue
            try:
                r = train_step(family, cfg, frames, mode, num_coords, precision, device, deadline=deadline)
                rows.append(
                    [
                        name,
                        precision,
                        r["seconds"] * 1e3,
                        _gb(r.get("peak_bytes")),
                        mfu_text(flops, r["seconds"], peak),
                        tflop,
                        f"{r['steps']} timed steps{flops_note}",
                    ]
                )
            except Exception as e:  # noqa: BLE001
                rows.append([name, precision, None, None, None, tflop, _fail(e) + flops_note])
            finally:
                _reset_peak(torch.device(device))
    return "## Training steps (batch 1, AdamW; fp16 with the loss scaler)\n\n" + markdown_table(
        ["model", "precision", "ms / step", "peak GB", "MFU", "TFLOP / step", "note"], rows
    )


def section_attention(device: torch.device, shape: tuple[int, int, int] = (8, 1024, 3072), repeats: int = 10) -> str:
    """Attention of ``shape = (batch, queries, keys)``, 16 heads of 64 (default: CoordTok-L
    decoder-sized, 1024 coordinates against 3072 keys)."""
    batch, queries, keys = shape
    from coordtok.attention import attention, available_backends

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(batch, n, 16, 64, device=device, dtype=torch.bfloat16, generator=g) for n in (queries, keys, keys)
    )
    out, rows = {}, []
    usable = available_backends(torch.bfloat16) if device.type == "cuda" else ["sdpa"]
    for backend in ("sdpa", "xformers"):
        if backend not in usable:
            rows.append([backend, None, "not available here (not installed, or its probe failed)"])
            continue
        attention(q, k, v, backend=backend)
        _sync(device)
        tic = time.perf_counter()
        for _ in range(repeats):
            out[backend] = attention(q, k, v, backend=backend)
        _sync(device)
        rows.append([backend, (time.perf_counter() - tic) / repeats * 1e3, ""])
    text = f"## Attention backends (bf16, batch {batch}, 16 heads of 64, {queries} queries, {keys} keys)\n\n"
    text += markdown_table(["backend", "ms / call", "note"], rows)
    if len(out) == 2:
        # Each output is a convex combination of rows of v, rounded to bf16 once (relative 2^-8);
        # the two kernels differ in accumulation order inside fp32, far below that: 2 bf16 ulps of
        # the largest |v| bound any honest difference.
        diff = float((out["xformers"].float() - out["sdpa"].float()).abs().max())
        tol = 2 * 2.0**-8 * float(v.float().abs().max())
        text += (
            f"\n\nxformers vs SDPA: max |difference| {diff:.3g} ({'equal' if diff <= tol else 'DIFFERENT'} "
            f"within bf16 rounding, bound {tol:.3g})"
        )
    return text


def section_max_batch(device: torch.device, deadline: float) -> str:
    from eval.profile import available_memory

    _reset_peak(device)
    free, _ = available_memory(str(device))
    rows = []
    for k, (name, family, config, mode) in enumerate(MAX_BATCH):
        left = deadline - time.monotonic()
        if left <= 0:
            rows.append([name, None, "skipped (time budget)"])
            continue
        cfg, frames, num_coords = step_shape(family, config, mode)
        own = time.monotonic() + left / (len(MAX_BATCH) - k)  # an equal share of what is left
        try:
            rows.append(
                [
                    name,
                    capped_max_batch(family, cfg, frames, mode, num_coords, free, str(device), own),
                    "fp32 step with AdamW, in a fresh process per probe",
                ]
            )
        except Exception as e:  # noqa: BLE001
            rows.append([name, None, _fail(e)])
    return f"## Largest batch that fits ({free / 1e9:.1f} GB free; 128 frames)\n\n" + markdown_table(
        ["model", "max batch", "note"], rows
    )


def section_sample(
    device: torch.device,
    batch: int,
    deadline: float,
    sit_config: str = "configs/sit/L2-1280.yaml",
    tokenizer_config: str = "configs/tokenizer/large.yaml",
) -> str:
    from coordtok import CoordTok, Triplane
    from coordtok.config import load_model_config
    from coordtok.devices import inference_precision
    from sit.models import TriplaneSiT
    from sit.samplers import euler_maruyama

    _reset_peak(device)
    with torch.device(device):
        sit = TriplaneSiT.from_config(str(ROOT / sit_config)).eval()
        tok = CoordTok(load_model_config(ROOT / tokenizer_config)).eval()
    tl, hl, wl = sit.grid
    noise = torch.randn(batch, hl * wl + tl * wl + tl * hl, sit.in_channels, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad(), inference_precision("bf16", device.type):
        tic = time.perf_counter()
        euler_maruyama(sit, noise, num_steps=3, generator=g)  # warm-up, and the time of one evaluation
        _sync(device)
        per_eval = (time.perf_counter() - tic) / 3
        steps = sampling_steps(per_eval, deadline - time.monotonic())
        _reset_peak(device)
        tic = time.perf_counter()
        x = euler_maruyama(sit, noise, num_steps=steps, generator=g)
        videos = tok.decode_video(Triplane.unflatten(x.float(), tuple(sit.grid)))
        _sync(device)
        seconds = time.perf_counter() - tic
    rows = [
        [
            f"SiT {Path(sit_config).stem} + CoordTok {Path(tokenizer_config).stem}",
            batch,
            steps,
            "x".join(map(str, videos.shape[2:])),
            seconds,
            batch / seconds,
            _gb(_peak_bytes(device)),
            "" if steps == PAPER_STEPS else f"{steps} of the paper's {PAPER_STEPS} steps (time budget)",
        ]
    ]
    return "## Sampling (Euler-Maruyama, bf16, decoded to 128-frame videos)\n\n" + markdown_table(
        ["models", "videos", "steps", "frames x H x W", "seconds", "videos / s", "peak GB", "note"], rows
    )


def run(
    out: Path,
    budget_s: float,
    sample_batch: int,
    device: torch.device | None = None,
    sample_configs: tuple[str, str] = ("configs/sit/L2-1280.yaml", "configs/tokenizer/large.yaml"),
    attention_shape: tuple[int, int, int] = (8, 1024, 3072),
) -> str:
    """Every section within ``budget_s``, the report written to ``out`` (and returned). ``device``
    defaults to the current CUDA GPU; the tests run it on a CPU with tiny models and shapes."""
    from coordtok.devices import cpu_info
    from coordtok.fileio import check_writable_file, write_text

    out = check_writable_file(out, "report")
    device = device or torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else cpu_info()["model"]
    peak = peak_flops(name) if cuda else None
    budget = Budget(budget_s)
    memory = f"{torch.cuda.get_device_properties(device).total_memory / 1e9:.0f} GB" if cuda else "CPU"
    parts = [
        f"# GPU check: {name}\n",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {memory}; peak dense bf16 "
        + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown here (no MFU)")
        + f"; budget {budget_s:.0f} s\n",
    ]
    shares_left = sum(SHARES.values())
    for key, fn in (
        ("train", lambda d: section_train(device, peak, d)),
        ("attention", lambda d: section_attention(device, attention_shape)),
        ("max_batch", lambda d: section_max_batch(device, d)),
        ("sample", lambda d: section_sample(device, sample_batch, d, *sample_configs)),
    ):
        deadline = budget.section(SHARES[key], shares_left)
        shares_left -= SHARES[key]
        tic = time.monotonic()
        try:
            parts.append(fn(deadline))
        except Exception as e:  # noqa: BLE001 (one failed section must not cost the others)
            parts.append(f"## {key}\n\nfailed: {_fail(e)}")
        print(f"gpu-check: {key} done in {time.monotonic() - tic:.0f} s", file=sys.stderr, flush=True)
    text = "\n\n".join(parts) + "\n"
    write_text(out, text, what="GPU check report")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.md", help="the markdown report")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-time budget of all sections (seconds)")
    p.add_argument("--sample-batch", type=int, default=8, help="videos sampled at once")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}); nothing to check")
        return 0
    print(run(Path(a.out), a.budget_s, a.sample_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
