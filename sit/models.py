"""CoordTok-SiT: a Scalable Interpolant Transformer over triplane latents.

One readable file of blocks, in the style of DiT/SiT ``models.py``:

* :class:`TimestepEmbedder`, :class:`LabelEmbedder` -- the conditioning vector ``c``;
* :class:`Attention`, :class:`Mlp`, :class:`SiTBlock` -- adaLN-Zero transformer blocks;
* :class:`FinalLayer` -- adaLN modulation + linear back to patches;
* :class:`TriplaneSiT` -- per-plane patch embedding, one token sequence over the three planes,
  per-plane final layers;
* :class:`SiTConfig` (and the ``train:``/``sample:`` sections :class:`SiTTrainConfig`,
  :class:`SampleConfig`) -- plain dataclasses read strictly from YAML, defined in
  :mod:`sit.config` and re-exported here.

The parameter names (``x_embedder_xy.proj``, ``pos_embed_t``, ``type_embed``,
``blocks.N.attn.qkv``, ``final_layer_xy.linear``, ...) follow the public reference so that a
reference checkpoint maps onto this model key for key (with ``learn_sigma: true``).

The mapping between the triplane and tokens lives only here, through :class:`Triplane`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from coordtok.activation_checkpointing import CheckpointedBlock
from coordtok.attention import attention
from coordtok.triplane import Triplane

from .config import SiTConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation. ``x`` ``(B, N, D)``; ``shift, scale`` ``(B, D)``."""
    return x * (1 + rearrange(scale, "b d -> b 1 d")) + rearrange(shift, "b d -> b 1 d")


#################################################################################
#               Embedding layers for timesteps and class labels                 #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Scalar time ``t`` ``(B,)`` in [0, 1] -> ``(B, hidden)``: 256-d sinusoidal features -> MLP.

    As in SiT, the continuous ``t`` in [0, 1] is fed to the sinusoid directly (no x1000).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """``t`` ``(B,)`` (may be fractional) -> ``(B, dim)`` features ``[cos(t f), sin(t f)]``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = rearrange(t.float(), "b -> b 1") * rearrange(freqs, "f -> 1 f")
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label ``(B,)`` long -> ``(B, hidden)``.

    ``num_classes == 1``: unconditional (the paper's CoordTok-SiT): one row, no null class, the
    reference checkpoints' layout. ``num_classes > 1``: one more row, the learned null class
    (index ``num_classes``) that label dropout trains and classifier-free guidance conditions on.
    The dropout itself is drawn by the trainer (from per-item seeded generators, so resumed and
    multi-process runs drop the same labels) and passed as ``drop``.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.null_class = num_classes if num_classes > 1 else None
        self.embedding_table = nn.Embedding(num_classes + (num_classes > 1), hidden_size)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` ``(B,)`` in ``[0, num_classes]`` (``num_classes``: the null class);
        ``drop`` ``(B,)`` bool: these labels become the null class."""
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.embedding_table(labels)


#################################################################################
#                                 Core SiT blocks                               #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention (timm layout: ``qkv``, ``proj``). ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.num_heads)
        out = attention(q, k, v)  # (B, N, heads, head_dim): xformers on CUDA when installed, else SDPA
        return self.proj(rearrange(out, "b n h d -> b n (h d)"))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm layout: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(CheckpointedBlock):
    """A SiT block with adaptive layer norm zero (adaLN-Zero) conditioning (checkpointable: SiT and
    REGEN's DiT).

    ``x`` ``(B, N, D)``, ``c`` ``(B, D)`` -> ``(B, N, D)``. Six modulation chunks: shift, scale
    and gate for the attention branch and for the MLP branch. The gates are zero at init, so
    every block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + rearrange(gate_msa, "b d -> b 1 d") * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + rearrange(gate_mlp, "b d -> b 1 d") * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear: ``(B, N, D) -> (B, N, patch * patch * out_channels)``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """One plane ``(B, C, R, S)`` -> tokens ``(B, (R/p)(S/p), D)`` in row-major patch order."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, plane: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(plane), "b d r s -> b (r s) d")


#################################################################################
#                                 TriplaneSiT                                   #
#################################################################################


class TriplaneSiT(nn.Module):
    """SiT over a triplane latent (velocity prediction; unconditional, or class-conditional with a
    null class for classifier-free guidance when ``num_classes > 1``).

    Each plane is patch-embedded by its own Conv2d (kernel = stride = patch); the three token
    sets are concatenated into one sequence ``[xy | yt | xt]`` (64 + 128 + 128 = 320 tokens for
    the 1280-position triplane with patch 2). Positional information:

    * xy tokens: fixed 2D sin-cos embedding over the ``(Hl/p, Wl/p)`` patch grid (a buffer);
    * yt and xt tokens: one learnable embedding over the ``(Tl/p, Wl/p)`` grid, shared by both
      (hence ``Hl == Wl``);
    * every token: a learnable plane-type embedding (3 x hidden).

    Each plane's tokens go through its own adaLN :class:`FinalLayer` and are unpatchified back
    to the plane.
    """

    def __init__(self, config: SiTConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = SiTConfig(**overrides)
        elif overrides:
            config = SiTConfig(**{**config.__dict__, **overrides})
        self.config = config
        hidden, p = config.hidden, config.patch
        tl, hl, wl = config.grid
        self.grid = config.grid
        self.in_channels = config.channels
        self.out_channels = config.channels * 2 if config.learn_sigma else config.channels
        self.patch_size = p
        self.num_heads = config.heads
        # Patch grids of the three planes, (rows, cols) as in the Triplane docstring.
        self.plane_patch_grids = {"xy": (hl // p, wl // p), "yt": (tl // p, wl // p), "xt": (tl // p, hl // p)}
        self.plane_num_tokens = {k: r * s for k, (r, s) in self.plane_patch_grids.items()}

        self.x_embedder_xy = PatchEmbed(config.channels, hidden, p)
        self.x_embedder_yt = PatchEmbed(config.channels, hidden, p)
        self.x_embedder_xt = PatchEmbed(config.channels, hidden, p)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(config.num_classes, hidden)
        # Fixed sin-cos embedding: a buffer (not a parameter), so it is neither trained nor
        # averaged by the EMA; the name matches the reference's frozen parameter.
        self.register_buffer("pos_embed_xy", torch.zeros(1, self.plane_num_tokens["xy"], hidden), persistent=True)
        self.pos_embed_t = nn.Parameter(torch.zeros(1, self.plane_num_tokens["yt"], hidden))
        self.type_embed = nn.Parameter(torch.zeros(1, 3, hidden))

        self.blocks = nn.ModuleList([SiTBlock(hidden, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer_xy = FinalLayer(hidden, p, self.out_channels)
        self.final_layer_yt = FinalLayer(hidden, p, self.out_channels)
        self.final_layer_xt = FinalLayer(hidden, p, self.out_channels)
        self.initialize_weights()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, path_or_dict: str | Path | dict | SiTConfig) -> "TriplaneSiT":
        """Build from a YAML file (its ``model:`` section), a dict (a whole config with a
        ``model`` key, or the model section itself) or a :class:`SiTConfig`."""
        if isinstance(path_or_dict, SiTConfig):
            config = path_or_dict
        elif isinstance(path_or_dict, dict):
            section = path_or_dict["model"] if "model" in path_or_dict else path_or_dict
            config = SiTConfig.from_dict(section)
        else:
            config = SiTConfig.from_yaml(path_or_dict)
        return cls(config)

    def initialize_weights(self):
        """DiT/SiT initialisation; adaLN-Zero: every block's modulation and the final layers are
        zero, so the network outputs exactly zero at init."""

        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        rows, cols = self.plane_patch_grids["xy"]
        with torch.no_grad():
            self.pos_embed_xy.copy_(rearrange(sincos_2d(self.config.hidden, rows, cols), "n d -> 1 n d"))
        # Learned embeddings: small random (breaks the symmetry between yt/xt positions at once;
        # the reference starts pos_embed_t at zero and type_embed at N(0, 1)).
        nn.init.normal_(self.pos_embed_t, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)
        # Patch embedding like nn.Linear (not the Conv2d default).
        for embedder in (self.x_embedder_xy, self.x_embedder_yt, self.x_embedder_xt):
            w = embedder.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for final_layer in (self.final_layer_xy, self.final_layer_yt, self.final_layer_xt):
            nn.init.zeros_(final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(final_layer.adaLN_modulation[-1].bias)
            nn.init.zeros_(final_layer.linear.weight)
            nn.init.zeros_(final_layer.linear.bias)

    # ------------------------------------------------------------------ forward
    def unpatchify(self, tokens: torch.Tensor, plane: str) -> torch.Tensor:
        """``(B, (R/p)(S/p), p*p*out_channels)`` -> ``(B, out_channels, R, S)`` for ``plane``."""
        rows, _ = self.plane_patch_grids[plane]
        p = self.patch_size
        return rearrange(tokens, "b (r s) (p q c) -> b c (r p) (s q)", r=rows, p=p, q=p)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> int | None:
        """The label of the learned null class (``num_classes``), None for an unconditional SiT."""
        return self.y_embedder.null_class

    def forward(
        self,
        x: Triplane | torch.Tensor,
        t: torch.Tensor | float,
        y: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> Triplane | torch.Tensor:
        """Velocity prediction.

        Args:
            x: a :class:`Triplane` (planes ``(B, C, Hl, Wl)``, ``(B, C, Tl, Wl)``,
                ``(B, C, Tl, Hl)``) or its flat form ``(B, Hl*Wl + Tl*Wl + Tl*Hl, C)``.
            t: ``(B,)`` times in [0, 1] (a float or 0-d tensor is broadcast over the batch).
            y: ``(B,)`` class labels in ``[0, num_classes]`` (``num_classes``: the null class);
                ``None`` means class 0 of an unconditional SiT, the null class of a conditional one.
            drop: ``(B,)`` bool, labels to replace by the null class (label dropout in training).

        Returns:
            The velocity, of the same kind and shape as ``x``.
        """
        flat = isinstance(x, torch.Tensor)
        triplane = Triplane.unflatten(x, self.grid) if flat else x
        if triplane.grid != self.grid or triplane.channels != self.in_channels:
            raise ValueError(
                f"model expects grid {self.grid} with {self.in_channels} channels, "
                f"got grid {triplane.grid} with {triplane.channels} channels"
            )
        batch = triplane.batch_size
        device = triplane.xy.device
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if y is None:
            y = torch.full((batch,), self.null_class or 0, dtype=torch.long, device=device)
        elif self.null_class is None and bool((y != 0).any()):
            raise ValueError(f"an unconditional SiT takes label 0 only, got labels {y.unique().tolist()}")

        tokens = torch.cat(
            [
                self.x_embedder_xy(triplane.xy) + self.pos_embed_xy + self.type_embed[:, 0:1],
                self.x_embedder_yt(triplane.yt) + self.pos_embed_t + self.type_embed[:, 1:2],
                self.x_embedder_xt(triplane.xt) + self.pos_embed_t + self.type_embed[:, 2:3],
            ],
            dim=1,
        )  # (B, N_xy + N_yt + N_xt, D)
        c = self.t_embedder(t) + self.y_embedder(y, drop)  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, c)

        n = self.plane_num_tokens
        tok_xy, tok_yt, tok_xt = torch.split(tokens, [n["xy"], n["yt"], n["xt"]], dim=1)
        out = Triplane(
            self.unpatchify(self.final_layer_xy(tok_xy, c), "xy"),
            self.unpatchify(self.final_layer_yt(tok_yt, c), "yt"),
            self.unpatchify(self.final_layer_xt(tok_xt, c), "xt"),
        )
        if self.config.learn_sigma:
            # The learned-sigma half is unused by velocity prediction (kept for checkpoint layout).
            out = out.map(lambda plane: plane[:, : self.in_channels])
        return out.flatten() if flat else out

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


#################################################################################
#                       Sine/cosine positional embedding                        #
#################################################################################


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``pos`` ``(M,)`` -> ``(M, embed_dim)`` = ``[sin(pos w), cos(pos w)]``, w = 1e4^(-i/(D/2))."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2))
    out = rearrange(pos.double(), "m -> m 1") * rearrange(omega, "d -> 1 d")
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2D sin-cos embedding ``(rows * cols, embed_dim)`` for a row-major token grid.

    The first half of the channels encodes the column index and the second half the row index
    (the MAE/DiT convention, kept so reference checkpoints see the same embedding).
    """
    r, s = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, s.flatten()), sincos_1d(embed_dim // 2, r.flatten())], dim=1)
    return emb.float()
