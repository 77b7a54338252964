"""The latent cache that ``coordtok encode`` writes, read back for CoordTok-SiT training.

Layout of a cache folder::

    DIR/index.json                  grid, channels, number of latents, shards, tokenizer + data
    DIR/shard-00000.safetensors     "tokens": float32 (n, tokens, C), flat triplanes (Triplane.flatten)
    DIR/shard-00000.json            per-item metadata: item index, source path, start frame, frames, label
    DIR/stats.json                  per-plane, per-channel mean / std (:mod:`sit.stats`), class list + counts

Class labels: ``index.json``'s ``classes`` names the classes (UCF-101's ``classInd.txt`` order, a
folder's subfolders, one per sample clip; ``null`` for data without classes) and every item's
``label`` in the shard sidecars indexes it. A cache written before labels were recorded has
neither: it trains unconditionally.

A ``--whole-videos`` cache holds every video as consecutive windows (latents in window order);
``index.json``'s ``whole_videos`` gives the window length, overlap and each video's windows
(:func:`video_windows`).

Reading needs neither the tokenizer nor video decoding: :class:`LatentDataset` memory-maps the
shards. Writing is :mod:`sit.encode`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from coordtok.errors import CoordTokError
from coordtok.triplane import num_tokens

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


class LatentCacheError(CoordTokError, ValueError):
    """A latent cache is missing, incomplete, corrupt or does not fit (one-line message)."""


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


# ---------------------------------------------------------------------------- tokenizer fingerprint


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 hex of a module's weights: every ``state_dict`` tensor's name, dtype, shape and bytes, in
    sorted key order. A float sum would depend on the thread count through the reduction order (a
    resumed run could disown its own latents); the bytes do not. Used for the tokenizer whose latents
    a cache holds (``index.json``'s ``tokenizer_fingerprint``, copied into every SiT checkpoint) and
    for the SiT of a sampling run."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 12 hex digits, for messages (``none recorded`` for an old file without one)."""
    return fingerprint[:12] if fingerprint else "none recorded"


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


def video_windows(latent_dir: str | Path) -> list[dict]:
    """The videos of a ``coordtok encode --whole-videos`` cache, each as a sequence of window
    triplanes: ``[{"path", "frames" (usable frames at the encoding's stride), "first" (first usable
    frame), "items" (latent indices, window order), "starts" (each window's first frame in the
    file)}]``. With :class:`LatentDataset` and ``Triplane.unflatten`` the items give the windows'
    triplanes, which :meth:`eval.tokenizers.CoordTokReconstructor.decode_windows` decodes (built
    with ``overlap = index["whole_videos"]["overlap"]``)."""
    index = read_index(latent_dir)
    whole = index.get("whole_videos")
    if not isinstance(whole, dict) or not isinstance(whole.get("videos"), list):
        raise LatentCacheError(
            f"{Path(latent_dir) / INDEX_NAME}: not a whole-video cache (it holds random "
            f"windows; encode with `coordtok encode --whole-videos`)"
        )
    return [
        {
            "path": v["path"],
            "frames": int(v["frames"]),
            "first": int(v["first"]),
            "items": list(range(int(v["first_item"]), int(v["first_item"]) + len(v["starts"]))),
            "starts": [int(t) for t in v["starts"]],
        }
        for v in whole["videos"]
    ]


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
        self.num_tokens = num_tokens(self.grid)
        self.files, self.counts = [], []
        for s in self.index["shards"]:
            path = self.dir / s["file"]
            if not path.is_file():
                raise LatentCacheError(f"{path}: latent shard missing (re-run `coordtok encode` to rebuild it)")
            try:
                with safe_open(str(path), framework="pt") as f:
                    shape = tuple(f.get_slice("tokens").get_shape())
            except Exception as e:
                raise LatentCacheError(
                    f"{path}: corrupt latent shard ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                    f"delete it and re-run `coordtok encode`"
                ) from None
            if shape != (s["count"], self.num_tokens, self.channels):
                raise LatentCacheError(
                    f"{path}: latent shard has shape {shape}, the index says "
                    f"{(s['count'], self.num_tokens, self.channels)}"
                )
            self.files.append(path)
            self.counts.append(int(s["count"]))
        self.offsets = np.cumsum([0] + self.counts).tolist()
        if self.offsets[-1] != int(self.index["num_latents"]):
            raise LatentCacheError(
                f"{self.dir / INDEX_NAME}: shards hold {self.offsets[-1]} latents, "
                f"the index says {self.index['num_latents']}"
            )
        if self.offsets[-1] == 0:
            raise LatentCacheError(f"{self.dir}: the latent cache is empty")
        self._handles: dict[int, object] = {}
        # class names, or None: no labels (an unlabelled data set, or a cache written before labels)
        self.classes: list[str] | None = list(self.index["classes"]) if self.index.get("classes") else None
        self.labels: np.ndarray | None = self._read_labels() if self.classes else None

    def _read_labels(self) -> np.ndarray:
        """Every latent's class index ``(n,)`` int64, from the shard sidecars."""
        labels = []
        for path, count in zip(self.files, self.counts):
            meta = _read_json(path.with_suffix(".json"), "latent shard sidecar (re-run `coordtok encode`)")
            got = [m.get("label") for m in meta.get("meta", [])] if isinstance(meta.get("meta"), list) else []
            if len(got) != count or not all(isinstance(k, int) and 0 <= k < len(self.classes) for k in got):
                raise LatentCacheError(
                    f"{path.with_suffix('.json')}: no valid class label for each of its {count} "
                    f"latents though {INDEX_NAME} names {len(self.classes)} classes; re-run "
                    f"`coordtok encode` into a new folder"
                )
            labels += got
        return np.asarray(labels, dtype=np.int64)

    def class_counts(self) -> list[int] | None:
        """Latents per class (index order), or None without labels."""
        return None if self.labels is None else np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles stay in the process that opened them
        return state

    @property
    def tokenizer_config(self) -> dict | None:
        return self.index.get("tokenizer_config")

    @property
    def tokenizer_fingerprint(self) -> str | None:
        """:func:`weights_fingerprint` of the tokenizer that encoded the cache (None: an older cache)."""
        return self.index.get("tokenizer_fingerprint")

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
            return self._handle(s).get_slice("tokens")[j : j + 1][0]
        except LatentCacheError:
            raise
        except Exception as e:
            raise LatentCacheError(f"{self.files[s]}: cannot read latent {j} ({str(e).splitlines()[0]})") from None

    def get_many(self, indices) -> torch.Tensor:
        """``(len(indices), tokens, C)`` float32."""
        return torch.stack([self[int(i)] for i in indices])


class LabelledLatents(torch.utils.data.Dataset):
    """The latents with their labels, what SiT training reads: item ``i`` is ``{"latent": (tokens, C)
    float32, "label": int64 class index}``; ``label`` is -1 for a cache without classes."""

    def __init__(self, latents: LatentDataset):
        self.latents = latents

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        label = -1 if self.latents.labels is None else int(self.latents.labels[i])
        return {"latent": self.latents[i], "label": torch.tensor(label, dtype=torch.long)}
