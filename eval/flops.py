"""Exact FLOP counting of CoordTok training steps with ``torch.utils.flop_counter``.

PyTorch's counter has formulas for the CUDA attention kernels but none for the CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``), so on a CPU it silently counts attention as
zero. :func:`counter` adds those formulas, so a count is the same on CPU, CUDA and the meta device
(where SDPA decomposes into matmuls that are counted anyway).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
}


def counter(include_cpu_attention: bool = True) -> FlopCounterMode:
    """A silent ``FlopCounterMode``; with ``include_cpu_attention`` it also counts CPU flash attention."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS if include_cpu_attention else None)


def attention_flops(fc: FlopCounterMode) -> int:
    """FLOPs attributed to attention kernels in a finished count."""
    counts = fc.get_flop_counts()["Global"]
    return int(sum(v for k, v in counts.items() if "attention" in str(k)))
