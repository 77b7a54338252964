"""Atomic checkpoints with fall-back to the previous good one.

A checkpoint is one ``torch.save`` file ``ckpt-<step as 7 digits>.pt`` (e.g. ``ckpt-0005000.pt``) in
the run folder. It is written to a temporary file in the same folder, flushed to disk, then renamed over its final name,
so a crash, a ``kill -9`` or a full disk never leaves a half-written file under a checkpoint name:
the previous checkpoint stays intact. Loading the latest tries the newest file first and falls
back to older ones, with a one-line message per unreadable file.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .fileio import OutputError, atomic_path
from .locking import LOCK_NAME, FolderLock, FolderLockError

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


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
    """``torch.save`` to ``path`` atomically (:func:`coordtok.fileio.atomic_path`); on any failure,
    a full disk included, the old file (if any) is untouched and the error is one line."""
    try:
        with atomic_path(path, "checkpoint") as tmp:
            torch.save(obj, tmp)
    except OutputError as e:
        raise CheckpointError(str(e)) from None


# The only pickled class a checkpoint may hold besides tensors and plain data (dict, list, tuple,
# str, numbers, None): the reference SiT trainer stores its command line as an argparse.Namespace.
SAFE_GLOBALS = (argparse.Namespace,)


def _numpy_array_globals() -> dict[str, Any]:
    """numpy's array reconstruction, which checkpoints of this project before format version 2
    hold (numpy's RNG state was an array). It rebuilds an array from dtype, shape and bytes and
    runs no other code: the same classes PyTorch documents for loading numpy arrays with
    ``weights_only``. Allowed only when a file holds nothing else foreign."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    found = {
        f"{_reconstruct.__module__}._reconstruct": _reconstruct,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for code in "?bBhHiIlLqQefdgFD":
        cls = type(np.dtype(code))
        found[f"{cls.__module__}.{cls.__name__}"] = cls
    return found


def load_any(path: str | Path, map_location="cpu") -> dict:
    """Load any checkpoint file (this project's or the public reference implementation's) safely.

    ``torch.load(weights_only=True)``: only tensors, plain data and :data:`SAFE_GLOBALS` are
    unpickled, so a file from elsewhere cannot run code. A file that holds any other pickled
    object is refused, as is anything unreadable, with a one-line :class:`CheckpointError`;
    the only exception is numpy's data-only array reconstruction in this project's older
    checkpoints (:func:`_numpy_array_globals`). Returns the file's dict as it is; :func:`load`
    adds the checks for this project's files, ``coordtok.reference`` / ``sit.reference`` convert
    the reference's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    allowed = list(SAFE_GLOBALS)
    for attempt in range(2):
        try:
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location=map_location, weights_only=True)
            break
        except Exception as e:  # a refused global, truncated zip, bad pickle, ...
            foreign = _foreign_globals(path, e)
            numpy_globals = _numpy_array_globals()
            if attempt == 0 and foreign and all(g in numpy_globals for g in foreign):
                allowed += list(numpy_globals.values())  # dtype classes show up only while unpickling
                continue
            if foreign:
                raise CheckpointError(
                    f"{path}: holds a pickled object of type {foreign[0]} that could run code when loaded; "
                    f"this project loads only tensors and plain data (save the tensors, e.g. a state dict, with "
                    f"torch.save and load that)"
                ) from None
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: unreadable checkpoint ({msg})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(obj).__name__}, not a dict)")
    return obj


def _foreign_globals(path: Path, error: Exception) -> list[str]:
    """The pickled globals of ``path`` that a weights-only load refuses (sorted; [] if none or unknown)."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: the refusal names the global in its message
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(error))
        return [found.group(1)] if found else []


def load(path: str | Path, map_location="cpu") -> dict:
    """Load one checkpoint of this project (safely, see :func:`load_any`).

    A one-line :class:`CheckpointError` for anything unreadable, unsafe or without a ``model``
    entry. Files of the reference implementation: :func:`load_any`, then ``coordtok.reference``.
    """
    obj = load_any(path, map_location)
    if "model" not in obj:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    return obj


def _write_order(info: dict | None, path: Path) -> tuple:
    """Sort key, larger = written later: a checkpoint's write serial (format 3), then its step;
    older checkpoints without a serial were written before any that has one."""
    step = int(CKPT_RE.match(path.name).group(1))
    serial = (info or {}).get("serial")
    return (serial is not None, serial or 0, step)


def newest_first(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """The readable checkpoints of ``run_dir`` with their :func:`peek`, most recently written
    first. After a branch (a run resumed from an older checkpoint), the newest checkpoint is the
    one the branch wrote last, not the highest step of the abandoned branch."""
    found = [(p, peek(p)) for p in list_checkpoints(run_dir)]
    return sorted([(p, i) for p, i in found if i is not None], key=lambda e: _write_order(e[1], e[0]), reverse=True)


def load_latest(run_dir: str | Path, map_location="cpu", log=None) -> tuple[dict, Path] | None:
    """Most recently written readable checkpoint in ``run_dir`` (:func:`newest_first`); broken
    files with a higher step are reported and skipped."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    readable = newest_first(run_dir)
    for path, _ in readable:
        try:
            state = load(path, map_location)
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
            continue
        known = {p for p, _ in readable}
        for other in list_checkpoints(run_dir):
            if other not in known and _write_order(None, other)[2] > int(state.get("step", 0)):
                try:
                    load(other, map_location)
                except CheckpointError as e:
                    log(f"warning: {e}; falling back to the previous checkpoint")
        return state, path
    for other in list_checkpoints(run_dir):
        try:
            load(other, map_location)
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    return None


def rng_state() -> dict:
    """This process's global RNG states as tensors and plain data (loadable with ``weights_only``).

    numpy's legacy state ``(name, keys uint32 (624,), pos, has_gauss, cached_gaussian)`` is
    stored as a dict with ``keys`` an int64 tensor (a pickled numpy array would be refused).
    ``cuda`` is the state of this process's own GPU only (``torch.cuda.current_device()``): a
    process of a multi-GPU run draws on its own device, and a job resumed with fewer visible
    GPUs (SLURM binds one per task) must not need the others' states.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(torch.cuda.current_device()) if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> str | None:
    """Restore :func:`rng_state` exactly; also takes numpy's tuple form (older in-memory states).

    Checkpoints written before the per-process device state hold a list of every visible GPU's
    state: this process takes its own device's entry. Returns a note when the device state could
    not be restored (no GPU here, or no entry for this device), else None."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        keys = np.asarray(np_state["keys"].cpu().numpy(), dtype=np.int64).astype(np.uint32)
        np_state = (
            np_state["bit_generator"],
            keys,
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None:
        return None
    if not torch.cuda.is_available():
        return "no CUDA device here for the saved CUDA RNG state"
    device = torch.cuda.current_device()
    if isinstance(cuda, (list, tuple)):  # an older checkpoint: one state per visible GPU
        if device >= len(cuda):
            return f"the checkpoint holds CUDA RNG states of {len(cuda)} GPU(s), none for GPU {device}"
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda, device)
    return None


def restore_rng(state: dict, rank: int, world: int, log=None) -> None:
    """Restore this process's RNG states from a checkpoint written by :func:`coordtok.loop.fit`.

    ``state["rng_ranks"]`` holds every writing process's :func:`rng_state` (``state["rng"]``,
    rank 0's, is all a single-process run stores). Each rank takes its own. When the run has
    another number of processes than the one that wrote the checkpoint, ranks without a saved
    state take rank 0's CPU states (python, numpy, torch) and keep a fresh device state; ``log``
    (the main process's) gets one line saying what could not be restored.
    """
    states = state.get("rng_ranks") or [state["rng"]]
    notes = []
    if rank < len(states):
        note = set_rng_state(states[rank])
    else:
        note = set_rng_state({**states[0], "cuda": None})
    if note and log is not None:
        notes.append(note)
    if len(states) != world and log is not None:
        if world > len(states):
            extra = f"rank {len(states)}" if world == len(states) + 1 else f"ranks {len(states)}-{world - 1}"
            notes.append(f"{extra} start(s) with rank 0's CPU RNG state and a fresh device RNG state")
        else:
            gone = f"rank {world}" if len(states) == world + 1 else f"ranks {world}-{len(states) - 1}"
            notes.append(f"the RNG states of {gone} are not used")
        notes[-1] = (
            f"resume: the checkpoint was written by {len(states)} process(es), this run has {world}: " + notes[-1]
        )
    if notes:
        log("; ".join(notes))


def load_run(path: str | Path, kind: str | None, what: str, map_location="cpu") -> tuple[dict, Path]:
    """A checkpoint of ``kind`` (None: any) from a file or a run folder (its newest readable one).

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
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path}: not a {what} checkpoint (kind={state.get('kind')!r})")
    return state, path


# ---------------------------------------------------------------------------- run folders

# Checkpoint format version: 2 stores the RNG state as tensors and plain data (loadable with
# weights_only), a run id, and (tokenizers) the LayerNorm epsilons in the model config. Entries
# added since are optional and read with .get (a file without them is still version 2): the
# lineage (``serial``, ``parent``), each process's RNG state (``rng_ranks``), ``finite_weights``.
VERSION = 2


def module_key(name: str) -> str:
    """Checkpoint entry of a trained module: ``model`` for the main one, else its name (``disc``)."""
    return name


def optimizer_key(name: str) -> str:
    """Checkpoint entry of a module's optimizer: ``optimizer`` for the main one, else ``<name>_optimizer``."""
    return "optimizer" if name == "model" else f"{name}_optimizer"


def peek(path: str | Path) -> dict | None:
    """``{"kind", "step", "run_id", "serial", "parent", "finite_weights"}`` of a checkpoint without
    reading its tensors (memory-mapped, safe load); None when the file is unreadable or not a
    checkpoint of this project."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(obj, dict) or "model" not in obj:
        return None
    return {
        "kind": obj.get("kind"),
        "step": obj.get("step"),
        "run_id": obj.get("run_id"),
        "serial": obj.get("serial"),
        "parent": obj.get("parent"),
        "finite_weights": obj.get("finite_weights"),
    }


class RunFolder:
    """A training run's output folder: its checkpoints, its lock, and what may be deleted in it.

    * While a run writes to the folder it holds an exclusive lock on ``<folder>/.lock``
      (:class:`coordtok.locking.FolderLock`: ``fcntl.flock``, released by the OS if the process
      dies, or a lock file where the file system has no flock); a second run on the same folder
      is a one-line error instead of two runs deleting each other's files.
    * A fresh run (no ``--resume``) refuses a folder that already holds checkpoints: continuing
      a run is explicit, and two runs' checkpoints never mix.
    * Every checkpoint carries the run's id; pruning deletes only this run's own older
      checkpoints, never an unreadable or foreign file, and never the newest readable one.
      Temporary files of writes a killed run left behind are removed when the lock is taken.
    """

    def __init__(self, path: str | Path, kind: str, is_main: bool = True, log=None):
        self.path, self.kind, self.is_main = Path(path), kind, is_main
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.run_id: str | None = None
        self.resumed_from: Path | None = None
        self._peeks: dict[tuple[str, int, int], dict | None] = {}
        # Lineage: every checkpoint records its write serial (one counter per folder) and its
        # parent (the checkpoint the run continued from, or its previous one); ``tip`` is the
        # newest checkpoint of this run's lineage as (name, serial).
        self.serial = 0
        self.tip: tuple[str, int | None] | None = None
        self._written: set[int] = set()

    # -- lock
    def acquire(self) -> None:
        """Take the folder's lock (main process only; other ranks hold nothing). One-line
        :class:`CheckpointError` when another run holds it or the folder cannot be made."""
        self._lock = None
        if not self.is_main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"{self.path}: cannot create the output folder ({e.strerror or e}); choose a writable train.out_dir"
            ) from None
        lock = FolderLock(self.path, "run", "choose another train.out_dir", self.log, LOCK_NAME)
        try:
            lock.acquire()
        except FolderLockError as e:
            raise CheckpointError(str(e)) from None
        self._lock = lock
        self._remove_stale_temporaries()

    def release(self) -> None:
        """Give the lock back (the OS releases a flock if the process dies; see :mod:`coordtok.locking`)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock (main process) for the duration of the block."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def _remove_stale_temporaries(self) -> None:
        """Temporary checkpoint files of a killed write (only this project's naming, under the lock)."""
        for pattern in (".ckpt-*.pt.*.tmp.pt", ".ckpt-*.pt.*.tmp"):
            for path in self.path.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- resume
    def resume_state(self, resume: bool | str | Path | None) -> dict | None:
        """The checkpoint this run continues from, or None for a fresh start.

        ``resume``: falsy -> a fresh start, refused if the folder already holds checkpoints;
        ``True`` -> the newest readable checkpoint of the folder (a fresh start if it has none);
        a path -> that file. The checkpoint must be of this run's kind.
        """
        if not resume:
            existing = list_checkpoints(self.path)
            if existing:
                raise CheckpointError(
                    f"{self.path}: already holds checkpoints ({existing[0].name}, ...); continue that run with "
                    f"--resume, or choose another train.out_dir (--out-dir) for a new one"
                )
            self.run_id = uuid.uuid4().hex[:12]
            self.serial = self._max_serial()
            return None
        if resume is True:
            found = load_latest(self.path, log=self.log)
            if found is None:
                self.log(f"no checkpoint in {self.path}; starting from scratch")
                self.run_id = uuid.uuid4().hex[:12]
                self.serial = self._max_serial()
                return None
            state, where = found
        else:
            where = Path(resume)
            state = load(where)
        if state.get("kind") != self.kind:
            raise CheckpointError(f"{where}: a {state.get('kind')!r} checkpoint cannot resume a {self.kind!r} run")
        self.resumed_from = Path(where)
        # A run resumed from a checkpoint of an older format (no run id) starts a new id: its old
        # files then count as another run's and are never pruned.
        self.run_id = state.get("run_id") or uuid.uuid4().hex[:12]
        self.log(f"resuming from {where} (step {state.get('step')})")
        where = Path(where)
        inside = where.parent.resolve() == self.path.resolve()
        self.tip = (where.name if inside else str(where.resolve()), state.get("serial"))
        self.serial = self._max_serial()
        lineage = set(self.lineage())
        other = [p.name for p, info in newest_first(self.path) if p not in lineage and info["kind"] == self.kind]
        if other:
            self.log(
                f"resume: {', '.join(other)} {'is' if len(other) == 1 else 'are'} not on the branch this run "
                f"continues (another branch of this folder's checkpoints): kept, never pruned; --resume <file> "
                f"continues one"
            )
        return state

    def _max_serial(self) -> int:
        return max(
            [info.get("serial") or 0 for p in list_checkpoints(self.path) if (info := self._peek(p)) is not None] + [0]
        )

    def lineage(self) -> list[Path]:
        """This run's lineage, newest first: the tip, its parent, the parent's parent, ... (files
        of the folder). Checkpoints of the format before lineage (no serial) were written by
        linear runs: below one, every older checkpoint of its run id is in the lineage."""
        chain: list[Path] = []
        want = self.tip
        while want is not None:
            path = self.path / want[0]
            info = self._peek(path) if path.parent == self.path and CKPT_RE.match(path.name) else None
            if info is None or (want[1] is not None and info.get("serial") != want[1]) or path in chain:
                break
            chain.append(path)
            if info.get("serial") is None:
                step = _write_order(None, path)[2]
                chain += [
                    p
                    for p in list_checkpoints(self.path)
                    if _write_order(None, p)[2] < step
                    and (i := self._peek(p)) is not None
                    and i.get("serial") is None
                    and i["run_id"] == info["run_id"]
                ]
                break
            parent = info.get("parent")
            want = (parent["name"], parent.get("serial")) if isinstance(parent, dict) else None
        return chain

    def load_decided(self, path: str | Path) -> dict:
        """Load the checkpoint another process chose with :meth:`resume_state` (the other ranks
        of a multi-process run), checked as :meth:`resume_state` checks it."""
        state = load(path)
        if state.get("kind") != self.kind:
            raise CheckpointError(f"{path}: a {state.get('kind')!r} checkpoint cannot resume a {self.kind!r} run")
        self.resumed_from = Path(path)
        return state

    # -- save and prune
    def save(self, payload: dict, step: int, keep: int) -> Path:
        """Write ``payload`` as ``ckpt-<step>.pt`` atomically, then prune this run's older ones."""
        path = checkpoint_path(self.path, step)
        if path.exists():
            info = self._peek(path)
            if info is None or info.get("serial") not in self._written:
                self._move_aside(path)
        parent = {"name": self.tip[0], "serial": self.tip[1]} if self.tip is not None else None
        self.serial += 1
        atomic_save(
            {**payload, "version": VERSION, "run_id": self.run_id, "serial": self.serial, "parent": parent}, path
        )
        self._written.add(self.serial)
        self.tip = (path.name, self.serial)
        self.prune(keep)
        return path

    def _move_aside(self, path: Path) -> Path:
        """Rename a checkpoint of another branch that this run's checkpoint of the same step would
        replace (never delete it): ``ckpt-0000500.pt`` -> ``ckpt-0000500.abandoned-1.pt``."""
        n = 1
        while (aside := path.with_name(f"{path.stem}.abandoned-{n}.pt")).exists():
            n += 1
        try:
            path.rename(aside)
        except OSError as e:
            raise CheckpointError(
                f"{path}: a checkpoint of another branch that this run would replace, and it "
                f"cannot be moved aside ({e.strerror or e}); move it yourself"
            ) from None
        self.log(
            f"{path.name} (another branch) renamed to {aside.name}, so this run's checkpoint of the same step "
            f"does not replace it"
        )
        return aside

    def _peek(self, path: Path) -> dict | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (path.name, st.st_size, st.st_mtime_ns)
        if key not in self._peeks:
            self._peeks[key] = peek(path)
        return self._peeks[key]

    def prune(self, keep: int) -> list[Path]:
        """Delete the checkpoints of this run's lineage (:meth:`lineage`: the branch it continues)
        beyond its newest ``keep``; returns them. Another branch's checkpoints are never pruned."""
        own = [
            p
            for p in self.lineage()
            if (info := self._peek(p)) is not None and info["run_id"] == self.run_id and info["kind"] == self.kind
        ]
        removed = []
        for path in own[max(1, keep) :]:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        return removed


# ---------------------------------------------------------------------------- model loaders


def load_tokenizer(path: str | Path, map_location="cpu", with_info: bool = False, log=None, **hints):
    """A :class:`coordtok.model.CoordTok` (eval mode) from a checkpoint file, a run folder (its
    newest readable checkpoint), or a checkpoint of the public reference implementation.

    A reference file is recognised by its keys and converted (:mod:`coordtok.reference`; ``hints``
    such as ``heads`` go to :func:`coordtok.reference.convert_coordtok`); one line says what was
    found. Returns ``(model, state)``, or ``(model, state, info)`` with ``with_info``.
    """
    from .config import model_config_from_checkpoint
    from .model import CoordTok
    from .reference import convert_coordtok, is_reference_coordtok, reference_step, to_project_checkpoint

    log = log or (lambda msg: print(msg, file=sys.stderr))
    path, info = Path(path), None
    if path.is_dir():
        state, path = load_run(path, "coordtok", "CoordTok tokenizer", map_location)
    else:
        raw = load_any(path, map_location)
        if is_reference_coordtok(raw):
            cfg, weights, info = convert_coordtok(raw, source=str(path), **hints)
            log(f"{path}: {info}")
            state = to_project_checkpoint(cfg, weights, info, step=reference_step(raw))
        else:
            if "model" not in raw:
                raise CheckpointError(
                    f"{path}: neither a checkpoint of this project nor of the reference CoordTok (no 'model' entry)"
                )
            state = raw
            if state.get("kind") != "coordtok":
                raise CheckpointError(f"{path}: not a CoordTok tokenizer checkpoint (kind={state.get('kind')!r})")
    if not isinstance(state.get("config"), dict) or "model" not in state["config"]:
        raise CheckpointError(
            f"{path}: the checkpoint has no model config, so the architecture is unknown; "
            f"it was not written by `coordtok train` or `coordtok convert`"
        )
    model = CoordTok(model_config_from_checkpoint(state["config"]["model"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them ({str(e).strip().splitlines()[-1].strip()})"
        ) from None
    model.eval()
    return (model, state, info or state.get("info")) if with_info else (model, state)


def check_same_model(
    where,
    old: dict | None,
    new: dict,
    action: str,
    fix: str = "use the run's own config, or another out_dir for a new run",
) -> None:
    """Nothing when a checkpoint's model section ``old`` (None: unknown, nothing to check) agrees
    with the config's ``new``; else a one-line :class:`CheckpointError` naming the first key
    where they differ: ``"<where>: <action>: its model differs from the config's (model.<key>:
    <old> in the checkpoint, <new> in the config); <fix>"``."""
    if old is None:
        return
    key = next((k for k in new if k not in old or old[k] != new[k]), None)
    if key is not None:
        raise CheckpointError(
            f"{where}: {action}: its model differs from the config's (model.{key}: "
            f"{old.get(key, 'absent')!r} in the checkpoint, {new[key]!r} in the config); {fix}"
        )


def load_model(path: str | Path, kinds: dict, map_location="cpu", weights: str = "ema"):
    """A model of one of ``kinds`` in eval mode from a checkpoint file or a run folder (its newest
    readable checkpoint): ``(model, state)``. The loader of every trainer that stores its run
    config (``config["model"]``, the architecture) with its weights.

    ``kinds``: ``{checkpoint kind: (what messages call it, config class, model class)}``.
    ``weights``: ``"ema"`` (the EMA where the run keeps one, else the training weights) or
    ``"model"`` (the training weights). One-line :class:`CheckpointError` for another kind of
    checkpoint, a missing config or weights that do not fit it.
    """
    from .config import ConfigError, from_dict

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(path)
    names = " or ".join(what for what, _, _ in kinds.values())
    if path.is_dir():
        state, path = load_run(path, None, names, map_location)
    else:
        state = load_any(path, map_location)
    kind = state.get("kind")
    if kind not in kinds:
        raise CheckpointError(f"{path}: not a {names} checkpoint (kind={kind!r})")
    what, cfg_cls, model_cls = kinds[kind]
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: the {what} checkpoint has no model config, so the architecture is unknown")
    try:
        cfg = from_dict(cfg_cls, config["model"], f"{path}: model")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    chosen = state.get("ema") if weights == "ema" and state.get("ema") is not None else state.get("model")
    if chosen is None:
        raise CheckpointError(f"{path}: the {what} checkpoint holds no weights")
    model = model_cls(cfg)
    try:
        model.load_state_dict(chosen)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them ({str(e).strip().splitlines()[-1].strip()})"
        ) from None
    return model.eval(), state
