"""Atomic checkpoints with fall-back to the previous good one.

A checkpoint is one ``torch.save`` file ``ckpt-<step as 7 digits>.pt`` (e.g. ``ckpt-0005000.pt``) in the run folder. It is
written to a temporary file in the same folder, flushed to disk, then renamed over its final name,
so a crash, a ``kill -9`` or a full disk never leaves a half-written file under a checkpoint name:
the previous checkpoint stays intact. Loading the latest tries the newest file first and falls
back to older ones, with a one-line message per unreadable file.
"""
from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no readable checkpoint was found."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in ``run_dir``, newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically; on failure the old file (if any) is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"{path.parent}: cannot write checkpoints here ({e.strerror or e}); "
                              f"choose a writable output folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"{path}: writing the checkpoint failed ({e.strerror or e}); "
                                  f"the previous checkpoint is intact") from None
        raise
    # Make the rename itself durable.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path: str | Path, map_location="cpu") -> dict:
    """Load one checkpoint file, turning any failure into a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({msg})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    return obj


def load_latest(run_dir: str | Path, map_location="cpu", log=None) -> tuple[dict, Path] | None:
    """Newest readable checkpoint in ``run_dir``; broken newer ones are reported and skipped."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for path in list_checkpoints(run_dir):
        try:
            return load(path, map_location), path
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    return None


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never fewer than one), and the temporary
    files of writes that a killed process left behind."""
    stale = list(Path(run_dir).glob(".ckpt-*.pt.*.tmp")) if Path(run_dir).is_dir() else []
    for path in list_checkpoints(run_dir)[max(1, keep):] + stale:
        try:
            path.unlink()
        except OSError:
            pass


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(run_dir: str | Path, resume: bool | str | Path | None, kind: str, log=None) -> dict | None:
    """The checkpoint a run continues from, or None to start from scratch.

    ``resume``: falsy -> None; ``True`` -> the newest readable checkpoint of ``run_dir`` (None if it
    has none); a path -> that file. The checkpoint must be of ``kind`` ("coordtok", "sit").
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not resume:
        return None
    if resume is True:
        found = load_latest(run_dir, log=log)
        if found is None:
            log(f"no checkpoint in {run_dir}; starting from scratch")
            return None
        state, where = found
    else:
        state, where = load(resume), resume
    if state.get("kind") != kind:
        raise CheckpointError(f"{where}: a {state.get('kind')!r} checkpoint cannot resume a {kind!r} run")
    log(f"resuming from {where} (step {state.get('step')})")
    return state


def load_run(path: str | Path, kind: str, what: str, map_location="cpu") -> tuple[dict, Path]:
    """A checkpoint of ``kind`` from a file or a run folder (its newest readable one).

    ``what`` names the kind in messages ("CoordTok tokenizer", "CoordTok-SiT").
    """
    path = Path(path)
    if path.is_dir():
        found = load_latest(path, map_location)
        if found is None:
            raise CheckpointError(f"{path}: no readable checkpoint in this folder")
        state, path = found
    else:
        state = load(path, map_location)
    if state.get("kind") != kind:
        raise CheckpointError(f"{path}: not a {what} checkpoint (kind={state.get('kind')!r})")
    return state, path
