"""Shared, session-cached artefacts for the latent-cache / SiT tests: a 3-step tiny tokenizer
and a small latent cache encoded with it (built once per test session, whichever test asks first)."""

from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_CONFIG = ROOT / "configs" / "tokenizer" / "tiny.yaml"
SIT_CONFIG = ROOT / "configs" / "sit" / "tiny.yaml"
# bikes, frames [0, 140): 13 possible 128-frame windows, so K random windows differ.
DATA = {"kind": "samples", "names": ["bikes"], "frame_range": [0, 140], "num_workers": 0}  # a DataConfig's keys
CLIPS_PER_VIDEO, SHARD_SIZE = 5, 2  # 5 latents in shards of 2, 2, 1


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(root: str) -> Path:
    """A tiny CoordTok checkpoint after 3 training steps (weights are what matters, not quality)."""
    from coordtok.config import load_tokenizer_config
    from coordtok.train import train

    out = Path(root) / "tokenizer"
    cfg = load_tokenizer_config(
        TOKENIZER_CONFIG,
        {
            "train": {
                "max_steps": 3,
                "out_dir": str(out),
                "batch_size": 2,
                "num_coords": 256,
                "log_every": 1,
                "ckpt_every": 3,
                "val_every": 10**9,
                "keep_checkpoints": 1,
                "mixed_precision": "no",
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )
    train(cfg, progress=False)
    return out / "ckpt-0000003.pt"


@functools.lru_cache(maxsize=None)
def tiny_cache(root: str) -> Path:
    """Latents of ``CLIPS_PER_VIDEO`` random windows of bikes, encoded with :func:`tiny_tokenizer`."""
    from coordtok.config import DataConfig
    from sit.encode import encode_dataset

    out = Path(root) / "latents"
    encode_dataset(
        tiny_tokenizer(root),
        DataConfig(**DATA),
        out,
        clips_per_video=CLIPS_PER_VIDEO,
        seed=0,
        shard_size=SHARD_SIZE,
        batch_size=2,
        progress=False,
    )
    return out
