"""Reconstruct one clip, measure it and write the side-by-side video (``coordtok reconstruct``)."""
from __future__ import annotations

from pathlib import Path

import torch

from .model import CoordTok
from .video_io import side_by_side, to_uint8, write_mp4


def try_lpips(vgg_path: str | None = None, device="cpu"):
    """``(LPIPS module or None, reason)``: LPIPS is reported as unavailable, not fatal, without VGG weights."""
    from .lpips import LPIPS, LPIPSWeightsMissing

    try:
        return LPIPS.from_pretrained(vgg_path).to(device), None
    except LPIPSWeightsMissing as e:
        return None, str(e)


@torch.no_grad()
def evaluate_clip(model: CoordTok, video: torch.Tensor, num_frames: int, out_path: str | Path | None,
                  device="cpu", frames_per_chunk: int | None = None, vgg_path: str | None = None,
                  lpips=None, fps: float = 25) -> dict:
    """Reconstruct ``video`` ``(3, T, H, W)`` in [-1, 1]; returns PSNR / SSIM / LPIPS over its valid frames.

    Writes ``ground truth | reconstruction`` to ``out_path`` (mp4) when given.
    """
    from eval.metrics import video_metrics

    model = model.to(device).eval()
    x = video[None].to(device)
    nf = torch.tensor([int(num_frames)], device=device)
    rec = model.reconstruct(x, nf, frames_per_chunk).clamp(-1, 1)
    note = None
    if lpips is None:
        lpips, note = try_lpips(vgg_path, device)
    m = video_metrics(x, rec, lpips=lpips, num_frames=nf)
    out = {"psnr": float(m["psnr"][0]), "ssim": float(m["ssim"][0]),
           "lpips": float(m["lpips"][0]) if "lpips" in m else None}
    if note:
        out["lpips_note"] = note
    if out_path is not None:
        valid = slice(0, int(num_frames))
        write_mp4(out_path, side_by_side(to_uint8(x[0, :, valid].cpu()), to_uint8(rec[0, :, valid].cpu())), fps=fps)
    return out
