"""FLOP counting and the profiler: hand counts for single blocks, growth with clip length."""

import json

import pytest
import torch

from coordtok.config import load_model_config
from coordtok.model import Block, SelfAttention
from eval.flops import attention_flops, counter
from eval.profile import (
    analytic_attention_flops,
    analytic_linear_flops,
    model_for_frames,
    profile,
    step_flops,
    write_report,
)


def _count(module, x, device):
    with counter() as fc:
        module(x).sum().backward()
    return fc.get_total_flops(), attention_flops(fc)


def test_linear_flops_equal_hand_count():
    with torch.device("meta"):
        lin = torch.nn.Linear(48, 80)
    x = torch.empty(3, 17, 48, device="meta", requires_grad=True)
    total, _ = _count(lin, x, "meta")
    assert total == analytic_linear_flops(3 * 17, 48, 80)


def test_attention_block_flops_equal_hand_count_on_meta_and_cpu():
    n, d, heads = 64, 32, 4
    for device in ("meta", "cpu"):
        with torch.device(device):
            attn = SelfAttention(d, heads)
        x = torch.randn(1, n, d, device=device, requires_grad=True)
        total, attn_only = _count(attn, x, device)
        linears = analytic_linear_flops(n, d, 3 * d) + analytic_linear_flops(n, d, d)
        if device == "meta":  # SDPA runs as matmuls: QK^T, PV forward; four matmuls backward
            assert total == linears + analytic_attention_flops(n, n, d)
        else:  # the CPU flash kernel: its backward recomputes QK^T (one matmul more)
            assert attn_only == 4 * n * n * d + 10 * n * n * d
            assert total == linears + attn_only


def test_block_on_meta_counts_mlp_too():
    n, d = 16, 32
    with torch.device("meta"):
        blk = Block(d, 4, 4.0, qkv_bias=True)
    x = torch.empty(2, n, d, device="meta", requires_grad=True)
    total, _ = _count(blk, x, "meta")
    want = (
        analytic_linear_flops(2 * n, d, 3 * d)
        + analytic_linear_flops(2 * n, d, d)
        + 2 * analytic_attention_flops(n, n, d)
        + analytic_linear_flops(2 * n, d, 4 * d)
        + analytic_linear_flops(2 * n, 4 * d, d)
    )
    assert total == want


@pytest.mark.slow
def test_full_decoding_flops_grow_much_faster_with_frames():
    base = load_model_config("configs/tokenizer/small.yaml")
    f = {
        (t, mode): step_flops(model_for_frames(base, t), mode)["flops"]
        for t in (16, 128)
        for mode in ("coordtok", "full")
    }
    coord_growth = f[(128, "coordtok")] / f[(16, "coordtok")]
    full_growth = f[(128, "full")] / f[(16, "full")]
    assert coord_growth < 2.5  # only the encoder side grows with the clip
    assert full_growth > 30  # decoding every patch: attention over T*256 coordinates
    assert f[(128, "full")] > 100 * f[(128, "coordtok")]


def test_flops_on_meta_equal_a_real_cpu_step():
    cfg = model_for_frames(load_model_config("configs/tokenizer/tiny.yaml"), 32)
    from coordtok import CoordTok
    from eval.profile import coords_for, training_step

    torch.manual_seed(0)
    model = CoordTok(cfg)
    video = torch.rand(1, 3, 32, 64, 64) * 2 - 1
    with counter() as fc:
        training_step(model, video, coords_for(model, "coordtok", 1024, 1, "cpu"))
    attn = attention_flops(fc)
    meta = step_flops(cfg, "coordtok")["flops"]
    # same count but for attention: the CPU flash backward recomputes QK^T (7 matmul units vs 6)
    assert meta == fc.get_total_flops() - attn + attn * 6 // 7


@pytest.mark.slow
def test_profile_report_with_memory_beside_magvit2(tmp_path):
    rows = profile(
        "configs/tokenizer/tiny.yaml",
        [16, 32],
        measure_memory=True,
        progress=lambda *_: None,
        baselines=["configs/baselines/magvit2-tiny.yaml"],
        device="cpu",
    )  # CPU memory, no batch search
    assert [(r["frames"], r["mode"]) for r in rows] == [
        (16, "coordtok"),
        (16, "full"),
        (16, "magvit2"),
        (32, "coordtok"),
        (32, "full"),
        (32, "magvit2"),
    ]
    assert all(r["peak_bytes"] and r["peak_bytes"] > 0 for r in rows)
    by = {(r["frames"], r["mode"]): r for r in rows}
    assert by[(16, "magvit2")]["clip_frames"] == 17 and by[(32, "magvit2")]["clip_frames"] == 33
    write_report(rows, tmp_path, "tiny", "cpu")
    assert json.loads((tmp_path / "profile.json").read_text())["rows"] == rows
    assert "MAGVIT-v2" in (tmp_path / "profile.md").read_text()
    for name in ("profile.md", "profile_flops.png", "profile_memory.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(
    "family, config", [("magvit2", "configs/baselines/magvit2.yaml"), ("promag", "configs/baselines/promag-8x.yaml")]
)
@pytest.mark.slow
def test_conv3d_flops_grow_linearly_with_frames_coordtoks_do_not(family, config):
    """A causal conv-3D tokenizer's step is affine in the clip length (every layer sees 1 + T / 2^j
    frames), so doubling T doubles the increment; CoordTok-L's grows 1.6x at most from 16 to 128
    frames (only its encoder sees the frames) and is 50x cheaper at 128."""
    import yaml

    model = yaml.safe_load(open(config))["model"]
    f = {t: step_flops(model, family, family=family, frames=t)["flops"] for t in (16, 32, 64, 128)}
    assert (f[128] - f[64]) / (f[64] - f[32]) == pytest.approx(2.0, rel=1e-3)
    assert f[128] / f[16] > 7
    large = load_model_config("configs/tokenizer/large.yaml")
    c = {t: step_flops(model_for_frames(large, t), "coordtok")["flops"] for t in (16, 128)}
    assert c[128] / c[16] < 1.6 and f[128] > 50 * c[128]


@pytest.mark.slow
def test_cpu_step_memory_is_the_child_s_own_not_its_parent_s():
    """ru_maxrss survives exec: a child of a big process would report the parent's peak."""
    from eval.profile import step_memory

    big = torch.ones(200_000_000)  # this process now holds 0.8 GB
    cfg = model_for_frames(load_model_config("configs/tokenizer/tiny.yaml"), 32)
    coord = step_memory(cfg, "coordtok", 1024, 1, "cpu")["peak_bytes"]
    full = step_memory(cfg, "full", 1024, 1, "cpu")["peak_bytes"]
    assert 0 < coord < 0.5e9 and full > coord  # decoding 8192 coordinates needs more than 1024
    del big
