"""Run code "on CUDA" on a CPU-only torch build, to catch device-placement faults without a GPU.

A tensor that the code creates on the CPU inside a CUDA forward (``torch.arange(n)`` without
``device=``, a CPU generator for CUDA noise, a CPU buffer left out of ``.to(device)``) crashes the
first step on a GPU and passes every CPU test. Here every module parameter, buffer and input is
an :class:`OnCuda` tensor: it reports ``device == cuda:0`` (so the code takes its CUDA branches
and makes its new tensors with ``device=x.device`` on "CUDA") but holds a real CPU tensor, so the
step computes real values (``.item()``, ``.tolist()`` and data-dependent checks work, the loss
equals the CPU's). :func:`cuda_on_cpu` intercepts every op: an op that mixes CUDA tensors with a
CPU tensor of one or more dimensions (what CUDA refuses; 0-dim CPU tensors are scalars it accepts),
a CPU generator drawing CUDA numbers, or NumPy of a CUDA tensor raises :class:`DeviceMismatch`.

Why not ``FakeTensorMode`` with ``FakeTensor(mode, meta, cuda)``: fake tensors have no values,
so the models' data-dependent steps (valid-frame checks, coordinate bounds, ``.item()``) raise,
and on a CPU-only build CUDA fake tensors abort the process in autograd and fail in Python-level
indexing (its C++ binding takes a CUDA device guard). Autograd is likewise out of reach here for
the same reason: the steps run under ``no_grad`` (forward and loss; backward places its tensors
where autograd puts them, on the forward's devices).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

CUDA = torch.device("cuda", 0)
# Ops that legitimately take tensors on two devices (copies between them).
_CROSS_DEVICE_OPS = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize"}


class DeviceMismatch(AssertionError):
    """An op that would fail on a GPU: a CPU tensor meets CUDA tensors."""


class OnCuda(torch.Tensor):
    """A real CPU tensor (``elem``) that says it is on ``cuda:0``; only usable in :func:`cuda_on_cpu`."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            device=CUDA,
            requires_grad=False,
        )

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self) -> str:
        return f"OnCuda({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: an OnCuda tensor outside cuda_on_cpu()")


def on_cuda(tree):
    """Tensors (in nested lists/dicts) -> :class:`OnCuda`, detached."""
    return tree_map(
        lambda t: OnCuda(t.detach()) if isinstance(t, torch.Tensor) and not isinstance(t, OnCuda) else t, tree
    )


def module_on_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer of ``module`` -> :class:`OnCuda` (in place; no gradients)."""
    for mod in module.modules():
        for store in (mod._parameters, mod._buffers):
            for name, t in list(store.items()):
                if t is not None and not isinstance(t, OnCuda):
                    store[name] = OnCuda(t.detach())
    return module


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _cpu_generator(kwargs) -> bool:
    g = kwargs.get("generator")
    return g is not None and g.device.type == "cpu"


class _CudaOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        cuda_in, cpu_in = [], []

        def unwrap(t):
            if isinstance(t, OnCuda):
                cuda_in.append(t)
                return t.elem
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                cpu_in.append(t)
            return t

        uargs, ukwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        device = ukwargs.get("device")
        makes_cuda = _is_cuda(device)
        if makes_cuda:
            ukwargs["device"] = torch.device("cpu")
        name = func.overloadpacket.__name__
        if cuda_in and cpu_in and name not in _CROSS_DEVICE_OPS:
            raise DeviceMismatch(f"{func}: a CPU tensor of shape {tuple(cpu_in[0].shape)} meets CUDA tensors")
        if (cuda_in or makes_cuda) and _cpu_generator(kwargs):
            raise DeviceMismatch(f"{func}: a CPU generator draws CUDA numbers")
        out = func(*uargs, **ukwargs)
        cuda_out = makes_cuda or (bool(cuda_in) and (name != "_to_copy" or device is None))
        if not cuda_out:
            return out
        inner = {id(t.elem): t for t in cuda_in}  # in-place ops return their (wrapped) input

        def wrap(t):
            if isinstance(t, torch.Tensor) and not isinstance(t, OnCuda):
                same = inner.get(id(t))
                return OnCuda(t) if same is None else same
            return t

        return tree_map(wrap, out)


_ON_ELEM = {
    torch.Tensor.tolist,
    torch.Tensor.item,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.__repr__,
    torch.Tensor.__format__,
}


class _CudaFunctions(TorchFunctionMode):
    """The Python entry points whose C++ bindings take a CUDA device guard (indexing,
    ``torch.tensor(..., device=cuda)``, ``new_tensor``, ``Tensor.to("cuda")``, Python scalars), which a
    CPU-only build cannot: they run on the CPU tensor inside and the result is wrapped."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], OnCuda):
            out = func(args[0].elem, *tree_map(lambda t: t.elem if isinstance(t, OnCuda) else t, args[1:]))
            return OnCuda(out) if isinstance(out, torch.Tensor) else out
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_cuda(kwargs.get("device")):
            if isinstance(args[0], OnCuda):
                kwargs.pop("device")
                return func(*args, **kwargs)
            kwargs["device"] = torch.device("cpu")
            return OnCuda(func(*args, **kwargs))
        if func is torch.Tensor.to:  # "cuda" -> cuda:0 (resolving the index needs the CUDA runtime)
            args = tuple(CUDA if isinstance(a, str) and _is_cuda(a) else a for a in args)
            if isinstance(kwargs.get("device"), str) and _is_cuda(kwargs["device"]):
                kwargs["device"] = CUDA
        if (
            func is torch.Tensor.new_tensor
            and isinstance(args[0], OnCuda)
            and (kwargs.get("device") is None or _is_cuda(kwargs["device"]))
        ):
            kwargs.pop("device", None)
            return OnCuda(func(args[0].elem, *args[1:], **kwargs))
        if func is torch.Tensor.numpy and isinstance(args[0], OnCuda):
            raise DeviceMismatch("numpy() of a CUDA tensor")
        if func in _ON_ELEM and isinstance(args[0], OnCuda):
            return func(args[0].elem, *args[1:], **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_on_cpu():
    """The block runs with :class:`OnCuda` tensors as CUDA tensors (module docstring), under
    ``no_grad``; inside, ``torch.cuda`` reports one bf16-capable GPU (so ``torch.autocast("cuda")``
    can be entered too)."""
    fakes = {
        "_lazy_init": lambda: None,
        "is_available": lambda: True,
        "current_device": lambda: 0,
        "is_bf16_supported": lambda *a, **k: True,
    }
    saved = {name: getattr(torch.cuda, name) for name in fakes}
    for name, fn in fakes.items():
        setattr(torch.cuda, name, fn)
    try:
        with _CudaFunctions(), _CudaOps(), torch.no_grad():
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.cuda, name, fn)
