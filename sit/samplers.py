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

import dataclasses
import inspect
import math
from typing import Callable

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from coordtok.errors import CoordTokError

from .transport import AffinePath, LinearPath, expand_t_like_x, randn_like

MAX_STEPS = 10_000
# Why a bound: every step is one network evaluation (two for Heun) and the paper samples with 250.
# A float32 grid linspace(0, 1, N + 1) has steps that differ by up to N * 2**-24 of their size
# (0.06% at 10^4, 0.6% at 10^5) and stops increasing near N = 2**24, where torchdiffeq asserts.
STEPS_WHY = (
    "each step is a network evaluation, the paper uses 250, and a float32 time grid of more steps is no longer even"
)


class SamplingStepsError(CoordTokError, ValueError):
    """A step count a sampler cannot take."""


class SamplerOptionError(CoordTokError, ValueError):
    """A sampler option out of its range (one line naming the choices)."""


def check_steps(num_steps: int, minimum: int = 1, name: str = "num_steps") -> int:
    """``num_steps`` if it is in ``minimum..MAX_STEPS``, else one line naming the range and why."""
    if not minimum <= num_steps <= MAX_STEPS:
        raise SamplingStepsError(f"{name} {num_steps}: must be {minimum}..{MAX_STEPS} ({STEPS_WHY})")
    return num_steps


FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    """``eps ~ N(0, I)`` shaped like ``x`` (one place, so tests can corrupt it on purpose).

    ``generator``: one ``torch.Generator`` (or None) for the whole batch, or a sequence of one per
    row of ``x``: row ``b`` is then drawn from ``generator[b]`` alone, so a sample's noise does not
    depend on the batch it is in (``coordtok sample`` across processes)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([randn_like(row, g) for row, g in zip(x, generator)])
    return randn_like(x, generator)


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


# SiT's last-step choices after an SDE grid that ends at 1 - last_step_size (the paper's: 0.04).
PAPER_LAST_STEP = 0.04
LAST_STEPS = ("mean", "tweedie", "euler", "none")


def check_last_step(kind: str) -> str:
    if kind not in LAST_STEPS:
        raise SamplerOptionError(f"last step {kind!r}: choose one of {', '.join(LAST_STEPS)}")
    return kind


def last_step(
    velocity, x: torch.Tensor, t: float, size: float, kind: str, path: AffinePath, diffusion_norm: float = 1.0
) -> torch.Tensor:
    """The noise-free step from ``t`` (``= 1 - size``) to ``t = 1`` that ends an SDE grid.

    ``mean`` (the paper's): ``x + drift(x, t) * size`` with the SDE drift ``v + w_t score``;
    ``euler``: ``x + v * size`` (the probability-flow drift); ``tweedie``: ``E[x1 | x_t = x] =
    (x + sigma_t^2 score) / alpha_t`` (Tweedie's formula: the posterior mean, which drops the
    posterior's spread of ``x1`` around it; small unless the data varies on scales below
    ``sigma_t / alpha_t``, 0.04 / 0.96 at the default); ``none``: ``x`` as it is at ``t`` (no
    call). One velocity call otherwise.
    """
    check_last_step(kind)
    if kind == "none":
        return x
    if kind == "mean":
        return _mean_step(velocity, x, t, size, path, diffusion_norm)
    t_b = _batch_t(t, x)
    v = velocity(x, t_b)
    if kind == "euler":
        return x + v * size
    tt = expand_t_like_x(t_b, x)
    return (x + path.sigma_t(tt) ** 2 * path.velocity_to_score(v, x, t_b)) / path.alpha_t(tt)


def _sde_grid(num_steps: int, last_step_size: float, grid_power: float = 1.0) -> list[float]:
    """``num_steps`` times from 0 to ``end = 1 - last_step_size``: ``end (1 - (1 - u)^p)`` at ``u``
    evenly spaced in [0, 1]. ``p = 1`` is the paper's even grid; ``p > 1`` a graded grid, whose
    steps are about ``p (1 - u)^(p - 1)`` times the even step: ``p`` times it at the noise end,
    shrinking toward the data end (the last is ``(num_steps - 1)^(1 - p)`` of it)."""
    check_steps(num_steps, 2)
    if not 0.0 <= last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in [0, 1), got {last_step_size}")
    if not 1.0 <= grid_power <= 4.0:
        raise SamplerOptionError(f"grid power {grid_power}: must be in [1, 4] (1: the paper's even grid)")
    end = 1.0 - last_step_size
    if grid_power == 1.0:
        return torch.linspace(0.0, end, num_steps, dtype=torch.float64).tolist()
    u = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    return (end * (1 - (1 - u) ** grid_power)).tolist()


@torch.no_grad()
def euler_maruyama(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 250,
    diffusion_norm: float = 1.0,
    last_step_size: float = PAPER_LAST_STEP,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    progress: bool = False,
    last_step_kind: str = "mean",
    grid_power: float = 1.0,
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
    ``num_steps - 1``. ``last_step_kind`` picks the last step (:func:`last_step`: ``mean``, the
    paper's, ``tweedie``, ``euler`` or ``none``, which stops at ``1 - last_step_size`` and
    saves that call). ``grid_power > 1`` grades the grid toward the data end (:func:`_sde_grid`;
    the ``sde_graded`` sampler): the same calls, spent where a learned field's SDE needs them.

    Args:
        velocity: ``velocity(x, t) -> v``; ``t`` is ``(B,)``.
        noise: ``x`` at ``t = 0``, ``(B, ...)``, standard normal.
        generator: drives the Brownian increments; same seed -> identical samples.
        path: interpolant (default linear); sets ``sigma_t`` and the score.

    Returns:
        ``x`` at ``t = 1``, shaped like ``noise``.
    """
    path = path if path is not None else LinearPath()
    check_last_step(last_step_kind)
    grid = _sde_grid(num_steps, last_step_size, grid_power)
    x = noise
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc="euler-maruyama"):
        dt = t_next - t
        drift, w_t = sde_drift(velocity, x, t, path, diffusion_norm)
        x = x + drift * dt + torch.sqrt(2 * w_t * dt) * _noise_like(x, generator)
    if last_step_size > 0:
        x = last_step(velocity, x, grid[-1], last_step_size, last_step_kind, path, diffusion_norm)
    return x


@torch.no_grad()
def heun_sde(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 250,
    diffusion_norm: float = 1.0,
    last_step_size: float = PAPER_LAST_STEP,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    progress: bool = False,
    last_step_kind: str = "mean",
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
    check_last_step(last_step_kind)
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
        x = last_step(velocity, x, grid[-1], last_step_size, last_step_kind, path, diffusion_norm)
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


def _flow_grid(num_steps: int, last_step_size: float = 0.0) -> list[float]:
    """``num_steps`` equal steps over ``[0, 1 - last_step_size]`` (float64 endpoints, so the last
    is exactly ``1 - last_step_size``)."""
    check_steps(num_steps, 1)
    if not 0.0 <= last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in [0, 1), got {last_step_size}")
    return torch.linspace(0.0, 1.0 - last_step_size, num_steps + 1, dtype=torch.float64).tolist()


def _finish(velocity, x, t: float, last_step_size: float, last_step_kind: str, path, diffusion_norm: float):
    """The paper's ending for a solver stopped at ``t = 1 - last_step_size`` (nothing when 0)."""
    if last_step_size <= 0:
        return x
    path = path if path is not None else LinearPath()
    return last_step(velocity, x, t, last_step_size, last_step_kind, path, diffusion_norm)


@torch.no_grad()
def heun_ode(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 25,
    last_step_size: float = 0.0,
    last_step_kind: str = "mean",
    path: AffinePath | None = None,
    diffusion_norm: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Heun's method (explicit trapezoid, order 2) on the probability-flow ODE ``dx/dt = v(x, t)``,
    ``num_steps`` equal steps over ``[0, 1 - last_step_size]``:

        K1 = v(x, t);  K2 = v(x + h K1, t + h);  x <- x + h (K1 + K2) / 2

    Velocity calls: ``2 num_steps`` (the last step evaluates at ``t = 1``, where the velocity of
    the linear path is finite). Deterministic: the same noise gives the same sample.

    ``last_step_size > 0`` stops at ``1 - last_step_size`` and ends with :func:`last_step` (one
    more call), like the paper's SDE sampler. The flow and the SDE have the same marginal ``p_t``
    at every ``t``, so the ODE solution at ``0.96`` pushed through the paper's mean step has the
    distribution of the paper's sampler (which that step makes about 2% narrower than the data,
    see the README), not the flow's own endpoint.
    """
    grid = _flow_grid(num_steps, last_step_size)
    x = noise
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc="heun-ode"):
        h = t_next - t
        k1 = velocity(x, _batch_t(t, x))
        k2 = velocity(x + h * k1, _batch_t(t_next, x))
        x = x + 0.5 * h * (k1 + k2)
    return _finish(velocity, x, grid[-1], last_step_size, last_step_kind, path, diffusion_norm)


# Adams-Bashforth weights of the newest ... oldest velocities, orders 1-4 (uniform steps).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
# Explicit Runge-Kutta starters of order 1-3 as (nodes c, rows of a, weights b): Euler, Heun, Kutta's third order.
_RK_STARTERS = {
    1: ((0.0,), ((),), (1.0,)),
    2: ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    3: ((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 4 / 6, 1 / 6)),
}


def adams_bashforth_calls(num_steps: int, order: int) -> int:
    """Velocity calls of :func:`adams_bashforth`: one per step, plus the starter's extra stages."""
    starter = min(order - 1, num_steps)
    return num_steps + starter * (order - 2) if order > 2 else num_steps


@torch.no_grad()
def adams_bashforth(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 48,
    order: int = 3,
    last_step_size: float = 0.0,
    last_step_kind: str = "mean",
    path: AffinePath | None = None,
    diffusion_norm: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Adams-Bashforth multistep on the probability-flow ODE, ``num_steps`` equal steps over ``[0, 1]``
    (over ``[0, 1 - last_step_size]`` then :func:`last_step`, one more call, as in :func:`heun_ode`).

    Step ``j`` reuses the velocities of the ``order`` newest grid points:
    ``x_{j+1} = x_j + h sum_i b_i v(x_{j-i}, t_{j-i})`` (:data:`ADAMS_BASHFORTH`), one new call a
    step. The first ``order - 1`` steps have too little history; they take an explicit
    Runge-Kutta step of order ``order - 1`` (Euler, Heun, Kutta's third order), whose local error
    ``O(h^order)`` keeps the global error ``O(h^order)`` (a lower-order Adams start would cap it at
    ``O(h^2)``). Calls: ``num_steps + (order - 1)(order - 2)`` (:func:`adams_bashforth_calls`; 50
    for order 3 at 48 steps). The last step evaluates nothing at ``t = 1``.
    """
    if order not in ADAMS_BASHFORTH:
        raise SamplerOptionError(f"Adams-Bashforth order {order}: choose one of {', '.join(map(str, ADAMS_BASHFORTH))}")
    grid = _flow_grid(num_steps, last_step_size)
    x = noise
    history: list[torch.Tensor] = []  # velocities at the grid points so far, newest last
    for j, (t, t_next) in enumerate(tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc=f"adams-{order}")):
        h = t_next - t
        history.append(velocity(x, _batch_t(t, x)))
        history = history[-order:]
        if j < order - 1:  # the Runge-Kutta start; its first stage is the velocity just taken
            nodes, rows, weights = _RK_STARTERS[order - 1]
            stages = [history[-1]]
            for c, row in zip(nodes[1:], rows[1:]):
                stages.append(velocity(x + h * sum(a * k for a, k in zip(row, stages)), _batch_t(t + c * h, x)))
            x = x + h * sum(b * k for b, k in zip(weights, stages))
        else:
            x = x + h * sum(b * k for b, k in zip(ADAMS_BASHFORTH[order], reversed(history)))
    return _finish(velocity, x, grid[-1], last_step_size, last_step_kind, path, diffusion_norm)


def _coefficients(path: AffinePath, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(path.alpha_t(tt)), float(path.sigma_t(tt))


@torch.no_grad()
def dpm_solver_pp(
    velocity,
    noise: torch.Tensor,
    num_steps: int = 25,
    order: int = 2,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    path: AffinePath | None = None,
    last_step_size: float = 0.0,
    last_step_kind: str = "mean",
    diffusion_norm: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++ (multistep, data prediction) driven by a velocity, ``num_steps`` equal steps in ``t``.

    Each call gives the data prediction ``D = E[x1 | x_t]``
    (:meth:`~sit.transport.AffinePath.velocity_to_data`). With ``rho = e^{-h} = (alpha_t
    sigma_s) / (sigma_t alpha_s)`` (``h`` the step in log signal-to-noise ``log(alpha / sigma)``,
    from ``t`` to ``s``), one step is

        x_s = (sigma_s / sigma_t) rho^eta x_t + alpha_s (1 - rho^(1 + eta)) D' + sigma_s sqrt(1 - rho^(2 eta)) eps

    with ``D' = D`` (order 1) or ``D + (D - D_prev) h / (2 h_prev)`` (order 2, "2M", the midpoint
    form of Lu et al. 2022 and k-diffusion's ``dpmpp_2m_sde``). ``eta = 0`` is the
    probability-flow ODE solver (DPM-Solver++(2M); order 1 = DDIM); ``eta = 1`` the SDE solver
    whose order-1 step is the exact DDPM posterior ``q(x_s | x_t, x1 = D)``, a stochastic sampler
    that needs few steps. The first step (from ``t = 0``, where ``alpha = 0``: ``rho = 0``) and
    the last (to ``t = 1``, ``sigma = 0``: ``x_1 = D``, Tweedie's posterior mean) are order 1.
    Velocity calls: ``num_steps`` (none at ``t = 1``). ``last_step_size > 0`` stops at ``1 -
    last_step_size`` and ends with :func:`last_step` (one more call), as in :func:`heun_ode`.
    """
    if order not in (1, 2):
        raise SamplerOptionError(f"DPM-Solver++ order {order}: choose 1 or 2")
    if not 0.0 <= eta <= 1.0:
        raise SamplerOptionError(f"DPM-Solver++ eta {eta}: must be in [0, 1] (0: ODE, 1: DDPM-like SDE)")
    path = path if path is not None else LinearPath()
    grid = _flow_grid(num_steps, last_step_size)
    x = noise
    d_prev, h_prev = None, math.inf
    for t, s in tqdm(list(zip(grid[:-1], grid[1:])), disable=not progress, desc="dpm-solver++"):
        t_b = _batch_t(t, x)
        d = path.velocity_to_data(velocity(x, t_b), x, t_b)
        (alpha_t, sigma_t), (alpha_s, sigma_s) = _coefficients(path, t), _coefficients(path, s)
        if sigma_s == 0.0:  # the end of the path: the posterior mean
            x = d
            break
        rho = alpha_t * sigma_s / (sigma_t * alpha_s)
        h = -math.log(rho) if rho > 0 else math.inf
        d_step = d
        if order == 2 and d_prev is not None and math.isfinite(h_prev):
            d_step = d + (d - d_prev) * (h / (2 * h_prev))
        x = (sigma_s / sigma_t) * rho**eta * x + alpha_s * (1 - rho ** (1 + eta)) * d_step
        if eta > 0:
            x = x + sigma_s * math.sqrt(1 - rho ** (2 * eta)) * _noise_like(x, generator)
        d_prev, h_prev = d, h
    return _finish(velocity, x, grid[-1], last_step_size, last_step_kind, path, diffusion_norm)


# ---------------------------------------------------------------------------- classifier-free guidance
def guided_velocity(
    net, labels: torch.Tensor, null_class: int, scale: float = 1.0, interval: tuple[float, float] | None = None
):
    """The classifier-free-guided velocity of a class-conditional network, as a ``velocity(x, t)``
    callable that every sampler takes.

    ``net(x, t, y) -> v`` (a :class:`~sit.models.TriplaneSiT`); ``labels`` ``(B,)`` the classes of
    the batch, ``null_class`` the learned unconditional label. At times ``t`` in ``interval``
    (``[lo, hi]``, default all of ``[0, 1]``; ``t = 0`` is noise, ``t = 1`` data)

        v = v_null + scale * (v_cond - v_null)

    on every channel of every plane (the whole flat triplane; SiT's ``forward_with_cfg`` guides only
    the first 3 channels, an image-era shortcut that would leave 5 of the 8 triplane channels
    unguided). The two halves are ONE network call on a batch of ``2B`` (``[x; x]`` with ``[labels;
    null]``), so a sampler's count of velocity calls, and a counter around ``net``, is unchanged by
    guidance: one call per velocity evaluation, each on twice the batch when guided. ``scale = 1``
    (or ``t`` outside the interval) is the conditional call alone on ``B`` and ``scale = 0`` the null
    call alone: exactly the conditional / unconditional model, at half the cost.
    """
    lo, hi = interval if interval is not None else (0.0, 1.0)
    null = torch.full_like(labels, null_class)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        guide = (t >= lo) & (t <= hi)  # (B,): the samplers give every row one time
        if scale == 1.0 or not bool(guide.any()):
            return net(x, t, labels)
        if scale == 0.0 and bool(guide.all()):
            return net(x, t, null)
        v_cond, v_null = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        v = v_null + scale * (v_cond - v_null)
        return torch.where(guide.reshape(-1, *[1] * (x.ndim - 1)), v, v_cond)

    return velocity


# ---------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class Sampler:
    """A named sampler: ``fn`` with fixed ``options``, callable like ``fn``.

    ``sampler(velocity, noise, num_steps=..., generator=..., path=..., diffusion_norm=...,
    last_step_size=..., method=..., ...)``: keyword arguments ``fn`` does not take are dropped
    (a deterministic solver has no generator, an ODE solver no diffusion), so one call site
    serves every sampler. ``options`` override the caller's arguments, ``defaults`` only stand in
    for missing ones. ``calls(steps)`` is the number of velocity (network) calls for ``steps``
    (``None``: adaptive), with each sampler's default last step.
    """

    name: str
    fn: Callable
    summary: str
    stochastic: bool
    calls: Callable[[int], int | None]
    options: dict = dataclasses.field(default_factory=dict)
    min_steps: int = 1
    defaults: dict = dataclasses.field(default_factory=dict)

    def __call__(self, velocity, noise: torch.Tensor, **kwargs) -> torch.Tensor:
        accepted = inspect.signature(self.fn).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        return self.fn(velocity, noise, **{**self.defaults, **kwargs, **self.options})


def _registry(*samplers: Sampler) -> dict[str, Sampler]:
    return {s.name: s for s in samplers}


def _ended_by_the_mean_step(s: Sampler) -> Sampler:
    """Flow solver ``s`` stopped at ``1 - last_step_size`` (default the paper's 0.04) and ended by the
    paper's mean step, one call more: the distribution of the paper's sampler, its mean step
    included, at <= 50 calls (see the README)."""
    return dataclasses.replace(
        s,
        name=f"{s.name}_mean",
        summary=f"{s.summary}, stopped at 0.96 and ended by the paper's mean step (1 call more)",
        calls=lambda n: s.calls(n) + 1,
        options={k: v for k, v in s.options.items() if k != "last_step_size"},
        defaults={"last_step_size": PAPER_LAST_STEP},
    )


SAMPLERS = _registry(
    Sampler(
        "sde",
        euler_maruyama,
        "the paper's: Euler-Maruyama SDE on [0, 0.96] + a mean step (250 steps = 250 calls)",
        True,
        lambda n: n,
        min_steps=2,
    ),
    Sampler(
        "sde_graded",
        euler_maruyama,
        "the paper's Euler-Maruyama and mean step on a grid graded toward the data (power 2; steps = calls)",
        True,
        lambda n: n,
        {"grid_power": 2.0},
        min_steps=2,
    ),
    Sampler(
        "heun_sde",
        heun_sde,
        "the reference's stochastic Heun: noise, then a Heun step (2 calls a step)",
        True,
        lambda n: 2 * (n - 1) + 1,
        min_steps=2,
    ),
    Sampler("ode", ode, "probability-flow ODE with torchdiffeq (dopri5, adaptive, by default)", False, lambda n: None),
    Sampler(
        "heun_ode",
        heun_ode,
        "probability-flow ODE, Heun (order 2, 2 calls a step)",
        False,
        lambda n: 2 * n,
        {"last_step_size": 0.0},
    ),
    Sampler(
        "ab2",
        adams_bashforth,
        "probability-flow ODE, Adams-Bashforth order 2 (1 call a step)",
        False,
        lambda n: adams_bashforth_calls(n, 2),
        {"order": 2, "last_step_size": 0.0},
    ),
    Sampler(
        "ab3",
        adams_bashforth,
        "probability-flow ODE, Adams-Bashforth order 3 (steps + 2 calls)",
        False,
        lambda n: adams_bashforth_calls(n, 3),
        {"order": 3, "last_step_size": 0.0},
    ),
    Sampler(
        "ab4",
        adams_bashforth,
        "probability-flow ODE, Adams-Bashforth order 4 (steps + 6 calls)",
        False,
        lambda n: adams_bashforth_calls(n, 4),
        {"order": 4, "last_step_size": 0.0},
    ),
    Sampler(
        "dpmpp_2m",
        dpm_solver_pp,
        "probability-flow ODE, DPM-Solver++(2M) (1 call a step)",
        False,
        lambda n: n,
        {"order": 2, "eta": 0.0, "last_step_size": 0.0},
    ),
    Sampler(
        "ddpm",
        dpm_solver_pp,
        "stochastic, DDPM ancestral steps from the velocity (1 call a step)",
        True,
        lambda n: n,
        {"order": 1, "eta": 1.0, "last_step_size": 0.0},
    ),
    Sampler(
        "dpmpp_2m_sde",
        dpm_solver_pp,
        "stochastic, SDE-DPM-Solver++(2M) (1 call a step)",
        True,
        lambda n: n,
        {"order": 2, "eta": 1.0, "last_step_size": 0.0},
    ),
)
SAMPLERS.update(
    _registry(*(_ended_by_the_mean_step(SAMPLERS[name]) for name in ("heun_ode", "ab2", "ab3", "dpmpp_2m")))
)
