"""Frechet Video Distance (FVD) between real clips of a dataset and generated (or reconstructed) videos.

FVD = ``||mu_r - mu_f||^2 + tr(S_r + S_f - 2 sqrtm(S_r S_f))`` between Gaussians fitted to I3D
features (:mod:`eval.i3d`) of real and fake clips, real part (:mod:`eval.frechet`).

Protocol (StyleGAN-V, as used for the paper's generation FVD): ``num_videos`` (2048) real clips of
``frames`` (128) consecutive frames against as many fake videos. Real clips are *random*: a seeded
choice of videos (without replacement; with replacement only when the dataset has fewer videos
than ``num_videos``) and a seeded random window in each, read with the training transform
(short side bicubic-resized to ``size`` with antialiasing, center crop: the one loading path,
:func:`coordtok.video_io.resize_center_crop`, so real clips are exactly what training sees; the
detector's own bilinear resize to 224 follows), videos shorter than ``frames`` skipped. The
16-frame variant (``clip_frames=16``) splits every 128-frame clip into 8 non-overlapping 16-frame
clips and fits the Gaussians to all of them (8 feature rows per video).

Class-conditional samples (``coordtok sample`` of a class-conditional SiT records each sample's
label: ``labels`` and ``classes`` in ``samples.npz``, or ``sampling.json`` beside mp4 files) are
compared with real clips drawn with the same class frequencies ("class-matched" protocol): for each
class, as many random real videos of that class (matched by class name) as the fake subset holds
samples of it. Unlabelled fakes, or ``protocol="unconditional"``, get the plain protocol; the result
says which (``protocol``, and ``class_counts`` per seed for the class-matched one).

Statistics are accumulated in float64. Real statistics are cached on disk (``cache_dir``, default
``$COORDTOK_CACHE/fvd`` or ``~/.cache/coordtok/fvd``) in ``real-<detector>-<hash>.npz`` with a
JSON sidecar listing what the hash covers: dataset kind/root/split/fold, frames, clip_frames,
resolution, detector name and weight hash, number of videos and seed. The cache does not notice
files added to or removed from the dataset folder: pass ``cache_dir=False`` (``--no-cache``) or
delete the file after changing the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from coordtok.config import DataConfig, to_dict
from coordtok.devices import inference_precision, resolve_inference_precision
from coordtok.errors import CoordTokError
from coordtok.fileio import write_json

from .frechet import FeatureStats, frechet_distance, fvd_from_features  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Part of every cache key: bump it when the choice of real clips changes, so stale files miss.
# 2: frames resized by the uint8 kernel (within ~3 levels of the float32 resize of version 1).
PROTOCOL = "coordtok-fvd-2"
DEFAULT_FRAMES = 128
DEFAULT_NUM_VIDEOS = 2048
PROTOCOLS = ("auto", "class-matched", "unconditional")


class FVDInputError(CoordTokError, ValueError):
    """Unusable real or fake input (missing path, too few or too short videos); one-line message."""


def default_cache_dir() -> Path:
    """``$COORDTOK_CACHE/fvd`` if the variable is set, else ``~/.cache/coordtok/fvd``."""
    root = os.environ.get("COORDTOK_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "coordtok") / "fvd"


# ---------------------------------------------------------------------------- features of video batches
def split_clips(videos: torch.Tensor, clip_frames: int | None) -> torch.Tensor:
    """``(B, T, H, W, 3)`` -> ``(B * T / clip_frames, clip_frames, H, W, 3)``: non-overlapping
    clips, each video's consecutive; ``None`` returns ``videos`` unchanged."""
    if clip_frames is None:
        return videos
    return rearrange(videos, "b (k t) h w c -> (b k) t h w c", t=clip_frames)


def _features(detector, batches, clip_frames: int | None, bar=None) -> np.ndarray:
    """Detector features of uint8 video batches ``(B, T, H, W, 3)`` -> ``(N, K, D)`` float64,
    K = T / clip_frames clips per video (1 without ``clip_frames``)."""
    out = []
    for videos in batches:
        videos = torch.as_tensor(videos)
        f = np.asarray(detector.features(split_clips(videos, clip_frames)), dtype=np.float64)
        out.append(rearrange(f, "(b k) d -> b k d", b=videos.shape[0]))
        if bar is not None:
            bar.update(videos.shape[0])
    return np.concatenate(out)


# ---------------------------------------------------------------------------- real clips
def real_data(real, kind: str | None = None, split: str | None = None, fold: int = 1) -> DataConfig:
    """The real videos as a data config: a :class:`DataConfig` as it is, or a folder, read as a
    UCF-101 root when it holds ``ucfTrainTestlist/`` (split default ``train``), else a video folder
    (``split`` = a subfolder, default the whole folder)."""
    if isinstance(real, DataConfig):
        return real
    root = Path(real).expanduser()
    if not root.is_dir():
        raise FVDInputError(f"{root}: real data folder not found (a video folder or a UCF-101 root)")
    if kind not in (None, "folder", "ucf101"):
        raise FVDInputError(f"real data kind must be 'folder' or 'ucf101', got {kind!r}")
    return DataConfig.for_root(root.resolve(), kind, split=split, fold=fold)


class _UInt8Clips(Dataset):
    """Items ``items`` of a ``VideoClipDataset`` as uint8 ``(T, H, W, 3)`` tensors."""

    def __init__(self, base, items: list[int]):
        self.base, self.items = base, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> torch.Tensor:
        return rearrange(self.base[self.items[j]]["video"], "c t h w -> t h w c")  # uint8 items (real_clips)


def _pick(rng, n: int, num: int, what: str) -> np.ndarray:
    """``num`` of ``n`` videos: without replacement when there are enough, else with (a warning)."""
    if num > n:
        log.warning("%s has %d usable videos for %d clips: drawing videos with replacement", what, n, num)
        return rng.integers(n, size=num)
    return rng.choice(n, num, replace=False)


def real_clips(
    data: DataConfig, frames: int, size: int, num_videos: int, seed: int, per_class: dict[str, int] | None = None
) -> _UInt8Clips:
    """``num_videos`` random clips of ``frames`` frames at ``size x size`` (see module docstring).

    Videos are drawn with ``np.random.default_rng([seed, 0])``; the dataset is rebuilt with K clips
    per video (K = the most times one video was drawn) so that every draw of a video gets its own
    window, seeded by the dataset from ``(seed, item)``. ``per_class`` (class name -> count, summing
    to ``num_videos``): that many videos of each class, drawn among the videos of that class with
    ``default_rng([seed, 0, k])`` for the class's position ``k`` in sorted name order.
    """
    import dataclasses

    from coordtok.data import build_dataset

    base = dataclasses.replace(data, frames=frames, size=size, min_frames=frames, clips_per_video=1)
    ds = build_dataset(base, seed, uint8=True)
    n = len(ds.videos)
    if per_class is None:
        picks = _pick(np.random.default_rng([seed, 0]), n, num_videos, ds.name)
    else:
        missing = sorted(set(per_class) - set(ds.classes))
        if missing:
            raise FVDInputError(
                f"the fake videos are labelled with classes the real data {ds.name} does not have "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; its classes: "
                f"{', '.join(ds.classes[:5]) or 'none'}); pass the real data the SiT was trained on, "
                f"or --protocol unconditional"
            )
        labels = np.asarray([info.label for info in ds.videos])
        picks = []
        for k, name in enumerate(sorted(per_class)):
            members = np.flatnonzero(labels == ds.classes.index(name))
            if len(members) == 0:
                raise FVDInputError(f"{ds.name} has no usable video of class {name!r} (of at least {frames} frames)")
            rng = np.random.default_rng([seed, 0, k])
            picks.append(members[_pick(rng, len(members), per_class[name], f"class {name!r} of {ds.name}")])
        picks = np.concatenate(picks)
    k = int(np.bincount(picks).max())
    if k > 1:  # the probe cache makes the second construction cheap
        ds = build_dataset(dataclasses.replace(base, clips_per_video=k), seed, uint8=True)
    seen: dict[int, int] = {}
    items = []
    for v in picks.tolist():
        items.append(v * k + seen.get(v, 0))
        seen[v] = seen.get(v, 0) + 1
    return _UInt8Clips(ds, items)


def real_stats_key(
    data: DataConfig,
    frames: int,
    size: int,
    num_videos: int,
    detector,
    seed: int,
    clip_frames: int | None = None,
    precision: str = "fp32",
    per_class: dict[str, int] | None = None,
) -> dict:
    """Everything the cached real statistics depend on (the sidecar JSON lists it). Features
    under bf16/fp16 autocast are keyed apart; fp32 and TF32 share the key they always had; so are
    class-matched draws (``per_class``)."""
    where = {
        k: v
        for k, v in to_dict(data).items()
        if k in ("kind", "root", "split", "fold", "names", "stride", "frame_range")
    }
    return (
        {
            "protocol": PROTOCOL,
            **where,
            "frames": frames,
            "clip_frames": clip_frames,
            "size": size,
            "detector": detector.name,
            "detector_weights_sha1": getattr(detector, "weights_sha1", None),
            "num_videos": num_videos,
            "seed": seed,
        }
        | ({"precision": precision} if precision in ("bf16", "fp16") else {})
        | ({"class_counts": dict(sorted(per_class.items()))} if per_class is not None else {})
    )


def real_stats(
    data: DataConfig,
    frames: int,
    size: int,
    num_videos: int,
    detector,
    seed: int = 0,
    cache_dir=None,
    clip_frames: int | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    per_class: dict[str, int] | None = None,
) -> FeatureStats:
    """Feature statistics of ``num_videos`` random real clips, cached on disk.

    Args:
        data: the real videos (:func:`real_data`).
        frames, size: clip length and side (frames are ``size x size`` after the data transform).
        detector: an :class:`eval.i3d.Detector`.
        cache_dir: folder of cached statistics (default :func:`default_cache_dir`); ``False``
            neither reads nor writes the cache.
        clip_frames: split each clip into ``frames / clip_frames`` clips (the 16-frame variant).
        batch_size: clips per detector call; num_workers: DataLoader processes decoding videos.
        precision: the precision the caller runs the detector in (it keys the cache).
        per_class: class name -> number of clips, for the class-matched protocol (:func:`real_clips`).
    """
    key = real_stats_key(data, frames, size, num_videos, detector, seed, clip_frames, precision, per_class)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = (
        None if cache_dir is False else Path(cache_dir or default_cache_dir()) / f"real-{detector.name}-{digest}.npz"
    )
    if cache is not None and cache.is_file():
        try:
            stats = FeatureStats.load(cache)
            log.info("real FVD statistics from cache %s", cache)
            return stats
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable FVD cache %s (%s); recomputing", cache, e)

    clips = real_clips(data, frames, size, num_videos, seed, per_class)
    loader = DataLoader(clips, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    with tqdm(total=len(clips), desc=f"real clips (seed {seed})", unit="clip", disable=not progress) as bar:
        feats = _features(detector, loader, clip_frames, bar)
    stats = FeatureStats.from_features(rearrange(feats, "n k d -> (n k) d"))
    if cache is not None:
        try:
            stats.save(cache)
            write_json(cache.with_suffix(".json"), json.loads(json.dumps(key, default=str)), what="FVD cache key")
        except OSError as e:  # a read-only cache costs a recomputation next time, nothing else
            log.warning("could not write FVD cache %s: %s", cache, e)
    return stats


# ---------------------------------------------------------------------------- fake videos
class FakeVideos:
    """Generated videos: uint8 ``(T, H, W, 3)`` per index, from a folder of video files (sorted
    paths, read with decord) or an array ``(N, T, H, W, 3)`` (an npz from ``coordtok sample``).
    ``labels`` ``(N,)`` and ``classes`` (names): the class of each video, when the sampler recorded it."""

    def __init__(
        self,
        source: str,
        files: list[Path] | None = None,
        array: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        classes: list[str] | None = None,
    ):
        self.source, self.files, self.array = source, files, array
        self.labels, self.classes = labels, classes

    def class_counts(self, indices) -> dict[str, int]:
        """Class name -> number of the videos ``indices``."""
        names = [self.classes[int(self.labels[int(i)])] for i in indices]
        return {name: names.count(name) for name in sorted(set(names))}

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else self.array.shape[0]

    def get(self, i: int, frames: int | None = None) -> np.ndarray:
        """Video ``i``, its first ``frames`` frames (an error names a video that is too short)."""
        if self.array is not None:
            video, name = self.array[i], f"{self.source}[{i}]"
        else:
            from coordtok.video_io import read_video

            name = str(self.files[i])
            try:
                video = read_video(self.files[i], max_frames=frames)
            except ValueError as e:
                raise FVDInputError(str(e)) from e
        if frames is not None and video.shape[0] < frames:
            raise FVDInputError(f"fake video {name} has {video.shape[0]} frames, fewer than --frames {frames}")
        return np.ascontiguousarray(video[:frames])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)


def fake_videos(path) -> FakeVideos:
    """Generated videos from a folder of video files (recursive, sorted) or an ``.npz`` whose
    ``videos`` entry is uint8 ``(N, T, H, W, 3)``; an array ``(N, T, H, W, 3)`` is wrapped as is."""
    if isinstance(path, FakeVideos):
        return path
    if isinstance(path, (np.ndarray, torch.Tensor)):
        array, source = np.asarray(path), "array"
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            from coordtok.data import VIDEO_EXTENSIONS, list_videos

            files = list_videos(p)
            if not files:
                raise FVDInputError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) in fake folder {p}")
            return FakeVideos(str(p), files=files, **_folder_labels(p, files))
        if not p.is_file():
            raise FVDInputError(f"fake videos not found: {p} (expected a folder of mp4 files or an .npz)")
        if p.suffix.lower() != ".npz":
            raise FVDInputError(f"{p}: expected a folder of mp4 files or an .npz with 'videos', not a {p.suffix} file")
        try:
            with np.load(p) as z:
                if "videos" not in z.files:
                    raise FVDInputError(f"{p}: no 'videos' array (it holds {z.files})")
                array = z["videos"]
                labelled = (
                    {"labels": z["labels"], "classes": [str(c) for c in z["classes"]]}
                    if ("labels" in z.files and "classes" in z.files)
                    else {}
                )
        except (OSError, ValueError) as e:
            if isinstance(e, FVDInputError):
                raise
            raise FVDInputError(
                f"{p}: unreadable npz ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from e
        source = str(p)
    if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise FVDInputError(f"{source}: expected uint8 videos (N, T, H, W, 3), got {array.dtype} {array.shape}")
    if not isinstance(path, (np.ndarray, torch.Tensor)) and labelled:
        _check_labels(source, labelled["labels"], labelled["classes"], array.shape[0])
        return FakeVideos(source, array=array, **labelled)
    return FakeVideos(source, array=array)


def _check_labels(source: str, labels: np.ndarray, classes: list[str], n: int) -> None:
    if labels.shape != (n,) or not ((labels >= 0) & (labels < len(classes))).all():
        raise FVDInputError(
            f"{source}: its labels do not give each of the {n} videos one of its {len(classes)} "
            f"classes; sample again, or drop the labels"
        )


def _folder_labels(folder: Path, files: list[Path]) -> dict:
    """``labels``/``classes`` of a folder of ``sample_<i>.mp4`` from its ``sampling.json`` (a
    class-conditional ``coordtok sample`` run); ``{}`` when it records none."""
    import re

    manifest = folder / "sampling.json"
    try:
        m = json.loads(manifest.read_text()) if manifest.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict) or not isinstance(m.get("labels"), list) or not isinstance(m.get("classes"), list):
        return {}
    index = [re.fullmatch(r"sample_(\d+)\.mp4", f.name) for f in files]
    unnamed = [f.name for f, i in zip(files, index) if not i or int(i[1]) >= len(m["labels"])]
    if unnamed:
        raise FVDInputError(
            f"{manifest} labels samples, but {folder} holds files it does not name (e.g. "
            f"{unnamed[0]}); evaluate the sampling run's folder as it was written"
        )
    labels = np.asarray([m["labels"][int(i[1])] for i in index])
    _check_labels(str(manifest), labels, m["classes"], len(files))
    return {"labels": labels, "classes": [str(c) for c in m["classes"]]}


def _fake_batches(fakes: FakeVideos, indices, frames: int, batch_size: int):
    """Stacks of up to ``batch_size`` videos; a change of frame size starts a new stack."""
    batch: list[np.ndarray] = []
    for i in indices:
        video = fakes.get(int(i), frames)
        if batch and video.shape != batch[0].shape:
            yield np.stack(batch)
            batch = []
        batch.append(video)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


# ---------------------------------------------------------------------------- FVD
def compute_fvd(
    real,
    fake,
    frames: int = DEFAULT_FRAMES,
    num_videos: int = DEFAULT_NUM_VIDEOS,
    detector=None,
    seed: int = 0,
    repeats: int = 1,
    clip_frames: int | None = None,
    size: int | None = None,
    kind: str | None = None,
    split: str | None = None,
    fold: int = 1,
    cache_dir=None,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
    protocol: str = "auto",
) -> dict:
    """FVD of ``fake`` against random clips of ``real``, over ``repeats`` seeds.

    Args:
        real: a video folder, a UCF-101 root, or a :class:`DataConfig` (:func:`real_data`).
        fake: a folder of video files, an ``.npz`` with ``videos``, or a uint8 array
            ``(N, T, H, W, 3)``; it must hold at least ``num_videos`` videos of at least
            ``frames`` frames (the first ``frames`` are used). With more than ``num_videos``, each
            repeat uses a seeded random subset.
        frames: clip length (128 in the paper). num_videos: videos per side (2048).
        detector: an :class:`eval.i3d.Detector` (default: StyleGAN-V's TorchScript I3D from the
            weight cache).
        seed: repeat r uses seed ``seed + r`` for the real clips (and the fake subset).
        clip_frames: ``16`` for the 16-frame variant (``frames`` must be a multiple).
        size: real clip side; default: the fake videos' (square) frame size.
        cache_dir, batch_size, num_workers, progress: see :func:`real_stats`.
        precision: :data:`coordtok.devices.INFERENCE_PRECISIONS` of the detector (``auto``: TF32 on
            CUDA, fp32 on a CPU); recorded in the result.
        protocol: ``auto`` (class-matched real clips when the fakes carry labels, else the plain
            draw), ``class-matched`` (labels required) or ``unconditional`` (labels ignored).

    Returns:
        ``{"mean", "std", "values", "seeds", "protocol", ...}``: mean and sample std (ddof 1; 0 for
        one repeat) of the per-seed FVDs, plus the settings used (``class_counts`` per seed for the
        class-matched protocol).
    """
    if frames < 1 or num_videos < 2 or repeats < 1:
        raise FVDInputError(
            f"need frames >= 1, num_videos >= 2 and repeats >= 1; got {frames}, {num_videos}, {repeats}"
        )
    if clip_frames is not None and (clip_frames < 1 or frames % clip_frames):
        raise FVDInputError(f"--clip-frames {clip_frames} must divide --frames {frames}")
    if detector is None:
        from .i3d import load_torchscript_i3d

        detector = load_torchscript_i3d()
    device_type = torch.device(getattr(detector, "device", "cpu")).type
    precision = resolve_inference_precision(precision, device_type, log=log.warning)
    fakes = fake_videos(fake)
    if protocol not in PROTOCOLS:
        raise FVDInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "class-matched" and fakes.labels is None:
        raise FVDInputError(
            f"{fakes.source}: the class-matched protocol needs labelled samples (a class-conditional "
            f"`coordtok sample` run records them); these have none"
        )
    matched = fakes.labels is not None and protocol != "unconditional"
    if len(fakes) < num_videos:
        raise FVDInputError(f"{fakes.source} holds {len(fakes)} videos, fewer than --num-videos {num_videos}")
    data = real_data(real, kind, split, fold)
    if size is None:
        h, w = fakes.get(0, frames).shape[1:3]
        if h != w:
            raise FVDInputError(f"fake frames are {h}x{w}, not square: pass the real clips' --size")
        size = h
    else:
        h, w = fakes.get(0, frames).shape[1:3]
        if (h, w) != (size, size):
            log.warning(
                "fake frames are %dx%d but real clips are %dx%d: the FVD then also measures the resize",
                h,
                w,
                size,
                size,
            )

    seeds = [seed + r for r in range(repeats)]
    if len(fakes) == num_videos:
        subsets = {s: np.arange(num_videos) for s in seeds}
    else:
        subsets = {
            s: np.sort(np.random.default_rng([s, 1]).choice(len(fakes), num_videos, replace=False)) for s in seeds
        }
    needed = np.unique(np.concatenate(list(subsets.values())))
    with (
        tqdm(total=len(needed), desc="fake videos", unit="video", disable=not progress) as bar,
        inference_precision(precision, device_type),
    ):
        feats = _features(detector, _fake_batches(fakes, needed, frames, batch_size), clip_frames, bar)
    row_of = {int(i): r for r, i in enumerate(needed)}

    values, counts = [], []
    for s in seeds:
        per_class = fakes.class_counts(subsets[s]) if matched else None
        counts.append(per_class)
        with inference_precision(precision, device_type):
            real_s = real_stats(
                data,
                frames,
                size,
                num_videos,
                detector,
                seed=s,
                cache_dir=cache_dir,
                clip_frames=clip_frames,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                precision=precision,
                per_class=per_class,
            )
        fake_s = FeatureStats.from_features(rearrange(feats[[row_of[int(i)] for i in subsets[s]]], "n k d -> (n k) d"))
        values.append(frechet_distance(*real_s.mean_cov(), *fake_s.mean_cov()))
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "values": values,
        "seeds": seeds,
        "frames": frames,
        "clip_frames": clip_frames,
        "num_videos": num_videos,
        "size": size,
        "detector": detector.name,
        "real": to_dict(data),
        "fake": fakes.source,
        "precision": precision,
        "protocol": "class-matched" if matched else "unconditional",
    } | ({"class_counts": counts} if matched else {})
