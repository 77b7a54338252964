"""The one folder lock (coordtok/locking.py) on file systems without flock: "held" and "cannot lock
here" are told apart, and the fallback lock file excludes, is released, is taken over from a dead
local holder and names a holder on another host."""

import errno
import fcntl
import os
import socket
import subprocess
import sys

import pytest

from coordtok import checkpoint as ckpt
from coordtok.locking import FolderLock, FolderLockError


@pytest.fixture
def no_flock(monkeypatch):
    """A file system mounted without flock (Lustre without -o flock, some NFS): flock says ENOLCK."""

    def flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_flock_a_run_folder_falls_back_to_a_lock_file_and_says_so(tmp_path, no_flock):
    lines = []
    first = ckpt.RunFolder(tmp_path, "coordtok", log=lines.append)
    first.acquire()
    held = tmp_path / ".lock.held"
    assert len(lines) == 1 and "cannot flock (ENOLCK)" in lines[0] and ".lock.held" in lines[0]
    text = held.read_text()
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in text
    # a second run on the folder is refused while the first holds it: it is held, not unsupported
    with pytest.raises(ckpt.CheckpointError, match=f"another run \\(pid {os.getpid()} .*holds .lock.held"):
        ckpt.RunFolder(tmp_path, "coordtok", log=lines.append).acquire()
    assert held.read_text() == text  # the refused run left the holder's file alone
    first.release()
    assert not held.exists()
    with ckpt.RunFolder(tmp_path, "coordtok", log=lines.append).lock():  # free again
        assert held.is_file()
    assert not held.exists()


def test_a_lock_file_left_by_a_dead_local_process_is_taken_over_with_a_line(tmp_path, no_flock):
    pid = dead_pid()
    (tmp_path / ".lock.held").write_text(f"pid {pid} on {socket.gethostname()} since 2026-12-01 10:00:00 UTC\n")
    lines = []
    lock = FolderLock(tmp_path, "run", "choose another folder", lines.append).acquire()
    assert any(f"pid {pid}" in ln and "no longer running; taking the lock over" in ln for ln in lines), lines
    assert f"pid {os.getpid()} " in (tmp_path / ".lock.held").read_text()
    lock.release()


def test_a_lock_file_of_another_host_is_refused_naming_it_and_how_to_remove_it(tmp_path, no_flock):
    held = tmp_path / ".lock.held"
    held.write_text(f"pid {dead_pid()} on node-17.cluster since 2026-12-01 10:00:00 UTC\n")
    with pytest.raises(FolderLockError) as e:
        FolderLock(tmp_path, "run", "choose another train.out_dir", lambda m: None).acquire()
    msg = str(e.value)
    assert "\n" not in msg and "node-17.cluster" in msg and "2026-12-01 10:00:00" in msg
    assert f"delete {held}" in msg and "choose another train.out_dir" in msg
    assert held.is_file()  # never deleted for a host whose processes we cannot see


def test_a_held_flock_is_still_reported_as_held(tmp_path):
    with FolderLock(tmp_path, "run", "choose another folder", lambda m: None):
        with pytest.raises(FolderLockError, match=f"another run \\(pid {os.getpid()} on .*\\) is writing"):
            FolderLock(tmp_path, "run", "choose another folder", lambda m: None).acquire()
        assert not (tmp_path / ".lock.held").exists()
