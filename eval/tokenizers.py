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

from coordtok.baselines.chunking import chunk_boundaries, chunk_windows, reconstruct_chunked
from coordtok.checkpoint import CheckpointError, load_any, load_run, load_tokenizer
from coordtok.config import ConfigError
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


# ---------------------------------------------------------------------------- the conv-3D baselines
# Each cuts a long clip into the chunks it was trained on, reconstructs them and stitches them back
# the way its paper does:
# * MAGVIT-v2: causal 1 + 16 frame windows overlapping by one frame, the duplicate dropped (CoordTok
#   appendix C.1): 8 windows and 8 x 5 x 16 x 16 = 10,240 tokens for 128 frames at 128^2.
# * ProMAG: 17-frame chunks overlapping by 4 frames, the overlap blended linearly in pixel space
#   (blend="linear", the paper's); blend="drop" takes MAGVIT-v2's windows instead, to show what
#   blending buys.
# * REGEN: consecutive 1 + k frame chunks decoded by its diffusion decoder, with latent extension (one
#   overlapping frame guided by the previous chunk's stored sampling states, the paper's) or without
#   (extend=False); `steps` sampling steps (1: one-step decoding).
# Every reconstruction is clamped to [-1, 1] (the decoders have no output activation).


class MagvitReconstructor(Reconstructor):
    def __init__(self, model):
        self.model = model.eval()
        self.name = "MAGVIT-v2, causal 1+16-frame chunks"
        self.size, self.max_frames, self.default_frames = model.cfg.size, None, 128

    def tokens(self, frames: int) -> int:
        return self.model.tokens(frames)

    @torch.no_grad()
    def reconstruct(self, video):
        rec, info = reconstruct_chunked(lambda clip: self.model(clip)[0], video, chunk=self.model.chunk_frames,
                                        overlap=1, blend="drop")
        return rec.clamp(-1, 1), info["boundaries"]

    def to(self, device):
        self.model.to(device)
        return self


class ProMAGReconstructor(Reconstructor):
    def __init__(self, model, blend: str = "linear"):
        if blend not in ("linear", "drop"):
            raise ConfigError(f"--blend must be linear or drop, got {blend!r}")
        self.model, self.blend = model.eval(), blend
        c = model.cfg
        how = "4-frame overlaps blended" if blend == "linear" else "1-frame overlaps dropped, no blending"
        self.name = f"ProMAG {c.time_factor}x, 17-frame chunks, {how}"
        self.size, self.max_frames, self.default_frames = c.size, None, 128
        self.overlap = model.chunk_overlap if blend == "linear" else 1

    def tokens(self, frames: int) -> int:
        _, t, h, w = self.model.latent_shape(self.model.chunk_frames)
        return len(chunk_windows(frames, self.model.chunk_frames, self.overlap)) * t * h * w

    @torch.no_grad()
    def reconstruct(self, video):
        rec, info = reconstruct_chunked(self.model.codec, video, chunk=self.model.chunk_frames, overlap=self.overlap,
                                        blend=self.blend)
        return rec.clamp(-1, 1), info["boundaries"]

    def to(self, device):
        self.model.to(device)
        return self


class RegenReconstructor(Reconstructor):
    def __init__(self, model, extend: bool = True, steps: int = 1, seed: int = 0):
        self.model, self.extend, self.steps, self.seed = model.eval(), extend, steps, seed
        n = model.chunk_frames
        how = "latent extension" if extend else "no latent extension"
        self.name = f"REGEN, {n}-frame chunks, {how}, {steps}-step decoding"
        self.size, self.max_frames, self.default_frames = model.cfg.size, None, 128

    def tokens(self, frames: int) -> int:
        return self.model.tokens(frames)

    @torch.no_grad()
    def reconstruct(self, video):
        # The decoder samples: a fixed generator makes a reconstruction a function of the clip.
        g = torch.Generator(device=video.device).manual_seed(self.seed)
        rec = self.model.reconstruct_long(video, steps=self.steps, extend=self.extend, generator=g)
        n, T = self.model.chunk_frames, video.shape[2]
        return rec.clamp(-1, 1), list(range(n, T, n))

    def to(self, device):
        self.model.to(device)
        return self


def load_baseline_reconstructor(path, kind: str, blend: str | None = None, extend: bool | None = None,
                                steps: int | None = None) -> Reconstructor:
    """The baseline tokenizer of ``kind`` in checkpoint ``path`` with its long-video protocol."""
    if kind in ("magvit2", "promag"):
        from coordtok.baselines.checkpoint import load_baseline

        model, _ = load_baseline(path)
        if kind == "magvit2":
            return MagvitReconstructor(model)
        return ProMAGReconstructor(model, blend or "linear")
    if kind == "regen":
        from sit.regen_train import load_regen

        model, _ = load_regen(path)
        return RegenReconstructor(model, extend=True if extend is None else extend, steps=steps or 1)
    raise CheckpointError(f"{path}: a {kind!r} checkpoint is not a tokenizer (CoordTok, MAGVIT-v2, ProMAG or REGEN)")


# ---------------------------------------------------------------------------- loading


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


def load_reconstructor(path: str | Path, frames_per_chunk: int | None = None, hints: dict | None = None,
                       **options) -> Reconstructor:
    """The tokenizer in checkpoint ``path`` (file or run folder) as a :class:`Reconstructor`.

    ``options`` are the chunk tokenizers' protocol switches (``blend`` for ProMAG, ``extend`` and
    ``steps`` for REGEN); ``frames_per_chunk`` is CoordTok's bounded-memory decoding; ``hints``
    (``heads``, ...) read a reference-format CoordTok file (:func:`coordtok.checkpoint.load_tokenizer`).
    """
    kind = checkpoint_kind(path)
    if kind == "coordtok":
        model, _ = load_tokenizer(path, **(hints or {}))
        return CoordTokReconstructor(model, frames_per_chunk)
    return load_baseline_reconstructor(path, kind, **options)
