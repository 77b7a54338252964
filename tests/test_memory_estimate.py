"""The analytic memory estimate of a training step (``eval.profile.step_memory_estimate``) against
a measured CPU step, and what activation checkpointing saves.

The measurement is the peak of the bytes held by live tensors during one real step (the PyTorch
profiler's memory timeline; what ``torch.cuda.max_memory_allocated`` reports on a GPU), not the
process's RSS, which adds the allocator's slack and the libraries' buffers.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from coordtok.activation_checkpointing import set_activation_checkpointing
from coordtok.config import load_model_config
from eval.profile import build_step, model_for_frames, step_memory_estimate


def _tensor_peak(model, inputs, step) -> int:
    """Peak bytes of live CPU tensors during one training step with AdamW."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(model, inputs, opt)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return int(np.asarray(sizes).sum(axis=1).max())


@pytest.fixture(scope="module")
def measured():
    """A tiny CoordTok's stage-1 step, 32 frames, batch 4: activations well above the weights."""
    cfg = dataclasses.asdict(model_for_frames(load_model_config("configs/tokenizer/tiny.yaml"), 32))
    args = ("coordtok", cfg, 32, "coordtok", 1024, 4)
    est = step_memory_estimate(*args)
    peaks = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model, inputs, step = build_step(*args, "cpu")
        set_activation_checkpointing(model, ckpt)
        peaks[ckpt] = _tensor_peak(model, inputs, step)
    weights = 4 * est["trainable_params"]
    return est, peaks, weights


@pytest.mark.slow
def test_estimate_bounds_the_measured_peak(measured):
    est, peaks, weights = measured
    assert est["activation_bytes"] > 4 * weights  # the size where the activations decide
    # At the end of the forward the weights, the batch and every tensor saved for the backward are
    # alive together: the measured peak cannot be lower (or the estimate counts tensors that are not saved).
    assert peaks[False] >= weights + est["batch_bytes"] + est["activation_bytes"]
    # ...nor can the peak be more than that plus the gradients (4 bytes a parameter) and the
    # activation gradients of one block's backward, which are no more than the tensors that block
    # saved (or the estimate misses saved tensors).
    assert peaks[False] <= weights + est["batch_bytes"] + est["activation_bytes"] + weights + est["largest_block_bytes"]
    # The estimate counts the gradients and AdamW's moments in full: an upper bound.
    assert peaks[False] <= est["total_bytes"] and peaks[True] <= est["total_bytes_checkpointed"]


@pytest.mark.slow
def test_checkpointing_saves_what_the_estimate_says(measured):
    """Both peaks hold the weights, the batch and the tensors saved outside the blocks; they differ in
    the blocks' activations (all of them, against their inputs plus one block rebuilt) and in the
    backward's transient gradients, one block's worth at most in either run."""
    est, peaks, _ = measured
    want = est["activation_bytes"] - est["checkpointed_activation_bytes"]
    got = peaks[False] - peaks[True]
    assert want > 0.3 * est["activation_bytes"]
    assert abs(got - want) <= est["largest_block_bytes"], (got, want, est["largest_block_bytes"])


@pytest.mark.slow
def test_paper_scale_estimate_needs_no_memory():
    """CoordTok-L stage 2 at the paper's per-GPU batch (256 over 8 GPUs): estimated on the meta device
    in seconds; far over 80 GB without checkpointing, under it with."""
    cfg = dataclasses.asdict(load_model_config("configs/tokenizer/large.yaml"))
    est = step_memory_estimate("coordtok", cfg, 128, "stage2", 16 * 256, 32)
    assert est["trainable_params"] > 800e6
    assert est["total_bytes"] > 2 * 80e9 and est["total_bytes_checkpointed"] < 80e9
    assert est["blocks"] == 8 + 24 + 24  # CoordTok-L: 8 ViT, 24 cross-self and 24 decoder blocks


@pytest.mark.slow
def test_profile_reports_the_estimate_with_and_without_checkpointing(tmp_path):
    from eval.profile import profile, write_report

    rows = profile(
        "configs/tokenizer/tiny.yaml",
        [16],
        measure_memory=False,
        progress=lambda *_: None,
        modes=("coordtok",),
        baselines=["configs/baselines/magvit2-tiny.yaml"],
        estimate_batch=4,
        device="cpu",
    )
    assert [r["mode"] for r in rows] == ["coordtok", "magvit2"]
    for r in rows:
        assert r["est_batch"] == 4 and 0 < r["est_bytes_ckpt"] < r["est_bytes"]
    write_report(rows, tmp_path, "tiny", "cpu")
    table = (tmp_path / "profile.md").read_text()
    assert "estimated, checkpointed (GB)" in table and "at batch 4" in table
    assert f"{rows[1]['est_bytes'] / 1e9:.3f} | {rows[1]['est_bytes_ckpt'] / 1e9:.3f}" in table


@pytest.mark.slow
def test_steady_state_rss_shows_the_saving():
    """``step_memory(steady_state=True)``: the process's peak RSS over a second step (AdamW's moments
    alive, as in every step of a run but the first). With freed tensors returned to the system, the
    RSS follows the live tensors, and checkpointing lowers it by the estimated saving, up to one
    block's transient gradients (as in the tensor-level test above)."""
    from eval.profile import step_memory

    cfg = dataclasses.asdict(model_for_frames(load_model_config("configs/tokenizer/tiny.yaml"), 32))
    est = step_memory_estimate("coordtok", cfg, 32, "coordtok", 1024, 4)
    peak = {
        ckpt: step_memory(cfg, "coordtok", 1024, 4, "cpu", frames=32, activation_checkpointing=ckpt, steady_state=True)[
            "peak_bytes"
        ]
        for ckpt in (False, True)
    }
    want = est["activation_bytes"] - est["checkpointed_activation_bytes"]
    assert abs((peak[False] - peak[True]) - want) <= est["largest_block_bytes"], (peak, want)
