"""CoordTok model: parameter counts, shapes, bilinear sampling, masking, configs."""

import math

import pytest
import torch

from coordtok import CoordTok, Triplane
from coordtok.attention import attention
from coordtok.config import ConfigError, load_model_config, load_tokenizer_config
from coordtok.model import frame_coords, frames_from_patches, gather_patches, random_coords

REFERENCE_PARAMS = {  # paper Table 5
    "small": 107.75e6,
    "base": 290.66e6,
    "large": 853.41e6,
    "small-3072": 111.44e6,
    "base-3072": 296.19e6,
    "large-3072": 860.77e6,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(name):
    with torch.device("meta"):
        model = CoordTok.from_config(f"configs/tokenizer/{name}.yaml")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / REFERENCE_PARAMS[name] - 1) < 0.01, (name, n)


def tiny_model(**over):
    torch.manual_seed(0)
    cfg = load_model_config("configs/tokenizer/tiny.yaml")
    for k, v in over.items():
        setattr(cfg, k, v)
    return CoordTok(cfg).eval()


@pytest.mark.slow
def test_shapes():
    model = tiny_model()
    video = torch.rand(2, 3, 128, 64, 64) * 2 - 1
    tri = model.encode(video)
    assert tri.xy.shape == (2, 4, 8, 8) and tri.yt.shape == (2, 4, 16, 8) and tri.xt.shape == (2, 4, 16, 8)
    coords = random_coords(torch.tensor([128, 128]), 100, model.patch_grid)
    patches = model.decode(tri, coords)
    assert patches.shape == (2, 100, 3, 1, 8, 8)
    assert model.reconstruct(video[:, :, :16]).shape == (2, 3, 16, 64, 64)
    flat = tri.flatten()
    assert flat.shape == (2, 64 + 128 + 128, 4)
    back = Triplane.unflatten(flat, tri.grid)
    for a, b in zip(back.planes(), tri.planes()):
        assert torch.equal(a, b)


def _hand_bilinear(plane, r, s):
    """plane (C, R, S) sampled at continuous cell position (r, s) by the textbook formula."""
    r0, s0 = int(math.floor(r)), int(math.floor(s))
    r1, s1 = min(r0 + 1, plane.shape[1] - 1), min(s0 + 1, plane.shape[2] - 1)
    fr, fs = r - r0, s - s0
    return (
        (1 - fr) * (1 - fs) * plane[:, r0, s0]
        + (1 - fr) * fs * plane[:, r0, s1]
        + fr * (1 - fs) * plane[:, r1, s0]
        + fr * fs * plane[:, r1, s1]
    )


def test_triplane_sample_grid_points_midpoints_and_hand_formula():
    torch.manual_seed(0)
    c = 3
    # Plane grid 5 (t) x 3 (h) x 4 (w); patch grid 9 x 5 x 7: patch i on n patches sits at
    # i / (n - 1) * (r - 1), so even patch indices land on cells and odd ones on midpoints.
    tri = Triplane(torch.randn(1, c, 3, 4), torch.randn(1, c, 5, 4), torch.randn(1, c, 5, 3))
    grid = (9, 5, 7)
    # grid points
    coords = torch.tensor([[[0, 0, 0], [8, 4, 6], [4, 2, 2]]])
    f = tri.sample(coords, grid)[0]
    assert torch.allclose(f[0], torch.cat([tri.xy[0, :, 0, 0], tri.yt[0, :, 0, 0], tri.xt[0, :, 0, 0]]), atol=1e-6)
    assert torch.allclose(f[1], torch.cat([tri.xy[0, :, 2, 3], tri.yt[0, :, 4, 3], tri.xt[0, :, 4, 2]]), atol=1e-6)
    # midpoint along t (t=1 -> cell 0.5) and h (h=1 -> 0.5): mean of neighbours
    f = tri.sample(torch.tensor([[[1, 1, 0]]]), grid)[0, 0]
    assert torch.allclose(f[:c], (tri.xy[0, :, 0, 0] + tri.xy[0, :, 1, 0]) / 2, atol=1e-6)
    assert torch.allclose(f[c : 2 * c], (tri.yt[0, :, 0, 0] + tri.yt[0, :, 1, 0]) / 2, atol=1e-6)
    assert torch.allclose(f[2 * c :], tri.xt[0, :, 0:2, 0:2].mean(dim=(1, 2)), atol=1e-6)
    # random coordinates against the textbook formula
    coords = torch.stack([torch.randint(9, (50,)), torch.randint(5, (50,)), torch.randint(7, (50,))], -1)[None]
    f = tri.sample(coords, grid)[0]
    for (t, h, w), got in zip(coords[0].tolist(), f):
        pt, ph, pw = t / 8 * 4, h / 4 * 2, w / 6 * 3
        want = torch.cat(
            [_hand_bilinear(tri.xy[0], ph, pw), _hand_bilinear(tri.yt[0], pt, pw), _hand_bilinear(tri.xt[0], pt, ph)]
        )
        assert torch.allclose(got, want, atol=1e-5)


def test_gather_and_frames_from_patches_are_inverse():
    video = torch.randn(2, 3, 4, 16, 24)
    grid = (4, 2, 3)
    coords = frame_coords(torch.tensor([[0, 1, 2, 3]] * 2), grid)
    patches = gather_patches(video, coords, (1, 8))
    assert torch.equal(frames_from_patches(patches, 4, grid), video)
    assert torch.equal(patches[1, 5], video[1, :, 0:1, 8:16, 16:24])  # (t=0, h=1, w=2)


def test_random_coords_distinct_and_within_valid_frames():
    g = torch.Generator().manual_seed(0)
    c = random_coords(torch.tensor([128, 5]), 512, (128, 8, 8), g)
    assert c.shape == (2, 512, 3)
    assert len({tuple(x) for x in c[0].tolist()}) == 512
    # a 5-frame clip has only 320 patches: all of them, the rest drawn again from the same frames
    assert int(c[1, :, 0].max()) < 5 and len({tuple(x) for x in c[1].tolist()}) == 5 * 64


def test_attention_key_mask_equals_dropping_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 7, 2, 8), torch.randn(2, 11, 2, 8), torch.randn(2, 11, 2, 8)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 9:] = False
    out = attention(q, k, v, mask)
    assert torch.allclose(out[0], attention(q[:1], k[:1, :6], v[:1, :6])[0], atol=1e-6)
    assert torch.allclose(out[1], attention(q[1:], k[1:, :9], v[1:, :9])[0], atol=1e-6)


@pytest.mark.slow
def test_short_clip_output_does_not_depend_on_padding():
    model = tiny_model()
    torch.manual_seed(1)
    video = torch.rand(2, 3, 128, 64, 64) * 2 - 1
    nf = torch.tensor([37, 128])
    other = video.clone()
    other[0, :, 37:] = torch.randn_like(other[0, :, 37:]) * 5  # wild padding content
    other[0, :, 40:50] = float("nan")
    a, b = model.encode(video, nf), model.encode(other, nf)
    for pa, pb in zip(a.planes(), b.planes()):
        assert torch.equal(pa, pb)
    ra, rb = model.reconstruct(video, nf), model.reconstruct(other, nf)
    assert torch.equal(ra, rb)
    assert torch.count_nonzero(ra[0, :, 37:]) == 0  # padded frames come back as zeros
    # Control: without num_frames the padding is content and the result does change.
    assert not torch.allclose(model.encode(video[:, :, :]).xy, model.encode(torch.nan_to_num(other)).xy)
    # A clip given as a shorter tensor is the same as a padded tensor with num_frames.
    short = model.encode(video[:1, :, :37])
    assert torch.allclose(short.xy, a.xy[:1], atol=1e-6)


def test_decode_key_mask_ignores_padded_coordinates():
    model = tiny_model()
    tri = model.encode(torch.rand(1, 3, 128, 64, 64) * 2 - 1)
    coords = random_coords(torch.tensor([128]), 40, model.patch_grid)
    junk = random_coords(torch.tensor([128]), 10, model.patch_grid, torch.Generator().manual_seed(5))
    mask = torch.tensor([[True] * 40 + [False] * 10])
    full = model.decode(tri, torch.cat([coords, junk], 1), mask)
    assert torch.allclose(full[:, :40], model.decode(tri, coords), atol=1e-5)


@pytest.mark.slow
def test_chunked_reconstruction_decodes_each_chunk_on_its_own():
    """frames_per_chunk=16: frames 16k..16k+15 are the decoding of exactly that chunk's coordinates
    (they attend only to each other); a chunk covering the clip is the full decoding."""
    model = tiny_model()
    video = torch.rand(1, 3, 128, 64, 64) * 2 - 1
    full = model.reconstruct(video)
    assert torch.allclose(model.reconstruct(video, frames_per_chunk=128), full)
    chunked = model.reconstruct(video, frames_per_chunk=16)
    with torch.no_grad():
        tri = model.encode(video)
        for k in (0, 3, 7):
            frames = torch.arange(16 * k, 16 * (k + 1))[None]
            alone = frames_from_patches(model.decode(tri, frame_coords(frames, model.patch_grid)), 16, model.patch_grid)
            # The same function of the same inputs, batched differently (GEMM blocking may sum in
            # another order): float32 dot products of length <= 256 differ by ~sqrt(256) * 6e-8 of
            # values ~1, a few 1e-6 after the decoder's few layers; 1e-5 bounds that on any CPU.
            assert torch.allclose(chunked[:, :, 16 * k : 16 * (k + 1)], alone, atol=1e-5), k
    # Attention across chunks does change the output: by O(0.1) on random weights, far above rounding.
    assert not torch.allclose(chunked, full, atol=1e-3)


def test_decode_rejects_coordinates_off_the_grid():
    model = tiny_model()
    tri = model.encode(torch.zeros(1, 3, 128, 64, 64))
    with pytest.raises(ValueError, match="outside the patch grid"):
        model.decode(tri, torch.tensor([[[128, 0, 0]]]))


@pytest.mark.parametrize(
    "override, key",
    [
        ({"model": {"enc_dimm": 3}}, "enc_dimm"),
        ({"model": {"enc_dim": "big"}}, "enc_dim"),
        ({"model": {"size": 60}}, "size"),
        ({"train": {"num_coords": 10**6}}, "num_coords"),
        ({"train": {"mixed_precision": "fp8"}}, "mixed_precision"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as info:
        load_tokenizer_config("configs/tokenizer/tiny.yaml", override)
    assert "\n" not in str(info.value)
    assert "tiny.yaml" in str(info.value) or "--set" in str(info.value)


@pytest.mark.slow
def test_full_clip_decoding_never_holds_the_attention_matrix():
    """8192 coordinates x 4 heads: an N x N score matrix alone would be 1.07 GB; we stay far below."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, torch
        from coordtok import CoordTok
        torch.manual_seed(0)
        m = CoordTok.from_config("configs/tokenizer/tiny.yaml").eval()
        tri = m.encode(torch.rand(1, 3, 128, 64, 64) * 2 - 1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = m.decode_video(tri)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert out.shape == (1, 3, 128, 64, 64)
        print((after - before) / 1e6)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grew_gb = float(res.stdout.strip().splitlines()[-1])
    assert grew_gb < 0.35, grew_gb
