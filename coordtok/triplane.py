"""The factorized triplane latent of CoordTok.

A clip of ``T x H x W`` pixels is summarised by three 2D feature planes:

* ``xy``: ``(B, C, Hl, Wl)`` -- content shared by every frame, indexed by (h, w);
* ``yt``: ``(B, C, Tl, Wl)`` -- how each column evolves over time, indexed by (t, w);
* ``xt``: ``(B, C, Tl, Hl)`` -- how each row evolves over time, indexed by (t, h).

(The names follow the paper: ``x`` is the row axis h, ``y`` the column axis w.)

Coordinates are integer *patch indices* ``(t, h, w)`` on the decoder's patch grid
``Tp x Hp x Wp`` (for the paper setting 128 x 16 x 16). A patch index ``i`` on an axis of
``n`` patches maps to the continuous plane position ``i / (n - 1) * (r - 1)`` on a plane axis of
``r`` cells, i.e. the first and last patches sit exactly on the first and last plane cells
(``align_corners=True`` semantics), and everything in between is bilinearly interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

PLANES = ("xy", "yt", "xt")


def num_tokens(grid: tuple[int, int, int]) -> int:
    """Latent positions of a triplane of resolution ``(Tl, Hl, Wl)``: ``Hl*Wl + Tl*Wl + Tl*Hl``."""
    tl, hl, wl = grid
    return hl * wl + tl * wl + tl * hl


@dataclass
class Triplane:
    """Three feature planes; see the module docstring for shapes and axis conventions."""

    xy: torch.Tensor  # (B, C, Hl, Wl)
    yt: torch.Tensor  # (B, C, Tl, Wl)
    xt: torch.Tensor  # (B, C, Tl, Hl)

    def __post_init__(self):
        b, c, hl, wl = self.xy.shape
        if self.yt.shape[:2] != (b, c) or self.xt.shape[:2] != (b, c):
            raise ValueError(f"planes disagree on (B, C): {self.xy.shape}, {self.yt.shape}, {self.xt.shape}")
        if self.yt.shape[3] != wl or self.xt.shape[3] != hl or self.yt.shape[2] != self.xt.shape[2]:
            raise ValueError(
                f"plane sizes do not fit one (Tl, Hl, Wl) grid: xy {tuple(self.xy.shape)}, "
                f"yt {tuple(self.yt.shape)}, xt {tuple(self.xt.shape)}"
            )

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_size(self) -> int:
        return self.xy.shape[0]

    @property
    def channels(self) -> int:
        return self.xy.shape[1]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Latent resolution ``(Tl, Hl, Wl)``."""
        return self.yt.shape[2], self.xy.shape[2], self.xy.shape[3]

    @property
    def num_tokens(self) -> int:
        """Number of latent positions over the three planes (1280 for the paper's small grid)."""
        return num_tokens(self.grid)

    def planes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.xy, self.yt, self.xt

    def map(self, fn) -> "Triplane":
        """Apply ``fn(plane_tensor) -> tensor`` to every plane (e.g. ``.to``, ``.detach``)."""
        return Triplane(fn(self.xy), fn(self.yt), fn(self.xt))

    def to(self, *args, **kwargs) -> "Triplane":
        return self.map(lambda p: p.to(*args, **kwargs))

    def __getitem__(self, index) -> "Triplane":
        """Index the batch axis: ``triplane[2:4]``."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.map(lambda p: p[index])

    @staticmethod
    def cat(triplanes: list["Triplane"]) -> "Triplane":
        return Triplane(*(torch.cat([getattr(t, n) for t in triplanes]) for n in PLANES))

    # ------------------------------------------------------------------ flat form
    def flatten(self) -> torch.Tensor:
        """``(B, Hl*Wl + Tl*Wl + Tl*Hl, C)``: xy tokens (row-major h, w), then yt (t, w), then xt (t, h)."""
        return torch.cat(
            [
                rearrange(self.xy, "b c h w -> b (h w) c"),
                rearrange(self.yt, "b c t w -> b (t w) c"),
                rearrange(self.xt, "b c t h -> b (t h) c"),
            ],
            dim=1,
        )

    @staticmethod
    def unflatten(tokens: torch.Tensor, grid: tuple[int, int, int]) -> "Triplane":
        """Inverse of :meth:`flatten`; ``grid`` is the latent resolution ``(Tl, Hl, Wl)``."""
        tl, hl, wl = grid
        sizes = [hl * wl, tl * wl, tl * hl]
        if tokens.ndim != 3 or tokens.shape[1] != sum(sizes):
            raise ValueError(f"expected (B, {sum(sizes)}, C) tokens for grid {grid}, got {tuple(tokens.shape)}")
        xy, yt, xt = torch.split(tokens, sizes, dim=1)
        return Triplane(
            rearrange(xy, "b (h w) c -> b c h w", h=hl, w=wl),
            rearrange(yt, "b (t w) c -> b c t w", t=tl, w=wl),
            rearrange(xt, "b (t h) c -> b c t h", t=tl, h=hl),
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, coords: torch.Tensor, patch_grid: tuple[int, int, int]) -> torch.Tensor:
        """Bilinear features at integer patch coordinates.

        Args:
            coords: ``(B, N, 3)`` integer patch indices ``(t, h, w)`` with
                ``0 <= t < Tp``, ``0 <= h < Hp``, ``0 <= w < Wp``.
            patch_grid: ``(Tp, Hp, Wp)``, the decoder's patch grid.

        Returns:
            ``(B, N, 3C)``: features of xy at (h, w), yt at (t, w) and xt at (t, h), concatenated
            in that order.
        """
        pos = coords.to(self.xy.dtype)
        # Patch index -> normalized position in [-1, 1] (align_corners=True): index 0 -> -1,
        # index n-1 -> +1. A single patch along an axis sits at the plane's first cell.
        scale = torch.tensor([max(n - 1, 1) for n in patch_grid], dtype=pos.dtype, device=pos.device)
        pos = pos / scale * 2.0 - 1.0
        t, h, w = pos.unbind(-1)
        return torch.cat([_bilinear(self.xy, h, w), _bilinear(self.yt, t, w), _bilinear(self.xt, t, h)], dim=-1)


def _bilinear(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sample ``plane`` ``(B, C, R, S)`` at normalized positions ``rows, cols`` ``(B, N)`` in [-1, 1].

    Returns ``(B, N, C)``.
    """
    # grid_sample wants (x, y) = (column, row) order.
    grid = torch.stack([cols, rows], dim=-1).unsqueeze(1)  # (B, 1, N, 2)
    out = F.grid_sample(plane, grid.to(plane.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return rearrange(out, "b c 1 n -> b n c")
