"""Long videos through a tokenizer that only takes short chunks.

A conv-3D tokenizer trained on 17-frame clips reconstructs a 128-frame video chunk by chunk; the
results are stitched back together. Two stitchings are implemented:

* ``blend="drop"`` (default, ``overlap=1``): the CoordTok protocol for causal 1 + 16 tokenizers
  (Jang et al., "Efficient Long Video Tokenization via Coordinate-based Patch Reconstruction",
  appendix C.1). Windows of 17 frames start every 16 frames, so consecutive windows share one
  frame; the shared frame is taken from the earlier window and the later window's copy (its first
  frame, which a causal tokenizer encodes on its own, without temporal context) is dropped. That
  this is the copy dropped is our reading. 128 frames -> 8 windows, 8 x 5 x 16 x 16 = 10,240
  MAGVIT-v2 tokens at 128 x 128; window ``j``'s own frames start at ``16 j + 1``.
* ``blend="linear"`` (ProMAG's, use ``overlap=4``): windows of 17 frames overlapping by 4, the
  overlap blended in pixel space with linear weights ``(k + 1) / (overlap + 1)`` for the later
  window at overlap frame ``k`` and one minus that for the earlier, so the weights of every frame
  sum to one. CoordTok takes a video longer than its clip the same way (``eval.tokenizers``):
  windows of its clip length overlapping by :func:`default_overlap` frames, blended linearly, the
  short last window masked by CoordTok rather than padded (``pad=False``).

The last window is usually short (128 frames: frames 112..127, 16 of 17). It is padded at its
**end** by repeating its last frame up to the chunk length; a causal codec's output for the real
frames cannot depend on frames after them, so the padding changes nothing it returns for them, and
the padded frames are discarded. (A non-causal codec does see the padding; the padding is then the
least surprising continuation: a still frame.)
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

__all__ = [
    "chunk_windows",
    "chunk_boundaries",
    "blend_weights",
    "stitch_windows",
    "reconstruct_chunked",
    "default_overlap",
]

_BLENDS = ("drop", "linear")


def default_overlap(frames: int) -> int:
    """CoordTok's default window overlap for clips longer than its ``frames``: an eighth of the
    clip (16 of 128 frames).

    Why an eighth: the blend hands one window's reconstruction over to the next over ``K`` frames,
    so the per-frame step of the weights is ``1 / (K + 1)`` (1/17, 6 % at 16 frames) and a mismatch
    between the two windows fades in rather than jumps; the cost is the extra windows, ``frames /
    (frames - K)`` times the encoding and decoding of back-to-back windows (1.14x at 16 of 128,
    against 1.31x for ProMAG's 4 of 17). Longer overlaps smooth more but grow that factor quickly
    (2x at half the clip, the most :func:`chunk_windows` allows).
    """
    return max(1, frames // 8)


def _check(T: int, chunk: int, overlap: int, blend: str = "drop") -> None:
    if T < 1:
        raise ValueError(f"a video needs at least one frame, got T={T}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if overlap < 0 or 2 * overlap > chunk:
        # 2 * overlap <= chunk keeps every frame inside at most two windows
        raise ValueError(f"overlap must be in [0, chunk / 2] = [0, {chunk // 2}], got {overlap}")
    if blend not in _BLENDS:
        raise ValueError(f"blend must be one of {', '.join(_BLENDS)}, got {blend!r}")


def chunk_windows(T: int, chunk: int = 17, overlap: int = 1) -> list[tuple[int, int]]:
    """The ``[start, end)`` frame ranges (``end <= T``) of the windows covering ``T`` frames.

    Window ``j`` starts at ``j * (chunk - overlap)``; windows are added until one reaches frame
    ``T - 1``. The last one may be shorter than ``chunk`` (it is padded when coded) but always
    holds more than ``overlap`` real frames. ``chunk_windows(128)`` is 8 windows, the last
    ``(112, 128)``; ``chunk_windows(129)`` is 8 full windows.
    """
    _check(T, chunk, overlap)
    stride = chunk - overlap
    n = 1 if T <= chunk else 1 + math.ceil((T - chunk) / stride)
    return [(j * stride, min(j * stride + chunk, T)) for j in range(n)]


def chunk_boundaries(T: int, chunk: int = 17, overlap: int = 1, blend: str = "drop") -> list[int]:
    """The first output frame each later window contributes to (ascending).

    ``drop``: ``start + overlap`` (the window's own frames); ``linear``: ``start`` (where the
    blend begins; the window is fully in charge from ``start + overlap``). A seam, if any, lies
    between frames ``b - 1`` and ``b``. Pass these to :func:`eval.seams.seam_jump`; for a
    tokenizer without chunks pass the same list so the numbers compare.
    """
    _check(T, chunk, overlap, blend)
    shift = overlap if blend == "drop" else 0
    return [s + shift for s, _ in chunk_windows(T, chunk, overlap)[1:]]


def _later_weights(overlap: int, blend: str) -> list[float]:
    """Weight of the later window on the ``overlap`` shared frames (the earlier one gets 1 - w)."""
    if blend == "drop":
        return [0.0] * overlap
    return [(k + 1) / (overlap + 1) for k in range(overlap)]


def blend_weights(T: int, chunk: int = 17, overlap: int = 1, blend: str = "drop") -> list[torch.Tensor]:
    """Per window, the float64 weight of each of its real frames in the stitched video.

    ``out[t] = sum_j w_j[t - start_j] * recon_j[t - start_j]`` over the windows holding ``t``;
    for every ``t`` the weights sum to one. ``drop``: the later window's ``overlap`` shared frames
    weigh 0, the earlier window's 1. ``linear``: ``(k + 1) / (overlap + 1)`` and one minus that.
    """
    _check(T, chunk, overlap, blend)
    windows = chunk_windows(T, chunk, overlap)
    later = torch.tensor(_later_weights(overlap, blend), dtype=torch.float64)
    weights = []
    for j, (s, e) in enumerate(windows):
        w = torch.ones(e - s, dtype=torch.float64)
        if j > 0:
            w[:overlap] = later
        if j < len(windows) - 1:
            w[e - s - overlap :] = 1 - later
        weights.append(w)
    return weights


def stitch_windows(
    outputs: Iterable[torch.Tensor], T: int, chunk: int = 17, overlap: int = 1, blend: str = "drop"
) -> torch.Tensor:
    """Stitch the windows' reconstructions into one video ``(B, C, T, ...)``.

    ``outputs`` yields, in window order, each :func:`chunk_windows` window's reconstruction
    ``(B, C, e - s, ...)`` (its real frames only; it may be a generator, so a window is decoded
    only when it is stitched). Overlaps are stitched as :func:`blend_weights` says, written as
    ``lerp(earlier, later, w)`` so that identical window outputs stitch back bit-exactly. The one
    stitcher of :func:`reconstruct_chunked` and of videos decoded from stored window latents.
    """
    _check(T, chunk, overlap, blend)
    windows = chunk_windows(T, chunk, overlap)
    later = _later_weights(overlap, blend)
    out, n = None, 0
    for (s, e), rec in zip(windows, outputs):
        n += 1
        if rec.shape[2] != e - s:
            raise ValueError(f"window [{s}, {e}) needs {e - s} frames, got shape {tuple(rec.shape)}")
        if out is None:
            out = rec.new_empty(*rec.shape[:2], T, *rec.shape[3:])
            out[:, :, s:e] = rec
            continue
        if overlap:
            w = torch.tensor(later, dtype=rec.dtype, device=rec.device).view(1, 1, -1, *[1] * (rec.ndim - 3))
            out[:, :, s : s + overlap] = torch.lerp(out[:, :, s : s + overlap], rec[:, :, :overlap], w)
        out[:, :, s + overlap : e] = rec[:, :, overlap:]
    if n != len(windows):
        raise ValueError(
            f"{T} frames in windows of {chunk} overlapping by {overlap} need {len(windows)} windows, got {n}"
        )
    return out


def reconstruct_chunked(
    codec_fn: Callable[[torch.Tensor], torch.Tensor],
    video: torch.Tensor,
    chunk: int = 17,
    overlap: int = 1,
    blend: str = "drop",
    pad: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Reconstruct a long video ``(B, C, T, H, W)`` window by window with ``codec_fn``.

    ``codec_fn`` maps a ``(B, C, chunk, H, W)`` clip to its reconstruction of the same shape (e.g.
    ``lambda x: model(x)[0]`` for :class:`~baselines.magvit2.MagvitV2`). Windows are
    :func:`chunk_windows`; a short last window is padded at its end by repeating its last frame and
    the padding is cut from the output; ``pad=False`` hands it over unpadded instead, for a codec
    that masks a short clip itself (CoordTok). Overlaps are stitched by :func:`stitch_windows`.

    Returns ``(recon (B, C, T, H, W) in codec_fn's dtype, info)`` with ``info``: ``boundaries``
    (:func:`chunk_boundaries`), ``num_chunks``, ``windows`` (``[start, end)`` pairs), ``pad``
    (frames padded onto the last window), ``blend`` and ``overlap``.
    """
    if video.ndim != 5:
        raise ValueError(f"expected a video (B, C, T, H, W), got shape {tuple(video.shape)}")
    T = video.shape[2]
    _check(T, chunk, overlap, blend)
    windows = chunk_windows(T, chunk, overlap)
    padded = chunk - (windows[-1][1] - windows[-1][0]) if pad else 0

    def outputs():
        for s, e in windows:
            clip = video[:, :, s:e]
            n = chunk - (e - s) if pad else 0
            if n:
                clip = torch.cat([clip, clip[:, :, -1:].expand(-1, -1, n, -1, -1)], dim=2)
            rec = codec_fn(clip)
            if tuple(rec.shape) != tuple(clip.shape):
                raise ValueError(f"codec_fn returned shape {tuple(rec.shape)} for a clip of shape {tuple(clip.shape)}")
            yield rec[:, :, : e - s]

    out = stitch_windows(outputs(), T, chunk, overlap, blend)
    info = {
        "boundaries": chunk_boundaries(T, chunk, overlap, blend),
        "num_chunks": len(windows),
        "windows": windows,
        "pad": padded,
        "blend": blend,
        "overlap": overlap,
    }
    return out, info


class CausalChunkGeometry:
    """What every causal conv-3D tokenizer (MAGVIT-v2, ProMAG) knows of its chunks: ``1 + f k``
    frames of ``H, W`` divisible by ``s`` become ``1 + k`` latent frames of ``H/s x W/s``.

    The class using it has ``cfg`` with ``frames``, ``size``, ``time_factor`` (``f``) and
    ``space_factor`` (``s``), and names its latent channel count in :attr:`LATENT_CHANNELS` (a
    ``cfg`` field) and itself in :attr:`NAME` (for messages).
    """

    NAME = "tokenizer"
    LATENT_CHANNELS = "latent_channels"

    @property
    def chunk_frames(self) -> int:
        """Frames per chunk the tokenizer is built for (17)."""
        return self.cfg.frames

    def latent_shape(self, frames: int, size: int | None = None) -> tuple[int, int, int, int]:
        """``(channels, 1 + k, H/s, W/s)`` for one pass over ``frames = 1 + f k`` frames of ``size^2``."""
        cfg, size = self.cfg, size or self.cfg.size
        if frames < 1 or (frames - 1) % cfg.time_factor:
            raise ValueError(f"a causal chunk has 1 + {cfg.time_factor}k frames, got {frames}")
        if size % cfg.space_factor:
            raise ValueError(f"size {size} is not divisible by {cfg.space_factor}")
        s = size // cfg.space_factor
        return getattr(cfg, self.LATENT_CHANNELS), 1 + (frames - 1) // cfg.time_factor, s, s

    def _check(self, video) -> None:
        cfg = self.cfg
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if (t - 1) % cfg.time_factor or h % cfg.space_factor or w % cfg.space_factor:
            raise ValueError(
                f"{self.NAME} takes 1 + {cfg.time_factor}k frames of H, W divisible by "
                f"{cfg.space_factor}, got T, H, W = {t}, {h}, {w}"
            )
