"""Seeds: independent random streams from integers, and the names of every stream the project draws.

A draw is ``mix_seed(seed, ..., tag)``: a pure function of the run's seed, where it happens (step,
position in the global batch) and which stream it is, so a resumed run or a run on N processes
draws exactly what one uninterrupted process draws.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class SeedTag(IntEnum):
    """The streams of :func:`mix_seed`; a draw is ``mix_seed(seed, ..., tag)``. The values are part
    of the checkpoint format (a resumed run must draw what it drew before): never renumber."""

    COORDS = 7  # tokenizer: the coordinates (or stage-2 frames) of a clip
    SIT_NOISE = 11  # SiT training: t and x0 of a latent
    SIT_LOOK = 23  # SiT training: the periodic EMA sample
    SAMPLE_NOISE = 31  # `coordtok sample`: the initial noise of a sample
    SAMPLE_SDE = 37  # `coordtok sample`: the Brownian increments of a batch
    BASELINE = 41  # baseline tokenizers: per-clip randomness (KL sample, quantizer dropout, ...)
    BASELINE_GAN = 43  # baseline tokenizers: discriminator-side randomness
    REGEN = 47  # REGEN decoder training: t and noise of a chunk
    SIT_LABEL_DROP = 53  # SiT training: whether a latent's class label is dropped to the null class
    SAMPLE_LABEL = 59  # `coordtok sample`: the class label drawn for a sample (--classes)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers; stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))
