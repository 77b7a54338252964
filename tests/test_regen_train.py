"""REGEN training on the project's one training skeleton: config checks, exact resume (both tasks,
EMA), the loss going down on a real clip and a decoded reconstruction better than a trivial one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from baselines.regen import Regen
from baselines.regen_train import (
    RegenTask,
    extension_step,
    load_regen,
    load_regen_run_config,
    train_regen,
    validation_decoder,
)
from coordtok import checkpoint as ckpt
from coordtok.checkpoint import CheckpointError
from coordtok.config import ConfigError
from coordtok.data import build_dataset
from coordtok.loop import fit
from coordtok.train import validation_psnr

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "baselines"
# Two consecutive 9-frame chunks of bikes (frames 100..117): the only clip the learning test sees.
WINDOW = {"kind": "samples", "names": ["bikes"], "frame_range": [100, 118], "num_workers": 0}
RANDOM = {"kind": "samples", "names": ["bikes"], "frame_range": [0, 140], "num_workers": 0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared 2-core CPU: a second OpenMP thread only adds hand-off cost. Restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_config(out, steps: int, model: dict | None = None, data: dict | None = None, **train):
    over = {
        "train": {
            "max_steps": steps,
            "out_dir": str(out),
            "log_every": 1,
            "ckpt_every": 2,
            "keep_checkpoints": 10,
            "mixed_precision": "no",
            "val_every": 10**9,
            **train,
        },
        "data": data or RANDOM,
        "val_data": None,
    }
    if model:
        over["model"] = model
        over["data"] = {**over["data"], "size": model.get("size", 64)}
    return load_regen_run_config(CONFIGS / "regen-tiny.yaml", over)


def test_configs_load_and_check_their_kind():
    paper = load_regen_run_config(CONFIGS / "regen.yaml")
    assert paper.data.frames == 2 * paper.model.frames == 34 and paper.val_data.frames == 17
    tiny = load_regen_run_config(CONFIGS / "regen-tiny.yaml")
    assert tiny.to_dict()["kind"] == "regen" and tiny.data.frames == 18
    # without the extension task a one-chunk clip is enough (two still work); with it, two are needed
    assert (
        load_regen_run_config(
            CONFIGS / "regen-tiny.yaml", {"train": {"extend_prob": 0.0}, "data": {"frames": 9}}
        ).data.frames
        == 9
    )
    with pytest.raises(ConfigError, match="two consecutive chunks"):
        load_regen_run_config(CONFIGS / "regen-tiny.yaml", {"data": {"frames": 9}})
    with pytest.raises(ConfigError, match="kind: 'promag'"):
        load_regen_run_config(CONFIGS / "promag-tiny-4x.yaml")
    with pytest.raises(ConfigError, match="extend_prob"):
        load_regen_run_config(CONFIGS / "regen-tiny.yaml", {"train": {"extend_prob": 1.5}})


def test_extension_steps_are_a_function_of_seed_and_step():
    picks = [extension_step(0, s, 0.25) for s in range(2000)]
    assert picks == [extension_step(0, s, 0.25) for s in range(2000)]
    # Binomial(2000, 0.25): mean 500, sd 19.4; 5 sd either side
    assert 400 < sum(picks) < 600
    assert picks != [extension_step(1, s, 0.25) for s in range(2000)]
    assert not any(extension_step(0, s, 0.0) for s in range(100))


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    """k steps, resume, k more == 2k steps straight (model, EMA, optimizer, metrics), with both
    tasks in the 2k steps (extend_prob 0.5, seed 0: step 0 reconstructs, steps 1-3 extend)."""
    k = 2
    assert [extension_step(0, s, 0.5) for s in range(2 * k)] == [False, True, True, True]
    over = dict(extend_prob=0.5, ema=0.9)
    straight = train_regen(run_config(tmp_path / "a", 2 * k, **over), progress=False)
    train_regen(run_config(tmp_path / "b", k, **over), progress=False)
    resumed = train_regen(run_config(tmp_path / "b", 2 * k, **over), resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 2 * k
    a, b = (ckpt.load(tmp_path / run / "ckpt-0000004.pt") for run in ("a", "b"))
    for entry in ("model", "ema"):
        for name, tensor in a[entry].items():
            assert torch.equal(tensor, b[entry][name]), (entry, name)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["metrics"] == b["metrics"] and {"recon_loss", "extend_loss"} <= set(a["metrics"])
    model, _ = load_regen(tmp_path / "b")
    assert type(model) is Regen and all(torch.equal(v, a["ema"][n]) for n, v in model.state_dict().items())


@pytest.mark.slow
def test_learns_a_real_clip(tmp_path, monkeypatch):
    """The tiny REGEN learns two consecutive 9-frame chunks of bikes at 32 x 32 (lr 3e-3, batch 2,
    150 steps, the config's task mix); ``size`` 32 instead of regen-tiny's 64, for speed (4x fewer
    video tokens). (Its width, 256, is what lets it learn at all: a DiT narrower than a 3 x 8 x 8
    = 192-value patch cannot pass the noise ``x0`` through to its velocity output and keeps at
    least a third of the noise variance in every decode, a 10.8 dB ceiling: measured 10.7 dB at
    width 128. ``RegenConfig`` now refuses such widths.)

    Measured over seeds 0-2: the flow-matching loss falls from 1.21-1.22 (zero velocity:
    E|x1 - x0|^2) to 0.21-0.29 (mean of the last 20 steps); the one-step decode of the second
    chunk reaches 14.3-15.2 dB against 12.65 dB for the trivial reconstruction, the mid-grey clip
    (all zeros: what a decoder that knows nothing of the clip outputs at best in expectation over
    clips), and 7.4 dB for the untrained decoder. The test asks for the loss below 0.6 of its
    start and the decode 1 dB above mid-grey."""
    cfg = run_config(
        tmp_path, 150, model={"size": 32}, data=WINDOW, lr=3e-3, ckpt_every=150, val_every=150, log_every=10
    )
    losses = []
    summarize = RegenTask.summarize
    monkeypatch.setattr(RegenTask, "summarize", lambda self, m: (losses.append(m["loss"]), summarize(self, m))[1])
    train_regen(cfg, progress=False)
    assert len(losses) == 150
    first, last = losses[0], sum(losses[-20:]) / 20
    assert abs(first - 1.21) < 0.05 and last < 0.6 * first, (first, last)
    model, _ = load_regen(tmp_path)
    chunks = build_dataset(cfg.data, 0, deterministic=True)
    second = [{"video": chunks[0]["video"][:, 9:]}]
    grey = 10 * math.log10(4.0 / second[0]["video"].pow(2).mean().item())
    psnr = validation_psnr(validation_decoder(model, steps=1, seed=0), second, 1, "cpu")
    assert psnr > grey + 1.0, (psnr, grey)


def test_load_regen_errors(tmp_path):
    ckpt.atomic_save({"kind": "magvit2", "model": {}, "config": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a REGEN checkpoint"):
        load_regen(tmp_path / "other.pt")
    ckpt.atomic_save({"kind": "regen", "model": {}}, tmp_path / "noconfig.pt")
    with pytest.raises(CheckpointError, match="no model config"):
        load_regen(tmp_path / "noconfig.pt")


@pytest.mark.slow
def test_init_from_takes_the_weights_and_refuses_another_model(tmp_path):
    """train.init_from starts a new run from a finished one's weights (and its EMA); a checkpoint of
    another architecture is a one-line error naming the first differing key."""
    train_regen(run_config(tmp_path / "a", 1, ema=0.9), progress=False)
    done = ckpt.load(tmp_path / "a" / "ckpt-0000001.pt")
    # max_steps 0: fit() creates the EMA and takes the starting weights (Task.start -> init_from), no step
    task = RegenTask(run_config(tmp_path / "b", 0, ema=0.9, init_from=str(tmp_path / "a")))
    notes = []
    fit(task, progress=False, log=notes.append)
    assert all(torch.equal(v, done["model"][k]) for k, v in task.modules["model"].state_dict().items())
    assert all(torch.equal(v, done["ema"][k]) for k, v in task.ema.state_dict().items())
    assert any("initialised from" in n and "step 1" in n for n in notes), notes
    other = RegenTask(run_config(tmp_path / "c", 1, model={"depth": 2}))
    with pytest.raises(CheckpointError, match=r"model differs from the config's \(model.depth: 4 in the checkpoint, 2"):
        other.init_from(str(tmp_path / "a"), notes.append)
