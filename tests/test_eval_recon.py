"""`coordtok eval-recon` and `coordtok analyze` end to end on real frames with a stand-in detector."""

import json

import decord
import numpy as np
import pytest
from sit_common import tiny_tokenizer
from test_fvd import _FakeStyleGANI3D, _script

from coordtok.cli import main
from coordtok.video_io import sample_video_paths, write_mp4


@pytest.fixture(scope="module")
def setup(tmp_path_factory, root):
    ckpt = tiny_tokenizer(root)
    root = tmp_path_factory.mktemp("eval_recon")
    frames = (
        decord.VideoReader(str(sample_video_paths()["bikes"]), width=80, height=64, num_threads=1)
        .get_batch(list(range(250)))
        .asnumpy()
    )
    write_mp4(root / "real" / "a.mp4", frames[:130])
    write_mp4(root / "real" / "b.mp4", frames[110:250])
    detector = root / "i3d" / "i3d_torchscript.pt"
    detector.parent.mkdir()
    _script(_FakeStyleGANI3D(dim=16)).save(str(detector))
    return root, ckpt, detector


@pytest.mark.slow
def test_eval_recon_reports_rfvd_at_both_lengths_and_frame_metrics(setup, tmp_path, capsys):
    root, ckpt, detector = setup
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--data",
                str(root / "real"),
                "--out",
                str(out),
                "--num-clips",
                "3",
                "--detector",
                "stylegan",
                "--detector-path",
                str(detector),
                "--write-videos",
                "1",
                "--no-progress",
                "--analysis",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["clips"] == 3 and r["frames"] == 128
    assert np.isfinite(r["rfvd_128"]) and np.isfinite(r["rfvd_16"]) and r["rfvd_128"] > 0
    assert 0 < r["psnr"] < 60 and 0 < r["ssim"] <= 1
    saved = json.loads((out / "recon.json").read_text())
    assert len(saved["per_clip"]) == 3 and np.isclose(np.mean([c["psnr"] for c in saved["per_clip"]]), r["psnr"])
    table = (out / "recon.md").read_text()
    assert "rFVD (128 f)" in table and "seam jump at boundaries" in table and "CoordTok (320 tokens)" in table
    assert r["tokens"] == 320 and np.isfinite(r["seam_boundary"]) and np.isfinite(r["seam_within"])
    assert len(decord.VideoReader(str(out / "recon_0000.mp4"))) == 128
    assert (out / "analysis.png").stat().st_size > 0
    # Clip 0's numbers are what a direct reconstruction of the same real clip gives.
    import torch

    from coordtok.checkpoint import load_tokenizer
    from coordtok.chunking import chunk_boundaries
    from eval.fvd import real_clips, real_data
    from eval.metrics import video_metrics
    from eval.seams import seam_jump

    clip = real_clips(real_data(root / "real"), 128, 64, 3, 0)[0]
    video = clip.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    rec = load_tokenizer(ckpt)[0].reconstruct(video).clamp(-1, 1)
    row = saved["per_clip"][0]
    assert row["psnr"] == pytest.approx(float(video_metrics(video, rec)["psnr"][0]), abs=1e-4)
    from coordtok.video_io import to_uint8

    fake = torch.from_numpy(to_uint8(rec))
    assert row["seam_boundary"] == pytest.approx(
        seam_jump(clip[None], fake, chunk_boundaries(128))["boundary"], abs=1e-9
    )


@pytest.mark.slow
def test_eval_recon_takes_shorter_clips(setup, tmp_path, capsys):
    """--frames is honoured: CoordTok masks a 64-frame clip (a longer one goes in overlapping windows,
    tests/test_long_videos.py; an overlap past half a window is an error)."""
    root, ckpt, _ = setup
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--data",
                str(root / "real"),
                "--out",
                str(tmp_path / "a"),
                "--num-clips",
                "1",
                "--frames",
                "64",
                "--no-fvd",
                "--write-videos",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["frames"] == 64
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--data",
                str(root / "real"),
                "--out",
                str(tmp_path / "b"),
                "--num-clips",
                "1",
                "--frames",
                "256",
                "--overlap",
                "65",
                "--no-fvd",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--overlap 65: CoordTok's windows of 128 frames overlap by 0 to 64 frames" in capsys.readouterr().err


@pytest.mark.slow
def test_analyze_writes_table_and_plot_without_a_detector(setup, tmp_path, capsys):
    root, ckpt, _ = setup
    out = tmp_path / "an"
    assert (
        main(
            [
                "analyze",
                "--ckpt",
                str(ckpt),
                "--data",
                str(root / "real"),
                "--out",
                str(out),
                "--num-clips",
                "2",
                "--write-videos",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = (out / "analysis.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0] == "name,psnr,dynamics,frequency"
    assert (out / "analysis.png").stat().st_size > 0


def test_eval_recon_without_detector_weights_is_one_line(setup, tmp_path, capsys):
    root, ckpt, _ = setup
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--data",
                str(root / "real"),
                "--out",
                str(tmp_path),
                "--num-clips",
                "1",
                "--detector-path",
                str(tmp_path / "none"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "i3d_pretrained_400.pt" in err and "\n" not in err
