"""xformers that imports but cannot run: probed once, SDPA instead with one log line; an explicit
request is a one-line error. xformers has no CPU kernels, so a fake ``xformers.ops`` stands in and
the CPU is made a device xformers "has kernels for" (``XFORMERS_DEVICE_TYPES``)."""

import logging
import types

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import coordtok.attention as attn
from coordtok.errors import CoordTokError


def _fake_xops(broken: bool) -> types.SimpleNamespace:
    """An ``xformers.ops`` whose kernel either raises like a wheel built for another torch or computes
    attention (through SDPA, in xformers' ``(B, N, heads, head_dim)`` layout). ``calls`` counts calls."""
    calls = []

    def memory_efficient_attention(q, k, v, attn_bias=None):
        calls.append(tuple(q.shape))
        if broken:
            raise RuntimeError(
                "No such operator xformers::efficient_attention_forward_cutlass - did you forget "
                "to build xformers with `python setup.py develop`?\nsecond line"
            )
        q, k, v = (rearrange(x, "b n h d -> b h n d") for x in (q, k, v))
        mask = None if attn_bias is None else attn_bias.to(q.dtype)
        return rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b h n d -> b n h d")

    return types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention, calls=calls)


@pytest.fixture
def fake_xformers(monkeypatch):
    """Install a fake xformers (``install(broken)``) with the CPU counted as an xformers device."""

    def install(broken: bool):
        ops = _fake_xops(broken)
        monkeypatch.setattr(attn, "_xformers_ops", lambda: ops)
        monkeypatch.setattr(attn, "XFORMERS_DEVICE_TYPES", ("cpu",))
        monkeypatch.setattr(attn, "_probed", {})
        monkeypatch.delenv("COORDTOK_ATTENTION", raising=False)
        return ops

    return install


def _qkv(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, 4, 8, generator=g) for _ in range(3)]


def test_broken_xformers_falls_back_to_sdpa_after_one_probe(fake_xformers, caplog):
    ops = fake_xformers(broken=True)
    q, k, v = _qkv()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    want = attn.attention(q, k, v, mask, backend="sdpa")
    with caplog.at_level(logging.WARNING, logger="coordtok.attention"):
        outs = [attn.attention(q, k, v, mask) for _ in range(3)]  # the first forward does not crash
    for out in outs:
        assert torch.equal(out, want)
    assert len(ops.calls) == 1  # probed once, never called again
    lines = [r.getMessage() for r in caplog.records if r.name == "coordtok.attention"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "xformers cannot run on cpu" in lines[0] and "No such operator" in lines[0] and "SDPA" in lines[0]
    assert attn.resolve_backend(torch.device("cpu"), "auto", torch.float32) == "sdpa"


def test_explicit_xformers_that_cannot_run_is_a_one_line_error(fake_xformers):
    fake_xformers(broken=True)
    q, k, v = _qkv()
    with pytest.raises(CoordTokError, match="cannot run on cpu: RuntimeError: No such operator") as e:
        attn.attention(q, k, v, backend="xformers")
    assert "\n" not in str(e.value) and "COORDTOK_ATTENTION=auto or sdpa" in str(e.value)


def test_working_xformers_is_used_after_its_probe(fake_xformers, caplog):
    ops = fake_xformers(broken=False)
    q, k, v = _qkv()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 5:] = False
    with caplog.at_level(logging.WARNING, logger="coordtok.attention"):
        out = attn.attention(q, k, v, mask)
        attn.attention(q, k, v, mask)
    assert not caplog.records
    # one probe (1, 8, 1, 16) then both real calls go to xformers
    assert ops.calls == [(1, 8, 1, 16), (2, 12, 4, 8), (2, 12, 4, 8)]
    want = attn.attention(q, k, v, mask, backend="sdpa")
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)  # -inf bias vs boolean mask: same weights


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_first_call_in_an_inference_pass_still_probes_right(fake_xformers, context, caplog):
    """The probe runs a backward: the caller's no_grad / inference_mode must not make it fail."""
    ops = fake_xformers(broken=False)
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="coordtok.attention"), context():
        attn.attention(q, k, v)
    assert not caplog.records and ops.calls == [(1, 8, 1, 16), (2, 12, 4, 8)]


def test_probe_is_per_dtype(fake_xformers):
    ops = fake_xformers(broken=False)
    q, k, v = _qkv()
    attn.attention(q, k, v)
    attn.attention(q.double(), k.double(), v.double())
    assert [c for c in ops.calls if c == (1, 8, 1, 16)] == [(1, 8, 1, 16)] * 2


def test_cpu_never_probes_real_xformers(monkeypatch):
    """Without the fakes a CPU tensor never reaches xformers (and nothing is probed)."""
    monkeypatch.setattr(attn, "_probed", {})
    q, k, v = _qkv()
    attn.attention(q, k, v)
    assert attn._probed == {}
    with pytest.raises(CoordTokError, match="needs a CUDA device"):
        attn.attention(q, k, v, backend="xformers")
