"""The tokenizer a SiT generates for is recorded and checked: encode
writes the fingerprint of the tokenizer's weights into the cache, sit-train copies it into its
checkpoints, `sample` refuses another tokenizer (unless --allow-tokenizer-mismatch) and
`sit-train --resume` refuses latents of another tokenizer. Older files without one keep working
with one note line."""

import json

import pytest
import torch
from sit_common import CLIPS_PER_VIDEO, DATA, SHARD_SIZE, SIT_CONFIG, tiny_tokenizer

from coordtok import checkpoint as ckpt
from coordtok.checkpoint import load_tokenizer
from coordtok.cli import main
from coordtok.config import DataConfig
from sit.cache import read_index, short_fingerprint, weights_fingerprint
from sit.encode import encode_dataset


@pytest.fixture(scope="module")
def tokenizer(root):
    return tiny_tokenizer(root)


@pytest.fixture(scope="module")
def other_tokenizer(tokenizer, tmp_path_factory):
    """The same architecture and latent grid, other weights (one weight nudged)."""
    state = ckpt.load(tokenizer)
    weights = dict(state["model"])
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name] = weights[name] + 1e-3
    path = tmp_path_factory.mktemp("other-tok") / "ckpt-0000003.pt"
    ckpt.atomic_save({**state, "model": weights}, path)
    return path


@pytest.fixture(scope="module")
def other_cache(other_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("other-cache") / "latents"
    encode_dataset(
        other_tokenizer,
        DataConfig(**DATA),
        out,
        clips_per_video=CLIPS_PER_VIDEO,
        seed=0,
        shard_size=SHARD_SIZE,
        batch_size=2,
        progress=False,
    )
    return out


def _sit_train(run, latents, *extra):
    return main(
        [
            "sit-train",
            "--config",
            str(SIT_CONFIG),
            "--out-dir",
            str(run),
            "--latents",
            str(latents),
            "--no-progress",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.ckpt_every=1",
            "--set",
            "train.val_every=0",
            "--set",
            "train.log_every=1",
            "--set",
            "train.mixed_precision=no",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def sit_run(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("sit-fp") / "run"
    assert _sit_train(run, cache, "--max-steps", "1") == 0
    return run


def _sample(sit, tok, out, *extra):
    return main(
        [
            "sample",
            "--sit-ckpt",
            str(sit),
            "--tokenizer-ckpt",
            str(tok),
            "--num",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
            "--format",
            "npz",
            "--no-progress",
            *extra,
        ]
    )


def test_encode_records_the_tokenizers_fingerprint_and_sit_train_copies_it(
    cache, tokenizer, other_cache, other_tokenizer, sit_run
):
    fp = read_index(cache).get("tokenizer_fingerprint")
    assert fp == weights_fingerprint(load_tokenizer(tokenizer)[0]) and len(fp) == 40
    assert read_index(other_cache)["tokenizer_fingerprint"] == weights_fingerprint(load_tokenizer(other_tokenizer)[0])
    assert read_index(other_cache)["tokenizer_fingerprint"] != fp  # a 1e-3 nudge of one weight is seen
    assert ckpt.load(sit_run / "ckpt-0000001.pt")["tokenizer_fingerprint"] == fp


def test_fingerprint_is_of_the_bytes_in_sorted_key_order():
    a = torch.nn.Linear(3, 2)
    fp = weights_fingerprint(a)
    assert fp == weights_fingerprint(a) and len(fp) == 40
    with torch.no_grad():
        a.bias[0] = torch.nextafter(a.bias[0], torch.tensor(1.0))  # one ulp
    assert weights_fingerprint(a) != fp


@pytest.mark.slow
def test_sample_refuses_another_tokenizer_unless_told(sit_run, tokenizer, other_tokenizer, tmp_path, capsys):
    sit = sit_run / "ckpt-0000001.pt"
    assert _sample(sit, other_tokenizer, tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    fp_sit = short_fingerprint(ckpt.load(sit)["tokenizer_fingerprint"])
    fp_other = short_fingerprint(weights_fingerprint(load_tokenizer(other_tokenizer)[0]))
    assert len(err.splitlines()) == 1 and err.startswith("coordtok: error:"), err
    assert fp_sit in err and fp_other in err and "--allow-tokenizer-mismatch" in err
    assert not (tmp_path / "x").exists()
    assert _sample(sit, other_tokenizer, tmp_path / "y", "--allow-tokenizer-mismatch") == 0
    err = capsys.readouterr().err
    assert "sampling anyway" in err and (tmp_path / "y" / "samples.npz").is_file()
    assert _sample(sit, tokenizer, tmp_path / "z") == 0
    err = capsys.readouterr().err
    assert "fingerprint" not in err and (tmp_path / "z" / "samples.npz").is_file()


@pytest.mark.slow
def test_sample_with_a_checkpoint_without_a_fingerprint_notes_it(sit_run, other_tokenizer, tmp_path, capsys):
    state = ckpt.load(sit_run / "ckpt-0000001.pt")
    del state["tokenizer_fingerprint"]
    old = tmp_path / "old" / "ckpt-0000001.pt"
    ckpt.atomic_save(state, old)
    assert _sample(old, other_tokenizer, tmp_path / "x") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "fingerprint" in line]
    assert len(notes) == 1 and notes[0].startswith("note:"), notes


def test_sit_train_resume_refuses_latents_of_another_tokenizer(cache, other_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert _sit_train(run, cache, "--max-steps", "1") == 0
    capsys.readouterr()
    assert _sit_train(run, other_cache, "--max-steps", "2", "--resume") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("coordtok: error:")]
    assert len(errors) == 1, errors
    err = errors[0]
    assert "cannot resume" in err and "another tokenizer" in err, err
    assert short_fingerprint(read_index(other_cache)["tokenizer_fingerprint"]) in err
    assert short_fingerprint(read_index(cache)["tokenizer_fingerprint"]) in err
    assert not (run / "ckpt-0000002.pt").exists()
    # the run's own latents resume
    assert _sit_train(run, cache, "--max-steps", "2", "--resume") == 0
    assert (run / "ckpt-0000002.pt").is_file()


def test_sit_train_resume_of_an_old_checkpoint_notes_it(cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert _sit_train(run, cache, "--max-steps", "1") == 0
    state = ckpt.load(run / "ckpt-0000001.pt")
    del state["tokenizer_fingerprint"]
    ckpt.atomic_save(state, run / "ckpt-0000001.pt")
    capsys.readouterr()
    assert _sit_train(run, cache, "--max-steps", "2", "--resume") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "fingerprint" in line]
    assert len(notes) == 1 and notes[0].startswith("note:"), notes
    assert (
        json.loads(json.dumps(ckpt.load(run / "ckpt-0000002.pt")["tokenizer_fingerprint"]))
        == read_index(cache)["tokenizer_fingerprint"]
    )
