"""Sampling long videos: ``coordtok sample --sit-ckpt S --tokenizer-ckpt C --num N --out DIR``.

noise ``(B, tokens, C)`` -> SiT (EMA weights) + sampler -> normalized flat triplane ->
denormalize with the statistics stored in the SiT checkpoint (or ``--latent-stats``: a
``stats.json``, or the reference run's ``log.txt`` for a reference checkpoint) ->
``Triplane.unflatten`` -> ``CoordTok.decode_video`` (all coordinates of a clip at once by
default) -> uint8 frames -> ``sample_<index>.mp4`` files or one ``samples.npz`` (key ``videos``,
uint8 ``(N, T, H, W, 3)``, the input of FVD), plus one ``contact_sheet.png``.

Randomness: the initial noise of sample ``i`` comes from its own generator seeded by
``(seed, i)``; the SDE's Brownian increments from one generator per batch seeded by
``(seed, batch index, batch size)``. So a seed gives identical videos for a given batch size;
the ODE sampler with a fixed-grid method is independent of the batch size too (up to float
rounding).
"""
from __future__ import annotations

import dataclasses
import contextlib
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from coordtok.checkpoint import load_tokenizer
from coordtok.errors import CoordTokError
from coordtok.fileio import atomic_path, check_writable
from coordtok.loop import SeedTag, inference_precision, mix_seed, resolve_device, resolve_inference_precision
from coordtok.triplane import Triplane

from .cache import short_fingerprint, weights_fingerprint
from .checkpoint import load_sit, require_stats
from .samplers import SAMPLERS, check_steps
from .models import TriplaneSiT
from .stats import LatentStats
from .transport import make_path


class SamplingError(CoordTokError, ValueError):
    """Bad sampling arguments or checkpoints that do not fit together (one-line message)."""


def _check_fit(sit_ckpt, tokenizer_ckpt, model: TriplaneSiT, stats: LatentStats, configs: dict, tokenizer) -> None:
    tc = tokenizer.config
    tok_grid, tok_c = tuple(tc.latent_grid), tc.latent_channels
    if tuple(model.grid) != tok_grid or model.in_channels != tok_c or stats.grid != tok_grid:
        trained_on = f" (its latents came from {configs['tokenizer_ckpt']})" if configs.get("tokenizer_ckpt") else ""
        raise SamplingError(
            f"the SiT checkpoint {sit_ckpt} generates triplanes of grid {list(model.grid)} with {model.in_channels} "
            f"channels but the tokenizer {tokenizer_ckpt} uses grid {list(tok_grid)} with {tok_c} channels; pass the "
            f"tokenizer the latents were encoded with{trained_on}")
    trained = (configs.get("tokenizer") or {}).get("model")
    if trained is not None and trained != dataclasses.asdict(tc):
        diff = sorted(k for k in trained if trained.get(k) != getattr(tc, k, None))
        warnings.warn(f"the tokenizer {tokenizer_ckpt} differs from the one the SiT latents were encoded with "
                      f"(model keys {', '.join(diff)}); samples may decode poorly", stacklevel=2)


def _check_tokenizer_fingerprint(sit_ckpt, tokenizer_ckpt, recorded: str | None, found: str, allow: bool, log) -> None:
    """The SiT generates in the latent space of the tokenizer its cache was encoded with: refuse
    another tokenizer (same grid or not) unless the user says so; an old or reference checkpoint
    records none, which one line says."""
    if recorded is None:
        log(f"note: {sit_ckpt} records no tokenizer fingerprint (a reference or older checkpoint); cannot check "
            f"that {tokenizer_ckpt} is the tokenizer its latents came from")
    elif recorded != found:
        what = (f"the tokenizer {tokenizer_ckpt} (fingerprint {short_fingerprint(found)}) is not the one the SiT "
                f"{sit_ckpt} was trained on (fingerprint {short_fingerprint(recorded)})")
        if not allow:
            raise SamplingError(f"{what}; pass the tokenizer the latents were encoded with, or "
                                f"--allow-tokenizer-mismatch to sample anyway")
        log(f"warning: {what}; sampling anyway (--allow-tokenizer-mismatch)")


def _initial_noise(seed: int, first: int, batch: int, shape) -> torch.Tensor:
    """``(B, *shape)``: sample ``first + b``'s noise from its own generator ``(seed, first + b)``."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(mix_seed(seed, i, SeedTag.SAMPLE_NOISE)))
                        for i in range(first, first + batch)])


class _NpzWriter:
    """``samples.npz`` (key ``videos``) filled batch by batch through a memory-mapped scratch
    ``.npy``, so 2048 clips of 128 x 128 x 128 never sit in RAM at once; the final file appears
    atomically (:func:`coordtok.fileio.atomic_path`) and the scratch file is removed."""

    def __init__(self, path: Path, shape: tuple):
        self.path = path
        fd, npy = tempfile.mkstemp(prefix=".videos.", suffix=".npy", dir=path.parent)
        os.close(fd)
        self.npy = Path(npy)
        self.arr = np.lib.format.open_memmap(self.npy, mode="w+", dtype=np.uint8, shape=shape)

    def put(self, first: int, videos: np.ndarray) -> None:
        self.arr[first:first + len(videos)] = videos

    def close(self) -> Path:
        self.arr.flush()
        del self.arr
        with atomic_path(self.path, "sample file") as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.write(self.npy, arcname="videos.npy")
        self.abort()
        return self.path

    def abort(self) -> None:
        self.arr = None
        with contextlib.suppress(FileNotFoundError):
            self.npy.unlink()


def sample_videos(
    sit_ckpt: str | Path,
    tokenizer_ckpt: str | Path,
    num: int,
    out_dir: str | Path,
    sampler: str = "sde",
    steps: int = 250,
    seed: int = 0,
    batch_size: int = 8,
    fmt: str = "mp4",
    device: str | torch.device | None = None,
    frames_per_chunk: int | None = None,
    fps: float = 25,
    contact_rows: int = 16,
    progress: bool = True,
    latent_stats: str | Path | None = None,
    heads: int | None = None,
    precision: str = "auto",
    allow_tokenizer_mismatch: bool = False,
) -> dict:
    """Generate ``num`` videos and write them to ``out_dir``.

    Args:
        sit_ckpt: a SiT checkpoint (or run folder); its EMA weights and normalization stats are used.
        tokenizer_ckpt: the CoordTok checkpoint whose latents the SiT was trained on (grid and
            channels are checked against the SiT checkpoint).
        sampler: ``sde`` (the paper's Euler-Maruyama), ``heun_sde`` or ``ode`` (torchdiffeq with
            the checkpoint's ``sample.ode_method``, dopri5 by default: ``steps`` then only
            matters for fixed-grid methods).
        steps: sampler steps (velocity calls for ``sde``); the paper uses 250.
        fmt: ``mp4`` -> ``sample_<index>.mp4`` per video; ``npz`` -> ``samples.npz`` with ``videos``
            uint8 ``(N, T, H, W, 3)``. Both write ``contact_sheet.png`` (first ``contact_rows`` videos).
        frames_per_chunk: decode that many frames at a time (bounded memory) instead of the whole
            clip's coordinates at once.
        latent_stats: a ``stats.json`` or a reference run's ``log.txt`` with the latent
            normalization statistics (needed for a reference SiT checkpoint, which holds none).
        heads: attention heads of a reference SiT whose arguments do not name them.
        precision: :data:`coordtok.loop.INFERENCE_PRECISIONS`; ``auto``: TF32 on CUDA (bf16
            autocast when the SiT was trained in bf16), fp32 on a CPU.
        allow_tokenizer_mismatch: sample with a tokenizer whose weights' fingerprint differs from
            the one the SiT checkpoint records (refused otherwise).

    Returns ``{"num", "out_dir", "files", "contact_sheet", "sit_step", "sampler", "steps", "seed",
    "precision"}``.
    """
    from coordtok.video_io import contact_sheet, to_uint8, write_mp4, write_png

    if num < 1 or batch_size < 1:
        raise SamplingError(f"--num and --batch-size must be >= 1, got {num} and {batch_size}")
    if fmt not in ("mp4", "npz"):
        raise SamplingError(f"--format must be mp4 or npz, got {fmt!r}")
    if sampler not in SAMPLERS:
        raise SamplingError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    check_steps(steps, 1 if sampler == "ode" else 2, "--steps")  # SDE grids need two points
    if frames_per_chunk is not None and frames_per_chunk < 1:
        raise SamplingError(f"--frames-per-chunk must be >= 1, got {frames_per_chunk}")
    if not fps > 0:
        raise SamplingError(f"--fps must be positive, got {fps}")
    device = resolve_device(device)
    out_dir = check_writable(out_dir, "sample folder", create=False)

    model, stats, configs = load_sit(sit_ckpt, latent_stats=latent_stats, heads=heads)
    stats = require_stats(stats, sit_ckpt)
    tokenizer, _ = load_tokenizer(tokenizer_ckpt)
    _check_fit(sit_ckpt, tokenizer_ckpt, model, stats, configs, tokenizer)
    _check_tokenizer_fingerprint(sit_ckpt, tokenizer_ckpt, configs.get("tokenizer_fingerprint"),
                                 weights_fingerprint(tokenizer), allow_tokenizer_mismatch,
                                 lambda msg: print(msg, file=sys.stderr))
    precision = resolve_inference_precision(precision, device.type, configs["sit"].train.mixed_precision,
                                            lambda msg: print(msg, file=sys.stderr))
    check_writable(out_dir, "sample folder")  # now create it: the inputs fit together
    model.to(device)
    tokenizer.to(device).eval().requires_grad_(False)
    s = configs["sit"].sample
    path = make_path(configs["sit"].train.path)
    tc = tokenizer.config
    shape = (stats.per_token()[0].shape[1], stats.channels)

    def velocity(x, t):
        return model(x, t)

    def run_sampler(noise: torch.Tensor, g: torch.Generator, show: bool) -> torch.Tensor:
        if sampler == "ode":
            return SAMPLERS["ode"](velocity, noise, method=s.ode_method, atol=s.atol, rtol=s.rtol, num_steps=steps,
                                   progress=show)
        return SAMPLERS[sampler](velocity, noise, num_steps=steps, diffusion_norm=s.diffusion_norm,
                                 last_step_size=s.last_step_size, generator=g, path=path, progress=show)

    num_batches = (num + batch_size - 1) // batch_size
    npz = _NpzWriter(out_dir / "samples.npz", (num, tc.frames, tc.size, tc.size, 3)) if fmt == "npz" else None
    files, sheet_videos = [], []
    bar = tqdm(total=num, disable=not progress, desc="sample", unit="video", dynamic_ncols=True, file=sys.stderr)
    try:
        with torch.no_grad(), inference_precision(precision, device.type):
            for b in range(num_batches):
                first = b * batch_size
                n = min(batch_size, num - first)
                noise = _initial_noise(seed, first, n, shape).to(device)
                g = torch.Generator().manual_seed(mix_seed(seed, b, batch_size, SeedTag.SAMPLE_SDE))
                x = run_sampler(noise, g, progress)
                triplane = Triplane.unflatten(stats.denormalize(x.float()), tuple(stats.grid))
                videos = to_uint8(tokenizer.decode_video(triplane, None, frames_per_chunk))  # (n, T, H, W, 3)
                if npz is not None:
                    npz.put(first, videos)
                else:
                    for k, frames in enumerate(videos):
                        files.append(str(write_mp4(out_dir / f"sample_{first + k:04d}.mp4", frames, fps=fps)))
                sheet_videos.extend(list(videos[: max(0, contact_rows - len(sheet_videos))]))
                bar.update(n)
        if npz is not None:
            files.append(str(npz.close()))
            npz = None
    finally:
        bar.close()
        if npz is not None:
            npz.abort()
    sheet = write_png(out_dir / "contact_sheet.png", contact_sheet(sheet_videos))
    return {"num": num, "out_dir": str(out_dir), "files": files, "contact_sheet": str(sheet),
            "sit_step": configs["step"], "sampler": sampler, "steps": steps, "seed": seed,
            "precision": precision}
