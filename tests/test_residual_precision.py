"""The residual stream stays float32 under half-precision autocast in every CoordTok transformer.

Under autocast the matmuls run in bf16/fp16, but the running sum ``x = x + f(x)`` of a pre-norm
transformer must be float32: over 8-24 blocks bf16's 8-bit mantissa (relative step 2^-8) loses the
small updates of the later blocks. The encoder and the cross-self encoder add an fp32 positional
embedding to their first tokens, which promotes the stream to fp32; the decoder must do the same.

The decoder's input features are bilinear samples of the triplane (``F.grid_sample``). Autocast
treats that op differently per device: on a CPU it runs in fp32, on CUDA in the widest input type,
i.e. in half precision for the half-precision triplane the encoder's last Linear writes. The test
runs both policies on this CPU, the CUDA one by casting the samples back to the triplane's dtype.
"""

import pytest
import torch

from coordtok import CoordTok
from coordtok.config import load_model_config
from coordtok.model import random_coords


def _dtypes_seen(model: CoordTok, dtype: torch.dtype) -> dict[str, set]:
    """The dtypes of the residual stream entering and leaving every block, per stack."""
    seen = {"video_encoder": set(), "triplane_encoder": set(), "decoder": set()}

    def hook(stack):
        def fn(module, args, output):
            seen[stack].update({args[0].dtype, output.dtype})

        return fn

    handles = [blk.register_forward_hook(hook(stack)) for stack in seen for blk in getattr(model, stack).blocks]
    torch.manual_seed(0)
    video = torch.rand(1, 3, model.config.frames, model.config.size, model.config.size) * 2 - 1
    coords = random_coords(
        torch.full((1,), model.patch_grid[0]), 64, model.patch_grid, torch.Generator().manual_seed(0)
    )
    with torch.autocast("cpu", dtype=dtype):
        out = model(video, coords)
    for h in handles:
        h.remove()
    seen["output"] = {out.dtype}
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("grid_sample_policy", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_residual_stream_is_float32_under_autocast(dtype, grid_sample_policy, monkeypatch):
    if grid_sample_policy == "cuda":
        import coordtok.triplane as triplane

        bilinear = triplane._bilinear
        # CUDA autocast runs grid_sample in its widest input type: the triplane's half precision.
        monkeypatch.setattr(triplane, "_bilinear", lambda plane, r, c: bilinear(plane, r, c).to(plane.dtype))
    cfg = load_model_config("configs/tokenizer/tiny.yaml")
    model = CoordTok(cfg)
    seen = _dtypes_seen(model, dtype)
    for stack in ("video_encoder", "triplane_encoder", "decoder"):
        assert seen[stack] == {torch.float32}, (stack, seen[stack])
    # The head is a Linear under autocast: its output is half precision (the loss casts it).
    assert seen["output"] == {dtype}
