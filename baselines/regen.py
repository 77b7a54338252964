"""REGEN: a causal conv-3D encoder with a diffusion-transformer decoder that regenerates the frames.

Zhang et al., "REGEN: Learning Compact Video Embedding with (Un)Conditional Diffusion Generator",
2025. The encoder compresses each chunk of ``1 + k`` frames to two latent frames; the decoder
*generates* the chunk, a DiT conditioned on the latent and trained with flow matching, sampled in
one step or many. Long videos are decoded chunk by chunk with *latent extension*, which carries the
sampling trajectory of a chunk's last frame into the next chunk so the seam between them closes.

Built on CoordTok-SiT's transport (:func:`sit.transport.training_loss`, :class:`~sit.transport.LinearPath`),
samplers (:func:`sit.samplers.ode`, :func:`sit.samplers.euler_maruyama`) and blocks
(:class:`~sit.models.SiTBlock`, :class:`~sit.models.TimestepEmbedder`, :class:`~sit.models.FinalLayer`).
The paper does not publish its architecture in full; README.md ("The baselines as this project reads
their papers") gives the details and marks every choice of ours.

* Encoder (:class:`baselines.promag.CausalEncoder`): ``(B, 3, 1 + k, H, W)`` in [-1, 1] -> latent
  ``(B, 8, 2, H/8, W/8)``, deterministic; latent frame 0 depends on frame 0 alone, frame 1 on all
  ``1 + k`` frames.
* Decoder (:class:`RegenDiT`): video patches and latent patches are tokens of one sequence (the
  latent *in context*), with fixed 3D sin-cos positions in shared units and a type embedding; the
  time enters through adaLN-Zero, so the velocity is zero at init.
* Training (:meth:`Regen.loss`): ``training_loss(v, x1 = chunk)`` with
  ``v(x_t, t) = dit(x_t, t | encoder(chunk))``; ``prev_video`` trains the extended window.
* Decoding (:meth:`Regen.decode`): one Euler step ``x1 = x0 + v(x0, 0)``, or ``ode`` on a fixed
  grid, or ``euler_maruyama``.
* Latent extension (:meth:`Regen.decode_long`): chunk ``c >= 1`` is decoded over ``k + 2`` frames
  (times ``-1 .. k``), its latent extended in front by the previous chunk's latent frame 1; the
  state of frame ``-1`` is replaced, at every velocity evaluation, by the previous chunk's last
  frame's stored state, on the network's input. Both chunks must use the same sampler and steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange, repeat

from coordtok.config import divisible, from_dict, load_yaml, positive, require
from sit.models import FinalLayer, SiTBlock, TimestepEmbedder, sincos_1d
from sit.samplers import FIXED_GRID_METHODS, euler_maruyama, ode
from sit.transport import LinearPath, randn_like, training_loss

from .promag import CausalEncoder, causal_encoder_param_count

__all__ = ["RegenConfig", "load_regen_config", "RegenDiT", "Regen", "Decoded", "LongDecode", "analytic_param_count"]


@dataclass
class RegenConfig:
    """REGEN architecture (the ``model:`` section of ``configs/baselines/regen*.yaml``).

    Defaults: paper scale as we read it -- 17-frame chunks (k = 16, so the encoder has the extra
    level) of 256 x 256, 8 latent channels, a 24-block DiT of width 1024.
    """

    frames: int = 17  # 1 + k frames per chunk; k = 2^(levels - 1)
    size: int = 256  # H = W
    enc_channels: int = 128
    enc_multipliers: tuple[int, ...] = (1, 2, 4, 6, 6)
    # one flag per strided conv (levels - 1): also halve space there. Time is halved at every one.
    enc_spatial_down: tuple[bool, ...] = (True, True, True, False)
    enc_blocks: int = 2  # res blocks per level and in the middle (ProMAG Table 4's count, same multipliers)
    latent_channels: int = 8
    norm_groups: int = 32
    hidden: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    patch: int = 16  # video patch (pixels per side, one frame)
    latent_patch: int = 2  # latent patch (latent positions per side)

    def validate(self) -> None:
        positive(
            self,
            "frames",
            "size",
            "enc_channels",
            "enc_blocks",
            "latent_channels",
            "norm_groups",
            "hidden",
            "depth",
            "heads",
            "patch",
            "latent_patch",
            "mlp_ratio",
        )
        levels = len(self.enc_multipliers)
        require(levels >= 2, "'enc_multipliers' needs at least two levels (one strided conv)")
        require(all(m > 0 for m in self.enc_multipliers), "'enc_multipliers' must be positive")
        require(
            len(self.enc_spatial_down) == levels - 1,
            f"'enc_spatial_down' needs one flag per strided conv ({levels - 1}), got {len(self.enc_spatial_down)}",
        )
        require(
            self.frames == 1 + self.k,
            f"'frames' must be 1 + 2^(levels - 1) = {1 + self.k} for {levels} levels (two latent frames), "
            f"got {self.frames}",
        )
        divisible(self, ("size", "patch"))
        require(
            self.size % (self.space_factor * self.latent_patch) == 0,
            f"'size' ({self.size}) is not divisible by space factor x latent patch "
            f"({self.space_factor} x {self.latent_patch})",
        )
        divisible(self, ("hidden", "heads"))
        require(self.hidden % 8 == 0, f"'hidden' ({self.hidden}) must be a multiple of 8 (3D sin-cos positions)")
        # A token must be able to carry its patch: a narrower DiT cannot pass the noise of a
        # 3 x p x p patch through and leaves part of it in every decode (a PSNR ceiling).
        require(
            self.hidden >= 3 * self.patch**2,
            f"'hidden' ({self.hidden}) is narrower than a video patch (3 x {self.patch} x {self.patch} = "
            f"{3 * self.patch**2} values); widen it or use a smaller 'patch'",
        )

    @property
    def k(self) -> int:
        """Frames after the first one in a chunk: ``2^(levels - 1)``."""
        return 2 ** (len(self.enc_multipliers) - 1)

    @property
    def space_factor(self) -> int:
        return 2 ** sum(self.enc_spatial_down)


def load_regen_config(path: str | Path) -> RegenConfig:
    """The ``model:`` section of a YAML file as a validated :class:`RegenConfig`."""
    data = load_yaml(path)
    return from_dict(RegenConfig, data.get("model"), f"{path}: model")


def _positions(times: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos embedding of a ``(time, row, col)`` grid -> ``(len(times) * len(rows) * len(cols), dim)``,
    time-major. Half the channels encode time, a quarter each row and column (``dim % 8 == 0``)."""
    t = sincos_1d(dim // 2, times)
    r = sincos_1d(dim // 4, rows)
    c = sincos_1d(dim // 4, cols)
    nt, nr, nc = len(times), len(rows), len(cols)
    grid = torch.cat(
        [
            repeat(t, "t d -> t r c d", r=nr, c=nc),
            repeat(r, "r d -> t r c d", t=nt, c=nc),
            repeat(c, "c d -> t r c d", t=nt, r=nr),
        ],
        dim=-1,
    )
    return rearrange(grid, "t r c d -> (t r c) d")


class RegenDiT(nn.Module):
    """The REGEN decoder: velocity of the noisy chunk given the latent (module docstring).

    ``forward(x (B, 3, F, H, W), t (B,), latent (B, C, L, h, w), frame_times (F,), latent_times (L,))
    -> v (B, 3, F, H, W)``. Frame and latent times are in frames relative to the chunk's first frame
    (floats; negative for the extended window). Tokens: ``F (H/p)(W/p)`` video + ``L (h/lp)(w/lp)`` latent.
    """

    def __init__(self, cfg: RegenConfig):
        super().__init__()
        self.cfg = cfg
        d, p, lp = cfg.hidden, cfg.patch, cfg.latent_patch
        self.x_embedder = nn.Linear(3 * p * p, d)
        self.z_embedder = nn.Linear(cfg.latent_channels * lp * lp, d)
        self.type_embed = nn.Parameter(torch.zeros(2, d))  # 0: video token, 1: latent token
        self.t_embedder = TimestepEmbedder(d)
        self.blocks = nn.ModuleList([SiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, p, 3)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """SiT's initialisation: xavier linears, small embeddings, adaLN-Zero (zero velocity at init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.type_embed, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        latent: torch.Tensor,
        frame_times: torch.Tensor,
        latent_times: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.cfg
        p, lp, d = cfg.patch, cfg.latent_patch, cfg.hidden
        _, _, frames, height, width = x.shape
        rows, cols = height // p, width // p
        video = rearrange(x, "b c f (r p) (s q) -> b (f r s) (p q c)", p=p, q=p)
        lat = rearrange(latent, "b c l (r p) (s q) -> b (l r s) (p q c)", p=lp, q=lp)
        # Positions in video-patch units: latent patch i covers pixels [i, i + 1) * lp * space_factor,
        # centred at (i + 1/2) * lp * sf / p - 1/2 in those units (video patch i is centred at i).
        dev = x.device
        ratio = lp * cfg.space_factor / p
        lrows = (torch.arange(latent.shape[3] // lp, device=dev) + 0.5) * ratio - 0.5
        lcols = (torch.arange(latent.shape[4] // lp, device=dev) + 0.5) * ratio - 0.5
        pos_v = _positions(frame_times.to(dev), torch.arange(rows, device=dev), torch.arange(cols, device=dev), d)
        pos_z = _positions(latent_times.to(dev), lrows, lcols, d)
        tokens = torch.cat(
            [
                self.x_embedder(video) + pos_v.to(x.dtype) + self.type_embed[0],
                self.z_embedder(lat) + pos_z.to(x.dtype) + self.type_embed[1],
            ],
            dim=1,
        )
        t = torch.as_tensor(t, device=dev)
        c = self.t_embedder(t.expand(x.shape[0]) if t.ndim == 0 else t)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens[:, : frames * rows * cols], c)
        return rearrange(out, "b (f r s) (p q c) -> b c f (r p) (s q)", f=frames, r=rows, p=p, q=p)


class Decoded(NamedTuple):
    """One decoded chunk: ``frames (B, 3, F, H, W)`` and ``trace``, the state of its last frame at
    every velocity evaluation, ``(t, (B, 3, H, W))`` in order, then ``(1.0, final last frame)``."""

    frames: torch.Tensor
    trace: list[tuple[float, torch.Tensor]]


class LongDecode(NamedTuple):
    """A long decode: ``video (B, 3, n (1 + k), H, W)`` and the decoded ``windows``, one per chunk
    (``1 + k`` frames; with latent extension ``k + 2`` for every chunk after the first, the
    overlapped frame first)."""

    video: torch.Tensor
    windows: list[torch.Tensor]


class Regen(nn.Module):
    """REGEN tokenizer: ``1 + k`` frames <-> a ``C x 2 x H/8 x W/8`` latent, decoded generatively."""

    def __init__(self, cfg: RegenConfig | None = None):
        super().__init__()
        cfg = cfg or RegenConfig()
        cfg.validate()
        self.cfg = cfg
        levels = len(cfg.enc_multipliers)
        self.encoder = CausalEncoder(
            cfg.enc_channels,
            cfg.enc_multipliers,
            cfg.enc_spatial_down + (False,),
            (True,) * (levels - 1) + (False,),
            cfg.enc_blocks,
            cfg.enc_blocks,
            cfg.latent_channels,
            cfg.norm_groups,
        )
        self.decoder = RegenDiT(cfg)
        self.path = LinearPath()

    # -- geometry
    @property
    def chunk_frames(self) -> int:
        return self.cfg.frames

    def latent_shape(self, size: int | None = None) -> tuple[int, int, int, int]:
        """``(C, 2, H/8, W/8)``: two latent frames per chunk, whatever ``k``."""
        size = size or self.cfg.size
        s = size // self.cfg.space_factor
        return self.cfg.latent_channels, 2, s, s

    def tokens(self, frames: int) -> int:
        """Latent positions for ``frames`` frames cut into consecutive chunks (the last one padded)."""
        _, t, h, w = self.latent_shape()
        return -(-frames // self.chunk_frames) * t * h * w

    def _times(self, extended: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame times ``0..k`` (``-1..k`` extended) and latent times ``0, (k+1)/2`` (``-(k+1)/2`` first
        when extended), in frames from the chunk's first frame."""
        k = self.cfg.k
        frames = torch.arange(-1 if extended else 0, k + 1, device=device, dtype=torch.float64)
        lat = torch.tensor(
            ([-(k + 1) / 2] if extended else []) + [0.0, (k + 1) / 2], device=device, dtype=torch.float64
        )
        return frames, lat

    # -- coding
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video (B, 3, 1 + k, H, W)`` in [-1, 1] -> latent ``(B, C, 2, H/8, W/8)``."""
        cfg = self.cfg
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] != cfg.frames:
            raise ValueError(f"REGEN encodes chunks (B, 3, {cfg.frames}, H, W), got shape {tuple(video.shape)}")
        unit = cfg.space_factor * cfg.latent_patch  # one latent token's side in pixels
        if video.shape[3] % unit or video.shape[4] % unit:
            raise ValueError(f"H, W must be multiples of {unit}, got {tuple(video.shape[3:])}")
        return self.encoder(video)

    def velocity_model(self, latent: torch.Tensor, prev_latent: torch.Tensor | None = None):
        """``v(x_t, t)`` for the chunk with ``latent``; with ``prev_latent`` (the previous chunk's) the
        window is extended to frames ``-1..k`` and the latent by the previous latent frame 1."""
        extended = prev_latent is not None
        if extended:
            latent = torch.cat([prev_latent[:, :, 1:], latent], dim=2)
        frame_times, latent_times = self._times(extended, latent.device)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.decoder(x, t, latent, frame_times, latent_times)

        return velocity

    def loss(
        self,
        video: torch.Tensor,
        generator: torch.Generator | None = None,
        prev_video: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, dict]:
        """Flow-matching loss of the decoder (and, through it, the encoder) on a chunk.

        ``video (B, 3, 1 + k, H, W)`` in [-1, 1]. With ``prev_video`` (the chunk before it), the
        target is the extended window ``[prev_video's last frame, video]``. ``kwargs`` go to
        :func:`sit.transport.training_loss` (``t``, ``x0``, ``t_eps``). Returns its ``(loss, stats)``.
        """
        latent = self.encode(video)
        prev_latent, x1 = None, video
        if prev_video is not None:
            prev_latent = self.encode(prev_video)
            x1 = torch.cat([prev_video[:, :, -1:], video], dim=2)
        return training_loss(
            self.velocity_model(latent, prev_latent), x1, generator=generator, path=self.path, **kwargs
        )

    @torch.no_grad()
    def decode(
        self,
        latent: torch.Tensor,
        steps: int = 1,
        sampler: str = "euler",
        generator: torch.Generator | None = None,
        prev_latent: torch.Tensor | None = None,
        guide: list[tuple[float, torch.Tensor]] | None = None,
    ) -> Decoded:
        """Generate the chunk of ``latent (B, C, 2, h, w)``: frames ``(B, 3, 1 + k, 8h, 8w)``, about [-1, 1].

        ``sampler``: ``"euler"`` (probability-flow ODE, :func:`sit.samplers.ode` with ``steps``
        Euler steps; ``steps = 1`` is the one-step decoder ``x1 = x0 + v(x0, 0)``), another fixed-grid
        ``ode`` method name, or ``"sde"`` (:func:`sit.samplers.euler_maruyama`, ``steps >= 2``
        velocity calls). ``generator`` drives the initial noise (and the SDE's increments).

        Latent extension: ``prev_latent`` extends the window to frames ``-1..k`` (``k + 2`` frames);
        ``guide`` (the previous chunk's :attr:`Decoded.trace`, same sampler and steps) replaces frame
        ``-1`` at every velocity evaluation and at the end.
        """
        extended = prev_latent is not None
        if guide is not None and not extended:
            raise ValueError("guide needs prev_latent: the guided frame exists only in the extended window")
        n_frames = self.cfg.frames + (1 if extended else 0)
        b, _, _, h, w = latent.shape
        sf = self.cfg.space_factor
        noise = randn_like(latent.new_empty(b, 3, n_frames, h * sf, w * sf), generator)
        base = self.velocity_model(latent, prev_latent)
        trace: list[tuple[float, torch.Tensor]] = []

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tf = float(t.reshape(-1)[0])
            if guide is not None:
                i = len(trace)
                if i >= len(guide) - 1 or abs(guide[i][0] - tf) > 1e-6:
                    raise ValueError("guide does not match this sampler's evaluations (same sampler and steps needed)")
                x = x.clone()
                x[:, :, 0] = guide[i][1]
            trace.append((tf, x[:, :, -1].clone()))
            return base(x, t)

        if sampler == "sde":
            out = euler_maruyama(velocity, noise, num_steps=steps, generator=generator, path=self.path)
        elif sampler == "euler" or sampler in FIXED_GRID_METHODS:
            out = ode(velocity, noise, method=sampler, num_steps=steps, path=self.path)
        else:
            raise ValueError(
                f"sampler must be 'sde' or a fixed-grid ODE method ({', '.join(FIXED_GRID_METHODS)}), got {sampler!r}"
            )
        if guide is not None:
            if len(trace) != len(guide) - 1:
                raise ValueError("guide does not match this sampler's evaluations (same sampler and steps needed)")
            out[:, :, 0] = guide[-1][1]
        trace.append((1.0, out[:, :, -1].clone()))
        return Decoded(out, trace)

    @torch.no_grad()
    def decode_long(
        self,
        latents_per_chunk: list[torch.Tensor],
        steps: int = 1,
        extend: bool = True,
        generator: torch.Generator | None = None,
        sampler: str = "euler",
    ) -> LongDecode:
        """Decode consecutive chunks' latents (each ``(B, C, 2, h, w)``) into one video.

        ``extend``: latent extension (module docstring); the overlapped frame of chunk ``c`` equals
        chunk ``c - 1``'s last frame bit for bit and is not repeated in ``video``. Without it every
        chunk is generated on its own and the chunks are concatenated.
        """
        windows, prev = [], None
        for c, latent in enumerate(latents_per_chunk):
            if extend and c > 0:
                res = self.decode(
                    latent, steps, sampler, generator, prev_latent=latents_per_chunk[c - 1], guide=prev.trace
                )
            else:
                res = self.decode(latent, steps, sampler, generator)
            windows.append(res.frames)
            prev = res
        parts = [win if (c == 0 or not extend) else win[:, :, 1:] for c, win in enumerate(windows)]
        return LongDecode(torch.cat(parts, dim=2), windows)

    @torch.no_grad()
    def encode_long(self, video: torch.Tensor) -> list[torch.Tensor]:
        """A long video ``(B, 3, T, H, W)`` -> the latents of its consecutive ``1 + k``-frame chunks;
        the last chunk, if short, is padded at its end by repeating its last frame (ours; a causal
        encoder's latent frame 0 is unaffected, latent frame 1 sees a still ending)."""
        n = self.chunk_frames
        latents = []
        for s in range(0, video.shape[2], n):
            clip = video[:, :, s : s + n]
            if clip.shape[2] < n:
                clip = torch.cat([clip, clip[:, :, -1:].expand(-1, -1, n - clip.shape[2], -1, -1)], dim=2)
            latents.append(self.encode(clip))
        return latents

    @torch.no_grad()
    def reconstruct_long(
        self,
        video: torch.Tensor,
        steps: int = 1,
        extend: bool = True,
        generator: torch.Generator | None = None,
        sampler: str = "euler",
    ) -> torch.Tensor:
        """:meth:`encode_long` then :meth:`decode_long`, cut to the input's ``T`` frames."""
        out = self.decode_long(self.encode_long(video), steps, extend, generator, sampler).video
        return out[:, :, : video.shape[2]]


# ---------------------------------------------------------------------------- analytic count


def analytic_param_count(cfg: RegenConfig) -> dict[str, int]:
    """Parameters from the layout formulas (no modules built): ``encoder``, ``decoder``, ``total``.

    DiT with width ``D``, MLP width ``M = int(D mlp_ratio)``, patch ``p``, latent patch ``lp``:
    patch embedding ``3 p^2 D + D``, latent embedding ``C lp^2 D + D``, type embedding ``2D``,
    timestep MLP ``256 D + D + D^2 + D``, per block ``qkv 3D^2 + 3D, proj D^2 + D, fc1 DM + M,
    fc2 MD + D, adaLN 6D^2 + 6D``, final layer ``adaLN 2D^2 + 2D, linear 3 p^2 D + 3 p^2``.
    """
    levels = len(cfg.enc_multipliers)
    enc = causal_encoder_param_count(
        cfg.enc_channels,
        cfg.enc_multipliers,
        cfg.enc_spatial_down + (False,),
        (True,) * (levels - 1) + (False,),
        cfg.enc_blocks,
        cfg.enc_blocks,
        cfg.latent_channels,
    )
    d, m, p, lp = cfg.hidden, int(cfg.hidden * cfg.mlp_ratio), cfg.patch, cfg.latent_patch
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (6 * d * d + 6 * d)
    dec = (3 * p * p * d + d) + (cfg.latent_channels * lp * lp * d + d) + 2 * d + (256 * d + d + d * d + d)
    dec += cfg.depth * block + (2 * d * d + 2 * d) + (3 * p * p * d + 3 * p * p)
    return {"encoder": enc, "decoder": dec, "total": enc + dec}
