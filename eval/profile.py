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

Estimated (:func:`step_memory_estimate`, any batch, paper scale included, nothing allocated): the
bytes of one fp32 training step with AdamW, with and without activation checkpointing
(``train.activation_checkpointing``), from the tensors autograd saves on the meta device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from coordtok.activation_checkpointing import checkpointed_blocks, set_activation_checkpointing
from coordtok.attention import memory_efficient_on_meta
from coordtok.config import ModelConfig, load_model_config, load_yaml, to_dict
from coordtok.errors import CoordTokError
from coordtok.fileio import atomic_path, write_json, write_text
from coordtok.kinds import get_kind, kind_of_config, prefixed_kind
from coordtok.model import CoordTok, frame_coords, random_coords, random_frames
from coordtok.train import tokenizer_loss

from .flops import counter

MODES = ("coordtok", "full")
LABELS = {
    "coordtok": "CoordTok (sampled coordinates)",
    "full": "CoordTok decoding every patch",
    "stage2": "CoordTok stage 2 (whole frames, L2 + LPIPS)",
    "magvit2": "MAGVIT-v2",
    "promag": "ProMAG",
    "regen": "REGEN (decoder step)",
}


# ---------------------------------------------------------------------------- CoordTok


def model_for_frames(cfg: ModelConfig, frames: int) -> ModelConfig:
    """The same architecture built for ``frames``-frame clips (the latent time axis scales with it)."""
    scale = frames / cfg.frames
    latent_t = max(cfg.latent_patch_t, int(round(cfg.latent_t * scale / cfg.latent_patch_t)) * cfg.latent_patch_t)
    return dataclasses.replace(cfg, frames=frames, latent_t=latent_t)


def coords_for(model: CoordTok, mode: str, num_coords: int, batch: int, device) -> torch.Tensor:
    """Decoded coordinates ``(B, N, 3)``: ``num_coords`` random patches (``coordtok``), every patch
    (``full``), or every patch of ``num_coords // (Hp Wp)`` random whole frames (``stage2``)."""
    tp, hp, wp = model.patch_grid
    g = torch.Generator().manual_seed(0)
    if mode == "stage2":
        frames = random_frames(torch.full((batch,), tp), max(1, min(tp, num_coords // (hp * wp))), g)
        return frame_coords(frames, model.patch_grid).to(device)
    n = tp * hp * wp if mode == "full" else min(num_coords, tp * hp * wp)
    return random_coords(torch.full((batch,), tp), n, model.patch_grid, g).to(device)


def training_step(model: CoordTok, video: torch.Tensor, coords: torch.Tensor, optimizer=None) -> None:
    """CoordTok's stage-1 step as the trainer takes it (:func:`coordtok.train.tokenizer_loss`: L2
    on the patches at ``coords``), backward, then ``optimizer`` (None: no update)."""
    tokenizer_loss(model, model, video, None, coords)["loss"].backward()
    _optimizer_step(optimizer)


# ---------------------------------------------------------------------------- every family


def family_of(config) -> str:
    """The kind of a tokenizer config (:data:`coordtok.kinds.KINDS`): ``coordtok`` without ``kind:``."""
    return kind_of_config(config).name


def model_config(family: str, model_cfg: dict):
    """The model section of a ``family`` config as its dataclass, checked."""
    from coordtok.config import from_dict

    return from_dict(get_kind(family).resolve("model_config"), model_cfg, f"profile: {family} model")


def clip_frames(family: str, model_cfg: dict, frames: int) -> int:
    """Frames a tokenizer of ``family`` takes for a ``frames``-long clip in one training step: a
    causal conv-3D tokenizer (its config has a ``time_factor``) ``1 + k time_factor`` frames."""
    if family in ("coordtok", "sit"):
        return frames
    cfg = model_config(family, model_cfg)
    if hasattr(cfg, "clip_frames"):  # a diffusers autoencoder: the shortest 1 + k t covering the clip
        return cfg.clip_frames(frames)
    factor = getattr(cfg, "time_factor", None)
    return 1 + math.ceil(frames / factor) * factor if factor else frames


def build_step(family: str, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """``(model, inputs, step_fn)``: one training step of ``family`` on a ``frames``-long clip batch
    (``sit``: on a batch of triplane latents); ``step_fn(model, inputs, optimizer=None)`` runs
    forward + backward (+ the optimizer). The step is the kind's ``profile`` entry."""
    kind = get_kind(family, "profile")
    return kind.resolve("profile")(kind, dict(model_cfg), frames, mode, num_coords, batch, torch.device(device))


def coordtok_step(kind, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """CoordTok: the whole clip encoded, ``num_coords`` random patches (``mode`` coordtok), every
    patch (``full``) or whole random frames with LPIPS (``stage2``) decoded."""
    cfg = model_for_frames(ModelConfig(**model_cfg), frames)
    with device:
        model = CoordTok(cfg)
    video = torch.empty(batch, 3, frames, cfg.size, cfg.size, device=device).uniform_(-1, 1)
    inputs = (video, coords_for(model, mode, num_coords, batch, device))
    if mode == "stage2":
        from coordtok.lpips import LPIPS

        with device:
            lpips = LPIPS()  # random weights: the step's cost does not depend on them
        patch_frames = inputs[1].shape[1] // (model.patch_grid[1] * model.patch_grid[2])

        def stage2(m, x, opt=None):
            tokenizer_loss(m, m, x[0], None, x[1], patch_frames, lpips_weight=1.0, lpips=lpips)["loss"].backward()
            _optimizer_step(opt)

        return model, inputs, stage2
    return model, inputs, lambda m, x, opt=None: training_step(m, *x, optimizer=opt)


def sit_step(kind, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """CoordTok-SiT's flow-matching step over the triplane latents (``frames`` does not apply)."""
    from sit.models import TriplaneSiT
    from sit.transport import training_loss

    with device:
        model = TriplaneSiT.from_config(dict(model_cfg))
    tl, hl, wl = model.grid
    x1 = torch.empty(batch, hl * wl + tl * wl + tl * hl, model.in_channels, device=device).normal_()

    def step(m, x, opt=None):
        training_loss(m, x)[0].backward()
        _optimizer_step(opt)

    return model, x1, step


def conv3d_step(kind, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """A causal conv-3D autoencoder (MAGVIT-v2, ProMAG): one pass over ``1 + k time_factor``
    frames, reconstruction loss plus its quantizer / KL terms (the discriminator step is left out
    of every tokenizer alike)."""
    cfg = model_config(kind.name, model_cfg)
    with device:
        model = kind.resolve("model")(cfg)
    video = torch.empty(
        batch, 3, clip_frames(kind.name, model_cfg, frames), cfg.size, cfg.size, device=device
    ).uniform_(-1, 1)

    def step(m, x, opt=None):
        recon, aux = m(x)
        loss = torch.nn.functional.mse_loss(recon.float(), x.float())
        loss = loss + sum(aux[k] for k in ("commitment", "entropy", "kl") if k in aux)
        loss.backward()
        _optimizer_step(opt)

    return model, video, step


def regen_step(kind, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int, device):
    """REGEN: its decoder's flow-matching step over the ``ceil(T / (1 + k))`` chunks that cover
    the clip (it is trained chunk by chunk)."""
    cfg = model_config(kind.name, model_cfg)
    with device:
        model = kind.resolve("model")(cfg)
    chunks = batch * math.ceil(frames / model.chunk_frames)
    video = torch.empty(chunks, 3, model.chunk_frames, cfg.size, cfg.size, device=device).uniform_(-1, 1)

    def step(m, x, opt=None):
        m.loss(x)[0].backward()
        _optimizer_step(opt)

    return model, video, step


def _optimizer_step(opt) -> None:
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def step_flops(
    cfg: ModelConfig,
    mode: str,
    num_coords: int = 1024,
    batch: int = 1,
    family: str = "coordtok",
    frames: int | None = None,
) -> dict:
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


ADAMW_BYTES_PER_PARAM = 16  # fp32 weight, gradient, and AdamW's two moments


def step_memory_estimate(family: str, model_cfg: dict, frames: int, mode: str, num_coords: int, batch: int) -> dict:
    """Bytes one fp32 training step with AdamW needs on a device, with and without activation
    checkpointing, from the model's shapes alone (the step runs on the meta device).

    * ``static_bytes``: 16 bytes per trainable parameter (fp32 weight, gradient, AdamW's two
      moments) + 4 per frozen parameter or buffer (LPIPS' VGG, a grown ProMAG's frozen levels);
    * ``batch_bytes``: the input batch (the clips, the coordinates) where no saved tensor holds it;
    * ``activation_bytes``: every tensor autograd saves for the backward, each storage once
      (parameters excluded), with attention saving what memory-efficient kernels save
      (:func:`coordtok.attention.memory_efficient_on_meta`);
    * ``checkpointed_activation_bytes``: with ``train.activation_checkpointing`` a block keeps only
      its inputs, so what stays is the tensors saved outside the blocks, the blocks' inputs, and,
      during the backward, the largest single block's saved tensors (``largest_block_bytes``),
      rebuilt one block at a time.

    ``total_bytes`` / ``total_bytes_checkpointed`` are the sums of the static part, the batch and
    the activations: at the end of the forward the weights, the batch and every saved tensor are
    alive together, and the gradients and AdamW's moments, counted in full, stand in for what the
    backward holds beside them (its activation gradients, a block's at a time). Kernel workspaces
    and the allocator's slack are not in it (CUDA's reserved memory exceeds its allocated memory by
    that). Under fp16/bf16 autocast the matmul inputs saved are half size: the fp32 figure bounds
    those too.
    """
    with memory_efficient_on_meta():
        model, inputs, step = build_step(family, model_cfg, frames, mode, num_coords, batch, "meta")
    model.train()
    set_activation_checkpointing(model, False)
    blocks = checkpointed_blocks(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # (the step may hold more modules than the model, e.g. stage 2's LPIPS: found through the
    # saved tensors below, they are frozen weights, counted at 4 bytes per value)
    weights: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        weights[t.untyped_storage()._cdata] = 0 if t.requires_grad else t.untyped_storage().nbytes()
    saved: dict[int, tuple[int, set]] = {}  # storage -> (bytes, blocks that saved it; None: outside)
    block_inputs: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # keeps every recorded storage alive so no address is reused
    current: list[int | None] = [None]

    def enter(i):
        def hook(module, args, kwargs):
            current[0] = i
            for t in list(args) + list(kwargs.values()):
                if isinstance(t, torch.Tensor):
                    alive.append(t)
                    block_inputs[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()

        return hook

    def leave(module, args, output):
        current[0] = None

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key in weights:
            return t
        if isinstance(t, torch.nn.Parameter) or (t._base is not None and isinstance(t._base, torch.nn.Parameter)):
            weights[key] = 0 if t.requires_grad else t.untyped_storage().nbytes()
            return t
        alive.append(t)
        saved.setdefault(key, (t.untyped_storage().nbytes(), set()))[1].add(current[0])
        return t

    handles = [
        h
        for i, b in enumerate(blocks)
        for h in (b.register_forward_pre_hook(enter(i), with_kwargs=True), b.register_forward_hook(leave))
    ]
    try:
        with memory_efficient_on_meta(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(model, inputs)
    finally:
        for h in handles:
            h.remove()
    # frozen weights (LPIPS, a grown ProMAG's parent levels) and buffers at 4 bytes a value
    frozen = sum(weights.values())
    static = ADAMW_BYTES_PER_PARAM * trainable + frozen
    batch_storages = {
        t.untyped_storage()._cdata: t.untyped_storage().nbytes()
        for t in (inputs if isinstance(inputs, (tuple, list)) else (inputs,))
    }
    batch_bytes = sum(n for k, n in batch_storages.items() if k not in saved)
    activations = sum(n for n, _ in saved.values())
    kept = {k: n for k, (n, owners) in saved.items() if None in owners} | block_inputs
    per_block = [
        sum(n for k, (n, owners) in saved.items() if i in owners and k not in kept) for i in range(len(blocks))
    ]
    largest = max(per_block, default=0)
    checkpointed = sum(kept.values()) + largest
    return {
        "trainable_params": trainable,
        "static_bytes": static,
        "batch_bytes": batch_bytes,
        "activation_bytes": activations,
        "checkpointed_activation_bytes": checkpointed,
        "largest_block_bytes": largest,
        "blocks": len(blocks),
        "total_bytes": static + batch_bytes + activations,
        "total_bytes_checkpointed": static + batch_bytes + checkpointed,
    }


def _measure_step_memory(
    family: str,
    model_cfg: dict,
    frames: int,
    mode: str,
    num_coords: int,
    batch: int,
    device: str,
    activation_checkpointing: bool = False,
    steady_state: bool = False,
) -> dict:
    """Run in the measuring process: one training step with AdamW, its peak memory.

    ``steady_state``: the peak of a second step, AdamW's moments alive from its start as in every
    step of a run but the first (whose peak, at batch 1, is often the optimizer allocating them).
    """
    dev = torch.device(device)
    # Baseline: the current RSS after imports. Peaks come from /proc (VmHWM): ru_maxrss survives
    # exec, so a child of a large process would report its parent's peak.
    rss0 = _proc_status_bytes("VmRSS")
    model, inputs, step = build_step(family, model_cfg, frames, mode, num_coords, batch, dev)
    model.train()
    set_activation_checkpointing(model, activation_checkpointing)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    if steady_state:
        step(model, inputs, opt)
        if dev.type != "cuda":
            # Linux: writing 5 to clear_refs resets VmHWM to the current RSS (fs/proc/task_mmu.c).
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
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


def step_memory(
    cfg,
    mode: str,
    num_coords: int,
    batch: int,
    device: str,
    timeout: int = 3600,
    family: str = "coordtok",
    frames: int | None = None,
    activation_checkpointing: bool = False,
    steady_state: bool = False,
) -> dict:
    """Peak memory of one real training step, measured in a fresh child process (``steady_state``:
    of the second step, see :func:`_measure_step_memory`)."""
    model_cfg = dataclasses.asdict(cfg) if isinstance(cfg, ModelConfig) else dict(cfg)
    frames = frames if frames is not None else model_cfg["frames"]
    code = (
        "import json,sys; from eval.profile import _measure_step_memory as m; "
        "a=json.loads(sys.argv[1]); print(json.dumps(m(**a)))"
    )
    arg = json.dumps(
        {
            "family": family,
            "model_cfg": model_cfg,
            "frames": frames,
            "mode": mode,
            "num_coords": num_coords,
            "batch": batch,
            "device": device,
            "activation_checkpointing": activation_checkpointing,
            "steady_state": steady_state,
        }
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = None
    if steady_state:
        # glibc serves large blocks from its heap once a large free has raised its mmap threshold,
        # and keeps the freed heap resident: the first step's freed activations would then count
        # in the second step's RSS. A fixed threshold unmaps every freed tensor of 128 KB or more.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run(
        [sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout, cwd=root, env=env
    )
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no output"
        low = res.stderr.lower()  # CUDA's "out of memory", the CPU allocator's "can't allocate memory"
        if "out of memory" in low or "can't allocate memory" in low or res.returncode in (-9, 137):
            return {"peak_bytes": None, "oom": True}
        raise RuntimeError(f"memory measurement failed for {family}/{mode}, {frames} frames: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def max_batch(
    cfg,
    mode: str,
    num_coords: int,
    budget_bytes: int,
    device: str,
    limit: int = 4096,
    family: str = "coordtok",
    frames: int | None = None,
    deadline: float | None = None,
) -> int:
    """Largest batch whose training step fits ``budget_bytes`` on ``device`` (doubling, then bisection).

    ``deadline`` (a ``time.monotonic()`` value): no probe starts after it; the search then returns
    the largest batch seen to fit so far (a lower bound; 0 when none was probed)."""

    def fits(b: int) -> bool:
        r = step_memory(cfg, mode, num_coords, b, device, family=family, frames=frames)
        return r.get("peak_bytes") is not None and r["peak_bytes"] <= budget_bytes

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if out_of_time() or not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and not out_of_time() and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1 and not out_of_time():
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---------------------------------------------------------------------------- what fits


class ProfileError(CoordTokError, ValueError):
    """A profile this machine cannot run (one line): refused before anything is allocated."""


def available_memory(device: str) -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)``: what a step can still take on ``device``. CUDA:
    the device's free memory; a CPU: the kernel's ``MemAvailable`` (``/proc/meminfo``, Linux:
    free memory plus what the page cache can give back); ``(None, ...)`` where neither is known."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free), f"free on {dev}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    return None, "not known on this system"


def check_memory(
    targets,
    frames: list[int],
    num_coords: int,
    device: str,
    budget_bytes: int | None = None,
    available: int | None = None,
    source: str = "",
) -> None:
    """One-line :class:`ProfileError` for what cannot fit on ``device``, before any real step runs:
    a max-batch ``budget_bytes`` beyond the available memory (the search grows the batch until a
    step passes the budget, so it would exhaust the machine first), or a ``(family, model config,
    mode)`` target whose batch-1 step at some clip length needs more than is available by
    :func:`step_memory_estimate` (weights, gradients, AdamW's moments and the activations autograd
    keeps, from the shapes on the meta device: measured CPU peaks run higher, never lower, so a
    refusal is never wrong). ``available`` defaults to :func:`available_memory`."""
    if available is None:
        available, source = available_memory(device)
        if available is None:
            return
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731
    where = f"on {device} ({source})"
    if budget_bytes is not None and budget_bytes > available:
        raise ProfileError(
            f"--budget-gb {budget_bytes / 1e9:.15g}: more than the {gb(available)} available {where}; the "
            f"max-batch search grows the batch until a step passes the budget and would run out of "
            f"memory first: pass --budget-gb {math.floor(available / 1e9)} or less"
        )
    for t in frames:
        for family, model_cfg, mode in targets:
            need = step_memory_estimate(family, model_cfg, t, mode, num_coords, 1)["total_bytes"]
            if need > available:
                raise ProfileError(
                    f"{t} frames, {LABELS.get(mode, mode)}: one training step needs an estimated "
                    f"{gb(need)} (weights, gradients, AdamW moments, activations) but {gb(available)} "
                    f"is available {where}; profile fewer --frames, or pass --no-memory for FLOPs "
                    f"alone"
                )


def profile(
    config,
    frames: list[int],
    num_coords: int = 1024,
    device: str | None = None,
    measure_memory: bool = True,
    budget_gb: float = 24.0,
    max_batch_search: bool | None = None,
    modes: tuple[str, ...] = MODES,
    progress=print,
    baselines=(),
    estimate_batch: int | None = None,
    measure_checkpointing: bool = False,
) -> list[dict]:
    """One row per (clip length, tokenizer): FLOPs, peak memory, max batch (GPU), and, given an
    ``estimate_batch`` (``coordtok profile``: 1 unless ``--estimate-batch``), the estimated per-GPU
    bytes of a step at that batch with and without activation checkpointing
    (:func:`step_memory_estimate`; ``est_bytes``, ``est_bytes_ckpt``).

    ``config`` is a CoordTok config (its ``modes``: sampled coordinates, every patch);
    ``baselines`` are baseline configs (``configs/baselines/*.yaml``) profiled beside it.
    ``measure_checkpointing`` also measures the batch-1 step with checkpointing (``peak_bytes_ckpt``).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    search = device.startswith("cuda") if max_batch_search is None else max_batch_search
    targets = [("coordtok", to_dict(load_model_config(config)), mode) for mode in modes]
    for path in baselines:
        if prefixed_kind(path) is not None:  # diffusers:<ClassName or folder>, at the CoordTok config's frame side
            targets.append((str(path), {"source": str(path), "size": targets[0][1]["size"]}, str(path)))
            continue
        family = family_of(path)
        targets.append((family, load_yaml(path)["model"], family))
    if measure_memory or search:  # nothing is allocated before this says it fits
        check_memory(targets, frames, num_coords, device, int(budget_gb * 1e9) if search else None)
    rows = []
    for t in frames:
        for family, model_cfg, mode in targets:
            row = {"frames": t, "mode": mode, "family": family, "clip_frames": clip_frames(family, model_cfg, t)}
            if prefixed_kind(family) is not None:
                # a diffusers autoencoder: encoding, decoding and a training step, on the meta device
                # where it runs there, else on this CPU (counted_on)
                from .diffusers_vae import coding_flops

                c = coding_flops(family, t, model_cfg["size"], model_cfg.get("config"), train=True)
                row.update(
                    flops=c["train"], encode_flops=c["encode"], decode_flops=c["decode"], counted_on=c["counted_on"]
                )
            else:
                row.update(step_flops(model_cfg, mode, num_coords, family=family, frames=t))
            if estimate_batch:
                est = step_memory_estimate(family, model_cfg, t, mode, num_coords, estimate_batch)
                row.update(
                    est_batch=estimate_batch,
                    est_bytes=est["total_bytes"],
                    est_bytes_ckpt=est["total_bytes_checkpointed"],
                )
            if measure_memory:
                mem = step_memory(model_cfg, mode, num_coords, 1, device, family=family, frames=t)
                row["peak_bytes"] = mem.get("peak_bytes")
                if measure_checkpointing:
                    row["peak_bytes_ckpt"] = step_memory(
                        model_cfg, mode, num_coords, 1, device, family=family, frames=t, activation_checkpointing=True
                    ).get("peak_bytes")
            if search:
                row["max_batch"] = max_batch(
                    model_cfg, mode, num_coords, int(budget_gb * 1e9), device, family=family, frames=t
                )
            rows.append(row)
            progress(_row_text(row))
    return rows


def _row_text(r: dict) -> str:
    mem = "" if r.get("peak_bytes") is None else f", peak {r['peak_bytes'] / 1e9:.2f} GB"
    if r.get("peak_bytes_ckpt") is not None:
        mem += f" ({r['peak_bytes_ckpt'] / 1e9:.2f} GB checkpointed)"
    est = (
        ""
        if "est_bytes" not in r
        else (
            f", estimated {r['est_bytes'] / 1e9:.2f} GB / {r['est_bytes_ckpt'] / 1e9:.2f} GB "
            f"checkpointed at batch {r['est_batch']}"
        )
    )
    mb = "" if "max_batch" not in r else f", max batch {r['max_batch']}"
    return f"{r['frames']:4d} frames, {LABELS.get(r['mode'], r['mode'])}: {r['flops'] / 1e12:.3f} TFLOP{mem}{est}{mb}"


def write_report(rows: list[dict], out_dir: str | Path, title: str, device: str) -> None:
    """``profile.json``, ``profile.md`` and PNG plots (FLOPs, memory, max batch against clip length)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    out = Path(out_dir)
    write_json(out / "profile.json", {"title": title, "device": device, "rows": rows}, what="profile")
    est_batch = next((r["est_batch"] for r in rows if "est_batch" in r), None)
    lines = [
        f"# {title}",
        "",
        f"device for memory: {device}",
        "",
        "Peak memory: measured, one step at batch 1 (with activation checkpointing where measured)."
        + (
            ""
            if est_batch is None
            else f" Estimated: per-GPU bytes of an fp32 step with AdamW at batch {est_batch}, from the model's "
            "shapes (`eval.profile.step_memory_estimate`), without / with `train.activation_checkpointing`."
        ),
        "",
        "| frames | tokenizer | frames in the step | TFLOP / step | peak memory (GB) | peak, checkpointed (GB) "
        "| estimated (GB) | estimated, checkpointed (GB) | max batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gb = lambda r, k: "n/a" if r.get(k) is None else f"{r[k] / 1e9:.3f}"
    for r in rows:
        label = LABELS.get(r["mode"], r["mode"]) + (f" ({r['coords']} coordinates)" if "coords" in r else "")
        lines.append(
            f"| {r['frames']} | {label} | {r.get('clip_frames', r['frames'])} | {r['flops'] / 1e12:.4f} | "
            f"{gb(r, 'peak_bytes')} | {gb(r, 'peak_bytes_ckpt')} | {gb(r, 'est_bytes')} | "
            f"{gb(r, 'est_bytes_ckpt')} | {r.get('max_batch', 'n/a')} |"
        )
    coding = [r for r in rows if "encode_flops" in r]
    if coding:  # the diffusers autoencoders: inference cost beside the training step
        lines += [
            "",
            "Encoding and decoding one clip (posterior mode, no gradients); FLOPs counted on the device "
            "named (meta: exact from the shapes; cpu: a real run, where the model fails on meta).",
            "",
            "| frames | autoencoder | frames coded | encode TFLOP | decode TFLOP | training TFLOP / step "
            "| counted on |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['frames']} | {r['mode']} | {r['clip_frames']} | {r['encode_flops'] / 1e12:.4f} | "
            f"{r['decode_flops'] / 1e12:.4f} | {r['flops'] / 1e12:.4f} | {r['counted_on']} |"
            for r in coding
        ]
    write_text(out / "profile.md", "\n".join(lines) + "\n", what="profile table")

    panels = [
        ("flops", "training TFLOP / step", 1e12, "profile_flops.png"),
        ("peak_bytes", "peak memory of a step (GB)", 1e9, "profile_memory.png"),
        ("max_batch", "max batch at the memory budget", 1, "profile_max_batch.png"),
    ]
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


__all__ = [
    "profile",
    "write_report",
    "step_flops",
    "step_memory",
    "step_memory_estimate",
    "max_batch",
    "model_for_frames",
    "analytic_linear_flops",
    "analytic_attention_flops",
    "build_step",
    "family_of",
]
