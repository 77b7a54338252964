"""A hyper-parameter of NaN or infinity is a one-line config error.

NaN passes every range check (``nan <= 0`` is false) and used to reach torch ("Invalid learning
rate: nan") or, for ``.inf``, train to non-finite weights that the stop message then called
"the last good state"."""

import pytest

from coordtok.cli import main
from coordtok.config import ConfigError, load_tokenizer_config

T = "configs/tokenizer/tiny.yaml"


@pytest.mark.parametrize("value", ["nan", ".nan", ".inf", "-.inf", "inf"])
def test_train_refuses_a_non_finite_lr_in_one_line(value, tmp_path, capsys):
    code = main(
        [
            "train",
            "--config",
            T,
            "--out-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            f"train.lr={value}",
            "--max-steps",
            "1",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "train.lr: must be a finite number" in err, err
    assert not list((tmp_path / "run").glob("ckpt-*.pt")) if (tmp_path / "run").exists() else True


@pytest.mark.parametrize(
    "config,key",
    [
        ("configs/baselines/magvit2-tiny.yaml", "train.gan_weight"),
        ("configs/baselines/magvit2-tiny.yaml", "model.entropy_temperature"),
        ("configs/tokenizer/tiny.yaml", "train.max_grad_norm"),
        ("configs/tokenizer/tiny.yaml", "train.weight_decay"),
        ("configs/tokenizer/tiny.yaml", "train.betas"),
    ],
)
def test_every_float_setting_must_be_finite(config, key, tmp_path, capsys):
    value = "[0.9, .nan]" if key == "train.betas" else ".nan"
    code = main(
        [
            "train",
            "--config",
            config,
            "--out-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            f"{key}={value}",
            "--max-steps",
            "1",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "must be a finite number" in err and key.split(".")[1] in err, err


def test_large_finite_values_are_still_accepted():
    """Only non-finite numbers are refused: a (bad, but finite) lr of 1e9 is the user's choice."""
    cfg = load_tokenizer_config(T, {"train": {"lr": 1e9}})
    assert cfg.train.lr == 1e9
    with pytest.raises(ConfigError, match=r"train\.lr: must be a finite number, got nan"):
        load_tokenizer_config(T, {"train": {"lr": float("nan")}})
