"""A checkpoint write that runs out of room (full disk, quota, ``ulimit -f``) is one line and leaves
the previous checkpoint intact, for every command that writes one.

The short write is real: the command runs in a child process whose file size limit
(RLIMIT_FSIZE, what ``ulimit -f`` sets) is below the checkpoint's size, with SIGXFSZ ignored so that
the write returns short instead of killing the process. torch's zip writer then fails its own check
(``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos ...``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordtok import checkpoint as ckpt
from coordtok.cli import main

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "fixtures" / "reference" / "coordtok_A.pth"
TINY = str(ROOT / "configs" / "tokenizer" / "tiny.yaml")

CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from coordtok.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_limited(limit: int, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COORDTOK_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_short_write(proc: subprocess.CompletedProcess, path: Path) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and "enforce fail" not in err, err
    last = err.splitlines()[-1]
    assert (
        last.startswith("coordtok: error:")
        and str(path) in last
        and "could not be written in full" in last
        and "file size limit" in last
        and "is intact" in last
    ), last


@pytest.mark.slow
def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys):
    whole = tmp_path / "whole.pt"
    assert main(["convert", "--ckpt", str(TOKENIZER), "--out", str(whole), "--heads", "4"]) == 0
    out = tmp_path / "tok.pt"
    proc = run_limited(
        whole.stat().st_size // 2, ["convert", "--ckpt", str(TOKENIZER), "--out", str(out), "--heads", "4"], tmp_path
    )
    assert_one_line_short_write(proc, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["whole.pt"]  # no torn file left


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    common = [
        "train",
        "--config",
        TINY,
        "--out-dir",
        str(run),
        "--no-progress",
        "--set",
        "train.ckpt_every=1",
        "--set",
        "train.val_every=1000",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.num_coords=64",
        "--set",
        "data.names=[bikes]",
        "--set",
        "data.frame_range=[0,140]",
        "--set",
        "val_data=null",
    ]
    assert main([*common, "--max-steps", "1"]) == 0
    first = run / "ckpt-0000001.pt"
    before = first.read_bytes()
    proc = run_limited(len(before) // 2, [*common, "--max-steps", "2", "--resume"], tmp_path)
    assert_one_line_short_write(proc, run / "ckpt-0000002.pt")
    assert first.read_bytes() == before and [p.name for p in ckpt.list_checkpoints(run)] == ["ckpt-0000001.pt"]
    assert not list(run.glob(".ckpt-*"))  # the torn temporary is removed
    assert ckpt.load(first)["step"] == 1


def test_both_forms_of_torchs_short_write_are_io_errors(tmp_path):
    """The error torch.save raises depends on where the short write is noticed: the zip writer's
    position check, or the stream (seen alone when the writer's own exit does not fail again)."""
    import pytest

    from coordtok.fileio import OutputError, atomic_path

    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous")
    for message in (
        "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
        "basic_ios::clear: iostream error",
    ):
        with pytest.raises(
            OutputError, match="could not be written in full.*the previous checkpoint, if any, is intact"
        ):
            with atomic_path(target, "checkpoint") as tmp:
                tmp.write_bytes(b"half")
                raise RuntimeError(message)
        assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
