"""The command line as a user runs it: reconstruct and the quick demo."""

import json

import decord
import pytest
from sit_common import tiny_tokenizer

from coordtok.cli import main
from coordtok.video_io import sample_video_paths


@pytest.fixture(scope="module")
def tokenizer_ckpt(root):
    return tiny_tokenizer(root)


@pytest.mark.slow
def test_reconstruct_writes_side_by_side_and_metrics(tokenizer_ckpt, tmp_path, capsys):
    out = tmp_path / "rec.mp4"
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                str(tokenizer_ckpt),
                "--video",
                str(sample_video_paths()["bikes"]),
                "--start",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["start"] == 100 and metrics["frames"] == 128 and metrics["tokens"] == 320
    reader = decord.VideoReader(str(out))
    assert len(reader) == 128 and reader[0].shape[0] == 64 and reader[0].shape[1] > 2 * 64  # gt | recon
    # The numbers are those of the clip starting at frame 100, reconstructed by the checkpoint.
    from coordtok.checkpoint import load_tokenizer
    from coordtok.data import VideoClipDataset
    from eval.metrics import video_metrics

    clip = VideoClipDataset(
        [sample_video_paths()["bikes"]], num_frames=128, size=64, deterministic_start=100, cache_dir=False
    )[0]["video"][None]
    rec = load_tokenizer(tokenizer_ckpt)[0].reconstruct(clip).clamp(-1, 1)
    want = video_metrics(clip, rec)
    assert metrics["psnr"] == pytest.approx(float(want["psnr"][0]), abs=1e-4)
    assert metrics["ssim"] == pytest.approx(float(want["ssim"][0]), abs=1e-5)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["reconstruct", "--ckpt", "missing.pt", "--video", str(sample_video_paths()["bikes"])],
            "missing.pt: checkpoint not found",
        ),
        (["train", "--config", "configs/tokenizer/nope.yaml"], "config file not found"),
        (["train", "--config", "configs/tokenizer/tiny.yaml", "--set", "model.size=60"], "not divisible"),
        (["train", "--config", "configs/tokenizer/tiny.yaml", "--set", "data.root"], "section.key=value"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and needle in err and "\n" not in err


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "ckpt-0000001.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["reconstruct", "--ckpt", str(bad), "--video", str(sample_video_paths()["bikes"])]) == 2
    assert "unreadable checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_writes_summary_and_video(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "128-frame reconstruction" in summary and "CoordTok-SiT" in summary and "MAGVIT-v2" in summary
    assert set(metrics["comparison"]) == {"heldout"}  # --quick: the held-out window only
    rows = {r["key"]: r for r in metrics["comparison"]["heldout"]["rows"]}
    assert set(rows) == {"coordtok", "magvit2", "promag-8x", "promag-8x-no-blend", "regen", "regen-no-extension"}
    # token counts of the 128-frame protocol at 64x64: CoordTok's triplane, MAGVIT-v2's 8 causal
    # 1+16 windows of 5x8x8, ProMAG 8x's 10 windows (17 frames, 4 overlapping) of 3x8x8, or 8 with
    # one-frame overlaps; REGEN's 15 9-frame chunks of 2x8x8
    assert {k: r["tokens"] for k, r in rows.items()} == {
        "coordtok": 320,
        "magvit2": 8 * 5 * 64,
        "promag-8x": 10 * 3 * 64,
        "promag-8x-no-blend": 8 * 3 * 64,
        "regen": 15 * 2 * 64,
        "regen-no-extension": 15 * 2 * 64,
    }
    for r in rows.values():
        assert len(decord.VideoReader(str(out / r["video"]))) == 128
    samples = sorted((out / "samples").glob("sample_*.mp4"))
    assert len(samples) == 2 and all(len(decord.VideoReader(str(p))) == 128 for p in samples)
    # the two sample clips are two classes: a class-conditional SiT, one sample of each
    assert metrics["sit"]["classes"] == ["bikes", "bigbuckbunny"] and metrics["sit"]["labels"] == [0, 1]
    assert json.loads((out / "samples" / "sampling.json").read_text())["labels"] == [0, 1]
    unconditional = sorted((out / "samples-unconditional").glob("sample_*.mp4"))
    assert len(unconditional) == 1 and len(decord.VideoReader(str(unconditional[0]))) == 128
    assert metrics["sit"]["unconditional_files"] == ["samples-unconditional/sample_0000.mp4"]
    assert "labels" not in json.loads((out / "samples-unconditional" / "sampling.json").read_text())
    for name in ("samples/contact_sheet.png", "analysis.png", "profile_flops.png", "comparison.md"):
        assert (out / name).stat().st_size > 0, name
    assert {r["mode"] for r in metrics["profile"]} == {"coordtok", "full", "magvit2", "promag", "regen"}
    # a second run reuses every finished stage and reports the same metrics
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["coordtok"] == metrics["coordtok"] and again["comparison"] == metrics["comparison"]
    # every file and folder the demo wrote is in its manifest (checkpoints, locks, TensorBoard,
    # latents, videos, plots), so `demo --fresh` removes all of it and nothing of the user's
    from eval.demo import MANIFEST, MARKER, prepare_folder

    own = {MARKER, MANIFEST, ".lock"}
    listed = json.loads((out / MANIFEST).read_text())
    # (listed files the demo itself removed since, pruned checkpoints or scratch files, are gone)
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - own <= set(listed["files"])
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()} <= set(listed["folders"])
    assert {"runs/tokenizer/ckpt-0000020.pt", "runs/sit/.lock", "latents/index.json", "summary.md"} <= set(
        listed["files"]
    ) and any(f.startswith("runs/tokenizer/tb/events.out.tfevents.") for f in listed["files"])
    mine = ["runs/my-own-run/ckpt-0000100.pt", "samples/mine.mp4", "reconstructions/mine.mp4"]
    for rel in mine:
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_text(rel)
    prepare_folder(out, fresh=True)  # what `demo --fresh` does before it starts over
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(own | set(mine))
    assert all((out / rel).read_text() == rel for rel in mine)
