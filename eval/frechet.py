"""The Frechet distance between Gaussians fitted to feature rows: FVD's (and FID's) math.

``d = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 sqrtm(S_1 S_2))``, real part (Heusel et al. 2017;
Unterthiner et al. 2018 for videos). :class:`FeatureStats` accumulates the mean and covariance
of feature rows in float64; the protocol that decides which clips and which detector is
:mod:`eval.fvd`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from coordtok.fileio import write_with

log = logging.getLogger(__name__)


class FeatureStats:
    """Running mean and covariance of feature rows, in float64.

    Keeps ``n``, ``sum(x - shift)`` and ``sum((x - shift)(x - shift)^T)``, where ``shift`` is the
    mean of the first batch: the raw second moment ``E[x x^T] - mu mu^T`` loses digits to
    cancellation when features have a large mean compared with their spread; shifting first
    keeps float64 accurate to ~1e-12 relative.
    """

    def __init__(self):
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    @property
    def dim(self) -> int | None:
        return None if self.shift is None else self.shift.shape[0]

    def update(self, feats) -> "FeatureStats":
        """Add feature rows ``(N, D)`` (any float dtype, numpy or torch); returns self."""
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"FeatureStats.update expects features (N >= 1, D), got {x.shape}")
        if self.shift is None:
            d = x.shape[1]
            self.shift, self.sum, self.outer = x.mean(axis=0), np.zeros(d), np.zeros((d, d))
        elif x.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed: {x.shape[1]} after {self.dim}")
        x = x - self.shift
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    @classmethod
    def from_features(cls, feats) -> "FeatureStats":
        return cls().update(feats)

    def mean_cov(self, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(mu (D,), sigma (D, D))`` float64. ``ddof=1`` is ``np.cov``'s unbiased estimate (as
        VideoGPT/PVDM); StyleGAN-V divides by N (``ddof=0``): a factor N / (N - 1) on sigma."""
        if self.n <= ddof:
            raise ValueError(f"need more than {ddof} feature rows for a covariance, have {self.n}")
        mean_shifted = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mean_shifted, mean_shifted)) / (self.n - ddof)
        return self.shift + mean_shifted, (cov + cov.T) / 2  # symmetric to the last bit

    def save(self, path) -> Path:
        """Write ``n, shift, sum, outer`` to an npz (atomically)."""
        if self.n == 0:
            raise ValueError("cannot save empty FeatureStats")
        path = Path(path)
        write_with(
            path,
            lambda f: np.savez(f, n=np.int64(self.n), shift=self.shift, sum=self.sum, outer=self.outer),
            what="feature statistics",
        )
        return path

    @classmethod
    def load(cls, path) -> "FeatureStats":
        with np.load(path) as z:
            stats = cls()
            stats.n = int(z["n"])
            stats.shift, stats.sum, stats.outer = (z[k].astype(np.float64) for k in ("shift", "sum", "outer"))
        return stats


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``, real part.

    ``mu: (D,)``, ``sigma: (D, D)``. ``scipy.linalg.sqrtm`` of the product; when that is not
    finite (a singular product, e.g. fewer samples than dimensions) the covariances get ``eps``
    added to their diagonals and the root is taken again, as pytorch-fid / TTUR do. A complex
    root from round-off is reduced to its real part (StyleGAN-V's convention). For 400-d I3D
    features, scipy >= 1.16 takes a few seconds per call on a CPU.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("frechet_distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fvd_from_features(a, b, ddof: int = 1) -> float:
    """Frechet distance between Gaussians fitted to feature rows ``a: (N, D)`` and ``b: (M, D)``."""
    return frechet_distance(
        *FeatureStats.from_features(a).mean_cov(ddof), *FeatureStats.from_features(b).mean_cov(ddof)
    )
