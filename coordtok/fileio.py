"""The one way the project writes a file: atomically, durably, with normal permissions.

Every file the project produces (checkpoints, latent shards, caches, videos, images, JSON /
markdown / CSV results) goes through :func:`atomic_path`: the content is written to a temporary
file in the destination folder, flushed to disk, given the permissions a normally created file
gets (``0o666`` minus the umask; ``mkstemp`` alone would leave ``0o600``), then renamed over the
destination. A crash, a ``kill -9`` or a full disk never leaves a half-written file under the
final name; the previous version, if any, stays intact. Temporary files are named
``.<name>.<random>.tmp<suffix>`` so that writers which infer the format from the suffix (ffmpeg,
Pillow) still work, and :data:`TMP_GLOB` finds the ones a killed process left behind.

:func:`check_writable` is what commands call before heavy work: it creates the output folder and
proves a file can be created there, so a read-only ``--out`` fails in a second, not after an hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import CoordTokError


class OutputError(CoordTokError, OSError):
    """An output cannot be written (read-only folder, a file where a folder should be, full disk)."""


def file_mode() -> int:
    """Permissions of a normally created file: ``0o666`` minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` (durably, with
    normal permissions), on failure delete it and leave ``path`` as it was.

    An ``OSError`` while writing (or a ``RuntimeError`` that wraps one, as ``torch.save`` raises
    on a full disk) becomes a one-line :class:`OutputError` naming ``path`` and ``what`` it is.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(
            f"{path.parent}: cannot write the {what} here ({_reason(e)}); choose a writable output folder"
        ) from None
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush what the writer wrote (it may have used its own handle)
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and _looks_like_io(e)):
            detail = (
                _reason(e)
                if isinstance(e, OSError)
                else _SHORT_WRITE
                if _is_serializer_failure(e)
                else str(e).strip().splitlines()[0]
            )
            raise OutputError(
                f"{path}: writing the {what} failed ({detail}); the previous {what}, if any, is intact"
            ) from None
        raise
    _fsync_dir(path.parent)
    note_written(path)


# Who is told of every file this process writes (``(pid, callback)``): the demo keeps the list of
# its files with it, so that ``demo --fresh`` deletes exactly those. A forked DataLoader worker
# inherits the list but is not its owner, hence the pid.
_recorders: list[tuple[int, Callable[[Path], None]]] = []


@contextlib.contextmanager
def recording(callback: Callable[[Path], None]) -> Iterator[None]:
    """While the block runs, ``callback(path)`` for every file this process completes through
    :func:`atomic_path` or reports with :func:`note_written` (``path`` as the writer named it)."""
    entry = (os.getpid(), callback)
    _recorders.append(entry)
    try:
        yield
    finally:
        _recorders.remove(entry)


def note_written(path: str | Path) -> None:
    """Tell the :func:`recording` callbacks of a file written without :func:`atomic_path` (a lock
    file, a TensorBoard event file)."""
    pid = os.getpid()
    for owner, callback in list(_recorders):
        if owner == pid:
            callback(Path(path))


_SHORT_WRITE = "the file could not be written in full: the disk is full, or a quota or file size limit is reached"


def _is_serializer_failure(e: RuntimeError) -> bool:
    """``torch.save``'s zip writer (PyTorchStreamWriter, ``inline_container.cc``) checks each write
    landed where it should; a short write (full disk, quota, ``ulimit -f``) fails that check as
    ``[enforce fail at inline_container.cc:...] . unexpected pos 704 vs 598``, or, when the Python
    file object's stream fails first, as ``basic_ios::clear: iostream error``."""
    text = str(e).lower()
    return any(k in text for k in ("inline_container", "unexpected pos", "pytorchstreamwriter", "iostream error"))


def _looks_like_io(e: RuntimeError) -> bool:
    """``torch.save`` reports a full disk as ``RuntimeError: ... file write failed`` or as a failed
    check of its zip writer (:func:`_is_serializer_failure`)."""
    text = str(e).lower()
    return any(
        k in text for k in ("write failed", "failed writing", "no space", "errno", "i/o error")
    ) or _is_serializer_failure(e)


def write_with(path: str | Path, write: Callable, binary: bool = True, what: str = "file") -> Path:
    """``write(file_object)`` into ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
    return Path(path)


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    return write_with(path, lambda f: f.write(data), what=what)


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    return write_with(path, lambda f: f.write(text), binary=False, what=what)


def write_json(path: str | Path, obj, indent: int | None = 2, what: str = "file") -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n", what=what)


def check_writable(folder: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """Prove that files can be written in ``folder``, before any heavy work: a one-line
    :class:`OutputError` otherwise.

    An existing folder gets a probe file; a folder still to be made needs its nearest existing
    ancestor to be a writable folder, and is created when ``create`` (otherwise the caller creates
    it once its inputs have been checked, so a failed run leaves nothing behind).
    """
    folder = Path(folder)
    try:
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{folder}: is a file, not a folder; choose a folder for the {what}")
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
            os.close(fd)
            os.unlink(probe)
            return folder
        ancestor = folder.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(f"{folder}: cannot make the {what} here ({ancestor} is a file); choose another folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(
                f"{folder}: cannot make the {what} here ({ancestor} is not writable); choose a writable folder"
            )
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"{folder}: cannot write the {what} here ({_reason(e)}); choose a writable folder") from None
    return folder


def check_writable_file(path: str | Path, what: str = "output file", create: bool = True) -> Path:
    """:func:`check_writable` for the folder of ``path``; also refuses a folder standing at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the {what}")
    check_writable(path.parent, f"folder of the {what}", create)
    return path
