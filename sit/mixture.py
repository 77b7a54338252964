"""Gaussian mixtures whose flow is closed form: the ground truth samplers are measured against.

Data ``x1 ~ sum_k pi_k N(mu_k, diag(s_k^2))``, noise ``x0 ~ N(0, I)``, the linear interpolant
``x_t = t x1 + (1 - t) x0`` (:class:`sit.transport.LinearPath`). Given component ``k``,
``x_t ~ N(t mu_k, diag(V_k))`` with ``V_k = t^2 s_k^2 + (1 - t)^2``, and ``(x1 - x0, x_t)`` is
jointly Gaussian with covariance ``t s_k^2 - (1 - t)`` per dimension, so

    E[x1 - x0 | x_t = x, k] = mu_k + c_k (x - t mu_k),      c_k = (t s_k^2 - (1 - t)) / V_k,

and the marginal velocity is that, weighted by the posterior responsibilities
``r_k(x, t) = pi_k N(x; t mu_k, V_k) / p_t(x)``:

    v(x, t) = sum_k r_k (mu_k + c_k (x - t mu_k)).

At ``t = 0`` this is ``E[x1] - x``, at ``t = 1`` it is ``x`` (noise is independent of data).
Used by ``tests/test_samplers.py`` and ``bench/samplers.py``.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """``K`` diagonal Gaussians in ``D`` dimensions.

    Args:
        weights: ``(K,)`` positive, normalised here.
        means: ``(K, D)``.
        stds: ``(K, D)`` (or ``(K, 1)``, isotropic), all ``> 0``.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor):
        self.weights = (weights / weights.sum()).double()
        self.means = means.double()
        self.stds = stds.double().expand_as(self.means)
        if not bool((self.stds > 0).all()) or not bool((self.weights > 0).all()):
            raise ValueError("mixture weights and stds must be positive")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x1 (n, D) float32, component labels (n,))``, exact draws."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[labels] + self.stds[labels] * eps).float(), labels

    def mean(self) -> torch.Tensor:
        """``(D,)`` mixture mean."""
        return self.weights @ self.means

    def variance(self) -> torch.Tensor:
        """``(D,)`` per-dimension mixture variance ``sum_k pi_k (s_k^2 + mu_k^2) - mean^2``."""
        return self.weights @ (self.stds**2 + self.means**2) - self.mean() ** 2

    @staticmethod
    def _time(t, x: torch.Tensor) -> float:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)  # a python float stays exact
        if t.numel() > 1 and not bool((t == t[0]).all()):
            raise ValueError("GaussianMixture.velocity takes one time for the whole batch")
        return float(t[0])

    def log_components(self, x: torch.Tensor, t) -> torch.Tensor:
        """``(n, K)``: ``log pi_k + log N(x; t mu_k, diag(V_k))`` (float64; at ``t = 1`` the data
        density's components, which :meth:`classify` uses)."""
        t = self._time(t, x)
        x = x.double().reshape(x.shape[0], -1)
        var = t**2 * self.stds**2 + (1 - t) ** 2  # (K, D)
        m = t * self.means
        # sum_d (x - m)^2 / V expanded into matmuls: (n, D) x (D, K), no (n, K, D) tensor.
        quad = (x**2) @ (1 / var).T - 2 * x @ (m / var).T + ((m**2) / var).sum(1)
        return self.weights.log() - 0.5 * (quad + var.log().sum(1) + self.dim * math.log(2 * math.pi))

    def responsibilities(self, x: torch.Tensor, t) -> torch.Tensor:
        return torch.softmax(self.log_components(x, t), dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` the most probable component of each data-space sample."""
        return self.log_components(x, 1.0).argmax(1)

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        """The exact marginal velocity at ``x`` ``(n, ...)``, one time ``t`` for the batch; dtype of ``x``."""
        tf = self._time(t, x)
        flat = x.reshape(x.shape[0], -1).double()
        r = self.responsibilities(flat, tf)  # (n, K)
        var = tf**2 * self.stds**2 + (1 - tf) ** 2
        c = (tf * self.stds**2 - (1 - tf)) / var  # (K, D)
        v = r @ self.means + flat * (r @ c) - tf * (r @ (c * self.means))
        return v.to(x.dtype).reshape(x.shape)

    @classmethod
    def random(
        cls,
        k: int,
        dim: int,
        generator: torch.Generator,
        separation: float = 1.0,
        std_range: tuple[float, float] = (0.2, 1.0),
    ) -> "GaussianMixture":
        """A mixture with unequal weights (``1..k`` normalised), means ``N(0, separation^2)`` per
        coordinate and per-dimension stds log-uniform in ``std_range`` (an uneven spectrum, like
        latent channels)."""
        weights = torch.arange(1, k + 1, dtype=torch.float64)
        means = separation * torch.randn(k, dim, generator=generator, dtype=torch.float64)
        lo, hi = (math.log(s) for s in std_range)
        stds = torch.exp(lo + (hi - lo) * torch.rand(k, dim, generator=generator, dtype=torch.float64))
        return cls(weights, means, stds)
