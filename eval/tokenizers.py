"""Every tokenizer the project has, as the evaluation sees it: a clip in, its reconstruction out.

:func:`load_reconstructor` reads a checkpoint of any kind (CoordTok, also the reference
implementation's files; the conv-3D baselines MAGVIT-v2, ProMAG, REGEN) and returns a
:class:`Reconstructor`. The 128-frame protocol of the CoordTok paper (appendix C.1) is built in:

* CoordTok encodes the whole clip at once and decodes every coordinate; a clip longer than its
  clip length goes in windows of that length overlapping by an eighth of it (``--overlap``), the
  overlaps blended linearly as ProMAG's chunks are;
* a chunk tokenizer cuts the clip into the windows it can take (causal 1 + 16 frames overlapping
  by one frame, the duplicate dropped; ProMAG's 17-frame chunks overlapping by 4 frames with
  linear blending; REGEN's chunks with or without latent extension), reconstructs each and stitches
  them (:func:`coordtok.chunking.reconstruct_chunked`).

Each reports the token count it spent on the clip and the frames where its chunks meet, for the
seam measure (:mod:`eval.seams`). A tokenizer without chunks reports the boundaries a 17-frame
causal tokenizer would have, so seam numbers compare the same frame pairs.
"""

from __future__ import annotations

import abc
import inspect
import pkgutil
from pathlib import Path

import torch

from coordtok.checkpoint import CheckpointError, load_any, load_run, load_tokenizer
from coordtok.chunking import chunk_boundaries, chunk_windows, default_overlap, reconstruct_chunked, stitch_windows
from coordtok.config import ConfigError
from coordtok.kinds import get_kind, tokenizers
from coordtok.model import CoordTok


class Reconstructor(abc.ABC):
    """A trained tokenizer with the evaluation protocol that suits it."""

    name: str  # e.g. "CoordTok (1280 tokens), windows of 128 frames overlapping by 16, blended"
    size: int  # frame side the model takes
    max_frames: int | None  # longest clip it takes (None: any length, by chunks)
    default_frames: int  # the clip length evaluated by default
    # The protocol switches a comparison reports each value of, unless the user fixes one
    # (``eval-recon`` without --blend evaluates ProMAG blended and not): ``{option: values}``.
    protocols: dict[str, tuple] = {}

    @classmethod
    @abc.abstractmethod
    def load(cls, path, **options) -> "Reconstructor":
        """The tokenizer in checkpoint ``path`` (file or run folder) with this protocol's ``options``."""

    @abc.abstractmethod
    def tokens(self, frames: int) -> int:
        """Latent positions (tokens) spent on a clip of ``frames`` frames."""

    @abc.abstractmethod
    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """``video`` ``(B, 3, T, H, W)`` in [-1, 1] -> ``(reconstruction clamped to [-1, 1], chunk
        boundaries)``: frame indices where a new chunk's own frames start."""

    @abc.abstractmethod
    def to(self, device) -> "Reconstructor": ...

    def check_frames(self, frames: int) -> None:
        if frames < 2:
            raise ConfigError(f"--frames {frames}: a clip needs at least 2 frames")
        if self.max_frames is not None and frames > self.max_frames:
            raise ConfigError(f"--frames {frames}: {self.name} is built for clips of at most {self.max_frames} frames")


class CoordTokReconstructor(Reconstructor):
    """CoordTok: a clip of at most its ``frames`` at once (shorter clips are masked), every
    coordinate decoded; a longer clip in windows of ``frames`` overlapping by ``overlap`` frames,
    each window encoded and decoded on its own and the overlaps blended linearly in pixel space
    (:func:`coordtok.chunking.reconstruct_chunked`, ``blend="linear"``, as ProMAG's chunks; a
    short last window goes through the masked path rather than being padded)."""

    def __init__(self, model: CoordTok, frames_per_chunk: int | None = None, overlap: int | None = None):
        self.model = model.eval()
        c = model.config
        self.overlap = default_overlap(c.frames) if overlap is None else int(overlap)
        if not 0 <= self.overlap <= c.frames // 2:
            raise ConfigError(
                f"--overlap {overlap}: CoordTok's windows of {c.frames} frames overlap by 0 to "
                f"{c.frames // 2} frames (half a window at most, so a frame lies in at most two)"
            )
        # "tokens" per window; the table's token column counts every window of the clip (tokens())
        self.name = (
            f"CoordTok ({c.num_latent_tokens} tokens), windows of {c.frames} frames overlapping by "
            f"{self.overlap}, blended"
        )
        self.size, self.max_frames, self.default_frames = c.size, None, c.frames
        self.frames_per_chunk = frames_per_chunk

    @classmethod
    def load(cls, path, frames_per_chunk: int | None = None, hints: dict | None = None, overlap: int | None = None):
        """``hints`` (``heads``, ...) read a reference-format file (:func:`coordtok.checkpoint.load_tokenizer`)."""
        model, _ = load_tokenizer(path, **(hints or {}))
        return cls(model, frames_per_chunk, overlap)

    def windows(self, frames: int) -> list[tuple[int, int]]:
        """The ``[start, end)`` windows a clip of ``frames`` frames is reconstructed in (one when it fits)."""
        return chunk_windows(frames, self.model.config.frames, self.overlap)

    def tokens(self, frames: int) -> int:
        return self.model.config.num_latent_tokens * len(self.windows(frames))

    @torch.no_grad()
    def reconstruct(self, video):
        """Boundaries: a long clip's window starts (where each blend begins); a clip that fits in
        one window reports the 17-frame causal chunks' boundaries, as every tokenizer without chunks."""
        T = video.shape[2]
        if T <= self.model.config.frames:
            rec = self.model.reconstruct(video, frames_per_chunk=self.frames_per_chunk).clamp(-1, 1)
            return rec, chunk_boundaries(T) if T > 17 else []
        window = lambda clip: self.model.reconstruct(clip, frames_per_chunk=self.frames_per_chunk)  # noqa: E731
        rec, info = reconstruct_chunked(
            window, video, chunk=self.model.config.frames, overlap=self.overlap, blend="linear", pad=False
        )
        return rec.clamp(-1, 1), info["boundaries"]

    @torch.no_grad()
    def decode_windows(self, triplanes, frames: int) -> torch.Tensor:
        """A ``frames``-frame clip ``(B, 3, frames, H, W)`` in [-1, 1] from its windows' triplanes:
        ``triplanes`` yields one :class:`~coordtok.triplane.Triplane` per :meth:`windows` window, in
        order (``coordtok encode --whole-videos`` stores them so). Each is decoded as
        :meth:`reconstruct` decodes it (a short last window masked) and the overlaps are blended by
        the same stitcher, so encoding a clip's windows and decoding them here gives :meth:`reconstruct`'s
        result."""
        c = self.model.config

        def outputs():
            for (s, e), triplane in zip(self.windows(frames), triplanes):
                nf = (
                    None
                    if e - s == c.frames
                    else torch.full((triplane.batch_size,), e - s, dtype=torch.long, device=triplane.xy.device)
                )
                yield self.model.decode_video(triplane, nf, self.frames_per_chunk)[:, :, : e - s]

        return stitch_windows(outputs(), frames, c.frames, self.overlap, "linear").clamp(-1, 1)

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

    @classmethod
    def load(cls, path):
        from baselines.checkpoint import load_baseline

        return cls(load_baseline(path)[0])

    def tokens(self, frames: int) -> int:
        return self.model.tokens(frames)

    @torch.no_grad()
    def reconstruct(self, video):
        rec, info = reconstruct_chunked(
            lambda clip: self.model(clip)[0], video, chunk=self.model.chunk_frames, overlap=1, blend="drop"
        )
        return rec.clamp(-1, 1), info["boundaries"]

    def to(self, device):
        self.model.to(device)
        return self


class ProMAGReconstructor(Reconstructor):
    protocols = {"blend": ("linear", "drop")}

    def __init__(self, model, blend: str = "linear"):
        if blend not in ("linear", "drop"):
            raise ConfigError(f"--blend must be linear or drop, got {blend!r}")
        self.model, self.blend = model.eval(), blend
        c = model.cfg
        how = "4-frame overlaps blended" if blend == "linear" else "1-frame overlaps dropped, no blending"
        self.name = f"ProMAG {c.time_factor}x, 17-frame chunks, {how}"
        self.size, self.max_frames, self.default_frames = c.size, None, 128
        self.overlap = model.chunk_overlap if blend == "linear" else 1

    @classmethod
    def load(cls, path, blend: str = "linear"):
        from baselines.checkpoint import load_baseline

        return cls(load_baseline(path)[0], blend)

    def tokens(self, frames: int) -> int:
        _, t, h, w = self.model.latent_shape(self.model.chunk_frames)
        return len(chunk_windows(frames, self.model.chunk_frames, self.overlap)) * t * h * w

    @torch.no_grad()
    def reconstruct(self, video):
        rec, info = reconstruct_chunked(
            self.model.codec, video, chunk=self.model.chunk_frames, overlap=self.overlap, blend=self.blend
        )
        return rec.clamp(-1, 1), info["boundaries"]

    def to(self, device):
        self.model.to(device)
        return self


class RegenReconstructor(Reconstructor):
    protocols = {"extend": (True, False)}

    def __init__(self, model, extend: bool = True, steps: int = 1, seed: int = 0):
        self.model, self.extend, self.steps, self.seed = model.eval(), extend, steps, seed
        n = model.chunk_frames
        how = "latent extension" if extend else "no latent extension"
        self.name = f"REGEN, {n}-frame chunks, {how}, {steps}-step decoding"
        self.size, self.max_frames, self.default_frames = model.cfg.size, None, 128

    @classmethod
    def load(cls, path, extend: bool = True, steps: int = 1):
        from baselines.regen_train import load_regen

        return cls(load_regen(path)[0], extend=extend, steps=steps)

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


# ---------------------------------------------------------------------------- loading


def checkpoint_kind(path: str | Path) -> str:
    """The kind of model a checkpoint (file or run folder) holds: ``coordtok`` (also the
    reference's files), ``sit``, or a baseline's kind."""
    from coordtok.kinds import prefixed_kind
    from coordtok.reference import is_reference_coordtok

    if prefixed_kind(path) is not None and not Path(path).exists():  # diffusers:<ClassName or folder>
        return str(path)
    path = Path(path)
    state = load_run(path, None, "checkpoint")[0] if path.is_dir() else load_any(path)
    if is_reference_coordtok(state):
        return "coordtok"
    kind = state.get("kind")
    if not kind:
        raise CheckpointError(f"{path}: not a checkpoint of this project or of the reference CoordTok")
    return kind


def load_reconstructor(path: str | Path, **options) -> Reconstructor:
    """The tokenizer in checkpoint ``path`` (file or run folder) as a :class:`Reconstructor`, by
    the checkpoint's kind (:data:`coordtok.kinds.KINDS`).

    ``options`` are its reconstructor's (``frames_per_chunk``: CoordTok's bounded-memory decoding,
    ``hints``: a reference-format CoordTok file's; ``blend`` for ProMAG; ``extend`` and ``steps``
    for REGEN); an option another tokenizer takes is a one-line error.
    """
    kind = get_kind(checkpoint_kind(path), str(path))
    if kind.reconstructor is None:
        raise CheckpointError(
            f"{path}: a {kind.title} checkpoint is not a tokenizer (known: {', '.join(k.title for k in tokenizers())})"
        )
    load = kind.resolve("reconstructor")
    accepted = set(inspect.signature(load).parameters)
    # CoordTok's decoding options mean nothing to a chunk tokenizer (it decodes chunk by chunk
    # anyway); another tokenizer's protocol switch (--blend for REGEN) is a mistake.
    unknown = sorted(k for k, v in options.items() if k not in accepted and v is not None and k not in COORDTOK_ONLY)
    if unknown:
        raise ConfigError(f"{path}: {', '.join(unknown)} does not apply to a {kind.title} tokenizer")
    return load(path, **{k: v for k, v in options.items() if k in accepted and v is not None})


COORDTOK_ONLY = ("frames_per_chunk", "hints", "overlap")


def protocol_variants(path: str | Path) -> list[dict]:
    """The protocol options a comparison evaluates the tokenizer in ``path`` under: its paper's
    and each alternative (ProMAG blended and not, REGEN with latent extension and without);
    ``[{}]`` for a tokenizer with one protocol."""
    kind = get_kind(checkpoint_kind(path), str(path))
    cls = pkgutil.resolve_name(kind.reconstructor.rpartition(".")[0]) if kind.reconstructor else None
    variants = [{}]
    for option, values in (getattr(cls, "protocols", None) or {}).items():
        variants = [{**v, option: value} for v in variants for value in values]
    return variants
