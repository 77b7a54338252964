"""Latent cache and normalization statistics for CoordTok-SiT (``coordtok encode``).

Layout of a cache folder::

    DIR/index.json                  grid, channels, number of latents, shards, tokenizer + data
    DIR/shard-00000.safetensors     "tokens": float32 (n, tokens, C), flat triplanes (Triplane.flatten)
    DIR/shard-00000.json            per-item metadata: item index, source path, start frame, frames
    DIR/stats.json                  per-plane, per-channel mean / std (LatentStats)

Items are the clips of a :class:`coordtok.data.VideoClipDataset` with ``clips_per_video = K``
(item ``i`` is clip ``i % K`` of video ``i // K``), each a random window seeded by ``(seed, i)``.
Shard ``g`` always holds items ``[g * shard_size, (g + 1) * shard_size)`` whatever the number of
processes: process ``r`` of ``W`` encodes the shards ``g = r, r + W, ...``. A shard's JSON sidecar
is written after its tensor file (both atomically: temporary file + ``os.replace``) and carries a
fingerprint of (tokenizer, data, seed, K, shard size), so a restarted run, on any number of
processes, skips exactly the shards that are complete and rewrites the rest bit for bit.

Normalization (DESIGN.md section 2): SiT sees ``(z - mean) / std`` with mean and std per plane
(xy, yt, xt) and channel, measured on 2048 random cached clips. The plane split of the flat token
axis is taken from :class:`coordtok.triplane.Triplane` (``flatten`` / ``unflatten``), the one
place that defines it.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat
from tqdm.auto import tqdm

from coordtok.triplane import PLANES, Triplane

INDEX_NAME = "index.json"
STATS_NAME = "stats.json"
FORMAT_VERSION = 1


class LatentCacheError(ValueError):
    """A latent cache is missing, incomplete, corrupt or does not fit (one-line message)."""


# ---------------------------------------------------------------------------- small helpers


def _file_mode() -> int:
    """Permissions of a normally created file (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise LatentCacheError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LatentCacheError(f"{path}: unreadable {what} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LatentCacheError(f"{path}: unreadable {what} (not a JSON object)")
    return data


def shard_name(g: int) -> str:
    return f"shard-{g:05d}.safetensors"


def _num_tokens(grid) -> int:
    tl, hl, wl = grid
    return hl * wl + tl * wl + tl * hl


def _weights_digest(model: torch.nn.Module) -> str:
    """A fingerprint of the weights: SHA-1 of every tensor's bytes (a float sum would depend on the
    thread count through the reduction order, and a resumed run could then disown its own shards)."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------- data spec


def _data_config(data_spec, model_cfg, clips_per_video: int):
    """A :class:`DataConfig` for ``data_spec`` with the tokenizer's clip shape and ``K`` clips per video.

    A dict without ``min_frames`` gets the full clip length: a generator trained on zero-padded
    short clips would learn to end videos in black frames, so by default videos shorter than one
    window are skipped (with the usual one-line report). A relative ``root`` is made absolute.
    """
    from coordtok.config import ConfigError, DataConfig, from_dict

    raw = dataclasses.asdict(data_spec) if isinstance(data_spec, DataConfig) else dict(data_spec or {})
    for key, want in (("frames", model_cfg.frames), ("size", model_cfg.size)):
        if key in raw and raw[key] is not None and raw[key] != want:
            raise ConfigError(f"data.{key} is {raw[key]} but the tokenizer is built for {key}={want}")
        raw[key] = want
    raw["clips_per_video"] = int(clips_per_video)
    raw.setdefault("kind", "folder")
    raw.setdefault("min_frames", model_cfg.frames)
    if raw.get("root"):
        raw["root"] = os.path.abspath(os.fspath(raw["root"]))
    return from_dict(DataConfig, raw, "data")


def _build_items_dataset(d, seed: int):
    from coordtok.train import dataset_from_config

    try:
        return dataset_from_config(d, seed)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise LatentCacheError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


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
        return {"index": i, "video": item["video"], "num_frames": item["num_frames"],
                "path": item["path"], "start": item["start"]}


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
    return meta.get("fingerprint") == fingerprint and meta.get("items") == items and got == shape


def _write_shard(out_dir: Path, g: int, tokens: torch.Tensor, records: list[dict], fingerprint: str) -> None:
    from safetensors.torch import save

    path = out_dir / shard_name(g)
    # One metadata key only: safetensors writes a map, whose order (hence bytes) is not fixed.
    blob = save({"tokens": tokens.contiguous()}, metadata={"fingerprint": fingerprint})
    _atomic_write_bytes(path, blob)
    # The sidecar last: its presence (with the right fingerprint) marks the shard complete.
    _atomic_write_json(path.with_suffix(".json"), {
        "shard": g, "file": path.name, "fingerprint": fingerprint, "count": len(records),
        "shape": list(tokens.shape), "items": [r["index"] for r in records],
        "meta": [{k: r[k] for k in ("index", "path", "start", "num_frames")} for r in records],
    })


def encode_dataset(
    tokenizer_ckpt: str | Path,
    data_spec,
    out_dir: str | Path,
    clips_per_video: int = 1,
    seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 8,
    mixed_precision: str = "no",
    num_workers: int | None = None,
    stats_num: int | None = 2048,
    progress: bool = True,
) -> dict:
    """Encode ``K = clips_per_video`` random 128-frame windows of every video into a latent cache.

    Args:
        tokenizer_ckpt: a CoordTok checkpoint (or its run folder: the newest good one).
        data_spec: a :class:`coordtok.config.DataConfig` or a dict of its keys (``kind``, ``root``,
            ``split``, ``names``, ``frame_range``, ...); ``frames``/``size`` default to the
            tokenizer's and must match it; ``clips_per_video`` is set to ``K``.
        out_dir: cache folder (created); see the module docstring for its layout.
        seed: seeds the random windows: item ``i``'s window depends only on ``(seed, i)``.
        shard_size: latents per shard file.
        batch_size: clips per encoder call (per process).
        mixed_precision: ``no`` | ``bf16`` | ``fp16``: autocast of the encoder on CUDA (the
            stored latents are float32 either way); ignored on the CPU.
        num_workers: DataLoader workers decoding videos (default: the data spec's).
        stats_num: after encoding, the main process computes :func:`compute_stats` over this many
            random latents and writes ``stats.json``; ``None`` skips it.

    Run under ``accelerate launch`` to split the shards across processes. Returns the index dict.
    """
    from accelerate import Accelerator

    from coordtok.train import load_tokenizer

    if clips_per_video < 1 or shard_size < 1 or batch_size < 1:
        raise LatentCacheError(f"clips_per_video, shard_size and batch_size must be >= 1, got "
                               f"{clips_per_video}, {shard_size}, {batch_size}")
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise LatentCacheError(f"mixed_precision must be no, bf16 or fp16, got {mixed_precision!r}")
    out_dir = Path(out_dir)
    accelerator = Accelerator()
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    log = lambda msg: tqdm.write(msg, file=sys.stderr)

    tokenizer, tok_state = load_tokenizer(tokenizer_ckpt)
    mcfg = tokenizer.config
    d = _data_config(data_spec, mcfg, clips_per_video)
    dataset = _build_items_dataset(d, seed)
    n = len(dataset)
    grid, channels = tuple(mcfg.latent_grid), mcfg.latent_channels
    tokens = _num_tokens(grid)
    data_dict = dataclasses.asdict(d)
    identity = {
        "format": FORMAT_VERSION, "tokenizer_step": int(tok_state.get("step", -1)),
        "tokenizer_model": dataclasses.asdict(mcfg), "tokenizer_weights": _weights_digest(tokenizer),
        "data": {k: v for k, v in data_dict.items() if k != "num_workers"},
        "seed": int(seed), "clips_per_video": int(clips_per_video), "shard_size": int(shard_size), "num_items": n,
    }
    fingerprint = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    index_path = out_dir / INDEX_NAME
    # The index and the shard sidecars name their encoding: never overwrite another cache.
    for found in [index_path, *sorted(out_dir.glob("shard-*.json"))]:
        try:
            old = json.loads(found.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            old = None  # missing or torn: treated as absent
        if old is not None and old != fingerprint:
            raise LatentCacheError(
                f"{out_dir} already holds latents of a different encoding (tokenizer, data, seed, clips per "
                f"video or shard size differ; see {found.name}); choose another --out or delete it")
    if accelerator.is_main_process:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LatentCacheError(f"{out_dir}: cannot create the cache folder ({e.strerror})") from None
    accelerator.wait_for_everyone()

    num_shards = math.ceil(n / shard_size)
    shard_items = {g: list(range(g * shard_size, min(n, (g + 1) * shard_size))) for g in range(num_shards)}
    mine = [g for g in range(rank, num_shards, world)]
    todo = [g for g in mine if not _shard_complete(out_dir, g, shard_items[g], fingerprint,
                                                   (len(shard_items[g]), tokens, channels))]
    if accelerator.is_main_process:
        done = len(mine) - len(todo)
        log(f"encoding {n} clips ({len(dataset.videos)} videos x {clips_per_video}) into {num_shards} shards in "
            f"{out_dir}" + (f"; {done} of this process's {len(mine)} shards already done" if done else ""))

    tokenizer.to(device).eval().requires_grad_(False)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)
                if device.type == "cuda" and mixed_precision != "no" else contextlib.nullcontext())
    pending = [i for g in todo for i in shard_items[g]]
    workers = d.num_workers if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _Items(dataset, pending), batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", collate_fn=None,
    )
    bar = tqdm(total=len(pending), disable=not progress, desc=f"encode [{rank}/{world}]" if world > 1 else "encode",
               unit="clip", dynamic_ncols=True, file=sys.stderr)
    buf_tokens: list[torch.Tensor] = []
    buf_records: list[dict] = []
    queue = list(todo)
    with torch.no_grad():
        for batch in loader:
            video = batch["video"].to(device, non_blocking=True)
            nf = batch["num_frames"].to(device)
            with autocast:
                triplane = tokenizer.encode(video, nf)
            buf_tokens.extend(triplane.flatten().float().cpu().unbind(0))
            buf_records.extend({"index": int(batch["index"][b]), "path": batch["path"][b],
                                "start": int(batch["start"][b]), "num_frames": int(batch["num_frames"][b])}
                               for b in range(video.shape[0]))
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
            "version": FORMAT_VERSION, "fingerprint": fingerprint,
            "grid": list(grid), "channels": channels, "num_tokens": tokens, "num_latents": n, "shards": shards,
            "tokenizer_ckpt": str(Path(tokenizer_ckpt).resolve()), "tokenizer_step": identity["tokenizer_step"],
            "tokenizer_config": tok_state.get("config") or {"model": dataclasses.asdict(mcfg)},
            "data": data_dict, "seed": int(seed), "clips_per_video": int(clips_per_video),
            "shard_size": int(shard_size),
        }
        _atomic_write_json(index_path, index)
        log(f"wrote {n} latents of grid {grid} x {channels} channels: {index_path}")
        if stats_num:
            stats = compute_stats(out_dir, num=stats_num, seed=seed)
            stats.save(out_dir / STATS_NAME)
            log(f"normalization statistics over {stats.num} latents: {out_dir / STATS_NAME}")
    accelerator.wait_for_everyone()
    return index if index is not None else read_index(out_dir)


def read_index(latent_dir: str | Path) -> dict:
    """``index.json`` of a cache, checked for the keys everything else relies on."""
    latent_dir = Path(latent_dir)
    if not latent_dir.is_dir():
        raise LatentCacheError(f"{latent_dir}: latent folder not found (run `coordtok encode` first)")
    index = _read_json(latent_dir / INDEX_NAME, "latent index (run `coordtok encode` to finish the cache)")
    missing = [k for k in ("grid", "channels", "num_latents", "shards") if k not in index]
    if missing:
        raise LatentCacheError(f"{latent_dir / INDEX_NAME}: not a latent index (missing {', '.join(missing)})")
    return index


# ---------------------------------------------------------------------------- dataset


class LatentDataset(torch.utils.data.Dataset):
    """The cached latents: item ``i`` is a float32 ``(tokens, C)`` flat triplane.

    Shards are memory-mapped with safetensors and read one row at a time; handles are opened
    lazily in each process (DataLoader workers included). Missing or corrupt shards are one-line
    :class:`LatentCacheError` s, at construction (existence, shape) or at read time.
    """

    def __init__(self, latent_dir: str | Path):
        from safetensors import safe_open

        self.dir = Path(latent_dir)
        self.index = read_index(self.dir)
        self.grid = tuple(int(g) for g in self.index["grid"])
        self.channels = int(self.index["channels"])
        self.num_tokens = _num_tokens(self.grid)
        self.files, self.counts = [], []
        for s in self.index["shards"]:
            path = self.dir / s["file"]
            if not path.is_file():
                raise LatentCacheError(f"{path}: latent shard missing (re-run `coordtok encode` to rebuild it)")
            try:
                with safe_open(str(path), framework="pt") as f:
                    shape = tuple(f.get_slice("tokens").get_shape())
            except Exception as e:
                raise LatentCacheError(f"{path}: corrupt latent shard ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                       f"delete it and re-run `coordtok encode`") from None
            if shape != (s["count"], self.num_tokens, self.channels):
                raise LatentCacheError(f"{path}: latent shard has shape {shape}, the index says "
                                       f"{(s['count'], self.num_tokens, self.channels)}")
            self.files.append(path)
            self.counts.append(int(s["count"]))
        self.offsets = np.cumsum([0] + self.counts).tolist()
        if self.offsets[-1] != int(self.index["num_latents"]):
            raise LatentCacheError(f"{self.dir / INDEX_NAME}: shards hold {self.offsets[-1]} latents, "
                                   f"the index says {self.index['num_latents']}")
        if self.offsets[-1] == 0:
            raise LatentCacheError(f"{self.dir}: the latent cache is empty")
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles stay in the process that opened them
        return state

    @property
    def tokenizer_config(self) -> dict | None:
        return self.index.get("tokenizer_config")

    def _handle(self, s: int):
        from safetensors import safe_open

        if s not in self._handles:
            try:
                self._handles[s] = safe_open(str(self.files[s]), framework="pt")
            except Exception as e:
                raise LatentCacheError(f"{self.files[s]}: corrupt latent shard ({str(e).splitlines()[0]})") from None
        return self._handles[s]

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"latent {i} out of range for {n}")
        i %= n
        s = bisect.bisect_right(self.offsets, i) - 1
        j = i - self.offsets[s]
        try:
            return self._handle(s).get_slice("tokens")[j:j + 1][0]
        except LatentCacheError:
            raise
        except Exception as e:
            raise LatentCacheError(f"{self.files[s]}: cannot read latent {j} ({str(e).splitlines()[0]})") from None

    def get_many(self, indices) -> torch.Tensor:
        """``(len(indices), tokens, C)`` float32."""
        return torch.stack([self[int(i)] for i in indices])


# ---------------------------------------------------------------------------- statistics


def plane_values(flat: torch.Tensor, grid) -> dict[str, torch.Tensor]:
    """Flat tokens ``(B, tokens, C)`` -> ``{plane: (B * positions, C)}`` (via :class:`Triplane`)."""
    tri = Triplane.unflatten(flat, tuple(grid))
    return {name: rearrange(getattr(tri, name), "b c r s -> (b r s) c") for name in PLANES}


@dataclass
class LatentStats:
    """Per-plane, per-channel mean and std of the latents (planes in :data:`PLANES` order).

    ``mean`` and ``std`` are float64 ``(3, C)``; ``grid`` is ``(Tl, Hl, Wl)``. SiT is trained on
    ``normalize(z) = (z - mean) / std`` and samples are mapped back with :meth:`denormalize`.
    A channel with zero spread is divided by ``eps`` instead of 0.
    """

    grid: tuple[int, int, int]
    mean: torch.Tensor
    std: torch.Tensor
    num: int = 0
    eps: float = 1e-6

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64)
        self.std = torch.as_tensor(self.std, dtype=torch.float64)
        if self.mean.ndim != 2 or self.mean.shape[0] != 3 or self.std.shape != self.mean.shape:
            raise LatentCacheError(f"statistics need mean and std of shape (3, C), got {tuple(self.mean.shape)} "
                                   f"and {tuple(self.std.shape)}")

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def per_token(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (eps-clamped) std broadcast to the flat layout: two ``(1, tokens, C)`` tensors."""
        tl, hl, wl = self.grid

        def expand(v: torch.Tensor) -> torch.Tensor:
            v = v.to(dtype)
            return Triplane(repeat(v[0], "c -> 1 c h w", h=hl, w=wl), repeat(v[1], "c -> 1 c t w", t=tl, w=wl),
                            repeat(v[2], "c -> 1 c t h", t=tl, h=hl)).flatten().to(device)

        return expand(self.mean), expand(self.std.clamp_min(self.eps))

    def _check(self, flat: torch.Tensor) -> None:
        if flat.ndim != 3 or flat.shape[1:] != (_num_tokens(self.grid), self.channels):
            raise ValueError(f"expected flat latents (B, {_num_tokens(self.grid)}, {self.channels}) for grid "
                             f"{self.grid}, got {tuple(flat.shape)}")

    def normalize(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B, tokens, C)`` latents -> zero-mean, unit-std per plane and channel."""
        self._check(flat)
        mean, std = self.per_token(flat.device, flat.dtype)
        return (flat - mean) / std

    def denormalize(self, flat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        self._check(flat)
        mean, std = self.per_token(flat.device, flat.dtype)
        return flat * std + mean

    # -- serialization
    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "planes": list(PLANES), "num": int(self.num), "eps": self.eps,
                "mean": {p: self.mean[k].tolist() for k, p in enumerate(PLANES)},
                "std": {p: self.std[k].tolist() for k, p in enumerate(PLANES)}}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentStats":
        try:
            return cls(grid=tuple(d["grid"]), mean=[d["mean"][p] for p in PLANES], std=[d["std"][p] for p in PLANES],
                       num=int(d.get("num", 0)), eps=float(d.get("eps", 1e-6)))
        except (KeyError, TypeError) as e:
            raise LatentCacheError(f"malformed latent statistics (missing {e})") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        _atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatentStats":
        """From ``stats.json`` (or the cache folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_NAME
        return cls.from_dict(_read_json(path, "latent statistics (run `coordtok encode`, which writes them)"))


def compute_stats(latent_dir: str | Path, num: int = 2048, seed: int = 0, batch: int = 256) -> LatentStats:
    """Per-plane, per-channel mean and (population) std over ``num`` random cached latents (all
    of them if there are fewer), accumulated in float64 with Chan et al.'s parallel update (a
    running ``(count, mean, M2)`` merged with each batch's), so no sum of squares cancels."""
    ds = LatentDataset(latent_dir)
    n = len(ds)
    chosen = np.arange(n) if num >= n else np.sort(np.random.default_rng(seed).choice(n, size=num, replace=False))
    count = torch.zeros(3, 1, dtype=torch.float64)  # values seen per plane (and channel)
    mean = torch.zeros(3, ds.channels, dtype=torch.float64)
    m2 = torch.zeros(3, ds.channels, dtype=torch.float64)
    for lo in range(0, len(chosen), batch):
        planes = plane_values(ds.get_many(chosen[lo:lo + batch]).double(), ds.grid)
        for k, name in enumerate(PLANES):
            x = planes[name]  # (values, C)
            nb, mb = x.shape[0], x.mean(0)
            m2b = (x - mb).square().sum(0)
            na = count[k].clone()
            delta = mb - mean[k]
            count[k] += nb
            mean[k] += delta * nb / count[k]
            m2[k] += m2b + delta.square() * na * nb / count[k]
    std = (m2 / count).clamp_min(0).sqrt()
    return LatentStats(grid=ds.grid, mean=mean, std=std, num=len(chosen))
