"""Video loading speed on UCF-101-like files (XviD AVI, 320x240, 25 fps), 128 frames to 128x128.

    python -m bench.dataloader [--files 6] [--rounds 3] [--batches 6]

Prints, per clip on one thread (median over every clip and round, the ways interleaved clip by
clip so that a busy CPU slows them alike):

* decord's decoding of the clip's 128 contiguous frames alone (the floor any loader pays);
* decord decoding straight to 171x128 (swscale resizing inside the decoder);
* the reference's transform: decord, then per frame a PIL image, a bicubic resize of the short side
  to 128 (the long side truncated, 170), a center crop and a float tensor in [0, 1];
* the float32 bicubic antialiased resize this project used before (the whole clip at once);
* this project's item (``VideoClipDataset(..., uint8=True)``: decord, torch's uint8 bicubic
  antialiased resize, center crop), as the DataLoader workers produce it;

then clips/s through a ``DataLoader`` with 1 and 2 workers (persistent, prefetching, uint8 batches
of 4; worker start-up excluded), the resize's quality (PSNR against the float32 bicubic
antialiased frames), and an estimate of the clips/s one GPU consumes at the paper's recipe.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import decord
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from bench.common import machine
from bench.ucf_layout import ucf_like_avi

FRAMES, SIZE = 128, 128
A100_BF16_PEAK = 312e12  # FLOP/s, dense
ASSUMED_UTILIZATION = 0.40
PAPER_BATCH, PAPER_GPUS = 256, 8  # the recipe's global batch on the README's 8-GPU command


def make_files(folder: Path, n: int) -> list[Path]:
    """``n`` UCF-like AVIs: 150 frames of bikes.mp4 from different starts, every third one 132
    frames of bigbuckbunny.mp4 (a 16:9 720p source squashed to 4:3, like the rest)."""
    from coordtok.video_io import sample_video_paths

    src = sample_video_paths()
    files = []
    for i in range(n):
        if i % 3 == 2:
            files.append(ucf_like_avi(folder / f"v_{i:02d}.avi", src["bigbuckbunny"], 132))
        else:
            files.append(ucf_like_avi(folder / f"v_{i:02d}.avi", src["bikes"], 150, start=(i * 37) % 100))
    return files


# ---------------------------------------------------------------------------- the ways to a clip
def decode(path, start):
    return decord.VideoReader(str(path), num_threads=1).get_batch(list(range(start, start + FRAMES))).asnumpy()


def decoder_resize(path, start):
    """(T, 128, 128, 3) uint8: swscale's resize to 171x128 inside decord, then the center crop."""
    reader = decord.VideoReader(str(path), num_threads=1, width=171, height=SIZE)
    return reader.get_batch(list(range(start, start + FRAMES))).asnumpy()[:, :, 21:149]


def reference_transform(path, start):
    """(T, 128, 128, 3) float in [0, 1] the way the reference's dataset makes it: a PIL image per
    frame, short side bicubic to 128 (long side int(128 * 320 / 240) = 170), center crop, to float."""
    from PIL import Image

    frames = decode(path, start)
    h, w = frames.shape[1:3]
    new_w, new_h = (int(SIZE * w / h), SIZE) if h <= w else (SIZE, int(SIZE * h / w))
    top, left = int(round((new_h - SIZE) / 2)), int(round((new_w - SIZE) / 2))
    out = []
    for frame in frames:
        img = Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + SIZE, top + SIZE))
        out.append(torch.from_numpy(np.array(img)).float().div(255))
    return torch.stack(out)


def float32_before(path, start):
    """(3, T, 128, 128) in [-1, 1]: the whole clip resized in float32 (the path this replaced)."""
    x = rearrange(torch.from_numpy(decode(path, start)), "t h w c -> t c h w").float()
    x = F.interpolate(x, size=(SIZE, 171), mode="bicubic", antialias=True, align_corners=False)
    return rearrange(x[..., 21:149].clamp(0, 255) / 127.5 - 1, "t c h w -> c t h w")


# ---------------------------------------------------------------------------- measurements
def per_clip(ds, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median CPU seconds and wall seconds per clip of every way, interleaved clip by clip. CPU
    time (of this process, one thread) is what a worker core spends, whatever else runs on the
    machine; wall time is what it took here."""
    ways = {
        "decode": decode,
        "decoder_resize": decoder_resize,
        "reference": reference_transform,
        "float32_before": float32_before,
        "ours": None,
    }  # ours: the dataset's item i
    cpu, wall = {k: [] for k in ways}, {k: [] for k in ways}
    for r in range(rounds):
        ds.set_epoch(r)
        for i in range(len(ds)):
            info = ds.videos[i]
            start = ds.window_start(i, info.frames)
            for name, fn in ways.items():
                tic, cpu_tic = time.perf_counter(), time.process_time()
                ds[i] if fn is None else fn(info.path, start)
                cpu[name].append(time.process_time() - cpu_tic)
                wall[name].append(time.perf_counter() - tic)
    return {k: statistics.median(v) for k, v in cpu.items()}, {k: statistics.median(v) for k, v in wall.items()}


def loader_rate(ds, workers: int, batches: int, batch_size: int = 4) -> tuple[float, float]:
    """``(clips/s, worker CPU seconds per clip)`` through a DataLoader of ``workers`` processes:
    the rate after its first batch (start-up) in wall time, and the CPU time its workers spent on
    all clips, read from the finished workers' resource usage."""
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=2,
        sampler=torch.utils.data.RandomSampler(
            ds, replacement=True, num_samples=batch_size * (batches + 1), generator=torch.Generator().manual_seed(0)
        ),
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    it = iter(loader)
    first = next(it)["video"].shape[0]
    tic, n = time.perf_counter(), 0
    for batch in it:
        assert batch["video"].dtype == torch.uint8
        n += batch["video"].shape[0]
    rate = n / (time.perf_counter() - tic)
    del it, loader  # the last references (a persistent loader keeps its iterator): workers joined, so
    # their CPU time is in RUSAGE_CHILDREN now
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rate, cpu / (n + first)


def psnr_255(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(255**2 / F.mse_loss(a.double(), b.double()).item())


def quality(path) -> dict[str, float]:
    """PSNR (dB) over one 128-frame clip of each resize against float32 bicubic antialiased frames."""
    from PIL import Image

    from coordtok.video_io import resize_center_crop

    raw = torch.from_numpy(decode(path, 0))
    x = rearrange(raw, "t h w c -> t c h w")
    ref = F.interpolate(x.float(), size=(SIZE, 171), mode="bicubic", antialias=True, align_corners=False)
    ref = ref[..., 21:149].clamp(0, 255)
    ours = resize_center_crop(x, SIZE)
    swscale = rearrange(torch.from_numpy(decoder_resize(path, 0)), "t h w c -> t c h w")
    bilinear = F.interpolate(x, size=(SIZE, 171), mode="bilinear", antialias=True, align_corners=False)[..., 21:149]
    pil = torch.stack(
        [torch.from_numpy(np.array(Image.fromarray(f).resize((171, SIZE), Image.BICUBIC))) for f in raw.numpy()]
    )
    pil = rearrange(pil[:, :, 21:149], "t h w c -> t c h w")
    return {
        "ours (torch uint8 bicubic, antialiased)": psnr_255(ours, ref),
        "PIL BICUBIC (the reference's filter), same size": psnr_255(pil, ref),
        "decord/swscale resize in the decoder": psnr_255(swscale, ref),
        "torch uint8 bilinear, antialiased": psnr_255(bilinear, ref),
    }


def gpu_need() -> list[tuple[str, float, float]]:
    """``(what, FLOPs per clip, clips/s one GPU consumes)`` for training steps of the paper's
    models (FLOPs counted on the meta device, eval.flops' counter) at 40% of an A100's bf16 peak."""
    from coordtok.config import load_tokenizer_config
    from eval.profile import step_flops

    rows = []
    for name, mode, n in (("small", "coordtok", 1024), ("small", "stage2", 4096), ("large", "coordtok", 1024)):
        cfg = load_tokenizer_config(f"configs/tokenizer/{name}.yaml")
        flops = step_flops(cfg.model, mode, num_coords=n, batch=1)["flops"]
        what = "stage 1 (N = 1024)" if mode == "coordtok" else "stage 2 (16 whole frames, N = 4096, LPIPS)"
        rows.append((f"CoordTok-{name[0].upper()}, {what}", flops, ASSUMED_UTILIZATION * A100_BF16_PEAK / flops))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3, help="random windows per file for the per-clip timings")
    p.add_argument("--batches", type=int, default=6, help="timed DataLoader batches of 4 per worker count")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # per worker core: a DataLoader worker runs one thread too
    from coordtok.data import VideoClipDataset

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.files)
        ds = VideoClipDataset(files, num_frames=FRAMES, size=SIZE, uint8=True, cache_dir=False)
        t, wall = per_clip(ds, args.rounds)
        print(
            f"\nper clip, one thread, median of {len(ds) * args.rounds} clips ({args.files} files x {args.rounds}); "
            f"CPU time (clips/s per core), then wall time here (load average {os.getloadavg()[0]:.1f}):"
        )
        labels = {
            "decode": "decord get_batch of 128 contiguous frames (decode only)",
            "decoder_resize": "decord decoding to 171x128 (swscale in the decoder)",
            "reference": "the reference's transform (decord, per-frame PIL bicubic, to float)",
            "float32_before": "float32 bicubic antialiased resize (this project before)",
            "ours": "this project's item (decord, uint8 bicubic antialiased, uint8 out)",
        }
        for k, label in labels.items():
            print(f"  {label:<72} {t[k] * 1e3:7.1f} ms CPU {1 / t[k]:6.2f} clips/s | {wall[k] * 1e3:7.1f} ms wall")
        print(
            f"  ours / decode-only rate: {t['decode'] / t['ours']:.2f} (CPU), "
            f"{wall['decode'] / wall['ours']:.2f} (wall)"
        )
        print("\nDataLoader (uint8 batches of 4, persistent workers, prefetch 2):")
        for w in (1, 2):
            rate, cpu = loader_rate(ds, w, args.batches * w)
            print(
                f"  {w} worker{'s' if w > 1 else ' '}: {1 / cpu:6.2f} clips/s per worker core (worker CPU time "
                f"{cpu * 1e3:.1f} ms per clip); wall here {rate:6.2f} clips/s, {rate / w:6.2f} per worker (load "
                f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
            )
        print("\nresize quality, PSNR over a 128-frame clip against float32 bicubic antialiased frames:")
        for k, v in quality(files[0]).items():
            print(f"  {k:<52} {v:5.1f} dB")
    print(
        f"\nwhat one GPU consumes (ESTIMATE: step FLOPs at {ASSUMED_UTILIZATION:.0%} of an A100's bf16 peak "
        f"{A100_BF16_PEAK / 1e12:.0f} TFLOP/s; per-GPU batch {PAPER_BATCH // PAPER_GPUS} = {PAPER_BATCH} on "
        f"{PAPER_GPUS} GPUs):"
    )
    per_core = 1 / t["ours"]
    for what, flops, rate in gpu_need():
        step = PAPER_BATCH // PAPER_GPUS / rate
        print(
            f"  {what}: {flops / 1e12:.3f} TFLOP per clip -> {rate:6.1f} clips/s per GPU "
            f"(a {step:.2f} s step), ~{math.ceil(rate / per_core)} worker cores at this machine's rate"
        )


if __name__ == "__main__":
    main()
