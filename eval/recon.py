"""``coordtok eval-recon``: reconstruction quality of a tokenizer on random real clips.

For ``num_clips`` random 128-frame clips (seeded: random videos, random windows, as the FVD
protocol draws real clips) every clip is encoded and decoded whole (all coordinates at once),
then measured:

* PSNR / SSIM / LPIPS per frame, averaged over frames, then over clips ([0, 1] pixels);
* rFVD between the real and reconstructed clips, on the 128-frame clips and on their 16-frame
  sub-clips (each 128-frame clip cut into 8), with an I3D detector;
* optionally the analysis metrics (dynamics / frequency magnitude against PSNR).

Clips are split over processes (``accelerate launch``); features and per-clip metrics are
gathered on the main process, which writes ``recon.json``, ``recon.md`` and a few side-by-side
videos.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from coordtok.recon import try_lpips
from coordtok.video_io import side_by_side, to_uint8, write_mp4

from .metrics import video_metrics


def _to_model(clips_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` -> float ``(B, 3, T, H, W)`` in [-1, 1]."""
    return rearrange(clips_u8.float() / 127.5 - 1, "b t h w c -> b c t h w")


def eval_recon(ckpt, real, out_dir, num_clips: int = 10000, seed: int = 0, kind: str | None = None,
               split: str | None = None, fold: int = 1, detector: str | None = "videogpt",
               detector_path=None, sub_clip_frames: int = 16, batch_size: int = 1,
               frames_per_chunk: int | None = None, vgg_path=None, write_videos: int = 4, analysis: bool = False,
               progress: bool = True) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from coordtok.train import load_tokenizer

    from .analysis import dynamics_magnitude, frequency_magnitude, write_analysis
    from .fvd import dataset_spec, fvd_from_features, real_clips, split_clips

    accelerator = Accelerator()
    device = accelerator.device
    model, _ = load_tokenizer(ckpt)
    model.to(device).eval()
    c = model.config
    det = None
    if detector:
        from .i3d import load_detector

        det = load_detector(detector, detector_path, device=device)
    lpips, lpips_note = try_lpips(vgg_path, device)
    clips = real_clips(dataset_spec(real, kind, split, fold), c.frames, c.size, num_clips, seed)
    out = Path(out_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    mine = list(range(accelerator.process_index, len(clips), accelerator.num_processes))
    rows, feats = [], {"real": [], "fake": [], "real_sub": [], "fake_sub": []}
    bar = tqdm(total=len(mine), disable=not (progress and accelerator.is_main_process), desc="eval-recon",
               unit="clip", file=sys.stderr)
    for first in range(0, len(mine), batch_size):
        idx = mine[first:first + batch_size]
        real_u8 = torch.stack([clips[i] for i in idx])  # (B, T, H, W, 3)
        video = _to_model(real_u8).to(device)
        with torch.no_grad():
            rec = model.reconstruct(video, frames_per_chunk=frames_per_chunk).clamp(-1, 1)
        m = video_metrics(video, rec, lpips=lpips)
        fake_u8 = torch.from_numpy(to_uint8(rec.cpu()))
        if det is not None:
            feats["real"].append(det.features(real_u8))
            feats["fake"].append(det.features(fake_u8))
            feats["real_sub"].append(det.features(split_clips(real_u8, sub_clip_frames)))
            feats["fake_sub"].append(det.features(split_clips(fake_u8, sub_clip_frames)))
        for b, i in enumerate(idx):
            row = {"clip": i, **{k: float(v[b]) for k, v in m.items()}}
            if analysis:
                row["dynamics"] = dynamics_magnitude(real_u8[b])
                row["frequency"] = frequency_magnitude(real_u8[b])
            rows.append(row)
            if i < write_videos:
                write_mp4(out / f"recon_{i:04d}.mp4", side_by_side(real_u8[b].numpy(), fake_u8[b].numpy()))
        bar.update(len(idx))
    bar.close()

    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    if det is not None and accelerator.num_processes > 1:
        feats = {k: gather_object([np.concatenate(v)]) for k, v in feats.items()}
    if not accelerator.is_main_process:
        return {}
    rows.sort(key=lambda r: r["clip"])
    result = {"checkpoint": str(ckpt), "clips": len(rows), "frames": c.frames, "size": c.size, "seed": seed,
              **{k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "lpips") if k in rows[0]}}
    if "lpips" not in result:
        result["lpips"] = None
        result["lpips_note"] = lpips_note
    if det is not None:
        cat = {k: np.concatenate(v) for k, v in feats.items()}
        result["detector"] = det.name
        result[f"rfvd_{c.frames}"] = fvd_from_features(cat["real"], cat["fake"])
        result[f"rfvd_{sub_clip_frames}"] = fvd_from_features(cat["real_sub"], cat["fake_sub"])
    (out / "recon.json").write_text(json.dumps({**result, "per_clip": rows}, indent=2))
    (out / "recon.md").write_text(_markdown(result, c.frames, sub_clip_frames))
    if analysis:
        result["analysis"] = write_analysis([{"name": f"clip_{r['clip']:05d}", "psnr": r["psnr"], "dynamics": r["dynamics"],
                                              "frequency": r["frequency"]} for r in rows], out)
    return result


def _markdown(r: dict, frames: int, sub: int) -> str:
    fmt = lambda v, f=".2f": "n/a" if v is None else format(v, f)
    return "\n".join([
        f"# Reconstruction: {r['checkpoint']}", "",
        f"{r['clips']} random {frames}-frame clips at {r['size']}x{r['size']} (seed {r['seed']}).", "",
        f"| rFVD ({frames} frames) | rFVD ({sub}-frame sub-clips) | PSNR | SSIM | LPIPS |",
        "|---|---|---|---|---|",
        f"| {fmt(r.get(f'rfvd_{frames}'), '.1f')} | {fmt(r.get(f'rfvd_{sub}'), '.1f')} | {fmt(r['psnr'])} | "
        f"{fmt(r['ssim'], '.3f')} | {fmt(r['lpips'], '.3f')} |", ""])
