"""Bad numbers and files a user can give the inference commands, refused with one line before
any work: sampling steps, clip starts, memory budgets, configs, reference files, full disks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.errors import CoordTokError
from coordtok.video_io import read_video, sample_video_paths

BIKES = str(sample_video_paths()["bikes"])  # 250 frames


def _one_line_error(capsys, *needles: str) -> str:
    """The error line the command ended with (notes such as a loaded file's description may precede it)."""
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("coordtok: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---------------------------------------------------------------------------- sampling steps


def test_samplers_refuse_step_counts_out_of_range():
    from sit.samplers import MAX_STEPS, SamplingStepsError, euler_maruyama, heun_sde, ode

    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.ones(1, 3)
    # 10^8 Euler steps: a float32 grid of 10^8 + 1 points is not increasing (torchdiffeq asserted)
    for run in (
        lambda n: ode(zero, x, method="euler", num_steps=n),
        lambda n: euler_maruyama(zero, x, num_steps=n),
        lambda n: heun_sde(zero, x, num_steps=n),
    ):
        with pytest.raises(SamplingStepsError, match=f"must be [12]..{MAX_STEPS}"):
            run(10**8)
        with pytest.raises(SamplingStepsError):
            run(MAX_STEPS + 1)
    # the bound itself is allowed: the zero field leaves x unchanged after MAX_STEPS Euler steps
    assert torch.equal(ode(zero, x, method="euler", num_steps=MAX_STEPS), x)


@pytest.fixture(scope="module")
def regen_ckpt(tmp_path_factory):
    """A REGEN checkpoint of 9-frame chunks at 16 x 16 (random weights: only the command is tested)."""
    from baselines.regen import Regen, RegenConfig
    from coordtok.config import from_dict

    cfg = dict(
        frames=9,
        size=16,
        enc_channels=8,
        enc_multipliers=[1, 2, 2, 2],
        enc_spatial_down=[True, True, True],
        enc_blocks=1,
        hidden=64,
        depth=2,
        heads=4,
        patch=4,
        latent_patch=1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("regen") / "regen.pt"
    model = Regen(from_dict(RegenConfig, cfg, "test"))
    ckpt.atomic_save({"kind": "regen", "model": model.state_dict(), "config": {"model": cfg}}, path)
    return path


def test_reconstruct_refuses_decode_steps_before_loading(regen_ckpt, tmp_path, capsys, monkeypatch):
    import eval.tokenizers

    loaded = []
    original = eval.tokenizers.load_reconstructor
    monkeypatch.setattr(eval.tokenizers, "load_reconstructor", lambda *a, **k: loaded.append(1) or original(*a, **k))
    argv = [
        "reconstruct",
        "--ckpt",
        str(regen_ckpt),
        "--video",
        BIKES,
        "--frames",
        "9",
        "--out",
        str(tmp_path / "r.mp4"),
    ]
    assert main(argv + ["--decode-steps", "100000000"]) == 2
    _one_line_error(capsys, "--decode-steps 100000000", "1..10000", "network evaluation")
    assert not loaded and not (tmp_path / "r.mp4").exists()
    assert main(argv + ["--decode-steps", "2"]) == 0 and loaded  # the checkpoint itself is fine
    assert (tmp_path / "r.mp4").stat().st_size > 0


@pytest.mark.parametrize("sampler, low", [("sde", 2), ("ode", 1)])
def test_sample_refuses_steps_before_loading(sampler, low, tmp_path, capsys):
    # the checkpoints do not exist: the step count is refused before anything is read
    argv = [
        "sample",
        "--sit-ckpt",
        str(tmp_path / "sit.pt"),
        "--tokenizer-ckpt",
        str(tmp_path / "tok.pt"),
        "--num",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--sampler",
        sampler,
        "--steps",
        "100000000",
    ]
    assert main(argv) == 2
    _one_line_error(capsys, "--steps 100000000", f"{low}..10000")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- clip start


@pytest.mark.parametrize(
    "start, frames, stride, first_last", [(100000, 128, 1, "0..122"), (123, 128, 1, "0..122"), (10, 128, 2, "0..0")]
)
def test_reconstruct_refuses_a_start_past_the_video(regen_ckpt, tmp_path, capsys, start, frames, stride, first_last):
    out = tmp_path / "r.mp4"
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                str(regen_ckpt),
                "--video",
                BIKES,
                "--start",
                str(start),
                "--frames",
                str(frames),
                "--stride",
                str(stride),
                "--out",
                str(out),
                "--decode-steps",
                "1",
            ]
        )
        == 2
    )
    _one_line_error(capsys, f"--start {start}", "has 250 frames", f"starts at {first_last}")
    assert not out.exists()


def test_reconstruct_takes_the_last_start(regen_ckpt, tmp_path, capsys):
    out = tmp_path / "r.mp4"
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                str(regen_ckpt),
                "--video",
                BIKES,
                "--start",
                "241",
                "--frames",
                "9",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["start"] == 241 and metrics["frames"] == 9  # frames 241..249, the last 9


# ---------------------------------------------------------------------------- latent statistics

FIX = Path(__file__).resolve().parent / "fixtures" / "reference"


@pytest.fixture(scope="module")
def tokenizer_a(tmp_path_factory):
    """Reference fixture A (4 heads) converted: the tokenizer the reference SiT fixture's latents fit."""
    out = tmp_path_factory.mktemp("tok") / "coordtok_A.pt"
    assert main(["convert", "--ckpt", str(FIX / "coordtok_A.pth"), "--out", str(out), "--heads", "4"]) == 0
    return out


def _sit_run_with(tmp_path, old: str, new: str) -> Path:
    """A copy of the reference SiT run whose log.txt has ``old`` replaced by ``new``."""
    run = tmp_path / "sit_run"
    shutil.copytree(FIX / "sit_run", run)
    log = run / "log.txt"
    text = log.read_text()
    assert text.count(old) == 1
    log.write_text(text.replace(old, new))
    return run / "checkpoints" / "0000100.pt"


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("xy_std: tensor([1.0721, 1.4248", "xy_std: tensor([1.0721, nan", "xy_std[1] is nan"),
        ("yt_mean: tensor([ 0.0739", "yt_mean: tensor([ inf", "yt_mean[0] is inf"),
        (
            "xt_std: tensor([0.7438, 0.8382, 1.3847, 0.5763])",
            "xt_std: tensor([0.7438, 0.8382, 1.3847, 0.])",
            "xt_std[3] is 0.0",
        ),
    ],
)
def test_bad_log_statistics_are_refused_by_convert_and_sample(tokenizer_a, tmp_path, capsys, old, new, needle):
    sit = _sit_run_with(tmp_path, old, new)
    log = str(sit.parent.parent / "log.txt")
    assert main(["convert", "--ckpt", str(sit), "--out", str(tmp_path / "sit.pt")]) == 2
    _one_line_error(capsys, log, needle)
    assert not (tmp_path / "sit.pt").exists()
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(sit),
                "--tokenizer-ckpt",
                str(tokenizer_a),
                "--num",
                "1",
                "--steps",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    _one_line_error(capsys, log, needle)
    assert not out.exists()


def test_good_log_statistics_sample_finite_videos(tokenizer_a, tmp_path, capsys):
    """The unmodified log: the same commands succeed (the refusals above are about the values)."""
    sit = _sit_run_with(tmp_path, "xy_std", "xy_std")
    assert main(["convert", "--ckpt", str(sit), "--out", str(tmp_path / "sit.pt")]) == 0
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(sit),
                "--tokenizer-ckpt",
                str(tokenizer_a),
                "--num",
                "1",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "samples"),
                "--no-progress",
                "--format",
                "npz",
            ]
        )
        == 0
    )


def test_bad_statistics_in_a_stats_file_or_checkpoint_name_the_entry(tmp_path):
    from sit.stats import LatentStats

    good = LatentStats(grid=(2, 2, 2), mean=torch.zeros(3, 4), std=torch.ones(3, 4))
    d = good.to_dict()
    d["std"]["yt"][2] = float("nan")
    (tmp_path / "stats.json").write_text(json.dumps(d))  # json writes NaN, as a NaN std would be saved
    with pytest.raises(CoordTokError, match=r"stats.json: yt_std\[2\] is nan, must be finite and >= 0"):
        LatentStats.load(tmp_path / "stats.json")
    d["std"]["yt"][2] = 0.0  # a channel without spread is divided by eps: allowed here
    assert LatentStats.from_dict(d).std[1, 2] == 0
    d["mean"]["xt"][1] = float("-inf")
    with pytest.raises(CoordTokError, match=r"ckpt.pt: stats: xt_mean\[1\] is -inf"):
        LatentStats.from_dict(d, "ckpt.pt: stats")


# ---------------------------------------------------------------------------- profile configs

TINY = "configs/tokenizer/tiny.yaml"


@pytest.mark.parametrize(
    "text", ["", "# nothing but a comment\n", "kind: vqgan\nmodel: {}\ntrain: {}\n", "model:\n  width: 7\ntrain: {}\n"]
)
def test_profile_reads_its_config_as_train_does(tmp_path, capsys, text):
    """An empty file, an unknown kind or a bad value: the same line from profile as from train, no report."""
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out-dir", str(tmp_path / "run")]) == 2
    train_err = _one_line_error(capsys, str(config))
    assert (
        main(["profile", "--config", str(config), "--no-memory", "--frames", "16", "--out", str(tmp_path / "p")]) == 2
    )
    assert _one_line_error(capsys) == train_err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_profile_takes_baselines_with_baseline_only(tmp_path, capsys):
    out = str(tmp_path / "p")
    magvit = "configs/baselines/magvit2-tiny.yaml"
    assert main(["profile", "--config", magvit, "--no-memory", "--frames", "16", "--out", out]) == 2
    _one_line_error(capsys, "a magvit2 config", "--baseline")
    assert main(["profile", "--config", TINY, "--baseline", TINY, "--no-memory", "--frames", "16", "--out", out]) == 2
    _one_line_error(capsys, "a CoordTok config", "--config")
    assert main(["profile", "--config", TINY, "--baseline", magvit, "--no-memory", "--frames", "16", "--out", out]) == 0
    rows = json.loads((tmp_path / "p" / "profile.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"coordtok", "full", "magvit2"}


# ---------------------------------------------------------------------------- reference heads


def test_convert_of_a_custom_size_needs_its_heads(tmp_path, capsys):
    """Fixture A is 64-d with 4 heads: width / 64 would read it as 1 head, load without complaint
    and compute another triplane. Without --heads it is refused; with them the line states them."""
    out = tmp_path / "a.pt"
    assert main(["convert", "--ckpt", str(FIX / "coordtok_A.pth"), "--out", str(out)]) == 2
    _one_line_error(capsys, "coordtok_A.pth", "64-d, a custom size", "width / 64 = 1", "--heads", "enc_num_heads")
    assert not out.exists()
    for flags in (["--heads", "4"], ["--enc-heads", "4", "--dec-heads", "4"]):
        assert main(["convert", "--ckpt", str(FIX / "coordtok_A.pth"), "--out", str(out), *flags]) == 0
        info = json.loads(capsys.readouterr().out)["info"]
        assert info.endswith("4 encoder / 4 decoder heads"), info  # given, so nothing assumed
        state = ckpt.load(out)
        assert (state["config"]["model"]["enc_heads"], state["config"]["model"]["dec_heads"]) == (4, 4)
        out.unlink()
    # one of the two given is not enough
    assert main(["convert", "--ckpt", str(FIX / "coordtok_A.pth"), "--out", str(out), "--enc-heads", "4"]) == 2
    _one_line_error(capsys, "decoder is 64-d", "--dec-heads")


def test_a_released_size_states_the_heads_it_assumed():
    from coordtok.config import ModelConfig
    from coordtok.reference import convert_coordtok, reference_layout

    cfg = ModelConfig(
        frames=128,
        size=128,
        enc_dim=512,
        enc_layers=8,
        cross_layers=8,
        dec_dim=512,
        dec_layers=8,
        enc_heads=8,
        dec_heads=8,
    )  # CoordTok-S's shapes
    sd = {"module." + k: torch.empty(shape, device="meta") for k, (shape, _) in reference_layout(cfg).items()}
    got, _, info = convert_coordtok({"model": sd})
    assert (got.enc_heads, got.dec_heads) == (8, 8)
    assert "CoordTok-S" in info and "8 encoder / 8 decoder heads (width / 64" in info and "--heads" in info
    assert convert_coordtok({"model": sd}, heads=4)[0].enc_heads == 4


# ---------------------------------------------------------------------------- videos on a full disk


@pytest.fixture
def full_disk_for_videos(tmp_path, monkeypatch):
    """ffmpeg behind a wrapper that gives it a file size limit of ~1 kB (an all-black mp4 is ~1.7 kB)
    with SIGXFSZ ignored: its writes fail with EFBIG as they would on a full disk ("Error writing
    trailer: File too large"), while every other file the command touches (sample parts, DataLoader
    shared memory, caches) is unaffected."""
    import imageio_ffmpeg

    wrapper = tmp_path / "ffmpeg-on-a-full-disk"
    wrapper.write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 1\nexec '{imageio_ffmpeg.get_ffmpeg_exe()}' \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(wrapper))  # imageio_ffmpeg.get_ffmpeg_exe() reads it each call


def _assert_video_refused(status: int, capsys, out: Path) -> None:
    assert status == 2
    err = _one_line_error(capsys, f"{out}: writing the video failed (ffmpeg exited with status", "File too large")
    assert not out.exists(), err
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary file left either


def test_reconstruct_on_a_full_disk_is_one_line_and_no_file(regen_ckpt, tmp_path, capsys, full_disk_for_videos):
    out = tmp_path / "r.mp4"
    status = main(["reconstruct", "--ckpt", str(regen_ckpt), "--video", BIKES, "--frames", "9", "--out", str(out)])
    _assert_video_refused(status, capsys, out)


def test_sample_on_a_full_disk_is_one_line_and_no_file(tokenizer_a, tmp_path, capsys, full_disk_for_videos):
    out = tmp_path / "samples"
    status = main(
        [
            "sample",
            "--sit-ckpt",
            str(FIX / "sit_run" / "checkpoints" / "0000100.pt"),
            "--tokenizer-ckpt",
            str(tokenizer_a),
            "--num",
            "1",
            "--steps",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    _assert_video_refused(status, capsys, out / "sample_0000.mp4")


def test_eval_recon_on_a_full_disk_is_one_line_and_no_file(regen_ckpt, tmp_path, capsys, full_disk_for_videos):
    data = tmp_path / "videos"
    data.mkdir()
    (data / "bikes.mp4").symlink_to(BIKES)
    out = tmp_path / "eval"
    status = main(
        [
            "eval-recon",
            "--ckpt",
            str(regen_ckpt),
            "--data",
            str(data),
            "--out",
            str(out),
            "--num-clips",
            "1",
            "--frames",
            "9",
            "--no-fvd",
            "--extend",
            "--write-videos",
            "1",
            "--no-progress",
        ]
    )
    _assert_video_refused(status, capsys, out / "recon_0000.mp4")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 kB tmpfs: a real full disk (ENOSPC), where mounting is allowed (root), else skipped."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: a reader may still hold a file


def test_write_mp4_on_a_full_tmpfs(tiny_tmpfs):
    from coordtok.fileio import OutputError
    from coordtok.video_io import write_mp4

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)  # ~250 kB of H.264
    with pytest.raises(
        OutputError,
        match=r"v\.mp4: writing the video failed \(ffmpeg exited with status \d+: "
        r"Error writing trailer: No space left on device\)",
    ) as err:
        write_mp4(tiny_tmpfs / "v.mp4", noise)
    assert "\n" not in str(err.value) and list(tiny_tmpfs.iterdir()) == []
    small = write_mp4(tiny_tmpfs / "v.mp4", noise[:4, :32, :32])  # what fits is written as before
    assert read_video(small).shape == (4, 32, 32, 3)


def test_ffmpeg_write_errors_are_not_ignored():
    from coordtok.video_io import _check_ffmpeg

    _check_ffmpeg(0, "")
    for status, stderr, needle in (
        (
            228,
            "[out#0/mp4 @ 0x5562] Error writing trailer: No space left on device\n[out#0/mp4 @ 0x5562] "
            "Error closing file: No space left on device\n",
            "status 228: Error writing trailer: No space",
        ),
        (0, "[mp4 @ 0x1] Error writing trailer: File too large\n", "status 0: Error writing trailer: File too"),
        (-25, "", "killed by SIGXFSZ (the file size limit"),
        (1, "Unknown encoder 'libx264'\n", "Unknown encoder"),
    ):
        with pytest.raises(OSError, match=re.escape(needle)):
            _check_ffmpeg(status, stderr)


# ---------------------------------------------------------------------------- profile memory


@pytest.fixture
def no_real_step(monkeypatch):
    """Fails the test if a real training step (a measuring child process) starts."""
    import eval.profile

    def refuse(*a, **k):
        raise AssertionError("a real step ran")

    monkeypatch.setattr(eval.profile, "step_memory", refuse)


@pytest.mark.slow
def test_profile_refuses_a_clip_that_cannot_fit_before_any_step(tmp_path, capsys, monkeypatch, no_real_step):
    import eval.profile

    # 8 GB available, whatever this machine has: the tiny model's 100000-frame step needs ~23 GB by
    # the estimate (its activations grow with the clip); the 16-frame step (~0.06 GB) is not run either
    monkeypatch.setattr(eval.profile, "available_memory", lambda device: (8 * 10**9, "MemAvailable in /proc/meminfo"))
    argv = [
        "profile",
        "--config",
        TINY,
        "--frames",
        "16,100000",
        "--no-full",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "p"),
    ]
    assert main(argv) == 2
    _one_line_error(
        capsys,
        "100000 frames, CoordTok (sampled coordinates): one training step needs an estimated",
        "but 8.0 GB is available on cpu (MemAvailable in /proc/meminfo)",
        "--no-memory",
    )
    assert not (tmp_path / "p").exists()
    # FLOPs alone need no memory: the same clip lengths are profiled on the meta device
    assert main(argv + ["--no-memory"]) == 0
    rows = json.loads((tmp_path / "p" / "profile.json").read_text())["rows"]
    assert [r["frames"] for r in rows] == [16, 100000] and all(r["flops"] > 0 for r in rows)


def test_profile_refuses_a_budget_beyond_the_machine(tmp_path, capsys, no_real_step):
    from eval.profile import available_memory

    available, source = available_memory("cpu")
    assert source == "MemAvailable in /proc/meminfo" and 0 < available < 10**15
    assert (
        main(
            [
                "profile",
                "--config",
                TINY,
                "--frames",
                "16",
                "--no-full",
                "--device",
                "cpu",
                "--max-batch",
                "--budget-gb",
                "1000000",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    _one_line_error(
        capsys,
        "--budget-gb 1000000: more than the",
        "available on cpu (MemAvailable in /proc/meminfo)",
        f"pass --budget-gb {available // 10**9} or less",
    )
    assert not (tmp_path / "p").exists()


def test_a_step_the_allocator_refuses_counts_as_out_of_memory(monkeypatch):
    import eval.profile

    failed = subprocess.CompletedProcess(
        [],
        1,
        "",
        "RuntimeError: [enforce fail at alloc_cpu.cpp:116] data. "
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 96 GB",
    )
    monkeypatch.setattr(eval.profile.subprocess, "run", lambda *a, **k: failed)
    assert eval.profile.step_memory(to_dict_tiny(), "coordtok", 1024, 1, "cpu") == {"peak_bytes": None, "oom": True}


def to_dict_tiny() -> dict:
    from coordtok.config import load_model_config, to_dict

    return to_dict(load_model_config(TINY))
