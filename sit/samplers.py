"""Samplers for a velocity field, from noise at ``t = 0`` to data at ``t = 1``.

Every sampler takes a ``velocity(x, t) -> v`` callable (``x`` a tensor of any shape ``(B, ...)``,
``t`` a ``(B,)`` tensor, ``v`` shaped like ``x``) and the initial noise, so it can be tested
without a network. With a :class:`~sit.models.TriplaneSiT` use the flat triplane:
``velocity = lambda x, t: model(x, t)`` and ``noise = torch.randn(B, tokens, C)``.

SDE samplers integrate the reverse-time-consistent SDE

    dx = [v(x, t) + w_t * score(x, t)] dt + sqrt(2 w_t) dW,     w_t = diffusion_norm * sigma_t,

whose marginals are the path's ``p_t`` for any ``w_t >= 0`` (the ``w_t * score`` drift undoes
the spreading of the noise). The score comes from the same velocity evaluation (see
:meth:`sit.transport.AffinePath.velocity_to_score`), so one network call per step suffices.
"""
from __future__ import annotations

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from coordtok.errors import CoordTokError

from .transport import AffinePath, LinearPath, _randn_like, expand_t_like_x

MAX_STEPS = 10_000
# Why a bound: every step is one network evaluation (two for Heun) and the paper samples with 250.
# A float32 grid linspace(0, 1, N + 1) has steps that differ by up to N * 2**-24 of their size
# (0.06% at 10^4, 0.6% at 10^5) and stops increasing near N = 2**24, where torchdiffeq asserts.
STEPS_WHY = "each step is a network evaluation, the paper uses 250, and a float32 time grid of more steps is no longer even"


class SamplingStepsError(CoordTokError, ValueError):
    """A step count a sampler cannot take."""


def check_steps(num_steps: int, minimum: int = 1, name: str = "num_steps") -> int:
    """``num_steps`` if it is in ``minimum..MAX_STEPS``, else one line naming the range and why."""
    if not minimum <= num_steps <= MAX_STEPS:
        raise SamplingStepsError(f"{name} {num_steps}: must be {minimum}..{MAX_STEPS} ({STEPS_WHY})")
    return num_steps


FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``eps ~ N(0, I)`` shaped like ``x`` (one place, so tests can corrupt it on purpose)."""
    return _randn_like(x, generator)


def _batch_t(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def sde_drift(velocity, x: torch.Tensor, t: float, path: AffinePath, diffusion_norm: float):
    """One velocity call -> ``(drift, w_t)`` with ``drift = v + w_t * score`` and
    ``w_t = diffusion_norm * sigma_t`` (broadcastable against ``x``)."""
    t_b = _batch_t(t, x)
    v = velocity(x, t_b)
    w_t = diffusion_norm * path.sigma_t(expand_t_like_x(t_b, x))
    score = path.velocity_to_score(v, x, t_b)
    return v + w_t * score, w_t


def _mean_step(velocity, x: torch.Tensor, t: float, step: float, path: AffinePath, diffusion_norm: float):
    """The last, deterministic "mean" step from ``t`` to ``t + step``: drift only, no noise."""
    drift, _ = sde_drift(velocity, x, t, path, diffusion_norm)
    return x + drift * step


def _sde_grid(num_steps: int, last_step_size: float) -> list[float]:
    check_steps(num_steps, 2)
    if not 0.0 <= last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in [0, 1), got {last_step_size}")
    return torch.linspace(0.0, 1.0 - last_step_size, num_steps, dtype=torch.float64).tolist()


@torch.no_grad()
def euler_maruyama(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 250,
    diffusion_norm: float = 1.0,
    last_step_size: float = 0.04,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The paper's Euler-Maruyama SDE sampler.

    Time grid ``torch.linspace(0, 1 - last_step_size, num_steps)`` (as the reference): one
    Euler-Maruyama step per consecutive pair (``num_steps - 1`` steps of
    ``dt = (1 - last_step_size) / (num_steps - 1)``), each

        x <- x + drift(x, t) dt + sqrt(2 w_t dt) eps,

    then one deterministic mean step ``x <- x + drift(x, 1 - last_step_size) * last_step_size``
    to ``t = 1``. Velocity calls: exactly ``num_steps`` (250 for the paper's setting: 249 EM
    steps + 1 mean step); the reference made twice as many by calling the network again for the
    score. With ``last_step_size = 0`` the grid reaches 1, there is no mean step, and the count is
    ``num_steps - 1``.

    Args:
        velocity: ``velocity(x, t) -> v``; ``t`` is ``(B,)``.
        noise: ``x`` at ``t = 0``, ``(B, ...)``, standard normal.
        generator: drives the Brownian increments; same seed -> identical samples.
        path: interpolant (default linear); sets ``sigma_t`` and the score.

    Returns:
        ``x`` at ``t = 1``, shaped like ``noise``.
    """
    path = path if path is not None else LinearPath()
    grid = _sde_grid(num_steps, last_step_size)
    x = noise
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc="euler-maruyama"):
        dt = t_next - t
        drift, w_t = sde_drift(velocity, x, t, path, diffusion_norm)
        x = x + drift * dt + torch.sqrt(2 * w_t * dt) * _noise_like(x, generator)
    if last_step_size > 0:
        x = _mean_step(velocity, x, grid[-1], last_step_size, path, diffusion_norm)
    return x


@torch.no_grad()
def heun_sde(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 250,
    diffusion_norm: float = 1.0,
    last_step_size: float = 0.04,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The reference's stochastic Heun variant; same grid and last step as :func:`euler_maruyama`.

    Each step first adds the noise, then takes a Heun (trapezoidal) step of the drift:

        x_hat = x + sqrt(2 w_t dt) eps
        K1 = drift(x_hat, t);  K2 = drift(x_hat + dt K1, t + dt)
        x <- x_hat + dt (K1 + K2) / 2

    Two velocity calls per step are inherent to Heun: ``2 (num_steps - 1) + 1`` in all (499
    for 250 steps).
    """
    path = path if path is not None else LinearPath()
    grid = _sde_grid(num_steps, last_step_size)
    x = noise
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc="heun-sde"):
        dt = t_next - t
        w_t = diffusion_norm * path.sigma_t(expand_t_like_x(_batch_t(t, x), x))
        x_hat = x + torch.sqrt(2 * w_t * dt) * _noise_like(x, generator)
        k1, _ = sde_drift(velocity, x_hat, t, path, diffusion_norm)
        k2, _ = sde_drift(velocity, x_hat + dt * k1, t_next, path, diffusion_norm)
        x = x_hat + 0.5 * dt * (k1 + k2)
    if last_step_size > 0:
        x = _mean_step(velocity, x, grid[-1], last_step_size, path, diffusion_norm)
    return x


@torch.no_grad()
def ode(
    velocity,
    noise: torch.Tensor,
    method: str = "dopri5",
    atol: float = 1e-6,
    rtol: float = 1e-3,
    num_steps: int = 50,
    path: AffinePath | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Probability-flow ODE ``dx/dt = v(x, t)`` from ``t = 0`` to ``t = 1`` with ``torchdiffeq``.

    Adaptive methods (``dopri5``, the paper's, with ``atol``/``rtol``) choose their own steps;
    ``num_steps`` is ignored. Fixed-grid methods (``euler``, ``heun3``, ``rk4``, ...) take exactly
    ``num_steps`` equal steps (the grid ``linspace(0, 1, num_steps + 1)`` is passed to
    ``odeint``). ``path`` is accepted for a uniform signature but unused: for a velocity model the
    ODE drift is the velocity itself, whatever the path.

    Returns:
        ``x`` at ``t = 1``, shaped like ``noise``.
    """
    del path
    bar = tqdm(disable=not progress, desc=f"ode ({method}) evaluations")

    def fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        bar.update(1)
        return velocity(x, t.to(dtype=x.dtype, device=x.device).expand(x.shape[0]))

    dtype = noise.dtype if noise.dtype in (torch.float32, torch.float64) else torch.float32
    if method in FIXED_GRID_METHODS:
        check_steps(num_steps, 1)
        times = torch.linspace(0.0, 1.0, num_steps + 1, dtype=dtype, device=noise.device)
    else:
        times = torch.tensor([0.0, 1.0], dtype=dtype, device=noise.device)
    try:
        xs = odeint(fn, noise, times, method=method, atol=atol, rtol=rtol)
    finally:
        bar.close()
    return xs[-1]


SAMPLERS = {"sde": euler_maruyama, "heun_sde": heun_sde, "ode": ode}
