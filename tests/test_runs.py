"""Trust: nothing a user owns is deleted, runs never mix or prune each other's files, resume takes
the config's settings, and every mistake is one line before any heavy work."""

import importlib
import os
import stat
import time

import pytest
import torch

from coordtok import checkpoint as ckpt
from coordtok.cli import main
from coordtok.config import load_tokenizer_config
from coordtok.train import train

TINY = "configs/tokenizer/tiny.yaml"


def run_cfg(out, steps, **train_over):
    return load_tokenizer_config(
        TINY,
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(out),
                "batch_size": 2,
                "num_coords": 64,
                "log_every": 1,
                "ckpt_every": 1,
                "val_every": 10**9,
                "keep_checkpoints": 10,
                "mixed_precision": "no",
                **train_over,
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )


def one_line(capsys) -> str:
    """The error line a command ended with (progress notes may precede it), checked to be one line."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("coordtok") and "error:" in last and "Traceback" not in err, err
    return last


# ---------------------------------------------------------------------------- nothing a user owns is deleted


def test_demo_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["demo", "--quick", "--fresh", "--out", str(mine)]) == 2
    assert "was not created by `coordtok demo`" in one_line(capsys)
    assert (mine / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(mine)) == ["thesis.tex"]


def test_demo_fresh_deletes_only_what_the_demo_wrote(tmp_path):
    from coordtok.fileio import write_bytes, write_text
    from eval.demo import MANIFEST, MARKER, demo_folder, prepare_folder

    out = tmp_path / "demo"
    with demo_folder(out, fresh=False):  # what the demo writes is listed in its manifest
        write_bytes(out / "runs" / "tokenizer" / "ckpt-0000001.pt", b"x")
        write_text(out / "summary.md", "old")
    (out / "my-notes.md").write_text("keep me")  # the user's own file in the demo's folder
    prepare_folder(out, fresh=True)
    assert sorted(os.listdir(out)) == sorted([MARKER, MANIFEST, ".lock", "my-notes.md"])
    prepare_folder(out, fresh=False)  # a marked folder is accepted again
    (out / MARKER).unlink()
    with pytest.raises(Exception, match="not created by `coordtok demo`"):
        prepare_folder(out, fresh=True)
    assert (out / "my-notes.md").is_file()


# ---------------------------------------------------------------------------- run folders


@pytest.mark.slow
def test_pruning_skips_an_unreadable_newest_file_and_keeps_the_newest_good_one(tmp_path):
    train(run_cfg(tmp_path, 2, keep_checkpoints=1))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-0000002.pt"]
    corrupt = tmp_path / "ckpt-0000009.pt"
    corrupt.write_bytes(b"\x00" * 100)  # a torn or foreign file with a higher step in its name
    train(run_cfg(tmp_path, 4, keep_checkpoints=1), resume=True)
    names = sorted(p.name for p in ckpt.list_checkpoints(tmp_path))
    assert names == ["ckpt-0000004.pt", "ckpt-0000009.pt"]  # the good newest kept, the unreadable one untouched
    assert ckpt.load(tmp_path / "ckpt-0000004.pt")["step"] == 4 and corrupt.read_bytes() == b"\x00" * 100


@pytest.mark.slow
def test_pruning_never_touches_another_runs_checkpoints(tmp_path):
    train(run_cfg(tmp_path / "other", 1))
    train(run_cfg(tmp_path / "run", 1, keep_checkpoints=1))
    foreign = tmp_path / "run" / "ckpt-0000000.pt"
    foreign.write_bytes((tmp_path / "other" / "ckpt-0000001.pt").read_bytes())
    train(run_cfg(tmp_path / "run", 3, keep_checkpoints=1), resume=True)
    assert sorted(p.name for p in ckpt.list_checkpoints(tmp_path / "run")) == ["ckpt-0000000.pt", "ckpt-0000003.pt"]


@pytest.mark.slow
def test_a_fresh_run_refuses_a_folder_holding_checkpoints(tmp_path, capsys):
    train(run_cfg(tmp_path, 1))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("ckpt-*.pt")}
    capsys.readouterr()
    assert main(["train", "--config", TINY, "--out-dir", str(tmp_path), "--max-steps", "1", "--no-progress"]) == 2
    assert "already holds checkpoints" in (err := one_line(capsys)) and "--resume" in err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("ckpt-*.pt")} == before


def test_a_run_folder_is_locked_while_a_run_writes_to_it(tmp_path):
    folder = ckpt.RunFolder(tmp_path, "coordtok")
    with folder.lock():
        with pytest.raises(ckpt.CheckpointError, match=f"another run \\(pid {os.getpid()}.*is writing to this folder"):
            train(run_cfg(tmp_path, 1))
    assert train(run_cfg(tmp_path, 1))["step"] == 1  # the lock is released with its holder


@pytest.mark.slow
def test_temporary_files_of_a_killed_write_are_removed_but_nothing_else(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".ckpt-0000003.pt.abc123.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    user = tmp_path / "notes.tmp"
    user.write_text("mine")
    train(run_cfg(tmp_path, 1))
    assert not stale.exists() and user.read_text() == "mine"


# ---------------------------------------------------------------------------- resume takes the config's settings


@pytest.mark.slow
def test_resume_applies_the_configs_optimizer_settings_and_says_so(tmp_path, capsys):
    train(run_cfg(tmp_path, 1, lr=1e-3))
    capsys.readouterr()
    train(run_cfg(tmp_path, 2, lr=2.5e-4, betas=[0.8, 0.99], weight_decay=0.0), resume=True)
    assert (
        "takes the config's lr 0.001 -> 0.00025, betas (0.9, 0.999) -> (0.8, 0.99), weight_decay 0.001 -> 0"
        in capsys.readouterr().err
    )
    groups = ckpt.load(tmp_path / "ckpt-0000002.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-4] and all(tuple(g["betas"]) == (0.8, 0.99) for g in groups)


def test_sit_resume_uses_the_caches_current_statistics(cache, tmp_path, capsys):
    import shutil

    from sit.config import load_sit_run_config
    from sit.stats import LatentStats
    from sit.train import train_sit

    latents = tmp_path / "latents"
    shutil.copytree(cache, latents)
    cfg = lambda steps: load_sit_run_config(
        "configs/sit/tiny.yaml",
        {
            "train": {  # noqa: E731
                "max_steps": steps,
                "out_dir": str(tmp_path / "run"),
                "batch_size": 2,
                "ckpt_every": 1,
                "val_every": 0,
                "mixed_precision": "no",
            }
        },
    )
    train_sit(cfg(1), latents, progress=False)
    fixed = LatentStats.load(latents)
    fixed.std = fixed.std * 2  # the user corrects stats.json
    fixed.save(latents / "stats.json")
    capsys.readouterr()
    train_sit(cfg(2), latents, resume=True, progress=False)
    assert "differ from the checkpoint's; training continues with the new ones" in capsys.readouterr().err
    saved = LatentStats.from_dict(ckpt.load(tmp_path / "run" / "ckpt-0000002.pt")["stats"])
    assert torch.equal(saved.std, fixed.std)


# ---------------------------------------------------------------------------- one line per mistake


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "train.lr=-1"], "train: 'lr' must be >= 0"),
        (["--set", "model.enc_patch_xy=0"], "'enc_patch_xy' must be positive"),
        (["--set", "data.kind=folder"], "'root' is required"),
        (["--set", "data.kind=folder", "--set", "data.root=/nonexistent/videos"], "video folder does not exist"),
        (["--set", "data.stride=0"], "'stride' must be positive"),
        (["--max-steps", "-5"], "argument --max-steps: must be >= 0"),
        (["--set", "train.batch_size=0"], "'batch_size' must be positive"),
    ],
)
def test_training_mistakes_are_one_line(extra, needle, tmp_path, capsys):
    assert main(["train", "--config", TINY, "--out-dir", str(tmp_path / "run"), "--no-progress", *extra]) == 2
    assert needle in one_line(capsys)


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["train", "--config", str(empty), "--out-dir", str(tmp_path / "run")]) == 2
    assert "config file is empty" in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_set_reads_a_learning_rate_in_e_notation():
    from coordtok.config import parse_overrides

    cfg = load_tokenizer_config(
        TINY, parse_overrides(["train.lr=3e-4", "train.max_grad_norm=1e1", "train.out_dir=1e-3"])
    )
    assert cfg.train.lr == 3e-4 and cfg.train.max_grad_norm == 10.0 and cfg.train.out_dir == "1e-3"


def test_resuming_with_a_different_model_is_one_line(tmp_path, capsys):
    train(run_cfg(tmp_path, 1))
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--config",
                TINY,
                "--out-dir",
                str(tmp_path),
                "--resume",
                "--set",
                "model.dec_layers=1",
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "cannot resume" in (err := one_line(capsys)) and "model.dec_layers: 2 in the checkpoint, 1" in err


def test_a_checkpoint_without_a_config_is_one_line(tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    ckpt.atomic_save({"kind": "coordtok", "model": {"w": torch.zeros(1)}}, bare)
    assert main(["reconstruct", "--ckpt", str(bare), "--video", "whatever.mp4"]) == 2
    assert "video not found" in one_line(capsys)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["reconstruct", "--ckpt", str(bare), "--video", str(video)]) == 2
    assert "has no model config" in one_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys, root):
    from sit_common import tiny_tokenizer

    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["reconstruct", "--ckpt", str(tiny_tokenizer(root)), "--video", str(video), "--device", "cuda"]) == 2
    assert "no CUDA GPU is available here" in one_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval-recon", "--ckpt", "c.pt", "--data", ".", "--num-clips", "0"],
        ["sample", "--sit-ckpt", "s", "--tokenizer-ckpt", "t", "--num", "1", "--out", "o", "--batch-size", "0"],
        ["sample", "--sit-ckpt", "s", "--tokenizer-ckpt", "t", "--num", "1", "--out", "o", "--fps", "0"],
        ["profile", "--config", TINY, "--num-coords", "0"],
        ["profile", "--config", TINY, "--frames", "16,zero"],
    ],
)
def test_bad_numbers_are_one_line(argv, capsys):
    assert main(argv) == 2
    one_line(capsys)


# ---------------------------------------------------------------------------- outputs checked before the work


def _forbid(monkeypatch, target: str):
    # The commands' modules first: one imported while the target is patched would keep the fake under
    # its own name (``from .tokenizers import load_reconstructor``) for the rest of the session.
    for module in ("eval.recon", "eval.commands", "eval.demo", "eval.profile", "sit.sample"):
        importlib.import_module(module)

    def fail(*a, **kw):
        raise AssertionError(f"{target} ran although the output cannot be written")

    monkeypatch.setattr(target, fail)


@pytest.mark.parametrize(
    "argv, heavy",
    [
        (
            ["sample", "--sit-ckpt", "s.pt", "--tokenizer-ckpt", "t.pt", "--num", "1", "--out", "{bad}"],
            "sit.sample.load_sit",
        ),
        (
            ["reconstruct", "--ckpt", "c.pt", "--video", "{video}", "--out", "{bad}/rec.mp4"],
            "eval.tokenizers.load_reconstructor",
        ),
        (
            ["eval-recon", "--ckpt", "c.pt", "--data", "{dir}", "--out", "{bad}", "--no-fvd"],
            "eval.tokenizers.load_reconstructor",
        ),
        (["profile", "--config", TINY, "--out", "{bad}"], "eval.profile.profile"),
        (["demo", "--quick", "--out", "{bad}"], "coordtok.train.train"),
    ],
)
def test_unwritable_outputs_fail_before_any_work(argv, heavy, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    _forbid(monkeypatch, heavy)
    argv = [a.format(bad=f"{blocker}/out", video=video, dir=tmp_path) for a in argv]
    tic = time.time()
    assert main(argv) == 2
    assert "a-file" in one_line(capsys) and time.time() - tic < 30


# ---------------------------------------------------------------------------- files as a user expects them


def test_written_files_have_normal_permissions_and_appear_atomically(tmp_path):
    from coordtok.fileio import write_json
    from coordtok.video_io import write_mp4

    old = os.umask(0o022)
    try:
        train(run_cfg(tmp_path / "run", 1))
        write_mp4(tmp_path / "v.mp4", torch.zeros(2, 16, 16, 3, dtype=torch.uint8).numpy())
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (tmp_path / "run" / "ckpt-0000001.pt", tmp_path / "v.mp4", tmp_path / "r.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

    def failing(f):
        f.write('{"half":')
        raise OSError(28, "No space left on device")

    from coordtok.fileio import OutputError, write_with

    with pytest.raises(OutputError, match="r.json: writing the file failed"):
        write_with(tmp_path / "r.json", failing, binary=False)
    assert (tmp_path / "r.json").read_text().strip() == '{\n  "a": 1\n}'  # the old result, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "run", "v.mp4"]
