"""``mixed_precision: auto`` on CPUs: bf16 autocast only where the CPU has native bf16 (avx512_bf16
or AMX), fp32 elsewhere (emulated bf16 is several times slower than fp32), and CPU training really
runs in the precision it names."""

import pytest

from coordtok import checkpoint as ckpt
from coordtok import devices
from coordtok.config import ConfigError, load_tokenizer_config
from coordtok.train import train

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16
"""
SAPPHIRE = XEON.replace("Platinum 8259CL", "Platinum 8488C").replace("avx512_vnni", "avx512_vnni amx_bf16 amx_tile")


@pytest.mark.parametrize(
    "text, model, native",
    [
        (XEON, "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", False),
        (EPYC, "AMD EPYC 9R14 96-Core Processor", True),
        (SAPPHIRE, "Intel(R) Xeon(R) Platinum 8488C CPU @ 2.50GHz", True),
    ],
)
def test_cpu_info_reads_the_model_and_native_bf16(text, model, native, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    info = devices.cpu_info(path)
    assert info["model"] == model and info["native_bf16"] is native
    assert "avx512_vnni" in info["instruction_sets"] and ("avx512_bf16" in info["instruction_sets"]) == (text is EPYC)


def test_cpu_info_without_proc_names_the_platform(tmp_path):
    info = devices.cpu_info(tmp_path / "missing")
    assert info["native_bf16"] is False and info["instruction_sets"] == [] and info["model"]


def _cpu(monkeypatch, native: bool):
    monkeypatch.setattr(
        devices, "cpu_info", lambda *a: {"model": "test CPU", "instruction_sets": [], "native_bf16": native}
    )


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_picks_bf16_only_with_native_bf16(native, expected, monkeypatch):
    _cpu(monkeypatch, native)
    assert devices.resolve_precision("auto", "cpu") == expected


def test_explicit_choices_on_a_cpu(monkeypatch):
    _cpu(monkeypatch, False)
    notes = []
    assert devices.resolve_precision("no", "cpu", notes.append) == "no" and not notes
    assert devices.resolve_precision("fp16", "cpu", notes.append) == "no" and "needs a GPU" in notes[-1]
    assert devices.resolve_precision("bf16", "cpu", notes.append) == "bf16" and "emulated" in notes[-1]


def test_the_config_refuses_an_unknown_precision():
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_tokenizer_config("configs/tokenizer/tiny.yaml", {"train": {"mixed_precision": "fp8"}})


def test_cpu_training_runs_in_the_precision_auto_chose(tmp_path, monkeypatch, capsys):
    """One tiny training step under ``auto``, on a CPU reported with and without native bf16: the
    run says which precision it took, and the loss it computed differs between the two by bf16's
    rounding (relative 2^-8 per operand; the loss is a mean of squared errors of bf16 matmuls) --
    a CPU run that ignored ``mixed_precision`` would give the same loss bit for bit."""
    losses = {}
    for native, word in ((False, "fp32"), (True, "bf16")):
        _cpu(monkeypatch, native)
        out = tmp_path / word
        cfg = load_tokenizer_config(
            "configs/tokenizer/tiny.yaml",
            {
                "train": {
                    "max_steps": 1,
                    "out_dir": str(out),
                    "batch_size": 1,
                    "num_coords": 64,
                    "ckpt_every": 1,
                    "val_every": 10**9,
                    "mixed_precision": "auto",
                    "seed": 0,
                },
                "data": {"names": ["bikes"], "frame_range": [0, 140]},
                "val_data": None,
            },
        )
        train(cfg, progress=False)
        assert f"precision: {word} (test CPU)" in capsys.readouterr().err
        losses[word] = ckpt.load(out / "ckpt-0000001.pt")["metrics"]["loss"]
    assert losses["fp32"] != losses["bf16"]
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"], losses
