"""Videos longer than CoordTok's clip: windows of the clip length overlapping by
K frames, each encoded and decoded on its own, the overlaps blended linearly
(:func:`coordtok.chunking.reconstruct_chunked`, the blender ProMAG's chunks go through).

A tiny CoordTok of 32-frame 32x32 clips stands in for the 128-frame tokenizers, so a 300-frame
video is 11 windows (stride 28 at the default overlap of 4 = 32 // 8).
"""

import json

import decord
import numpy as np
import pytest
import torch

from coordtok.chunking import blend_weights, chunk_boundaries, chunk_windows, default_overlap
from coordtok.cli import main
from coordtok.config import ConfigError, ModelConfig
from coordtok.model import CoordTok
from coordtok.video_io import sample_video_paths, write_mp4
from eval.seams import seam_jump
from eval.tokenizers import CoordTokReconstructor

FRAMES, SIZE, LONG = 32, 32, 300
MODEL = dict(
    frames=FRAMES,
    size=SIZE,
    enc_patch_t=8,
    enc_patch_xy=16,
    enc_dim=32,
    enc_layers=1,
    enc_heads=2,
    cross_layers=1,
    latent_xy=8,
    latent_t=16,
    latent_channels=4,
    latent_patch_xy=4,
    latent_patch_t=8,
    dec_dim=32,
    dec_layers=1,
    dec_heads=2,
    dec_patch_xy=8,
    dec_patch_t=1,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CoordTok(ModelConfig(**MODEL)).eval()


@pytest.fixture(scope="module")
def long_video():
    """300 frames of bikes at 40x32 (its 250 frames, then back over frames 249..200: motion throughout)."""
    reader = decord.VideoReader(str(sample_video_paths()["bikes"]), width=40, height=32, num_threads=1)
    frames = reader.get_batch(list(range(250))).asnumpy()
    return np.concatenate([frames, frames[249:199:-1]])  # (300, 32, 40, 3) uint8


@pytest.fixture(scope="module")
def files(tmp_path_factory, long_video):
    """A 300-frame mp4 in a folder of its own and a tiny CoordTok checkpoint (one training step)."""
    from coordtok.config import load_tokenizer_config
    from coordtok.train import train

    root = tmp_path_factory.mktemp("long_videos")
    video = write_mp4(root / "videos" / "long.mp4", long_video)
    out = root / "tokenizer"
    cfg = load_tokenizer_config(
        {
            "model": MODEL,
            "train": {
                "max_steps": 1,
                "out_dir": str(out),
                "batch_size": 1,
                "num_coords": 64,
                "log_every": 1,
                "ckpt_every": 1,
                "val_every": 10**9,
                "keep_checkpoints": 1,
                "mixed_precision": "no",
            },
            "data": {
                "kind": "samples",
                "names": ["bikes"],
                "frames": FRAMES,
                "size": SIZE,
                "frame_range": [0, 64],
                "num_workers": 0,
            },
            "val_data": None,
        }
    )
    train(cfg, progress=False)
    return video, out / "ckpt-0000001.pt"


def _model_video(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (1, 3, T, SIZE, SIZE) in [-1, 1] (center crop of the 40-pixel width)."""
    x = torch.from_numpy(frames_u8).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    return x[..., 4 : 4 + SIZE].contiguous()


def test_default_overlap_and_windows_weights_sum_to_one_on_every_frame():
    assert default_overlap(128) == 16 and default_overlap(FRAMES) == 4
    for T, chunk in ((LONG, FRAMES), (LONG, 128), (129, 128), (1000, 128)):
        overlap = default_overlap(chunk)
        windows = chunk_windows(T, chunk, overlap)
        total = torch.zeros(T, dtype=torch.float64)
        count = torch.zeros(T, dtype=torch.long)
        for (s, e), w in zip(windows, blend_weights(T, chunk, overlap, "linear")):
            assert w.shape == (e - s,) and (w > 0).all()
            total[s:e] += w
            count[s:e] += 1
        # float64: w + (1 - w) is within one rounding of 1
        assert torch.allclose(
            total, torch.ones(T, dtype=torch.float64), rtol=0, atol=2 * torch.finfo(torch.float64).eps
        ), (T, chunk)
        # every frame in one window, or in two where consecutive windows overlap (K frames each join)
        assert count.min() == 1 and count.max() == 2 and int((count == 2).sum()) == overlap * (len(windows) - 1)
    assert len(chunk_windows(LONG, FRAMES, 4)) == 11 and len(chunk_windows(LONG, 128, 16)) == 3


def test_identity_windows_stitch_back_exactly_and_the_last_window_is_masked_not_padded(model, long_video):
    video = _model_video(long_video)
    seen = []

    class Identity(CoordTok):  # CoordTok's config and checks, reconstruction = input
        def reconstruct(self, clip, num_frames=None, frames_per_chunk=None):
            seen.append(clip.shape[2])
            return clip

    ident = Identity(model.config)
    rec, boundaries = CoordTokReconstructor(ident).reconstruct(video)
    assert torch.equal(rec, video)  # lerp(a, a, w) == a: the blend of equal windows is bit-exact
    windows = chunk_windows(LONG, FRAMES, 4)
    assert seen == [e - s for s, e in windows] and seen[-1] == LONG - windows[-1][0] < FRAMES
    assert boundaries == [s for s, _ in windows[1:]] == chunk_boundaries(LONG, FRAMES, 4, "linear")

    # Each window reconstructs as its own index: the stitched frame t is sum_j w_j(t) * j.
    class WindowIndex(CoordTok):
        def reconstruct(self, clip, num_frames=None, frames_per_chunk=None):
            self.calls = getattr(self, "calls", -1) + 1
            return torch.full_like(clip, self.calls / 20)  # in [0, 0.5]: the clamp leaves it alone

    rec, _ = CoordTokReconstructor(WindowIndex(model.config)).reconstruct(video)
    want = torch.zeros(LONG, dtype=torch.float64)
    for j, ((s, e), w) in enumerate(zip(windows, blend_weights(LONG, FRAMES, 4, "linear"))):
        want[s:e] += w * j / 20
    # float32 lerp of values <= 0.5: a few float32 roundings of 0.5, far below 1e-6
    assert torch.allclose(rec[0, 0, :, 0, 0].double(), want, rtol=0, atol=1e-6)
    assert (rec == rec[:, :, :, :1, :1]).all()


@pytest.mark.slow
def test_300_frames_reconstruct_window_by_window_with_seams_reported(model, long_video):
    video = _model_video(long_video)
    tok = CoordTokReconstructor(model)
    assert (
        tok.name
        == f"CoordTok ({model.config.num_latent_tokens} tokens), windows of 32 frames overlapping by 4, blended"
        and tok.max_frames is None
    )
    rec, boundaries = tok.reconstruct(video)
    assert rec.shape == video.shape and rec.abs().max() <= 1
    windows = tok.windows(LONG)
    assert len(windows) == 11 and tok.tokens(LONG) == 11 * model.config.num_latent_tokens
    assert tok.tokens(FRAMES) == model.config.num_latent_tokens
    # Frames one window owns are that window's own reconstruction; shared frames its lerp with the next.
    recs = [model.reconstruct(video[:, :, s:e]) for s, e in windows]
    weights = blend_weights(LONG, FRAMES, 4, "linear")
    for j, ((s, e), r, w) in enumerate(zip(windows, recs, weights)):
        own = (w == 1).nonzero().flatten()
        assert torch.equal(rec[:, :, s + own], r[:, :, own].clamp(-1, 1)), j
        if j + 1 < len(windows):
            nxt = recs[j + 1][:, :, :4]
            later = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, -1, 1, 1)
            assert torch.equal(rec[:, :, e - 4 : e], torch.lerp(r[:, :, -4:], nxt, later).clamp(-1, 1)), j
    seams = seam_jump(video, rec, boundaries)
    assert seams["num_boundary_pairs"] == 10 and seams["num_within_pairs"] == LONG - 1 - 10
    assert np.isfinite(seams["boundary"]) and np.isfinite(seams["within"])


def test_a_clip_that_fits_keeps_the_masked_path(model, long_video):
    video = _model_video(long_video)
    tok = CoordTokReconstructor(model)
    for T in (20, FRAMES):
        rec, boundaries = tok.reconstruct(video[:, :, :T])
        assert torch.equal(rec, model.reconstruct(video[:, :, :T]).clamp(-1, 1))
        assert boundaries == chunk_boundaries(T) == [17] and tok.windows(T) == [(0, T)]


def test_overlap_out_of_range_is_one_line(model):
    assert CoordTokReconstructor(model, overlap=16).windows(LONG)[1] == (16, 48)
    assert CoordTokReconstructor(model, overlap=0).windows(64) == [(0, 32), (32, 64)]
    with pytest.raises(ConfigError, match=r"--overlap 17: CoordTok's windows of 32 frames overlap by 0 to 16 frames"):
        CoordTokReconstructor(model, overlap=17)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_reconstruct_cli_on_a_video_longer_than_the_clip(files, tmp_path, capsys):
    video, ckpt = files
    out = tmp_path / "long_recon.mp4"
    assert main(["reconstruct", "--ckpt", str(ckpt), "--video", str(video), "--whole-video", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == LONG and r["start"] == 0 and len(r["windows"]) == 11 and r["windows"][-1] == [280, 300]
    assert "windows of 32 frames overlapping by 4, blended" in r["tokenizer"]
    assert r["tokens"] == 11 * ModelConfig(**MODEL).num_latent_tokens
    assert all(np.isfinite(r[k]) for k in ("psnr", "seam_boundary", "seam_within"))
    assert len(decord.VideoReader(str(out))) == LONG
    # --frames takes a long clip too, here with a wider overlap (windows every 24 frames)
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                str(ckpt),
                "--video",
                str(video),
                "--frames",
                "280",
                "--start",
                "10",
                "--overlap",
                "8",
                "--out",
                str(tmp_path / "b.mp4"),
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == 280 and r["start"] == 10 and r["windows"] == [list(w) for w in chunk_windows(280, 32, 8)]
    # bad overlaps and mixed options: one line each, before any video is read or written
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                str(ckpt),
                "--video",
                str(video),
                "--whole-video",
                "--overlap",
                "17",
                "--out",
                str(tmp_path / "c.mp4"),
            ]
        )
        == 2
    )
    assert "--overlap 17: CoordTok's windows of 32 frames overlap by 0 to 16" in _one_line(capsys.readouterr().err)
    assert main(["reconstruct", "--ckpt", str(ckpt), "--video", str(video), "--overlap", "-1"]) == 2
    assert "--overlap" in _one_line(capsys.readouterr().err)
    assert main(["reconstruct", "--ckpt", str(ckpt), "--video", str(video), "--whole-video", "--frames", "40"]) == 2
    assert "--whole-video" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval-recon", "analyze"])
def test_eval_recon_and_analyze_on_clips_longer_than_the_tokenizer(files, tmp_path, capsys, command):
    video, ckpt = files
    out = tmp_path / "out"
    args = [
        command,
        "--ckpt",
        str(ckpt),
        "--data",
        str(video.parent),
        "--out",
        str(out),
        "--num-clips",
        "1",
        "--frames",
        str(LONG),
        "--write-videos",
        "1",
        "--no-progress",
        "--num-workers",
        "0",
    ]
    assert main(args + (["--no-fvd"] if command == "eval-recon" else [])) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == LONG and r["tokens"] == 11 * ModelConfig(**MODEL).num_latent_tokens
    assert "windows of 32 frames overlapping by 4, blended" in r["tokenizer"]
    assert np.isfinite(r["seam_boundary"]) and np.isfinite(r["seam_within"]) and np.isfinite(r["psnr"])
    assert "windows of 32 frames overlapping by 4, blended" in (out / "recon.md").read_text()
    assert len(decord.VideoReader(str(out / "recon_0000.mp4"))) == LONG
    if command == "analyze":
        assert (out / "analysis.png").stat().st_size > 0
    assert (
        main(
            [
                command,
                "--ckpt",
                str(ckpt),
                "--data",
                str(video.parent),
                "--out",
                str(tmp_path / "bad"),
                "--frames",
                str(LONG),
                "--overlap",
                "20",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--overlap 20" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_encode_whole_videos_stores_each_videos_windows_that_decode_to_its_reconstruction(files, tmp_path, capsys):
    from coordtok.checkpoint import load_tokenizer
    from coordtok.data import to_model_video
    from coordtok.triplane import Triplane
    from coordtok.video_io import read_video
    from sit.cache import LatentDataset, read_index, video_windows

    video, ckpt = files
    out = tmp_path / "cache"
    assert (
        main(
            [
                "encode",
                "--tokenizer-ckpt",
                str(ckpt),
                "--data",
                str(video.parent),
                "--out",
                str(out),
                "--whole-videos",
                "--batch-size",
                "1",
                "--shard-size",
                "4",
                "--stats-num",
                "8",
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_latents"] == 11 and printed["videos"] == 1 and printed["overlap"] == 4
    starts = [s for s, _ in chunk_windows(LONG, FRAMES, 4)]
    (entry,) = video_windows(out)
    assert entry == {
        "path": str(video.resolve()),
        "frames": LONG,
        "first": 0,
        "items": list(range(11)),
        "starts": starts,
    }
    whole = read_index(out)["whole_videos"]
    assert (whole["window"], whole["overlap"], whole["stride"]) == (FRAMES, 4, 1)
    meta = [m for g in range(3) for m in json.loads((out / f"shard-0000{g}.json").read_text())["meta"]]
    assert [m["start"] for m in meta] == starts and [m["num_frames"] for m in meta] == [FRAMES] * 10 + [20]
    # the rows are triplanes like a random-window cache's: what sit-train reads
    latents = LatentDataset(out)
    assert len(latents) == 11 and (out / "stats.json").is_file()
    # decoding the stored windows, blended, is the 300-frame reconstruction of the same frames
    model = load_tokenizer(ckpt)[0]
    tok = CoordTokReconstructor(model, overlap=whole["overlap"])
    triplanes = (Triplane.unflatten(latents[i][None], model.config.latent_grid) for i in entry["items"])
    decoded = tok.decode_windows(triplanes, entry["frames"])
    frames = torch.from_numpy(read_video(video, size=SIZE)).permute(3, 0, 1, 2)[None]
    rec, _ = tok.reconstruct(to_model_video(frames))
    assert decoded.shape == rec.shape == (1, 3, LONG, SIZE, SIZE)
    # the same float32 computations on the same frames (full windows unmasked, the last masked) in both
    assert torch.equal(decoded, rec)


def test_encode_overlap_needs_whole_videos_and_a_valid_value(files, tmp_path, capsys):
    video, ckpt = files
    base = ["encode", "--tokenizer-ckpt", str(ckpt), "--data", str(video.parent), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--whole-videos", "--overlap", "17"]) == 2
    assert "--overlap must be 0 to 16" in _one_line(capsys.readouterr().err)
    assert main(base + ["--out", str(tmp_path / "b"), "--overlap", "4"]) == 2
    assert "--overlap applies to --whole-videos only" in _one_line(capsys.readouterr().err)
    assert main(base + ["--out", str(tmp_path / "c"), "--whole-videos", "--clips-per-video", "2"]) == 2
    assert "--clips-per-video 1" in _one_line(capsys.readouterr().err)
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before the cache folder is made
