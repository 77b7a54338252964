"""The video autoencoders researchers already use beside CoordTok-S/B/L: compression, latent size,
parameters, and the FLOPs of encoding and of decoding a clip against its length.

    python -m bench.video_vaes [--frames 16 32 64 128 256] [--size 128] [--out video_vaes.json]

Every model is built with its default config (diffusers' classes: the released models'
architectures; CoordTok: configs/tokenizer/{small,base,large}.yaml) on the meta device, where
nothing is allocated, and its FLOPs are counted exactly from the shapes with
:func:`eval.flops.counter` (matmuls, convolutions, attention; 2 FLOPs per multiply-add):

* a diffusers autoencoder (:mod:`eval.diffusers_vae`): the clip padded to its shortest
  ``1 + k t`` length, encoded to its posterior's mode, decoded, each with diffusers' default
  settings (HunyuanVideo: 17-frame temporal tiles every 12 frames, blended; the others in one
  call). A model that fails on the meta device is counted on this CPU instead (marked ``cpu``);
* CoordTok: the architecture built for ``T``-frame clips (its triplane's time axis grows with
  ``T``, :func:`eval.profile.model_for_frames`, as in ``coordtok profile``), encoding the clip,
  then decoding every patch of every frame in one pass (:meth:`coordtok.model.CoordTok.decode_video`).

Latent floats: the values a 128-frame 128 x 128 clip is stored as (latent positions x channels).
Needs the diffusers extra (``pip install -e ".[diffusers]"``); prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from coordtok.config import load_model_config
from coordtok.kinds import ROOT
from coordtok.model import CoordTok, frame_coords
from eval.flops import counter
from eval.profile import model_for_frames

COORDTOK = {
    "CoordTok-S": "configs/tokenizer/small.yaml",
    "CoordTok-B": "configs/tokenizer/base.yaml",
    "CoordTok-L": "configs/tokenizer/large.yaml",
}


def coordtok_row(name: str, config: str, frames: list[int], size: int) -> dict:
    cfg = load_model_config(ROOT / config)
    if cfg.size != size:
        cfg = dataclasses.replace(cfg, size=size)
    with torch.device("meta"):
        model = CoordTok(cfg)
    c128 = model_for_frames(cfg, 128)
    planes = c128.latent_xy**2 + 2 * c128.latent_t * c128.latent_xy
    row = {
        "model": name,
        "config": config,
        "params": sum(p.numel() for p in model.parameters()),
        "compression": f"triplane xy {c128.latent_xy}x{c128.latent_xy}, yt/xt {c128.latent_t}x{c128.latent_xy} "
        f"({128 // c128.latent_t}x{size // c128.latent_xy}x{size // c128.latent_xy} per plane)",
        "latent_floats_128": planes * c128.latent_channels,
        "counted_on": "meta",
        "flops": {},
    }
    for t in frames:
        with torch.device("meta"):
            m = CoordTok(model_for_frames(cfg, t)).eval()
        video = torch.empty(1, 3, t, size, size, device="meta")
        tp, hp, wp = m.patch_grid
        coords = frame_coords(torch.arange(tp, device="meta")[None], m.patch_grid)
        with torch.no_grad():
            with counter() as fc:
                tri = m.encode(video)
            enc = int(fc.get_total_flops())
            with counter() as fc:
                m.decode(tri, coords)  # every patch of every frame, as decode_video does by default
            dec = int(fc.get_total_flops())
        row["flops"][t] = {"encode": enc, "decode": dec, "clip_frames": t}
    return row


def diffusers_row(cls_name: str, title: str, frames: list[int], size: int) -> dict:
    from eval.diffusers_vae import build_autoencoder, coding_flops, geometry

    spec = f"diffusers:{cls_name}"
    model = build_autoencoder(spec, device="meta")
    geo = geometry(model)
    c, t, h, w = geo.latent_shape(128, size)
    row = {
        "model": f"{title} ({cls_name})",
        "params": sum(p.numel() for p in model.parameters()),
        "compression": f"{geo.time}x{geo.space}x{geo.space}, {geo.channels} channels"
        + (
            f" (latent frames in pairs after the first: clips of 1 + {geo.time * geo.latent_step}k)"
            if geo.latent_step > 1
            else ""
        ),
        "latent_floats_128": c * t * h * w,
        "flops": {},
    }
    where = set()
    for n in frames:
        r = coding_flops(spec, n, size)
        where.add(r["counted_on"])
        row["flops"][n] = {"encode": r["encode"], "decode": r["decode"], "clip_frames": r["clip_frames"]}
    row["counted_on"] = "/".join(sorted(where))
    return row


def table(rows: list[dict], frames: list[int]) -> str:
    head = ["model", "compression (t x h x w)", "latent floats / 128-frame clip", "parameters"]
    head += [f"encode / decode GFLOP, {n} f" for n in frames] + ["counted on"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["compression"], f"{r['latent_floats_128']:,}", f"{r['params'] / 1e6:.1f} M"]
        for n in frames:
            f = r["flops"][n]
            pad = "" if f["clip_frames"] == n else f" ({f['clip_frames']} f)"
            cells.append(f"{f['encode'] / 1e9:,.0f} / {f['decode'] / 1e9:,.0f}{pad}")
        cells.append(r["counted_on"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from eval.diffusers_vae import VIDEO_AUTOENCODERS, import_diffusers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="a subset: diffusers class names and/or CoordTok-S, CoordTok-B, CoordTok-L",
    )
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    diffusers = import_diffusers()
    torch.set_num_threads(1)  # meta counting is Python-bound
    rows = []
    for name, config in COORDTOK.items():
        if args.models is None or name in args.models:
            tic = time.perf_counter()
            rows.append(coordtok_row(name, config, args.frames, args.size))
            print(f"{name}: {time.perf_counter() - tic:.0f} s", flush=True)
    for cls_name, title in VIDEO_AUTOENCODERS.items():
        if (args.models is None or cls_name in args.models) and hasattr(diffusers, cls_name):
            tic = time.perf_counter()
            rows.append(diffusers_row(cls_name, title, args.frames, args.size))
            print(f"{cls_name}: {time.perf_counter() - tic:.0f} s", flush=True)
    print(
        f"\ndiffusers {diffusers.__version__}, torch {torch.__version__}, {args.size}x{args.size} frames; "
        f"FLOPs of one clip (batch 1); a length in parentheses: the frames actually coded\n"
    )
    print(table(rows, args.frames))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
