"""Causal 3D building blocks shared by the conv-3D baseline tokenizers (MAGVIT-v2, ProMAG, REGEN).

Every block maps ``(B, C, T, H, W)`` videos to videos and is *causal in time*: output frame ``t``
depends only on input frames ``<= t``. That is what lets a causal tokenizer encode the first frame
of a clip on its own (like an image) and what makes the latent of an early frame independent of
later frames. The layout follows the MAGVIT-v2 paper (Yu et al., "Language Model Beats Diffusion --
Tokenizer is Key to Visual Generation", ICLR 2024, supplement A.2) as read in the public
reimplementation github.com/cofe-ai/O2-MAGVIT2 (``modeling/magvit2.py``, Apache-2.0).

Time layout of a causal clip: ``T = 1 + s * k`` frames. Frame 0 stands alone; the other frames come
in groups of ``s``. A temporal stride ``s = 2`` maps ``1 + 2k`` frames to ``1 + k`` (17 -> 9 -> 5),
and the depth-to-space upsampler inverts that (5 -> 9 -> 17).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from coordtok.activation_checkpointing import CheckpointedBlock

__all__ = [
    "norm_groups",
    "CausalConv3d",
    "CausalDownsample",
    "FrameGroupNorm",
    "ResBlock3d",
    "AdaptiveGroupNorm",
    "DepthToSpaceUpsample",
    "depth_to_space",
    "causal_resize",
    "inflate_image_kernel",
]


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    if len(v) != 3:
        raise ValueError(f"expected an int or a (t, h, w) triple, got {v!r}")
    return tuple(int(x) for x in v)  # type: ignore[return-value]


def norm_groups(channels: int, groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: ``gcd(groups, channels)``.

    The paper uses 32 groups, and every width of the paper config is a multiple of 32, so this is
    32 there. Narrow CPU configs (16 or 24 channels) cannot split into 32 groups; the greatest
    common divisor is the largest group count <= ``groups`` that divides the width, so a 16-channel
    layer gets 16 groups and a 24-channel one 8.
    """
    return math.gcd(groups, channels)


class CausalConv3d(nn.Module):
    """3D convolution that never looks at future frames.

    ``(B, C_in, T, H, W) -> (B, C_out, T', H', W')`` with ``T' = (T - 1) // st + 1`` and
    ``H' = (H - 1) // sh + 1`` (odd spatial kernels, 'same' padding).

    Time is padded with ``kt - 1`` frames of **zeros** in front and none behind (the
    reimplementation pads with constant zeros; replicate padding would make the first frame look
    like a still scene, zeros make "no past" explicit). Output frame ``t`` therefore sees input
    frames ``t * st - (kt - 1) ... t * st``. With ``kt = 3, st = 2`` output frame 0 sees only input
    frame 0 (the first frame is encoded on its own) and output frame ``j >= 1`` sees input frames
    ``2j - 2 .. 2j``: 17 frames -> 9 -> 5. Spatial padding is zeros, ``k // 2`` on each side.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ):
        super().__init__()
        kt, kh, kw = _triple(kernel)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel must be odd for 'same' padding, got {(kh, kw)}")
        self.kernel = (kt, kh, kw)
        self.stride = _triple(stride)
        # F.pad order: (w_left, w_right, h_top, h_bottom, t_front, t_back)
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)
        self.conv = nn.Conv3d(in_ch, out_ch, (kt, kh, kw), stride=self.stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class CausalDownsample(CausalConv3d):
    """Strided causal 3x3x3 conv: ``(B, C_in, 1 + 2k, H, W) -> (B, C_out, 1 + k, H/2, W/2)``
    when ``time`` is set, ``(B, C_in, T, H, W) -> (B, C_out, T, H/2, W/2)`` otherwise. With bias."""

    def __init__(self, in_ch: int, out_ch: int, time: bool):
        super().__init__(in_ch, out_ch, 3, stride=(2 if time else 1, 2, 2), bias=True)
        self.time = time


class FrameGroupNorm(nn.Module):
    """GroupNorm computed for every frame on its own: ``(B, C, T, H, W) -> (B, C, T, H, W)``.

    Time is folded into the batch (``b c t h w -> (b t) c h w``), so the statistics of frame ``t``
    come from frame ``t`` only and the layer is causal. ``pool_time=True`` pools the statistics
    over all frames instead (a plain ``nn.GroupNorm`` on the 5D tensor); that breaks causality (a
    change in the last frame moves every frame's output) and exists only so a test can show it.
    Parameter names (``norm.weight``, ``norm.bias``) are the same in both modes.
    """

    def __init__(self, num_groups: int, channels: int, affine: bool = True, eps: float = 1e-5, pool_time: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=affine)
        self.pool_time = pool_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_time:
            return self.norm(x)
        t = x.shape[2]
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class ResBlock3d(CheckpointedBlock):
    """Pre-activation residual block: ``(B, C_in, T, H, W) -> (B, C_out, T, H, W)`` (checkpointable:
    MAGVIT-v2, ProMAG and REGEN's encoder).

    GroupNorm -> SiLU -> causal 3x3x3 conv (no bias) -> GroupNorm -> SiLU -> causal 3x3x3 conv (no
    bias), plus the input; a bias-free 1x1x1 conv maps the shortcut when the widths differ. The
    norms are per frame with ``norm_groups(C, groups)`` groups (32 at paper widths).
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int = 32):
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_groups(in_ch, groups), in_ch)
        self.conv1 = CausalConv3d(in_ch, out_ch, 3, bias=False)
        self.norm2 = FrameGroupNorm(norm_groups(out_ch, groups), out_ch)
        self.conv2 = CausalConv3d(out_ch, out_ch, 3, bias=False)
        self.shortcut = CausalConv3d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


def causal_resize(z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Nearest resize of a causal latent ``(B, C, t, h, w)`` to ``size = (T, H, W)``.

    Space is plain nearest (``F.interpolate``: source ``floor(i * h / H)``). Time respects the
    causal layout: frame 0 maps to latent frame 0 and frame ``i >= 1`` to latent frame
    ``ceil(i * (t - 1) / (T - 1))``, so with ``T - 1 = s (t - 1)`` latent frame ``j >= 1`` covers
    frames ``s (j - 1) + 1 .. s j`` -- exactly the frames it was encoded from. This equals what the
    reimplementation gets by resizing to the pre-trim length and dropping the first ``s - 1``
    frames after every depth-to-space step, and no frame looks at a later latent.
    """
    t, h, w = z.shape[2:]
    T, H, W = size
    if (h, w) != (H, W):
        z = rearrange(
            F.interpolate(rearrange(z, "b c t h w -> (b t) c h w"), size=(H, W), mode="nearest"),
            "(b t) c h w -> b c t h w",
            t=t,
        )
    if t != T:
        if t == 1 or T == 1:
            idx = torch.zeros(T, dtype=torch.long, device=z.device)
        else:
            i = torch.arange(T, device=z.device)
            idx = torch.div(i * (t - 1) + (T - 2), T - 1, rounding_mode="floor")  # ceil(i (t-1) / (T-1))
        z = z.index_select(2, idx)
    return z


class AdaptiveGroupNorm(nn.Module):
    """Per-frame GroupNorm (no affine) modulated by the quantized latent.

    ``x (B, C, T, H, W)``, ``cond (B, C_cond, t, h, w)`` -> ``(B, C, T, H, W)``:
    ``norm(x) * (1 + gamma(cond')) + beta(cond')`` where ``cond'`` is ``cond`` resized to the
    feature's ``(T, H, W)`` by :func:`causal_resize`, and ``gamma``/``beta`` are two
    ``Linear(C_cond, C)`` with bias applied at every position (a 1x1x1 conv). The ``1 +`` makes a
    zero modulation the identity.
    """

    def __init__(self, channels: int, cond_channels: int, groups: int = 32):
        super().__init__()
        self.norm = FrameGroupNorm(norm_groups(channels, groups), channels, affine=False)
        self.gamma = nn.Linear(cond_channels, channels)
        self.beta = nn.Linear(cond_channels, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = causal_resize(cond, tuple(x.shape[2:]))
        cond = rearrange(cond, "b c t h w -> b t h w c")
        gamma = rearrange(self.gamma(cond), "b t h w c -> b c t h w")
        beta = rearrange(self.beta(cond), "b t h w c -> b c t h w")
        return self.norm(x) * (1 + gamma) + beta


def depth_to_space(x: torch.Tensor, t_up: int, s: int = 2) -> torch.Tensor:
    """``(B, t_up * s * s * C, T, H, W) -> (B, C, T * t_up, H * s, W * s)``.

    Channel ``((dt * s + dh) * s + dw) * C + c`` goes to sub-position ``(dt, dh, dw)`` of channel
    ``c`` (the reimplementation's channels-last order, so its weights would load unchanged).
    """
    return rearrange(x, "b (dt dh dw c) t h w -> b c (t dt) (h dh) (w dw)", dt=t_up, dh=s, dw=s)


class DepthToSpaceUpsample(nn.Module):
    """Causal learned upsampler: ``(B, C, 1 + k, H, W) -> (B, C, 1 + t_up * k, 2H, 2W)``.

    A causal 3x3x3 conv (with bias) to ``t_up * 4 * C`` channels, :func:`depth_to_space`, then the
    first ``t_up - 1`` frames are dropped: latent frame 0 (the lone first frame) yields one frame
    and every later latent frame yields ``t_up`` frames (5 -> 9 -> 17 with ``t_up = 2``). Output
    frame ``i`` is cut from conv output frame ``ceil(i / t_up)``, which sees input frames up to
    ``ceil(i / t_up)`` only, so causality is kept.
    """

    def __init__(self, channels: int, t_up: int, s: int = 2):
        super().__init__()
        self.t_up, self.s = t_up, s
        self.conv = CausalConv3d(channels, channels * t_up * s * s, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = depth_to_space(self.conv(x), self.t_up, self.s)
        return x[:, :, self.t_up - 1 :]


@torch.no_grad()
def inflate_image_kernel(w2d: torch.Tensor, kt: int) -> torch.Tensor:
    """Inflate a 2D conv kernel ``(C_out, C_in, kh, kw)`` to 3D ``(C_out, C_in, kt, kh, kw)``.

    The 2D kernel goes in the **last** temporal slice and the other ``kt - 1`` slices are zero
    (the MAGVIT-v2 recipe for initialising a video tokenizer from an image one). With the causal
    front padding the last slice is the one that multiplies the current frame, so an inflated
    causal conv applies the image conv to every frame independently.
    """
    if w2d.ndim != 4:
        raise ValueError(f"expected a 2D kernel (C_out, C_in, kh, kw), got shape {tuple(w2d.shape)}")
    w3d = w2d.new_zeros(w2d.shape[0], w2d.shape[1], kt, *w2d.shape[2:])
    w3d[:, :, -1] = w2d
    return w3d


# ---------------------------------------------------------------------------- parameter counts
# What the blocks above hold, as formulas: the analytic counts of whole layouts (MAGVIT-v2,
# ProMAG, REGEN's encoder) are sums of these, checked against the modules in the tests.


def conv_params(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    """A ``k x k x k`` 3D convolution (:class:`CausalConv3d`)."""
    return cin * cout * k**3 + (cout if bias else 0)


def norm_params(c: int) -> int:
    """A GroupNorm with affine weight and bias (:class:`FrameGroupNorm`)."""
    return 2 * c


def res_block_params(cin: int, cout: int) -> int:
    """:class:`ResBlock3d`: two norms, two bias-free 3x3x3 convolutions, a 1x1x1 shortcut when the width changes."""
    return (
        norm_params(cin)
        + conv_params(cin, cout, bias=False)
        + norm_params(cout)
        + conv_params(cout, cout, bias=False)
        + (conv_params(cin, cout, 1, bias=False) if cin != cout else 0)
    )
