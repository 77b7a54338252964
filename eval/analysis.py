"""Per-video analysis: how reconstruction quality depends on motion and on spatial detail.

Two properties of the *real* clip (CoordTok paper, section 4.4 and Figure 6), each against reconstruction PSNR:

* **Dynamics magnitude** (how much the clip moves): for each consecutive frame pair, the L2
  distance of the RGB vectors at each pixel, averaged over pixels; averaged over the pairs; then
  ``log(. + DYNAMICS_EPS)``. Pixels are floats in [0, 1], so the per-pixel distance lies in
  [0, sqrt(3)] and the result in [log(1e-6) = -13.8, log(sqrt(3) + 1e-6) = 0.55]. The epsilon keeps
  a static clip finite (-13.8 rather than -inf) so it stays in tables, means and plots.
* **Frequency magnitude** (how much fine detail the frames hold): the Sobel gradient magnitude
  ``sqrt(gx^2 + gy^2)`` of each frame's luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, in
  [0, 1]), with the unnormalized 3x3 kernels ``gx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``,
  ``gy = gx^T``, on valid positions only (no padding, so frame borders add no false edges);
  averaged over pixels, then over frames. Range [0, 4 sqrt(2)]; a 0 -> 1 step edge scores 4 on
  the two columns that straddle it.

Videos are accepted in either project convention: uint8 ``(T, H, W, 3)`` (file side, 0..255) or
float ``(3, T, H, W)`` in [-1, 1] (model side), numpy or torch.
"""

from __future__ import annotations

import csv
import math
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from coordtok.fileio import atomic_path, write_text, write_with

DYNAMICS_EPS = 1e-6
LUMA = (0.299, 0.587, 0.114)
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def unit_frames(video) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` or float ``(3, T, H, W)`` in [-1, 1] -> float64 ``(T, 3, H, W)`` in [0, 1]."""
    x = video if isinstance(video, torch.Tensor) else torch.as_tensor(np.asarray(video))
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"a uint8 video must be (T, H, W, 3), got {tuple(x.shape)}")
        return rearrange(x.double() / 255, "t h w c -> t c h w")
    if not x.is_floating_point() or x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"a float video must be (3, T, H, W) in [-1, 1], got {x.dtype} {tuple(x.shape)}")
    return rearrange(((x.double() + 1) / 2).clamp(0, 1), "c t h w -> t c h w")


def dynamics_magnitude(video) -> float:
    """``log(mean over frame pairs and pixels of ||x_{t+1} - x_t||_2 over RGB + 1e-6)``, [0, 1]
    pixels (module docstring). Needs at least 2 frames."""
    x = unit_frames(video)
    if x.shape[0] < 2:
        raise ValueError(f"dynamics magnitude needs at least 2 frames, got {x.shape[0]}")
    dist = (x[1:] - x[:-1]).pow(2).sum(dim=1).sqrt()  # (T-1, H, W)
    # Every pair has H * W pixels, so the mean over pairs of per-pair means is the overall mean.
    return math.log(dist.mean().item() + DYNAMICS_EPS)


def sobel_magnitude(frames: torch.Tensor) -> torch.Tensor:
    """``(T, 3, H, W)`` in [0, 1], H, W >= 3 -> per-frame mean Sobel magnitude of the luma ``(T,)``."""
    if min(frames.shape[-2:]) < 3:
        raise ValueError(f"Sobel needs frames of at least 3x3 pixels, got {tuple(frames.shape)}")
    luma = torch.einsum("tchw,c->thw", frames, frames.new_tensor(LUMA))[:, None]
    gx = frames.new_tensor(SOBEL_X)
    kernels = torch.stack([gx, gx.T])[:, None]  # (2, 1, 3, 3): x and y derivatives
    g = F.conv2d(luma, kernels)  # valid positions only: (T, 2, H-2, W-2)
    return g.pow(2).sum(dim=1).sqrt().mean(dim=(1, 2))


def frequency_magnitude(video) -> float:
    """Mean Sobel gradient magnitude of each frame's luma in [0, 1], mean over frames (module docstring)."""
    return sobel_magnitude(unit_frames(video)).mean().item()


def video_psnr(real, recon) -> float:
    """Per-frame PSNR (dB, [0, 1] pixels) averaged over frames, the protocol of ``eval.metrics``."""
    from .metrics import psnr

    a, b = unit_frames(real), unit_frames(recon)
    if a.shape != b.shape:
        raise ValueError(f"real and reconstruction differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return psnr(a.float(), b.float()).mean().item()


def _pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation, or None when undefined (fewer than 2 points or a constant column)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def analyze(items, out_dir, prefix: str = "analysis") -> dict:
    """Per-video table and scatter plots of reconstruction PSNR against dynamics and frequency magnitude.

    Args:
        items: iterable (e.g. a generator, to stream long clips) of ``(name, real, recon)`` or
            ``(name, real, psnr)``: ``real`` / ``recon`` videos as in :func:`unit_frames`, or a
            precomputed PSNR in dB.
        out_dir: gets ``<prefix>.csv``, ``<prefix>.md`` (table + Pearson correlations) and
            ``<prefix>.png`` (two scatter plots).

    Returns:
        ``{"rows": [{"name", "psnr", "dynamics", "frequency"}], "correlation": {"dynamics",
        "frequency"}, "csv", "markdown", "plot"}`` (paths as strings).
    """
    rows = []
    for name, real, recon in items:
        value = float(recon) if isinstance(recon, numbers.Real) else video_psnr(real, recon)
        rows.append(
            {
                "name": str(name),
                "psnr": value,
                "dynamics": dynamics_magnitude(real),
                "frequency": frequency_magnitude(real),
            }
        )
    return write_analysis(rows, out_dir, prefix)


def write_analysis(rows: list[dict], out_dir, prefix: str = "analysis") -> dict:
    """The table, correlations and plots of :func:`analyze` from rows already measured
    (``{"name", "psnr", "dynamics", "frequency"}`` each)."""
    out_dir = Path(out_dir)
    if not rows:
        raise ValueError("analyze needs at least one video")
    psnrs = [r["psnr"] for r in rows]
    corr = {m: _pearson([r[m] for r in rows], psnrs) for m in ("dynamics", "frequency")}

    paths = {"csv": out_dir / f"{prefix}.csv", "markdown": out_dir / f"{prefix}.md", "plot": out_dir / f"{prefix}.png"}

    def write_csv(f):
        writer = csv.DictWriter(f, fieldnames=["name", "psnr", "dynamics", "frequency"])
        writer.writeheader()
        writer.writerows(rows)

    write_with(paths["csv"], write_csv, binary=False, what="analysis table")
    lines = ["| video | PSNR (dB) | dynamics magnitude (log) | frequency magnitude |", "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['psnr']:.2f} | {r['dynamics']:.3f} | {r['frequency']:.4f} |" for r in rows]
    fmt = lambda c: "n/a" if c is None else f"{c:+.3f}"  # noqa: E731
    lines += [
        "",
        f"Pearson correlation with PSNR over {len(rows)} videos: dynamics {fmt(corr['dynamics'])}, "
        f"frequency {fmt(corr['frequency'])}.",
        "",
    ]
    write_text(paths["markdown"], "\n".join(lines), what="analysis table")
    _scatter(rows, corr, paths["plot"])
    return {"rows": rows, "correlation": corr, **{k: str(v) for k, v in paths.items()}}


def _scatter(rows: list[dict], corr: dict, path: Path) -> None:
    # The object-oriented API with a bare Figure renders with Agg and never touches pyplot's
    # global backend, so it is safe on headless machines and inside other programs.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labels = {
        "dynamics": "dynamics magnitude (log mean RGB L2, [0, 1] pixels)",
        "frequency": "frequency magnitude (mean Sobel magnitude of luma)",
    }
    for ax, metric in zip(axes, ("dynamics", "frequency")):
        x, y = [r[metric] for r in rows], [r["psnr"] for r in rows]
        ax.scatter(x, y, s=14, alpha=0.8)
        if len(rows) <= 20:  # names stay readable only for a handful of points
            for r in rows:
                ax.annotate(r["name"], (r[metric], r["psnr"]), fontsize=7, alpha=0.7)
        r_text = "n/a" if corr[metric] is None else f"{corr[metric]:+.2f}"
        ax.set(xlabel=labels[metric], title=f"PSNR vs {metric} (Pearson r {r_text})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("reconstruction PSNR (dB)")
    with atomic_path(path, "plot") as tmp:
        fig.savefig(tmp, format="png")
