"""Video I/O and the clip datasets, on small mp4s cut from the real bikes.mp4 sample."""

from __future__ import annotations

import logging
import os
import shutil

import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch.utils.data import DataLoader

from coordtok import data as D
from coordtok.config import ConfigError, DataConfig
from coordtok.data import DataNotFoundError, EmptyDatasetError, VideoClipDataset, build_dataset, ucf101, video_folder
from coordtok.video_io import (
    contact_sheet,
    read_video,
    resize_center_crop,
    sample_video_paths,
    side_by_side,
    to_uint8,
    write_mp4,
    write_png,
)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two real mp4s cut from bikes.mp4: 40 frames and 10 frames of 64x80."""
    folder = tmp_path_factory.mktemp("clips")
    frames = read_video(sample_video_paths()["bikes"], max_frames=40)  # (40, 272, 640, 3)
    frames = np.ascontiguousarray(frames[:, 72:200, 240:400][:, ::2, ::2])  # (40, 64, 80, 3)
    long = write_mp4(folder / "long.mp4", frames)
    short = write_mp4(folder / "short.mp4", frames[:10])
    return {"long": long, "short": short, "frames": frames}


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    # never touch ~/.cache from tests, even where a test forgets cache_dir=
    monkeypatch.setenv("COORDTOK_CACHE", str(tmp_path / "coordtok_cache"))


def decoded(path) -> torch.Tensor:
    """All frames of a file as decord decodes them, float (T, 3, H, W) in [0, 255]."""
    frames = decord.VideoReader(str(path), num_threads=1)
    x = frames.get_batch(list(range(len(frames)))).asnumpy()
    return rearrange(torch.from_numpy(x), "t h w c -> t c h w").float()


def make_bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video\n")
    return [folder / "garbage.mp4", folder / "empty.mp4", folder / "notes.txt"]


# ---------------------------------------------------------------------------- video_io
def test_to_uint8_values_and_shapes():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(3, 2, 1, 5)
    u = to_uint8(x)
    assert u.shape == (2, 1, 5, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # clamped; 0 -> 127.5 rounds to even 128
    assert to_uint8(torch.zeros(4, 3, 2, 6, 8)).shape == (4, 2, 6, 8, 3)
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 4, 4, 3))


def test_mp4_round_trip_and_odd_sizes(clips, tmp_path):
    frames = clips["frames"][:12]
    path = write_mp4(tmp_path / "out" / "rt.mp4", frames, fps=25)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(float) - frames).mean() < 3.0  # crf 10: near lossless
    # only the final file remains: the temporary file was moved, not copied
    assert os.listdir(tmp_path / "out") == ["rt.mp4"]
    odd = write_mp4(tmp_path / "odd.mp4", np.ascontiguousarray(frames[:4, :63, :79]))
    assert read_video(odd).shape == (4, 64, 80, 3)  # padded by one pixel for yuv420p
    assert read_video(path, size=32, max_frames=3).shape == (3, 32, 32, 3)


def test_layouts_and_png(clips, tmp_path):
    a, b = clips["frames"][:5], clips["frames"][5:10]
    sbs = side_by_side(a, b, sep=2)
    assert sbs.shape == (5, 64, 162, 3) and (sbs[:, :, 80:82] == 255).all()
    np.testing.assert_array_equal(sbs[:, :, 82:], b)
    sheet = contact_sheet([clips["frames"], a, b], frames_per_video=8, sep=2)
    assert sheet.shape == (3 * 64 + 2 * 2, 8 * 80 + 7 * 2, 3)
    np.testing.assert_array_equal(sheet[:64, -80:], clips["frames"][-1])  # last column = last frame
    png = write_png(tmp_path / "sheet.png", sheet)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), sheet)


# ---------------------------------------------------------------------------- items
def test_item_shape_dtype_range(clips, tmp_path):
    ds = VideoClipDataset([clips["long"]], num_frames=16, size=32, cache_dir=tmp_path / "c")
    item = ds[0]
    assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1 and item["video"].std() > 0.1
    assert item["num_frames"] == 16 and item["path"] == str(clips["long"].resolve())
    assert 0 <= item["start"] <= 40 - 16
    assert item["label"] == -1 and item["class_name"] == ""  # no classes outside UCF-101


def test_resize_keeps_aspect_then_center_crops(clips, tmp_path):
    ds = VideoClipDataset([clips["long"]], num_frames=4, size=32, cache_dir=tmp_path / "c")
    item = ds[0]
    src = decoded(clips["long"])[item["start"] : item["start"] + 4].to(torch.uint8)  # (4, 3, 64, 80)
    # aspect-preserving reference: 64x80 -> 32x40 (torch's uint8 antialiased bicubic), then the
    # middle 32 columns; the item is exactly that, converted to [-1, 1]
    ref = F.interpolate(src, size=(32, 40), mode="bicubic", antialias=True, align_corners=False)
    ref = rearrange(ref[..., 4:36].float() / 127.5 - 1, "t c h w -> c t h w")
    torch.testing.assert_close(item["video"], ref, atol=0, rtol=0)
    squashed = F.interpolate(src, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    squashed = rearrange(squashed.float() / 127.5 - 1, "t c h w -> c t h w")
    assert (item["video"] - squashed).abs().mean() > 0.01
    # a tall source is handled the same way; frames stay uint8
    tall = resize_center_crop(torch.randint(0, 256, (2, 3, 90, 30), dtype=torch.uint8), 16)
    assert tall.shape == (2, 3, 16, 16) and tall.dtype == torch.uint8
    with pytest.raises(ValueError, match="expected uint8 frames"):
        resize_center_crop(torch.rand(2, 3, 90, 30) * 255, 16)


@pytest.mark.parametrize("stride", [1, 3])
def test_window_is_contiguous_at_stride(clips, tmp_path, stride):
    src = decoded(clips["long"]) / 127.5 - 1  # (40, 3, 64, 80)
    # size=64 equals the short side: no interpolation, only the center crop of columns 8..72
    ds = VideoClipDataset(
        [clips["long"]], num_frames=8, size=64, stride=stride, clips_per_video=4, cache_dir=tmp_path / "c"
    )
    starts = set()
    for i in range(len(ds)):
        item = ds[i]
        s = item["start"]
        starts.add(s)
        assert s + 7 * stride < 40
        expected = rearrange(src[s : s + 8 * stride : stride, :, :, 8:72], "t c h w -> c t h w")
        torch.testing.assert_close(item["video"], expected, atol=1e-5, rtol=0)
    assert len(starts) > 1  # the windows are random, not all the same


def test_determinism_across_instances_and_epochs(clips, tmp_path):
    def starts(epoch, seed=0):
        ds = VideoClipDataset(
            [clips["long"]], num_frames=4, size=16, seed=seed, clips_per_video=8, cache_dir=tmp_path / "c"
        )
        ds.set_epoch(epoch)
        return [ds.window_start(i, 40) for i in range(len(ds))]

    assert starts(0) == starts(0)  # a fresh instance (a resumed run, a worker) draws the same
    assert starts(0) != starts(1)
    assert starts(0) != starts(0, seed=1)
    ds = VideoClipDataset([clips["long"]], num_frames=4, size=16, clips_per_video=8, cache_dir=tmp_path / "c")
    assert [ds[i]["start"] for i in range(8)] == starts(0)
    # Item 3 of a fresh instance (what a resumed run or a DataLoader worker builds) is the same clip,
    # and it is the clip at the drawn window: frames start .. start + 3 of the file, resized.
    fresh = VideoClipDataset([clips["long"]], num_frames=4, size=16, clips_per_video=8, cache_dir=tmp_path / "c")
    torch.testing.assert_close(fresh[3]["video"], ds[3]["video"], rtol=0, atol=0)
    at = VideoClipDataset([clips["long"]], num_frames=4, size=16, cache_dir=tmp_path / "c").eval(start=ds[3]["start"])
    torch.testing.assert_close(at[0]["video"], ds[3]["video"], rtol=0, atol=0)
    # eval mode: K evenly spaced fixed windows (slack = 40 - 4 = 36 extra start positions)
    assert [ds.eval()[i]["start"] for i in range(8)] == [2, 6, 11, 15, 20, 24, 29, 33]
    single = VideoClipDataset([clips["long"]], num_frames=4, size=16, cache_dir=tmp_path / "c").eval()
    assert single[0]["start"] == 18  # centered
    assert single.eval(start=30)[0]["start"] == 30 and single.eval(start=99)[0]["start"] == 36


def test_short_video_zero_padded(clips, tmp_path):
    ds = VideoClipDataset([clips["short"]], num_frames=16, size=32, cache_dir=tmp_path / "c")
    item = ds[0]
    assert item["num_frames"] == 10 and item["start"] == 0
    assert (item["video"][:, 10:] == 0).all()  # exact zeros, not -3 or -1
    assert item["video"][:, :10].abs().sum(dim=(0, 2, 3)).min() > 0
    strided = VideoClipDataset([clips["short"]], num_frames=8, size=32, stride=3, cache_dir=tmp_path / "c")[0]
    assert strided["num_frames"] == 4  # frames 0, 3, 6, 9
    assert (strided["video"][:, 4:] == 0).all()


def test_bad_files_skipped_and_counted(clips, tmp_path, caplog):
    bad = make_bad_files(tmp_path / "bad")
    with caplog.at_level(logging.INFO, logger="coordtok.data"):
        ds = VideoClipDataset(
            [clips["long"], *bad, tmp_path / "nope.mp4"], num_frames=8, size=16, cache_dir=tmp_path / "c"
        )
    assert [v.path for v in ds.videos] == [str(clips["long"].resolve())]
    reasons = dict(ds.skipped)
    assert reasons[str(bad[0])].startswith("unreadable")
    assert reasons[str(bad[1])] == "empty file"
    assert reasons[str(bad[2])].startswith("not a video")
    assert reasons[str(tmp_path / "nope.mp4")] == "missing"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipping" in m for m in lines) == 4  # one line per bad file
    assert any("skipped 4 of 5 files: 1 unreadable, 1 empty file, 1 not a video, 1 missing" in m for m in lines)
    assert ds[0]["video"].shape == (3, 8, 16, 16)  # the run goes on


def test_too_short_skipped(clips, tmp_path):
    ds = VideoClipDataset(
        [clips["long"], clips["short"]], num_frames=16, size=16, min_frames=12, cache_dir=tmp_path / "c"
    )
    assert len(ds) == 1 and ds.skipped[0][0] == str(clips["short"].resolve())
    assert ds.skipped[0][1].startswith("too short")
    with pytest.raises(EmptyDatasetError, match="1 too short"):
        VideoClipDataset([clips["short"]], num_frames=16, min_frames=12, cache_dir=tmp_path / "c")


def test_folders_empty_bad_and_missing(clips, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="no video files"):
        video_folder(tmp_path / "empty", cache_dir=tmp_path / "c")
    make_bad_files(tmp_path / "bad")
    with pytest.raises(EmptyDatasetError, match=r"folder .*bad.*skipped 2 of 2 files"):
        video_folder(tmp_path / "bad", cache_dir=tmp_path / "c")
    assert issubclass(EmptyDatasetError, ValueError)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        video_folder(tmp_path / "nowhere")
    # recursive, case-insensitive extensions, sorted, non-videos ignored
    root = tmp_path / "mixed"
    make_bad_files(root / "junk")
    (root / "b").mkdir()
    shutil.copy(clips["long"], root / "b" / "x.MP4")
    shutil.copy(clips["short"], root / "a.mov")
    ds = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert [os.path.basename(v.path) for v in ds.videos] == ["a.mov", "x.MP4"]
    assert len(ds.skipped) == 2  # garbage.mp4 and empty.mp4; notes.txt is not a candidate


def test_ucf101_splits(clips, tmp_path):
    root = tmp_path / "ucf"
    names = {
        "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g08_c01.avi", "v_ApplyEyeMakeup_g01_c01.avi"],
        "Basketball": ["v_Basketball_g08_c01.avi", "v_Basketball_g01_c01.avi"],
        # the official lists spell this class's files with another case than the disk
        "HandstandPushups": ["v_HandStandPushups_g08_c01.avi", "v_HandStandPushups_g01_c01.avi"],
    }
    for cls, files in names.items():
        (root / "UCF-101" / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(clips["long"], root / "UCF-101" / cls / f)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "Basketball/v_Basketball_g08_c01.avi 2\r\n"
        "HandstandPushups/v_HandstandPushups_g08_c01.avi 3\r\n"
        "Basketball/v_Basketball_g09_c01.avi 2\r\n"  # listed, missing on disk
    )
    (lists / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nBasketball/v_Basketball_g01_c01.avi\n"
    )
    train = ucf101(root, "train", num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert [os.path.basename(v.path) for v in train.videos] == [
        "v_ApplyEyeMakeup_g08_c01.avi",
        "v_Basketball_g08_c01.avi",
        "v_HandStandPushups_g08_c01.avi",
    ]
    assert len(train.skipped) == 1 and train.skipped[0][1] == "missing"
    test = ucf101(root, "test", num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert [os.path.basename(v.path) for v in test.videos] == [
        "v_ApplyEyeMakeup_g01_c01.avi",
        "v_Basketball_g01_c01.avi",
    ]
    assert test[1]["video"].shape == (3, 4, 16, 16)
    with pytest.raises(FileNotFoundError, match="testlist02.txt"):
        ucf101(root, "test", fold=2)
    # classes directly under the root, split lists in a folder given explicitly
    flat = tmp_path / "flat"
    shutil.copytree(root / "UCF-101", flat)
    shutil.move(str(lists), tmp_path / "splits")
    ds = ucf101(flat, "test", split_dir=tmp_path / "splits", num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert len(ds) == 2
    with pytest.raises(FileNotFoundError, match=r"ucfTrainTestlist/trainlist01.txt"):
        ucf101(flat, "train")


def test_probe_cache_reused(clips, tmp_path, monkeypatch):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(clips["long"], root / "a.mp4")
    shutil.copy(clips["short"], root / "b.mp4")
    make_bad_files(root)
    first = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert any((tmp_path / "c").iterdir())

    def no_open(*args, **kwargs):
        raise AssertionError("VideoReader opened although the probe is cached")

    monkeypatch.setattr(decord, "VideoReader", no_open)
    second = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert second.videos == first.videos and second.skipped == first.skipped
    # a changed file (new mtime) is probed again; here the probe fails and the file is skipped
    os.utime(root / "a.mp4", ns=(1, 1))
    third = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert [os.path.basename(v.path) for v in third.videos] == ["b.mp4"]
    # the default cache dir follows $COORDTOK_CACHE
    assert D.default_cache_dir() == tmp_path / "coordtok_cache" / "probe"


def test_preloaded_frames_are_decoded_once_and_equal_a_fresh_decode(clips, tmp_path, monkeypatch):
    """Preloading datasets share one decode per file and frame size: a second dataset over the same
    file (another frame range too) reads no video, and its items equal those of a dataset that
    reads the file; a rewritten file is decoded again."""
    path = tmp_path / "v.mp4"
    shutil.copy(clips["long"], path)
    kw = dict(num_frames=8, size=16, clips_per_video=4, cache_dir=tmp_path / "c")
    streamed = VideoClipDataset([path], frame_range=(5, 35), **kw).eval()
    VideoClipDataset([path], preload=True, **kw)
    opened = []
    real_reader = decord.VideoReader
    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: opened.append(a[0]) or real_reader(*a, **k))
    again = VideoClipDataset([path], preload=True, frame_range=(5, 35), **kw).eval()
    assert opened == []
    # Preloaded and streamed frames come from the same uint8 resize of each frame: equal bit for bit.
    for i in range(len(again)):
        a, b = again[i], streamed[i]
        assert a["start"] == b["start"] and torch.equal(a["video"], b["video"])
    shutil.copy(clips["short"], path)  # another file under the same name
    os.utime(path, ns=(1, 1))
    small = VideoClipDataset([path], preload=True, num_frames=8, size=16, cache_dir=False)
    assert opened and small[0]["num_frames"] == 8 and small.videos[0].frames == 10


def test_frame_range(clips, tmp_path):
    ds = VideoClipDataset(
        [clips["long"]], num_frames=8, size=16, frame_range=(10, 30), clips_per_video=16, cache_dir=tmp_path / "c"
    )
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert all(10 <= ds.window_start(i, 40) <= 22 for i in range(len(ds)))
    assert ds.eval().window_start(0, 40) == 10 + 0  # K = 16 windows: the first at floor(12 * 0.5 / 16)
    held_out = VideoClipDataset(
        [clips["long"]], num_frames=16, size=16, frame_range=(30, None), cache_dir=tmp_path / "c"
    )[0]
    assert held_out["start"] == 30 and held_out["num_frames"] == 10
    with pytest.raises(EmptyDatasetError, match="too short"):
        VideoClipDataset([clips["long"]], num_frames=8, frame_range=(40, 50), cache_dir=tmp_path / "c")


def test_file_unreadable_after_probe_does_not_crash(clips, tmp_path, caplog):
    root = tmp_path / "v"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(clips["long"], root / name)
    ds = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    (root / "b.mp4").write_bytes(b"\0" * 1000)  # broken after the scan
    with caplog.at_level(logging.WARNING, logger="coordtok.data"):
        item = ds[1]
        again = ds[1]
    assert item["path"].endswith("c.mp4") and again["start"] == item["start"]
    assert sum("b.mp4" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert ds.skipped[-1][0].endswith("b.mp4")


def test_a_file_broken_after_the_probe_is_reported_once_across_workers(clips, tmp_path, caplog):
    """Every DataLoader worker holds its own dataset copy; the failure is still reported once."""
    root = tmp_path / "v"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(clips["long"], root / name)
    ds = video_folder(root, num_frames=4, size=16, clips_per_video=2, cache_dir=tmp_path / "c")
    (root / "b.mp4").write_bytes(b"\0" * 1000)
    marks = tmp_path / "c" / "read-failures"
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    assert len(list(loader)) == 6  # the run goes on: b's items are replaced by readable ones
    assert len(list(marks.iterdir())) == 1  # one report for the one broken file, from whichever worker was first
    # The probe cache now knows: a new dataset skips b.mp4 at construction, reported once there.
    with caplog.at_level(logging.WARNING, logger="coordtok.data"):
        again = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert [v.path.endswith("b.mp4") for v in again.videos] == [False, False]
    assert sum("b.mp4" in r.getMessage() for r in caplog.records) == 1


def test_a_looping_symlink_is_reported_not_dropped_silently(clips, tmp_path, caplog):
    root = tmp_path / "v"
    root.mkdir()
    shutil.copy(clips["long"], root / "a.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    (root / "sub").mkdir()
    (root / "sub" / "back").symlink_to(root)  # a folder loop: not followed
    with caplog.at_level(logging.WARNING, logger="coordtok.data"):
        ds = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert len(ds.videos) == 1
    assert dict(ds.skipped)[str(root / "loop.mp4")] == "a broken or looping symbolic link"
    assert any("loop.mp4" in r.getMessage() for r in caplog.records)


def test_a_linked_folder_is_followed_and_a_loop_is_named(clips, tmp_path, caplog):
    """A symbolic link to a folder of videos kept elsewhere counts its videos (they were dropped
    without a word); a link back up the tree or a second link to the same folder is not entered
    again, and a one-line warning names it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("c1.mp4", "c2.mp4", "c3.mp4", "c4.mp4"):
        shutil.copy(clips["short"], elsewhere / name)
    root = tmp_path / "v"
    root.mkdir()
    shutil.copy(clips["long"], root / "a.mp4")
    (root / "linked").symlink_to(elsewhere)
    (root / "zz-again").symlink_to(elsewhere)  # a second way to the same four videos
    (root / "linked-loop").symlink_to(root)  # inside the tree: a loop
    with caplog.at_level(logging.WARNING, logger="coordtok.data"):
        found = D.list_videos(root)
    assert found == [root / "a.mp4", *(root / "linked" / f"c{k}.mp4" for k in range(1, 5))]
    warned = [r.getMessage() for r in caplog.records]
    assert sum("linked-loop" in m and "already listed" in m for m in warned) == 1
    assert sum("zz-again" in m and str(root / "linked") in m for m in warned) == 1
    ds = video_folder(root, num_frames=4, size=16, cache_dir=tmp_path / "c")
    assert len(ds.videos) == 5 and not ds.skipped


def test_dataloader_workers(clips, tmp_path):
    ds = VideoClipDataset(
        [clips["long"], clips["short"]], num_frames=12, size=16, clips_per_video=2, cache_dir=tmp_path / "c"
    )
    serial = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (4, 3, 12, 16, 16)
    torch.testing.assert_close(video, torch.stack([s["video"] for s in serial]))
    assert torch.cat([b["num_frames"] for b in batches]).tolist() == [12, 12, 10, 10]


@pytest.mark.slow
def test_build_dataset(clips, tmp_path):
    ds = build_dataset(DataConfig(kind="samples", frames=4, size=32, stride=2, min_frames=4), cache_dir=tmp_path / "c")
    assert len(ds) == 2 and ds[1]["video"].shape == (3, 4, 32, 32)
    assert ds[1]["path"].endswith("bigbuckbunny.mp4")
    (tmp_path / "root" / "train").mkdir(parents=True)
    shutil.copy(clips["long"], tmp_path / "root" / "train" / "a.mp4")
    ds = build_dataset(
        DataConfig(
            kind="folder",
            root=str(tmp_path / "root"),
            split="train",
            frames=4,
            size=16,
            min_frames=4,
            frame_range=[0, 20],
        ),
        cache_dir=tmp_path / "c",
    )
    assert ds.frame_range == (0, 20) and len(ds) == 1
    # The same window as the dataset built by hand: the config reaches VideoClipDataset unchanged.
    by_hand = VideoClipDataset(
        [tmp_path / "root" / "train" / "a.mp4"],
        num_frames=4,
        size=16,
        frame_range=(0, 20),
        min_frames=4,
        cache_dir=tmp_path / "c",
    )
    assert torch.equal(ds[0]["video"], by_hand[0]["video"]) and ds[0]["start"] == by_hand[0]["start"]
    with pytest.raises(ConfigError, match="'kind' must be folder, ucf101 or samples"):
        DataConfig(kind="kinetics", root=str(tmp_path))
    with pytest.raises(ConfigError, match="'stride' must be positive"):
        DataConfig(kind="samples", stride=0)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        build_dataset(DataConfig(kind="folder", root=str(tmp_path / "nowhere")))


def test_ucf101_is_recognised_in_one_place(tmp_path):
    (tmp_path / "ucf" / "ucfTrainTestlist").mkdir(parents=True)
    (tmp_path / "videos").mkdir()
    assert DataConfig.for_root(tmp_path / "ucf").kind == "ucf101"
    assert DataConfig.for_root(tmp_path / "videos").kind == "folder"
    assert DataConfig.for_root(tmp_path / "ucf", "folder").kind == "folder"
