"""`coordtok sample` runs: sample i depends only on
(seed, i), so two gloo processes write what one writes; the folder holds a sampling manifest, the
same command resumes after a kill -9 without redoing finished samples, another run's folder or a
folder with other files is refused; progress counts network calls against a known total."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import accelerate_launch
from sit_common import SIT_CONFIG, tiny_tokenizer

from coordtok.cli import main
from coordtok.video_io import read_video
from sit.config import load_sit_run_config
from sit.train import train_sit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(root):
    return tiny_tokenizer(root)


@pytest.fixture(scope="module")
def sit(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sit-sample-runs")
    cfg = load_sit_run_config(
        SIT_CONFIG,
        {
            "train": {
                "max_steps": 2,
                "out_dir": str(out),
                "batch_size": 4,
                "log_every": 1,
                "ckpt_every": 2,
                "val_every": 0,
                "mixed_precision": "no",
            }
        },
    )
    train_sit(cfg, cache, progress=False)
    return out / "ckpt-0000002.pt"


def _argv(sit, tokenizer, out, *extra, num=3, steps=3, fmt="mp4", batch=1, progress=False):
    return [
        "sample",
        "--sit-ckpt",
        str(sit),
        "--tokenizer-ckpt",
        str(tokenizer),
        "--num",
        str(num),
        "--steps",
        str(steps),
        "--seed",
        "0",
        "--batch-size",
        str(batch),
        "--format",
        fmt,
        "--out",
        str(out),
        "--frames-per-chunk",
        "16",  # 16-frame chunks decode ~5x faster than the whole clip at once
        *(() if progress else ("--no-progress",)),
        *extra,
    ]


def _stamps(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("sample_*.mp4")}


def _frames(folder: Path, num: int) -> list[np.ndarray]:
    return [read_video(folder / f"sample_{i:04d}.mp4") for i in range(num)]


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("coordtok: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def reference_mp4(sit, tokenizer, tmp_path_factory):
    """An uninterrupted one-process run: 3 mp4 samples, batch 1."""
    out = tmp_path_factory.mktemp("ref") / "mp4"
    assert main(_argv(sit, tokenizer, out)) == 0
    return out


# ---------------------------------------------------------------------------- manifest (item 20)
@pytest.mark.slow
def test_the_folder_gets_a_manifest_and_the_same_command_resumes(sit, tokenizer, reference_mp4, tmp_path, capsys):
    manifest = json.loads((reference_mp4 / "sampling.json").read_text())
    run = manifest["run"]
    assert (run["seed"], run["num"], run["sampler"], run["steps"], run["format"]) == (0, 3, "sde", 3, "mp4")
    assert len(run["sit_fingerprint"]) == len(run["tokenizer_fingerprint"]) == 40
    assert sorted(p.name for p in reference_mp4.iterdir()) == [
        ".lock",
        "contact_sheet.png",
        "sample_0000.mp4",
        "sample_0001.mp4",
        "sample_0002.mp4",
        "sampling.json",
    ]
    out = tmp_path / "copy"
    shutil.copytree(reference_mp4, out)
    before = _stamps(out)
    capsys.readouterr()
    assert main(_argv(sit, tokenizer, out)) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == 3 and "resuming" in captured.err
    assert _stamps(out) == before  # nothing rewritten


def test_another_run_into_the_same_folder_is_refused(sit, tokenizer, reference_mp4, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_mp4, out)
    before = _stamps(out)
    for extra, needle in (({"seed": "1"}, "seed 0 there, 1 now"), ({"steps": "4"}, "steps 3 there, 4 now")):
        argv = _argv(sit, tokenizer, out, steps=int(extra.get("steps", 3)))
        argv[argv.index("--seed") + 1] = extra.get("seed", "0")
        assert main(argv) == 2
        line = _error_line(capsys)
        assert "another sampling run" in line and needle in line and "choose another --out" in line, line
    assert _stamps(out) == before


@pytest.mark.slow
def test_a_folder_with_files_the_sampler_did_not_write_is_refused(sit, tokenizer, reference_mp4, tmp_path, capsys):
    # a user's files, including one named like a sample, in a folder without a manifest
    for name in ("mine.mp4", "sample_0000.mp4"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_bytes(b"the user's")
        assert main(_argv(sit, tokenizer, out)) == 2
        line = _error_line(capsys)
        assert name in line and "did not write" in line and "no sampling.json" in line, line
        assert sorted(p.name for p in out.iterdir()) == [name]  # not even a lock file
        assert (out / name).read_bytes() == b"the user's"
    # the run's own folder with a user's file added
    out = tmp_path / "run"
    shutil.copytree(reference_mp4, out)
    (out / "notes.txt").write_text("mine")
    assert main(_argv(sit, tokenizer, out)) == 2
    assert "notes.txt" in _error_line(capsys)
    # an npz run's folder is not an mp4 run's
    out = tmp_path / "npz"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"x")
    assert main(_argv(sit, tokenizer, out)) == 2
    assert "samples.npz" in _error_line(capsys)


# ---------------------------------------------------------------------------- resume after a kill (point 4)
@pytest.mark.slow
def test_kill_9_after_the_first_sample_then_the_same_command_completes(sit, tokenizer, reference_mp4, tmp_path, capsys):
    out, ref = tmp_path / "killed", reference_mp4
    # the kill lands within ~10 ms of the first file; the next sample takes far longer (3 SiT
    # calls, decoding 128 frames, ffmpeg), and the assertion below says if it did not
    argv = _argv(sit, tokenizer, out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordtok", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    first = out / "sample_0000.mp4"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = sorted(p.name for p in out.glob("sample_*.mp4"))
    assert "sample_0000.mp4" in written and len(written) < 3, written  # killed mid-way
    before = _stamps(out)
    capsys.readouterr()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == len(written) and result["written"] == 3
    after = _stamps(out)
    assert {k: after[k] for k in before} == before  # the finished samples were not redone
    for a, b in zip(_frames(out, 3), _frames(ref, 3)):
        assert np.array_equal(a, b)
    assert (out / "contact_sheet.png").read_bytes() == (ref / "contact_sheet.png").read_bytes()
    assert not (out / ".parts").exists() and not list(out.glob(".*.tmp*"))


@pytest.mark.slow
def test_an_interrupted_npz_run_resumes_without_resampling_finished_batches(
    sit, tokenizer, tmp_path, monkeypatch, capsys
):
    import sit.sample as ss

    ref = tmp_path / "ref"
    assert main(_argv(sit, tokenizer, ref, fmt="npz", num=3)) == 0
    out = tmp_path / "run"
    real_save, saved = ss._save_npy, []

    def dies_at_the_second_batch(path, array):
        if path.name.startswith("batch-") and saved:
            raise KeyboardInterrupt  # as a Ctrl-C or kill between batches would
        real_save(path, array)
        if path.name.startswith("batch-"):
            saved.append(path.name)

    monkeypatch.setattr(ss, "_save_npy", dies_at_the_second_batch)
    assert main(_argv(sit, tokenizer, out, fmt="npz", num=3)) != 0
    assert "interrupted" in capsys.readouterr().err
    assert saved == ["batch-000000.npy"] and not (out / "samples.npz").exists()
    monkeypatch.setattr(ss, "_save_npy", real_save)
    real_sde, batches = ss.SAMPLERS["sde"], []

    class Counted:  # the registered sampler, counting the batches it samples
        calls, min_steps = staticmethod(real_sde.calls), real_sde.min_steps

        def __call__(self, velocity, noise, **kw):
            batches.append(noise.shape[0])
            return real_sde(velocity, noise, **kw)

    monkeypatch.setitem(ss.SAMPLERS, "sde", Counted())
    capsys.readouterr()
    assert main(_argv(sit, tokenizer, out, fmt="npz", num=3)) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert batches == [1, 1]  # batches 1 and 2 only
    with np.load(out / "samples.npz") as a, np.load(ref / "samples.npz") as b:
        assert a["videos"].shape == (3, 128, 64, 64, 3) and np.array_equal(a["videos"], b["videos"])
    assert sorted(p.name for p in out.iterdir()) == [".lock", "contact_sheet.png", "samples.npz", "sampling.json"]


# ---------------------------------------------------------------------------- many processes (point 4)
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npz", "mp4"])
def test_two_processes_write_what_one_process_writes(sit, tokenizer, reference_mp4, fmt, tmp_path):
    """3 samples in batches of 1: process 0 samples 0 and 2, process 1 sample 1."""
    one = reference_mp4 if fmt == "mp4" else tmp_path / "one"
    if fmt == "npz":
        assert main(_argv(sit, tokenizer, one, fmt=fmt)) == 0
    two = tmp_path / "two"
    res = subprocess.run(
        [
            *accelerate_launch(),
            "-m",
            "coordtok",
            *_argv(sit, tokenizer, two, fmt=fmt),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 processes" in res.stderr
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    if fmt == "npz":
        with np.load(one / "samples.npz") as a, np.load(two / "samples.npz") as b:
            assert np.array_equal(a["videos"], b["videos"])
    else:
        for i in range(3):
            assert (two / f"sample_{i:04d}.mp4").read_bytes() == (one / f"sample_{i:04d}.mp4").read_bytes()
    assert (two / "contact_sheet.png").read_bytes() == (one / "contact_sheet.png").read_bytes()
    assert (
        json.loads((two / "sampling.json").read_text())["run"] == json.loads((one / "sampling.json").read_text())["run"]
    )


@pytest.mark.slow
def test_a_sample_does_not_depend_on_its_batch(sit, tokenizer, tmp_path):
    """Sample 1 alone (batch 1) and beside sample 0 (batch 2): the same noise, so the same video up
    to float rounding of the batched network (uint8 frames within 1 level: rounding can flip one)."""
    for batch in (1, 2):
        assert main(_argv(sit, tokenizer, tmp_path / str(batch), fmt="npz", num=2, batch=batch)) == 0
    with np.load(tmp_path / "1" / "samples.npz") as a, np.load(tmp_path / "2" / "samples.npz") as b:
        diff = np.abs(a["videos"].astype(int) - b["videos"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------------------- progress (item 18)
@pytest.mark.slow
def test_progress_counts_network_calls_against_a_known_total(sit, tokenizer, tmp_path, capsys):
    # sde, 3 steps: 2 Euler-Maruyama steps + the mean step = 3 calls per batch; 2 batches
    assert main(_argv(sit, tokenizer, tmp_path / "a", num=2, progress=True)) == 0
    err = capsys.readouterr().err
    assert "network calls" in err and "6/6" in err and "3 network calls per batch" in err, err[-1500:]


@pytest.mark.slow
def test_an_adaptive_ode_says_it_ignores_steps(sit, tokenizer, tmp_path, capsys):
    assert main(_argv(sit, tokenizer, tmp_path / "a", "--sampler", "ode", num=1, fmt="npz")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert len(notes) == 1 and "--steps 3 is ignored" in notes[0] and "dopri5" in notes[0], notes
    argv = _argv(sit, tokenizer, tmp_path / "b", "--sampler", "ode", num=1, fmt="npz")
    del argv[argv.index("--steps") : argv.index("--steps") + 2]
    assert main(argv) == 0
    assert "ignored" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "sampling.json").read_text())["run"]["steps"] is None


@pytest.mark.slow
def test_every_registered_sampler_is_a_choice_and_samples(sit, tokenizer, tmp_path, capsys):
    """The CLI offers the registry (it offered three); a multistep solver runs through the same call."""
    assert main(_argv(sit, tokenizer, tmp_path / "a", "--sampler", "dpmpp_2m", num=1, fmt="npz", progress=True)) == 0
    err = capsys.readouterr().err
    assert "3 network calls per batch" in err and "3/3" in err, err[-1500:]
    assert json.loads((tmp_path / "a" / "sampling.json").read_text())["run"]["sampler"] == "dpmpp_2m"
