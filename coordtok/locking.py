"""The one folder lock: a run folder, the demo's folder and a latent cache are each written by one
process at a time.

:class:`FolderLock` takes an exclusive ``fcntl.flock`` on ``<folder>/.lock`` (released by the OS
when the holder dies, on any host). Some cluster file systems have no ``flock`` (Lustre mounted
without it, some NFS): there the call fails with ``ENOLCK``, ``EOPNOTSUPP``, ``EINVAL``, ... rather
than ``EWOULDBLOCK``, and that must not read as "held", or nothing could ever start. The lock then
falls back, with one line saying so, to an exclusive lock file ``<folder>/.lock.held`` made with
``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+), holding the host, pid and time of
its holder. Nobody releases such a file for a process that died, so a file left by a dead process
of this host (its pid no longer running) is taken over with a line; one from another host cannot
be checked from here and is refused with the command that removes it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CoordTokError
from .fileio import note_written

LOCK_NAME = ".lock"
HELD_SUFFIX = ".held"

# flock's answers for "another process holds it"; any other error means flock cannot lock here.
_HELD_ERRNOS = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


class FolderLockError(CoordTokError):
    """A folder is locked by another process (or its lock cannot be made); one-line message."""


def _holder_line() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    """``(pid, host)`` of a holder line written by :func:`_holder_line` (None where unreadable)."""
    words = text.split()
    try:
        return int(words[words.index("pid") + 1]), words[words.index("on") + 1]
    except (ValueError, IndexError):
        return None, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FolderLock:
    """An exclusive lock on ``folder`` held by this process between :meth:`acquire` and :meth:`release`.

    ``who`` names the holder kind in the message a second process gets ("run", "demo", "encode");
    ``hint`` says what that process can do instead ("choose another train.out_dir").
    """

    def __init__(self, folder: str | Path, who: str, hint: str, log=None, name: str = LOCK_NAME):
        self.folder, self.who, self.hint = Path(folder), who, hint
        self.path = self.folder / name
        self.held_path = self.folder / (name + HELD_SUFFIX)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._handle = None
        self._held_file = False

    def _busy(self, holder: str) -> FolderLockError:
        return FolderLockError(
            f"{self.folder}: another {self.who} ({holder}) is writing to this folder; "
            f"wait for it to finish or {self.hint}"
        )

    def acquire(self) -> "FolderLock":
        """Take the lock (the folder must exist) or raise a one-line :class:`FolderLockError`."""
        import fcntl

        try:
            handle = open(self.path, "a+")
        except OSError as e:
            raise FolderLockError(
                f"{self.path}: cannot create the lock file ({e.strerror or e}); {self.hint}"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _HELD_ERRNOS:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise self._busy(holder) from None
            handle.close()
            reason = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else (e.strerror or str(e))
            self.log(
                f"{self.folder}: this file system cannot flock ({reason}); locking with {self.held_path.name} "
                f"instead, which a process killed on another host leaves behind"
            )
            self._acquire_held_file()
            return self
        handle.seek(0)
        handle.truncate()
        handle.write(_holder_line() + "\n")
        handle.flush()
        self._handle = handle
        note_written(self.path)
        return self

    def _acquire_held_file(self) -> None:
        """The fallback: create ``.lock.held`` exclusively; take over one left by a dead local process."""
        for _ in range(2):
            try:
                fd = os.open(self.held_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = self.held_path.read_text().strip()
                except OSError:
                    holder = ""  # removed in between: try again
                    continue
                pid, host = _parse_holder(holder)
                if host == socket.gethostname() and pid is not None and not _pid_alive(pid):
                    # Two processes taking over the same stale file at the same instant could both
                    # succeed (unlink, then O_EXCL each); a window of microseconds on a fallback path.
                    self.log(f"{self.held_path}: left by {holder}, which is no longer running; taking the lock over")
                    try:
                        self.held_path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                # Alive here, or on another host where its pid means nothing to us: refuse.
                raise FolderLockError(
                    f"{self.folder}: another {self.who} ({holder or 'unknown holder'}) holds {self.held_path.name}; "
                    f"wait for it to finish or {self.hint}; if that process is gone, delete {self.held_path}"
                ) from None
            except OSError as e:
                raise FolderLockError(
                    f"{self.held_path}: cannot create the lock file ({e.strerror or e}); {self.hint}"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(_holder_line() + "\n")
            self._held_file = True
            note_written(self.path)  # made above, before flock failed
            return
        raise self._busy("another process")

    def release(self) -> None:
        """Give the lock back: close the flocked file, or delete the lock file this process made."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._held_file:
            self._held_file = False
            try:
                pid, host = _parse_holder(self.held_path.read_text())
                if pid == os.getpid() and host == socket.gethostname():
                    self.held_path.unlink()
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
