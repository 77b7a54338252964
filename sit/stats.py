"""Per-plane, per-channel normalization statistics of the latents CoordTok-SiT is trained on.

SiT sees ``(z - mean) / std`` with mean and std per plane (xy, yt, xt) and channel, measured on
2048 random cached clips (CoordTok paper, appendix A). The plane split of the flat token axis
is taken from :class:`coordtok.triplane.Triplane` (``flatten`` / ``unflatten``), the one place
that defines it. ``stats.json`` sits in the cache folder; every SiT checkpoint carries a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat

from coordtok.fileio import write_json
from coordtok.triplane import PLANES, Triplane, num_tokens

from .cache import LatentCacheError, LatentDataset, _read_json

STATS_NAME = "stats.json"


def plane_values(flat: torch.Tensor, grid) -> dict[str, torch.Tensor]:
    """Flat tokens ``(B, tokens, C)`` -> ``{plane: (B * positions, C)}`` (via :class:`Triplane`)."""
    tri = Triplane.unflatten(flat, tuple(grid))
    return {name: rearrange(getattr(tri, name), "b c r s -> (b r s) c") for name in PLANES}


@dataclass
class LatentStats:
    """Per-plane, per-channel mean and std of the latents (planes in :data:`PLANES` order).

    ``mean`` and ``std`` are float64 ``(3, C)``; ``grid`` is ``(Tl, Hl, Wl)``. SiT is trained on
    ``normalize(z) = (z - mean) / std`` and samples are mapped back with :meth:`denormalize`.
    A channel with zero spread is divided by ``eps`` instead of 0. Every entry must be finite and
    every std >= 0 (a NaN turns every sample into NaN, written as black frames); ``source`` (the
    file they came from, not serialized) names them in that one-line error.

    ``classes`` (class names) and ``class_counts`` (latents per class, over the whole cache) are
    the cache's labels when it has any (None otherwise): a class-conditional SiT checkpoint carries
    them, so ``coordtok sample`` can take a class by name and draw labels with the data's frequencies.
    """

    grid: tuple[int, int, int]
    mean: torch.Tensor
    std: torch.Tensor
    num: int = 0
    eps: float = 1e-6
    source: str = "latent statistics"
    classes: list[str] | None = None
    class_counts: list[int] | None = None

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if self.classes is not None and (self.class_counts is None or len(self.class_counts) != len(self.classes)):
            raise LatentCacheError(
                f"{self.source}: class_counts must give one count for each of the {len(self.classes)} classes"
            )
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64)
        self.std = torch.as_tensor(self.std, dtype=torch.float64)
        if self.mean.ndim != 2 or self.mean.shape[0] != 3 or self.std.shape != self.mean.shape:
            raise LatentCacheError(
                f"{self.source}: statistics need mean and std of shape (3, C), got "
                f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        self.check()

    def check(self, positive_std: str | None = None) -> "LatentStats":
        """One-line :class:`LatentCacheError` naming the first entry that is not finite or a
        negative std; with ``positive_std`` (the reason, for the message) a std of 0 too."""
        for what, values in (("mean", self.mean), ("std", self.std)):
            bad, need = ~torch.isfinite(values), "finite"
            if what == "std":
                bad |= values <= 0 if positive_std else values < 0
                need = f"finite and > 0 ({positive_std})" if positive_std else "finite and >= 0"
            if bad.any():
                k, c = (int(i) for i in bad.nonzero()[0])
                raise LatentCacheError(
                    f"{self.source}: {PLANES[k]}_{what}[{c}] is {float(values[k, c])}, must be "
                    f"{need}; measure the statistics again (`coordtok encode` writes stats.json)"
                )
        return self

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def per_token(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (eps-clamped) std broadcast to the flat layout: two ``(1, tokens, C)`` tensors."""
        tl, hl, wl = self.grid

        def expand(v: torch.Tensor) -> torch.Tensor:
            v = v.to(dtype)
            return (
                Triplane(
                    repeat(v[0], "c -> 1 c h w", h=hl, w=wl),
                    repeat(v[1], "c -> 1 c t w", t=tl, w=wl),
                    repeat(v[2], "c -> 1 c t h", t=tl, h=hl),
                )
                .flatten()
                .to(device)
            )

        return expand(self.mean), expand(self.std.clamp_min(self.eps))

    def _check(self, flat: torch.Tensor) -> None:
        if flat.ndim != 3 or flat.shape[1:] != (num_tokens(self.grid), self.channels):
            raise ValueError(
                f"expected flat latents (B, {num_tokens(self.grid)}, {self.channels}) for grid "
                f"{self.grid}, got {tuple(flat.shape)}"
            )

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
        return {
            "grid": list(self.grid),
            "planes": list(PLANES),
            "num": int(self.num),
            "eps": self.eps,
            "mean": {p: self.mean[k].tolist() for k, p in enumerate(PLANES)},
            "std": {p: self.std[k].tolist() for k, p in enumerate(PLANES)},
        } | (
            {"classes": list(self.classes), "class_counts": [int(c) for c in self.class_counts]} if self.classes else {}
        )

    @classmethod
    def from_dict(cls, d: dict, source: str = "latent statistics") -> "LatentStats":
        try:
            return cls(
                grid=tuple(d["grid"]),
                mean=[d["mean"][p] for p in PLANES],
                std=[d["std"][p] for p in PLANES],
                num=int(d.get("num", 0)),
                eps=float(d.get("eps", 1e-6)),
                source=source,
                classes=d.get("classes"),
                class_counts=d.get("class_counts"),
            )
        except (KeyError, TypeError) as e:
            raise LatentCacheError(f"{source}: malformed latent statistics (missing {e})") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json(path, self.to_dict(), indent=1, what="latent statistics")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatentStats":
        """From ``stats.json`` (or the cache folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_NAME
        return cls.from_dict(
            _read_json(path, "latent statistics (run `coordtok encode`, which writes them)"), source=str(path)
        )


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
        planes = plane_values(ds.get_many(chosen[lo : lo + batch]).double(), ds.grid)
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
    return LatentStats(
        grid=ds.grid, mean=mean, std=std, num=len(chosen), classes=ds.classes, class_counts=ds.class_counts()
    )
