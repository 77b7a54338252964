"""The comparison a user runs: `coordtok train` for every baseline config (dispatch on `kind:`), then
`coordtok eval-recon` with every tokenizer on the same clips in one table, each reconstructed the
way its paper does it, with the seam jump beside the token count."""

import json

import decord
import numpy as np
import pytest
import torch
from sit_common import tiny_tokenizer

from coordtok.chunking import chunk_boundaries, reconstruct_chunked
from coordtok.cli import main
from coordtok.video_io import sample_video_paths, write_mp4
from eval.metrics import video_metrics

FRAMES = 40  # three causal 1+16 windows for MAGVIT-v2, four 17-frame windows overlapping by 4 for ProMAG


@pytest.fixture(scope="module")
def trained(tmp_path_factory, root):
    """One training step of each tiny baseline through the CLI (weights matter, not quality)."""
    out = tmp_path_factory.mktemp("baselines")
    runs = {}
    for name, config in (("magvit2", "magvit2-tiny"), ("promag", "promag-tiny-4x"), ("regen", "regen-tiny")):
        runs[name] = out / name
        assert (
            main(
                [
                    "train",
                    "--config",
                    f"configs/baselines/{config}.yaml",
                    "--out-dir",
                    str(runs[name]),
                    "--max-steps",
                    "1",
                    "--set",
                    "train.mixed_precision=no",
                    "--set",
                    "train.val_every=100",
                    "--no-progress",
                ]
            )
            == 0
        )
    runs["coordtok"] = tiny_tokenizer(root)
    frames = (
        decord.VideoReader(str(sample_video_paths()["bikes"]), width=80, height=64, num_threads=1)
        .get_batch(list(range(60)))
        .asnumpy()
    )
    write_mp4(out / "real" / "a.mp4", frames)
    return runs, out / "real"


@pytest.mark.slow
def test_train_dispatches_on_the_configs_kind(trained):
    from coordtok import checkpoint as ckpt

    runs, _ = trained
    for kind in ("magvit2", "promag", "regen"):
        state = ckpt.load(runs[kind] / "ckpt-0000001.pt")
        assert state["kind"] == kind and state["step"] == 1


@pytest.mark.slow
def test_one_table_for_every_tokenizer_and_protocol(trained, tmp_path, capsys):
    runs, real = trained
    capsys.readouterr()
    assert (
        main(
            [
                "eval-recon",
                "--data",
                str(real),
                "--frames",
                str(FRAMES),
                "--num-clips",
                "1",
                "--no-fvd",
                "--write-videos",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
                *[a for k in ("coordtok", "magvit2", "promag", "regen") for a in ("--ckpt", str(runs[k]))],
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)["results"]
    names = [r["tokenizer"] for r in results]
    assert names == [
        "CoordTok (320 tokens), windows of 128 frames overlapping by 16, blended",
        "MAGVIT-v2, causal 1+16-frame chunks",
        "ProMAG 4x, 17-frame chunks, 4-frame overlaps blended",
        "ProMAG 4x, 17-frame chunks, 1-frame overlaps dropped, no blending",
        "REGEN, 9-frame chunks, latent extension, 1-step decoding",
        "REGEN, 9-frame chunks, no latent extension, 1-step decoding",
    ]
    # tokens for 40 frames at 64x64: 3 MAGVIT-v2 windows of 5x8x8; ProMAG 4x: 3 windows of 17 overlapping by
    # 4 (starts 0, 13, 26; the last padded) or 3 overlapping by 1, 5x8x8 each; REGEN: 5 chunks of 9, 2x8x8
    assert [r["tokens"] for r in results] == [320, 3 * 320, 3 * 320, 3 * 320, 5 * 128, 5 * 128]
    table = (tmp_path / "recon.md").read_text()
    assert all(n in table for n in names) and table.count("\n| ") == 7
    assert all(np.isfinite(r["seam_boundary"]) and np.isfinite(r["seam_within"]) for r in results)

    # MAGVIT-v2's row is its model run window by window and stitched: the same PSNR from the checkpoint
    from baselines.checkpoint import load_baseline
    from eval.fvd import real_clips, real_data

    clip = real_clips(real_data(real), FRAMES, 64, 1, 0)[0]
    video = clip.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    model, _ = load_baseline(runs["magvit2"])
    with torch.no_grad():
        rec, info = reconstruct_chunked(lambda x: model(x)[0], video, chunk=17, overlap=1)
    assert info["boundaries"] == chunk_boundaries(FRAMES) == [17, 33]
    assert results[1]["psnr"] == pytest.approx(float(video_metrics(video, rec.clamp(-1, 1))["psnr"][0]), abs=1e-4)
    # each protocol's side-by-side video is in its own folder
    assert len(list(tmp_path.glob("*/recon_0000.mp4"))) == 6
