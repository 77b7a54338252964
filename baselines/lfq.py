"""Lookup-free quantization (LFQ), the MAGVIT-v2 quantizer.

Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation" (ICLR 2024),
section 3.1 and supplement A.2; numerics as in the public reimplementation
github.com/cofe-ai/O2-MAGVIT2 (``modeling/lfq_quantizer.py``, ``src/losses.py``, Apache-2.0).

Each of the ``bits`` latent channels is quantized to its sign, ``q = +1 if z > 0 else -1``; the
token is the bit pattern (channel 0 is the most significant bit), so the implicit codebook is
``{-1, +1}^bits`` (2^18 = 262,144 codes at paper scale) and there is nothing to look up.

Training terms (weights are applied by the caller):

* commitment ``mean((z - sg(q))^2)``;
* entropy ``E_n[H(p_n)] - H(E_n[p_n])`` with ``p_n(c) = softmax_c(-||z_n - c||^2 / 0.01)``: the mean
  per-sample entropy minus the codebook (batch) entropy, over ``groups`` sub-codebooks of
  ``bits / groups`` channels (2 x 2^9 at paper scale): the per-sample term exactly, the codebook
  term as an upper bound (README.md, "The baselines as this project reads their papers").

In float32 with autocast off (the ``1 / temperature`` logits cannot overflow under fp16/bf16).
The codebook entropy is the *global* batch's: the batch-averaged marginals are averaged across
processes (:func:`distributed_mean`, differentiable), so N processes with B clips each compute what
one process with N x B clips does (each process holding the same number of positions).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from einops import rearrange

from .causal import FrameGroupNorm

__all__ = ["LFQ", "lfq_entropy", "distributed_mean", "codebook_usage", "bit_codes"]


def bit_codes(bits: int, device=None) -> torch.Tensor:
    """All ``2^bits`` codes as ``(2^bits, bits)`` float ``+-1``, row ``i`` = the code of index ``i``
    (channel 0 = most significant bit)."""
    idx = torch.arange(2**bits, device=device)
    mask = 2 ** torch.arange(bits - 1, -1, -1, device=device)
    return ((idx[:, None] & mask) != 0).float() * 2 - 1


def _fp32(device: torch.device):
    """Autocast off for ``device`` (a no-op context where autocast does not exist, e.g. meta)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def distributed_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the processes of the default group, differentiable (its gradient
    reaches every process's ``x``); ``x`` itself outside distributed runs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x) / dist.get_world_size()


def lfq_entropy(
    z: torch.Tensor, groups: int, temperature: float, across_processes: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample and codebook entropy (nats) of the LFQ code distribution, factorized.

    ``z (N, bits)``: unquantized latents, one row per position. Returns ``(per_sample, codebook)``,
    two scalars: ``mean_n sum_g H(p_{n,g})`` and ``sum_g H(mean_n p_{n,g})``, where ``p_{n,g}`` is
    the softmax over the ``2^(bits/groups)`` codes ``c`` of sub-codebook ``g`` of
    ``-||z_{n,g} - c||^2 / temperature``. Computed as ``2 z.c / temperature`` (``||z||^2`` and
    ``||c||^2 = bits/groups`` are constant over codes and cancel in the softmax). Float32 at least
    (float64 input stays float64). ``across_processes``: ``mean_n`` of the codebook term runs over
    every process's rows (:func:`distributed_mean`; a collective: every process must call it).
    """
    n, bits = z.shape
    if bits % groups:
        raise ValueError(f"bits ({bits}) must be divisible by groups ({groups})")
    d = bits // groups
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    codes = bit_codes(d, z.device).to(z.dtype)  # (2^d, d)
    zg = rearrange(z, "n (g d) -> g n d", g=groups)
    logits = 2 * torch.einsum("gnd,kd->gnk", zg, codes) / temperature  # (g, N, 2^d)
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    per_sample = -(p * logp).sum(-1).sum(0).mean()
    avg = p.mean(dim=1)  # (g, 2^d)
    if across_processes:
        avg = distributed_mean(avg)
    # -sum avg log avg with log(0) read as log(tiny): the same value (0 * finite = 0), but the
    # gradient of a code nobody uses is finite. (entr(0)'s gradient is -log(0) - 1 = inf, and
    # inf * 0 = NaN: with temperature 0.01 unused codes underflow to exactly 0 all the time.)
    codebook = -(avg * avg.clamp_min(torch.finfo(avg.dtype).tiny).log()).sum()
    return per_sample, codebook


@torch.no_grad()
def codebook_usage(indices: torch.Tensor, bits: int) -> tuple[float, float]:
    """``(fraction of the 2^bits codes that occur in indices, perplexity)`` of a batch of tokens.

    Perplexity is ``exp(H)`` of the empirical token histogram: the effective number of codes used
    (1 when every position has the same token, ``N`` when ``N`` positions all differ).
    """
    _, counts = torch.unique(indices.reshape(-1), return_counts=True)
    p = counts.double() / counts.sum()
    return counts.numel() / 2**bits, float(torch.exp(-(p * p.log()).sum()))


class LFQ(nn.Module):
    """Lookup-free quantizer.

    ``forward(z (B, bits, T, H, W)) -> (q, indices, aux)``:

    * ``q (B, bits, T, H, W)`` in ``{-1, +1}`` exactly, with a straight-through gradient
      (``dq/dz = 1``), in ``z``'s dtype;
    * ``indices (B, T, H, W)`` long in ``[0, 2^bits)``;
    * ``aux``: ``commitment``, ``entropy`` (= ``per_sample_entropy - codebook_entropy``),
      ``per_sample_entropy``, ``codebook_entropy`` (float32 scalar tensors, differentiable),
      ``codebook_use`` and ``perplexity`` (Python floats, see :func:`codebook_usage`).

    ``pre_norm=True`` puts a per-frame GroupNorm without affine, one group per channel, before the
    sign: every bit gets zero mean over each frame, so about half its positions are +1. That is
    our choice of "a GroupNorm before the quantizer" (public LFQ code reports it helps codebook
    use); it has no parameters and stays causal.
    """

    def __init__(self, bits: int, entropy_groups: int = 2, temperature: float = 0.01, pre_norm: bool = False):
        super().__init__()
        if bits % entropy_groups:
            raise ValueError(f"bits ({bits}) must be divisible by entropy_groups ({entropy_groups})")
        self.bits, self.entropy_groups, self.temperature = bits, entropy_groups, temperature
        self.pre_norm = FrameGroupNorm(bits, bits, affine=False) if pre_norm else None
        self.register_buffer("mask", 2 ** torch.arange(bits - 1, -1, -1), persistent=False)

    @property
    def codebook_size(self) -> int:
        return 2**self.bits

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, bits, ...)`` codes (any reals: positive = bit 1) -> ``(B, ...)`` long indices."""
        bits = (codes > 0).long()
        mask = self.mask.view(1, -1, *([1] * (codes.ndim - 2)))
        return (bits * mask).sum(1)

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(B, ...)`` long indices -> ``(B, bits, ...)`` codes in ``{-1, +1}``."""
        mask = self.mask.view(1, -1, *([1] * (indices.ndim - 1)))
        return ((indices.unsqueeze(1) & mask) != 0).to(dtype) * 2 - 1

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if z.shape[1] != self.bits:
            raise ValueError(f"LFQ expects {self.bits} channels, got shape {tuple(z.shape)}")
        with _fp32(z.device):
            z32 = z.float()
            if self.pre_norm is not None:
                z32 = self.pre_norm(z32)
            q = torch.where(z32 > 0, 1.0, -1.0).to(z32.dtype)
            # q + (z - sg(z)) is exactly q in value (z - z == 0) with gradient 1 w.r.t. z.
            q_st = q + (z32 - z32.detach())
            indices = self.codes_to_indices(q)
            commitment = (z32 - q).pow(2).mean()
            # Global-batch codebook entropy in training only: every process runs each training
            # forward, while evaluation may give processes different numbers of clips.
            per_sample, codebook = lfq_entropy(
                rearrange(z32, "b c ... -> (b ...) c"),
                self.entropy_groups,
                self.temperature,
                across_processes=self.training and torch.is_grad_enabled(),
            )
        # (meta tensors, used to count FLOPs without running, have no values to count)
        use, perplexity = (
            (float("nan"), float("nan")) if indices.device.type == "meta" else codebook_usage(indices, self.bits)
        )
        aux = {
            "commitment": commitment,
            "entropy": per_sample - codebook,
            "per_sample_entropy": per_sample,
            "codebook_entropy": codebook,
            "codebook_use": use,
            "perplexity": perplexity,
        }
        return q_st.to(z.dtype), indices, aux
