"""After a divergence, the stop message names a checkpoint only if it is good.

Before, the guard saved the weights in memory as "the last good state": with lr=1e9 those are
weights of ~1e9 (Adam's first step moves every weight by about the lr), and the advice (lower the
lr, --resume) failed again at once. Now nothing is written on a stop; a checkpoint is known good
when its weights are finite and the loss they gave on the next batch was finite and not
exploding, and the message names the newest such checkpoint of the run's lineage, or says none
is. Following the advice must work."""

import math
import re

import pytest

from baselines.train import load_magvit2_run_config, train_baseline
from coordtok import checkpoint as ckpt
from coordtok.config import load_tokenizer_config
from coordtok.loop import EXPLODING, TrainingDiverged, loss_is_sane
from coordtok.train import train

# The tiny models' initial weights are of order 1 at most (default inits, unit norm gains, sin-cos
# tables); a few steps at lr 1e-3 move each by at most about steps x lr (Adam's step is ~lr):
# far below this bound, while one step at lr 1e9 moves them by ~1e9.
SANE = 100.0


def tokenizer(out, steps, lr):
    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(out),
                "batch_size": 2,
                "num_coords": 256,
                "log_every": 1,
                "lr": lr,
                "ckpt_every": 1,
                "val_every": 10**9,
                "keep_checkpoints": 10,
                "max_bad_steps": 2,
                "mixed_precision": "no",
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )
    return lambda **kw: train(cfg, progress=False, **kw)


def magvit2(out, steps, lr):
    cfg = load_magvit2_run_config(
        "configs/baselines/magvit2-tiny.yaml",
        {
            "model": {"frames": 9, "size": 32, "disc_base_channels": 8, "disc_channel_multipliers": [1, 2, 2]},
            "train": {
                "max_steps": steps,
                "out_dir": str(out),
                "batch_size": 2,
                "gan_weight": 0.1,
                "lr": lr,
                "warmup_steps": 0,
                "log_every": 1,
                "ckpt_every": 1,
                "keep_checkpoints": 10,
                "max_bad_steps": 2,
                "val_every": 10**9,
                "mixed_precision": "no",
            },
            "data": {
                "kind": "samples",
                "names": ["bikes"],
                "frame_range": [0, 140],
                "frames": 9,
                "size": 32,
                "num_workers": 0,
            },
            "val_data": None,
        },
    )
    return lambda **kw: train_baseline(cfg, progress=False, **kw)


def largest_weight(path) -> float:
    return max(float(v.abs().max()) for v in ckpt.load(path)["model"].values() if v.is_floating_point())


def test_loss_is_sane():
    assert loss_is_sane(0.5, 1.0) and loss_is_sane(1.0 + EXPLODING, 1.0) and not loss_is_sane(1.1 + EXPLODING, 1.0)
    assert not loss_is_sane(math.nan, 1.0) and not loss_is_sane(math.inf, None) and loss_is_sane(1e6, None)
    assert loss_is_sane(-3.0, -2.0) and not loss_is_sane(25.0, -2.0)  # a loss may be negative (entropy terms)


@pytest.mark.slow
@pytest.mark.parametrize("make", [tokenizer, magvit2], ids=["coordtok", "magvit2"])
def test_the_stop_names_a_good_checkpoint_and_its_advice_works(make, tmp_path):
    w = tmp_path / "run"
    make(w, 2, 1e-3)()  # two good steps: checkpoints 1 and 2
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(TrainingDiverged) as stop:
        make(w, 10, 1e9)(resume=True)
    msg = str(stop.value)
    assert "no checkpoint written" in msg and len(msg.splitlines()) == 1
    named = re.search(r"The newest checkpoint known good is (\S+) \(step (\d+):", msg)
    assert named, msg
    good = named.group(1)
    assert good.endswith("ckpt-0000002.pt") and int(named.group(2)) == 2, msg
    assert largest_weight(good) < SANE
    diverged = [p for p in ckpt.list_checkpoints(w) if int(ckpt.load(p)["step"]) > 2]
    assert diverged and all(p.name in msg for p in diverged), msg
    assert all(largest_weight(p) > 1e6 or not ckpt.load(p)["finite_weights"] for p in diverged)
    assert f"then --resume {good}:" in msg
    # the advice: a lower lr, --resume the named file
    result = make(w, 4, 1e-3)(resume=good)
    assert result["step"] == 4 and math.isfinite(result["loss"])
    assert largest_weight(w / "ckpt-0000004.pt") < SANE


@pytest.mark.slow
def test_a_run_that_diverges_before_any_good_checkpoint_says_so(tmp_path):
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(TrainingDiverged) as stop:
        tokenizer(tmp_path / "a", 10, 1e9)()
    msg = str(stop.value)
    assert "No checkpoint of this run is known good (each one had already diverged: ckpt-0000001.pt)" in msg, msg
    assert "start afresh in a new train.out_dir" in msg
    assert largest_weight(tmp_path / "a" / "ckpt-0000001.pt") > 1e6  # indeed not good
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "a")] == ["ckpt-0000001.pt"]  # nothing written on the stop
    result = tokenizer(tmp_path / "b", 2, 1e-3)()  # the advice
    assert (
        result["step"] == 2
        and math.isfinite(result["loss"])
        and largest_weight(tmp_path / "b" / "ckpt-0000002.pt") < SANE
    )
