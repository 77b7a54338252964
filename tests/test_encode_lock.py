"""Two `coordtok encode` runs into one --out: the cache folder is locked like a run folder, so the
second is one line while the first writes, instead of both exiting 0 with one's latents under the
other's index."""

import os
from pathlib import Path

import pytest
from helpers import accelerate_launch

from coordtok.cli import main
from coordtok.errors import CoordTokError
from coordtok.locking import FolderLock

TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "reference" / "coordtok_A.pth"
ENCODE = [
    "encode",
    "--tokenizer-ckpt",
    str(TOKENIZER),
    "--heads",
    "4",
    "--kind",
    "samples",
    "--data",
    "bikes",
    "--clips-per-video",
    "1",
    "--stats-num",
    "1",
    "--no-progress",
]


def test_encode_holds_the_cache_lock_while_it_writes_and_a_second_encode_is_refused(tmp_path, monkeypatch, capsys):
    import sit.encode

    out = tmp_path / "latents"
    refused = []
    write_shard = sit.encode._write_shard

    def second_encode_meanwhile(*args, **kwargs):  # another user's encode starts while this one writes
        if refused:  # once (and never from inside the second encode)
            return write_shard(*args, **kwargs)
        refused.append("started")
        assert main([*ENCODE, "--out", str(out)]) == 2
        refused.append(capsys.readouterr().err.strip().splitlines()[-1])
        with pytest.raises(CoordTokError, match="another encode"):
            FolderLock(out, "encode", "choose another --out").acquire()
        return write_shard(*args, **kwargs)

    monkeypatch.setattr(sit.encode, "_write_shard", second_encode_meanwhile)
    assert main([*ENCODE, "--out", str(out)]) == 0
    assert len(refused) == 2 and refused[1].startswith("coordtok: error:"), refused
    assert f"another encode (pid {os.getpid()} " in refused[1] and "choose another --out" in refused[1]
    assert (out / "index.json").is_file()
    with FolderLock(out, "encode", "choose another --out"):  # released when encoding ended
        pass


def test_encode_into_a_locked_cache_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "latents"
    out.mkdir()
    with FolderLock(out, "encode", "choose another --out", lambda m: None):
        assert main([*ENCODE, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "another encode" in err.splitlines()[-1], err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.slow
def test_two_process_encode_into_a_locked_cache_stops_on_every_rank(tmp_path):
    """Rank 0 takes the lock; when it cannot, every rank stops with its line (a rank that went on
    alone would wait forever at the next collective), and with the lock free both ranks encode."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    launch = [
        *accelerate_launch(),
        "-m",
        "coordtok",
        *ENCODE,
        "--clips-per-video",
        "2",
        "--shard-size",
        "1",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COORDTOK_CACHE": str(tmp_path / "c")}
    out = tmp_path / "latents"
    out.mkdir()
    with FolderLock(out, "encode", "choose another --out", lambda m: None):
        held = subprocess.run(
            [*launch, "--out", str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
    assert held.returncode != 0 and held.stderr.count("coordtok: error:") == 2, held.stderr[-3000:]
    assert held.stderr.count(f"another encode (pid {os.getpid()} ") == 2
    # no traceback from the project's code (the launcher prints its own for a failed rank)
    assert f'File "{root / "sit"}' not in held.stderr and f'File "{root / "coordtok"}' not in held.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    free = subprocess.run([*launch, "--out", str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert free.returncode == 0, free.stderr[-3000:]
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
