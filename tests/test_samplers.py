"""The sampler registry against closed forms.

Truths used (linear path ``x_t = t x1 + (1 - t) x0``, noise at ``t = 0``):

* Gaussian data ``N(mu, diag(s^2))``: ``x_t ~ N(t mu, V_t)``, ``V_t = t^2 s^2 + (1 - t)^2``; the
  probability-flow map is affine, ``x1 = mu + s x0`` per dimension, so ODE solvers are measured
  path by path, and their error against the step count gives their order (halving the step
  divides the error by ``2^p``);
* the same Gaussian for the stochastic samplers, in distribution: variance error against steps
  (weak order) on ``2 * R`` independent dimensions, pooled per (mu, s) pair;
* a Gaussian mixture (:class:`sit.mixture.GaussianMixture`): mode weights and per-mode spreads,
  with tolerances from the sample count (standard errors), and ODE orders against torchdiffeq's
  dopri5 at tolerance 1e-11 (an independent solver) since its flow map has no closed form.
"""

import math

import pytest
import torch

from sit.mixture import GaussianMixture
from sit.samplers import (
    LAST_STEPS,
    SAMPLERS,
    SamplerOptionError,
    adams_bashforth,
    dpm_solver_pp,
    euler_maruyama,
    last_step,
    ode,
)
from sit.transport import LinearPath

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
S = torch.tensor([0.5, 2.0], dtype=torch.float64)
ODE_SAMPLERS = {"heun_ode": 2, "ab2": 2, "ab3": 3, "ab4": 4, "dpmpp_2m": 2}
STOCHASTIC = [name for name, s in SAMPLERS.items() if s.stochastic]


def gaussian_velocity(mu, s):
    def velocity(x, t):
        t = t[:, None].to(x)
        var = t**2 * s.to(x) ** 2 + (1 - t) ** 2
        return mu.to(x) + (t * s.to(x) ** 2 - (1 - t)) / var * (x - t * mu.to(x))

    return velocity


def _log2_ratio(a, b):
    return math.log2(a / b)


# ---------------------------------------------------------------------------- the registry
def _counting(fn):
    calls = []

    def wrapped(x, t):
        calls.append(float(t[0]))
        return fn(x, t)

    return wrapped, calls


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ode"])
def test_registry_counts_network_calls(name):
    spec = SAMPLERS[name]
    for steps in sorted({spec.min_steps, 2, 3, 7, 16}):
        if steps < spec.min_steps:
            continue
        fn, calls = _counting(lambda x, t: -0.5 * x)
        out = spec(
            fn,
            torch.randn(3, 5, 2),
            num_steps=steps,
            generator=torch.Generator().manual_seed(0),
            path=LinearPath(),
            diffusion_norm=1.0,
            last_step_size=0.04,
            method="euler",
            progress=False,
        )
        assert out.shape == (3, 5, 2) and torch.isfinite(out).all()
        assert len(calls) == spec.calls(steps), (name, steps)
        assert all(0.0 <= t <= 1.0 for t in calls)


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ode"])
def test_registry_randomness(name):
    """Stochastic samplers: the generator decides the sample; deterministic ones ignore it."""
    spec, velocity = SAMPLERS[name], gaussian_velocity(MU, S)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, b, c = (spec(velocity, noise, num_steps=8, generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2))
    assert torch.equal(a, b)
    assert (not torch.equal(a, c)) == spec.stochastic


def test_option_errors_are_one_line():
    v, x = (lambda x, t: x), torch.randn(2, 3)
    with pytest.raises(SamplerOptionError, match="choose one of mean, tweedie, euler, none"):
        euler_maruyama(v, x, num_steps=4, last_step_kind="Mean")
    with pytest.raises(SamplerOptionError, match="order 5"):
        adams_bashforth(v, x, num_steps=4, order=5)
    with pytest.raises(SamplerOptionError, match="eta 2"):
        dpm_solver_pp(v, x, num_steps=4, eta=2)


# ---------------------------------------------------------------------------- ODE solvers: order
@pytest.mark.parametrize("name, order", ODE_SAMPLERS.items())
def test_ode_solvers_converge_at_their_order_on_a_gaussian(name, order):
    """RMS path error against the exact map ``mu + s x0``; ``log2`` of the error ratio over a
    halving of the step is the order. DPM-Solver++(2M) on a grid uniform in ``t``: its steps in
    log-SNR do not shrink at the two ends (``log((1 - h) / h) - log((1 - 2h) / 2h) -> log 2``), so
    its first and last order-1 steps cost a little of the second order (1.7-1.8 here; order 1,
    DDIM, stays at 1)."""
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * noise
    err = {
        n: (SAMPLERS[name](gaussian_velocity(MU, S), noise, num_steps=n) - exact).pow(2).mean().sqrt().item()
        for n in (32, 64, 128)
    }
    measured = _log2_ratio(err[32], err[128]) / 2
    # The asymptotic ratio is 2^p; at h = 1/32 the next term of the error expansion is O(h)
    # relative, which moves log2 by well under 0.3 (the float64 path error is far above rounding).
    floor = order - 0.3 if name != "dpmpp_2m" else 1.5
    assert measured > floor, (name, err, measured)
    if name == "dpmpp_2m":
        ddim = {
            n: (dpm_solver_pp(gaussian_velocity(MU, S), noise, num_steps=n, order=1) - exact)
            .pow(2)
            .mean()
            .sqrt()
            .item()
            for n in (32, 128)
        }
        assert abs(_log2_ratio(ddim[32], ddim[128]) / 2 - 1) < 0.3


MEAN_ENDED = {"heun_ode_mean": 2, "ab2_mean": 2, "ab3_mean": 3, "dpmpp_2m_mean": 2}


@pytest.mark.parametrize("name, order", MEAN_ENDED.items())
def test_ode_solvers_ended_by_the_mean_step_reach_the_papers_distribution(name, order):
    """A flow solver stopped at ``t = 0.96`` and ended by the paper's mean step converges, path by
    path and at its order, to the exact composite map: the flow to 0.96, ``x_t = t mu + sqrt(V_t)
    x0`` (affine for Gaussian data), then the mean step, affine with slope ``1 + 0.04 (c - 0.04 /
    V_t)`` (:func:`test_last_step_variants_are_their_closed_forms`). Its law, centred on ``mu``
    with std ``slope sqrt(V_t)``, is the one the paper's Euler-Maruyama sampler converges to (the
    SDE's marginal at 0.96 is the flow's), narrower than the data where ``s`` is small."""
    t, d = 0.96, 0.04
    var_t = t**2 * S**2 + (1 - t) ** 2
    slope = 1 + d * ((t * S**2 - (1 - t)) / var_t - (1 - t) / var_t)
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + slope * var_t.sqrt() * noise
    assert (slope * var_t.sqrt() / S)[0] < 0.995  # the paper's law, not the data's: 1% narrow at s = 0.5
    fn, calls = _counting(gaussian_velocity(MU, S))
    SAMPLERS[name](fn, noise, num_steps=32, last_step_size=d)
    assert len(calls) == SAMPLERS[name].calls(32) and calls[-1] == pytest.approx(t)
    err = {
        n: (SAMPLERS[name](gaussian_velocity(MU, S), noise, num_steps=n, last_step_size=d) - exact)
        .pow(2)
        .mean()
        .sqrt()
        .item()
        for n in (32, 128)
    }
    # As in the test above: two halvings, a floor 0.3 under the order (1.5 for DPM-Solver++'s
    # order-1 first step from t = 0).
    floor = order - 0.3 if name != "dpmpp_2m_mean" else 1.5
    assert _log2_ratio(err[32], err[128]) / 2 > floor, (name, err)
    assert err[128] < 1e-3
    # The paper's 0.04 is the default; a caller's last_step_size (a config's) replaces it.
    assert torch.equal(
        SAMPLERS[name](gaussian_velocity(MU, S), noise, num_steps=32),
        SAMPLERS[name](gaussian_velocity(MU, S), noise, num_steps=32, last_step_size=d),
    )


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]),
        torch.tensor([[0.3, 0.5], [0.6, 0.4], [0.5, 0.5]]),
    )


@pytest.fixture(scope="module")
def mixture_flow(mixture):
    """Noise and its flow to ``t = 1`` by torchdiffeq's rk4 (an independent implementation) at
    512 steps: its error, (128 / 512)^4 = 1/256 of an order-4 solver's at 128 steps (~1e-6 here),
    is far below every error compared with it."""
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return noise, ode(mixture.velocity, noise, method="rk4", num_steps=512)


@pytest.mark.slow
@pytest.mark.parametrize("name, order", ODE_SAMPLERS.items())
def test_ode_solvers_converge_at_their_order_on_a_mixture(mixture, mixture_flow, name, order):
    noise, ref = mixture_flow
    err = {
        n: (SAMPLERS[name](mixture.velocity, noise, num_steps=n) - ref).pow(2).mean().sqrt().item() for n in (32, 128)
    }
    # Over two halvings (the mixture's velocity turns sharply between modes, so one halving is noisy).
    floor = order - 0.3 if name != "dpmpp_2m" else 1.5
    assert _log2_ratio(err[32], err[128]) / 2 > floor, (name, err)


# ---------------------------------------------------------------------------- the mixture's truth
def test_mixture_velocity_gives_the_density_score(mixture):
    """The closed-form velocity, turned into a score by the path's identity, equals the autograd
    gradient of the mixture's log density ``log p_t`` (independent of the velocity formula)."""
    x = 2 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t_value in (0.0, 0.2, 0.5, 0.9, 0.99):
        t = torch.full((64,), t_value, dtype=torch.float64)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.logsumexp(mixture.log_components(xg, t_value), 1).sum(), xg)
        if t_value < 1:
            score = LinearPath().velocity_to_score(mixture.velocity(x, t), x, t)
            assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9), t_value
    # t = 0: the velocity is E[x1] - x0.
    assert torch.allclose(mixture.velocity(x, torch.zeros(64, dtype=torch.float64)), mixture.mean() - x)


def _mode_stats(mixture, x):
    labels = mixture.classify(x)
    k = len(mixture.weights)
    weights = torch.bincount(labels, minlength=k).double() / len(x)
    spreads = torch.stack(
        [(x[labels == j].double() - mixture.means[j]).pow(2).mean(0).sqrt() / mixture.stds[j] for j in range(k)]
    )  # (K, D): 1 when each mode's spread is right
    return labels, weights, spreads


MIXTURE_RUNS = [("sde", 250), ("heun_ode", 25), ("ab3", 48), ("ab4", 44), ("dpmpp_2m", 50), ("dpmpp_2m_sde", 50)]


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", MIXTURE_RUNS)
def test_samplers_reproduce_mixture_weights_and_spreads(mixture, name, steps):
    n = 8192
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = SAMPLERS[name](mixture.velocity, noise, num_steps=steps, generator=torch.Generator().manual_seed(5))
    true_x, _ = mixture.sample(n, torch.Generator().manual_seed(6))
    _, weights, spreads = _mode_stats(mixture, x)
    _, true_weights, _ = _mode_stats(mixture, true_x)  # classification's own overlap errors, same on both
    # Weights: two independent multinomial estimates differ with sd sqrt(2 w (1 - w) / n); 4 sd.
    w = mixture.weights
    assert ((weights - true_weights).abs() < 4 * (2 * w * (1 - w) / n).sqrt()).all(), (weights, true_weights)
    # Spreads (RMS distance to the mode's mean over its std): a chi statistic with relative sd
    # 1 / sqrt(2 n_k) per dimension. Stochastic samplers also carry a discretisation bias: the
    # reference's fixed 0.04 mean step and the SDE solvers' weak order 1-2 leave a few percent on
    # modes of std 0.3 (measured on the Gaussian at these steps: <= 3%); ODE solvers at these
    # steps are within 1e-3 of the exact flow (the order tests above).
    counts = (weights * n)[:, None]
    bias = 0.03 if SAMPLERS[name].stochastic else 0.0
    assert ((spreads - 1).abs() < 4 / (2 * counts).sqrt() + bias).all(), spreads


# ---------------------------------------------------------------------------- stochastic: weak order
R = 128  # independent copies of each (mu, s) dimension: 4096 x 128 draws per variance estimate


def _pooled_variance_error(x, target_var):
    return (x.var(0).reshape(-1, 2).mean(0) / target_var - 1).abs().max().item()


@pytest.fixture(scope="module")
def wide():
    mu, s = MU.repeat(R), S.repeat(R)
    noise = torch.randn(4096, 2 * R, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gaussian_velocity(mu, s), noise


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, steps", [("sde", (10, 40)), ("sde_graded", (10, 40)), ("ddpm", (20, 80)), ("dpmpp_2m_sde", (20, 80))]
)
def test_stochastic_samplers_weak_order_at_least_one(wide, name, steps):
    """Variance error against steps. Euler-Maruyama is measured on ``[0, 0.96]`` alone (last step
    ``none``) against the exact ``V_0.96``: the fixed 0.04 mean step would add an error that does
    not shrink with the steps. The others end at ``t = 1``. A weak order-1 scheme divides the error
    by 4 over two halvings; the standard error of each pooled variance, ``sqrt(2 / (4096 R))`` =
    0.2%, is under a fifth of the smallest error compared here (pre-asymptotic ratios: 1.8-3.2)."""
    velocity, noise = wide
    kwargs, target = {}, S**2
    if name.startswith("sde"):
        kwargs, target = {"last_step_kind": "none"}, 0.96**2 * S**2 + 0.04**2
    err = [
        _pooled_variance_error(
            SAMPLERS[name](velocity, noise, num_steps=n, generator=torch.Generator().manual_seed(1), **kwargs), target
        )
        for n in steps
    ]
    assert err[1] > 5 * math.sqrt(2 / (4096 * R)), err  # still measurable: the ratio means something
    assert _log2_ratio(err[0], err[1]) / 2 > 0.75, err


def test_the_graded_grid():
    """``sde_graded``'s grid: the paper's endpoints, steps shrinking toward the data end as
    ``p (1 - u)^(p - 1)`` times the even step; power 1 is the paper's even grid, bit for bit."""
    from sit.samplers import _sde_grid

    assert _sde_grid(251, 0.04, 1.0) == torch.linspace(0, 0.96, 251, dtype=torch.float64).tolist()
    grid = torch.tensor(_sde_grid(50, 0.04, 2.0), dtype=torch.float64)
    steps = grid.diff()
    assert grid[0] == 0 and grid[-1] == 0.96 and (steps > 0).all() and (steps.diff() < 0).all()
    even = 0.96 / 49
    assert steps[0] / even == pytest.approx(2 - 1 / 49) and steps[-1] / even == pytest.approx(1 / 49)
    with pytest.raises(SamplerOptionError, match="grid power 0.5"):
        euler_maruyama(lambda x, t: x, torch.randn(2, 3), num_steps=4, grid_power=0.5)


# ---------------------------------------------------------------------------- last steps
@pytest.mark.parametrize("kind", LAST_STEPS)
def test_last_step_variants_are_their_closed_forms(kind):
    """From ``t = 0.96`` on exact ``p_t`` samples each last step is an affine map of ``x``
    (Gaussian data): checked sample by sample, then its moments against the analytic ones."""
    t, d = 0.96, 0.04
    var_t = t**2 * S**2 + (1 - t) ** 2
    x = t * MU + var_t.sqrt() * torch.randn(200_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn, calls = _counting(gaussian_velocity(MU, S))
    out = last_step(fn, x, t, d, kind, LinearPath(), diffusion_norm=1.0)
    c = (t * S**2 - (1 - t)) / var_t  # velocity slope in x
    slope = {
        "none": 1.0,
        "euler": 1 + d * c,
        "mean": 1 + d * (c - (1 - t) / var_t),  # drift v + w score, w = 1 - t, score = -(x - t mu) / V
        "tweedie": t * S**2 / var_t,
    }[kind]  # E[x1 | x_t] = mu + t s^2 / V (x - t mu)
    centre = t * MU if kind == "none" else MU
    assert torch.allclose(out, centre + slope * (x - t * MU), rtol=1e-12, atol=1e-12)
    assert len(calls) == (0 if kind == "none" else 1)
    # Moments: mean centre, std slope * sqrt(V_t) (4 standard errors of 200000 draws).
    assert ((out.mean(0) - centre).abs() < 4 * slope * var_t.sqrt() / math.sqrt(200_000)).all()
    assert ((out.std(0) / (slope * var_t.sqrt()) - 1).abs() < 4 / math.sqrt(2 * 200_000)).all()


def test_euler_maruyama_last_step_kinds_change_only_the_last_step():
    velocity = gaussian_velocity(MU, S)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ends = {}
    for kind in LAST_STEPS:
        fn, calls = _counting(velocity)
        ends[kind] = euler_maruyama(
            fn, noise, num_steps=50, generator=torch.Generator().manual_seed(1), last_step_kind=kind
        )
        assert len(calls) == (49 if kind == "none" else 50)
    x = ends["none"]  # the state at 0.96, the same Brownian path for all
    for kind in ("mean", "euler", "tweedie"):
        assert torch.equal(ends[kind], last_step(velocity, x, 0.96, 0.04, kind, LinearPath()))
    # The default is the paper's mean step.
    assert torch.equal(
        euler_maruyama(velocity, noise, num_steps=50, generator=torch.Generator().manual_seed(1)), ends["mean"]
    )


def test_a_config_names_any_registered_sampler():
    """``sample.sampler`` in a SiT config takes every name of the registry (it used to take only
    sde, heun_sde and ode) and refuses others in one line listing them."""
    from coordtok.config import ConfigError
    from sit.config import SampleConfig

    for name in SAMPLERS:
        SampleConfig(sampler=name).validate()
    with pytest.raises(ConfigError, match="must be one of sde, .*dpmpp_2m"):
        SampleConfig(sampler="euler_a").validate()
