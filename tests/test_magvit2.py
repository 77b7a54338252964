"""MAGVIT-v2 baseline: parameter counts, shapes, causality, LFQ, discriminator and GAN terms."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines.causal import (
    AdaptiveGroupNorm,
    CausalConv3d,
    DepthToSpaceUpsample,
    FrameGroupNorm,
    ResBlock3d,
    causal_resize,
    inflate_image_kernel,
    norm_groups,
)
from baselines.discriminator import BlurPool3d, StyleGANDiscriminator3D, build_discriminator, discriminator_param_count
from baselines.gan import LeCAM, entropy_weight, nonsaturating_d_loss, nonsaturating_g_loss, r1_penalty
from baselines.lfq import LFQ, bit_codes, codebook_usage, lfq_entropy
from baselines.magvit2 import MagvitV2, MagvitV2Config, analytic_param_count, load_magvit2_config
from coordtok.chunking import reconstruct_chunked
from coordtok.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "baselines"
EPS32 = torch.finfo(torch.float32).eps


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_cfg(**kw) -> MagvitV2Config:
    """The tiny YAML config at 32 x 32 (same 4x / 8x downsampling pattern as the paper)."""
    cfg = load_magvit2_config(CONFIGS / "magvit2-tiny.yaml")
    return dataclasses.replace(cfg, size=32, disc_channel_multipliers=(1, 2, 2), **kw)


# ---------------------------------------------------------------------------- parameter counts


def test_paper_param_count_matches_layout():
    cfg = load_magvit2_config(CONFIGS / "magvit2.yaml")
    assert cfg == MagvitV2Config()
    with torch.device("meta"):
        model = MagvitV2(cfg)
    want = analytic_param_count(cfg)
    got = {"encoder": n_params(model.encoder), "decoder": n_params(model.decoder), "total": n_params(model)}
    assert got == want
    assert n_params(model.quantizer) == 0
    assert (round(want["encoder"] / 1e6, 2), round(want["decoder"] / 1e6, 2), round(want["total"] / 1e6, 2)) == (
        144.87,
        225.68,
        370.55,
    )


def test_tiny_param_count_matches_layout():
    cfg = load_magvit2_config(CONFIGS / "magvit2-tiny.yaml")
    model = MagvitV2(cfg)
    want = analytic_param_count(cfg)
    assert n_params(model.encoder) == want["encoder"] and n_params(model.decoder) == want["decoder"]
    assert n_params(model) == want["total"]
    # the non-affine GroupNorms (adaptive norm, LFQ pre-norm) add nothing
    assert n_params(MagvitV2(dataclasses.replace(cfg, pre_quant_norm=True))) == want["total"]


def test_discriminator_param_count():
    cfg = MagvitV2Config()
    with torch.device("meta"):
        disc = build_discriminator(cfg)
    assert n_params(disc) == discriminator_param_count(17, 128, 128, (2, 4, 4, 4, 4)) == 61_341_569
    assert round(n_params(disc) / 1e6, 2) == 61.34
    tiny = load_magvit2_config(CONFIGS / "magvit2-tiny.yaml")
    assert n_params(build_discriminator(tiny)) == discriminator_param_count(
        tiny.frames, tiny.size, tiny.disc_base_channels, tiny.disc_channel_multipliers
    )


# ---------------------------------------------------------------------------- shapes


def test_paper_shapes_on_meta():
    with torch.device("meta"):
        model = MagvitV2(MagvitV2Config())
        disc = build_discriminator(MagvitV2Config())
        video = torch.empty(2, 3, 17, 128, 128)
        z = model.encoder(video)
        assert z.shape == (2, 18, 5, 16, 16)
        assert model.decoder(z).shape == (2, 3, 17, 128, 128)
        assert disc(video).shape == (2,)
    assert model.latent_shape(17) == (18, 5, 16, 16)
    assert model.chunk_frames == 17
    assert model.tokens(17) == 5 * 16 * 16
    assert model.tokens(128) == 8 * 5 * 16 * 16 == 10_240
    assert model.latent_shape(33) == (18, 9, 16, 16)
    with pytest.raises(ValueError):
        model.latent_shape(16)


def test_tiny_forward_shapes_and_token_round_trip():
    torch.manual_seed(0)
    cfg = load_magvit2_config(CONFIGS / "magvit2-tiny.yaml")
    model = MagvitV2(cfg).eval()
    video = torch.rand(2, 3, 17, 64, 64) * 2 - 1
    with torch.no_grad():
        q, idx, aux = model.encode(video)
        recon, aux2 = model(video)
        again = model.decode_indices(idx)
    assert q.shape == (2, 10, 5, 8, 8) and idx.shape == (2, 5, 8, 8) and idx.dtype == torch.long
    assert recon.shape == video.shape
    assert torch.equal(q.abs(), torch.ones_like(q))
    assert torch.equal(again, recon)  # the tokens alone decode to the same video
    for key in ("commitment", "entropy", "per_sample_entropy", "codebook_entropy"):
        assert torch.isfinite(aux[key]) and aux[key].ndim == 0
    assert 0 < aux["codebook_use"] <= 1 and aux["perplexity"] >= 1
    assert torch.equal(aux2["indices"], idx)
    with pytest.raises(ValueError):
        model.encode(video[:, :, :16])


def test_chunked_magvit_long_video():
    torch.manual_seed(0)
    model = MagvitV2(small_cfg()).eval()
    video = torch.rand(2, 3, 40, 32, 32) * 2 - 1
    with torch.no_grad():
        recon, info = reconstruct_chunked(lambda x: model(x)[0], video)
        first = model(video[:, :, :17])[0]
    assert recon.shape == video.shape and info["num_chunks"] == 3 and info["boundaries"] == [17, 33]
    assert torch.equal(recon[:, :, :17], first)
    assert model.tokens(40) == 3 * 5 * 4 * 4


# ---------------------------------------------------------------------------- causality


def _first_frame_of_block(j: int, tf: int) -> int:
    """First input frame of latent frame j (latent 0 is frame 0 alone; j >= 1 covers tf frames)."""
    return 0 if j == 0 else tf * (j - 1) + 1


def causality_breaks(model: MagvitV2, video: torch.Tensor, k: int) -> dict:
    """Perturb input frame k; report whether anything *before* k's causal block changed.

    Also asserts that k's own block does change, so a model that ignores its input cannot pass.
    """
    tf = model.cfg.time_factor
    j = math.ceil(k / tf)
    first = _first_frame_of_block(j, tf)
    other = video.clone()
    other[:, :, k] = torch.rand_like(other[:, :, k]) * 2 - 1
    # both versions in one batch (samples never interact; a batch of 2 also takes PyTorch's fast
    # CPU conv path), compared sample against sample
    with torch.no_grad():
        z1, z2 = model.encoder(torch.cat([video, other])).chunk(2)
        r1, r2 = model(torch.cat([video, other]))[0].chunk(2)
        q = torch.sign(z1)
        q_flip = q.clone()
        q_flip[:, :, j] *= -1  # change latent frame j completely
        d1, d2 = model.decode(torch.cat([q, q_flip])).chunk(2)
    assert not torch.equal(z1[:, :, j], z2[:, :, j])
    assert not torch.equal(d1[:, :, first : first + tf], d2[:, :, first : first + tf])
    return {
        "encoder": not torch.equal(z1[:, :, :j], z2[:, :, :j]),
        "decoder": not torch.equal(d1[:, :, :first], d2[:, :, :first]),
        "model": not torch.equal(r1[:, :, :first], r2[:, :, :first]),
    }


@pytest.mark.parametrize("k", [1, 9, 16])
def test_causal_bit_identical(k):
    torch.manual_seed(0)
    model = MagvitV2(small_cfg(pre_quant_norm=True)).eval()
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    # fp32, eval: earlier outputs are computed by the same arithmetic on the same inputs, so any
    # difference at all (not just a large one) is a causality leak.
    assert causality_breaks(model, video, k) == {"encoder": False, "decoder": False, "model": False}


def test_time_pooled_groupnorm_breaks_causality():
    torch.manual_seed(0)
    model = MagvitV2(small_cfg(pre_quant_norm=True)).eval()
    for m in model.modules():
        if isinstance(m, FrameGroupNorm):
            m.pool_time = True
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    assert causality_breaks(model, video, 16) == {"encoder": True, "decoder": True, "model": True}


def _frame_dependence(fn, x: torch.Tensor) -> torch.Tensor:
    """(T_out, T_in) bool: does output frame i depend on input frame j (nonzero gradient)?"""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    dep = torch.zeros(y.shape[2], x.shape[2], dtype=torch.bool)
    for i in range(y.shape[2]):
        (g,) = torch.autograd.grad(y[:, :, i].pow(2).sum(), x, retain_graph=True)
        dep[i] = g.abs().sum(dim=(0, 1, 3, 4)) > 0
    return dep


def test_causal_block_receptive_fields():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 6, 6)
    # strided conv: output j sees inputs 2j-2 .. 2j; output 0 sees frame 0 alone
    dep = _frame_dependence(CausalConv3d(4, 4, 3, stride=(2, 2, 2)), x)
    assert dep.shape == (5, 9)
    want = torch.tensor([[max(0, 2 * i - 2) <= j <= 2 * i for j in range(9)] for i in range(5)])
    assert torch.equal(dep, want)
    # upsampler (5 -> 9): output i is cut from conv frame ceil(i / 2), which sees inputs up to it
    dep = _frame_dependence(DepthToSpaceUpsample(4, 2), x[:, :, :5])
    want = torch.tensor([[math.ceil(i / 2) - 2 <= j <= math.ceil(i / 2) for j in range(5)] for i in range(9)])
    assert torch.equal(dep, want)
    # res block (two kt = 3 convs, per-frame norms): frame i sees frames i - 4 .. i
    dep = _frame_dependence(ResBlock3d(4, 8, groups=2), x)
    assert torch.equal(dep, torch.tensor([[i - 4 <= j <= i for j in range(9)] for i in range(9)]))
    # adaptive norm: frame i sees its own features and latent frame ceil(i / 4)
    ada = AdaptiveGroupNorm(4, 3, groups=2)
    cond = torch.randn(1, 3, 3, 3, 3).requires_grad_(True)
    y = ada(x, cond)
    for i in range(9):
        (g,) = torch.autograd.grad(y[:, :, i].sum(), cond, retain_graph=True)
        used = (g.abs().sum(dim=(0, 1, 3, 4)) > 0).tolist()
        assert used == [t == math.ceil(i / 4) for t in range(3)]


def test_causal_resize_matches_stepwise_upsampling():
    z = torch.arange(5.0).view(1, 1, 5, 1, 1)
    # latent 0 -> frame 0; latent j >= 1 -> frames 4j-3 .. 4j
    assert causal_resize(z, (17, 1, 1)).flatten().tolist() == [0] + [j for j in range(1, 5) for _ in range(4)]
    assert causal_resize(z, (9, 1, 1)).flatten().tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_norm_groups():
    assert norm_groups(128) == 32 and norm_groups(16) == 16 and norm_groups(24) == 8 and norm_groups(48, 8) == 8


def test_inflated_kernel_acts_per_frame():
    torch.manual_seed(0)
    w2d, b = torch.randn(5, 4, 3, 3), torch.randn(5)
    conv = CausalConv3d(4, 5, 3)
    with torch.no_grad():
        conv.conv.weight.copy_(inflate_image_kernel(w2d, 3))
        conv.conv.bias.copy_(b)
    x = torch.randn(2, 4, 7, 8, 8)
    got = conv(x)
    frames = x.transpose(1, 2).reshape(-1, 4, 8, 8)
    want = F.conv2d(frames, w2d, b, padding=1).reshape(2, 7, 5, 8, 8).transpose(1, 2)
    # Same products, different summation order (the 3D conv also adds 72 zero terms): recursive
    # float32 summation of n terms is off by at most ~n * eps * sum|terms|, n = 4 * 27 + 1.
    bound = F.conv2d(frames.abs(), w2d.abs(), b.abs(), padding=1).reshape(2, 7, 5, 8, 8).transpose(1, 2)
    assert ((got - want).abs() <= (4 * 27 + 1) * EPS32 * bound).all()
    assert inflate_image_kernel(w2d, 3)[:, :, :2].abs().sum() == 0


# ---------------------------------------------------------------------------- LFQ


def test_lfq_quantizes_to_signs_and_indices_round_trip():
    torch.manual_seed(0)
    lfq = LFQ(6, entropy_groups=2)
    z = torch.randn(2, 6, 3, 4, 4, requires_grad=True)
    q, idx, aux = lfq(z)
    assert torch.equal(q, torch.where(z > 0, 1.0, -1.0))  # exactly +-1, no rounding from the STE
    assert torch.equal(lfq.indices_to_codes(idx), q.detach())
    assert torch.equal(lfq.codes_to_indices(q), idx)
    all_idx = torch.arange(64).view(1, 64)
    assert torch.equal(lfq.codes_to_indices(lfq.indices_to_codes(all_idx)), all_idx)
    # channel 0 is the most significant bit
    one_hot = -torch.ones(1, 6, 1)
    one_hot[0, 0] = 1
    assert lfq.codes_to_indices(one_hot).item() == 32
    assert torch.equal(bit_codes(6)[idx.flatten()], q.detach().movedim(1, -1).reshape(-1, 6))
    # straight-through: dq/dz = 1
    q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_lfq_commitment_closed_form():
    z = torch.tensor([0.5, -2.0, 1.0, -0.25]).view(1, 4, 1, 1, 1)
    _, _, aux = LFQ(4, entropy_groups=2)(z)
    want = ((0.5 - 1) ** 2 + (-2 + 1) ** 2 + 0 + (-0.25 + 1) ** 2) / 4
    # four float32 squares, a sum and a division: a few roundings of eps each
    assert aux["commitment"].item() == pytest.approx(want, rel=4 * EPS32)


def _direct_entropy(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample and codebook entropy over the full 2^bits codebook, straight from the definition."""
    codes = bit_codes(z.shape[1]).to(z.dtype)
    logits = -torch.cdist(z, codes, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / temperature
    p = logits.softmax(-1)
    per_sample = -(p * p.clamp_min(1e-300).log()).sum(-1).mean()
    avg = p.mean(0)
    return per_sample, -(avg * avg.clamp_min(1e-300).log()).sum()


@pytest.mark.parametrize("temperature,scale", [(1.0, 1.0), (0.01, 0.005)])
def test_lfq_entropy_factorization(temperature, scale):
    torch.manual_seed(0)
    z = torch.randn(64, 6, dtype=torch.float64) * scale
    direct_ps, direct_cb = _direct_entropy(z, temperature)
    assert direct_ps > 0.1  # informative: the distributions are far from one-hot
    # float64 sums of <= 64 terms: rounding ~1e-14; an approximation error would be >= 1e-3
    tol = 1e-10
    for groups in (1, 2, 3, 6):
        ps, cb = lfq_entropy(z, groups, temperature)
        # per-sample entropy of a product distribution is the sum of its factors' entropies: exact
        assert abs(ps - direct_ps) < tol
        # the codebook entropy of the batch mean is only bounded by the sum over sub-codebooks
        assert cb >= direct_cb - tol
    assert abs(lfq_entropy(z, 1, temperature)[1] - direct_cb) < tol
    assert lfq_entropy(z, 2, temperature)[1] > direct_cb + 1e-3  # the bound is not tight here
    # one position: the mean is a product distribution, so the codebook term is exact too
    ps, cb = lfq_entropy(z[:1], 2, temperature)
    assert abs(cb - _direct_entropy(z[:1], temperature)[1]) < tol


def test_lfq_codebook_entropy_closed_form():
    # two sharp, opposite positions: the full-codebook mean has two codes at 1/2 (log 2); each of
    # the two 3-bit sub-codebooks also has two codes at 1/2, so the factorized sum is 2 log 2.
    z = torch.tensor([[10.0] * 6, [-10.0] * 6], dtype=torch.float64)
    ps, cb = lfq_entropy(z, 2, 0.01)
    assert ps < 1e-100 and abs(cb - 2 * math.log(2)) < 1e-12
    assert abs(_direct_entropy(z, 0.01)[1] - math.log(2)) < 1e-12
    _, _, aux = LFQ(6, entropy_groups=2)(z.float().view(2, 6, 1, 1, 1))
    assert aux["entropy"].item() == pytest.approx(-2 * math.log(2), rel=4 * EPS32)


def test_codebook_usage_closed_form():
    use, ppl = codebook_usage(torch.tensor([0, 0, 1, 3]), bits=2)
    assert use == 3 / 4
    assert ppl == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lfq_no_nan_in_low_precision(dtype):
    # sharp distributions: most codes get probability exactly 0, whose entropy gradient must stay finite
    torch.manual_seed(0)
    lfq = LFQ(18, entropy_groups=2, pre_norm=True)
    z = (torch.randn(2, 18, 2, 4, 4) * 300).requires_grad_(True)  # logits 2 z c / T reach 6e4+
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        q, idx, aux = lfq(z.to(dtype))
    for key in ("commitment", "entropy", "per_sample_entropy", "codebook_entropy"):
        assert aux[key].dtype == torch.float32 and torch.isfinite(aux[key])
    (aux["entropy"] + aux["commitment"] + q.float().sum()).backward()
    assert torch.isfinite(z.grad).all() and q.dtype == dtype


# ---------------------------------------------------------------------------- discriminator and GAN terms


def test_discriminator_forward_and_blur():
    torch.manual_seed(0)
    cfg = small_cfg()
    disc = build_discriminator(cfg)
    x = torch.randn(2, 3, 17, 32, 32, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    # the blur filter sums to one: a constant video stays constant (reflect padding); 27 float32
    # products with dyadic weights, rounding at most a few eps
    const = torch.full((1, 2, 5, 6, 6), 0.75)
    out = BlurPool3d()(const)
    assert out.shape == (1, 2, 3, 3, 3) and torch.allclose(out, torch.full_like(out, 0.75), rtol=4 * EPS32)
    with pytest.raises(ValueError):
        StyleGANDiscriminator3D(frames=3, size=32, base_channels=8, channel_multipliers=(1, 1, 1))


def test_gan_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.5])
    sp = lambda v: math.log1p(math.exp(v))  # softplus, in float64
    # float32 softplus and a mean of two: relative error a few eps (1e-7); 1e-6 leaves room
    assert nonsaturating_g_loss(fake).item() == pytest.approx((sp(1.0) + sp(-0.5)) / 2, rel=1e-6)
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx(
        (sp(-2.0) + sp(0.0)) / 2 + (sp(-1.0) + sp(0.5)) / 2, rel=1e-6
    )
    assert nonsaturating_g_loss(torch.zeros(3)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_r1_penalty_closed_form():
    torch.manual_seed(0)
    a = torch.randn(3, 2, 4)
    x = torch.randn(5, 3, 2, 4, requires_grad=True)
    # linear D(x) = <a, x>: the gradient is a for every sample, the penalty ||a||^2.
    # float32 sums of 24 squares (and of 5 samples): relative error <= ~30 eps = 4e-6 < 1e-5
    assert r1_penalty((x * a).sum(dim=(1, 2, 3)), x).item() == pytest.approx(a.pow(2).sum().item(), rel=1e-5)
    # quadratic D(x) = ||x||^2: gradient 2x, penalty mean_b 4 ||x_b||^2; differentiable
    pen = r1_penalty(x.pow(2).sum(dim=(1, 2, 3)), x)
    assert pen.item() == pytest.approx(4 * x.pow(2).sum(dim=(1, 2, 3)).mean().item(), rel=1e-5)
    pen.backward()
    assert torch.allclose(x.grad, 8 * x / 5, rtol=1e-5)


def test_lecam_closed_form_and_state():
    lecam = LeCAM(decay=0.9)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.5])
    # first call: both EMAs are 0
    reg = lecam(real, fake)
    assert reg.item() == pytest.approx((1 + 9) / 2 + (4 + 0) / 2)
    assert lecam.ema_real.item() == pytest.approx(0.1 * 2.0) and lecam.ema_fake.item() == pytest.approx(0.1 * -0.75)
    # second call uses the updated EMAs
    reg = lecam(real, fake, update=False)
    er, ef = 0.2, -0.075
    want = (F.relu(real - ef).pow(2).mean() + F.relu(er - fake).pow(2).mean()).item()
    assert reg.item() == pytest.approx(want, rel=1e-6)
    state = lecam.state_dict()
    assert set(state) == {"ema_real", "ema_fake"}
    fresh = LeCAM(decay=0.9)
    fresh.load_state_dict(state)
    assert fresh.ema_real.item() == pytest.approx(er) and fresh.ema_fake.item() == pytest.approx(ef)


def test_entropy_weight_annealing():
    assert entropy_weight(0) == pytest.approx(0.4)
    assert entropy_weight(1000) == pytest.approx(0.25)
    assert entropy_weight(2000) == pytest.approx(0.1)
    assert entropy_weight(10_000) == pytest.approx(0.1)


# ---------------------------------------------------------------------------- config and learning


def test_config_validation():
    with pytest.raises(ConfigError, match="temporal_downsample"):
        MagvitV2Config(temporal_downsample=(True, True)).validate()
    with pytest.raises(ConfigError, match="frames"):
        MagvitV2Config(frames=16).validate()
    with pytest.raises(ConfigError, match="entropy_groups"):
        MagvitV2Config(latent_channels=18, entropy_groups=4).validate()
    with pytest.raises(ConfigError, match="disc_channel_multipliers"):
        MagvitV2Config(frames=5, disc_channel_multipliers=(1, 1, 1, 1)).validate()


@pytest.mark.slow
def test_tiny_model_learns_a_clip():
    torch.manual_seed(0)
    model = MagvitV2(small_cfg())
    # a smooth moving pattern, 9 frames (1 + 2 x 4: the model is fully convolutional)
    t = torch.linspace(0, 1, 9).view(1, 1, 9, 1, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    video = torch.cat([torch.sin(3 * xx + 2 * t), torch.cos(2 * yy - t), xx * yy * (1 - t)], dim=1)
    video = torch.cat([video, video.flip(-1)])  # two clips: a batch of 2 is faster than 1 on the CPU
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        recon, aux = model(video)
        loss = F.mse_loss(recon, video)
        losses.append(loss.item())
        opt.zero_grad()
        (loss + 0.25 * aux["commitment"] + entropy_weight(step) * aux["entropy"]).backward()
        opt.step()
    assert min(losses[-3:]) < 0.5 * losses[0]
    assert aux["codebook_use"] > 0
