"""One attention function for every transformer in the project.

Backends:

* ``xformers``: ``xformers.ops.memory_efficient_attention`` on CUDA when xformers is installed
  (imported lazily, so the CPU install never needs it);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` everywhere else. On CPU and
  CUDA it dispatches to flash / memory-efficient kernels, so a 32768-coordinate decoder pass
  never holds an ``N x N`` matrix.

Key masks are real masks (boolean, excluded keys get zero weight), never a float added to the
logits.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from einops import rearrange

_BACKEND_ENV = "COORDTOK_ATTENTION"  # auto | sdpa | xformers


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: PLC0415 (optional dependency, imported lazily)
    except Exception:  # ImportError, or a broken binary that fails at import time
        return None
    return xops


def available_backends() -> list[str]:
    out = ["sdpa"]
    if torch.cuda.is_available() and _xformers_ops() is not None:
        out.append("xformers")
    return out


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    backend = backend or os.environ.get(_BACKEND_ENV, "auto")
    if backend not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {backend!r} (auto, sdpa or xformers; env {_BACKEND_ENV})")
    if backend == "auto":
        return "xformers" if device.type == "cuda" and _xformers_ops() is not None else "sdpa"
    if backend == "xformers" and (device.type != "cuda" or _xformers_ops() is None):
        raise RuntimeError("attention backend 'xformers' needs a CUDA device and `pip install xformers`")
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-head scaled dot-product attention.

    Args:
        q: ``(B, Nq, heads, head_dim)``.
        k, v: ``(B, Nk, heads, head_dim)``.
        key_mask: optional ``(B, Nk)`` bool, True where a key may be attended to. Every query
            must see at least one key.
        backend: ``"auto"`` (default; env ``COORDTOK_ATTENTION``), ``"sdpa"`` or ``"xformers"``.

    Returns:
        ``(B, Nq, heads, head_dim)``.
    """
    backend = resolve_backend(q.device, backend)
    if backend == "xformers":
        bias = None
        if key_mask is not None:
            b, nk = key_mask.shape
            heads = q.shape[2]
            # xformers wants a (B, H, Nq, Nk) additive bias; -inf makes the weight exactly zero.
            # Its last dim must be 8-aligned in memory, so allocate padded and slice (a view).
            pad = (nk + 7) // 8 * 8
            full = torch.zeros(b, 1, 1, pad, dtype=q.dtype, device=q.device)
            full[..., :nk].masked_fill_(~key_mask[:, None, None, :], float("-inf"))
            bias = full[..., :nk].expand(b, heads, q.shape[1], nk)
        return _xformers_ops().memory_efficient_attention(q, k, v, attn_bias=bias)

    q, k, v = (rearrange(x, "b n h d -> b h n d") for x in (q, k, v))
    mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads, queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h n d -> b n h d")
