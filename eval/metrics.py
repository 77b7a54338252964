"""Frame-level reconstruction metrics for videos: PSNR, SSIM and LPIPS.

Protocol (CoordTok paper, section 4.1; README "Evaluation"): each metric is computed per frame, averaged over the
frames of a clip, then (by the caller) over clips. :func:`video_metrics` returns the per-clip
values ``(B,)`` so the caller can average over a whole dataset or report spreads.

Everything runs in float32 without autograd, whatever autocast region the caller is in.
"""

from __future__ import annotations

import contextlib

import torch
from einops import rearrange
from pytorch_msssim import ssim as _msssim_ssim

# PSNR of identical images is +inf; we cap it here (MSE floored at 1e-10) so per-clip and
# dataset averages stay finite. Real reconstructions are far below (the paper reports ~28 dB).
PSNR_MAX_DB = 100.0
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5


def to_unit(video: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (decoder outputs can overshoot)."""
    return ((video + 1) / 2).clamp(0, 1)


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(1 / mse)``, per image.

    ``x, y: (N, 3, H, W)`` in [0, 1] -> ``(N,)`` float32; identical images give
    ``PSNR_MAX_DB`` (100 dB) instead of +inf.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"psnr expects two (N, C, H, W) images of equal shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(10 ** (-PSNR_MAX_DB / 10)))


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, valid convolution), mean over pixels and channels, per image.

    ``x, y: (N, 3, H, W)`` in [0, 1], H, W >= 11 -> ``(N,)`` float32 in [-1, 1] (1 = identical).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) images of equal shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WIN_SIZE:
        # pytorch_msssim would only warn and skip the blur along that axis: a different metric.
        raise ValueError(f"ssim needs frames of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} pixels, got {tuple(x.shape)}")
    return _msssim_ssim(
        x.float(), y.float(), data_range=1.0, size_average=False, win_size=SSIM_WIN_SIZE, win_sigma=SSIM_WIN_SIGMA
    )


@torch.no_grad()
def video_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    lpips: torch.nn.Module | None = None,
    num_frames: torch.Tensor | None = None,
    chunk: int = 32,
) -> dict[str, torch.Tensor]:
    """Per-frame PSNR / SSIM (/ LPIPS) averaged over the frames of each clip.

    Args:
        real, fake: ``(B, 3, T, H, W)`` in [-1, 1] (clamped to it first).
        lpips: an :class:`coordtok.lpips.LPIPS`; adds ``"lpips"`` when given. Frames are moved
            to its device, so videos may stay on the CPU while LPIPS runs on a GPU.
        num_frames: optional ``(B,)`` ints in [1, T]: only the first ``num_frames[b]`` frames of
            clip ``b`` count (short clips padded to T).
        chunk: frames per metric call; bounds memory for long clips (LPIPS on 128 frames of
            128x128 at once would hold ~2 GB of VGG activations).

    Returns:
        ``{"psnr": (B,), "ssim": (B,)[, "lpips": (B,)]}`` float32 on ``real``'s device.
    """
    if real.shape != fake.shape or real.ndim != 5 or real.shape[1] != 3:
        raise ValueError(
            f"video_metrics expects two (B, 3, T, H, W) videos of equal shape, "
            f"got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    b, _, t, _, _ = real.shape
    if num_frames is None:
        num_frames = torch.full((b,), t)
    num_frames = torch.as_tensor(num_frames).cpu().long()
    if num_frames.shape != (b,) or num_frames.min() < 1 or num_frames.max() > t:
        raise ValueError(f"num_frames must be (B,) = ({b},) ints in [1, {t}], got {num_frames.tolist()}")
    lpips_device = next(lpips.parameters()).device if lpips is not None else None

    names = ["psnr", "ssim"] + (["lpips"] if lpips is not None else [])
    out = {name: torch.zeros(b, dtype=torch.float32) for name in names}
    with contextlib.ExitStack() as stack:
        # Metrics are fp32 whatever autocast region the caller (e.g. a training loop) is in.
        device_types = {real.device.type, fake.device.type} | ({lpips_device.type} if lpips is not None else set())
        for device_type in device_types:
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        for i in range(b):
            n = int(num_frames[i])
            sums = dict.fromkeys(names, 0.0)
            for t0 in range(0, n, chunk):
                # Only the valid frames of this chunk: padded frames are never even computed.
                r = rearrange(real[i, :, t0 : min(t0 + chunk, n)].float().clamp(-1, 1), "c t h w -> t c h w")
                f = rearrange(fake[i, :, t0 : min(t0 + chunk, n)].float().clamp(-1, 1), "c t h w -> t c h w")
                r01, f01 = to_unit(r), to_unit(f)
                sums["psnr"] += psnr(r01, f01).sum().item()
                sums["ssim"] += ssim(r01, f01).sum().item()
                if lpips is not None:
                    sums["lpips"] += lpips(r.to(lpips_device), f.to(lpips_device)).float().sum().item()
            for name in names:
                out[name][i] = sums[name] / n
    return {name: value.to(real.device) for name, value in out.items()}
