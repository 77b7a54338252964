"""Loading a CoordTok-SiT: this project's checkpoints and the reference implementation's.

:func:`load_sit` is what ``coordtok sample`` and SiT fine-tuning call. A project checkpoint holds
its EMA weights, its config and the latent normalization statistics. A checkpoint of the public
reference implementation (``{"model", "ema", "opt", "args"}``, e.g. the released
``CoordTok_SiT_L_2_UCF101_600K.pt``) is recognised by its keys and converted
(:mod:`sit.reference`); it holds no statistics, so they come from one of three places, in this
order: ``latent_stats`` given by the caller (a ``stats.json`` from ``coordtok encode``, or the
reference run's ``log.txt``), else the ``log.txt`` next to the checkpoint's ``checkpoints/``
folder, else nothing (:func:`require_stats` then names the three ways to get them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from coordtok import checkpoint as ckpt

from .config import SiTRunConfig, load_sit_run_config
from .models import TriplaneSiT
from .reference import convert_sit, is_reference_sit, parse_reference_log
from .stats import LatentStats

HOW_TO_GET_STATS = (
    "pass --latent-stats with the reference run's log.txt (its lines xy_mean ... xt_std), or a "
    "stats.json written by `coordtok encode`, or run `coordtok encode --tokenizer-ckpt <the "
    "tokenizer> --data <your videos> --out DIR` and pass DIR/stats.json"
)


def read_stats(path: str | Path, grid: tuple[int, int, int]) -> LatentStats:
    """Latent statistics from a ``stats.json`` (or its cache folder) or a reference run's ``log.txt``."""
    path = Path(path)
    if path.suffix == ".txt":
        return parse_reference_log(path, grid)
    stats = LatentStats.load(path)
    if stats.grid != tuple(grid):
        raise ckpt.CheckpointError(
            f"{path}: statistics for latent grid {list(stats.grid)}, the SiT generates {list(grid)}"
        )
    return stats


def load_sit(
    path: str | Path,
    map_location="cpu",
    latent_stats: str | Path | None = None,
    heads: int | None = None,
    log=None,
    weights: str = "ema",
) -> tuple[TriplaneSiT, LatentStats | None, dict]:
    """A :class:`TriplaneSiT` in eval mode from a checkpoint file or a run folder (its newest
    readable checkpoint), of this project or of the reference implementation.

    Args:
        latent_stats: a ``stats.json`` or a reference ``log.txt`` that replaces the checkpoint's
            statistics (a project checkpoint's own are used otherwise).
        heads: attention heads of a reference checkpoint whose ``args.model`` does not name them.
        weights: ``"ema"`` (sampling) or ``"model"`` (the raw training weights, for fine-tuning).

    Returns:
        ``(model, stats or None, configs)`` with ``configs = {"sit": SiTRunConfig, "tokenizer":
        the tokenizer config dict the latents came from (or None), "tokenizer_ckpt",
        "tokenizer_fingerprint" (:func:`sit.cache.weights_fingerprint` of that tokenizer, or None), "step",
        "path", "source": "project" | "reference", "info", "ema": the EMA state dict, "model_state":
        the training weights}``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = Path(path)
    if path.is_dir():
        state, path = ckpt.load_run(path, "sit", "CoordTok-SiT", map_location)
        raw = state
    else:
        raw = ckpt.load_any(path, map_location)
    if is_reference_sit(raw):
        model_cfg, ema, model_weights, info = convert_sit(raw, heads=heads, source=str(path))
        log(f"{path}: {info}")
        cfg = SiTRunConfig(model=model_cfg)
        stats = None
        beside = path.parent.parent / "log.txt" if path.parent.name == "checkpoints" else path.parent / "log.txt"
        if latent_stats is None and beside.is_file():
            latent_stats = beside
        configs = {
            "sit": cfg,
            "tokenizer": None,
            "tokenizer_ckpt": None,
            "tokenizer_fingerprint": None,
            "step": 0,
            "path": str(path),
            "source": "reference",
            "info": info,
            "ema": ema,
            "model_state": model_weights if model_weights is not None else ema,
        }
        chosen = ema if weights == "ema" or model_weights is None else model_weights
    else:
        if raw.get("kind") != "sit":
            raise ckpt.CheckpointError(f"{path}: not a CoordTok-SiT checkpoint (kind={raw.get('kind')!r})")
        missing = [k for k in ("ema", "config", "model") if k not in raw]
        if missing:
            raise ckpt.CheckpointError(
                f"{path}: SiT checkpoint without {', '.join(missing)}; it was not written by `coordtok sit-train`"
            )
        cfg = load_sit_run_config(raw["config"])
        stats = LatentStats.from_dict(raw["stats"], f"{path}: stats") if raw.get("stats") else None
        configs = {
            "sit": cfg,
            "tokenizer": raw.get("tokenizer_config"),
            "tokenizer_ckpt": raw.get("tokenizer_ckpt"),
            "tokenizer_fingerprint": raw.get("tokenizer_fingerprint"),
            "step": int(raw.get("step", 0)),
            "path": str(path),
            "source": "project",
            "info": None,
            "ema": raw["ema"],
            "model_state": raw["model"],
        }
        chosen = raw["ema"] if weights == "ema" else raw["model"]
    if latent_stats is not None:
        stats = read_stats(latent_stats, cfg.model.grid)
        log(f"latent statistics from {latent_stats}")
    model = TriplaneSiT(cfg.model)
    try:
        model.load_state_dict(chosen)
    except RuntimeError as e:
        raise ckpt.CheckpointError(
            f"{path}: weights do not fit the SiT config stored with them ({str(e).strip().splitlines()[-1].strip()})"
        ) from None
    model.eval().requires_grad_(False)
    return model, stats, configs


def require_stats(stats: LatentStats | None, sit_ckpt) -> LatentStats:
    """``stats``, or a one-line error naming the three ways to provide them."""
    if stats is None:
        raise ckpt.CheckpointError(
            f"{sit_ckpt}: a reference SiT checkpoint holds no latent normalization statistics; {HOW_TO_GET_STATS}"
        )
    return stats


def to_project_checkpoint(configs: dict, stats: LatentStats | None) -> dict:
    """A SiT loaded by :func:`load_sit` as this project's checkpoint (``coordtok convert``): kind
    ``sit``, config, training and EMA weights, and the statistics when known."""
    return {
        "kind": "sit",
        "version": ckpt.VERSION,
        "step": int(configs["step"]),
        "model": configs["model_state"],
        "ema": configs["ema"],
        "stats": stats.to_dict() if stats else None,
        "config": configs["sit"].to_dict(),
        "source": configs["source"],
        "info": configs["info"],
        "tokenizer_config": configs["tokenizer"],
        "tokenizer_ckpt": configs["tokenizer_ckpt"],
        "tokenizer_fingerprint": configs.get("tokenizer_fingerprint"),
    }
