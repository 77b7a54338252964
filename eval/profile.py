"""``coordtok profile``: training FLOPs and memory against clip length, CoordTok beside the conv-3D
baselines (the CoordTok paper's Figure 1a and Figure 9).

For every clip length ``T`` each tokenizer is built for ``T``-frame clips and one training step
(forward, backward; AdamW for memory) is measured:

* **CoordTok** (``coordtok``): the whole clip encoded, ``num_coords`` random patches decoded (L2);
  beside it the same model forced to decode every patch of every frame (``full``), which is what
  coordinate sampling saves.
* **MAGVIT-v2 / ProMAG** (``magvit2``, ``promag``): one causal pass over ``1 + T`` frames (the
  nearest ``1 + 4k`` / ``1 + 8k`` length), reconstruction loss plus the quantizer / KL terms: the
  autoencoder step; the discriminator step is left out of every tokenizer alike.
* **REGEN** (``regen``): its decoder's flow-matching step over the ``ceil(T / (1 + k))`` chunks that
  cover the clip (it is trained chunk by chunk).

Measured:

* FLOPs, exactly, with ``torch.utils.flop_counter`` on the meta device: nothing is allocated, so
  paper-scale models at 256 frames are counted in seconds;
* peak memory of a real step: CUDA ``max_memory_allocated``, or on a CPU the peak RSS of a fresh
  child process (its growth over the process before the model existed);
* on a GPU, the largest batch whose step fits a memory budget (default 24 GB, the paper's GPU),
  by doubling then bisection.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from coordtok.config import ModelConfig, load_model_config, load_yaml, to_dict
from coordtok.fileio import atomic_path, write_json, write_text
from coordtok.model import CoordTok, gather_patches, random_coords

from .flops import counter

MODES = ("coordtok", "full")
LABELS = {"coordtok": "CoordTok (sampled coordinates)", "full": "CoordTok decoding every patch",
          "magvit2": "MAGVIT-v2", "promag": "ProMAG", "regen": "REGEN (decoder step)"}


# ---------------------------------------------------------------------------- CoordTok


def model_for_frames(cfg: ModelConfig, frames: int) -> ModelConfig:
    """The same architecture built for ``frames``-frame clips (the latent time axis scales with it)."""
    scale = frames / cfg.frames
    latent_t = max(cfg.latent_patch_t, int(round(cfg.latent_t * scale / cfg.latent_patch_t)) * cfg.latent_patch_t)
    return dataclasses.replace(cfg, frames=frames, latent_t=latent_t)


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


# ---------------------------------------------------------------------------- every family


def family_of(config) -> str:
    """``coordtok`` for a CoordTok config, else the baseline's ``kind:`` (magvit2, promag, regen)."""
    raw = load_yaml(config) if not isinstance(config, dict) else config
    return raw.get("kind", "coordtok")


def clip_frames(family: str, model_cfg: dict, frames: int) -> int:
    """Frames a tokenizer of ``family`` takes for a ``frames``-long clip in one training step."""
    if family in ("magvit2", "promag"):
        factor = _baseline_config(family, model_cfg).time_factor
        return 1 + math.ceil(frames / factor) * factor
    return frames


def _baseline_config(family: str, model_cfg: dict):
    from coordtok.config import from_dict

    if family == "magvit2":
        from coordtok.baselines.magvit2 import MagvitV2Config as cls
    elif family == "promag":
        from coordtok.baselines.promag import ProMAGConfig as cls
    else:
        from sit.regen import RegenConfig as cls
    return from_dict(cls, model_cfg, f"profile: {family} model")


def build_step(family: str, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """``(model, inputs, step_fn)``: one training step of ``family`` on a ``frames``-long clip batch;
    ``step_fn(model, inputs, optimizer=None)`` runs forward + backward (+ the optimizer)."""
    device = torch.device(device)
    if family == "coordtok":
        cfg = model_for_frames(ModelConfig(**model_cfg), frames)
        with device:
            model = CoordTok(cfg)
        video = torch.empty(batch, 3, frames, cfg.size, cfg.size, device=device).uniform_(-1, 1)
        inputs = (video, coords_for(model, mode, num_coords, batch, device))
        return model, inputs, lambda m, x, opt=None: training_step(m, *x, optimizer=opt)
    cfg = _baseline_config(family, model_cfg)
    if family == "magvit2":
        from coordtok.baselines.magvit2 import MagvitV2 as cls
    elif family == "promag":
        from coordtok.baselines.promag import ProMAG as cls
    else:
        from sit.regen import Regen as cls
    with device:
        model = cls(cfg)
    if family == "regen":
        chunks = batch * math.ceil(frames / model.chunk_frames)
        video = torch.empty(chunks, 3, model.chunk_frames, cfg.size, cfg.size, device=device).uniform_(-1, 1)

        def step(m, x, opt=None):
            m.loss(x)[0].backward()
            _optimizer_step(opt)
        return model, video, step
    video = torch.empty(batch, 3, clip_frames(family, model_cfg, frames), cfg.size, cfg.size,
                        device=device).uniform_(-1, 1)

    def step(m, x, opt=None):
        recon, aux = m(x)
        loss = torch.nn.functional.mse_loss(recon.float(), x.float())
        loss = loss + sum(aux[k] for k in ("commitment", "entropy", "kl") if k in aux)
        loss.backward()
        _optimizer_step(opt)
    return model, video, step


def _optimizer_step(opt) -> None:
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def step_flops(cfg: ModelConfig, mode: str, num_coords: int = 1024, batch: int = 1, family: str = "coordtok",
               frames: int | None = None) -> dict:
    """FLOPs of one training step (forward + backward) counted on the meta device."""
    model_cfg = dataclasses.asdict(cfg) if isinstance(cfg, ModelConfig) else dict(cfg)
    frames = frames if frames is not None else model_cfg["frames"]
    model, inputs, step = build_step(family, model_cfg, frames, mode, num_coords, batch, "meta")
    with counter() as fc:
        step(model, inputs)
    # (on the meta device SDPA runs as plain matmuls, so attention is inside the total, not separable)
    out = {"flops": int(fc.get_total_flops())}
    if family == "coordtok":
        out["coords"] = inputs[1].shape[1]
    return out


def _measure_step_memory(family: str, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int,
                         device: str) -> dict:
    """Run in the measuring process: one training step with AdamW, its peak memory."""
    dev = torch.device(device)
    # Baseline: the current RSS after imports. Peaks come from /proc (VmHWM): ru_maxrss survives
    # exec, so a child of a large process would report its parent's peak.
    rss0 = _proc_status_bytes("VmRSS")
    model, inputs, step = build_step(family, model_cfg, frames, mode, num_coords, batch, dev)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step(model, inputs, opt)
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


def step_memory(cfg, mode: str, num_coords: int, batch: int, device: str, timeout: int = 3600,
                family: str = "coordtok", frames: int | None = None) -> dict:
    """Peak memory of one real training step, measured in a fresh child process."""
    model_cfg = dataclasses.asdict(cfg) if isinstance(cfg, ModelConfig) else dict(cfg)
    frames = frames if frames is not None else model_cfg["frames"]
    code = ("import json,sys; from eval.profile import _measure_step_memory as m; "
            "a=json.loads(sys.argv[1]); print(json.dumps(m(**a)))")
    arg = json.dumps({"family": family, "model_cfg": model_cfg, "frames": frames, "mode": mode,
                      "num_coords": num_coords, "batch": batch, "device": device})
    root = str(Path(__file__).resolve().parent.parent)
    res = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout, cwd=root)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no output"
        if "out of memory" in res.stderr.lower() or res.returncode in (-9, 137):
            return {"peak_bytes": None, "oom": True}
        raise RuntimeError(f"memory measurement failed for {family}/{mode}, {frames} frames: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def max_batch(cfg, mode: str, num_coords: int, budget_bytes: int, device: str, limit: int = 4096,
              family: str = "coordtok", frames: int | None = None) -> int:
    """Largest batch whose training step fits ``budget_bytes`` on ``device`` (doubling, then bisection)."""
    def fits(b: int) -> bool:
        r = step_memory(cfg, mode, num_coords, b, device, family=family, frames=frames)
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
            modes: tuple[str, ...] = MODES, progress=print, baselines=()) -> list[dict]:
    """One row per (clip length, tokenizer): FLOPs, peak memory, max batch (GPU).

    ``config`` is a CoordTok config (its ``modes``: sampled coordinates, every patch);
    ``baselines`` are baseline configs (``configs/baselines/*.yaml``) profiled beside it.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    search = device.startswith("cuda") if max_batch_search is None else max_batch_search
    targets = [("coordtok", to_dict(load_model_config(config)), mode) for mode in modes]
    for path in baselines:
        family = family_of(path)
        targets.append((family, load_yaml(path)["model"], family))
    rows = []
    for t in frames:
        for family, model_cfg, mode in targets:
            row = {"frames": t, "mode": mode, "family": family,
                   "clip_frames": clip_frames(family, model_cfg, t),
                   **step_flops(model_cfg, mode, num_coords, family=family, frames=t)}
            if measure_memory:
                mem = step_memory(model_cfg, mode, num_coords, 1, device, family=family, frames=t)
                row["peak_bytes"] = mem.get("peak_bytes")
            if search:
                row["max_batch"] = max_batch(model_cfg, mode, num_coords, int(budget_gb * 1e9), device,
                                             family=family, frames=t)
            rows.append(row)
            progress(_row_text(row))
    return rows


def _row_text(r: dict) -> str:
    mem = "" if r.get("peak_bytes") is None else f", peak {r['peak_bytes'] / 1e9:.2f} GB"
    mb = "" if "max_batch" not in r else f", max batch {r['max_batch']}"
    return f"{r['frames']:4d} frames, {LABELS.get(r['mode'], r['mode'])}: {r['flops'] / 1e12:.3f} TFLOP{mem}{mb}"


def write_report(rows: list[dict], out_dir: str | Path, title: str, device: str) -> None:
    """``profile.json``, ``profile.md`` and PNG plots (FLOPs, memory, max batch against clip length)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    out = Path(out_dir)
    write_json(out / "profile.json", {"title": title, "device": device, "rows": rows}, what="profile")
    lines = [f"# {title}", "", f"device for memory: {device}", "",
             "| frames | tokenizer | frames in the step | TFLOP / step | peak memory (GB) | max batch |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mem = "n/a" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 1e9:.3f}"
        label = LABELS.get(r["mode"], r["mode"]) + (f" ({r['coords']} coordinates)" if "coords" in r else "")
        lines.append(f"| {r['frames']} | {label} | {r.get('clip_frames', r['frames'])} | {r['flops'] / 1e12:.4f} | "
                     f"{mem} | {r.get('max_batch', 'n/a')} |")
    write_text(out / "profile.md", "\n".join(lines) + "\n", what="profile table")

    panels = [("flops", "training TFLOP / step", 1e12, "profile_flops.png"),
              ("peak_bytes", "peak memory of a step (GB)", 1e9, "profile_memory.png"),
              ("max_batch", "max batch at the memory budget", 1, "profile_max_batch.png")]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for key, ylabel, scale, name in panels:
        if not any(r.get(key) is not None for r in rows):
            continue
        # A bare Figure renders with Agg and never touches pyplot's global backend.
        fig = Figure(figsize=(5, 3.6), dpi=120, layout="constrained")
        ax = fig.subplots()
        for mode in modes:
            pts = [(r["frames"], r[key] / scale) for r in rows if r["mode"] == mode and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=LABELS.get(mode, mode))
        ax.set_xlabel("clip length (frames)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["frames"] for r in rows}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        if key == "flops":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=8)
        with atomic_path(out / name, "plot") as tmp:
            fig.savefig(tmp, format="png")


def analytic_linear_flops(n_tokens: int, d_in: int, d_out: int, backward: bool = True) -> int:
    """FLOPs of ``Linear(d_in, d_out)`` on ``n_tokens`` rows: 2 n d_in d_out forward, twice that backward."""
    fwd = 2 * n_tokens * d_in * d_out
    return fwd * 3 if backward else fwd


def analytic_attention_flops(n_q: int, n_k: int, dim: int, backward: bool = True) -> int:
    """Score and value matmuls of attention: 4 n_q n_k dim forward, twice that backward."""
    fwd = 4 * n_q * n_k * dim
    return fwd * 3 if backward else fwd


__all__ = ["profile", "write_report", "step_flops", "step_memory", "max_batch", "model_for_frames",
           "analytic_linear_flops", "analytic_attention_flops", "build_step", "family_of"]
