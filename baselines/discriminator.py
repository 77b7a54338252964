"""The MAGVIT-v2 discriminator: a 3D StyleGAN-style residual network with blur pooling.

MAGVIT-v2 (Yu et al., ICLR 2024, supplement A.2) inherits it from MAGVIT; the layout follows the
public reimplementation github.com/cofe-ai/O2-MAGVIT2 (``modeling/discriminator.py``,
Apache-2.0): no normalization anywhere, LeakyReLU(0.2), ``[1, 2, 1]^3`` blur pooling with stride 2
in time and space, a dense head on the flattened final features.

``(B, 3, T, H, W)`` in [-1, 1] -> logits ``(B,)``::

    conv 3x3x3  3 -> F, LeakyReLU                      (F = base channels, 128)
    per block i (F * mult, mult = 2, 4, 4, 4, 4):
        x:        conv 3x3x3 C_in -> C_in, LeakyReLU, blur-pool /2, conv 3x3x3 C_in -> C_out, LeakyReLU
        shortcut: blur-pool /2, conv 1x1x1 C_in -> C_out (no bias)
        out = (x + shortcut) / sqrt(2)
    conv 3x3x3 C -> C, LeakyReLU, flatten, Linear(C t h w -> C), LeakyReLU, Linear(C -> 1)

17 x 128 x 128 input: the blocks take it to 1 x 4 x 4, and the model has 61,341,569 parameters
(:func:`discriminator_param_count`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BlurPool3d",
    "DiscriminatorBlock",
    "StyleGANDiscriminator3D",
    "discriminator_shapes",
    "discriminator_param_count",
    "build_discriminator",
]


def discriminator_shapes(frames: int, size: int, blocks: int) -> list[tuple[int, int, int]]:
    """``(T, H, W)`` before the first block and after each of ``blocks`` blur pools.

    A blur pool maps ``n -> (n - 1) // 2 + 1``; its reflect padding needs ``n >= 2`` on every axis
    it pools, so an input too small for the number of blocks raises ``ValueError``.
    """
    shapes = [(frames, size, size)]
    for i in range(blocks):
        t, h, w = shapes[-1]
        if min(t, h, w) < 2:
            raise ValueError(
                f"discriminator: a {frames} x {size} x {size} clip is down to {t} x {h} x {w} before "
                f"block {i} of {blocks}; use fewer 'disc_channel_multipliers'"
            )
        shapes.append(tuple((n - 1) // 2 + 1 for n in (t, h, w)))
    return shapes


class BlurPool3d(nn.Module):
    """Anti-aliased stride-2 downsampling: ``(B, C, T, H, W) -> (B, C, (T-1)//2+1, (H-1)//2+1, (W-1)//2+1)``.

    Depthwise ``[1, 2, 1] x [1, 2, 1] x [1, 2, 1] / 64`` filter after reflect padding of 1. The
    filter is a constant (a non-persistent buffer, not a parameter).
    """

    def __init__(self):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = a[:, None, None] * a[None, :, None] * a[None, None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1, 1, 1), mode="reflect")
        return F.conv3d(x, self.kernel.to(x.dtype).expand(c, 1, 3, 3, 3), stride=2, groups=c)


class DiscriminatorBlock(nn.Module):
    """Residual down block: ``(B, C_in, T, H, W) -> (B, C_out, T/2, H/2, W/2)`` (rounded up)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1, bias=False)
        self.blur = BlurPool3d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(self.blur(h)), 0.2)
        # dividing by sqrt(2) keeps the variance of the sum of two unit-variance branches at one
        return (h + self.skip(self.blur(x))) / math.sqrt(2)


class StyleGANDiscriminator3D(nn.Module):
    """3D StyleGAN discriminator for ``frames x size x size`` clips; ``forward`` returns ``(B,)`` logits.

    The dense head's input width depends on the clip size, so the model is built for one size.
    Weights are Xavier-uniform with the ReLU gain and zero biases (the reimplementation's init).
    """

    def __init__(
        self,
        frames: int = 17,
        size: int = 128,
        base_channels: int = 128,
        channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4),
        in_channels: int = 3,
    ):
        super().__init__()
        shapes = discriminator_shapes(frames, size, len(channel_multipliers))
        self.frames, self.size = frames, size
        widths = [base_channels] + [base_channels * m for m in channel_multipliers]
        self.conv_in = nn.Conv3d(in_channels, base_channels, 3, padding=1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(cin, cout) for cin, cout in zip(widths[:-1], widths[1:])])
        c = widths[-1]
        t, h, w = shapes[-1]
        self.conv_out = nn.Conv3d(c, c, 3, padding=1)
        self.fc = nn.Linear(c * t * h * w, c)
        self.head = nn.Linear(c, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (self.frames, self.size, self.size):
            raise ValueError(
                f"discriminator built for {self.frames} x {self.size} x {self.size} clips, got {tuple(x.shape[2:])}"
            )
        x = F.leaky_relu(self.conv_in(x), 0.2)
        x = self.blocks(x)
        x = F.leaky_relu(self.conv_out(x), 0.2)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        return self.head(x).squeeze(1)


def discriminator_param_count(
    frames: int = 17,
    size: int = 128,
    base_channels: int = 128,
    channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4),
    in_channels: int = 3,
) -> int:
    """Parameters of :class:`StyleGANDiscriminator3D` from the layout formulas (no modules built)."""

    def conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
        return cin * cout * k**3 + (cout if bias else 0)

    widths = [base_channels] + [base_channels * m for m in channel_multipliers]
    n = conv(in_channels, base_channels)
    for cin, cout in zip(widths[:-1], widths[1:]):
        n += conv(cin, cin) + conv(cin, cout) + conv(cin, cout, 1, bias=False)
    c = widths[-1]
    t, h, w = discriminator_shapes(frames, size, len(channel_multipliers))[-1]
    n += conv(c, c) + (c * t * h * w * c + c) + (c + 1)
    return n


def build_discriminator(cfg) -> StyleGANDiscriminator3D:
    """The discriminator for a :class:`~baselines.magvit2.MagvitV2Config`."""
    return StyleGANDiscriminator3D(cfg.frames, cfg.size, cfg.disc_base_channels, tuple(cfg.disc_channel_multipliers))
