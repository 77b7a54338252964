"""REGEN: parameter counts, two latent frames per chunk, the DiT decoder learns, one-step and
multi-step decoding, and latent extension across chunks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import param_count

from baselines.regen import Regen, RegenConfig, analytic_param_count, load_regen_config
from coordtok.config import ConfigError, from_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "baselines"

# 9-frame chunks (k = 8: four levels, three strided convs) of 16 x 16, a 2-block DiT of width 64
TINY = dict(
    frames=9,
    size=16,
    enc_channels=8,
    enc_multipliers=(1, 2, 2, 2),
    enc_spatial_down=(True, True, True),
    enc_blocks=1,
    hidden=64,
    depth=2,
    heads=4,
    patch=4,
    latent_patch=1,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(phase: float, frames: int = 9, size: int = 16) -> torch.Tensor:
    """A smooth moving colour pattern in [-0.8, 0.8], ``(3, frames, size, size)``."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    r = torch.sin((x + 2 * t) / 5 + phase)
    g = torch.cos((y - t) / 4 + phase)
    b = torch.sin((x + y + 3 * t) / 7 - phase)
    return 0.8 * torch.stack(torch.broadcast_tensors(r, g, b))


@torch.no_grad()
def _live(model: Regen, seed: int = 0) -> Regen:
    """Give the zero-initialised adaLN and output layers small random values, so the untrained
    decoder's velocity depends on its inputs (at init it is exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.decoder.parameters():
        if not p.any():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["regen.yaml", "regen-tiny.yaml"])
def test_parameter_counts(name):
    """No published total for REGEN: the modules (meta device) equal the analytic layout count."""
    cfg = load_regen_config(CONFIGS / name)
    counts = analytic_param_count(cfg)
    with torch.device("meta"):
        model = Regen(cfg)
    assert param_count(model.encoder) == counts["encoder"]
    assert param_count(model.decoder) == counts["decoder"]
    assert param_count(model) == counts["total"]
    if name == "regen.yaml":
        assert cfg == RegenConfig() and cfg.depth == 24
        assert counts == {"encoder": 244_345_992, "decoder": 458_375_936, "total": 702_721_928}


@pytest.mark.parametrize("levels", [4, 5])
def test_two_latent_frames_per_chunk(levels):
    """1 + k frames -> 2 latent frames of 8 channels at 8x down, k = 8 (multipliers 1,2,4,6) or
    k = 16 (one more level), through the real forward on the meta device at 256 x 256."""
    mults = (1, 2, 4, 6, 6)[:levels]
    cfg = RegenConfig(
        frames=1 + 2 ** (levels - 1),
        enc_multipliers=mults,
        enc_spatial_down=(True, True, True, False)[: levels - 1],
        depth=2,
    )
    with torch.device("meta"):
        model = Regen(cfg)
        z = model.encode(torch.empty(2, 3, cfg.frames, 256, 256))
        v = model.velocity_model(z)(torch.empty(2, 3, cfg.frames, 256, 256), torch.empty(2))
        v_ext = model.velocity_model(z, prev_latent=z)(torch.empty(2, 3, cfg.frames + 1, 256, 256), torch.empty(2))
    assert tuple(z.shape) == (2, 8, 2, 32, 32) == (2, *model.latent_shape())
    assert tuple(v.shape) == (2, 3, cfg.frames, 256, 256)
    assert tuple(v_ext.shape) == (2, 3, cfg.frames + 1, 256, 256)
    assert model.tokens(128) == math.ceil(128 / cfg.frames) * 2 * 32 * 32


def test_latent_frame_0_is_the_first_frame_alone():
    """Causal strided convs: latent frame 0 sees frame 0 only; latent frame 1 sees the rest."""
    torch.manual_seed(0)
    model = Regen(RegenConfig(**TINY))
    video = torch.stack([_clip(0.0)])
    other = video.clone()
    other[:, :, 1:] = -other[:, :, 1:]
    with torch.no_grad():
        a, b = model.encode(video), model.encode(other)
    assert torch.equal(a[:, :, 0], b[:, :, 0])
    assert not torch.equal(a[:, :, 1], b[:, :, 1])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"frames": 16}, "'frames' must be 1 + 2^(levels - 1) = 17"),
        ({"enc_spatial_down": [True, True, True]}, "one flag per strided conv (4)"),
        ({"hidden": 1020, "heads": 4}, "multiple of 8"),
        ({"patch": 24}, "not divisible by 'patch'"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        from_dict(RegenConfig, changes, "regen.yaml: model")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_encode_rejects_wrong_chunk_length():
    model = Regen(RegenConfig(**TINY))
    with pytest.raises(ValueError, match="chunks"):
        model.encode(torch.zeros(1, 3, 8, 16, 16))


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_decoder_loss_goes_down_on_a_fixed_batch():
    """40 Adam steps (lr 3e-3) of the flow-matching loss on two fixed clips, encoder and DiT
    together. Measured on a held-out evaluation set of (t, x0) pairs, fixed, so the number is a
    function of the weights only. At init the velocity is zero and the loss is E|x1 - x0|^2 = 1.327;
    after 40 steps we measured 0.49-0.50 of it over seeds 0-2 (width 192, as wide as a 3 x 8 x 8
    patch: narrower DiTs are refused); the test asks for 0.65."""
    torch.manual_seed(0)
    model = Regen(RegenConfig(**{**TINY, "size": 32, "patch": 8, "hidden": 192}))
    video = torch.stack([_clip(0.0, size=32), _clip(1.5, size=32)])
    g = torch.Generator().manual_seed(123)
    t_eval = torch.linspace(0.05, 0.95, 8)
    x0_eval = torch.randn((8, *video.shape[1:]), generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return model.loss(video.repeat(4, 1, 1, 1, 1), t=t_eval, x0=x0_eval)[0].item()

    before = eval_loss()
    assert abs(before - (video.repeat(4, 1, 1, 1, 1) - x0_eval).pow(2).mean().item()) < 1e-5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, stats = model.loss(video, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.65 * before, (before, after)


def test_extended_window_loss():
    """The extended window's target is [previous chunk's last frame, chunk]: k + 2 frames."""
    model = Regen(RegenConfig(**TINY))
    prev, video = torch.stack([_clip(0.0)]), torch.stack([_clip(0.9)])
    x0 = torch.randn(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(0))
    loss, stats = model.loss(video, prev_video=prev, t=torch.tensor([0.3]), x0=x0)
    # zero velocity at init: the loss is |x1 - x0|^2 for x1 = [prev[-1], video]
    x1 = torch.cat([prev[:, :, -1:], video], dim=2)
    assert torch.allclose(loss, (x1 - x0).pow(2).mean())


# ---------------------------------------------------------------------------- decoding


def test_one_step_and_multi_step_decoding():
    torch.manual_seed(0)
    model = _live(Regen(RegenConfig(**TINY)))
    latent = model.encode(torch.stack([_clip(0.0), _clip(1.0)])).detach()
    # one step: a single Euler step of the ODE from noise, x1 = x0 + v(x0, 0)
    one = model.decode(latent, steps=1, generator=torch.Generator().manual_seed(5))
    x0 = torch.randn(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(one.frames, x0 + model.velocity_model(latent)(x0, torch.zeros(2)))
    assert len(one.trace) == 2  # one evaluation + the final frame
    for sampler, steps in (("euler", 8), ("sde", 8), ("heun3", 3)):
        res = model.decode(latent, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(5))
        assert res.frames.shape == (2, 3, 9, 16, 16) and torch.isfinite(res.frames).all()
        evaluations = {"euler": steps, "sde": steps, "heun3": 3 * steps}[sampler]
        assert len(res.trace) == evaluations + 1
        assert not torch.equal(res.frames, one.frames)
    with pytest.raises(ValueError, match="sampler"):
        model.decode(latent, steps=4, sampler="dopri5")


@pytest.mark.parametrize("sampler, steps", [("euler", 4), ("sde", 4)])
def test_latent_extension_closes_the_seam(sampler, steps):
    """With latent extension the overlapped frame of consecutive chunks is the same frame, bit for
    bit, and the later chunk is generated around the earlier chunk's stored trajectory (the
    network sees the stored state of the overlapped frame at every evaluation). Without extension
    the chunks are independent, and an extended but unguided window regenerates the overlapped
    frame differently."""
    torch.manual_seed(0)
    model = _live(Regen(RegenConfig(**TINY)))
    with torch.no_grad():
        latents = [model.encode(_clip(phase)[None]) for phase in (0.0, 0.7, 1.4)]  # 3 chunks of 9 frames

    seen = []
    original = model.decoder.forward

    def spy(x, t, latent, frame_times, latent_times):
        seen.append((frame_times[0].item(), x[:, :, 0].clone()))
        return original(x, t, latent, frame_times, latent_times)

    model.decoder.forward = spy
    try:
        out = model.decode_long(
            latents, steps=steps, extend=True, sampler=sampler, generator=torch.Generator().manual_seed(1)
        )
    finally:
        del model.decoder.forward
    w = out.windows
    assert [x.shape[2] for x in w] == [9, 10, 10] and out.video.shape[2] == 27
    for c in (1, 2):
        assert torch.equal(w[c][:, :, 0], w[c - 1][:, :, -1])
        assert torch.equal(out.video[:, :, 9 * c - 1], w[c - 1][:, :, -1])
    # chunk 1's evaluations saw chunk 0's stored states of its last frame, one per evaluation
    first = model.decode(latents[0], steps, sampler, torch.Generator().manual_seed(1))
    assert torch.equal(first.frames, w[0])
    chunk1 = [x for t0, x in seen if t0 == -1.0][: len(first.trace) - 1]
    assert len(chunk1) == len(first.trace) - 1
    assert all(torch.equal(x, s) for x, (_, s) in zip(chunk1, first.trace[:-1]))

    # the guidance is live: the same extended window without it comes out differently
    gen = torch.Generator().manual_seed(2)
    guided = model.decode(latents[1], steps, sampler, gen, prev_latent=latents[0], guide=first.trace)
    gen = torch.Generator().manual_seed(2)
    free = model.decode(latents[1], steps, sampler, gen, prev_latent=latents[0])
    assert not torch.equal(guided.frames[:, :, 1:], free.frames[:, :, 1:])
    assert (free.frames[:, :, 0] - first.frames[:, :, -1]).abs().mean() > 1e-2

    plain = model.decode_long(
        latents, steps=steps, extend=False, sampler=sampler, generator=torch.Generator().manual_seed(1)
    )
    assert [x.shape[2] for x in plain.windows] == [9, 9, 9]
    assert torch.equal(plain.windows[0], w[0])
    assert torch.equal(plain.video, torch.cat(plain.windows, dim=2))


def test_guide_must_match_the_sampler():
    model = _live(Regen(RegenConfig(**TINY)))
    latent = model.encode(torch.stack([_clip(0.0)])).detach()
    first = model.decode(latent, steps=4)
    with pytest.raises(ValueError, match="guide does not match"):
        model.decode(latent, steps=3, prev_latent=latent, guide=first.trace)
    with pytest.raises(ValueError, match="guide needs prev_latent"):
        model.decode(latent, steps=4, guide=first.trace)


def test_reconstruct_long_pads_and_trims():
    """14 frames = a 9-frame chunk and 5 frames padded to 9 by repeating the last one 4 times: the
    latents are exactly those of the two clips; the output is exactly the direct reconstruction of
    the first chunk alone (same generator), then frames 1..5 of the second chunk's extended window
    decoded after it (frame 0 is the overlap); its 4 padded frames are not returned."""
    model = _live(Regen(RegenConfig(**TINY)))
    video = torch.cat([torch.stack([_clip(0.0)]), torch.stack([_clip(0.5)])[:, :, :5]], dim=2)  # 14 frames
    first, rest = video[:, :, :9], video[:, :, 9:]
    padded = torch.cat([rest, rest[:, :, -1:].repeat(1, 1, 4, 1, 1)], dim=2)
    latents = model.encode_long(video)
    assert len(latents) == 2 and all(z.shape == (1, 8, 2, 2, 2) for z in latents)
    assert torch.equal(latents[0], model.encode(first)) and torch.equal(latents[1], model.encode(padded))

    out = model.reconstruct_long(video, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == video.shape
    direct = model.reconstruct_long(first, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :9], direct)
    g = torch.Generator().manual_seed(0)  # the same draws in the same order: chunk 0's noise, then chunk 1's
    alone = model.decode(latents[0], steps=2, generator=g)
    second = model.decode(latents[1], steps=2, generator=g, prev_latent=latents[0], guide=alone.trace)
    assert second.frames.shape[2] == 10  # frames -1..8 of chunk 1: the overlap, 5 real, 4 padded
    assert torch.equal(out[:, :, :9], alone.frames) and torch.equal(out[:, :, 9:], second.frames[:, :, 1:6])
