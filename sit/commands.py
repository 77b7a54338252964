"""CoordTok-SiT's subcommands: ``encode``, ``sit-train`` and ``sample`` (and SiT files for ``convert``)."""

from __future__ import annotations

import json

from coordtok.cliargs import (
    add_config_options,
    add_precision_option,
    add_reference_options,
    config_text,
    nonnegative_int,
    positive_float,
    positive_int,
    reference_hints,
    resume_arg,
    train_overrides,
)


def cmd_encode(args) -> None:
    from coordtok.config import DataConfig

    from .encode import encode_dataset

    if args.kind == "samples":
        data = DataConfig(kind="samples", names=[n for n in args.data.split(",") if n])
    else:
        data = DataConfig.for_root(args.data, args.kind, split=args.split, fold=args.fold)
    extra = {k: getattr(args, k) for k in ("num_workers", "min_frames") if getattr(args, k) is not None}
    if extra:
        import dataclasses

        data = dataclasses.replace(data, **extra)
    index = encode_dataset(
        args.tokenizer_ckpt,
        data,
        args.out,
        clips_per_video=args.clips_per_video,
        seed=args.seed,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        precision=args.precision,
        stats_num=args.stats_num,
        progress=not args.no_progress,
        tokenizer_hints=reference_hints(args),
        whole_videos=args.whole_videos,
        overlap=args.overlap,
    )
    whole = (
        {"videos": len(index["whole_videos"]["videos"]), "overlap": index["whole_videos"]["overlap"]}
        if index.get("whole_videos")
        else {}
    )
    print(
        json.dumps(
            {k: index[k] for k in ("num_latents", "grid", "channels", "tokenizer_ckpt")}
            | whole
            | {"out": str(args.out), "shards": len(index["shards"])},
            indent=2,
        )
    )


def cmd_sit_train(args) -> None:
    from .config import load_sit_run_config
    from .train import train_sit

    overrides = train_overrides(args)
    if args.init_from:
        overrides.setdefault("train", {})["init_from"] = args.init_from
    cfg = load_sit_run_config(args.config, overrides)
    result = train_sit(
        cfg, args.latents, resume=resume_arg(args), progress=not args.no_progress, config_text=config_text(args.config)
    )
    print(json.dumps(result, indent=2))


def cmd_sample(args) -> None:
    from .sample import sample_videos

    result = sample_videos(
        args.sit_ckpt,
        args.tokenizer_ckpt,
        args.num,
        args.out,
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        fmt=args.format,
        device=args.device,
        frames_per_chunk=args.frames_per_chunk,
        fps=args.fps,
        progress=not args.no_progress,
        latent_stats=args.latent_stats,
        heads=args.heads,
        precision=args.precision,
        allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
        class_label=args.class_label,
        classes=args.classes,
        cfg_scale=args.cfg_scale,
        cfg_interval=args.cfg_interval,
    )
    labels = result.pop("labels", None)
    if labels is not None:
        result["labels_per_class"] = {str(k): labels.count(k) for k in sorted(set(labels))}
    files = result.pop("files")
    print(json.dumps({**result, "written": len(files), "first": files[0] if files else None}, indent=2))


def convert_sit_file(raw: dict, args):
    """``coordtok convert`` for SiT files (the reference's or ours)."""
    from .checkpoint import load_sit, to_project_checkpoint
    from .reference import is_reference_sit

    if not (is_reference_sit(raw) or raw.get("kind") == "sit"):
        return None
    _, stats, configs = load_sit(args.ckpt, latent_stats=args.latent_stats, heads=args.heads, log=lambda msg: None)
    info = configs["info"] or "CoordTok-SiT checkpoint"
    if stats is None:
        info += "; no latent statistics (sampling will need --latent-stats)"
    return to_project_checkpoint(configs, stats), info


def register(sub) -> None:
    e = sub.add_parser("encode", help="encode random 128-frame clips into a latent cache (+ normalization stats)")
    e.add_argument(
        "--tokenizer-ckpt", required=True, help="CoordTok checkpoint or run folder (this project's or the reference's)"
    )
    e.add_argument(
        "--data",
        required=True,
        help="a video folder or a UCF-101 root (with ucfTrainTestlist/); for --kind samples: names, e.g. bikes",
    )
    e.add_argument("--out", required=True, help="cache folder (shards, index.json, stats.json)")
    e.add_argument("--clips-per-video", type=positive_int, default=1, help="K random windows per video")
    e.add_argument(
        "--whole-videos",
        action="store_true",
        help="encode every video whole, as the triplanes of its windows of the tokenizer's clip length "
        "(start frames in the shard sidecars and index.json) instead of random windows",
    )
    e.add_argument(
        "--overlap",
        type=nonnegative_int,
        default=None,
        help="--whole-videos: frames by which consecutive windows overlap (default an eighth of the clip "
        "length, 16 of 128; at most half)",
    )
    e.add_argument(
        "--kind",
        choices=("folder", "ucf101", "samples"),
        default=None,
        help="default: ucf101 when --data holds ucfTrainTestlist/, else folder",
    )
    e.add_argument("--split", default=None, help="ucf101: train | test (default train); folder: a subfolder")
    e.add_argument("--fold", type=int, choices=(1, 2, 3), default=1, help="UCF-101 split fold")
    e.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seeds the random windows and the statistics' subset"
    )
    e.add_argument("--batch-size", type=positive_int, default=8, help="clips per encoder call (per process)")
    e.add_argument("--shard-size", type=positive_int, default=256, help="latents per shard file")
    e.add_argument(
        "--stats-num", type=positive_int, default=2048, help="random latents for the normalization statistics"
    )
    add_precision_option(e)
    e.add_argument(
        "--num-workers", type=nonnegative_int, default=None, help="DataLoader workers decoding videos (default 2)"
    )
    e.add_argument(
        "--min-frames",
        type=positive_int,
        default=None,
        help="keep videos with at least this many frames, zero-padding shorter clips "
        "(default: a whole window, i.e. shorter videos are skipped)",
    )
    e.add_argument("--no-progress", action="store_true")
    add_reference_options(e)
    e.set_defaults(fn=cmd_encode)

    st = sub.add_parser("sit-train", help="train CoordTok-SiT on a latent cache")
    add_config_options(st)
    st.add_argument("--latents", required=True, help="latent cache folder from `coordtok encode`")
    st.add_argument(
        "--init-from",
        default=None,
        help="fine-tune: a SiT checkpoint or run folder (this project's or the reference's)",
    )
    st.set_defaults(fn=cmd_sit_train)

    sa = sub.add_parser("sample", help="generate 128-frame videos with CoordTok-SiT + CoordTok")
    sa.add_argument(
        "--sit-ckpt",
        required=True,
        help="SiT checkpoint or run folder (this project's or the reference's); EMA weights are used",
    )
    sa.add_argument("--tokenizer-ckpt", required=True, help="the CoordTok checkpoint the latents came from")
    sa.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="sample with a tokenizer other than the one the SiT checkpoint records (its weights' "
        "fingerprint differs); refused otherwise",
    )
    sa.add_argument("--num", type=positive_int, required=True, help="number of videos")
    from .samplers import SAMPLERS

    sa.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        default="sde",
        help="sde: the paper's Euler-Maruyama (default, 250 steps); heun_sde with --steps 25: the paper's "
        "distribution in 49 network calls (measured against it, see the README); ode: torchdiffeq dopri5; "
        "the others are the registered fixed-step solvers of sit.samplers.SAMPLERS",
    )
    sa.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampler steps (default 250, the paper's; at most 10000); an adaptive --sampler ode "
        "(dopri5) picks its own and ignores them",
    )
    sa.add_argument("--seed", type=nonnegative_int, default=0)
    sa.add_argument(
        "--out",
        required=True,
        help="output folder: new or empty, or this same run's (resumed: finished samples are skipped)",
    )
    sa.add_argument(
        "--format",
        choices=("mp4", "npz"),
        default="mp4",
        help="mp4 files, or samples.npz with uint8 videos (N, T, H, W, 3) for FVD",
    )
    sa.add_argument("--batch-size", type=positive_int, default=8)
    sa.add_argument("--frames-per-chunk", type=positive_int, default=None, help="decode this many frames at a time")
    sa.add_argument("--fps", type=positive_float, default=25)
    sa.add_argument(
        "--latent-stats",
        default=None,
        help="latent normalization statistics: a stats.json, or the reference run's log.txt "
        "(needed for a reference SiT checkpoint)",
    )
    sa.add_argument(
        "--heads",
        type=positive_int,
        default=None,
        help="attention heads of a reference SiT whose arguments do not name them",
    )
    cls = sa.add_mutually_exclusive_group()
    cls.add_argument(
        "--class",
        dest="class_label",
        default=None,
        metavar="INDEX|NAME",
        help="class-conditional SiT: every sample of this class (an index, or a name of its class list)",
    )
    cls.add_argument(
        "--classes",
        choices=("uniform", "data", "cycle", "none"),
        default=None,
        help="class-conditional SiT: draw each sample's class, uniformly or with the training latents' "
        "frequencies (for FVD), or cycle: sample i of class i mod the number of classes; none: unconditional "
        "samples (the null class the label dropout trained); the default without --class is uniform",
    )
    sa.add_argument(
        "--cfg-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale on every channel of every plane (1: no guidance, the "
        "conditional model; each guided step is one network call on twice the batch)",
    )
    sa.add_argument(
        "--cfg-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only at times LO <= t <= HI (t = 0 noise, 1 data); default: every step",
    )
    sa.add_argument("--device", default=None)
    add_precision_option(sa)
    sa.add_argument("--no-progress", action="store_true")
    sa.set_defaults(fn=cmd_sample)
