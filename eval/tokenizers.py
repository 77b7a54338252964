"""Every tokenizer the project has, as the evaluation sees it: a clip in, its reconstruction out.

:func:`load_reconstructor` reads a checkpoint of any kind (CoordTok, also the reference
implementation's files; the conv-3D baselines MAGVIT-v2, ProMAG, REGEN) and returns a
:class:`Reconstructor`. The 128-frame protocol of the CoordTok paper (appendix C.1) is built in:

* CoordTok encodes the whole clip at once and decodes every coordinate;
* a chunk tokenizer cuts the clip into the windows it can take (causal 1 + 16 frames overlapping
  by one frame, the duplicate dropped; ProMAG's 17-frame chunks overlapping by 4 frames with
  linear blending; REGEN's chunks with or without latent extension), reconstructs each and stitches
  them (:func:`coordtok.baselines.chunking.reconstruct_chunked`).

Each reports the token count it spent on the clip and the frames where its chunks meet, for the
seam measure (:mod:`eval.seams`). A tokenizer without chunks reports the boundaries a 17-frame
causal tokenizer would have, so seam numbers compare the same frame pairs.
"""
from __future__ import annotations

import abc
from pathlib import Path

import torch

from coordtok.baselines.chunking import chunk_boundaries
from coordtok.checkpoint import CheckpointError, load_any, load_run, load_tokenizer
from coordtok.model import CoordTok


class Reconstructor(abc.ABC):
    """A trained tokenizer with the evaluation protocol that suits it."""

    name: str  # e.g. "CoordTok (1280 tokens)", "MAGVIT-v2, 17-frame causal chunks"
    size: int  # frame side the model takes
    max_frames: int | None  # longest clip it takes (None: any length, by chunks)
    default_frames: int  # the clip length evaluated by default

    @abc.abstractmethod
    def tokens(self, frames: int) -> int:
        """Latent positions (tokens) spent on a clip of ``frames`` frames."""

    @abc.abstractmethod
    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """``video`` ``(B, 3, T, H, W)`` in [-1, 1] -> ``(reconstruction clamped to [-1, 1], chunk
        boundaries)``: frame indices where a new chunk's own frames start."""

    @abc.abstractmethod
    def to(self, device) -> "Reconstructor":
        ...

    def check_frames(self, frames: int) -> None:
        from coordtok.config import ConfigError

        if frames < 2:
            raise ConfigError(f"--frames {frames}: a clip needs at least 2 frames")
        if self.max_frames is not None and frames > self.max_frames:
            raise ConfigError(f"--frames {frames}: {self.name} is built for clips of at most {self.max_frames} "
                              f"frames")


class CoordTokReconstructor(Reconstructor):
    """CoordTok: the whole clip at once (shorter clips are masked), every coordinate decoded."""

    def __init__(self, model: CoordTok, frames_per_chunk: int | None = None):
        self.model = model.eval()
        c = model.config
        self.name = f"CoordTok ({c.num_latent_tokens} tokens)"
        self.size, self.max_frames, self.default_frames = c.size, c.frames, c.frames
        self.frames_per_chunk = frames_per_chunk

    def tokens(self, frames: int) -> int:
        return self.model.config.num_latent_tokens

    @torch.no_grad()
    def reconstruct(self, video):
        rec = self.model.reconstruct(video, frames_per_chunk=self.frames_per_chunk).clamp(-1, 1)
        return rec, chunk_boundaries(video.shape[2]) if video.shape[2] > 17 else []

    def to(self, device):
        self.model.to(device)
        return self


def checkpoint_kind(path: str | Path) -> str:
    """The kind of model a checkpoint (file or run folder) holds: ``coordtok`` (also the
    reference's files), ``sit``, or a baseline's kind."""
    from coordtok.reference import is_reference_coordtok

    path = Path(path)
    state = load_run(path, None, "checkpoint")[0] if path.is_dir() else load_any(path)
    if is_reference_coordtok(state):
        return "coordtok"
    kind = state.get("kind")
    if not kind:
        raise CheckpointError(f"{path}: not a checkpoint of this project or of the reference CoordTok")
    return kind


def load_reconstructor(path: str | Path, frames_per_chunk: int | None = None, **options) -> Reconstructor:
    """The tokenizer in checkpoint ``path`` (file or run folder) as a :class:`Reconstructor`.

    ``options`` are the chunk tokenizers' protocol switches (``blend`` for ProMAG, ``extend`` and
    ``steps`` for REGEN); ``frames_per_chunk`` is CoordTok's bounded-memory decoding.
    """
    kind = checkpoint_kind(path)
    if kind == "coordtok":
        model, _ = load_tokenizer(path)
        return CoordTokReconstructor(model, frames_per_chunk)
    from .baseline_tokenizers import load_baseline_reconstructor

    return load_baseline_reconstructor(path, kind, **options)
