"""CoordTok: a 3D-ViT video encoder, a cross-self encoder that writes a factorized triplane, and
a coordinate-based transformer decoder that reconstructs only the patches it is asked for.

Shapes follow the CoordTok paper (section 3, appendix A). For the paper setting (CoordTok-S, 1280 tokens):

* video ``(B, 3, 128, 128, 128)`` in [-1, 1] -> 16 x 8 x 8 = 1024 video tokens (+ CLS);
* 12 learnable query tokens (4 per plane) cross-attend to them -> triplane
  ``xy (B, 8, 16, 16)``, ``yt (B, 8, 32, 16)``, ``xt (B, 8, 32, 16)``;
* a coordinate ``(t, h, w)`` on the 128 x 16 x 16 patch grid -> bilinear triplane features
  (24-d) -> Linear + per-patch positional embedding -> self-attention across every queried
  coordinate of the clip -> a ``3 x 1 x 8 x 8`` RGB patch.

The parameter layout follows the public reference implementation, so parameter counts match
the paper's Table 5 exactly (README; tests/test_model.py); :mod:`coordtok.reference` loads its
checkpoints and, on full-length clips, this model computes what it computes (float32 rounding
apart). Its deliberate differences (README.md, "Differences from the reference implementation
that are deliberate"): the LayerNorm epsilons are configuration (:class:`ModelConfig`
``vit_norm_eps``, ``cross_norm_eps``, ``dec_norm_eps``; the defaults are the reference's), frames
past ``num_frames`` are zeroed and their video tokens excluded from every attention, and the
decoder's positional embedding is read at the integer patch index ``i`` of each axis.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from .activation_checkpointing import CheckpointedBlock
from .attention import attention
from .config import ModelConfig, load_model_config
from .triplane import Triplane

# ---------------------------------------------------------------------------- building blocks


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """``(B, N, D) -> (B, N, D)``, optional key mask ``(B, N)`` (True = attend)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.heads)
        out = attention(q, k, v, key_mask)
        return self.proj(rearrange(out, "b n h d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Queries ``(B, Nq, D)`` attend to a context ``(B, Nk, D)`` with an optional key mask ``(B, Nk)``."""

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b n h d", h=self.heads)
        k, v = rearrange(self.kv(context), "b n (two h d) -> two b n h d", two=2, h=self.heads)
        out = attention(q, k, v, key_mask)
        return self.proj(rearrange(out, "b n h d -> b n (h d)"))


class Block(CheckpointedBlock):
    """Pre-norm transformer block: ``x += Attn(LN(x)); x += MLP(LN(x))`` (checkpointable)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class CrossSelfBlock(CheckpointedBlock):
    """``x += CrossAttn(LN(x), context); x += SelfAttn(LN(x)); x += MLP(LN(x))`` (bias-free attention;
    checkpointable)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, heads, bias=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, qkv_bias=False, proj_bias=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), context, key_mask)
        x = x + self.self_attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


def _conv_as_linear(conv: nn.Conv2d | nn.Conv3d, patches: torch.Tensor) -> torch.Tensor:
    """A kernel == stride convolution applied to pre-cut patches ``(..., C * prod(kernel))``.

    Same parameters and result as the convolution, but one GEMM: on CPU this is several times
    faster than ``conv3d`` (forward and, above all, the weight gradient).
    """
    return F.linear(patches, conv.weight.flatten(1), conv.bias)


# ---------------------------------------------------------------------------- encoder


class VideoEncoder(nn.Module):
    """3D ViT: ``(B, 3, T, H, W)`` -> tokens ``(B, T/pt * H/p * W/p, D)`` and their key mask ``(B, N)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.enc_dim
        self.grid = (cfg.frames // cfg.enc_patch_t, cfg.size // cfg.enc_patch_xy, cfg.size // cfg.enc_patch_xy)
        n = math.prod(self.grid)
        kernel = (cfg.enc_patch_t, cfg.enc_patch_xy, cfg.enc_patch_xy)
        self.patch_embed = nn.Conv3d(3, d, kernel_size=kernel, stride=kernel)
        # The CLS token takes part in attention and is dropped at the end (as the reference).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.enc_heads, cfg.mlp_ratio, qkv_bias=False, eps=cfg.vit_norm_eps) for _ in range(cfg.enc_layers)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.vit_norm_eps)

    def forward(self, video: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        c = self.cfg
        patches = rearrange(
            video,
            "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)",
            pt=c.enc_patch_t,
            ph=c.enc_patch_xy,
            pw=c.enc_patch_xy,
        )
        x = _conv_as_linear(self.patch_embed, patches) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        mask = None
        if token_mask is not None:
            mask = F.pad(token_mask, (1, 0), value=True)  # the CLS token is always valid
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x[:, 1:])


class TriplaneEncoder(nn.Module):
    """Cross-self encoder: learnable triplane queries read the video tokens and become the latent."""

    def __init__(self, cfg: ModelConfig, num_video_tokens: int):
        super().__init__()
        self.cfg = cfg
        d, c = cfg.enc_dim, cfg.latent_channels
        tl, hl, wl = cfg.latent_grid
        pxy, pt = cfg.latent_patch_xy, cfg.latent_patch_t
        self.query_xy = nn.Parameter(torch.randn(1, c, hl, wl))
        self.query_yt = nn.Parameter(torch.randn(1, c, tl, wl))
        self.query_xt = nn.Parameter(torch.randn(1, c, tl, hl))
        self.embed_xy = nn.Conv2d(c, d, kernel_size=(pxy, pxy), stride=(pxy, pxy))
        self.embed_yt = nn.Conv2d(c, d, kernel_size=(pt, pxy), stride=(pt, pxy))
        self.embed_xt = nn.Conv2d(c, d, kernel_size=(pt, pxy), stride=(pt, pxy))
        self.cross_pos_embed = nn.Parameter(torch.zeros(1, num_video_tokens, d))
        self.blocks = nn.ModuleList(
            CrossSelfBlock(d, cfg.enc_heads, cfg.mlp_ratio, eps=cfg.cross_norm_eps) for _ in range(cfg.cross_layers)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.cross_norm_eps)
        self.proj_xy = nn.Linear(d, pxy * pxy * c)
        self.proj_yt = nn.Linear(d, pt * pxy * c)
        self.proj_xt = nn.Linear(d, pt * pxy * c)
        self.num_queries = ((hl // pxy) * (wl // pxy), (tl // pt) * (wl // pxy), (tl // pt) * (hl // pxy))

    def query_tokens(self) -> torch.Tensor:
        """``(1, Q, D)``: the patch-embedded triplane queries (independent of the input clip)."""
        toks = [
            rearrange(embed(q), "1 d r s -> 1 (r s) d")
            for embed, q in (
                (self.embed_xy, self.query_xy),
                (self.embed_yt, self.query_yt),
                (self.embed_xt, self.query_xt),
            )
        ]
        return torch.cat(toks, dim=1)

    def forward(self, video_tokens: torch.Tensor, token_mask: torch.Tensor | None) -> Triplane:
        c = self.cfg
        tl, hl, wl = c.latent_grid
        pxy, pt = c.latent_patch_xy, c.latent_patch_t
        x = self.query_tokens().expand(video_tokens.shape[0], -1, -1).to(video_tokens.dtype)
        context = video_tokens + self.cross_pos_embed
        for blk in self.blocks:
            x = blk(x, context, token_mask)
        x_xy, x_yt, x_xt = torch.split(self.norm(x), self.num_queries, dim=1)
        unpatch = "b (r s) (pr ps c) -> b c (r pr) (s ps)"
        return Triplane(
            rearrange(self.proj_xy(x_xy), unpatch, r=hl // pxy, pr=pxy, ps=pxy),
            rearrange(self.proj_yt(x_yt), unpatch, r=tl // pt, pr=pt, ps=pxy),
            rearrange(self.proj_xt(x_xt), unpatch, r=tl // pt, pr=pt, ps=pxy),
        )


# ---------------------------------------------------------------------------- decoder


class CoordDecoder(nn.Module):
    """Triplane + patch coordinates ``(B, N, 3)`` -> RGB patches ``(B, N, 3, pt, p, p)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dec_dim
        self.patch_grid = cfg.patch_grid
        self.embed = nn.Linear(3 * cfg.latent_channels, d)
        # One learnable embedding per patch of the grid, indexed by integer (t, h, w): no float
        # round trip, so no off-by-one at the grid's edges.
        self.pos_embed = nn.Parameter(torch.randn(*self.patch_grid, d) * d**-0.5)
        self.blocks = nn.ModuleList(
            Block(d, cfg.dec_heads, cfg.mlp_ratio, qkv_bias=True, eps=cfg.dec_norm_eps) for _ in range(cfg.dec_layers)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.dec_norm_eps)
        self.head = nn.Linear(d, cfg.dec_patch_t * cfg.dec_patch_xy**2 * 3)

    def forward(self, triplane: Triplane, coords: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        feats = triplane.sample(coords, self.patch_grid)
        t, h, w = coords.unbind(-1)
        # The fp32 positional embedding makes the residual stream fp32 under autocast (as in the
        # encoders): half-precision features (CUDA autocast samples a half triplane in half) would
        # otherwise make every residual add of the decoder a half-precision one.
        x = self.embed(feats) + self.pos_embed[t, h, w]
        for blk in self.blocks:
            x = blk(x, key_mask)
        x = self.head(self.norm(x))
        c = self.cfg
        return rearrange(x, "b n (pt ph pw c) -> b n c pt ph pw", pt=c.dec_patch_t, ph=c.dec_patch_xy, c=3)


# ---------------------------------------------------------------------------- coordinates and patches


def valid_frame_mask(num_frames: torch.Tensor | None, total: int, batch: int, device) -> torch.Tensor | None:
    """``(B, total)`` bool: True for frames ``< num_frames``; None when every clip is full length."""
    if num_frames is None:
        return None
    num_frames = torch.as_tensor(num_frames, device=device).reshape(-1)
    if num_frames.shape[0] != batch:
        raise ValueError(f"num_frames has {num_frames.shape[0]} entries for a batch of {batch}")
    if bool((num_frames >= total).all()):
        return None
    if bool((num_frames < 1).any()):
        raise ValueError("num_frames must be >= 1 for every clip")
    return torch.arange(total, device=device) < num_frames[:, None]


def frame_coords(frames: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """All patch coordinates of the given patch-frames.

    Args:
        frames: ``(B, F)`` integer patch-frame indices.
        grid: ``(Tp, Hp, Wp)``.
    Returns:
        ``(B, F * Hp * Wp, 3)`` long ``(t, h, w)``, frame-major then row-major.
    """
    _, hp, wp = grid
    b, f = frames.shape
    hh, ww = torch.meshgrid(
        torch.arange(hp, device=frames.device), torch.arange(wp, device=frames.device), indexing="ij"
    )
    t = repeat(frames, "b f -> b f h w", h=hp, w=wp)
    h = repeat(hh, "h w -> b f h w", b=b, f=f)
    w = repeat(ww, "h w -> b f h w", b=b, f=f)
    return rearrange(torch.stack([t, h, w], dim=-1), "b f h w three -> b (f h w) three")


def random_coords(
    valid_frames: torch.Tensor, n: int, grid: tuple[int, int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` distinct random patch coordinates per clip, drawn only from its valid patch-frames.

    Args:
        valid_frames: ``(B,)`` number of valid patch-frames per clip (``Tp`` for a full clip).
    Returns:
        ``(B, n, 3)`` long. A clip with fewer than ``n`` valid patches gets every valid patch
        and the rest drawn again with replacement (uniform over its valid patches).
    """
    _, hp, wp = grid
    per_frame = hp * wp
    out = []
    for nf in valid_frames.tolist():
        total = int(nf) * per_frame
        if total >= n:
            idx = torch.randperm(total, generator=generator)[:n]
        else:
            idx = torch.cat([torch.arange(total), torch.randint(total, (n - total,), generator=generator)])
        out.append(torch.stack([idx // per_frame, (idx // wp) % hp, idx % wp], dim=-1))
    return torch.stack(out).to(valid_frames.device)


def random_frames(valid_frames: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, n)`` distinct random patch-frame indices per clip among its valid ones (sorted)."""
    out = []
    for nf in valid_frames.tolist():
        nf = int(nf)
        idx = (
            torch.randperm(nf, generator=generator)[:n]
            if nf >= n
            else torch.cat([torch.arange(nf), torch.randint(nf, (n - nf,), generator=generator)])
        )
        out.append(idx.sort().values)
    return torch.stack(out).to(valid_frames.device)


def gather_patches(video: torch.Tensor, coords: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Cut the patches at ``coords`` out of ``video``.

    Args:
        video: ``(B, 3, T, H, W)``.
        coords: ``(B, N, 3)`` long patch indices.
        patch: ``(pt, p)``.
    Returns:
        ``(B, N, 3, pt, p, p)``.
    """
    pt, p = patch
    # Split-and-permute only: a view, so only the N requested patches are copied.
    grid = rearrange(video, "b c (t pt) (h ph) (w pw) -> b t h w c pt ph pw", pt=pt, ph=p, pw=p)
    b_idx = torch.arange(video.shape[0], device=video.device)[:, None]
    t, h, w = coords.unbind(-1)
    return grid[b_idx, t, h, w]


def frames_from_patches(patches: torch.Tensor, num_frames: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of cutting all patches of ``num_frames`` patch-frames in :func:`frame_coords` order.

    ``(B, F*Hp*Wp, 3, pt, p, p)`` -> ``(B, 3, F*pt, Hp*p, Wp*p)``.
    """
    _, hp, wp = grid
    return rearrange(patches, "b (f h w) c pt ph pw -> b c (f pt) (h ph) (w pw)", f=num_frames, h=hp, w=wp)


# ---------------------------------------------------------------------------- the tokenizer


class CoordTok(nn.Module):
    """Video ``(B, 3, T, H, W)`` in [-1, 1] <-> :class:`Triplane`, decoded at chosen coordinates."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = config or ModelConfig()
        cfg.validate()
        self.video_encoder = VideoEncoder(cfg)
        self.triplane_encoder = TriplaneEncoder(cfg, math.prod(self.video_encoder.grid))
        self.decoder = CoordDecoder(cfg)
        self.apply(_init_weights)
        # Position embeddings and queries are initialised after apply() so it does not touch them.
        nn.init.trunc_normal_(self.video_encoder.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.video_encoder.cls_token, std=0.02)
        nn.init.trunc_normal_(self.triplane_encoder.cross_pos_embed, std=0.02)

    @classmethod
    def from_config(cls, path_or_dict: str | Path | dict | ModelConfig) -> "CoordTok":
        """Build from a YAML file (its ``model`` section), a dict of model keys or a :class:`ModelConfig`."""
        return cls(load_model_config(path_or_dict))

    # -- shapes
    @property
    def patch_grid(self) -> tuple[int, int, int]:
        return self.config.patch_grid

    @property
    def patch_shape(self) -> tuple[int, int]:
        return self.config.dec_patch_t, self.config.dec_patch_xy

    def valid_patch_frames(self, num_frames: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """``(B,)`` number of patch-frames that hold at least one valid frame."""
        tp = self.patch_grid[0]
        if num_frames is None:
            return torch.full((batch,), tp, dtype=torch.long, device=device)
        nf = torch.as_tensor(num_frames, device=device).reshape(-1).long()
        return torch.clamp((nf + self.config.dec_patch_t - 1) // self.config.dec_patch_t, 1, tp)

    def _check_video(self, video: torch.Tensor, num_frames) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.config
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video (B, 3, T, H, W), got {tuple(video.shape)}")
        b, _, t, h, w = video.shape
        if (h, w) != (c.size, c.size):
            raise ValueError(f"video is {h}x{w} but the model is built for {c.size}x{c.size}")
        if t > c.frames:
            raise ValueError(f"video has {t} frames but the model takes at most {c.frames}")
        if t < c.frames:
            # A shorter tensor is a short clip: pad it and mask the padding.
            nf = torch.full((b,), t, dtype=torch.long, device=video.device)
            num_frames = (
                nf if num_frames is None else torch.minimum(torch.as_tensor(num_frames, device=video.device), nf)
            )
            video = F.pad(video, (0, 0, 0, 0, 0, c.frames - t))
        return video, num_frames

    # -- API
    def encode(self, video: torch.Tensor, num_frames: torch.Tensor | None = None) -> Triplane:
        """Encode clips into triplanes.

        Args:
            video: ``(B, 3, T, H, W)`` in [-1, 1], ``T <= config.frames`` (shorter tensors are padded).
            num_frames: optional ``(B,)`` valid frames per clip. Frames past it never influence
                the result: they are zeroed before the patch embedding and the video tokens made
                only of padding are masked out of every attention.
        """
        video, num_frames = self._check_video(video, num_frames)
        c = self.config
        frame_mask = valid_frame_mask(num_frames, c.frames, video.shape[0], video.device)
        token_mask = None
        if frame_mask is not None:
            video = torch.where(
                frame_mask[:, None, :, None, None], video, torch.zeros((), dtype=video.dtype, device=video.device)
            )
            tt, th, tw = self.video_encoder.grid
            valid_t = torch.arange(tt, device=video.device) * c.enc_patch_t < num_frames.to(video.device)[:, None]
            token_mask = repeat(valid_t, "b t -> b (t h w)", h=th, w=tw)
        tokens = self.video_encoder(video, token_mask)
        return self.triplane_encoder(tokens, token_mask)

    def decode(self, triplane: Triplane, coords: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the patches at ``coords``.

        Args:
            triplane: from :meth:`encode` (or a generator).
            coords: ``(B, N, 3)`` integer patch indices ``(t, h, w)`` on :attr:`patch_grid`.
            key_mask: optional ``(B, N)`` bool; False coordinates are padding that no other
                coordinate attends to (their own outputs are meaningless).
        Returns:
            ``(B, N, 3, pt, p, p)`` patches, nominally in [-1, 1] (no output activation).
        """
        if coords.ndim != 3 or coords.shape[-1] != 3:
            raise ValueError(f"expected coords (B, N, 3), got {tuple(coords.shape)}")
        coords = coords.long()
        limits = torch.tensor(self.patch_grid, device=coords.device)
        # (meta tensors, used to count FLOPs without running, have no values to check)
        if coords.device.type != "meta" and bool(((coords < 0) | (coords >= limits)).any()):
            raise ValueError(f"coords outside the patch grid {self.patch_grid}")
        return self.decoder(triplane, coords, key_mask)

    def forward(
        self, video: torch.Tensor, coords: torch.Tensor, num_frames: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training entry point: ``decode(encode(video, num_frames), coords)``."""
        return self.decode(self.encode(video, num_frames), coords)

    @torch.no_grad()
    def decode_video(
        self, triplane: Triplane, num_frames: torch.Tensor | None = None, frames_per_chunk: int | None = None
    ) -> torch.Tensor:
        """Decode whole clips ``(B, 3, T, H, W)`` from triplanes.

        By default all ``Tp * Hp * Wp`` coordinates (32768 for the paper setting) go through the
        decoder together, as at training time they attend to each other; the attention kernel
        never holds the ``N x N`` matrix. ``frames_per_chunk`` decodes that many frames at a time
        instead, for bounded memory (the result differs slightly: coordinates then attend only
        within their chunk, as in stage-2 training with 16 frames). Frames past ``num_frames``
        are returned as zeros.
        """
        c = self.config
        tp, hp, wp = self.patch_grid
        b = triplane.batch_size
        device = triplane.xy.device
        valid_pf = self.valid_patch_frames(num_frames, b, device)
        chunk = tp if frames_per_chunk is None else max(1, frames_per_chunk // c.dec_patch_t)
        out = []
        for start in range(0, tp, chunk):
            frames = torch.arange(start, min(start + chunk, tp), device=device)
            coords = frame_coords(repeat(frames, "f -> b f", b=b), self.patch_grid)
            key_mask = None
            frame_ok = frames[None, :] < valid_pf[:, None]  # (B, F)
            if not bool(frame_ok.all()):
                # A clip with no valid frame in this chunk attends to everything; its output is zeroed.
                frame_ok = frame_ok | ~frame_ok.any(dim=1, keepdim=True)
                key_mask = repeat(frame_ok, "b f -> b (f h w)", h=hp, w=wp)
            patches = self.decode(triplane, coords, key_mask)
            out.append(frames_from_patches(patches.float(), len(frames), self.patch_grid))
        video = torch.cat(out, dim=2)
        mask = valid_frame_mask(num_frames, c.frames, b, device)
        if mask is not None:
            video = video * mask[:, None, :, None, None]
        return video

    @torch.no_grad()
    def reconstruct(
        self, video: torch.Tensor, num_frames: torch.Tensor | None = None, frames_per_chunk: int | None = None
    ) -> torch.Tensor:
        """``decode_video(encode(video))``: ``(B, 3, T, H, W)`` in, the same shape out."""
        t = video.shape[2]
        if num_frames is None and t < self.config.frames:
            num_frames = torch.full((video.shape[0],), t, dtype=torch.long, device=video.device)
        rec = self.decode_video(self.encode(video, num_frames), num_frames, frames_per_chunk)
        return rec[:, :, :t]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
        # As MAE: initialise a patch embedding like the Linear layer it is.
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
