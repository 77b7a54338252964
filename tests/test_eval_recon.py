"""`coordtok eval-recon` and `coordtok analyze` end to end on real frames with a stand-in detector."""
import json

import decord
import numpy as np
import pytest

from coordtok.cli import main
from coordtok.video_io import sample_video_paths, write_mp4
from sit_common import tiny_tokenizer
from test_fvd import _FakeStyleGANI3D, _script


@pytest.fixture(scope="module")
def setup(tmp_path_factory, root):
    ckpt = tiny_tokenizer(root)
    root = tmp_path_factory.mktemp("eval_recon")
    frames = decord.VideoReader(str(sample_video_paths()["bikes"]), width=80, height=64,
                                num_threads=1).get_batch(list(range(250))).asnumpy()
    write_mp4(root / "real" / "a.mp4", frames[:130])
    write_mp4(root / "real" / "b.mp4", frames[110:250])
    detector = root / "i3d" / "i3d_torchscript.pt"
    detector.parent.mkdir()
    _script(_FakeStyleGANI3D(dim=16)).save(str(detector))
    return root, ckpt, detector


def test_eval_recon_reports_rfvd_at_both_lengths_and_frame_metrics(setup, tmp_path, capsys):
    root, ckpt, detector = setup
    out = tmp_path / "out"
    assert main(["eval-recon", "--ckpt", str(ckpt), "--data", str(root / "real"), "--out", str(out),
                 "--num-clips", "3", "--detector", "stylegan", "--detector-path", str(detector),
                 "--write-videos", "1", "--no-progress", "--analysis"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["clips"] == 3 and r["frames"] == 128
    assert np.isfinite(r["rfvd_128"]) and np.isfinite(r["rfvd_16"]) and r["rfvd_128"] > 0
    assert 0 < r["psnr"] < 60 and 0 < r["ssim"] <= 1
    saved = json.loads((out / "recon.json").read_text())
    assert len(saved["per_clip"]) == 3 and np.isclose(np.mean([c["psnr"] for c in saved["per_clip"]]), r["psnr"])
    assert "rFVD (128 frames)" in (out / "recon.md").read_text()
    assert len(decord.VideoReader(str(out / "recon_0000.mp4"))) == 128
    assert (out / "analysis.png").stat().st_size > 0


def test_analyze_writes_table_and_plot_without_a_detector(setup, tmp_path, capsys):
    root, ckpt, _ = setup
    out = tmp_path / "an"
    assert main(["analyze", "--ckpt", str(ckpt), "--data", str(root / "real"), "--out", str(out),
                 "--num-clips", "2", "--write-videos", "0", "--no-progress"]) == 0
    capsys.readouterr()
    rows = (out / "analysis.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0] == "name,psnr,dynamics,frequency"
    assert (out / "analysis.png").stat().st_size > 0


def test_eval_recon_without_detector_weights_is_one_line(setup, tmp_path, capsys):
    root, ckpt, _ = setup
    assert main(["eval-recon", "--ckpt", str(ckpt), "--data", str(root / "real"), "--out", str(tmp_path),
                 "--num-clips", "1", "--detector-path", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "i3d_pretrained_400.pt" in err and "\n" not in err
