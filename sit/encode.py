"""``coordtok encode``: a CoordTok tokenizer's triplanes of random clips, written as a latent cache.

Items are the clips of a :class:`coordtok.data.VideoClipDataset` with ``clips_per_video = K``
(item ``i`` is clip ``i % K`` of video ``i // K``), each a random window seeded by ``(seed, i)``.
Shard ``g`` always holds items ``[g * shard_size, (g + 1) * shard_size)`` whatever the number of
processes: process ``r`` of ``W`` encodes the shards ``g = r, r + W, ...``. A shard's JSON sidecar
is written after its tensor file (both atomically, :mod:`coordtok.fileio`) and carries a
fingerprint of (tokenizer, data, seed, K, shard size), so a restarted run, on any number of
processes, skips exactly the shards that are complete and rewrites the rest bit for bit. The
folder layout is in :mod:`sit.cache`; the normalization statistics (:mod:`sit.stats`) are computed
at the end.

``whole_videos=True`` (``coordtok encode --whole-videos``) encodes every video whole instead: its
usable frames cut into windows of the tokenizer's clip length overlapping by ``overlap`` frames
(:func:`coordtok.chunking.chunk_windows`; :func:`coordtok.chunking.default_overlap` by default), the
last one short and masked, one triplane per window. Items are then the windows, video by video in
frame order; each shard sidecar names each window's video and start frame, and ``index.json``'s
``whole_videos`` lists every video's windows (:func:`sit.cache.video_windows` reads them back, and
:meth:`eval.tokenizers.CoordTokReconstructor.decode_windows` decodes a video from them, blended
as ``reconstruct`` blends them). The rows are triplanes like any others, so ``sit-train`` reads
such a cache too (its short last windows included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from coordtok.checkpoint import load_tokenizer
from coordtok.chunking import chunk_windows, default_overlap
from coordtok.config import ConfigError, DataConfig
from coordtok.devices import inference_precision, resolve_inference_precision
from coordtok.fileio import check_writable, write_bytes, write_json
from coordtok.locking import FolderLock
from coordtok.loop import on_main_then_all
from coordtok.triplane import num_tokens

from .cache import FORMAT_VERSION, INDEX_NAME, LatentCacheError, read_index, shard_name, weights_fingerprint
from .stats import STATS_NAME, compute_stats

# ---------------------------------------------------------------------------- data spec


def _data_config(d: DataConfig, model_cfg, clips_per_video: int) -> DataConfig:
    """``d`` with the tokenizer's clip shape, ``K`` clips per video and an absolute ``root``.

    ``frames`` / ``size`` must be the tokenizer's (or left at their defaults). ``min_frames``
    defaults to the full clip length: a generator trained on zero-padded short clips would learn
    to end videos in black frames, so videos shorter than one window are skipped (with the usual
    one-line report) unless ``min_frames`` is set lower explicitly.
    """
    if not isinstance(d, DataConfig):
        raise TypeError(f"encode_dataset takes a coordtok.config.DataConfig, got {type(d).__name__}")
    default = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    for key, want in (("frames", model_cfg.frames), ("size", model_cfg.size)):
        got = getattr(d, key)
        if got not in (want, default[key]):
            raise ConfigError(f"data.{key} is {got} but the tokenizer is built for {key}={want}")
    return dataclasses.replace(
        d,
        frames=model_cfg.frames,
        size=model_cfg.size,
        clips_per_video=int(clips_per_video),
        min_frames=model_cfg.frames if d.min_frames == default["min_frames"] else d.min_frames,
        root=os.path.abspath(os.fspath(d.root)) if d.root else d.root,
    )


class _Items(torch.utils.data.Dataset):
    """Item ``i`` of the clip dataset (epoch 0) with its index and metadata."""

    def __init__(self, dataset, items: list[int]):
        self.dataset, self.items = dataset, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k: int):
        i = self.items[k]
        self.dataset.set_epoch(0)
        item = self.dataset[i]
        return {
            "index": i,
            "video": item["video"],
            "num_frames": item["num_frames"],
            "path": item["path"],
            "start": item["start"],
            "label": item["label"],
        }


def whole_video_windows(dataset, overlap: int) -> list[tuple[int, int]]:
    """``(video, start frame)`` of every window of every video of ``dataset`` (a
    :class:`coordtok.data.VideoClipDataset` of the tokenizer's clip length), video by video: each
    video's usable frames (``frame_range``, ``stride``) in windows of ``num_frames`` overlapping by
    ``overlap`` sampled frames."""
    out = []
    for v, info in enumerate(dataset.videos):
        lo, n = dataset._usable(info.frames)
        out += [
            (v, lo + s * dataset.stride)
            for s, _ in chunk_windows(math.ceil(n / dataset.stride), dataset.num_frames, overlap)
        ]
    return out


def whole_videos_index(dataset, windows: list[tuple[int, int]], overlap: int, window: int) -> dict:
    """``index.json``'s ``whole_videos``: the window geometry and, per video, its path, usable
    frames (``frames``, at ``stride``, from frame ``first``), first item and window start frames."""
    videos = []
    for i, (v, start) in enumerate(windows):
        if not videos or videos[-1]["video"] != v:
            lo, n = dataset._usable(dataset.videos[v].frames)
            videos.append(
                {
                    "video": v,
                    "path": dataset.videos[v].path,
                    "first": lo,
                    "frames": math.ceil(n / dataset.stride),
                    "first_item": i,
                    "starts": [],
                }
            )
        videos[-1]["starts"].append(start)
    for entry in videos:
        del entry["video"]
    return {"window": window, "overlap": overlap, "stride": dataset.stride, "videos": videos}


class _Windows(torch.utils.data.Dataset):
    """Item ``i`` of a whole-video encoding: window ``windows[i] = (video, start)``, with the keys of
    :class:`_Items`."""

    def __init__(self, dataset, windows: list[tuple[int, int]], items: list[int]):
        self.dataset, self.windows, self.items = dataset, windows, items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k: int):
        from coordtok.data import DataError

        i = self.items[k]
        v, start = self.windows[i]
        try:
            item = self.dataset.clip_at(v, start)
        except Exception as e:  # decord's errors: a whole video cannot skip a window, so stop with its name
            raise DataError(
                f"{self.dataset.videos[v].path}: cannot read the frames from {start} "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        return {"index": i, **{key: item[key] for key in ("video", "num_frames", "path", "start", "label")}}


# ---------------------------------------------------------------------------- encoding


def _shard_complete(out_dir: Path, g: int, items: list[int], fingerprint: str, shape: tuple) -> bool:
    """Shard ``g`` is on disk with its sidecar, for these items and this encoding."""
    from safetensors import safe_open

    meta_path = out_dir / shard_name(g).replace(".safetensors", ".json")
    path = out_dir / shard_name(g)
    if not (meta_path.is_file() and path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        with safe_open(str(path), framework="pt") as f:
            got = tuple(f.get_slice("tokens").get_shape())
    except Exception:  # a torn or foreign file: encode it again
        return False
    # a shard written before labels were recorded (no "label" per item) is encoded again
    labelled = all(isinstance(m, dict) and "label" in m for m in meta.get("meta") or [None])
    return meta.get("fingerprint") == fingerprint and meta.get("items") == items and got == shape and labelled


def _write_shard(out_dir: Path, g: int, tokens: torch.Tensor, records: list[dict], fingerprint: str) -> None:
    from safetensors.torch import save

    path = out_dir / shard_name(g)
    # One metadata key only: safetensors writes a map, whose order (hence bytes) is not fixed.
    blob = save({"tokens": tokens.contiguous()}, metadata={"fingerprint": fingerprint})
    write_bytes(path, blob, what="latent shard")
    # The sidecar last: its presence (with the right fingerprint) marks the shard complete.
    write_json(
        path.with_suffix(".json"),
        {
            "shard": g,
            "file": path.name,
            "fingerprint": fingerprint,
            "count": len(records),
            "shape": list(tokens.shape),
            "items": [r["index"] for r in records],
            "meta": [{k: r[k] for k in ("index", "path", "start", "num_frames", "label")} for r in records],
        },
    )


def _encode_dataset(
    held: contextlib.ExitStack,
    tokenizer_ckpt: str | Path,
    data_spec,
    out_dir: str | Path,
    clips_per_video: int = 1,
    seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 8,
    precision: str = "auto",
    num_workers: int | None = None,
    stats_num: int | None = 2048,
    progress: bool = True,
    tokenizer_hints: dict | None = None,
    whole_videos: bool = False,
    overlap: int | None = None,
) -> dict:
    """Encode ``K = clips_per_video`` random 128-frame windows of every video into a latent cache.

    Args:
        tokenizer_ckpt: a CoordTok checkpoint (or its run folder: the newest good one).
        data_spec: a :class:`coordtok.config.DataConfig` (``kind``, ``root``, ``split``, ``names``,
            ``frame_range``, ...); ``frames``/``size`` become the tokenizer's (a different value
            is an error); ``clips_per_video`` is set to ``K``.
        out_dir: cache folder (created); see the module docstring for its layout.
        seed: seeds the random windows: item ``i``'s window depends only on ``(seed, i)``.
        shard_size: latents per shard file.
        batch_size: clips per encoder call (per process).
        precision: :data:`coordtok.devices.INFERENCE_PRECISIONS`; ``auto``: TF32 on CUDA (bf16
            autocast when the tokenizer was trained in bf16), fp32 on a CPU. The stored latents
            are float32 either way; ``index.json`` records the precision.
        num_workers: DataLoader workers decoding videos (default: the data spec's).
        stats_num: after encoding, the main process computes :func:`compute_stats` over this many
            random latents and writes ``stats.json``; ``None`` skips it.
        tokenizer_hints: ``heads`` etc. for a reference-format tokenizer checkpoint.
        whole_videos: encode every video whole, in windows overlapping by ``overlap`` frames
            (module docstring) instead of ``K`` random windows; ``clips_per_video`` must be 1.

    Run under ``accelerate launch`` to split the shards across processes. Returns the index dict.
    """
    from accelerate import Accelerator

    from coordtok.data import build_dataset, to_model_video

    if clips_per_video < 1 or shard_size < 1 or batch_size < 1:
        raise LatentCacheError(
            f"clips_per_video, shard_size and batch_size must be >= 1, got "
            f"{clips_per_video}, {shard_size}, {batch_size}"
        )
    out_dir = Path(out_dir)
    accelerator = Accelerator()
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    log = lambda msg: tqdm.write(msg, file=sys.stderr)

    tokenizer, tok_state = load_tokenizer(tokenizer_ckpt, **(tokenizer_hints or {}))
    mcfg = tokenizer.config
    d = _data_config(data_spec, mcfg, clips_per_video)
    dataset = build_dataset(d, seed, uint8=True)  # clips stay uint8 until they are on the device
    n = len(dataset)
    windows = None
    if whole_videos:
        overlap = default_overlap(mcfg.frames) if overlap is None else int(overlap)
        if not 0 <= overlap <= mcfg.frames // 2 or clips_per_video != 1:
            raise LatentCacheError(
                f"--whole-videos: --overlap must be 0 to {mcfg.frames // 2} (half the tokenizer's "
                f"{mcfg.frames}-frame window) and --clips-per-video 1, got {overlap} and "
                f"{clips_per_video}"
            )
        windows = whole_video_windows(dataset, overlap)
        n = len(windows)
    elif overlap is not None:
        raise LatentCacheError("--overlap applies to --whole-videos only (random windows do not overlap)")
    grid, channels = tuple(mcfg.latent_grid), mcfg.latent_channels
    tokens = num_tokens(grid)
    data_dict = dataclasses.asdict(d)
    identity = {
        "format": FORMAT_VERSION,
        "tokenizer_step": int(tok_state.get("step", -1)),
        "tokenizer_model": dataclasses.asdict(mcfg),
        "tokenizer_weights": weights_fingerprint(tokenizer),
        "data": {k: v for k, v in data_dict.items() if k != "num_workers"},
        "seed": int(seed),
        "clips_per_video": int(clips_per_video),
        "shard_size": int(shard_size),
        "num_items": n,
    } | ({"whole_videos": {"overlap": overlap}} if whole_videos else {})  # (random windows: the fingerprint of old)
    fingerprint = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    index_path = out_dir / INDEX_NAME

    # One encode per cache folder at a time (the run folders' lock, coordtok.locking): two runs into
    # one --out would both pass the check below, then write their shards over each other's.
    def lock_cache():
        check_writable(out_dir, "latent cache")
        held.enter_context(FolderLock(out_dir, "encode", "choose another --out", log))

    on_main_then_all(accelerator, lock_cache)
    # The index and the shard sidecars name their encoding: never overwrite another cache.
    for found in [index_path, *sorted(out_dir.glob("shard-*.json"))]:
        try:
            old = json.loads(found.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            old = None  # missing or torn: treated as absent
        if old is not None and old != fingerprint:
            raise LatentCacheError(
                f"{out_dir} already holds latents of a different encoding (tokenizer, data, seed, clips per "
                f"video or shard size differ; see {found.name}); choose another --out or delete it"
            )
    if accelerator.is_main_process:
        check_writable(out_dir, "latent cache")
    accelerator.wait_for_everyone()

    num_shards = math.ceil(n / shard_size)
    shard_items = {g: list(range(g * shard_size, min(n, (g + 1) * shard_size))) for g in range(num_shards)}
    mine = [g for g in range(rank, num_shards, world)]
    todo = [
        g
        for g in mine
        if not _shard_complete(out_dir, g, shard_items[g], fingerprint, (len(shard_items[g]), tokens, channels))
    ]
    if accelerator.is_main_process:
        done = len(mine) - len(todo)
        what = (
            f"{n} windows of {len(dataset.videos)} whole videos (overlapping by {overlap} frames)"
            if whole_videos
            else f"{n} clips ({len(dataset.videos)} videos x {clips_per_video})"
        )
        log(
            f"encoding {what} into {num_shards} shards in "
            f"{out_dir}" + (f"; {done} of this process's {len(mine)} shards already done" if done else "")
        )

    tokenizer.to(device).eval().requires_grad_(False)
    trained = ((tok_state.get("config") or {}).get("train") or {}).get("mixed_precision")
    precision = resolve_inference_precision(
        precision, device.type, trained, log if accelerator.is_main_process else None
    )
    pending = [i for g in todo for i in shard_items[g]]
    workers = d.num_workers if num_workers is None else num_workers
    items = _Windows(dataset, windows, pending) if whole_videos else _Items(dataset, pending)
    loader = torch.utils.data.DataLoader(
        items,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=None,
    )
    bar = tqdm(
        total=len(pending),
        disable=not progress,
        desc=f"encode [{rank}/{world}]" if world > 1 else "encode",
        unit="clip",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    buf_tokens: list[torch.Tensor] = []
    buf_records: list[dict] = []
    queue = list(todo)
    with torch.no_grad(), inference_precision(precision, device.type):
        for batch in loader:
            nf = batch["num_frames"].to(device)
            video = to_model_video(batch["video"].to(device, non_blocking=True), nf)
            triplane = tokenizer.encode(video, nf)
            buf_tokens.extend(triplane.flatten().float().cpu().unbind(0))
            buf_records.extend(
                {
                    "index": int(batch["index"][b]),
                    "path": batch["path"][b],
                    "start": int(batch["start"][b]),
                    "num_frames": int(batch["num_frames"][b]),
                    "label": int(batch["label"][b]),
                }
                for b in range(video.shape[0])
            )
            bar.update(video.shape[0])
            while queue and len(buf_records) >= len(shard_items[queue[0]]):
                g = queue.pop(0)
                k = len(shard_items[g])
                assert [r["index"] for r in buf_records[:k]] == shard_items[g]
                _write_shard(out_dir, g, torch.stack(buf_tokens[:k]), buf_records[:k], fingerprint)
                del buf_tokens[:k], buf_records[:k]
    bar.close()
    assert not queue and not buf_records
    accelerator.wait_for_everyone()

    index = None
    if accelerator.is_main_process:
        shards = []
        for g in range(num_shards):
            if not _shard_complete(out_dir, g, shard_items[g], fingerprint, (len(shard_items[g]), tokens, channels)):
                raise LatentCacheError(f"{out_dir / shard_name(g)}: shard missing or incomplete after encoding")
            shards.append({"file": shard_name(g), "count": len(shard_items[g])})
        index = {
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "grid": list(grid),
            "channels": channels,
            "num_tokens": tokens,
            "num_latents": n,
            "shards": shards,
            "tokenizer_ckpt": str(Path(tokenizer_ckpt).resolve()),
            "tokenizer_step": identity["tokenizer_step"],
            # which tokenizer's latent space this is: sit-train copies it into its checkpoints,
            # sample and sit-train --resume refuse a tokenizer / cache whose weights differ
            "tokenizer_fingerprint": identity["tokenizer_weights"],
            "tokenizer_config": tok_state.get("config") or {"model": dataclasses.asdict(mcfg)},
            "data": data_dict,
            "seed": int(seed),
            "clips_per_video": int(clips_per_video),
            "shard_size": int(shard_size),
            "precision": precision,
            # class names (each latent's "label" in the shard sidecars indexes them); None: no classes
            "classes": list(dataset.classes) or None,
        }
        if whole_videos:
            index["whole_videos"] = whole_videos_index(dataset, windows, overlap, mcfg.frames)
        write_json(index_path, index, indent=1)
        log(f"wrote {n} latents of grid {grid} x {channels} channels: {index_path}")
        if stats_num:
            stats = compute_stats(out_dir, num=stats_num, seed=seed)
            stats.save(out_dir / STATS_NAME)
            log(f"normalization statistics over {stats.num} latents: {out_dir / STATS_NAME}")
    accelerator.wait_for_everyone()
    return index if index is not None else read_index(out_dir)


def encode_dataset(*args, **kwargs) -> dict:
    with contextlib.ExitStack() as held:  # the cache folder's lock, released however encoding ends
        return _encode_dataset(held, *args, **kwargs)


encode_dataset.__doc__ = _encode_dataset.__doc__
