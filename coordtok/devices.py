"""Devices and numeric precision: which device a command runs on, and in which precision.

Training resolves ``train.mixed_precision`` (:func:`resolve_precision`), the inference commands
``--precision`` (:func:`resolve_inference_precision`, applied by :func:`inference_precision`);
both depend on what the device supports (:func:`cpu_info` for a CPU's bf16 instructions).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

from .config import ConfigError


@functools.lru_cache(maxsize=1)
def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU model and the instruction sets that decide CPU precision and speed, read from
    ``cpuinfo`` (Linux's ``/proc/cpuinfo`` layout; elsewhere only the platform's name)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")
    return {
        "model": model,
        "instruction_sets": [w for w in wanted if w in flags],
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
    }


def resolve_precision(requested: str, device_type: str, log=None, option: str = "train.mixed_precision") -> str:
    """The mixed precision a run uses: ``"no"``, ``"fp16"`` or ``"bf16"``.

    ``auto``: on CUDA bf16 where the GPU supports it, else fp16; on a CPU bf16 autocast only with
    native bf16 instructions (avx512_bf16 or AMX: 1.6x faster than fp32 there), fp32 otherwise
    (emulated bf16 is ~3.5x slower than fp32). fp16 on a CPU falls back to fp32. ``option`` names
    the setting in the notes and errors.
    """
    log = log or (lambda msg: None)
    cuda = device_type == "cuda"
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_info()["native_bf16"] else "no"
    if requested == "fp16" and not cuda:
        log(f"note: {option}=fp16 needs a GPU; fp32 on the CPU")
        return "no"
    if requested == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{option}=bf16: this GPU does not support bf16; use fp16 or auto")
        if not cuda and not cpu_info()["native_bf16"]:
            log(
                "note: this CPU has no native bf16 (avx512_bf16/AMX): bf16 autocast is emulated and slower "
                f"than fp32; {option}=auto would pick fp32"
            )
    return requested


INFERENCE_PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


def resolve_inference_precision(requested: str, device_type: str, config_says: str | None = None, log=None) -> str:
    """The precision of an inference command (``sample``, ``encode``, ``eval-recon``, ``eval-fvd``):
    ``"fp32"``, ``"tf32"`` (fp32 tensors, TF32 matmuls and convolutions; CUDA only), ``"bf16"`` or
    ``"fp16"`` (autocast, with TF32 for what autocast keeps in fp32).

    ``auto``: bf16 on a CUDA GPU with bf16 when ``config_says`` so (the ``mixed_precision`` the
    model was trained with), else TF32 on CUDA and fp32 on a CPU (CPU results stay exact). bf16
    and fp16 are checked by :func:`resolve_precision` (fp16 on a CPU falls back to fp32).
    """
    if requested not in INFERENCE_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {requested!r}")
    log = log or (lambda msg: None)
    cuda = device_type == "cuda"
    if requested == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if config_says == "bf16" and torch.cuda.is_bf16_supported() else "tf32"
    if requested == "tf32" and not cuda:
        log("note: --precision tf32 is a CUDA matmul mode; fp32 on the CPU")
        return "fp32"
    if requested in ("bf16", "fp16"):
        mixed = resolve_precision(requested, device_type, log, "--precision")
        return "fp32" if mixed == "no" else mixed
    return requested


@contextlib.contextmanager
def inference_precision(precision: str, device_type: str):
    """Run the block in ``precision`` (:func:`resolve_inference_precision`'s answer) on
    ``device_type``: on CUDA TF32 matmuls and convolutions on for everything but ``fp32`` (off
    for ``fp32``: a user asking for fp32 gets it whatever was set before), restored afterwards;
    autocast for ``bf16`` / ``fp16``."""
    with contextlib.ExitStack() as stack:
        if device_type == "cuda":
            saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            stack.callback(_set_tf32, *saved)
            _set_tf32(precision != "fp32", precision != "fp32")
        if precision in ("bf16", "fp16"):
            stack.enter_context(
                torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
            )
        yield


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` (default: ``cuda`` when available, else ``cpu``), checked: asking for a GPU that
    is not there is a one-line error, not a traceback from deep inside torch."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: no CUDA GPU is available here (torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type not in ("cpu", "meta") and dev.type != "mps":
        raise ConfigError(f"--device {device}: unsupported device type {dev.type!r} (cpu or cuda)")
    return dev
