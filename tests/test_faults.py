"""Faults a training run survives: kill -9 then --resume, a full disk while checkpointing,
an output folder that cannot be created."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.cli import main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def _cmd(out: Path, *extra):
    return [
        sys.executable,
        "-m",
        "coordtok",
        "train",
        "--config",
        "configs/tokenizer/tiny.yaml",
        "--no-progress",
        "--set",
        f"train.out_dir={out}",
        "--set",
        f"train.max_steps={STEPS}",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.num_coords=256",
        "--set",
        "train.ckpt_every=1",
        "--set",
        "train.keep_checkpoints=10",
        "--set",
        "train.val_every=1000000",
        "--set",
        "data.names=[bikes]",
        "--set",
        "data.frame_range=[0, 140]",
        "--set",
        "val_data=null",
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    straight = tmp_path / "straight"
    subprocess.run(_cmd(straight), cwd=ROOT, check=True, capture_output=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(1, STEPS - 2)  # a random step; printed by pytest on failure
    proc = subprocess.Popen(_cmd(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / f"ckpt-{kill_after:07d}.pt").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.name for p in ckpt.list_checkpoints(killed)]
    assert f"ckpt-{STEPS:07d}.pt" not in done, f"killed too late (after step {kill_after})"

    subprocess.run(_cmd(killed, "--resume"), cwd=ROOT, check=True, capture_output=True, env=env, timeout=600)
    a = ckpt.load(straight / f"ckpt-{STEPS:07d}.pt")["model"]
    b = ckpt.load(killed / f"ckpt-{STEPS:07d}.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed run differs (killed after step {kill_after})"
    assert not list(killed.glob(".ckpt-*.tmp")), "temporary files of the killed write were left behind"


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what torch.save actually raises when the disk fills up under its zip writer
        RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 64 vs 0: file write failed"),
    ],
)
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    good = tmp_path / "ckpt-0000001.pt"
    ckpt.atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, good)
    before = good.read_bytes()

    def full_disk(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial bytes")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        ckpt.CheckpointError, match="writing the checkpoint failed.*previous checkpoint.*intact"
    ) as info:
        ckpt.atomic_save({"model": {}, "step": 2}, tmp_path / "ckpt-0000002.pt")
    assert "\n" not in str(info.value)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001.pt"]


def test_output_folder_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert (
        main(
            [
                "train",
                "--config",
                "configs/tokenizer/tiny.yaml",
                "--set",
                f"train.out_dir={blocker}/run",
                "--max-steps",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "cannot create the output folder" in err and "\n" not in err


@pytest.mark.slow
def test_bad_files_in_the_data_folder_are_skipped_and_training_goes_on(tmp_path, caplog):
    import decord

    from coordtok.config import load_tokenizer_config
    from coordtok.train import train
    from coordtok.video_io import sample_video_paths, write_mp4

    data = tmp_path / "videos"
    frames = (
        decord.VideoReader(str(sample_video_paths()["bikes"]), width=80, height=64, num_threads=1)
        .get_batch(list(range(140)))
        .asnumpy()
    )
    write_mp4(data / "good.mp4", frames)
    write_mp4(data / "too_short.mp4", frames[:10])
    (data / "corrupt.mp4").write_bytes(os.urandom(4096))
    (data / "truncated.mp4").write_bytes((data / "good.mp4").read_bytes()[:2000])
    (data / "empty.mp4").write_bytes(b"")
    (data / "notes.avi").write_text("not a video")
    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {
                "max_steps": 1,
                "out_dir": str(tmp_path / "run"),
                "batch_size": 1,
                "num_coords": 64,
                "val_every": 10**9,
            },
            "data": {"kind": "folder", "root": str(data), "min_frames": 32, "num_workers": 0},
            "val_data": None,
        },
    )
    with caplog.at_level("WARNING"):
        result = train(cfg, progress=False)
    assert result["step"] == 1 and (tmp_path / "run" / "ckpt-0000001.pt").is_file()
    report = caplog.text
    for name in ("too_short.mp4", "corrupt.mp4", "truncated.mp4", "empty.mp4", "notes.avi"):
        assert name in report, name
    assert "skipped 5 of 6 files" in report
