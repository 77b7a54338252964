"""ProMAG: Table 4 parameter counts and shapes, growing (equal to the parent at init, frozen
weights stay put), causality, long-video chunking, the PatchGAN3D discriminator and hinge losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import param_count

from baselines.promag import (
    PatchGAN3D,
    ProMAG,
    ProMAGConfig,
    analytic_param_count,
    discriminator_param_count,
    grow,
    hinge_d_loss,
    hinge_g_loss,
    load_promag_config,
    table4_config,
)
from coordtok.chunking import chunk_windows
from coordtok.config import ConfigError, from_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "baselines"


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(ratio: int = 4) -> ProMAGConfig:
    return load_promag_config(CONFIGS / f"promag-tiny-{ratio}x.yaml")


def _video(frames: int = 17, size: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1


@torch.no_grad()
def _trained_like(model: ProMAG, seed: int = 0) -> ProMAG:
    """Move every weight off its initial value (GroupNorm scales off 1, biases off 0) so that
    equalities below cannot hold by accident of an identity-like initialisation."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("ratio, millions", [(8, 655.23), (16, 846.35)])
@pytest.mark.parametrize("grown", [True, False])
def test_table4_parameter_counts(ratio, millions, grown):
    """The modules (built on the meta device) have exactly the analytic count, and the Table 4
    layout rounds to the figures derived from the paper (its 794 M / 986 M minus a VGG16)."""
    cfg = table4_config(ratio, grown=grown)
    counts = analytic_param_count(cfg)
    with torch.device("meta"):
        model = ProMAG(cfg)
    assert param_count(model) == counts["total"]
    assert param_count(model.encoder) + param_count(model.to_moments) == counts["encoder"]
    assert param_count(model.decoder) == counts["decoder"]
    assert param_count(model.mix) == counts["mixing"] == (1_182_720 * cfg.grown_levels)
    assert round(counts["table4"] / 1e6, 2) == millions
    assert counts["table4"] == {8: 655_229_459, 16: 846_349_331}[ratio]


def test_4x_and_tiny_parameter_counts():
    for cfg in (table4_config(4), _tiny(4), _tiny(8)):
        with torch.device("meta"):
            model = ProMAG(cfg)
        assert param_count(model) == analytic_param_count(cfg)["total"]
    assert analytic_param_count(table4_config(4))["total"] == 464_109_587


@pytest.mark.parametrize("ratio, latent_frames", [(4, 5), (8, 3), (16, 2)])
def test_paper_scale_shapes(ratio, latent_frames):
    """17 x 256 x 256 -> 8 x (5 | 3 | 2) x 32 x 32, through the real forward on the meta device;
    a grown model's parent path reconstructs the 2x subsampled clip (9 frames)."""
    with torch.device("meta"):
        model = ProMAG(table4_config(ratio))
        video = torch.empty(2, 3, 17, 256, 256)
        posterior = model.encode(video)
        recon, aux = model(video)
    assert model.latent_shape(17) == (8, latent_frames, 32, 32)
    assert tuple(posterior.mean.shape) == tuple(posterior.logvar.shape) == (2, 8, latent_frames, 32, 32)
    assert tuple(recon.shape) == (2, 3, 17, 256, 256)
    if ratio > 4:
        assert tuple(aux["recon_sub"].shape) == (2, 3, 9, 256, 256)
    assert model.tokens(17) == latent_frames * 32 * 32
    # 128 frames: windows of 17 overlapping by 4 start every 13 frames -> 10 windows
    assert len(chunk_windows(128, 17, 4)) == 10
    assert model.tokens(128) == 10 * latent_frames * 32 * 32


def test_yaml_configs():
    for ratio in (4, 8, 16):
        assert load_promag_config(CONFIGS / f"promag-{ratio}x.yaml") == table4_config(ratio)
    assert _tiny(8) == _tiny(4).child()
    assert _tiny(4).frames == 17 and _tiny(4).size == 64


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"enc_spatial_down": [True, True, True]}, "one flag per encoder level"),
        ({"dec_temporal_up": [True, True, True, False]}, "doubles it"),
        ({"frames": 16}, "1 + a multiple of the temporal factor 4"),
        ({"size": 60}, "not divisible by the spatial factor 8"),
        ({"grown_levels": 1}, "grown encoder level 3 must keep the width of level 2"),
        (
            {"grown_levels": 1, "enc_multipliers": [1, 2, 4, 4], "enc_spatial_down": [True, True, False, True]},
            "grown encoder level 3 must halve time only",
        ),
        ({"z_dim": 0}, "'z_dim' must be positive"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        from_dict(ProMAGConfig, changes, "promag.yaml: model")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="channels.*unknown key|unknown key .channels."):
        from_dict(ProMAGConfig, {"channels": 128}, "promag.yaml: model")


# ---------------------------------------------------------------------------- growing


def test_grown_model_equals_parent_at_init():
    """A freshly grown model encodes a clip exactly as its parent encodes the clip subsampled 2x in
    time, and its parent path decodes that latent exactly as the parent does: bit for bit, since
    the zero-initialised AdaNorm computes ``h * (1 + 0) + 0``, which is ``h`` in floating point.
    Checked for 4x -> 8x and 8x -> 16x."""
    torch.manual_seed(0)
    parent = _trained_like(ProMAG(_tiny(4)))
    video = _video(17, 16, batch=2)
    for stage in (1, 2):
        torch.manual_seed(stage)
        child = grow(parent)
        assert child.cfg.grown_levels == stage
        with torch.no_grad():
            got, want = child.encode(video), parent.encode(video[:, :, ::2])
            assert torch.equal(got.mean, want.mean) and torch.equal(got.logvar, want.logvar)
            recon, aux = child(video, sample=False)
            parent_recon, _ = parent(video[:, :, ::2], sample=False)
            assert torch.equal(aux["recon_sub"], parent_recon)
            assert torch.equal(aux["video_sub"], video[:, :, ::2])
            assert recon.shape == video.shape
            # the equality is the zero modulation's doing: a nonzero one moves the latent
            mod = child.mix[stage - 1].modulation.conv
            mod.weight.normal_(0, 0.1)
            assert not torch.equal(child.encode(video).mean, want.mean)
            mod.weight.zero_()
        parent = _trained_like(child, seed=stage)  # the grown stage, "trained", is the next parent


def test_grow_freezes_the_parent_and_one_step_leaves_it_unchanged():
    torch.manual_seed(0)
    parent = _trained_like(ProMAG(_tiny(4)))
    child = grow(parent)
    new = ("encoder.levels.4.", "mix.0.", "decoder.levels.4.")
    trainable = {n for n, p in child.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(new) for n in trainable)
    assert {n for n in dict(child.named_parameters()) if n.startswith(new)} == trainable
    for name, p in parent.named_parameters():  # the child took the parent's weights
        assert torch.equal(dict(child.named_parameters())[name], p)

    before = {n: p.detach().clone() for n, p in child.named_parameters()}
    # the paper's optimizer, over *all* parameters: freezing alone must protect the parent's
    opt = torch.optim.AdamW(child.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    video = _video(17, 16, batch=2)
    recon, aux = child(video, generator=torch.Generator().manual_seed(0))
    loss = (recon - video).abs().mean() + (aux["recon_sub"] - aux["video_sub"]).abs().mean() + 1e-12 * aux["kl"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    for name, p in child.named_parameters():
        if name in trainable:
            continue
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name
    changed = {n for n in trainable if not torch.equal(dict(child.named_parameters())[n], before[n])}
    assert any(n.startswith("decoder.levels.4.") for n in changed)
    assert any(n.startswith("mix.0.") for n in changed)


def test_grow_rejects_a_mismatched_child():
    parent = ProMAG(_tiny(4))
    with pytest.raises(ConfigError, match="one more grown level"):
        grow(parent, _tiny(4).child().child())
    with pytest.raises(ConfigError, match="one more grown level"):
        grow(parent, table4_config(8))


def test_grown_encoder_is_causal():
    """8x: latent frame j >= 1 is encoded from frames 8 (j - 1) + 1 .. 8 j, so changing frames
    9..16 leaves latent frames 0 and 1 unchanged bit for bit, through both the subsampled (frozen)
    path and the new full-rate path (live here: the mixing weights are nonzero)."""
    torch.manual_seed(0)
    model = _trained_like(grow(_trained_like(ProMAG(_tiny(4)))))
    video = _video(17, 16)
    other = video.clone()
    other[:, :, 9:] = _video(8, 16, seed=1)
    with torch.no_grad():
        a, b = model.encode(video).mean, model.encode(other).mean
        assert torch.equal(a[:, :, :2], b[:, :, :2])
        assert not torch.equal(a[:, :, 2], b[:, :, 2])
        # decoder: output frame 0 comes from latent frame 0 alone
        z2 = a.clone()
        z2[:, :, 1:] += 1.0
        assert torch.equal(model.decode(a)[:, :, 0], model.decode(z2)[:, :, 0])


def test_posterior_sampling_and_kl():
    torch.manual_seed(0)
    model = ProMAG(_tiny(4))
    video = _video(17, 16, batch=2)
    recon, aux = model(video, generator=torch.Generator().manual_seed(0))
    post = aux["posterior"]
    assert recon.shape == video.shape and "recon_sub" not in aux
    assert not torch.equal(aux["z"], post.mean)
    # KL of N(m, e^l) to N(0, 1), summed over the latent, averaged over the batch
    want = (0.5 * (post.mean**2 + post.logvar.exp() - 1 - post.logvar)).sum() / 2
    assert torch.allclose(aux["kl"], want, rtol=1e-5)
    assert torch.equal(model(video, sample=False)[1]["z"], post.mean)


# ---------------------------------------------------------------------------- long videos


def test_long_video_chunks_overlap_by_four_with_linear_blending():
    """reconstruct_long = the per-chunk codec (decode of the posterior mean) on windows [0, 17) and
    [13, 30), the four shared frames blended with weights 1/5 .. 4/5 for the later window.

    Outside the overlap the frames are the chunks' own, bit for bit. In the overlap the stitcher
    computes ``lerp`` while we compute ``(1 - w) a + w b``; each is a few float32 roundings of
    values of size at most ``M = max(|a|, |b|)``, each rounding off by at most ``eps / 2`` of a
    value of size at most ``2 M``, so the two agree within ``8 eps M``. (That an identity codec
    comes back exactly through this protocol is tests/test_chunking.py's.)"""
    torch.manual_seed(0)
    model = _trained_like(ProMAG(_tiny(4)))
    video = _video(30, 16)
    out, info = model.reconstruct_long(video)
    assert info["windows"] == [(0, 17), (13, 30)] and info["overlap"] == 4 and info["blend"] == "linear"
    with torch.no_grad():
        a, b = model.codec(video[:, :, 0:17]), model.codec(video[:, :, 13:30])
    assert torch.equal(out[:, :, :13], a[:, :, :13])
    assert torch.equal(out[:, :, 17:], b[:, :, 4:])
    w = torch.tensor([1, 2, 3, 4], dtype=torch.float32).view(1, 1, 4, 1, 1) / 5
    want = (1 - w) * a[:, :, 13:] + w * b[:, :, :4]
    bound = 8 * torch.finfo(torch.float32).eps * max(a.abs().max(), b.abs().max())
    assert (out[:, :, 13:17] - want).abs().max() <= bound


# ---------------------------------------------------------------------------- discriminator


def test_patchgan3d():
    cfg = table4_config(4)
    with torch.device("meta"):
        disc = PatchGAN3D.from_config(cfg)
        logits = disc(torch.empty(2, 3, 17, 256, 256))
    assert param_count(disc) == discriminator_param_count(cfg) == 8_293_185
    assert tuple(logits.shape) == (2, 1, 3, 30, 30)
    tiny = PatchGAN3D.from_config(_tiny(4))
    assert param_count(tiny) == discriminator_param_count(_tiny(4))
    out = tiny(_video(17, 64))
    assert out.shape == (1, 1, 3, 6, 6) and torch.isfinite(out).all()


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # D: (mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, 0]))) / 2 = (0.25 + 0.5) / 2
    assert hinge_d_loss(real, fake).item() == 0.375
    assert hinge_g_loss(fake).item() == 1.0
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])).item() == 0.0


@torch.no_grad()
def test_forward_uses_the_given_noise_as_the_reparametrization():
    """``forward(noise=eps)`` decodes ``mean + exp(logvar / 2) * eps`` (the trainer's per-clip noise),
    a generator's draw is the same as passing that draw, and ``sample=False`` is the mean (``codec``)."""
    model = _trained_like(ProMAG(_tiny(4)).eval())
    video = _video(17, 16, batch=2)
    shape = (2, *model.latent_shape(17, 16))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    recon, aux = model(video, noise=noise)
    posterior = model.encode(video)
    z = posterior.mean + torch.exp(0.5 * posterior.logvar) * noise
    assert torch.equal(aux["z"], z) and torch.equal(recon, model.decode(z))
    assert not torch.equal(z, posterior.mean)  # the noise moved the latent: exp(logvar / 2) > 0
    drawn, _ = model(video, generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, recon)
    assert torch.equal(model(video, sample=False)[0], model.codec(video))
    with pytest.raises(ValueError, match="needs sample=True"):
        model(video, sample=False, noise=noise)
