"""One attention function for every transformer in the project.

Backends:

* ``xformers``: ``xformers.ops.memory_efficient_attention`` on CUDA when xformers is installed
  (imported lazily, so the CPU install never needs it);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` everywhere else. On CPU and
  CUDA it dispatches to flash / memory-efficient kernels, so a 32768-coordinate decoder pass
  never holds an ``N x N`` matrix.

Key masks are real masks (boolean, excluded keys get zero weight), never a float added to the
logits.

An xformers that imports is not yet one that runs: a wheel built for another torch (or CUDA)
imports fine and raises on its first kernel call. So the first time xformers is selected for a
device and dtype it is probed with a tiny forward and backward; if that fails, ``auto`` falls back
to SDPA with one log line saying why, and an explicit ``xformers`` request is a one-line error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch
import torch.nn.functional as F
from einops import rearrange

from .errors import CoordTokError

log = logging.getLogger(__name__)

_BACKEND_ENV = "COORDTOK_ATTENTION"  # auto | sdpa | xformers
XFORMERS_DEVICE_TYPES = ("cuda",)  # device types xformers has kernels for
# (device, dtype) -> None when xformers ran there, else why it cannot (filled by _xformers_failure)
_probed: dict[tuple[str, torch.dtype], str | None] = {}
_memory_efficient_meta = False  # see memory_efficient_on_meta


class AttentionBackendError(CoordTokError, RuntimeError):
    """The attention backend asked for cannot run here."""


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: PLC0415 (optional dependency, imported lazily)
    except Exception:  # ImportError, or a broken binary that fails at import time
        return None
    return xops


def _xformers_failure(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why xformers cannot run on ``device`` in ``dtype`` (None: it can), probed once per pair.

    The probe is one tiny forward and backward of ``memory_efficient_attention``: the first kernel
    call is where a wheel built for another torch or CUDA fails.
    """
    key = (str(device), dtype)
    if key not in _probed:
        xops = _xformers_ops()
        if xops is None:
            return "xformers is not installed (or fails to import)"
        try:
            # Outside any autocast, with autograd on: the caller may be in a no_grad or inference_mode
            # pass, where the probe's backward would fail for a reason of the caller's, not of xformers.
            with torch.inference_mode(False), torch.autocast(device.type, enabled=False), torch.enable_grad():
                q = torch.zeros(1, 8, 1, 16, device=device, dtype=dtype, requires_grad=True)
                xops.memory_efficient_attention(q, q, q).sum().backward()
            _probed[key] = None
        except Exception as e:  # noqa: BLE001 (any failure of the probe means: do not use it)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _probed[key] = f"{type(e).__name__}: {first}" if first else type(e).__name__
            log.warning(
                "attention: xformers cannot run on %s in %s (%s); using PyTorch SDPA instead",
                device,
                str(dtype).replace("torch.", ""),
                _probed[key],
            )
    return _probed[key]


def available_backends(dtype: torch.dtype = torch.float16) -> list[str]:
    """The backends that run on this machine's default device in ``dtype`` (xformers probed)."""
    out = ["sdpa"]
    if (
        torch.cuda.is_available()
        and _xformers_failure(torch.device("cuda", torch.cuda.current_device()), dtype) is None
    ):
        out.append("xformers")
    return out


def resolve_backend(device: torch.device, backend: str | None = None, dtype: torch.dtype = torch.float16) -> str:
    """The backend ``attention`` uses for ``dtype`` tensors on ``device``.

    ``auto``: xformers where it has kernels, is installed and its probe ran (:func:`_xformers_failure`),
    else SDPA. ``xformers`` when it cannot run there is an :class:`AttentionBackendError`.
    """
    backend = backend or os.environ.get(_BACKEND_ENV, "auto")
    if backend not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {backend!r} (auto, sdpa or xformers; env {_BACKEND_ENV})")
    if backend == "sdpa":
        return backend
    supported = device.type in XFORMERS_DEVICE_TYPES
    if backend == "auto":
        # (the probe only where xformers could be chosen: never on a CPU, never without the package)
        usable = supported and _xformers_ops() is not None and _xformers_failure(device, dtype) is None
        return "xformers" if usable else "sdpa"
    if not supported:
        raise AttentionBackendError(
            f"attention backend 'xformers' needs a CUDA device, got {device} (use {_BACKEND_ENV}=auto or sdpa)"
        )
    failure = _xformers_failure(device, dtype)
    if failure is not None:
        raise AttentionBackendError(
            f"attention backend 'xformers' cannot run on {device}: {failure} "
            f"(install an xformers built for torch {torch.__version__}, or use "
            f"{_BACKEND_ENV}=auto or sdpa)"
        )
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
    backend = resolve_backend(q.device, backend, q.dtype)
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
    if _memory_efficient_meta and q.device.type == "meta":
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)[0]
        return rearrange(out, "b h n d -> b n h d")
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h n d -> b n h d")


@contextlib.contextmanager
def memory_efficient_on_meta():
    """Within it, attention on the meta device runs the flash kernel's shape function: autograd then
    saves what the memory-efficient kernels of a GPU (and of a CPU) save -- q, k, v, the output and
    the log-sum-exp -- not the ``N x N`` weights of SDPA's math path, which the meta device otherwise
    takes. For memory accounting (:func:`eval.profile.step_memory_estimate`); FLOP counting keeps the
    math path."""
    global _memory_efficient_meta
    before, _memory_efficient_meta = _memory_efficient_meta, True
    try:
        yield
    finally:
        _memory_efficient_meta = before
