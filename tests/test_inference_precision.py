"""``--precision`` of the inference commands (``sample``, ``encode``, ``eval-recon``, ``eval-fvd``):
the choice (with ``torch.cuda`` mocked: which TF32 flags are set, which autocast dtype is used) and,
on the CPU, that the commands run in the precision they record in their outputs."""

import json

import numpy as np
import pytest
import torch
from sit_common import DATA, tiny_tokenizer
from test_eval_recon import setup  # noqa: F401 (fixture)
from test_fvd import CountingDetector, clip_folders  # noqa: F401 (fixture)
from test_sit_train import sit_ckpt, tokenizer_ckpt  # noqa: F401 (fixtures)

from coordtok import devices
from coordtok.cli import main
from coordtok.config import ConfigError, DataConfig
from coordtok.model import CoordTok
from eval.fvd import compute_fvd
from sit.encode import encode_dataset
from sit.models import TriplaneSiT


@pytest.fixture
def tf32_flags():
    """The global TF32 switches, restored after the test whatever it set."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _fake_cuda(monkeypatch, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def _cpu(monkeypatch, native: bool):
    monkeypatch.setattr(
        devices, "cpu_info", lambda *a: {"model": "test CPU", "instruction_sets": [], "native_bf16": native}
    )


# ---------------------------------------------------------------------------- the choice
@pytest.mark.parametrize(
    "requested, device, config_says, bf16_gpu, expected",
    [
        ("auto", "cuda", None, True, "tf32"),  # fp32 weights, TF32 matmuls
        ("auto", "cuda", "no", True, "tf32"),
        ("auto", "cuda", "auto", True, "tf32"),  # only an explicit bf16 in the config switches autocast on
        ("auto", "cuda", "bf16", True, "bf16"),  # trained in bf16: sampled in bf16
        ("auto", "cuda", "bf16", False, "tf32"),  # ... unless this GPU has no bf16
        ("auto", "cpu", "bf16", True, "fp32"),  # CPU results stay exact
        ("fp32", "cuda", "bf16", True, "fp32"),  # the user's word wins over the config
        ("tf32", "cuda", None, True, "tf32"),
        ("bf16", "cuda", None, True, "bf16"),
        ("fp16", "cuda", None, False, "fp16"),
        ("fp16", "cpu", None, True, "fp32"),
        ("tf32", "cpu", None, True, "fp32"),
    ],
)
def test_the_choice(requested, device, config_says, bf16_gpu, expected, monkeypatch):
    _fake_cuda(monkeypatch, bf16_gpu)
    _cpu(monkeypatch, native=True)
    assert devices.resolve_inference_precision(requested, device, config_says) == expected


def test_fallbacks_say_so_and_impossible_requests_are_one_line(monkeypatch):
    _fake_cuda(monkeypatch, bf16=False)
    _cpu(monkeypatch, native=False)
    notes = []
    assert devices.resolve_inference_precision("tf32", "cpu", log=notes.append) == "fp32"
    assert "CUDA" in notes[-1]
    assert devices.resolve_inference_precision("fp16", "cpu", log=notes.append) == "fp32"
    assert "--precision=fp16 needs a GPU" in notes[-1]
    assert devices.resolve_inference_precision("bf16", "cpu", log=notes.append) == "bf16"
    assert "emulated" in notes[-1]
    with pytest.raises(ConfigError, match=r"--precision=bf16: this GPU does not support bf16"):
        devices.resolve_inference_precision("bf16", "cuda")
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, tf32, bf16, fp16"):
        devices.resolve_inference_precision("fp8", "cuda")


# ---------------------------------------------------------------------------- what the context sets
@pytest.mark.parametrize(
    "precision, tf32, dtype",
    [
        ("fp32", False, None),
        ("tf32", True, None),
        ("bf16", True, torch.bfloat16),
        ("fp16", True, torch.float16),
    ],
)
@pytest.mark.parametrize("before", [False, True])
def test_cuda_flags_and_autocast(precision, tf32, dtype, before, monkeypatch, tf32_flags):
    _fake_cuda(monkeypatch)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = before
    with devices.inference_precision(precision, "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
        assert torch.is_autocast_enabled("cuda") is (dtype is not None)
        if dtype is not None:
            assert torch.get_autocast_dtype("cuda") == dtype
    # Everything is put back: a later training run or command starts from what it had.
    assert torch.backends.cuda.matmul.allow_tf32 is before and torch.backends.cudnn.allow_tf32 is before
    assert not torch.is_autocast_enabled("cuda")


def test_cpu_leaves_the_cuda_flags_alone_and_autocasts_the_cpu(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = False
    with devices.inference_precision("bf16", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with devices.inference_precision("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------------- the commands, on the CPU
def _spy(monkeypatch, cls, name: str, seen: list):
    """Record the CPU autocast state each time ``cls.name`` runs."""
    inner = getattr(cls, name)

    def spied(self, *a, **k):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return inner(self, *a, **k)

    monkeypatch.setattr(cls, name, spied)


@pytest.mark.slow
def test_sample_records_and_runs_in_its_precision(sit_ckpt, tokenizer_ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    def run(name, *extra):
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
                    "1",
                    "--steps",
                    "2",
                    "--out",
                    str(out),
                    "--format",
                    "npz",
                    "--no-progress",
                    "--device",
                    "cpu",
                    *extra,
                ]
            )
            == 0
        )
        return json.loads(capsys.readouterr().out)

    seen_sit, seen_decode = [], []
    _spy(monkeypatch, TriplaneSiT, "forward", seen_sit)
    _spy(monkeypatch, CoordTok, "decode_video", seen_decode)
    assert run("auto")["precision"] == "fp32"
    assert set(seen_sit) == set(seen_decode) == {torch.float32}
    seen_sit.clear(), seen_decode.clear()
    assert run("bf16", "--precision", "bf16")["precision"] == "bf16"
    assert set(seen_sit) == set(seen_decode) == {torch.bfloat16}


@pytest.mark.slow
def test_encode_records_its_precision(root, tmp_path, monkeypatch, capsys):
    seen = []
    _spy(monkeypatch, CoordTok, "encode", seen)
    kw = dict(clips_per_video=1, seed=0, batch_size=1, stats_num=None, progress=False)
    index = encode_dataset(tiny_tokenizer(root), DataConfig(**DATA), tmp_path / "a", precision="tf32", **kw)
    assert (
        index["precision"] == "fp32" and json.loads((tmp_path / "a" / "index.json").read_text())["precision"] == "fp32"
    )
    assert "tf32 is a CUDA matmul mode" in capsys.readouterr().err and set(seen) == {torch.float32}
    seen.clear()
    index = encode_dataset(tiny_tokenizer(root), DataConfig(**DATA), tmp_path / "b", precision="bf16", **kw)
    assert index["precision"] == "bf16" and set(seen) == {torch.bfloat16}


@pytest.mark.slow
def test_eval_recon_records_its_precision(setup, tmp_path, capsys):  # noqa: F811
    data, ckpt, _ = setup
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--data",
                str(data / "real"),
                "--out",
                str(out),
                "--num-clips",
                "1",
                "--no-fvd",
                "--write-videos",
                "0",
                "--no-progress",
                "--device",
                "cpu",
                "--precision",
                "auto",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    assert json.loads((out / "recon.json").read_text())["precision"] == "fp32"


def test_eval_fvd_records_and_runs_in_its_precision(clip_folders, tmp_path):  # noqa: F811
    class Spy(CountingDetector):
        def features(self, videos):
            self.dtypes = getattr(self, "dtypes", set()) | {
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
            }
            return super().features(videos)

    real, fake = clip_folders
    kw = dict(frames=16, num_videos=3, seed=0, cache_dir=tmp_path / "cache", progress=False)
    fp32, bf16 = Spy(), Spy()
    a = compute_fvd(real, fake, detector=fp32, **kw)
    b = compute_fvd(real, fake, detector=bf16, precision="bf16", **kw)
    assert a["precision"] == "fp32" and fp32.dtypes == {torch.float32}
    assert b["precision"] == "bf16" and bf16.dtypes == {torch.bfloat16}
    # bf16 features are cached apart from fp32 ones: the second run computed its real statistics.
    keys = [json.loads(f.read_text()) for f in sorted((tmp_path / "cache").glob("*.json"))]
    assert sorted(k.get("precision", "fp32") for k in keys) == ["bf16", "fp32"]
    assert np.isfinite(a["mean"]) and np.isfinite(b["mean"])
