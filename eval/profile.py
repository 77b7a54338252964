"""``coordtok profile``: training FLOPs and memory of CoordTok against clip length.

For every clip length ``T`` it builds the config's model for ``T``-frame clips and measures one
stage-1 training step (forward, backward, AdamW):

* FLOPs, exactly, with ``torch.utils.flop_counter`` on the meta device: nothing is allocated, so
  CoordTok-L at 128 frames is counted in a second;
* peak memory of a real step: CUDA ``max_memory_allocated``, or on a CPU the peak RSS of a fresh
  child process (its growth over the process before the model existed);
* on a GPU, the largest batch whose step fits a memory budget (default 24 GB, the paper's GPU),
  by doubling then bisection.

Beside CoordTok (``num_coords`` random patches per clip) it profiles the same model forced to
decode every patch of every frame ("full decoding"), which is what coordinate sampling saves.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch

from coordtok.config import ModelConfig, load_model_config
from coordtok.model import CoordTok, gather_patches, random_coords

from .flops import counter

MODES = ("coordtok", "full")


def model_for_frames(cfg: ModelConfig, frames: int) -> ModelConfig:
    """The same architecture built for ``frames``-frame clips (the latent time axis scales with it)."""
    scale = frames / cfg.frames
    latent_t = max(cfg.latent_patch_t, int(round(cfg.latent_t * scale / cfg.latent_patch_t)) * cfg.latent_patch_t)
    new = dataclasses.replace(cfg, frames=frames, latent_t=latent_t)
    new.validate()
    return new


def coords_for(model: CoordTok, mode: str, num_coords: int, batch: int, device) -> torch.Tensor:
    tp, hp, wp = model.patch_grid
    n = tp * hp * wp if mode == "full" else min(num_coords, tp * hp * wp)
    g = torch.Generator().manual_seed(0)
    return random_coords(torch.full((batch,), tp), n, model.patch_grid, g).to(device)


def training_step(model: CoordTok, video: torch.Tensor, coords: torch.Tensor, optimizer=None) -> None:
    pred = model(video, coords)
    loss = torch.nn.functional.mse_loss(pred.float(), gather_patches(video, coords, model.patch_shape).float())
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def step_flops(cfg: ModelConfig, mode: str, num_coords: int = 1024, batch: int = 1) -> dict:
    """FLOPs of one training step (forward + backward) counted on the meta device."""
    with torch.device("meta"):
        model = CoordTok(cfg)
    video = torch.empty(batch, 3, cfg.frames, cfg.size, cfg.size, device="meta")
    coords = coords_for(model, mode, num_coords, batch, "meta")
    with counter() as fc:
        training_step(model, video, coords)
    # (on the meta device SDPA runs as plain matmuls, so attention is inside the total, not separable)
    return {"flops": int(fc.get_total_flops()), "coords": coords.shape[1]}


def _measure_step_memory(cfg_dict: dict, mode: str, num_coords: int, batch: int, device: str) -> dict:
    """Run in the measuring process: one warm-up step then one measured step."""
    cfg = ModelConfig(**cfg_dict)
    dev = torch.device(device)
    # Baseline: the current RSS after imports. Peaks come from /proc (VmHWM): ru_maxrss survives
    # exec, so a child of a large process would report its parent's peak.
    rss0 = _proc_status_bytes("VmRSS")
    model = CoordTok(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    video = torch.rand(batch, 3, cfg.frames, cfg.size, cfg.size, device=dev) * 2 - 1
    coords = coords_for(model, mode, num_coords, batch, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    training_step(model, video, coords, opt)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(dev))}
    return {"peak_bytes": _proc_status_bytes("VmHWM") - rss0}


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def step_memory(cfg: ModelConfig, mode: str, num_coords: int, batch: int, device: str, timeout: int = 3600) -> dict:
    """Peak memory of one real training step, measured in a fresh child process."""
    code = ("import json,sys; from eval.profile import _measure_step_memory as m; "
            "a=json.loads(sys.argv[1]); print(json.dumps(m(**a)))")
    arg = json.dumps({"cfg_dict": dataclasses.asdict(cfg), "mode": mode, "num_coords": num_coords, "batch": batch,
                      "device": device})
    root = str(Path(__file__).resolve().parent.parent)
    res = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout, cwd=root)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no output"
        if "out of memory" in res.stderr.lower():
            return {"peak_bytes": None, "oom": True}
        raise RuntimeError(f"memory measurement failed for {mode}, {cfg.frames} frames: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def max_batch(cfg: ModelConfig, mode: str, num_coords: int, budget_bytes: int, device: str, limit: int = 4096) -> int:
    """Largest batch whose training step fits ``budget_bytes`` on ``device`` (doubling, then bisection)."""
    def fits(b: int) -> bool:
        r = step_memory(cfg, mode, num_coords, b, device)
        return r.get("peak_bytes") is not None and r["peak_bytes"] <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def profile(config, frames: list[int], num_coords: int = 1024, device: str | None = None,
            measure_memory: bool = True, budget_gb: float = 24.0, max_batch_search: bool | None = None,
            modes: tuple[str, ...] = MODES, progress=print) -> list[dict]:
    """One row per (clip length, mode): FLOPs, attention FLOPs, peak memory, max batch (GPU)."""
    base = load_model_config(config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    search = (device.startswith("cuda")) if max_batch_search is None else max_batch_search
    rows = []
    for t in frames:
        cfg = model_for_frames(base, t)
        for mode in modes:
            row = {"frames": t, "mode": mode, **step_flops(cfg, mode, num_coords)}
            if measure_memory:
                row["peak_bytes"] = step_memory(cfg, mode, num_coords, 1, device).get("peak_bytes")
            if search:
                row["max_batch"] = max_batch(cfg, mode, num_coords, int(budget_gb * 1e9), device)
            rows.append(row)
            progress(_row_text(row))
    return rows


def _row_text(r: dict) -> str:
    mem = "" if r.get("peak_bytes") is None else f", peak {r['peak_bytes'] / 1e9:.2f} GB"
    mb = "" if "max_batch" not in r else f", max batch {r['max_batch']}"
    return f"{r['frames']:4d} frames, {r['mode']:8s}: {r['coords']:6d} coords, {r['flops'] / 1e12:.3f} TFLOP{mem}{mb}"


def write_report(rows: list[dict], out_dir: str | Path, title: str, device: str) -> None:
    """``profile.json``, ``profile.md`` and PNG plots (FLOPs, memory, max batch against clip length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps({"title": title, "device": device, "rows": rows}, indent=2))
    lines = [f"# {title}", "", f"device for memory: {device}", "",
             "| frames | decoding | coordinates | TFLOP / step | peak memory (GB) | max batch |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mem = "n/a" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 1e9:.2f}"
        lines.append(f"| {r['frames']} | {r['mode']} | {r['coords']} | {r['flops'] / 1e12:.3f} | {mem} | "
                     f"{r.get('max_batch', 'n/a')} |")
    (out / "profile.md").write_text("\n".join(lines) + "\n")

    labels = {"coordtok": "CoordTok (sampled coordinates)", "full": "full decoding (every patch)"}
    panels = [("flops", "training TFLOP / step", 1e12, "profile_flops.png"),
              ("peak_bytes", "peak memory of a step (GB)", 1e9, "profile_memory.png"),
              ("max_batch", "max batch at the memory budget", 1, "profile_max_batch.png")]
    for key, ylabel, scale, name in panels:
        if not any(r.get(key) is not None for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.4), dpi=120)
        for mode in MODES:
            pts = [(r["frames"], r[key] / scale) for r in rows if r["mode"] == mode and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=labels[mode])
        ax.set_xlabel("clip length (frames)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["frames"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)


def analytic_linear_flops(n_tokens: int, d_in: int, d_out: int, backward: bool = True) -> int:
    """FLOPs of ``Linear(d_in, d_out)`` on ``n_tokens`` rows: 2 n d_in d_out forward, twice that backward."""
    fwd = 2 * n_tokens * d_in * d_out
    return fwd * 3 if backward else fwd


def analytic_attention_flops(n_q: int, n_k: int, dim: int, backward: bool = True) -> int:
    """Score and value matmuls of attention: 4 n_q n_k dim forward, twice that backward."""
    fwd = 4 * n_q * n_k * dim
    return fwd * 3 if backward else fwd


__all__ = ["profile", "write_report", "step_flops", "step_memory", "max_batch", "model_for_frames",
           "analytic_linear_flops", "analytic_attention_flops"]
