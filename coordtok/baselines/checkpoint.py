"""Loading a trained baseline tokenizer (MAGVIT-v2 or ProMAG) from this project's checkpoints.

A checkpoint of :func:`coordtok.baselines.train.train_baseline` holds the run config (``model:``
is the architecture), the training weights (``model``) and, where the run keeps one, the EMA
(``ema``), which is what evaluation uses.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..checkpoint import CheckpointError, load_any, load_run
from ..config import ConfigError, from_dict
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
    path = Path(path)
    if path.is_dir():
        state, path = load_run(path, None, "baseline tokenizer", map_location)
    else:
        state = load_any(path, map_location)
    kind = state.get("kind")
    if kind not in BASELINE_KINDS:
        raise CheckpointError(f"{path}: not a MAGVIT-v2 or ProMAG checkpoint (kind={kind!r})")
    what, cfg_cls, model_cls = BASELINE_KINDS[kind]
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: the {what} checkpoint has no model config, so the architecture is unknown")
    try:
        cfg = from_dict(cfg_cls, config["model"], f"{path}: model")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    chosen = state.get("ema") if weights == "ema" and state.get("ema") is not None else state.get("model")
    if chosen is None:
        raise CheckpointError(f"{path}: the {what} checkpoint holds no weights")
    model = model_cls(cfg)
    try:
        model.load_state_dict(chosen)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model config stored with them "
                              f"({str(e).strip().splitlines()[-1].strip()})") from None
    return model.eval(), state
