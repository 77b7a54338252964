"""Loading a trained baseline tokenizer (MAGVIT-v2 or ProMAG) from this project's checkpoints.

A checkpoint of :func:`baselines.train.train_baseline` holds the run config (``model:``
is the architecture), the training weights (``model``) and, where the run keeps one, the EMA
(``ema``), which is what evaluation uses.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from coordtok.checkpoint import load_model

from .magvit2 import MagvitV2, MagvitV2Config
from .promag import ProMAG, ProMAGConfig

__all__ = ["load_baseline", "BASELINE_KINDS"]

# checkpoint kind -> (what messages call it, config class, model class)
BASELINE_KINDS = {"magvit2": ("MAGVIT-v2", MagvitV2Config, MagvitV2), "promag": ("ProMAG", ProMAGConfig, ProMAG)}


def load_baseline(path: str | Path, map_location="cpu", weights: str = "ema") -> tuple[nn.Module, dict]:
    """A MAGVIT-v2 or ProMAG tokenizer in eval mode from a checkpoint file or a run folder (its
    newest readable checkpoint): ``(model, state)``.

    ``weights``: ``"ema"`` (the EMA where the run keeps one, else the training weights) or
    ``"model"`` (the training weights). One-line :class:`~coordtok.checkpoint.CheckpointError`
    for another kind of checkpoint, a missing config or weights that do not fit it.
    """
    return load_model(path, BASELINE_KINDS, map_location, weights)
