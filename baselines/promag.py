"""ProMAG: a causal conv-3D video tokenizer with a KL latent, grown in temporal compression.

Mahapatra et al., "Progressive Growing of Video Tokenizers for Temporally Compact Latent Spaces",
2025 (supplement Table 4). MAGVIT-v2-style causal blocks (:mod:`baselines.causal`), a continuous KL
bottleneck, trained at 4x temporal compression and grown to 8x and 16x: each stage keeps the
previous stage's weights (most of them frozen), appends an encoder level (width 768, time-only
down) and prepends a decoder level (width 768, time-only up). Level ``i`` has width
``128 * mult[i]``; S / T: whether the level ends with a 2x step in space / time::

          encoder mults (2 res blocks)  down S / T   decoder mults (3 res blocks)  up S / T    latent
    4x    1,2,4,6                       TTTF / FFTT  6,4,2,1                       TTTF / FTTF  5 x 32 x 32
    8x    1,2,4,6,6                     TTTFF/FFTTT  6,6,4,2,1                     FTTTF/TFTTF  3 x 32 x 32
    16x   1,2,4,6,6,6                   TTTFFF/FFTTTT 6,6,6,4,2,1                  FFTTTF/TTFTTF 2 x 32 x 32

The layer-by-layer layout and which choices are ours: README.md, "The baselines as this project
reads their papers". Parameters 655,229,459 (8x) / 846,349,331 (16x) at z_dim 8
(:func:`analytic_param_count`).

Growing (:func:`grow`; our reading of the cross-level mixing, whose equations are not published)::

    feat_0(V) = trunk(V, base levels)
    feat_s(V) = mix_s( feat_{s-1}(V[:, :, ::2]),  trunk(V, base + s levels) )
    mix(h, c) = h * (1 + gamma) + beta,     (gamma, beta) = conv1x1(SiLU(GroupNorm(c)))   (conv zero-initialised)

so a freshly grown model computes its parent's latent of ``V[:, :, ::2]`` exactly; the parent's
decoder path decodes the latent to that subsampled video, ``aux["recon_sub"]``.

Long videos (:meth:`ProMAG.reconstruct_long`): 17-frame chunks overlapping by 4 frames, blended in
pixel space with linear weights (:func:`coordtok.chunking.reconstruct_chunked`). Discriminator
(:class:`PatchGAN3D`): the SD-VAE PatchGAN in 3D (3 layers, kernel 3 x 4 x 4, 64 channels), hinge
losses (:func:`hinge_d_loss`, :func:`hinge_g_loss`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from coordtok.chunking import CausalChunkGeometry, chunk_windows, reconstruct_chunked
from coordtok.config import ConfigError, from_dict, load_yaml, positive, require

from .causal import (
    CausalConv3d,
    FrameGroupNorm,
    ResBlock3d,
    causal_resize,
    conv_params,
    norm_groups,
    norm_params,
    res_block_params,
)

__all__ = [
    "ProMAGConfig",
    "table4_config",
    "load_promag_config",
    "StridedCausalConv",
    "CausalUpsample",
    "CausalEncoder",
    "ProMAGDecoder",
    "CrossLevelMix",
    "Posterior",
    "ProMAG",
    "grow",
    "PatchGAN3D",
    "hinge_d_loss",
    "hinge_g_loss",
    "analytic_param_count",
    "causal_encoder_param_count",
    "discriminator_param_count",
]

_T, _F = True, False

# Table 4 of the supplement, per temporal compression: encoder (multipliers, spatial down,
# temporal down) and decoder (multipliers, spatial up, temporal up), decoder lists in the order the
# decoder runs (latent side first).
TABLE4 = {
    4: dict(
        enc_multipliers=(1, 2, 4, 6),
        enc_spatial_down=(_T, _T, _T, _F),
        enc_temporal_down=(_F, _F, _T, _T),
        dec_multipliers=(6, 4, 2, 1),
        dec_spatial_up=(_T, _T, _T, _F),
        dec_temporal_up=(_F, _T, _T, _F),
    ),
    8: dict(
        enc_multipliers=(1, 2, 4, 6, 6),
        enc_spatial_down=(_T, _T, _T, _F, _F),
        enc_temporal_down=(_F, _F, _T, _T, _T),
        dec_multipliers=(6, 6, 4, 2, 1),
        dec_spatial_up=(_F, _T, _T, _T, _F),
        dec_temporal_up=(_T, _F, _T, _T, _F),
    ),
    16: dict(
        enc_multipliers=(1, 2, 4, 6, 6, 6),
        enc_spatial_down=(_T, _T, _T, _F, _F, _F),
        enc_temporal_down=(_F, _F, _T, _T, _T, _T),
        dec_multipliers=(6, 6, 6, 4, 2, 1),
        dec_spatial_up=(_F, _F, _T, _T, _T, _F),
        dec_temporal_up=(_T, _T, _F, _T, _T, _F),
    ),
}


@dataclass
class ProMAGConfig:
    """ProMAG architecture (the ``model:`` section of ``configs/baselines/promag*.yaml``).

    Defaults are Table 4's 4x model for 17 x 256 x 256 clips; :func:`table4_config` gives the 8x and
    16x ones. Encoder lists run from the input; decoder lists in Table 4's order, from the latent.
    """

    frames: int = 17  # chunk length the tokenizer is trained on: 1 + time_factor * k
    size: int = 256  # H = W of the training clips
    base_channels: int = 128
    enc_multipliers: tuple[int, ...] = TABLE4[4]["enc_multipliers"]
    enc_spatial_down: tuple[bool, ...] = TABLE4[4]["enc_spatial_down"]
    enc_temporal_down: tuple[bool, ...] = TABLE4[4]["enc_temporal_down"]
    enc_blocks: int = 2  # res blocks per encoder level, and in the encoder middle
    dec_multipliers: tuple[int, ...] = TABLE4[4]["dec_multipliers"]
    dec_spatial_up: tuple[bool, ...] = TABLE4[4]["dec_spatial_up"]
    dec_temporal_up: tuple[bool, ...] = TABLE4[4]["dec_temporal_up"]
    dec_blocks: int = 3  # res blocks per decoder level, and in the decoder middle
    z_channels: int = 256  # width before the KL head
    z_dim: int = 8  # latent channels (the paper trains 8 and 16)
    # levels added by growing: the last ``grown_levels`` encoder levels and the first
    # ``grown_levels`` decoder levels, each with a cross-level mixing module. 0: trained from scratch.
    grown_levels: int = 0
    norm_groups: int = 32  # GroupNorm groups (gcd with the width for narrow CPU configs)
    disc_channels: int = 64  # PatchGAN3D base width
    disc_layers: int = 3  # PatchGAN3D strided layers

    def validate(self) -> None:
        positive(
            self,
            "frames",
            "size",
            "base_channels",
            "enc_blocks",
            "dec_blocks",
            "z_channels",
            "z_dim",
            "norm_groups",
            "disc_channels",
            "disc_layers",
        )
        ne, nd = len(self.enc_multipliers), len(self.dec_multipliers)
        require(ne >= 1 and nd >= 1, "'enc_multipliers' and 'dec_multipliers' must not be empty")
        require(all(m > 0 for m in self.enc_multipliers + self.dec_multipliers), "channel multipliers must be positive")
        for name in ("enc_spatial_down", "enc_temporal_down"):
            require(
                len(getattr(self, name)) == ne,
                f"'{name}' needs one flag per encoder level ({ne}), got {len(getattr(self, name))}",
            )
        for name in ("dec_spatial_up", "dec_temporal_up"):
            require(
                len(getattr(self, name)) == nd,
                f"'{name}' needs one flag per decoder level ({nd}), got {len(getattr(self, name))}",
            )
        require(
            sum(self.enc_spatial_down) == sum(self.dec_spatial_up),
            f"the encoder halves space {sum(self.enc_spatial_down)} times but the decoder doubles it "
            f"{sum(self.dec_spatial_up)} times",
        )
        require(
            sum(self.enc_temporal_down) == sum(self.dec_temporal_up),
            f"the encoder halves time {sum(self.enc_temporal_down)} times but the decoder doubles it "
            f"{sum(self.dec_temporal_up)} times",
        )
        require(
            (self.frames - 1) % self.time_factor == 0,
            f"'frames' ({self.frames}) must be 1 + a multiple of the temporal factor {self.time_factor}",
        )
        require(
            self.size % self.space_factor == 0,
            f"'size' ({self.size}) is not divisible by the spatial factor {self.space_factor}",
        )
        g = self.grown_levels
        require(0 <= g < min(ne, nd), f"'grown_levels' must be in [0, {min(ne, nd) - 1}], got {g}")
        for j in range(ne - g, ne):
            require(
                not self.enc_spatial_down[j] and self.enc_temporal_down[j],
                f"grown encoder level {j} must halve time only (spatial F, temporal T)",
            )
            require(
                self.enc_multipliers[j] == self.enc_multipliers[j - 1],
                f"grown encoder level {j} must keep the width of level {j - 1}",
            )
        for i in range(g):
            require(
                not self.dec_spatial_up[i] and self.dec_temporal_up[i],
                f"grown decoder level {i} must double time only (spatial F, temporal T)",
            )
            require(
                self.dec_multipliers[i] == self.dec_multipliers[i + 1],
                f"grown decoder level {i} must keep the width of level {i + 1}",
            )
        # the discriminator's input must survive its strided layers (kernel 4, padding 1: each
        # n -> (n - 2) // 2 + 1 in space) and the two stride-1 layers after them (each n -> n - 1)
        s = self.size
        for _ in range(self.disc_layers):
            s = (s - 2) // 2 + 1
        require(s >= 3, f"a {self.size}^2 clip is too small for a {self.disc_layers}-layer PatchGAN3D")

    @property
    def time_factor(self) -> int:
        """Temporal compression: ``1 + k * time_factor`` frames -> ``1 + k`` latent frames."""
        return 2 ** sum(self.enc_temporal_down)

    @property
    def space_factor(self) -> int:
        """Spatial compression per side (8 in Table 4)."""
        return 2 ** sum(self.enc_spatial_down)

    def parent(self) -> "ProMAGConfig":
        """The config this one was grown from: the last encoder level and the first decoder level
        (and their mixing module) removed."""
        if self.grown_levels < 1:
            raise ConfigError("a config with grown_levels = 0 was not grown from another")
        return dataclasses.replace(
            self,
            enc_multipliers=self.enc_multipliers[:-1],
            enc_spatial_down=self.enc_spatial_down[:-1],
            enc_temporal_down=self.enc_temporal_down[:-1],
            dec_multipliers=self.dec_multipliers[1:],
            dec_spatial_up=self.dec_spatial_up[1:],
            dec_temporal_up=self.dec_temporal_up[1:],
            grown_levels=self.grown_levels - 1,
        )

    def child(self) -> "ProMAGConfig":
        """The next stage: one more encoder level (same width, time-only down) at the end and one
        more decoder level (same width, time-only up) at the front -- Table 4's 4x -> 8x -> 16x."""
        return dataclasses.replace(
            self,
            enc_multipliers=self.enc_multipliers + self.enc_multipliers[-1:],
            enc_spatial_down=self.enc_spatial_down + (False,),
            enc_temporal_down=self.enc_temporal_down + (True,),
            dec_multipliers=self.dec_multipliers[:1] + self.dec_multipliers,
            dec_spatial_up=(False,) + self.dec_spatial_up,
            dec_temporal_up=(True,) + self.dec_temporal_up,
            grown_levels=self.grown_levels + 1,
        )


def table4_config(compression: int, grown: bool = True, **overrides) -> ProMAGConfig:
    """Table 4's layout for ``compression`` in (4, 8, 16); ``grown`` marks the 8x / 16x levels
    beyond 4x as grown (the paper's models), otherwise the same layout is trained from scratch."""
    if compression not in TABLE4:
        raise ConfigError(f"Table 4 has 4x, 8x and 16x models, got {compression}x")
    grown_levels = {4: 0, 8: 1, 16: 2}[compression] if grown else 0
    cfg = ProMAGConfig(**{**TABLE4[compression], "grown_levels": grown_levels, **overrides})
    cfg.validate()
    return cfg


def load_promag_config(path: str | Path) -> ProMAGConfig:
    """The ``model:`` section of a YAML file as a validated :class:`ProMAGConfig`."""
    data = load_yaml(path)
    return from_dict(ProMAGConfig, data.get("model"), f"{path}: model")


# ---------------------------------------------------------------------------- resampling blocks


class StridedCausalConv(CausalConv3d):
    """Strided causal 3x3x3 conv (with bias) that halves time and/or space.

    ``(B, C_in, 1 + 2k, H, W) -> (B, C_out, 1 + k, H/2, W/2)`` with both flags. Table 4 has levels
    that halve time only, which :class:`~baselines.causal.CausalDownsample` (space always
    halved) cannot express; this is the same conv with the spatial stride optional.
    """

    def __init__(self, in_ch: int, out_ch: int, time: bool, space: bool):
        if not (time or space):
            raise ValueError("a strided conv needs time or space (or both) to be halved")
        super().__init__(in_ch, out_ch, 3, stride=(2 if time else 1, 2 if space else 1, 2 if space else 1), bias=True)


class CausalUpsample(nn.Module):
    """Nearest upsampling, causal in time, then a causal 3x3x3 conv (with bias): Table 4's
    "nearest + conv up".

    ``(B, C, 1 + k, H, W) -> (B, C, 1 + 2k, 2H, 2W)`` with both flags. Time follows
    :func:`~baselines.causal.causal_resize`: output frame 0 copies input frame 0 and frame
    ``i >= 1`` copies ``ceil(i / 2)``, so no output frame sees a later input frame.
    """

    def __init__(self, channels: int, time: bool, space: bool):
        super().__init__()
        if not (time or space):
            raise ValueError("an upsampler needs time or space (or both) to be doubled")
        self.t_up, self.s_up = (2 if time else 1), (2 if space else 1)
        self.conv = CausalConv3d(channels, channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        x = causal_resize(x, (1 + self.t_up * (t - 1), h * self.s_up, w * self.s_up))
        return self.conv(x)


# ---------------------------------------------------------------------------- encoder / decoder


class DownLevel(nn.Module):
    """``blocks`` res blocks (the first ``in_ch -> out_ch``), then a strided conv if a flag is set."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, time: bool, space: bool):
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock3d(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)])
        self.down = StridedCausalConv(out_ch, out_ch, time, space) if (time or space) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.down(x) if self.down is not None else x


class UpLevel(nn.Module):
    """``blocks`` res blocks (the first ``in_ch -> out_ch``), then nearest + conv up if a flag is set."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, time: bool, space: bool):
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock3d(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)])
        self.up = CausalUpsample(out_ch, time, space) if (time or space) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.up(x) if self.up is not None else x


class CausalEncoder(nn.Module):
    """MAGVIT-v2-style causal encoder with per-level down flags (shared with REGEN's encoder).

    ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, out_channels, T', H', W')``: causal conv 3x3x3, the levels
    (:class:`DownLevel`), ``mid_blocks`` res blocks, per-frame GroupNorm, SiLU, causal conv 1x1x1.
    :meth:`trunk` and :meth:`head` split it where ProMAG mixes its two paths.
    """

    def __init__(
        self,
        base: int,
        multipliers: tuple[int, ...],
        spatial_down: tuple[bool, ...],
        temporal_down: tuple[bool, ...],
        blocks: int,
        mid_blocks: int,
        out_channels: int,
        groups: int = 32,
    ):
        super().__init__()
        widths = [base * m for m in multipliers]
        self.conv_in = CausalConv3d(3, widths[0], 3)
        levels, prev = [], widths[0]
        for w, s, t in zip(widths, spatial_down, temporal_down):
            levels.append(DownLevel(prev, w, blocks, groups, time=t, space=s))
            prev = w
        self.levels = nn.ModuleList(levels)
        self.mid = nn.Sequential(*[ResBlock3d(prev, prev, groups) for _ in range(mid_blocks)])
        self.norm_out = FrameGroupNorm(norm_groups(prev, groups), prev)
        self.conv_out = CausalConv3d(prev, out_channels, 1)

    def trunk(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """The input conv and the first ``levels`` levels (all by default)."""
        x = self.conv_in(x)
        for level in self.levels[:levels]:
            x = level(x)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Middle blocks, GroupNorm, SiLU, 1x1x1 conv."""
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class ProMAGDecoder(nn.Module):
    """Latent ``(B, z_dim, 1 + k, h, w)`` -> video ``(B, 3, 1 + time_factor k, 8h, 8w)`` (about [-1, 1]).

    ``levels[i]`` is the level at resolution ``i`` counted from the output (``levels[0]`` is the
    128-wide one), the mirror of the encoder's numbering; it runs ``levels[n-1]`` first. Numbered
    this way the level a grown model adds is the last entry, so a parent's weights keep their names
    in the child. ``forward(z, levels=m)`` skips the ``n - m`` outermost-from-the-latent levels:
    the parent path of a grown model.
    """

    def __init__(self, cfg: ProMAGConfig):
        super().__init__()
        c, g = cfg.base_channels, cfg.norm_groups
        widths = [c * m for m in cfg.dec_multipliers]  # Table order: latent side first
        top = widths[0]
        self.from_latent = CausalConv3d(cfg.z_dim, cfg.z_channels, 1)
        self.conv_in = CausalConv3d(cfg.z_channels, top, 3)
        self.mid = nn.Sequential(*[ResBlock3d(top, top, g) for _ in range(cfg.dec_blocks)])
        table, prev = [], top
        for w, s, t in zip(widths, cfg.dec_spatial_up, cfg.dec_temporal_up):
            table.append(UpLevel(prev, w, cfg.dec_blocks, g, time=t, space=s))
            prev = w
        self.levels = nn.ModuleList(table[::-1])
        self.norm_out = FrameGroupNorm(norm_groups(prev, g), prev)
        self.conv_out = CausalConv3d(prev, 3, 3)

    def forward(self, z: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        x = self.mid(self.conv_in(self.from_latent(z)))
        n = len(self.levels) if levels is None else levels
        for i in reversed(range(n)):
            x = self.levels[i](x)
        return self.conv_out(F.silu(self.norm_out(x)))


class CrossLevelMix(nn.Module):
    """AdaNorm of the frozen path's features ``h`` by the new level's features ``c`` (same T, H, W).

    ``h (B, C, T, H, W), c (B, C_c, T, H, W) -> h * (1 + gamma) + beta`` with
    ``(gamma, beta) = conv1x1(SiLU(GroupNorm(c)))``, per channel at every position. The paper
    names AdaNorm and per-channel scale and shift but publishes no equations; normalizing ``c``
    (per frame, so causality holds) keeps the modulation's scale independent of how large the new
    level's activations grow. The 1x1x1 conv starts at zero: the module starts as the identity.
    """

    def __init__(self, channels: int, cond_channels: int, groups: int = 32):
        super().__init__()
        self.norm = FrameGroupNorm(norm_groups(cond_channels, groups), cond_channels)
        self.modulation = CausalConv3d(cond_channels, 2 * channels, 1)
        nn.init.zeros_(self.modulation.conv.weight)
        nn.init.zeros_(self.modulation.conv.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if h.shape[2:] != c.shape[2:]:
            raise ValueError(f"frozen features {tuple(h.shape)} and new features {tuple(c.shape)} differ in T, H, W")
        gamma, beta = self.modulation(F.silu(self.norm(c))).chunk(2, dim=1)
        return h * (1 + gamma) + beta


class Posterior(NamedTuple):
    """Diagonal Gaussian ``N(mean, exp(logvar))`` over the latent, both ``(B, z_dim, T', h, w)``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``mean + exp(logvar / 2) * noise`` (reparametrized); ``noise`` (the mean's shape) is drawn
        from ``generator`` unless given."""
        if noise is None:
            device = generator.device if generator is not None else self.mean.device
            noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` summed over the latent's elements, averaged over the batch (SD-VAE's
        convention, the one the paper's weight 1e-12 is quoted against). Scalar."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1).mean()


class ProMAG(CausalChunkGeometry, nn.Module):
    """ProMAG tokenizer: ``1 + f k`` frames <-> a ``z_dim x (1 + k) x H/8 x W/8`` Gaussian latent.

    Fully convolutional: any ``T = 1 + f k`` (``f = cfg.time_factor``) and ``H, W`` divisible by
    ``cfg.space_factor`` work; it is trained on ``cfg.frames x cfg.size^2`` chunks. Inputs are in
    [-1, 1]; outputs approximate [-1, 1] unsquashed (clamp before display or metrics).
    """

    NAME = "ProMAG"
    LATENT_CHANNELS = "z_dim"

    def __init__(self, cfg: ProMAGConfig | None = None):
        super().__init__()
        cfg = cfg or ProMAGConfig()
        cfg.validate()
        self.cfg = cfg
        self.base_levels = len(cfg.enc_multipliers) - cfg.grown_levels
        self.encoder = CausalEncoder(
            cfg.base_channels,
            cfg.enc_multipliers,
            cfg.enc_spatial_down,
            cfg.enc_temporal_down,
            cfg.enc_blocks,
            cfg.enc_blocks,
            cfg.z_channels,
            cfg.norm_groups,
        )
        self.to_moments = CausalConv3d(cfg.z_channels, 2 * cfg.z_dim, 1)
        widths = [cfg.base_channels * m for m in cfg.enc_multipliers]
        # mix[s - 1] joins the path of stage s - 1 (width of level base + s - 2) with level base + s - 1
        self.mix = nn.ModuleList(
            [
                CrossLevelMix(widths[self.base_levels + s - 2], widths[self.base_levels + s - 1], cfg.norm_groups)
                for s in range(1, cfg.grown_levels + 1)
            ]
        )
        self.decoder = ProMAGDecoder(cfg)

    # -- geometry
    @property
    def chunk_overlap(self) -> int:
        """Frames shared by consecutive chunks of a long video (the paper's 4)."""
        return 4

    def tokens(self, frames: int) -> int:
        """Latent positions for a ``frames``-long clip under ProMAG's long-video protocol: windows of
        ``chunk_frames`` overlapping by ``chunk_overlap`` (:func:`~coordtok.chunking.chunk_windows`), each
        costing one chunk's ``(1 + k) x h x w`` latent. 17 frames at 8x, 256^2: 3 x 32 x 32 = 3,072."""
        _, t, h, w = self.latent_shape(self.chunk_frames)
        return len(chunk_windows(frames, self.chunk_frames, self.chunk_overlap)) * t * h * w

    # -- coding
    def _features(self, video: torch.Tensor, stage: int) -> torch.Tensor:
        """``feat_stage(video)`` of the module docstring: the encoder features before the middle blocks."""
        full = self.encoder.trunk(video, self.base_levels + stage)
        if stage == 0:
            return full
        frozen = self._features(video[:, :, ::2], stage - 1)
        return self.mix[stage - 1](frozen, full)

    def encode(self, video: torch.Tensor) -> Posterior:
        """``video (B, 3, 1 + f k, H, W)`` in [-1, 1] -> :class:`Posterior` over ``(B, z_dim, 1 + k, H/8, W/8)``.

        The log-variance is clamped to [-30, 20] (SD-VAE) so ``exp`` stays finite.
        """
        self._check(video)
        moments = self.to_moments(self.encoder.head(self._features(video, self.cfg.grown_levels)))
        mean, logvar = moments.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, z_dim, 1 + k, h, w)`` -> video ``(B, 3, 1 + f k, 8h, 8w)`` (about [-1, 1])."""
        return self.decoder(z)

    def decode_subsampled(self, z: torch.Tensor) -> torch.Tensor:
        """A grown model's parent path: the latent decoded without the newest decoder level, i.e.
        the reconstruction of the video subsampled 2x in time, ``(B, 3, 1 + f k / 2, 8h, 8w)``."""
        if self.cfg.grown_levels < 1:
            raise ValueError("decode_subsampled needs a grown model (grown_levels >= 1)")
        return self.decoder(z, levels=len(self.decoder.levels) - 1)

    def forward(
        self,
        video: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """``video (B, 3, 1 + f k, H, W)`` -> ``(recon (B, 3, 1 + f k, H, W), aux)``.

        ``noise (B, z_dim, 1 + k, h, w)``: the posterior's reparametrization noise, used instead of a
        draw from ``generator``. A trainer gives each clip its own (a function of the clip's place in
        the global batch) and passes it in here so that the whole step is the one call DDP wraps.

        ``aux``: ``kl`` (scalar, :meth:`Posterior.kl`), ``posterior``, ``z`` (the decoded latent: a
        sample when ``sample``, else the mean) and, for a grown model, ``recon_sub``
        (:meth:`decode_subsampled`) with its target ``video_sub = video[:, :, ::2]``.
        """
        if noise is not None and not sample:
            raise ValueError("noise is the sample's reparametrization noise: it needs sample=True")
        posterior = self.encode(video)
        z = posterior.sample(generator, noise) if sample else posterior.mean
        aux = {"kl": posterior.kl(), "posterior": posterior, "z": z}
        if self.cfg.grown_levels:
            aux["recon_sub"] = self.decode_subsampled(z)
            aux["video_sub"] = video[:, :, ::2]
        return self.decode(z), aux

    @torch.no_grad()
    def reconstruct_long(self, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """A long video ``(B, 3, T, H, W)`` through ``chunk_frames`` chunks overlapping by
        ``chunk_overlap``, each decoded from its posterior mean, the overlaps blended linearly in
        pixel space. Returns :func:`~coordtok.chunking.reconstruct_chunked`'s ``(recon, info)``."""
        return reconstruct_chunked(
            self.codec, video, chunk=self.chunk_frames, overlap=self.chunk_overlap, blend="linear"
        )

    def codec(self, clip: torch.Tensor) -> torch.Tensor:
        """One chunk ``(B, 3, chunk_frames, H, W)`` -> its reconstruction from the posterior mean."""
        return self.decode(self.encode(clip).mean)


def grow(parent: ProMAG, child_cfg: ProMAGConfig | None = None) -> ProMAG:
    """The next stage of ``parent``: ``child_cfg`` (default ``parent.cfg.child()``) must be
    ``parent.cfg`` plus one grown level (``child_cfg.parent() == parent.cfg``).

    Every parameter the child shares with the parent (same name, same shape) takes the parent's
    value and is frozen (``requires_grad = False``); the new encoder level, its mixing module and
    the new decoder level are freshly initialised and train. The paper freezes "most" of the
    previous stage without listing which; we freeze all of it (encoder, KL head, decoder), which is
    what makes a grown model start equal to its parent on the subsampled video and what makes a
    growing step cheaper than a from-scratch one. The child is on the parent's device and dtype.
    """
    child_cfg = child_cfg or parent.cfg.child()
    child_cfg.validate()
    if child_cfg.grown_levels < 1 or child_cfg.parent() != parent.cfg:
        raise ConfigError("child_cfg must be the parent's config with one more grown level (see ProMAGConfig.child)")
    ref = next(parent.parameters())
    child = ProMAG(child_cfg).to(device=ref.device, dtype=ref.dtype)
    inherited = parent.state_dict()
    missing, unexpected = child.load_state_dict(inherited, strict=False)
    new_prefixes = (
        f"encoder.levels.{len(child_cfg.enc_multipliers) - 1}.",
        f"mix.{child_cfg.grown_levels - 1}.",
        f"decoder.levels.{len(child_cfg.dec_multipliers) - 1}.",
    )
    if unexpected or any(not k.startswith(new_prefixes) for k in missing):
        raise RuntimeError(f"parent and child layouts disagree: missing {missing}, unexpected {unexpected}")
    for name, p in child.named_parameters():
        p.requires_grad_(name not in inherited)
    return child


# ---------------------------------------------------------------------------- discriminator and losses


class PatchGAN3D(nn.Module):
    """The SD-VAE PatchGAN (``NLayerDiscriminator``) with 3D convolutions, kernel 3 x 4 x 4.

    ``(B, 3, T, H, W)`` in [-1, 1] -> patch logits ``(B, 1, T', H', W')``::

        conv 3 -> C, stride 2, LeakyReLU(0.2)
        layers - 1 times: conv C_i -> C_{i+1} (C_i = C min(2^i, 8)), stride 2, BatchNorm, LeakyReLU
        conv -> C min(2^layers, 8), stride 1, BatchNorm, LeakyReLU
        conv -> 1, stride 1

    Padding 1 on every axis; convs before a BatchNorm have no bias; weights ``N(0, 0.02)``, norm
    scales ``N(1, 0.02)`` (SD-VAE's init). The paper gives the 2D recipe, the kernel and the
    width; the temporal stride is ours: time is halved with space in the strided layers (17 -> 9
    -> 5 -> 3), which keeps the patch's temporal extent comparable to its spatial one.
    17 x 256 x 256 -> 3 x 30 x 30 logits; 8,293,185 parameters at 64 channels, 3 layers.
    """

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        super().__init__()
        k, p = (3, 4, 4), 1
        seq: list[nn.Module] = [nn.Conv3d(in_channels, channels, k, stride=2, padding=p), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv3d(channels * prev, channels * mult, k, stride=2, padding=p, bias=False),
                nn.BatchNorm3d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**layers, 8)
        seq += [
            nn.Conv3d(channels * prev, channels * mult, k, stride=1, padding=p, bias=False),
            nn.BatchNorm3d(channels * mult),
            nn.LeakyReLU(0.2),
            nn.Conv3d(channels * mult, 1, k, stride=1, padding=p),
        ]
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg: ProMAGConfig) -> "PatchGAN3D":
        return cls(cfg.disc_channels, cfg.disc_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``(mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))) / 2`` (SD-VAE)."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(D(G(z)))`` (SD-VAE)."""
    return -fake_logits.float().mean()


# ---------------------------------------------------------------------------- analytic counts


def causal_encoder_param_count(
    base: int,
    multipliers: tuple[int, ...],
    spatial_down: tuple[bool, ...],
    temporal_down: tuple[bool, ...],
    blocks: int,
    mid_blocks: int,
    out_channels: int,
) -> int:
    """Parameters of a :class:`CausalEncoder` from its layout (input conv, levels with their
    strided convs, middle blocks, GroupNorm, 1x1x1 output conv)."""
    widths = [base * m for m in multipliers]
    n, prev = conv_params(3, widths[0]), widths[0]
    for w, s, t in zip(widths, spatial_down, temporal_down):
        n += res_block_params(prev, w) + (blocks - 1) * res_block_params(w, w) + (conv_params(w, w) if (s or t) else 0)
        prev = w
    return n + mid_blocks * res_block_params(prev, prev) + norm_params(prev) + conv_params(prev, out_channels, 1)


def analytic_param_count(cfg: ProMAGConfig) -> dict[str, int]:
    """Parameter counts from the layout formulas (no modules built).

    Keys: ``encoder`` (with the KL head), ``decoder``, ``mixing`` (the grown levels' AdaNorm
    modules), ``table4`` (``encoder + decoder``: the layout of Table 4, what the paper's counts
    minus the VGG16 are) and ``total``. Conv ``cin cout k^3 (+ cout)``; GroupNorm ``2C``.
    Table 4 with z_dim 8: 4x 464,109,587; 8x 655,229,459; 16x 846,349,331; a grown level's mixing
    module adds 1,182,720.
    """
    c = cfg.base_channels
    enc = causal_encoder_param_count(
        c,
        cfg.enc_multipliers,
        cfg.enc_spatial_down,
        cfg.enc_temporal_down,
        cfg.enc_blocks,
        cfg.enc_blocks,
        cfg.z_channels,
    )
    enc += conv_params(cfg.z_channels, 2 * cfg.z_dim, 1)  # KL head: mean and log-variance

    dec_w = [c * m for m in cfg.dec_multipliers]
    dec = conv_params(cfg.z_dim, cfg.z_channels, 1) + conv_params(cfg.z_channels, dec_w[0])
    dec += cfg.dec_blocks * res_block_params(dec_w[0], dec_w[0])
    prev = dec_w[0]
    for w, s, t in zip(dec_w, cfg.dec_spatial_up, cfg.dec_temporal_up):
        dec += (
            res_block_params(prev, w)
            + (cfg.dec_blocks - 1) * res_block_params(w, w)
            + (conv_params(w, w) if (s or t) else 0)
        )
        prev = w
    dec += norm_params(prev) + conv_params(prev, 3)

    enc_w = [c * m for m in cfg.enc_multipliers]
    base = len(enc_w) - cfg.grown_levels
    mixing = sum(
        norm_params(enc_w[base + s - 1]) + conv_params(enc_w[base + s - 1], 2 * enc_w[base + s - 2], 1)
        for s in range(1, cfg.grown_levels + 1)
    )
    return {"encoder": enc, "decoder": dec, "mixing": mixing, "table4": enc + dec, "total": enc + dec + mixing}


def discriminator_param_count(cfg: ProMAGConfig) -> int:
    """Parameters of :class:`PatchGAN3D` for ``cfg`` (8,293,185 at 64 channels, 3 layers)."""
    k, ch = 3 * 4 * 4, cfg.disc_channels
    n = 3 * ch * k + ch
    mult = 1
    for i in range(1, cfg.disc_layers):
        prev, mult = mult, min(2**i, 8)
        n += ch * prev * ch * mult * k + 2 * ch * mult
    prev, mult = mult, min(2**cfg.disc_layers, 8)
    n += ch * prev * ch * mult * k + 2 * ch * mult
    return n + ch * mult * k + 1
