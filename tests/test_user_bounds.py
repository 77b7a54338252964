"""Bad numbers and files a user can give the inference commands, refused with one line before
any work: sampling steps, clip starts, memory budgets, configs, reference files, full disks."""
from __future__ import annotations

import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.video_io import sample_video_paths

BIKES = str(sample_video_paths()["bikes"])  # 250 frames


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---------------------------------------------------------------------------- sampling steps


def test_samplers_refuse_step_counts_out_of_range():
    from sit.samplers import MAX_STEPS, SamplingStepsError, euler_maruyama, heun_sde, ode

    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.ones(1, 3)
    # 10^8 Euler steps: a float32 grid of 10^8 + 1 points is not increasing (torchdiffeq asserted)
    for run in (lambda n: ode(zero, x, method="euler", num_steps=n),
                lambda n: euler_maruyama(zero, x, num_steps=n), lambda n: heun_sde(zero, x, num_steps=n)):
        with pytest.raises(SamplingStepsError, match=f"must be [12]..{MAX_STEPS}"):
            run(10 ** 8)
        with pytest.raises(SamplingStepsError):
            run(MAX_STEPS + 1)
    # the bound itself is allowed: the zero field leaves x unchanged after MAX_STEPS Euler steps
    assert torch.equal(ode(zero, x, method="euler", num_steps=MAX_STEPS), x)


@pytest.fixture(scope="module")
def regen_ckpt(tmp_path_factory):
    """A REGEN checkpoint of 9-frame chunks at 16 x 16 (random weights: only the command is tested)."""
    from coordtok.config import from_dict
    from sit.regen import Regen, RegenConfig

    cfg = dict(frames=9, size=16, enc_channels=8, enc_multipliers=[1, 2, 2, 2], enc_spatial_down=[True, True, True],
               enc_blocks=1, hidden=64, depth=2, heads=4, patch=4, latent_patch=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("regen") / "regen.pt"
    model = Regen(from_dict(RegenConfig, cfg, "test"))
    ckpt.atomic_save({"kind": "regen", "model": model.state_dict(), "config": {"model": cfg}},
                     path)
    return path


def test_reconstruct_refuses_decode_steps_before_loading(regen_ckpt, tmp_path, capsys, monkeypatch):
    import eval.tokenizers

    loaded = []
    original = eval.tokenizers.load_reconstructor
    monkeypatch.setattr(eval.tokenizers, "load_reconstructor", lambda *a, **k: loaded.append(1) or original(*a, **k))
    argv = ["reconstruct", "--ckpt", str(regen_ckpt), "--video", BIKES, "--frames", "9", "--out", str(tmp_path / "r.mp4")]
    assert main(argv + ["--decode-steps", "100000000"]) == 2
    _one_line_error(capsys, "--decode-steps 100000000", "1..10000", "network evaluation")
    assert not loaded and not (tmp_path / "r.mp4").exists()
    assert main(argv + ["--decode-steps", "2"]) == 0 and loaded  # the checkpoint itself is fine
    assert (tmp_path / "r.mp4").stat().st_size > 0


@pytest.mark.parametrize("sampler, low", [("sde", 2), ("ode", 1)])
def test_sample_refuses_steps_before_loading(sampler, low, tmp_path, capsys):
    # the checkpoints do not exist: the step count is refused before anything is read
    argv = ["sample", "--sit-ckpt", str(tmp_path / "sit.pt"), "--tokenizer-ckpt", str(tmp_path / "tok.pt"),
            "--num", "1", "--out", str(tmp_path / "out"), "--sampler", sampler, "--steps", "100000000"]
    assert main(argv) == 2
    _one_line_error(capsys, "--steps 100000000", f"{low}..10000")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- clip start


@pytest.mark.parametrize("start, frames, stride, first_last", [
    (100000, 128, 1, "0..122"), (123, 128, 1, "0..122"), (10, 128, 2, "0..0")])
def test_reconstruct_refuses_a_start_past_the_video(regen_ckpt, tmp_path, capsys, start, frames, stride, first_last):
    out = tmp_path / "r.mp4"
    assert main(["reconstruct", "--ckpt", str(regen_ckpt), "--video", BIKES, "--start", str(start),
                 "--frames", str(frames), "--stride", str(stride), "--out", str(out), "--decode-steps", "1"]) == 2
    _one_line_error(capsys, f"--start {start}", "has 250 frames", f"starts at {first_last}")
    assert not out.exists()


def test_reconstruct_takes_the_last_start(regen_ckpt, tmp_path, capsys):
    out = tmp_path / "r.mp4"
    assert main(["reconstruct", "--ckpt", str(regen_ckpt), "--video", BIKES, "--start", "241", "--frames", "9",
                 "--out", str(out)]) == 0
    import json

    metrics = json.loads(capsys.readouterr().out)
    assert metrics["start"] == 241 and metrics["frames"] == 9  # frames 241..249, the last 9
