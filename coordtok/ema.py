"""Exponential moving average of model weights, DiT style.

The EMA model is a ``deepcopy`` of the model with ``requires_grad`` off; after every optimizer
step call ``update_ema(ema_model, model)``. CoordTok-SiT samples with its EMA weights (paper: decay
0.9999); the MAGVIT-v2 baseline evaluates its EMA (0.999).
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn as nn


def create_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to be stepped with :func:`update_ema`."""
    ema_model = deepcopy(model)
    ema_model.requires_grad_(False)
    return ema_model.eval()


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """Step the EMA towards ``model``.

    * trainable parameters: ``ema = decay * ema + (1 - decay) * param``;
    * frozen parameters (``requires_grad`` off in ``model``) and all buffers (e.g. the fixed
      sin-cos positional embedding): copied, so they never drift by rounding.

    ``decay = 0`` copies everything (use it once to initialise the EMA from the model).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    ema_params = dict(ema_model.named_parameters())
    model_params = dict(model.named_parameters())
    if ema_params.keys() != model_params.keys():
        raise KeyError(f"EMA and model parameters differ: {sorted(ema_params.keys() ^ model_params.keys())[:5]}")
    for name, param in model_params.items():
        if param.requires_grad:
            ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)
        else:
            ema_params[name].copy_(param.detach())
    ema_buffers = dict(ema_model.named_buffers())
    for name, buffer in model.named_buffers():
        ema_buffers[name].copy_(buffer)
