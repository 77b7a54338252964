"""Activation checkpointing: blocks that recompute their activations in the backward instead of keeping them.

A training step keeps every tensor its backward needs until the backward reaches it. For a
pre-norm transformer block that is about a dozen ``(B, N, D)``-sized tensors (the norms' inputs,
q, k, v, the attention output, the MLP's 4D-wide hidden layer twice); for a conv res block, four
feature maps. With checkpointing a block keeps only its inputs; the backward runs the block's
forward once more to rebuild the rest, one block at a time. Memory for activations drops from the
sum over blocks to (block inputs) + (one block's activations), for about one extra forward
(~1/3 more compute).

:class:`CheckpointedBlock` is the base class of every block that can do this (CoordTok's
transformer blocks, SiT's and REGEN's adaLN blocks, the conv-3D baselines' res blocks);
:func:`set_activation_checkpointing` turns it on for every such block of a model (the trainers do
it from ``train.activation_checkpointing``). It takes effect only in training mode with autograd
on: evaluation and sampling never pay the recomputation.

``torch.utils.checkpoint`` runs with ``use_reentrant=False``: parameters get gradients although
the block's input may not require one, keyword arguments pass through, and the recomputation sees
the same RNG state (``preserve_rng_state``, the default) and the same autocast state as the first
forward. The recomputed forward runs the same kernels on the same inputs, so on a CPU the
gradients are the ones of the plain step bit for bit (tests/test_activation_checkpointing.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


class CheckpointedBlock(nn.Module):
    """An ``nn.Module`` whose call is checkpointed when :attr:`activation_checkpointing` is set,
    the module is in training mode and autograd is recording. Subclasses only define ``forward``."""

    activation_checkpointing: bool = False

    def __call__(self, *args, **kwargs):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


def checkpointed_blocks(model: nn.Module) -> list[CheckpointedBlock]:
    """The outermost :class:`CheckpointedBlock` modules of ``model`` (in ``modules()`` order): the
    units that are recomputed one at a time."""
    blocks: list[CheckpointedBlock] = []
    inside: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, CheckpointedBlock) and not any(name.startswith(p) for p in inside):
            blocks.append(m)
            inside.add(name + ".")
    return blocks


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing on or off for every block of ``model``; returns the number of
    blocks (0: the model has none, and nothing changes)."""
    blocks = checkpointed_blocks(model)
    outermost = {id(b) for b in blocks}
    for m in model.modules():
        if isinstance(m, CheckpointedBlock):
            # (a block inside a checkpointed block is recomputed with it: no checkpoint of its own)
            m.activation_checkpointing = bool(enabled) and id(m) in outermost
    return len(blocks)


__all__ = ["CheckpointedBlock", "checkpointed_blocks", "set_activation_checkpointing"]
