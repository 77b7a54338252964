"""Seam "jumps": how much a chunked reconstruction jumps at chunk boundaries.

A tokenizer that codes a long video in independent chunks leaves discontinuities where chunks
meet (CoordTok, Jang et al., Figure 1b; ProMAG and REGEN fight them by blending overlaps and by
extending the latent). The measure here compares frame-to-frame change of the reconstruction with
the same change in the ground truth::

    d_x(t)   = mean over channels and pixels of |x_t - x_(t-1)|          (t = 1 .. T-1)
    jump(t)  = d_recon(t) - d_real(t)

averaged over the *boundary pairs* (``t`` in ``boundaries``: frame ``t`` is the first frame a new
chunk contributes, :func:`coordtok.chunking.chunk_boundaries`) and over the
*within-chunk pairs* (every other ``t``). A seamless reconstruction has the same mean jump at both.

For a tokenizer without chunks (CoordTok) pass the same boundaries as the chunked baseline it is
compared with (``chunk_boundaries(T)``: every 16 frames for 17-frame causal chunks) so the two
sets of numbers cover the same frame pairs; its boundary and within jumps should then agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["frame_diffs", "seam_jump"]


def _as_video(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` float (taken as is, nominally [-1, 1]) or ``(B, T, H, W, 3)`` uint8
    (mapped to [-1, 1] by ``x / 127.5 - 1``) -> ``(B, 3, T, H, W)`` float64."""
    if x.ndim != 5:
        raise ValueError(f"expected a video batch (B, 3, T, H, W) or uint8 (B, T, H, W, 3), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"a uint8 video must be (B, T, H, W, 3), got shape {tuple(x.shape)}")
        return x.permute(0, 4, 1, 2, 3).double() / 127.5 - 1
    if x.shape[1] != 3:
        raise ValueError(f"a float video must be (B, 3, T, H, W), got shape {tuple(x.shape)}")
    return x.double()


def frame_diffs(video: torch.Tensor) -> torch.Tensor:
    """``d(t) = mean |x_t - x_(t-1)|`` over channels and pixels: ``(B, T - 1)`` float64, entry
    ``t - 1`` for the pair ``(t - 1, t)``. Accepts the layouts of :func:`seam_jump`."""
    v = _as_video(video)
    return (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=(1, 3, 4))


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


@torch.no_grad()
def seam_jump(real: torch.Tensor, recon: torch.Tensor, boundaries: Sequence[int]) -> dict:
    """Mean jump at chunk boundaries against within chunks.

    ``real``, ``recon``: the same layout, either ``(B, 3, T, H, W)`` float in [-1, 1] or
    ``(B, T, H, W, 3)`` uint8 (converted to [-1, 1], so both layouts give numbers on one scale).
    ``boundaries``: frame indices ``t`` in ``[1, T - 1]``; the pair ``(t - 1, t)`` is a boundary
    pair, every other pair is within a chunk.

    Returns a dict of floats: ``boundary`` (mean jump over boundary pairs), ``within`` (mean jump
    over within pairs), ``difference`` (``boundary - within``), ``ratio`` (``boundary / within``,
    NaN when ``within`` is 0; only meaningful when ``within > 0``) -- each the mean over clips,
    except ``ratio``, which is the ratio of the clip-averaged means (a per-clip ratio can blow up
    on a clip whose within jump is near 0) -- and ``per_clip``, the same four keys as lists over
    the batch; plus ``num_boundary_pairs`` and ``num_within_pairs``. With no boundaries,
    ``boundary`` is NaN.
    """
    if real.shape != recon.shape:
        raise ValueError(f"real and recon differ in shape: {tuple(real.shape)} vs {tuple(recon.shape)}")
    jump = frame_diffs(recon) - frame_diffs(real)  # (B, T - 1)
    T = jump.shape[1] + 1
    bset = sorted(set(int(b) for b in boundaries))
    if any(b < 1 or b > T - 1 for b in bset):
        raise ValueError(f"boundaries must lie in [1, {T - 1}] for {T} frames, got {bset}")
    is_b = torch.zeros(T - 1, dtype=torch.bool)
    is_b[[b - 1 for b in bset]] = True
    nan = torch.full((jump.shape[0],), math.nan, dtype=torch.float64)
    b_clip = jump[:, is_b].mean(1) if is_b.any() else nan
    w_clip = jump[:, ~is_b].mean(1) if (~is_b).any() else nan
    per_clip = {
        "boundary": b_clip.tolist(),
        "within": w_clip.tolist(),
        "difference": (b_clip - w_clip).tolist(),
        "ratio": [_ratio(a, b) for a, b in zip(b_clip.tolist(), w_clip.tolist())],
    }
    boundary, within = float(b_clip.mean()), float(w_clip.mean())
    return {
        "boundary": boundary,
        "within": within,
        "difference": boundary - within,
        "ratio": _ratio(boundary, within),
        "per_clip": per_clip,
        "num_boundary_pairs": int(is_b.sum()),
        "num_within_pairs": int((~is_b).sum()),
    }
