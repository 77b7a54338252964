"""Full-clip reconstruction of a 128x128x128 clip with CoordTok-S: time and peak memory.

"at once": all 32768 coordinates through the decoder together (memory-efficient attention);
"chunked": 16 frames (4096 coordinates) at a time. Each variant runs in a fresh process so its
peak RSS is its own.

    python -m bench.reconstruct [--config configs/tokenizer/small.yaml] [--chunks 0,16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import machine, peak_rss_gb, run_child
from coordtok import CoordTok


def child(config: str, chunk: int) -> dict:
    torch.manual_seed(0)
    model = CoordTok.from_config(config).eval()
    c = model.config
    video = torch.rand(1, 3, c.frames, c.size, c.size) * 2 - 1
    base = peak_rss_gb()
    tic = time.perf_counter()
    with torch.no_grad():
        tri = model.encode(video)
        enc = time.perf_counter() - tic
        out = model.decode_video(tri, frames_per_chunk=chunk or None)
    total = time.perf_counter() - tic
    assert out.shape == video.shape
    return {"chunk": chunk, "encode_s": enc, "total_s": total, "peak_rss_gb": peak_rss_gb(), "rss_before_gb": base}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tokenizer/small.yaml")
    p.add_argument("--chunks", default="0,16", help="frames per chunk; 0 = the whole clip at once")
    p.add_argument("--child", action="store_true")
    p.add_argument("--chunk", type=int, default=0)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.config, a.chunk)))
        return
    print(f"machine: {machine()}")
    print(f"full-clip reconstruction, {a.config}, one 128-frame clip:")
    for chunk in (int(x) for x in a.chunks.split(",")):
        r = run_child("bench.reconstruct", "--config", a.config, "--chunk", str(chunk))
        what = "all coordinates at once" if chunk == 0 else f"{chunk} frames per chunk"
        print(
            f"  {what}: {r['total_s']:.1f} s (encode {r['encode_s']:.2f} s), peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(model loaded: {r['rss_before_gb']:.2f} GB)"
        )


if __name__ == "__main__":
    main()
