"""CoordTok-SiT training and sampling: exact resume, complete checkpoints, videos out of `coordtok sample`."""

import json

import decord
import numpy as np
import pytest
import torch
from helpers import assert_same_gradients, first_step_gradients
from PIL import Image
from sit_common import SIT_CONFIG, tiny_tokenizer

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.loop import TrainingDiverged
from sit.cache import read_index
from sit.checkpoint import load_sit
from sit.config import load_sit_run_config
from sit.models import SiTConfig, TriplaneSiT
from sit.stats import LatentStats
from sit.train import SiTTask, train_sit


@pytest.fixture(scope="session")
def tokenizer_ckpt(root):
    return tiny_tokenizer(root)


def sit_run(out_dir, steps, **train_over):
    return load_sit_run_config(
        SIT_CONFIG,
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(out_dir),
                "batch_size": 4,
                "log_every": 1,
                "ckpt_every": 2,
                "keep_checkpoints": 5,
                "val_every": 2,
                "sample_num": 2,
                "sample_steps": 3,
                "mixed_precision": "no",
                **train_over,
            }
        },
    )


@pytest.fixture(scope="module")
def sit_ckpt(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sit-run")
    train_sit(sit_run(out, 2), cache, progress=False)
    return out / "ckpt-0000002.pt"


# ---------------------------------------------------------------------------- training
@pytest.mark.slow
def test_resume_is_bit_exact_model_and_ema(cache, tmp_path):
    k = 2
    straight = train_sit(sit_run(tmp_path / "a", 2 * k), cache, progress=False)
    train_sit(sit_run(tmp_path / "b", k), cache, progress=False)
    # The resumed half also reads latents in a DataLoader worker: same batches either way.
    resumed = train_sit(sit_run(tmp_path / "b", 2 * k, num_workers=1), cache, resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 2 * k and straight["loss"] == resumed["loss"]
    a, b = (ckpt.load(tmp_path / run / "ckpt-0000004.pt") for run in ("a", "b"))
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # The weights moved, the EMA lags behind them, and another seed trains differently.
    init = TriplaneSiT(SiTConfig.from_yaml(SIT_CONFIG))
    name = "final_layer_xy.linear.weight"  # zero at init
    assert a["model"][name].abs().sum() > 0 and not torch.equal(a["ema"][name], a["model"][name])
    assert not torch.equal(init.state_dict()["blocks.0.attn.qkv.weight"], a["model"]["blocks.0.attn.qkv.weight"])
    other = train_sit(sit_run(tmp_path / "c", 2 * k, seed=1), cache, progress=False)
    assert other["loss"] != straight["loss"]


def test_gradient_accumulation_matches_one_big_batch(cache, tmp_path):
    """batch 4 as 2 micro-batches of 2 == batch 4 at once (same latents, times and noise; mean loss)."""
    a = first_step_gradients(SiTTask(sit_run(tmp_path / "a", 1, val_every=0), cache))
    b = first_step_gradients(SiTTask(sit_run(tmp_path / "b", 1, val_every=0, grad_accum=2), cache))
    assert_same_gradients(a, b)
    c = first_step_gradients(SiTTask(sit_run(tmp_path / "c", 1, val_every=0, seed=1), cache))
    with pytest.raises(AssertionError):
        assert_same_gradients(a, c)


def test_ema_follows_the_decay(cache, tmp_path):
    """One step: EMA = decay * init + (1 - decay) * model, for every parameter; buffers copied."""
    decay = 0.75
    train_sit(sit_run(tmp_path, 1, ema=decay, ckpt_every=1, val_every=0), cache, progress=False)
    state = ckpt.load(tmp_path / "ckpt-0000001.pt")
    torch.manual_seed(0)  # train.seed: the same initial weights as the run
    init = TriplaneSiT(SiTConfig.from_yaml(SIT_CONFIG)).state_dict()
    for name, value in state["model"].items():
        expected = value if name == "pos_embed_xy" else decay * init[name] + (1 - decay) * value
        assert torch.allclose(state["ema"][name], expected, atol=1e-7), name


def test_checkpoint_holds_stats_and_both_configs(cache, sit_ckpt):
    state = ckpt.load(sit_ckpt)
    assert {"model", "ema", "optimizer", "scaler", "step", "rng", "stats", "config", "tokenizer_config"} <= set(state)
    assert state["kind"] == "sit" and state["step"] == 2
    assert state["stats"] == LatentStats.load(cache).to_dict()
    assert state["tokenizer_config"] == read_index(cache)["tokenizer_config"]
    assert state["config"] == sit_run(sit_ckpt.parent, 2).to_dict()
    model, stats, configs = load_sit(sit_ckpt.parent)  # a run folder works too
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.state_dict().items())
    assert stats.grid == (16, 8, 8) and configs["step"] == 2 and configs["tokenizer"]["model"]["size"] == 64


def test_nan_losses_are_skipped_then_the_run_stops(cache, tmp_path, monkeypatch):
    """Every loss NaN: each step is skipped (both calls see the initial weights and EMA, no optimizer
    step is taken, the stopping step's included, and the weights and EMA after the stop are the
    initial ones), the second in a row stops the run, nothing is written, and the message says no
    checkpoint is good."""
    from helpers import StepRecorder

    import sit.train as st
    from coordtok.loop import fit

    real = st.training_loss
    task, stepped = SiTTask(sit_run(tmp_path, 10, max_bad_steps=2), cache), []
    seen = []

    def snapshot():
        return {
            f"{part}.{k}": v.detach().clone()
            for part, m in (("model", task.modules["model"]), ("ema", task.ema))
            for k, v in m.state_dict().items()
        }

    def poisoned(model, *a, **kw):
        seen.append(snapshot())
        loss, stats = real(model, *a, **kw)
        return loss * float("nan"), stats

    monkeypatch.setattr(st, "training_loss", poisoned)
    with (
        pytest.warns(UserWarning, match="non-finite") as caught,
        StepRecorder(task, on_step=stepped.append),
        pytest.raises(TrainingDiverged, match="2 consecutive non-finite steps at step 1") as stop,
    ):
        fit(task, progress=False)  # what train_sit(cfg, latents) runs, keeping the task to read its state after
    said = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert said == [f"step 1: non-finite model loss, update skipped ({n} in a row)" for n in (1, 2)]
    assert len(seen) == 2 and all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0]), "an update was applied"
    assert stepped == [], "an optimizer step was taken"
    after = snapshot()
    assert after.keys() == seen[0].keys() and all(torch.equal(seen[0][k], after[k]) for k in after)
    assert "No checkpoint of this run is known good (none was written)" in str(stop.value)
    assert not list(tmp_path.glob("ckpt-*.pt"))


def test_sit_train_cli_errors_are_one_line(cache, tmp_path, capsys):
    base = ["sit-train", "--config", str(SIT_CONFIG), "--out-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(base + ["--latents", str(cache), "--set", "train.learning_rate=1"]) == 2
    assert "tiny.yaml: train.learning_rate: unknown key" in capsys.readouterr().err
    assert main(base + ["--latents", str(tmp_path / "none")]) == 2
    assert "latent folder not found" in capsys.readouterr().err
    assert main(base + ["--latents", str(cache), "--set", "model.grid=[8,8,8]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit the latents" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------- sampling
@pytest.mark.slow
def test_sample_writes_valid_128_frame_videos(sit_ckpt, tokenizer_ckpt, tmp_path, capsys):
    out = tmp_path / "mp4"
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(sit_ckpt),
                "--tokenizer-ckpt",
                str(tokenizer_ckpt),
                "--num",
                "3",
                "--sampler",
                "sde",
                "--steps",
                "5",
                "--seed",
                "0",
                "--batch-size",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["written"] == 3
    for i in range(3):
        reader = decord.VideoReader(str(out / f"sample_{i:04d}.mp4"))
        assert len(reader) == 128 and reader[0].shape == (64, 64, 3)
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (3 * 64 + 2 * 2, 8 * 64 + 7 * 2, 3)


@pytest.mark.slow
def test_sample_npz_is_deterministic_per_seed(sit_ckpt, tokenizer_ckpt, tmp_path):
    def run(name, seed, sampler="sde"):
        out = tmp_path / name
        assert (
            main(
                [
                    "sample",
                    "--sit-ckpt",
                    str(sit_ckpt),
                    "--tokenizer-ckpt",
                    str(tokenizer_ckpt),
                    "--num",
                    "2",
                    "--sampler",
                    sampler,
                    "--steps",
                    "5",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--format",
                    "npz",
                    "--no-progress",
                ]
            )
            == 0
        )
        with np.load(out / "samples.npz") as f:
            return f["videos"]

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a.dtype == np.uint8 and a.shape == (2, 128, 64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # two different samples in one batch
    assert run("ode", 0, sampler="ode").shape == (2, 128, 64, 64, 3)


def test_sample_with_a_tokenizer_of_another_grid_is_a_one_line_error(sit_ckpt, tokenizer_ckpt, tmp_path, capsys):
    state = ckpt.load(sit_ckpt)
    cfg = load_sit_run_config(state["config"], {"model": {"grid": [8, 8, 8]}})
    model = TriplaneSiT(cfg.model)
    stats = LatentStats(grid=(8, 8, 8), mean=torch.zeros(3, 4), std=torch.ones(3, 4))
    other = tmp_path / "other" / "ckpt-0000001.pt"
    ckpt.atomic_save(
        {
            **state,
            "model": model.state_dict(),
            "ema": model.state_dict(),
            "config": cfg.to_dict(),
            "stats": stats.to_dict(),
        },
        other,
    )
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(other),
                "--tokenizer-ckpt",
                str(tokenizer_ckpt),
                "--num",
                "1",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and "grid [8, 8, 8]" in err and "grid [16, 8, 8]" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
    assert (
        main(
            [
                "sample",
                "--sit-ckpt",
                str(tokenizer_ckpt),
                "--tokenizer-ckpt",
                str(tokenizer_ckpt),
                "--num",
                "1",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "not a CoordTok-SiT checkpoint" in capsys.readouterr().err


def test_init_from_takes_the_same_model_and_refuses_another_in_one_line(cache, sit_ckpt, tmp_path):
    """train.init_from: a checkpoint of the same SiT starts the run at its training weights (lr 0 and
    no weight decay: the one step leaves them there); one of another model is refused in one line
    naming the first setting that differs."""
    train_sit(sit_run(tmp_path / "same", 1, init_from=str(sit_ckpt), lr=0.0), cache, progress=False)
    src, dst = ckpt.load(sit_ckpt)["model"], ckpt.load(tmp_path / "same" / "ckpt-0000001.pt")["model"]
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    other = load_sit_run_config(
        SIT_CONFIG,
        {
            "model": {"depth": 3},
            "train": {
                "max_steps": 1,
                "out_dir": str(tmp_path / "other"),
                "init_from": str(sit_ckpt),
                "mixed_precision": "no",
            },
        },
    )
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"cannot initialise from it: its model differs from the "
        r"config's \(model\.depth: 2 in the checkpoint, 3 in the config\); fine-tune with the "
        r"checkpoint's model settings",
    ):
        train_sit(other, cache, progress=False)
