"""The distances of ``bench/samplers.py`` against direct computations."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.samplers import frechet_distance, mode_stats, precision_recall
from sit.mixture import GaussianMixture


def test_frechet_distance_equals_the_sqrtm_formula():
    """The n x m nuclear-norm form equals ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))``
    with scipy's sqrtm, both when n > D and when n < D (rank-deficient covariances)."""
    g = torch.Generator().manual_seed(0)
    for n, m, d in ((300, 200, 6), (20, 30, 50)):
        a = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d, dtype=torch.float64)
        b = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
        sa, sb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
        cross = scipy.linalg.sqrtm(sa @ sb).real
        expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(sa) + np.trace(sb) - 2 * np.trace(cross)
        # sqrtm of a singular product is accurate to ~sqrt(eps) of its scale; the SVD form to eps.
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-6 * d)


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 8, generator=g)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    # Half of b's mass is where a has none: precision of b against a about 1/2, recall of a about 1.
    b = torch.cat([torch.randn(200, 8, generator=g), 100 + torch.randn(200, 8, generator=g)])
    p, r = precision_recall(b, a)
    assert p <= 0.5 and r > 0.8


def test_mode_stats_of_exact_samples():
    """Exact draws: weights within 4 standard errors of the mixture's, spreads 1 within 4 standard
    errors of a chi statistic over n_k x D squares (relative sd 1 / sqrt(2 n_k D))."""
    mixture = GaussianMixture.random(4, 256, torch.Generator().manual_seed(2), separation=0.7)
    n = 4000
    x, labels = mixture.sample(n, torch.Generator().manual_seed(3))
    assert torch.equal(mixture.classify(x), labels)  # modes this far apart are never confused
    weights, spreads = mode_stats(mixture, x)
    w = mixture.weights
    assert ((weights - w).abs() < 4 * (w * (1 - w) / n).sqrt()).all()
    assert ((spreads - 1).abs() < 4 / (2 * weights * n * 256).sqrt()).all()
    # A sampler that shrinks every mode by 2% is seen.
    _, shrunk = mode_stats(mixture, mixture.means[labels].float() + 0.98 * (x - mixture.means[labels].float()))
    assert ((shrunk - 0.98 * spreads).abs() < 1e-5).all() and (shrunk < 1 - 0.01).all()
    assert math.isclose(float(weights.sum()), 1.0)
