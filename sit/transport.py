"""Interpolant paths and the flow-matching training loss.

Convention (SiT / the paper): ``x0 ~ N(0, I)`` is noise at ``t = 0`` and ``x1`` is data at
``t = 1``. An affine path is

    x_t = alpha_t * x1 + sigma_t * x0,            u_t = d_alpha_t * x1 + d_sigma_t * x0,

and the network predicts the velocity ``v(x, t) = E[u_t | x_t = x]``.

Score from velocity. Write ``a = E[x1 | x_t = x]`` and ``b = E[x0 | x_t = x]``. Then
``x = alpha_t a + sigma_t b`` and ``v = d_alpha_t a + d_sigma_t b``; eliminating ``a`` gives
``b = (alpha_t v - d_alpha_t x) / (alpha_t d_sigma_t - d_alpha_t sigma_t)``. Since
``x_t | x0`` has Gaussian noise ``sigma_t x0``, Tweedie gives ``score = -b / sigma_t``:

    score = (alpha_t * v - d_alpha_t * x) / (sigma_t * (d_alpha_t * sigma_t - alpha_t * d_sigma_t)).

Linear path (alpha = t, sigma = 1 - t): the bracket is ``(1 - t) + t = 1``, so
``score = (t v - x) / (1 - t)``. GVP path (alpha = sin(pi t/2), sigma = cos(pi t/2)): the
bracket is ``pi/2``. The score is singular at ``t = 1`` (sigma_t = 0); samplers never evaluate
it there.

Times ``t`` are ``(B,)`` tensors (or python floats / 0-d tensors, broadcast over the batch);
``x`` may have any shape ``(B, ...)``.
"""

from __future__ import annotations

import abc
import math

import torch

from coordtok.triplane import Triplane


def expand_t_like_x(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` (float, 0-d or ``(B,)``) -> a tensor broadcastable against ``x`` ``(B, ...)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (so a seeded CPU
    generator gives the same numbers whatever device ``x`` is on)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


class AffinePath(abc.ABC):
    """``x_t = alpha_t x1 + sigma_t x0``; subclasses define the four coefficient functions."""

    @abc.abstractmethod
    def alpha_t(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def sigma_t(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def d_alpha_t(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def d_sigma_t(self, t: torch.Tensor) -> torch.Tensor: ...

    def plan(self, t, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, u_t)`` for noise ``x0`` and data ``x1`` (same shape ``(B, ...)``), ``t`` ``(B,)``."""
        t = expand_t_like_x(t, x1)
        x_t = self.alpha_t(t) * x1 + self.sigma_t(t) * x0
        u_t = self.d_alpha_t(t) * x1 + self.d_sigma_t(t) * x0
        return x_t, u_t

    def velocity_to_score(self, v: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        """Score ``grad log p_t(x)`` from the (exact or predicted) velocity ``v`` at ``x``, ``t``.

        See the module docstring for the derivation. Undefined at ``sigma_t = 0`` (t = 1).
        """
        t = expand_t_like_x(t, x)
        alpha_t, sigma_t = self.alpha_t(t), self.sigma_t(t)
        d_alpha_t, d_sigma_t = self.d_alpha_t(t), self.d_sigma_t(t)
        return (alpha_t * v - d_alpha_t * x) / (sigma_t * (d_alpha_t * sigma_t - alpha_t * d_sigma_t))

    def velocity_to_data(self, v: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        """``E[x1 | x_t = x]`` from the velocity: ``(d_sigma_t x - sigma_t v) / (alpha_t d_sigma_t -
        d_alpha_t sigma_t)`` (the module docstring's ``a``, solved without dividing by ``alpha_t``,
        so it holds at ``t = 0`` too; linear path: ``x + (1 - t) v``)."""
        t = expand_t_like_x(t, x)
        alpha_t, sigma_t = self.alpha_t(t), self.sigma_t(t)
        d_alpha_t, d_sigma_t = self.d_alpha_t(t), self.d_sigma_t(t)
        return (d_sigma_t * x - sigma_t * v) / (alpha_t * d_sigma_t - d_alpha_t * sigma_t)


class LinearPath(AffinePath):
    """``alpha_t = t``, ``sigma_t = 1 - t`` (the paper's path); target velocity ``x1 - x0``."""

    def alpha_t(self, t):
        return t

    def sigma_t(self, t):
        return 1 - t

    def d_alpha_t(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def d_sigma_t(self, t):
        return -torch.ones_like(torch.as_tensor(t))

    def velocity_to_score(self, v, x, t):
        # The general formula with its bracket equal to 1, written out.
        t = expand_t_like_x(t, x)
        return (t * v - x) / (1 - t)

    def velocity_to_data(self, v, x, t):
        t = expand_t_like_x(t, x)
        return x + (1 - t) * v


class GVPPath(AffinePath):
    """Generalized variance-preserving path: ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``."""

    def alpha_t(self, t):
        return torch.sin(math.pi / 2 * t)

    def sigma_t(self, t):
        return torch.cos(math.pi / 2 * t)

    def d_alpha_t(self, t):
        return math.pi / 2 * torch.cos(math.pi / 2 * t)

    def d_sigma_t(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)


PATHS = {"linear": LinearPath, "gvp": GVPPath}


def make_path(name: str) -> AffinePath:
    """``"linear"`` or ``"gvp"`` -> a path object."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose from {', '.join(PATHS)}")
    return PATHS[name]()


def training_loss(
    model,
    x1: torch.Tensor | Triplane,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    t: torch.Tensor | None = None,
    x0: torch.Tensor | Triplane | None = None,
    t_eps: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Flow-matching (velocity) loss for a batch of data ``x1``.

    Args:
        model: ``model(x_t, t) -> v`` with ``v`` shaped like ``x_t``.
        x1: data ``(B, ...)``: for SiT the normalized flat triplane ``(B, tokens, C)``; a
            :class:`Triplane` is flattened first (the model then sees the flat form).
        generator: drives ``t`` and ``x0`` when they are not given.
        path: the interpolant (default :class:`LinearPath`).
        t: ``(B,)`` times; default ``t ~ U(t_eps, 1 - t_eps)``.
        x0: noise like ``x1`` (a :class:`Triplane` is flattened too); default ``N(0, I)``.
        t_eps: optional clipping of the training times away from 0 and 1. The paper (linear path,
            velocity prediction) uses 0: the velocity target is finite at both ends.

    Returns:
        ``(loss, stats)``: ``loss`` is the scalar MSE over every element, i.e. averaged over the
        batch (never summed). For flat triplane tokens this equals the average of the three
        planes' MSEs weighted by their token counts. ``stats`` holds detached tensors:
        ``loss``, ``loss_per_item`` ``(B,)`` and ``t`` ``(B,)``.
    """
    path = path if path is not None else LinearPath()
    if isinstance(x1, Triplane):
        x1 = x1.flatten()
    if isinstance(x0, Triplane):
        x0 = x0.flatten()
    batch = x1.shape[0]
    if t is None:
        device = generator.device if generator is not None else x1.device
        u = torch.rand(batch, generator=generator, device=device, dtype=x1.dtype).to(x1.device)
        t = t_eps + (1 - 2 * t_eps) * u
    if x0 is None:
        x0 = randn_like(x1, generator)
    x_t, u_t = path.plan(t, x0, x1)
    v = model(x_t, t)
    if v.shape != u_t.shape:
        raise ValueError(f"model output {tuple(v.shape)} does not match its input {tuple(u_t.shape)}")
    loss_per_item = (v - u_t).pow(2).flatten(1).mean(dim=1)  # (B,)
    loss = loss_per_item.mean()
    stats = {"loss": loss.detach(), "loss_per_item": loss_per_item.detach(), "t": t.detach()}
    return loss, stats
