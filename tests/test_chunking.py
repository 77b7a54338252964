"""Long videos through a chunk codec (coordtok.chunking) and the seam measure (eval.seams)."""

import math

import pytest
import torch

from coordtok.chunking import blend_weights, chunk_boundaries, chunk_windows, reconstruct_chunked
from eval.seams import frame_diffs, seam_jump

MODES = [("drop", 1), ("linear", 4), ("linear", 1), ("drop", 0)]
LENGTHS = [1, 5, 16, 17, 18, 33, 34, 40, 128, 129]


def test_windows_of_the_128_frame_protocol():
    w = chunk_windows(128)
    assert len(w) == 8 and w[0] == (0, 17) and w[-1] == (112, 128)
    assert all(e - s == 17 for s, e in w[:-1])
    assert chunk_boundaries(128) == [17, 33, 49, 65, 81, 97, 113]
    assert chunk_windows(129)[-1] == (112, 129) and len(chunk_windows(129)) == 8
    assert chunk_windows(33) == [(0, 17), (16, 33)]
    assert chunk_windows(17) == [(0, 17)] and chunk_windows(5) == [(0, 5)]
    # ProMAG: 17-frame windows every 13 frames
    assert chunk_windows(40, 17, 4) == [(0, 17), (13, 30), (26, 40)]
    assert chunk_boundaries(40, 17, 4, "linear") == [13, 26]
    with pytest.raises(ValueError):
        chunk_windows(40, 17, 9)


@pytest.mark.parametrize("blend,overlap", MODES)
@pytest.mark.parametrize("T", LENGTHS)
def test_weights_sum_to_one(T, blend, overlap):
    total = torch.zeros(T, dtype=torch.float64)
    for (s, e), w in zip(chunk_windows(T, 17, overlap), blend_weights(T, 17, overlap, blend)):
        assert w.shape == (e - s,) and (w >= 0).all()
        total[s:e] += w
    # float64: 1 - w + w is within one rounding of 1
    assert torch.allclose(total, torch.ones(T, dtype=torch.float64), rtol=0, atol=2 * torch.finfo(torch.float64).eps)
    if blend == "linear" and overlap == 4 and T > 17:
        assert blend_weights(T, 17, 4, "linear")[1][:4].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8])


@pytest.mark.parametrize("blend,overlap", MODES)
@pytest.mark.parametrize("T", LENGTHS)
def test_identity_codec_is_exact(T, blend, overlap):
    torch.manual_seed(T)
    video = torch.randn(2, 3, T, 4, 5)
    calls = []

    def identity(x):
        calls.append(x.shape[2])
        return x.clone()

    recon, info = reconstruct_chunked(identity, video, chunk=17, overlap=overlap, blend=blend)
    assert torch.equal(recon, video)
    assert calls == [17] * len(chunk_windows(T, 17, overlap))  # every window padded to a full chunk
    assert info["num_chunks"] == len(calls) and info["boundaries"] == chunk_boundaries(T, 17, overlap, blend)
    assert info["pad"] == 17 - (info["windows"][-1][1] - info["windows"][-1][0])


def _offset_codec():
    """Adds 10 * (chunk number + 1) to every frame of the chunk it gets."""
    count = [0]

    def codec(x):
        count[0] += 1
        return x + 10.0 * count[0]

    return codec


@pytest.mark.parametrize("T", [33, 40, 128, 129])
def test_per_chunk_offset_jumps_exactly_at_boundaries_drop(T):
    video = torch.zeros(1, 3, T, 2, 2)
    recon, info = reconstruct_chunked(_offset_codec(), video)
    step = (recon[:, :, 1:] - recon[:, :, :-1]).abs().amax(dim=(0, 1, 3, 4))  # pair (t-1, t) at index t-1
    jumps = [t + 1 for t in torch.nonzero(step).flatten().tolist()]
    assert jumps == info["boundaries"] and len(jumps) == info["num_chunks"] - 1
    assert torch.all(step[[b - 1 for b in jumps]] == 10.0)


@pytest.mark.parametrize("T", [30, 40, 128])
def test_per_chunk_offset_ramps_over_the_overlap_linear(T):
    overlap = 4
    video = torch.zeros(1, 3, T, 2, 2)
    recon, info = reconstruct_chunked(_offset_codec(), video, overlap=overlap, blend="linear")
    step = (recon[:, :, 1:] - recon[:, :, :-1]).amax(dim=(0, 1, 3, 4))
    moved = [t + 1 for t in torch.nonzero(step.abs() > 1e-4).flatten().tolist()]
    # the 10-unit offset change is spread evenly over the pairs (b - 1, b) .. (b + overlap - 1, b + overlap)
    assert moved == [b + k for b in info["boundaries"] for k in range(overlap + 1)]
    # float32 lerp of values ~10..100: a few ulps of 100
    assert torch.allclose(step[[t - 1 for t in moved]], torch.full((len(moved),), 10.0 / (overlap + 1)), atol=1e-4)


def test_end_padding_is_invisible_to_a_causal_codec():
    torch.manual_seed(0)
    video = torch.randn(1, 3, 40, 3, 3)

    def causal_mean(x):  # frame t -> mean of frames <= t
        n = torch.arange(1, x.shape[2] + 1, dtype=x.dtype).view(1, 1, -1, 1, 1)
        return x.cumsum(2) / n

    recon, info = reconstruct_chunked(causal_mean, video)
    s, e = info["windows"][-1]
    assert info["pad"] == 17 - (e - s) > 0
    # the last window's real frames come out as if the codec had seen the short window alone
    assert torch.equal(recon[:, :, s + 1 : e], causal_mean(video[:, :, s:e])[:, :, 1:])


def test_codec_shape_is_checked():
    with pytest.raises(ValueError, match="codec_fn returned"):
        reconstruct_chunked(lambda x: x[:, :, :16], torch.zeros(1, 3, 20, 2, 2))


# ---------------------------------------------------------------------------- seams


def _const_video(values, channels=3):
    """(1, 3, T, 1, 1) float64 video whose frame t is values[t] everywhere."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, -1, 1, 1).expand(1, channels, -1, 1, 1).clone()


def test_seam_jump_hand_computed():
    real = _const_video([0.0, 0.1, 0.2, 0.3, 0.4])  # d_real = 0.1 0.1 0.1 0.1
    recon = _const_video([0.0, 0.2, 0.6, 0.8, 1.0])  # d_recon = 0.2 0.4 0.2 0.2
    out = seam_jump(real, recon, boundaries=[2])  # jump = 0.1 0.3 0.1 0.1
    assert out["boundary"] == pytest.approx(0.3, abs=1e-12)
    assert out["within"] == pytest.approx(0.1, abs=1e-12)
    assert out["difference"] == pytest.approx(0.2, abs=1e-12)
    assert out["ratio"] == pytest.approx(3.0, rel=1e-12)
    assert out["num_boundary_pairs"] == 1 and out["num_within_pairs"] == 3


def test_seam_jump_per_clip_and_channels():
    real = torch.cat([_const_video([0.0, 0.1, 0.2, 0.3, 0.4]), _const_video([0.0] * 5)])
    recon = torch.cat([_const_video([0.0, 0.2, 0.6, 0.8, 1.0]), _const_video([0.0] * 5)])
    recon[1, 0, 3:] = 0.6  # clip 2: channel 0 steps by 0.6 between frames 2 and 3 -> mean over 3 channels 0.2
    out = seam_jump(real, recon, boundaries=[2, 3])
    # clip 1: boundary pairs t=2,3 -> jumps 0.3, 0.1 -> 0.2; within t=1,4 -> 0.1, 0.1
    # clip 2: jumps 0, 0.2 at t=2,3 -> 0.1; within 0, 0
    assert out["per_clip"]["boundary"] == pytest.approx([0.2, 0.1], abs=1e-12)
    assert out["per_clip"]["within"] == pytest.approx([0.1, 0.0], abs=1e-12)
    assert out["per_clip"]["difference"] == pytest.approx([0.1, 0.1], abs=1e-12)
    assert out["per_clip"]["ratio"][0] == pytest.approx(2.0) and math.isnan(out["per_clip"]["ratio"][1])
    assert out["boundary"] == pytest.approx(0.15) and out["within"] == pytest.approx(0.05)
    assert out["ratio"] == pytest.approx(3.0)


def test_seam_jump_uint8_layout():
    torch.manual_seed(0)
    real = torch.randint(0, 256, (2, 6, 4, 5, 3), dtype=torch.uint8)
    recon = torch.randint(0, 256, (2, 6, 4, 5, 3), dtype=torch.uint8)
    out = seam_jump(real, recon, [3])
    as_float = lambda u: u.permute(0, 4, 1, 2, 3).double() / 127.5 - 1
    want = seam_jump(as_float(real), as_float(recon), [3])
    assert out["boundary"] == pytest.approx(want["boundary"], abs=1e-12)
    assert out["within"] == pytest.approx(want["within"], abs=1e-12)
    # by hand for clip 0, pair (2, 3): mean over pixels and channels of |x3 - x2| / 127.5
    d = lambda u: (u[0, 3].double() - u[0, 2].double()).abs().mean() / 127.5
    assert out["per_clip"]["boundary"][0] == pytest.approx(float(d(recon) - d(real)), abs=1e-12)
    assert frame_diffs(real).shape == (2, 5)
    with pytest.raises(ValueError):
        seam_jump(real, recon, [6])


def test_chunked_offset_codec_seams():
    video = torch.zeros(1, 3, 128, 2, 2)
    recon, info = reconstruct_chunked(_offset_codec(), video)
    out = seam_jump(video, recon, info["boundaries"])
    assert out["boundary"] == pytest.approx(10.0) and out["within"] == 0.0
    assert out["num_boundary_pairs"] == 7
    # a seamless reconstruction: same jump at and between boundaries
    out = seam_jump(video, video + 1, chunk_boundaries(128))
    assert out["boundary"] == out["within"] == out["difference"] == 0.0
