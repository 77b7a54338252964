"""Reference-format checkpoints (the released CoordTok and CoordTok-SiT files) through every command
that takes a checkpoint: convert, reconstruct, encode, stage-2 fine-tuning, SiT fine-tuning and
sampling, with the latent statistics from the reference run's log.txt or a stats.json.

The fixtures are tiny files made by the reference code (tests/fixtures/reference/README.md):
tokenizer A (16 frames at 32x32, a 8x8x8 triplane with 4 channels, 4 heads) and a SiT over that
triplane, with the run's log.txt next to its checkpoints/ folder.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.video_io import sample_video_paths

FIX = Path(__file__).resolve().parent / "fixtures" / "reference"
TOKENIZER = FIX / "coordtok_A.pth"
SIT = FIX / "sit_run" / "checkpoints" / "0000100.pt"
HEADS = ["--heads", "4"]  # the fixture's 64-d model has 4 heads; the released 1024-d ones have width / 64 = 16
BIKES = str(sample_video_paths()["bikes"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "coordtok_A.pt"
    assert main(["convert", "--ckpt", str(TOKENIZER), "--out", str(out), *HEADS]) == 0
    return out


@pytest.mark.slow
def test_convert_writes_a_project_checkpoint_that_computes_the_same(converted, capsys):
    state = ckpt.load(converted)
    assert state["kind"] == "coordtok" and state["config"]["model"]["enc_heads"] == 4
    assert state["config"]["model"]["vit_norm_eps"] == 1e-5 and state["source"] == "reference"
    direct, _ = ckpt.load_tokenizer(TOKENIZER, heads=4)
    again, _ = ckpt.load_tokenizer(converted)
    assert direct.config == again.config
    video = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(direct.reconstruct(video), again.reconstruct(video))


@pytest.mark.slow
def test_reconstruct_on_the_converted_file_equals_the_original(converted, tmp_path, capsys):
    capsys.readouterr()
    runs = []
    for ckpt_path, extra in ((TOKENIZER, HEADS), (converted, [])):
        out = tmp_path / f"{Path(ckpt_path).stem}.mp4"
        assert (
            main(
                ["reconstruct", "--ckpt", str(ckpt_path), "--video", BIKES, "--start", "10", "--out", str(out), *extra]
            )
            == 0
        )
        captured = capsys.readouterr()
        runs.append(json.loads(captured.out))
        if ckpt_path == TOKENIZER:  # one line says what was found
            assert "reference CoordTok checkpoint, custom" in captured.err and "stage 1" in captured.err
    for key in ("psnr", "ssim", "tokens", "frames"):
        assert runs[0][key] == runs[1][key], key
    assert runs[0]["tokens"] == 8 * 8 * 3 and runs[0]["frames"] == 16


def test_stage2_fine_tuning_starts_from_a_reference_file(tmp_path, capsys):
    """train --stage 2 --init-from <reference .pth>: its heads and clip shape come from the config."""
    model = yaml.safe_load((FIX / "coordtok_A.project.yaml").read_text())["model"]
    config = tmp_path / "a.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "train": {
                    "batch_size": 1,
                    "num_frames_stage2": 2,
                    "lr": 0.0,
                    "stage2_lpips_weight": 0.0,
                    "mixed_precision": "no",
                    "log_every": 1,
                    "ckpt_every": 1,
                },
                "data": {"kind": "samples", "names": ["bikes"], "num_workers": 0},
            }
        )
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--stage",
                "2",
                "--init-from",
                str(TOKENIZER),
                "--out-dir",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "initialised from" in capsys.readouterr().err
    tuned = ckpt.load(tmp_path / "run" / "ckpt-0000001.pt")["model"]
    _, state = ckpt.load_tokenizer(TOKENIZER, heads=4)
    assert all(torch.equal(tuned[k], state["model"][k]) for k in tuned)  # lr 0: exactly the released weights


@pytest.mark.slow
def test_sampling_a_reference_sit_reads_the_statistics_from_its_log(converted, tmp_path, capsys):
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(SIT),
                "--tokenizer-ckpt",
                str(converted),
                "--num",
                "1",
                "--steps",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "reference CoordTok-SiT checkpoint" in err and "latent statistics from" in err and "log.txt" in err
    assert (out / "sample_0000.mp4").stat().st_size > 0


def test_sampling_a_reference_sit_without_statistics_names_the_three_ways(converted, tmp_path, capsys):
    alone = tmp_path / "sit.pt"
    shutil.copy(SIT, alone)  # no log.txt beside it
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(alone),
                "--tokenizer-ckpt",
                str(converted),
                "--num",
                "1",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds no latent normalization statistics" in err
    assert "--latent-stats" in err and "log.txt" in err and "stats.json" in err and "coordtok encode" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_statistics_from_encode_or_the_log_are_accepted(converted, tmp_path, capsys):
    """encode on the converted tokenizer writes stats.json; sample takes it (or the log) with --latent-stats,
    and convert stores them in the SiT's project checkpoint."""
    cache = tmp_path / "latents"
    assert (
        main(
            [
                "encode",
                "--tokenizer-ckpt",
                str(converted),
                "--kind",
                "samples",
                "--data",
                "bikes",
                "--out",
                str(cache),
                "--clips-per-video",
                "2",
                "--stats-num",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    alone = tmp_path / "sit.pt"
    shutil.copy(SIT, alone)
    for stats in (cache / "stats.json", FIX / "sit_run" / "log.txt"):
        out = tmp_path / f"s-{stats.suffix[1:]}"
        assert (
            main(
                [
                    "sample",
                    "--sit-ckpt",
                    str(alone),
                    "--tokenizer-ckpt",
                    str(converted),
                    "--num",
                    "1",
                    "--steps",
                    "3",
                    "--out",
                    str(out),
                    "--latent-stats",
                    str(stats),
                    "--no-progress",
                ]
            )
            == 0
        )
        assert (out / "sample_0000.mp4").is_file()
    converted_sit = tmp_path / "sit-project.pt"
    assert (
        main(
            [
                "convert",
                "--ckpt",
                str(alone),
                "--out",
                str(converted_sit),
                "--latent-stats",
                str(FIX / "sit_run" / "log.txt"),
            ]
        )
        == 0
    )
    state = ckpt.load(converted_sit)
    assert state["kind"] == "sit" and state["stats"]["mean"]["xy"] == [0.2213, 0.5838, -0.2099, -0.3907]
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(converted_sit),
                "--tokenizer-ckpt",
                str(converted),
                "--num",
                "1",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "s-converted"),
                "--no-progress",
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_sit_fine_tuning_starts_from_a_reference_checkpoint(converted, tmp_path, capsys):
    """sit-train --init-from <reference .pt>: the model takes its training weights, the EMA its EMA."""
    cache = tmp_path / "latents"
    assert (
        main(
            [
                "encode",
                "--tokenizer-ckpt",
                str(converted),
                "--kind",
                "samples",
                "--data",
                "bikes",
                "--out",
                str(cache),
                "--clips-per-video",
                "2",
                "--stats-num",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    model = yaml.safe_load((FIX / "sit.project.yaml").read_text())["model"]
    config = tmp_path / "sit.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "train": {
                    "batch_size": 2,
                    "lr": 0.0,
                    "ema": 1.0,
                    "mixed_precision": "no",
                    "sample_every": 0,
                    "ckpt_every": 1,
                },
            }
        )
    )
    assert (
        main(
            [
                "sit-train",
                "--config",
                str(config),
                "--latents",
                str(cache),
                "--init-from",
                str(SIT),
                "--out-dir",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    tuned = ckpt.load(tmp_path / "run" / "ckpt-0000001.pt")
    raw = ckpt.load_any(SIT)
    assert all(torch.equal(tuned["model"][k], raw["model"][k]) for k in raw["model"])
    # EMA parameters stay the reference's EMA; buffers (the fixed sin-cos table) follow the model, as
    # in every EMA step (the fixture perturbed the model's and the EMA's tables differently).
    assert all(torch.equal(tuned["ema"][k], raw["ema"][k]) for k in raw["ema"] if k != "pos_embed_xy")
    assert torch.equal(tuned["ema"]["pos_embed_xy"], raw["model"]["pos_embed_xy"])
