"""Class-conditional CoordTok-SiT: labels in the latent cache, the null class and label dropout,
classifier-free guidance in every sampler, labelled `coordtok sample` runs, class-matched FVD, and a
toy where guidance is measured (two classes with separated latent distributions)."""

import json
import math
import os
import re

import decord
import numpy as np
import pytest
import torch
from helpers import accelerate_launch
from safetensors.torch import save_file
from sit_common import SIT_CONFIG, tiny_tokenizer

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.config import ConfigError, DataConfig
from coordtok.data import build_dataset, video_folder
from coordtok.seeds import SeedTag, mix_seed
from coordtok.video_io import sample_video_paths, write_mp4
from sit.cache import LabelledLatents, LatentDataset, read_index
from sit.checkpoint import load_sit
from sit.config import SiTConfig, load_sit_run_config
from sit.encode import encode_dataset
from sit.models import TriplaneSiT
from sit.sample import SamplingError, sample_labels
from sit.samplers import SAMPLERS, guided_velocity
from sit.stats import LatentStats, compute_stats
from sit.train import label_drops, train_sit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread only adds hand-off cost
GRID, C = (16, 8, 8), 4  # the tiny tokenizer's triplane
TOKENS = 8 * 8 + 16 * 8 + 16 * 8
TWO_CLIPS = {"kind": "samples", "names": ["bikes", "bigbuckbunny"], "frame_range": [0, 132], "num_workers": 0}


@pytest.fixture(scope="module")
def two_class_cache(root, tmp_path_factory):
    """3 random windows of each sample clip, encoded with the tiny tokenizer: two classes."""
    out = tmp_path_factory.mktemp("two-class") / "latents"
    encode_dataset(
        tiny_tokenizer(root),
        DataConfig(**TWO_CLIPS),
        out,
        clips_per_video=3,
        seed=0,
        shard_size=4,
        batch_size=3,
        progress=False,
    )
    return out


def write_cache(folder, latents: torch.Tensor, labels=None, classes=None, shard_size: int = 64):
    """A latent cache in `coordtok encode`'s layout from given latents ``(n, tokens, C)``; without
    ``labels`` it is written the old way (no classes in index.json, no label in the sidecars)."""
    folder.mkdir(parents=True)
    shards = []
    for g, lo in enumerate(range(0, len(latents), shard_size)):
        part = latents[lo : lo + shard_size].contiguous()
        name = f"shard-{g:05d}.safetensors"
        save_file({"tokens": part}, str(folder / name))
        meta = [
            {"index": lo + j} | ({"label": int(labels[lo + j])} if labels is not None else {}) for j in range(len(part))
        ]
        (folder / name.replace(".safetensors", ".json")).write_text(json.dumps({"count": len(part), "meta": meta}))
        shards.append({"file": name, "count": len(part)})
    index = {"grid": list(GRID), "channels": C, "num_latents": len(latents), "shards": shards}
    if labels is not None:
        index["classes"] = classes
    (folder / "index.json").write_text(json.dumps(index))
    compute_stats(folder).save(folder / "stats.json")
    return folder


def sit_cfg(out_dir, steps: int, num_classes: int = 2, **train):
    return load_sit_run_config(
        SIT_CONFIG,
        {
            "model": {"num_classes": num_classes},
            "train": {
                "max_steps": steps,
                "out_dir": str(out_dir),
                "batch_size": 4,
                "log_every": 10**6,
                "ckpt_every": 10**6,
                "keep_checkpoints": 2,
                "val_every": 0,
                "mixed_precision": "no",
                **train,
            },
        },
    )


def random_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (adaLN-Zero starts the output at exactly 0, which tests nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# ---------------------------------------------------------------------------- 1. labels in the cache
def test_the_cache_records_each_latents_class_and_the_class_list(two_class_cache):
    index = read_index(two_class_cache)
    assert index["classes"] == ["bikes", "bigbuckbunny"]  # the samples kind: each clip its own class
    ds = LatentDataset(two_class_cache)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.class_counts() == [3, 3]
    meta = [m for g in range(2) for m in json.loads((two_class_cache / f"shard-{g:05d}.json").read_text())["meta"]]
    assert [os.path.basename(m["path"]) for m in meta] == ["bikes.mp4"] * 3 + ["bigbuckbunny.mp4"] * 3
    stats = LatentStats.load(two_class_cache)
    assert stats.classes == ["bikes", "bigbuckbunny"] and stats.class_counts == [3, 3]
    item = LabelledLatents(ds)[4]
    assert item["label"].item() == 1 and torch.equal(item["latent"], ds[4])


@pytest.mark.slow
def test_a_folder_of_class_subfolders_is_labelled_a_flat_folder_is_not(tmp_path):
    bikes = sample_video_paths()["bikes"]
    for rel in ("labelled/walk/a.mp4", "labelled/walk/b.mp4", "labelled/cycle/c.mp4", "flat/a.mp4", "flat/b.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(bikes, tmp_path / rel)
    ds = video_folder(tmp_path / "labelled", num_frames=8, size=16, cache_dir=False)
    assert ds.classes == ["cycle", "walk"]
    assert {os.path.basename(v.path): v.label for v in ds.videos} == {"a.mp4": 1, "b.mp4": 1, "c.mp4": 0}
    flat = video_folder(tmp_path / "flat", num_frames=8, size=16, cache_dir=False)
    assert flat.classes == [] and {v.label for v in flat.videos} == {-1}
    ucf = build_dataset(DataConfig(**TWO_CLIPS, frames=8, size=16))
    assert ucf.classes == ["bikes", "bigbuckbunny"] and [v.label for v in ucf.videos] == [0, 1]


def test_an_old_cache_without_labels_trains_unconditionally(tmp_path):
    latents = torch.randn(8, TOKENS, C, generator=torch.Generator().manual_seed(0))
    old = write_cache(tmp_path / "old", latents)
    ds = LatentDataset(old)
    assert ds.classes is None and ds.labels is None and LabelledLatents(ds)[0]["label"].item() == -1
    result = train_sit(sit_cfg(tmp_path / "run", 2, num_classes=1), old, progress=False)
    assert result["step"] == 2 and math.isfinite(result["loss"])
    with pytest.raises(ConfigError, match="no class labels"):
        train_sit(sit_cfg(tmp_path / "cond", 1, num_classes=2), old, progress=False)
    labelled = write_cache(tmp_path / "three", latents, labels=[0, 1, 2] * 2 + [0, 1], classes=["a", "b", "c"])
    with pytest.raises(ConfigError, match="3 classes"):
        train_sit(sit_cfg(tmp_path / "cond3", 1, num_classes=2), labelled, progress=False)


def test_a_sidecar_without_labels_in_a_labelled_cache_is_one_line(tmp_path):
    folder = write_cache(tmp_path / "c", torch.zeros(2, TOKENS, C), labels=[0, 1], classes=["a", "b"])
    sidecar = folder / "shard-00000.json"
    sidecar.write_text(json.dumps({"count": 2, "meta": [{"index": 0}, {"index": 1}]}))
    with pytest.raises(Exception, match="no valid class label.*re-run `coordtok encode`"):
        LatentDataset(folder)


# ---------------------------------------------------------------------------- 2. model, label dropout
def test_the_null_class_row_exists_only_when_conditional():
    base = SiTConfig.from_yaml(SIT_CONFIG)
    assert TriplaneSiT(base).y_embedder.embedding_table.weight.shape[0] == 1 and base.class_dropout == 0.0
    cond = TriplaneSiT(base, num_classes=5)
    assert cond.y_embedder.embedding_table.weight.shape[0] == 6 and cond.null_class == 5
    assert cond.config.class_dropout == 0.1 and SiTConfig(num_classes=5, class_dropout_prob=0.25).class_dropout == 0.25
    with pytest.raises(ConfigError, match="no null class"):
        SiTConfig(num_classes=1, class_dropout_prob=0.1)
    # y=None on a conditional SiT is the null class (the unconditional prediction)
    model = random_weights(TriplaneSiT(base, num_classes=2))
    x, t = torch.randn(3, TOKENS, C), torch.rand(3)
    assert torch.equal(model(x, t), model(x, t, torch.full((3,), 2)))
    assert torch.equal(
        model(x, t, torch.tensor([0, 1, 0]), drop=torch.tensor([True, False, True])),
        model(x, t, torch.tensor([2, 1, 2])),
    )


def test_label_dropout_rate_is_within_its_binomial_bound():
    n, p = 20000, 0.1
    drops = label_drops([mix_seed(0, 7, b, SeedTag.SIT_LABEL_DROP) for b in range(n)], p)
    # 5 binomial standard deviations (42.4): a false alarm once in ~1.7 million runs
    assert abs(int(drops.sum()) - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    assert torch.equal(drops[:100], label_drops([mix_seed(0, 7, b, SeedTag.SIT_LABEL_DROP) for b in range(100)], p))


def test_conditional_training_resumes_bit_exactly(two_class_cache, tmp_path):
    straight = train_sit(sit_cfg(tmp_path / "a", 4, ckpt_every=2), two_class_cache, progress=False)
    train_sit(sit_cfg(tmp_path / "b", 2, ckpt_every=2), two_class_cache, progress=False)
    resumed = train_sit(sit_cfg(tmp_path / "b", 4, ckpt_every=2), two_class_cache, resume=True, progress=False)
    assert straight["loss"] == resumed["loss"]
    a, b = (ckpt.load(p / "ckpt-0000004.pt") for p in (tmp_path / "a", tmp_path / "b"))
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), name
    assert a["stats"]["classes"] == ["bikes", "bigbuckbunny"] and a["stats"]["class_counts"] == [3, 3]


@pytest.mark.slow
def test_two_processes_train_the_conditional_sit_of_one_process(two_class_cache, tmp_path):
    """Labels and their dropout (p 0.5 here, tests/mp_train.py) reach each rank's share of the global batch."""
    import sys

    from helpers import assert_same_gradients
    from test_multiprocess import SCRIPT, _run

    two, one = tmp_path / "two", tmp_path / "one"
    _run(
        [
            *accelerate_launch(),
            SCRIPT,
            "sit",
            str(two),
            "3",
            str(two_class_cache),
        ],
        env={"ACCELERATE_USE_CPU": "1"},
    )
    _run([sys.executable, SCRIPT, "sit", str(one), "3", str(two_class_cache)])
    r0, r1, single = (torch.load(p) for p in (two / "rank0.pt", two / "rank1.pt", one / "rank0.pt"))
    assert single["y_embedder.embedding_table.weight"].shape[0] == 3  # two classes + the null class
    for name in single:
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
    assert_same_gradients(torch.load(two / "grads0.pt"), torch.load(one / "grads0.pt"))
    # every row of the label table moved, the null class's too: labels were dropped (no weight decay
    # on SiT, so a row no item used would keep its initial value exactly)
    torch.manual_seed(0)  # the trainer builds its model right after seeding with train.seed (0)
    init = TriplaneSiT(SiTConfig.from_yaml(SIT_CONFIG), num_classes=2, class_dropout_prob=0.5).state_dict()
    table = "y_embedder.embedding_table.weight"
    assert all(not torch.equal(init[table][k], single[table][k]) for k in range(3))


# ---------------------------------------------------------------------------- 3. guidance
def test_guidance_scale_1_is_the_conditional_call_and_0_the_null_call():
    model = random_weights(TriplaneSiT(SiTConfig.from_yaml(SIT_CONFIG), num_classes=3))
    x, t, y = torch.randn(4, TOKENS, C), torch.rand(4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, null = model(x, t, y), model(x, t, torch.full((4,), 3))
        assert torch.equal(guided_velocity(model, y, 3, 1.0)(x, t), cond)
        assert torch.equal(guided_velocity(model, y, 3, 0.0)(x, t), null)
        guided = guided_velocity(model, y, 3, 2.5)(x, t)
    assert not torch.allclose(cond, null)
    # the batched [cond; null] call differs from two calls of B only by float32 rounding of the matmuls
    # (relative 2^-24 per operation, ~100 ops deep): 1e-4 of the output's scale bounds it with room
    want = null + 2.5 * (cond - null)
    assert torch.allclose(guided, want, atol=1e-4 * want.abs().max().item(), rtol=0)


def test_guidance_is_one_batched_call_on_every_channel_inside_its_interval():
    calls = []

    def net(x, t, y):  # elementwise in the batch, so batching is exact: v = x * (1 + y) + t
        calls.append((x.shape[0], y.tolist()))
        return x * (1 + y.to(x.dtype)).reshape(-1, 1, 1) + t.reshape(-1, 1, 1)

    x, y = torch.randn(2, TOKENS, C), torch.tensor([0, 1])
    v = guided_velocity(net, y, 2, 1.5, interval=(0.25, 0.75))
    for t, guided in ((0.5, True), (0.1, False), (0.9, False)):
        calls.clear()
        out = v(x, torch.full((2,), t))
        cond, null = net(x, torch.full((2,), t), y), net(x, torch.full((2,), t), torch.full((2,), 2))
        want = null + 1.5 * (cond - null) if guided else cond
        assert torch.equal(out, want)  # every channel of every plane, not the first 3
        assert calls[0] == ((4, [0, 1, 2, 2]) if guided else (2, [0, 1]))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_guided_velocity_and_counts_one_call_per_evaluation(name):
    model = random_weights(TriplaneSiT(SiTConfig.from_yaml(SIT_CONFIG), num_classes=2))
    calls, batches = 0, set()

    def net(x, t, y):
        nonlocal calls
        calls += 1
        batches.add(x.shape[0])
        return model(x, t, y)

    y = torch.tensor([0, 1])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = SAMPLERS[name](
        guided_velocity(net, y, 2, 2.0),
        torch.randn(2, TOKENS, C),
        num_steps=4,
        generator=gens,
        method="euler",
        diffusion_norm=1.0,
        last_step_size=0.04,
    )
    assert out.shape == (2, TOKENS, C) and torch.isfinite(out).all()
    want = SAMPLERS[name].calls(4)
    assert calls == (want if want is not None else 4) and batches == {4}  # the ode sampler: euler, 4 steps


def test_sample_labels_depend_only_on_seed_and_index_and_follow_the_data():
    assert sample_labels("uniform", 3, 5, 4) == sample_labels("uniform", 3, 20, 4)[:5]
    drawn = sample_labels("data", 0, 2000, 2, [1, 3])
    n, p = 2000, 0.75
    assert abs(drawn.count(1) - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    assert set(sample_labels("uniform", 0, 200, 3)) == {0, 1, 2}


# ---------------------------------------------------------------------------- sampling runs
@pytest.fixture(scope="module")
def cond_sit(two_class_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cond-sit")
    train_sit(sit_cfg(out, 2, ckpt_every=2), two_class_cache, progress=False)
    return out / "ckpt-0000002.pt"


def _argv(sit, tokenizer, out, *extra):
    return [
        "sample",
        "--sit-ckpt",
        str(sit),
        "--tokenizer-ckpt",
        str(tokenizer),
        "--out",
        str(out),
        "--num",
        "3",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_sample_by_class_name_records_every_label(cond_sit, root, tmp_path, capsys):
    tok = tiny_tokenizer(root)
    assert (
        main(_argv(cond_sit, tok, tmp_path / "a", "--class", "bigbuckbunny", "--cfg-scale", "1.5", "--format", "npz"))
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["labels_per_class"] == {"1": 3} and result["cfg_scale"] == 1.5
    manifest = json.loads((tmp_path / "a" / "sampling.json").read_text())
    assert manifest["labels"] == [1, 1, 1] and manifest["classes"] == ["bikes", "bigbuckbunny"]
    assert manifest["run"]["class"] == 1 and manifest["run"]["cfg_scale"] == 1.5
    with np.load(tmp_path / "a" / "samples.npz") as z:
        assert z["labels"].tolist() == [1, 1, 1] and z["classes"].tolist() == ["bikes", "bigbuckbunny"]
        assert z["videos"].shape == (3, 128, 64, 64, 3)
    # --classes data: the training frequencies, each sample's label from (seed, i); mp4 runs list them too
    assert main(_argv(cond_sit, tok, tmp_path / "b", "--classes", "data", "--cfg-interval", "0.2", "0.8")) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "b" / "sampling.json").read_text())
    assert manifest["labels"] == sample_labels("data", 0, 3, 2, [3, 3]) and manifest["run"]["cfg_interval"] == [
        0.2,
        0.8,
    ]


@pytest.mark.slow
def test_two_processes_write_the_labelled_guided_samples_of_one_process(cond_sit, root, tmp_path, capsys):
    """3 samples in batches of 1 with drawn labels and guidance: process 0 samples 0 and 2, process 1 sample 1."""
    import subprocess

    from test_sample_runs import ROOT

    tok = tiny_tokenizer(root)
    extra = ("--classes", "uniform", "--cfg-scale", "2", "--format", "npz", "--batch-size", "1", "--seed", "5")
    assert main(_argv(cond_sit, tok, tmp_path / "one", *extra)) == 0
    capsys.readouterr()
    res = subprocess.run(
        [
            *accelerate_launch(),
            "-m",
            "coordtok",
            *_argv(cond_sit, tok, tmp_path / "two", *extra),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 processes" in res.stderr
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "two" / "samples.npz") as b:
        assert np.array_equal(a["videos"], b["videos"]) and a["labels"].tolist() == b["labels"].tolist()
        assert a["labels"].tolist() == sample_labels("uniform", 5, 3, 2)
    one, two = (json.loads((tmp_path / d / "sampling.json").read_text()) for d in ("one", "two"))
    assert one["run"] == two["run"] and one["labels"] == two["labels"] and one["classes"] == two["classes"]


def test_class_arguments_are_checked_in_one_line(cond_sit, sit_uncond, root, tmp_path, capsys):
    tok = tiny_tokenizer(root)
    for extra, match in (
        (("--class", "cars"), "not a class of the SiT .*bikes, bigbuckbunny"),
        (("--class", "2"), "classes 0..1"),
        (("--cfg-scale", "-1"), "--cfg-scale"),
        (("--cfg-interval", "0.8", "0.2"), "--cfg-interval"),
    ):
        assert main(_argv(cond_sit, tok, tmp_path / "x", *extra)) != 0
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("coordtok: error:")]
        assert len(err) == 1 and re.search(match, err[0]), err
    with pytest.raises(SamplingError, match="unconditional"):
        from sit.sample import sample_videos

        sample_videos(sit_uncond, tok, 1, tmp_path / "u", class_label="0", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "u").exists()


def test_guiding_a_sit_whose_null_class_never_trained_says_so():
    from sit.sample import _labelling

    stats = LatentStats(
        grid=GRID, mean=torch.zeros(3, C), std=torch.ones(3, C), classes=["a", "b"], class_counts=[1, 1]
    )
    base = SiTConfig.from_yaml(SIT_CONFIG)
    for dropout, scale, warned in ((0.0, 2.0, True), (0.0, 1.0, False), (0.1, 2.0, False)):
        said = []
        model = TriplaneSiT(base, num_classes=2, class_dropout_prob=dropout)
        out = _labelling(model, stats, 2, 0, "b", None, scale, None, said.append)
        assert out["labels"] == [1, 1] and any("never was" in m for m in said) == warned


@pytest.mark.slow
def test_classes_none_samples_the_null_class_without_labels(cond_sit, root, tmp_path, monkeypatch):
    """``--classes none``: every network call gets no label (the model's null class, which label
    dropout trained), and the run records no labels; refused with guidance or a --class, and for a
    SiT whose null class never trained."""
    from sit.sample import _labelling, sample_videos

    seen = []
    real = TriplaneSiT.forward

    def spy(self, x, t, y=None):
        seen.append(y)
        return real(self, x, t, y)

    monkeypatch.setattr(TriplaneSiT, "forward", spy)
    sample_videos(
        cond_sit, tiny_tokenizer(root), 2, tmp_path / "none", classes="none", steps=3, fmt="npz", progress=False
    )
    assert len(seen) >= 3 and all(y is None for y in seen)
    manifest = json.loads((tmp_path / "none" / "sampling.json").read_text())
    assert "labels" not in manifest and "labels" not in np.load(tmp_path / "none" / "samples.npz").files
    stats = LatentStats(
        grid=GRID, mean=torch.zeros(3, C), std=torch.ones(3, C), classes=["a", "b"], class_counts=[1, 1]
    )
    base = SiTConfig.from_yaml(SIT_CONFIG)
    trained = TriplaneSiT(base, num_classes=2, class_dropout_prob=0.1)
    assert _labelling(trained, stats, 2, 0, None, "none", 1.0, None, print) is None
    for label, scale, match in ((None, 1.5, "no --class, --cfg-scale"), ("a", 1.0, "not both")):
        with pytest.raises(SamplingError, match=match):
            _labelling(trained, stats, 2, 0, label, "none", scale, None, print)
    with pytest.raises(SamplingError, match="never was"):
        _labelling(
            TriplaneSiT(base, num_classes=2, class_dropout_prob=0.0), stats, 2, 0, None, "none", 1.0, None, print
        )


@pytest.fixture(scope="module")
def sit_uncond(two_class_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uncond-sit")
    train_sit(sit_cfg(out, 1, num_classes=1, ckpt_every=1), two_class_cache, progress=False)
    return out / "ckpt-0000001.pt"


# ---------------------------------------------------------------------------- 4. class-matched FVD
@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """real/bright/ and real/dark/: 4 clips of 12 frames (32x32) each, the dark ones at a fifth of the
    brightness; fake.npz: 4 bright clips labelled 'bright'."""
    root = tmp_path_factory.mktemp("class-fvd")
    frames = (
        decord.VideoReader(str(sample_video_paths()["bikes"]), width=64, height=32, num_threads=1)
        .get_batch(list(range(200)))
        .asnumpy()[:, :, 16:48]
    )
    for i in range(4):
        write_mp4(root / "real" / "bright" / f"b{i}.mp4", frames[i * 40 : i * 40 + 12])
        write_mp4(root / "real" / "dark" / f"d{i}.mp4", (frames[i * 40 + 5 : i * 40 + 17] // 5).astype(np.uint8))
    fakes = np.stack([frames[i * 40 + 2 : i * 40 + 10] for i in range(4)])
    np.savez(root / "fake.npz", videos=fakes, labels=np.zeros(4, dtype=np.int64), classes=np.array(["bright", "dark"]))
    np.savez(root / "unlabelled.npz", videos=fakes)
    return root


def test_eval_fvd_draws_real_clips_with_the_fakes_class_frequencies(class_folders, tmp_path, capsys):
    from test_fvd import CountingDetector

    from eval.fvd import compute_fvd, real_clips, real_data

    spec = real_data(class_folders / "real")
    clips = real_clips(spec, frames=8, size=32, num_videos=4, seed=0, per_class={"bright": 3, "dark": 1})
    names = [
        os.path.basename(os.path.dirname(clips.base.videos[i // clips.base.clips_per_video].path)) for i in clips.items
    ]
    assert sorted(names) == ["bright", "bright", "bright", "dark"]
    kw = dict(frames=8, num_videos=4, detector=CountingDetector(), cache_dir=False, progress=False)
    matched = compute_fvd(class_folders / "real", class_folders / "fake.npz", **kw)
    plain = compute_fvd(class_folders / "real", class_folders / "fake.npz", protocol="unconditional", **kw)
    assert matched["protocol"] == "class-matched" and matched["class_counts"] == [{"bright": 4}]
    assert plain["protocol"] == "unconditional" and "class_counts" not in plain
    assert matched["mean"] < plain["mean"]  # bright fakes against bright real clips only
    assert compute_fvd(class_folders / "real", class_folders / "unlabelled.npz", **kw)["protocol"] == "unconditional"


def test_a_folder_of_labelled_mp4_samples_reads_its_labels_from_the_manifest(class_folders, tmp_path):
    from eval.fvd import FVDInputError, fake_videos

    with np.load(class_folders / "fake.npz") as z:
        videos = z["videos"]
    for i in range(2):
        write_mp4(tmp_path / "run" / f"sample_{i:04d}.mp4", videos[i])
    manifest = {"run": {}, "labels": [1, 0], "classes": ["bright", "dark"]}
    (tmp_path / "run" / "sampling.json").write_text(json.dumps(manifest))
    fakes = fake_videos(tmp_path / "run")
    assert fakes.labels.tolist() == [1, 0] and fakes.class_counts([0, 1]) == {"bright": 1, "dark": 1}
    write_mp4(tmp_path / "run" / "mine.mp4", videos[2])  # a file the manifest does not name: one line
    with pytest.raises(FVDInputError, match="does not name .*mine.mp4"):
        fake_videos(tmp_path / "run")


# ---------------------------------------------------------------------------- 5. the toy
def _separation(samples: torch.Tensor, labels: torch.Tensor, mu0: torch.Tensor, mu1: torch.Tensor) -> float:
    """Mean projection of class-1 samples minus that of class-0 samples on the axis between the class
    means, in units of the distance between the means (the training data itself gives ~1)."""
    d = (mu1 - mu0).flatten()
    proj = (samples.flatten(1) - (mu0 + mu1).flatten() / 2) @ d / (d @ d)
    return float(proj[labels == 1].mean() - proj[labels == 0].mean())


@pytest.mark.slow
def test_toy_two_classes_samples_follow_their_class_and_guidance_separates_more(tmp_path):
    # Class k's latents: (-1)^k f + 0.5 eps for one fixed random field f, so the classes' means are
    # 2|f| apart and an unconditional model sees a two-mode mixture.
    g = torch.Generator().manual_seed(0)
    f = torch.randn(TOKENS, C, generator=g)
    labels = torch.arange(128) % 2
    latents = (1 - 2 * labels.float()).reshape(-1, 1, 1) * f + 0.5 * torch.randn(128, TOKENS, C, generator=g)
    cache = write_cache(tmp_path / "toy", latents, labels=labels.tolist(), classes=["plus", "minus"])
    train_sit(sit_cfg(tmp_path / "run", 300, batch_size=16, ckpt_every=300, ema=0.95, lr=2e-3), cache, progress=False)
    model, stats, _ = load_sit(tmp_path / "run" / "ckpt-0000300.pt", log=lambda msg: None)
    normed = stats.normalize(latents)
    mu0, mu1 = normed[labels == 0].mean(0), normed[labels == 1].mean(0)

    y = torch.arange(16) % 2
    seps = {}
    for scale in (1.0, 1.5, 3.0):
        gens = [torch.Generator().manual_seed(i) for i in range(16)]
        noise = torch.randn(16, TOKENS, C, generator=torch.Generator().manual_seed(1))
        x = SAMPLERS["sde"](guided_velocity(model, y, model.null_class, scale), noise, num_steps=50, generator=gens)
        seps[scale] = _separation(x, y, mu0, mu1)
        if scale == 1.0:
            nearer = [(s - (mu0, mu1)[k]).norm() < (s - (mu1, mu0)[k]).norm() for s, k in zip(x, y.tolist())]
            assert all(nearer)
    print(f"toy separation (class means apart = 1): {seps}")
    assert seps[1.0] > 0.5 and seps[1.0] < seps[1.5] < seps[3.0]
