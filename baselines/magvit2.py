"""MAGVIT-v2: the causal conv-3D video tokenizer with lookup-free quantization.

Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation", ICLR 2024,
supplement A.2; the layout is the one of the public reimplementation github.com/cofe-ai/O2-MAGVIT2
(``modeling/magvit2.py``, Apache-2.0), written here from those facts.

Paper setting (:class:`MagvitV2Config` defaults): a 17 x 128 x 128 clip (1 + 16 frames) in
[-1, 1] becomes a 5 x 16 x 16 grid of 18-bit tokens (vocabulary 2^18).

Encoder (``(B, 3, 1 + 4k, H, W) -> (B, 18, 1 + k, H/8, W/8)``)::

    causal conv 3x3x3  3 -> 128
    level 0: 4 res blocks 128 -> 128            then strided causal conv, stride (1, 2, 2)
    level 1: 4 res blocks 128 -> 256 (first)    then strided causal conv, stride (2, 2, 2)
    level 2: 4 res blocks 256 -> 256            then strided causal conv, stride (2, 2, 2)
    level 3: 4 res blocks 256 -> 512 (first)
    4 res blocks 512, GroupNorm, SiLU, causal conv 1x1x1 512 -> 18

Decoder (``(B, 18, 1 + k, h, w) -> (B, 3, 1 + 4k, 8h, 8w)``)::

    causal conv 3x3x3  18 -> 512, 4 res blocks 512
    level 3: adaptive GroupNorm(512 | z), 4 res blocks 512 -> 512, depth-to-space up (2, 2, 2)
    level 2: adaptive GroupNorm(512 | z), 4 res blocks 512 -> 256, depth-to-space up (2, 2, 2)
    level 1: adaptive GroupNorm(256 | z), 4 res blocks 256 -> 256, depth-to-space up (1, 2, 2)
    level 0: adaptive GroupNorm(256 | z), 4 res blocks 256 -> 128
    GroupNorm, SiLU, causal conv 3x3x3 128 -> 3

The first res block of a level changes the width (1x1x1 shortcut); the upsampler of a level runs
at that level's output width. Parameters: encoder 144.87 M, decoder 225.68 M, total 370.55 M
(:func:`analytic_param_count`, checked against the modules in tests/test_magvit2.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from coordtok.chunking import CausalChunkGeometry
from coordtok.config import ConfigError, divisible, from_dict, load_yaml, positive, require

from .causal import (
    AdaptiveGroupNorm,
    CausalConv3d,
    CausalDownsample,
    DepthToSpaceUpsample,
    FrameGroupNorm,
    ResBlock3d,
    conv_params,
    norm_groups,
    norm_params,
    res_block_params,
)
from .lfq import LFQ

__all__ = ["MagvitV2Config", "MagvitV2", "Encoder", "Decoder", "analytic_param_count", "load_magvit2_config"]


@dataclass
class MagvitV2Config:
    """MAGVIT-v2 architecture (the ``model:`` section of ``configs/baselines/magvit2*.yaml``).

    Defaults are the paper's 17 x 128 x 128 tokenizer.
    """

    frames: int = 17  # chunk length the tokenizer is trained on: 1 + 4k (1 + 16)
    size: int = 128  # H = W of the training clips (the discriminator's dense head depends on it)
    base_channels: int = 128  # width of level 0
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)  # width of level i = base * mult[i]
    num_res_blocks: int = 4  # residual blocks per level (and in the encoder/decoder middle)
    # one flag per down/upsampling step (levels - 1): also halve time there. The paper halves time
    # at the last two steps: 17 -> 17 -> 9 -> 5 frames.
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_channels: int = 18  # = LFQ bits: vocabulary 2^18
    norm_groups: int = 32  # GroupNorm groups (fewer where a width is not a multiple: gcd)
    entropy_groups: int = 2  # LFQ sub-codebooks for the entropy term (2 x 2^9 at paper scale)
    entropy_temperature: float = 0.01  # LFQ softmax temperature over -||z - c||^2
    pre_quant_norm: bool = False  # per-frame GroupNorm without affine before the quantizer
    # 3D StyleGAN discriminator (baselines.discriminator): width = base * mult per block
    disc_base_channels: int = 128
    disc_channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4)

    def validate(self) -> None:
        positive(
            self,
            "frames",
            "size",
            "base_channels",
            "num_res_blocks",
            "latent_channels",
            "norm_groups",
            "entropy_groups",
            "disc_base_channels",
            "entropy_temperature",
        )
        require(len(self.channel_multipliers) >= 1, "'channel_multipliers' must not be empty")
        require(
            all(m > 0 for m in self.channel_multipliers),
            f"'channel_multipliers' must be positive, got {list(self.channel_multipliers)}",
        )
        require(
            len(self.temporal_downsample) == len(self.channel_multipliers) - 1,
            f"'temporal_downsample' needs one flag per downsampling step ({len(self.channel_multipliers) - 1}), "
            f"got {len(self.temporal_downsample)}",
        )
        require(
            (self.frames - 1) % self.time_factor == 0,
            f"'frames' ({self.frames}) must be 1 + a multiple of the temporal factor {self.time_factor}",
        )
        require(
            self.size % self.space_factor == 0,
            f"'size' ({self.size}) is not divisible by the spatial factor {self.space_factor}",
        )
        require(
            self.latent_channels <= 62, f"'latent_channels' ({self.latent_channels}) must be <= 62 (int64 token ids)"
        )
        divisible(self, ("latent_channels", "entropy_groups"))
        require(
            self.latent_channels // self.entropy_groups <= 16,
            f"sub-codebooks of 2^{self.latent_channels // self.entropy_groups} codes are too large for the "
            f"entropy term: raise 'entropy_groups'",
        )
        require(len(self.disc_channel_multipliers) >= 1, "'disc_channel_multipliers' must not be empty")
        from .discriminator import discriminator_shapes

        try:
            discriminator_shapes(self.frames, self.size, len(self.disc_channel_multipliers))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def time_factor(self) -> int:
        """Temporal compression: ``1 + k * time_factor`` frames -> ``1 + k`` latent frames (4)."""
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def space_factor(self) -> int:
        """Spatial compression per side (8)."""
        return 2 ** (len(self.channel_multipliers) - 1)


def load_magvit2_config(path: str | Path) -> MagvitV2Config:
    """The ``model:`` section of a YAML file as a validated :class:`MagvitV2Config`."""
    data = load_yaml(path)
    return from_dict(MagvitV2Config, data.get("model"), f"{path}: model")


# ---------------------------------------------------------------------------- encoder / decoder


class EncoderLevel(nn.Module):
    """Res blocks at one width, then (except at the last level) a strided causal conv."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, down: bool | None):
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock3d(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)])
        self.down = CausalDownsample(out_ch, out_ch, time=down) if down is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.down(x) if self.down is not None else x


class Encoder(nn.Module):
    """``(B, 3, 1 + 4k, H, W)`` in [-1, 1] -> unquantized latent ``(B, bits, 1 + k, H/8, W/8)``."""

    def __init__(self, cfg: MagvitV2Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        g = cfg.norm_groups
        self.conv_in = CausalConv3d(3, widths[0], 3)
        levels, prev = [], widths[0]
        for i, w in enumerate(widths):
            down = cfg.temporal_downsample[i] if i < len(widths) - 1 else None
            levels.append(EncoderLevel(prev, w, cfg.num_res_blocks, g, down))
            prev = w
        self.levels = nn.ModuleList(levels)
        self.mid = nn.Sequential(*[ResBlock3d(prev, prev, g) for _ in range(cfg.num_res_blocks)])
        self.norm_out = FrameGroupNorm(norm_groups(prev, g), prev)
        self.conv_out = CausalConv3d(prev, cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.levels:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class DecoderLevel(nn.Module):
    """Adaptive GroupNorm on the latent, res blocks, then (except at level 0) the upsampler."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, cond_ch: int, t_up: int | None):
        super().__init__()
        self.adanorm = AdaptiveGroupNorm(in_ch, cond_ch, groups)
        self.blocks = nn.Sequential(*[ResBlock3d(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)])
        self.up = DepthToSpaceUpsample(out_ch, t_up) if t_up is not None else None

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.adanorm(x, z))
        return self.up(x) if self.up is not None else x


class Decoder(nn.Module):
    """Quantized latent ``(B, bits, 1 + k, h, w)`` -> video ``(B, 3, 1 + 4k, 8h, 8w)``.

    The output is not squashed (no tanh, as the reimplementation): it approximates [-1, 1] and may
    overshoot slightly; clamp before display or metrics.
    """

    def __init__(self, cfg: MagvitV2Config):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        g, bits = cfg.norm_groups, cfg.latent_channels
        top = widths[-1]
        self.conv_in = CausalConv3d(bits, top, 3)
        self.mid = nn.Sequential(*[ResBlock3d(top, top, g) for _ in range(cfg.num_res_blocks)])
        levels, prev = [], top
        for i in reversed(range(len(widths))):
            t_up = (2 if cfg.temporal_downsample[i - 1] else 1) if i > 0 else None
            levels.append(DecoderLevel(prev, widths[i], cfg.num_res_blocks, g, bits, t_up))
            prev = widths[i]
        self.levels = nn.ModuleList(levels)  # levels[0] is the deepest (level n-1)
        self.norm_out = FrameGroupNorm(norm_groups(prev, g), prev)
        self.conv_out = CausalConv3d(prev, 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in self.levels:
            x = level(x, z)
        return self.conv_out(F.silu(self.norm_out(x)))


# ---------------------------------------------------------------------------- the tokenizer


class MagvitV2(CausalChunkGeometry, nn.Module):
    """Causal conv-3D tokenizer: video chunks of ``1 + 4k`` frames <-> ``(1 + k) x H/8 x W/8`` tokens.

    Fully convolutional: any ``T = 1 + 4k`` and ``H, W`` divisible by 8 work, though it is trained
    on ``cfg.frames x cfg.size^2`` chunks; long videos go through
    :func:`coordtok.chunking.reconstruct_chunked`.
    """

    NAME = "MAGVIT-v2"
    LATENT_CHANNELS = "latent_channels"

    def __init__(self, cfg: MagvitV2Config | None = None):
        super().__init__()
        cfg = cfg or MagvitV2Config()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = LFQ(cfg.latent_channels, cfg.entropy_groups, cfg.entropy_temperature, cfg.pre_quant_norm)
        self.decoder = Decoder(cfg)

    # -- geometry
    def tokens(self, frames: int) -> int:
        """Tokens (latent positions) for a ``frames``-long clip under the chunked protocol.

        The clip is cut into causal windows of ``chunk_frames`` overlapping by one frame
        (:func:`~coordtok.chunking.chunk_windows`; a short last window is padded to a
        full chunk), each costing one chunk's latent: 17 frames -> 5 x 16 x 16 = 1,280,
        128 frames -> 8 chunks = 10,240 at 128 x 128.
        """
        from coordtok.chunking import chunk_windows

        _, t, h, w = self.latent_shape(self.chunk_frames)
        return len(chunk_windows(frames, self.chunk_frames, 1)) * t * h * w

    # -- coding
    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``video (B, 3, 1 + 4k, H, W)`` in [-1, 1] -> ``(q, indices, aux)``.

        ``q (B, bits, 1 + k, H/8, W/8)`` in {-1, +1} (straight-through), ``indices (B, 1 + k, H/8,
        W/8)`` long in ``[0, 2^bits)``, ``aux`` the quantizer terms (see :class:`~.lfq.LFQ`).
        """
        self._check(video)
        return self.quantizer(self.encoder(video))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, bits, 1 + k, h, w)`` -> video ``(B, 3, 1 + 4k, 8h, 8w)`` (about [-1, 1])."""
        return self.decoder(z)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices (B, 1 + k, h, w)`` long -> video ``(B, 3, 1 + 4k, 8h, 8w)``."""
        dtype = next(self.decoder.parameters()).dtype
        return self.decode(self.quantizer.indices_to_codes(indices, dtype))

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``video (B, 3, 1 + 4k, H, W)`` -> ``(recon (B, 3, 1 + 4k, H, W), aux)``; ``aux`` holds
        ``commitment``, ``entropy``, ``per_sample_entropy``, ``codebook_entropy`` (scalar tensors),
        ``codebook_use``, ``perplexity`` (floats) and ``indices``."""
        q, indices, aux = self.encode(video)
        return self.decode(q), {**aux, "indices": indices}


# ---------------------------------------------------------------------------- analytic count


def analytic_param_count(cfg: MagvitV2Config) -> dict[str, int]:
    """Parameter counts from the layout formulas (no modules built): ``encoder``, ``decoder``,
    ``total``. Conv: ``cin * cout * k^3 (+ cout bias)``; GroupNorm: ``2C``; Linear: ``in * out +
    out``; LFQ and the non-affine norms have none. Paper config: 144,865,426 + 225,682,051 =
    370,547,477."""
    widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
    r, bits = cfg.num_res_blocks, cfg.latent_channels

    enc = conv_params(3, widths[0])
    prev = widths[0]
    for i, w in enumerate(widths):
        enc += res_block_params(prev, w) + (r - 1) * res_block_params(w, w)
        if i < len(widths) - 1:
            enc += conv_params(w, w)  # strided causal conv
        prev = w
    enc += r * res_block_params(prev, prev) + norm_params(prev) + conv_params(prev, bits, 1)

    top = widths[-1]
    dec = conv_params(bits, top) + r * res_block_params(top, top)
    prev = top
    for i in reversed(range(len(widths))):
        w = widths[i]
        dec += 2 * (bits * prev + prev)  # adaptive GroupNorm: gamma and beta Linear(bits, C)
        dec += res_block_params(prev, w) + (r - 1) * res_block_params(w, w)
        if i > 0:
            t_up = 2 if cfg.temporal_downsample[i - 1] else 1
            dec += conv_params(w, w * 4 * t_up)  # depth-to-space upsampler
        prev = w
    dec += norm_params(prev) + conv_params(prev, 3)
    return {"encoder": enc, "decoder": dec, "total": enc + dec}
