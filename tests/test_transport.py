"""Transport and samplers against closed forms.

The analytic problem: data ``x1 ~ N(mu, diag(s^2))`` in 2-D, noise ``x0 ~ N(0, I)``. For the
linear path ``x_t = t x1 + (1 - t) x0`` is Gaussian with mean ``t mu`` and variance
``V_t = t^2 s^2 + (1 - t)^2`` (per dimension), and since ``(x1 - x0, x_t)`` is jointly Gaussian,

    E[x1 - x0 | x_t] = mu + Cov(x1 - x0, x_t) / V_t * (x_t - t mu),
    Cov(x1 - x0, x_t) = t s^2 - (1 - t),

which is the exact marginal velocity; the exact score is ``-(x - t mu) / V_t``. The same argument
for a general affine path ``alpha_t x1 + sigma_t x0`` gives mean ``alpha_t mu``, variance
``alpha_t^2 s^2 + sigma_t^2`` and covariance ``alpha_t alpha_t' s^2 + sigma_t sigma_t'``.
"""

import math

import pytest
import torch

import sit.samplers as samplers
from coordtok.triplane import Triplane
from sit.samplers import euler_maruyama, heun_sde, ode
from sit.transport import AffinePath, GVPPath, LinearPath, training_loss

MU = torch.tensor([1.5, -0.5])
S = torch.tensor([0.5, 2.0])
N_SAMPLES = 65536
# Tolerances: with 65536 samples the Monte-Carlo error is ~0.008 on the mean (s = 2) and ~0.3%
# on the std; the 250-step Euler-Maruyama discretisation adds ~1-1.5% on the std. Each broken
# variant below misses at least one of these by a wide margin (no score: ~80% on the std; half
# noise: ~27%; no last step: 0.06 on the mean and ~4% on the std).
MEAN_TOL = 0.025
STD_REL_TOL = 0.025


def exact_velocity_linear(x, t):
    mu, s, t = MU.to(x), S.to(x), t[:, None]
    var = t**2 * s**2 + (1 - t) ** 2
    return mu + (t * s**2 - (1 - t)) / var * (x - t * mu)


def exact_score_linear(x, t):
    mu, s, t = MU.to(x), S.to(x), t[:, None]
    return -(x - t * mu) / (t**2 * s**2 + (1 - t) ** 2)


def _gvp_coefficients(t):
    alpha, sigma = torch.sin(math.pi / 2 * t), torch.cos(math.pi / 2 * t)
    return alpha, sigma, math.pi / 2 * sigma, -math.pi / 2 * alpha


def exact_velocity_gvp(x, t):
    mu, s = MU.to(x), S.to(x)
    alpha, sigma, d_alpha, d_sigma = _gvp_coefficients(t[:, None])
    var = alpha**2 * s**2 + sigma**2
    return d_alpha * mu + (alpha * d_alpha * s**2 + sigma * d_sigma) / var * (x - alpha * mu)


def exact_score_gvp(x, t):
    mu, s = MU.to(x), S.to(x)
    alpha, sigma, _, _ = _gvp_coefficients(t[:, None])
    return -(x - alpha * mu) / (alpha**2 * s**2 + sigma**2)


def moment_errors(x):
    """(max |mean - mu|, max |std / s - 1|) over the two dimensions."""
    return (x.mean(0) - MU).abs().max().item(), (x.std(0) / S - 1).abs().max().item()


def within_tolerance(x):
    mean_err, std_err = moment_errors(x)
    return mean_err < MEAN_TOL and std_err < STD_REL_TOL


@pytest.fixture(scope="module")
def noise():
    return torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(0))


def _em(noise, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(1))
    return euler_maruyama(exact_velocity_linear, noise, num_steps=250, **kwargs)


# ---------------------------------------------------------------------------- the closed form itself
def test_closed_form_velocity_matches_conditional_expectation():
    """Check the formula for E[x1 - x0 | x_t] by regression on samples (independent of the code)."""
    g = torch.Generator().manual_seed(5)
    x1 = MU + S * torch.randn(200_000, 2, generator=g)
    x0 = torch.randn(200_000, 2, generator=g)
    t = torch.full((200_000,), 0.3)
    x_t = 0.3 * x1 + 0.7 * x0
    u = x1 - x0
    # Linear least squares of u on [1, x_t] per dimension = the exact conditional mean for Gaussians.
    intercept = exact_velocity_linear(torch.zeros(1, 2), t[:1])[0]  # the formula at x_t = 0
    slope = exact_velocity_linear(torch.ones(1, 2), t[:1])[0] - intercept
    for d in range(2):
        design = torch.stack([torch.ones_like(x_t[:, d]), x_t[:, d]], dim=1)
        coef = torch.linalg.lstsq(design, u[:, d : d + 1]).solution.squeeze(1)
        assert coef[0].item() == pytest.approx(intercept[d].item(), abs=0.02)
        assert coef[1].item() == pytest.approx(slope[d].item(), abs=0.01)


# ---------------------------------------------------------------------------- samplers reproduce the data
def test_euler_maruyama_reproduces_gaussian(noise):
    x = _em(noise)
    mean_err, std_err = moment_errors(x)
    print(f"EM: mean err {mean_err:.4f}, std rel err {std_err:.4f}")
    assert within_tolerance(x), (mean_err, std_err)


@pytest.mark.slow
def test_euler_maruyama_gvp_path_reproduces_gaussian(noise):
    x = euler_maruyama(
        exact_velocity_gvp, noise, num_steps=250, generator=torch.Generator().manual_seed(1), path=GVPPath()
    )
    assert within_tolerance(x), moment_errors(x)


@pytest.mark.slow
def test_heun_sde_reproduces_gaussian(noise):
    x = heun_sde(exact_velocity_linear, noise, num_steps=250, generator=torch.Generator().manual_seed(1))
    assert within_tolerance(x), moment_errors(x)


def test_ode_dopri5_reproduces_gaussian(noise):
    x = ode(exact_velocity_linear, noise, method="dopri5", atol=1e-6, rtol=1e-3)
    assert within_tolerance(x), moment_errors(x)
    # The probability-flow map of a Gaussian is affine: x1 = mu + s * x0 per dimension.
    # dopri5 controls the RMS error over the whole state, so far-tail samples may be off by ~1e-2.
    err = (x - (MU + S * noise)).abs()
    assert err.mean() < 5e-3 and err.max() < 5e-2


def test_ode_fixed_grid_methods(noise):
    calls = []

    def velocity(x, t):
        calls.append(t[0].item())
        return exact_velocity_linear(x, t)

    x = ode(velocity, noise, method="euler", num_steps=100)
    assert len(calls) == 100 and calls[0] == 0.0
    assert within_tolerance(x), moment_errors(x)
    x = ode(exact_velocity_linear, noise, method="heun3", num_steps=20)
    assert torch.allclose(x, MU + S * noise, atol=2e-3)


# ---------------------------------------------------------------------------- broken variants must fail
class _NoScorePath(LinearPath):
    """Drift without the score term: x += v dt + sqrt(2 w dt) eps (over-dispersed)."""

    def velocity_to_score(self, v, x, t):
        return torch.zeros_like(x)


def test_broken_drift_without_score_fails(noise):
    assert not within_tolerance(_em(noise, path=_NoScorePath()))


@pytest.mark.slow
def test_broken_noise_scale_fails(noise, monkeypatch):
    """Noise sqrt(w dt) instead of sqrt(2 w dt) (under-dispersed)."""
    real = samplers._noise_like
    monkeypatch.setattr(samplers, "_noise_like", lambda x, g: real(x, g) / math.sqrt(2))
    assert not within_tolerance(_em(noise))


def test_broken_missing_last_step_fails(noise, monkeypatch):
    """Stopping at t = 1 - last_step_size (no mean step)."""
    monkeypatch.setattr(samplers, "_mean_step", lambda velocity, x, *args: x)
    assert not within_tolerance(_em(noise))


@pytest.mark.slow
def test_sde_noise_is_active(noise):
    """diffusion_norm = 0 turns the sampler into a plain Euler ODE; with the default norm the
    Brownian term must visibly move the samples (it is not silently zero)."""
    x_sde = _em(noise)
    x_ode = _em(noise, diffusion_norm=0.0)
    assert (x_sde - x_ode).abs().mean() > 0.1


# ---------------------------------------------------------------------------- score from velocity
@pytest.mark.parametrize(
    "path, velocity, score",
    [(LinearPath(), exact_velocity_linear, exact_score_linear), (GVPPath(), exact_velocity_gvp, exact_score_gvp)],
)
def test_velocity_to_score_identity(path, velocity, score):
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    for t_value in (0.0, 0.05, 0.3, 0.5, 0.8, 0.96):
        t = torch.full((64,), t_value, dtype=torch.float64)
        got = path.velocity_to_score(velocity(x, t), x, t)
        assert torch.allclose(got, score(x, t), rtol=1e-9, atol=1e-9), t_value


def test_linear_path_score_equals_general_formula():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 16, 5, 3, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.99
    general = AffinePath.velocity_to_score(LinearPath(), v, x, t)
    assert torch.allclose(LinearPath().velocity_to_score(v, x, t), general)
    assert torch.allclose(general, (t[:, None, None] * v - x) / (1 - t[:, None, None]))


@pytest.mark.parametrize("path", [LinearPath(), GVPPath()])
def test_plan_and_derivatives(path):
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    x_t, u_t = path.plan(t, x0, x1)
    h = 1e-6
    x_plus, _ = path.plan(t + h, x0, x1)
    x_minus, _ = path.plan(t - h, x0, x1)
    assert torch.allclose(u_t, (x_plus - x_minus) / (2 * h), atol=1e-6)  # u_t = d x_t / dt
    assert torch.allclose(path.plan(torch.zeros(8, dtype=torch.float64), x0, x1)[0], x0)
    assert torch.allclose(path.plan(torch.ones(8, dtype=torch.float64), x0, x1)[0], x1, atol=1e-12)
    if isinstance(path, LinearPath):
        assert torch.allclose(u_t, x1 - x0)


# ---------------------------------------------------------------------------- call counts, determinism
def _counting(velocity):
    calls = []

    def wrapped(x, t):
        assert t.shape == (x.shape[0],)
        calls.append(t[0].item())
        return velocity(x, t)

    return wrapped, calls


def test_one_velocity_call_per_euler_maruyama_step():
    x = torch.randn(4, 3, 2)
    fn, calls = _counting(lambda x, t: -x)
    euler_maruyama(fn, x, num_steps=250, generator=torch.Generator().manual_seed(0))
    # linspace(0, 0.96, 250): 249 EM steps + 1 mean step = 250 calls.
    assert len(calls) == 250
    assert calls[0] == 0.0
    assert calls[-2] == pytest.approx(0.96 - 0.96 / 249, abs=1e-6)  # last EM step starts here
    assert calls[-1] == pytest.approx(0.96, abs=1e-6)  # the mean step, from 0.96 to 1
    fn, calls = _counting(lambda x, t: -x)
    euler_maruyama(fn, x, num_steps=10)
    assert len(calls) == 10


def test_heun_sde_call_count():
    fn, calls = _counting(lambda x, t: -x)
    heun_sde(fn, torch.randn(2, 5), num_steps=250, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2 * 249 + 1


def test_euler_maruyama_determinism():
    x = torch.randn(3, 8, 4)
    velocity = lambda x, t: 0.5 * x + 0.1  # noqa: E731
    a = euler_maruyama(velocity, x, num_steps=20, generator=torch.Generator().manual_seed(7))
    b = euler_maruyama(velocity, x, num_steps=20, generator=torch.Generator().manual_seed(7))
    c = euler_maruyama(velocity, x, num_steps=20, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == x.shape


def _linear_velocity_sde_reference(
    x: torch.Tensor, w: float, num_steps: int, heun: bool, seed: int, last: float = 0.04
) -> tuple[torch.Tensor, float]:
    """The SDE samplers' result for ``v = w x`` on the linear path, in float64, and the largest
    magnitude met on the way (state or noise kick).

    Closed form of the drift: score = (t v - x) / (1 - t), w_t = sigma_t = 1 - t, so
    drift = v + w_t score = lam(t) x with lam(t) = w (1 + t) - 1; each step's kick is
    sqrt(2 (1 - t) dt) eps with eps the generator's next standard normal of x's shape; the last step
    is the deterministic mean step x (1 + lam(1 - last) last)."""
    grid = torch.linspace(0.0, 1.0 - last, num_steps, dtype=torch.float64).tolist()
    g = torch.Generator().manual_seed(seed)
    lam = lambda t: w * (1 + t) - 1  # noqa: E731
    y, biggest = x.double(), float(x.abs().max())
    for t, t_next in zip(grid[:-1], grid[1:]):
        dt = t_next - t
        kick = math.sqrt(2 * (1 - t) * dt) * torch.randn(x.shape, generator=g, dtype=x.dtype).double()
        if heun:
            y_hat = y + kick
            k1 = lam(t) * y_hat
            y = y_hat + 0.5 * dt * (k1 + lam(t_next) * (y_hat + dt * k1))
        else:
            y = y + lam(t) * y * dt + kick
        biggest = max(biggest, float(y.abs().max()), float(kick.abs().max()))
    return y * (1 + lam(grid[-1]) * last), biggest


def test_samplers_work_under_no_grad_and_any_shape():
    """No graph is built even inside enable_grad with a velocity whose weight requires grad; the
    values are the closed form (Euler-Maruyama and stochastic Heun on v = w x replayed in float64
    with the same generator's draws, Euler ODE x (1 + w h)^N); and the samplers are elementwise in the
    state: a (2, 3, 4, 5) input gives the flattened (2, 60) input's result (same generator)."""
    weight = torch.nn.Parameter(torch.tensor(0.5))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    for sampler in (euler_maruyama, heun_sde):
        with torch.enable_grad():
            out = sampler(lambda x, t: weight * x, x, num_steps=5, generator=torch.Generator().manual_seed(1))
        flat = sampler(
            lambda x, t: weight * x, x.reshape(2, 60), num_steps=5, generator=torch.Generator().manual_seed(1)
        )
        assert out.shape == x.shape and out.grad_fn is None and not out.requires_grad
        assert torch.equal(out.reshape(2, 60), flat)
        expected, biggest = _linear_velocity_sde_reference(x, 0.5, 5, sampler is heun_sde, seed=1)
        # float32 against float64: each of the 5 steps rounds at most ~32 times (the heun step's two
        # drifts, the kick, the sums; t and 1 - t to float32), each by u = 2^-24 of a value no larger
        # than `biggest`; no step amplifies an earlier error (every step scales x by a factor in (0, 1)).
        tol = 5 * 32 * 2.0**-24 * biggest
        assert float((out.double() - expected).abs().max()) <= tol, sampler.__name__
    with torch.enable_grad():
        out = ode(lambda x, t: weight * x, x, method="euler", num_steps=4)
    assert out.shape == x.shape and out.grad_fn is None
    assert torch.allclose(out, x * (1 + 0.5 / 4) ** 4, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- training loss
def _toy_model(x, t):
    return 0.3 * x + t.reshape(-1, *([1] * (x.ndim - 1)))


def test_training_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(3, 10, 4, generator=g)
    x0 = torch.randn(3, 10, 4, generator=g)
    t = torch.tensor([0.2, 0.5, 0.9])
    loss, stats = training_loss(_toy_model, x1, t=t, x0=x0)
    tt = t[:, None, None]
    x_t = tt * x1 + (1 - tt) * x0
    expected = ((0.3 * x_t + tt - (x1 - x0)) ** 2).mean()
    assert loss.ndim == 0
    assert torch.allclose(loss, expected)
    assert torch.allclose(stats["loss_per_item"].mean(), expected)


def test_training_loss_is_averaged_over_batch():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, 10, 4, generator=g)
    x0 = torch.randn(1, 10, 4, generator=g)
    t = torch.tensor([0.4])
    one, _ = training_loss(_toy_model, x1, t=t, x0=x0)
    two, _ = training_loss(_toy_model, x1.repeat(2, 1, 1), t=t.repeat(2), x0=x0.repeat(2, 1, 1))
    assert torch.allclose(one, two)


def test_training_loss_on_triplane_weights_planes_by_tokens():
    g = torch.Generator().manual_seed(2)
    grid = (4, 2, 3)

    def triplane():
        return Triplane(
            torch.randn(2, 3, 2, 3, generator=g),
            torch.randn(2, 3, 4, 3, generator=g),
            torch.randn(2, 3, 4, 2, generator=g),
        )

    x1, x0 = triplane(), triplane()
    t = torch.tensor([0.25, 0.75])
    loss, _ = training_loss(_toy_model, x1, t=t, x0=x0.flatten())
    # Per-plane MSEs by hand, weighted by token counts (6, 12, 8).
    tt = t[:, None, None, None]
    per_plane = []
    for a, b in zip(x1.planes(), x0.planes()):
        x_t = tt * a + (1 - tt) * b
        per_plane.append(((0.3 * x_t + tt - (a - b)) ** 2).mean())
    counts = torch.tensor([6.0, 12.0, 8.0])
    assert Triplane.unflatten(x1.flatten(), grid).xy.shape == x1.xy.shape
    assert torch.allclose(loss, (torch.stack(per_plane) * counts).sum() / counts.sum())


def test_training_loss_sampling_is_seeded_and_clipped():
    x1 = torch.randn(64, 5)
    a, sa = training_loss(_toy_model, x1, generator=torch.Generator().manual_seed(3))
    b, sb = training_loss(_toy_model, x1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(sa["t"], sb["t"])
    _, sc = training_loss(_toy_model, x1, generator=torch.Generator().manual_seed(3), t_eps=0.1)
    assert sc["t"].min() >= 0.1 and sc["t"].max() <= 0.9
