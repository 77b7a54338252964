"""Latent cache and normalization statistics: contents, resume, statistics against numpy."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sit_common import CLIPS_PER_VIDEO, DATA, SHARD_SIZE, tiny_tokenizer

from coordtok.checkpoint import load_tokenizer
from coordtok.cli import main
from coordtok.config import DataConfig
from coordtok.data import EmptyDatasetError, build_dataset
from coordtok.triplane import Triplane
from sit.cache import LatentCacheError, LatentDataset, read_index
from sit.encode import encode_dataset
from sit.stats import LatentStats, compute_stats

GRID, C = (16, 8, 8), 4  # the tiny tokenizer's triplane
TOKENS = 8 * 8 + 16 * 8 + 16 * 8


def _files(folder):
    """The cache's content (the lock file holds its last writer's pid and time, not content)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def _numpy_planes(flat: np.ndarray) -> dict:
    """Independent of Triplane: xy = tokens [0, 64) as (h, w), yt = [64, 192) as (t, w), xt = [192, 320) as (t, h)."""
    return {"xy": flat[:, :64].reshape(-1, C), "yt": flat[:, 64:192].reshape(-1, C), "xt": flat[:, 192:].reshape(-1, C)}


# ---------------------------------------------------------------------------- encoding
@pytest.mark.slow
def test_encode_writes_shards_index_and_the_tokenizers_latents(cache, root):
    n = CLIPS_PER_VIDEO
    index = read_index(cache)
    assert index["num_latents"] == n and index["grid"] == list(GRID) and index["channels"] == C
    assert [s["file"] for s in index["shards"]] == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert index["tokenizer_config"]["model"]["latent_channels"] == C and index["seed"] == 0
    assert (cache / "stats.json").is_file()

    ds = LatentDataset(cache)
    assert len(ds) == n and ds[0].shape == (TOKENS, C) and ds[0].dtype == torch.float32

    tokenizer, _ = load_tokenizer(tiny_tokenizer(root))
    clips = build_dataset(DataConfig(**DATA, frames=128, size=64, clips_per_video=n), seed=0)
    metas = [m for s in range(3) for m in json.loads((cache / f"shard-{s:05d}.json").read_text())["meta"]]
    starts = set()
    for i in range(n):
        item = clips[i]
        with torch.no_grad():
            want = tokenizer.encode(item["video"][None], torch.tensor([item["num_frames"]])).flatten()[0]
        assert torch.allclose(ds[i], want, atol=1e-5, rtol=1e-5), i
        assert metas[i] == {"index": i, "path": item["path"], "start": item["start"], "num_frames": 128, "label": 0}
        starts.add(item["start"])
    assert len(starts) > 1  # random windows, not the same clip K times


@pytest.mark.slow
def test_resume_rewrites_only_what_is_missing(cache, root, tmp_path):
    copy = tmp_path / "latents"
    shutil.copytree(cache, copy)
    (copy / "index.json").unlink()
    (copy / "shard-00001.safetensors").unlink()
    kept = (copy / "shard-00000.safetensors").stat().st_mtime_ns, (copy / "shard-00002.safetensors").stat().st_mtime_ns
    encode_dataset(
        tiny_tokenizer(root),
        DataConfig(**DATA),
        copy,
        clips_per_video=CLIPS_PER_VIDEO,
        seed=0,
        shard_size=SHARD_SIZE,
        batch_size=2,
        progress=False,
    )
    assert (
        (copy / "shard-00000.safetensors").stat().st_mtime_ns,
        (copy / "shard-00002.safetensors").stat().st_mtime_ns,
    ) == kept  # finished shards skipped
    assert _files(copy) == _files(cache)  # and everything else rebuilt bit for bit
    # A different encoding into the same folder is refused instead of mixing caches.
    with pytest.raises(LatentCacheError, match="different encoding.*index.json"):
        encode_dataset(
            tiny_tokenizer(root),
            DataConfig(**DATA),
            copy,
            clips_per_video=CLIPS_PER_VIDEO,
            seed=1,
            shard_size=SHARD_SIZE,
            progress=False,
        )
    (copy / "index.json").unlink()  # an unfinished cache of another encoding: its shards are protected too
    with pytest.raises(LatentCacheError, match="different encoding.*shard-00000.json"):
        encode_dataset(
            tiny_tokenizer(root),
            DataConfig(**DATA),
            copy,
            clips_per_video=CLIPS_PER_VIDEO,
            seed=1,
            shard_size=SHARD_SIZE,
            progress=False,
        )


def test_encode_cli_one_line_errors(root, tmp_path, capsys):
    tokenizer = tiny_tokenizer(root)  # trained first when this test runs first: its log is not encode's
    capsys.readouterr()
    assert (
        main(
            [
                "encode",
                "--tokenizer-ckpt",
                str(tokenizer),
                "--data",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "does not exist" in err and len(err.splitlines()) == 1
    assert (
        main(
            [
                "encode",
                "--tokenizer-ckpt",
                str(tmp_path / "missing.pt"),
                "--kind",
                "samples",
                "--data",
                "bikes",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    # By default only whole 128-frame windows are encoded: a 100-frame video is skipped, not zero-padded.
    with pytest.raises(EmptyDatasetError, match="no usable videos.*too short"):
        encode_dataset(
            tiny_tokenizer(root), DataConfig(**{**DATA, "frame_range": [0, 100]}), tmp_path / "short", progress=False
        )


# ---------------------------------------------------------------------------- statistics
def test_stats_equal_a_direct_numpy_computation(cache):
    flat = np.stack([LatentDataset(cache)[i].numpy() for i in range(CLIPS_PER_VIDEO)]).astype(np.float64)
    stats = LatentStats.load(cache)
    assert stats.num == CLIPS_PER_VIDEO and stats.grid == GRID
    for k, (name, values) in enumerate(_numpy_planes(flat).items()):
        np.testing.assert_allclose(stats.mean[k].numpy(), values.mean(0), rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(stats.std[k].numpy(), values.std(0), rtol=1e-10, atol=1e-12, err_msg=name)
    # A random subset: exactly the latents numpy's generator picks, accumulated in small batches.
    sub = compute_stats(cache, num=3, seed=5, batch=2)
    chosen = np.sort(np.random.default_rng(5).choice(CLIPS_PER_VIDEO, size=3, replace=False))
    for k, values in enumerate(_numpy_planes(flat[chosen]).values()):
        np.testing.assert_allclose(sub.mean[k].numpy(), values.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sub.std[k].numpy(), values.std(0), rtol=1e-10, atol=1e-12)


def test_normalize_round_trip_and_unit_statistics(cache):
    ds = LatentDataset(cache)
    stats = LatentStats.load(cache)
    flat = ds.get_many(range(len(ds)))
    z = stats.normalize(flat)
    assert torch.allclose(stats.denormalize(z), flat, atol=1e-5)
    again = LatentStats.from_dict(json.loads(json.dumps(stats.to_dict())))  # checkpoint round trip
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.std, stats.std) and again.grid == stats.grid
    for values in _numpy_planes(z.double().numpy()).values():
        np.testing.assert_allclose(values.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(values.std(0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expected flat latents"):
        stats.normalize(flat[:, :100])


def _synthetic_cache(folder, flat: torch.Tensor, grid=GRID):
    folder.mkdir()
    save_file({"tokens": flat.contiguous()}, str(folder / "shard-00000.safetensors"))
    (folder / "index.json").write_text(
        json.dumps(
            {
                "grid": list(grid),
                "channels": flat.shape[2],
                "num_latents": flat.shape[0],
                "shards": [{"file": "shard-00000.safetensors", "count": flat.shape[0]}],
            }
        )
    )
    return folder


def test_plane_split_with_planted_values(tmp_path):
    """Plane p, channel c holds m[p, c] + s[p, c] in even clips and m - s in odd ones: mean m, std s."""
    m = torch.tensor([[1.0, 2, 3, 4], [10, 20, 30, 40], [-5, -6, -7, -8]])
    s = torch.tensor([[0.5, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], [4, 5, 6, 7]])
    tl, hl, wl = GRID
    clips = []
    for b in range(4):
        v = m + (s if b % 2 == 0 else -s)
        clips.append(
            Triplane(
                v[0][None, :, None, None].expand(1, C, hl, wl),
                v[1][None, :, None, None].expand(1, C, tl, wl),
                v[2][None, :, None, None].expand(1, C, tl, hl),
            ).flatten()
        )
    flat = torch.cat(clips)
    folder = _synthetic_cache(tmp_path / "planted", flat)
    stats = compute_stats(folder)
    assert torch.allclose(stats.mean, m.double(), atol=1e-6) and torch.allclose(stats.std, s.double(), atol=1e-6)
    z = stats.normalize(flat)
    sign = torch.tensor([1.0, -1, 1, -1])[:, None, None]
    assert torch.allclose(z, sign.expand_as(z), atol=1e-5)  # every token, every channel: exactly +-1
    # Independent of Triplane: the xy tokens are the first Hl * Wl positions.
    assert torch.allclose(flat[0, : hl * wl], (m[0] + s[0]).expand(hl * wl, C))
    assert torch.allclose(flat[0, hl * wl : hl * wl + tl * wl], (m[1] + s[1]).expand(tl * wl, C))
    assert torch.allclose(flat[0, hl * wl + tl * wl :], (m[2] + s[2]).expand(tl * hl, C))


def test_missing_or_corrupt_cache_is_a_one_line_error(cache, tmp_path):
    with pytest.raises(LatentCacheError, match="latent folder not found"):
        LatentDataset(tmp_path / "nowhere")
    copy = tmp_path / "latents"
    shutil.copytree(cache, copy)
    (copy / "index.json").unlink()
    with pytest.raises(LatentCacheError, match="index.json.*not found"):
        LatentDataset(copy)
    shutil.copy(cache / "index.json", copy / "index.json")
    shard = copy / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(LatentCacheError, match="shard-00001.safetensors: corrupt latent shard") as info:
        LatentDataset(copy)
    assert len(str(info.value).splitlines()) == 1
    shard.unlink()
    with pytest.raises(LatentCacheError, match="shard missing"):
        LatentDataset(copy)
