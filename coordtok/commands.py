"""The tokenizer's subcommands: ``train`` and ``convert``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cliargs import add_config_options, config_text, positive_int, resume_arg, train_overrides


def load_run_config(config, overrides: dict | None = None):
    """``(kind, run config)`` of a tokenizer config file, read and checked exactly as ``train``
    reads it (:data:`coordtok.kinds.KINDS`; CoordTok for a file without ``kind:``): an empty file,
    an unknown kind or a bad value is the same one-line error."""
    from .kinds import kind_of_config

    kind = kind_of_config(config, role="tokenizer")
    return kind.name, kind.load_config(config, overrides)


def cmd_train(args) -> None:
    from .config import ConfigError
    from .kinds import kind_of_config
    from .loop import fit

    overrides = train_overrides(args)
    kind = kind_of_config(args.config, role="tokenizer")  # an unknown kind is refused before any other check
    if args.stage == 2:
        if kind.name != "coordtok":
            raise ConfigError(f"--stage is for CoordTok configs; {args.config} is a {kind.name} config")
        stage2_overrides(args, overrides)
    if args.init_from:
        overrides.setdefault("train", {})["init_from"] = args.init_from
    cfg = kind.load_config(args.config, overrides)
    result = fit(
        kind.resolve("task")(cfg),
        resume=resume_arg(args),
        progress=not args.no_progress,
        config_text=config_text(args.config),
    )
    print(json.dumps(result, indent=2))


def stage2_overrides(args, overrides: dict) -> None:
    """``--stage 2``: the train section's stage-2 defaults (``stage2_lpips_weight``,
    ``stage2_max_steps``, ``out_dir`` + ``-stage2``) under what the user set."""
    from .config import SECTIONS, ConfigError, TrainConfig, from_dict, read_sections

    # The stage-2 defaults come from the train section alone (its stage-1 settings, e.g. more
    # coordinates than a stage-2 clip has, are not checked against the model here).
    raw, source = read_sections(args.config, SECTIONS, overrides, required=("model", "train"))
    base = from_dict(TrainConfig, raw.get("train"), f"{source}: train")
    tc = overrides.setdefault("train", {})
    tc.setdefault("stage", 2)
    tc.setdefault("lpips_weight", base.stage2_lpips_weight)
    tc.setdefault("max_steps", base.stage2_max_steps)
    tc.setdefault("out_dir", base.out_dir.rstrip("/") + "-stage2")
    if not (args.init_from or base.init_from or args.resume):
        raise ConfigError("--stage 2 needs --init-from STAGE1_CHECKPOINT (or train.init_from in the config)")


def convert_tokenizer(raw: dict, args):
    """A reference CoordTok file (or one of ours) as this project's tokenizer checkpoint."""
    from .checkpoint import load_tokenizer
    from .reference import is_reference_coordtok

    if not (is_reference_coordtok(raw) or raw.get("kind") == "coordtok"):
        return None
    hints = {
        k: getattr(args, k)
        for k in ("heads", "enc_heads", "dec_heads", "frames", "size")
        if getattr(args, k) is not None
    }
    _, state, info = load_tokenizer(args.ckpt, with_info=True, log=lambda msg: None, **hints)
    keep = ("kind", "version", "step", "model", "config", "source", "info")
    return {k: v for k, v in state.items() if k in keep}, info or "CoordTok tokenizer checkpoint"


def cmd_convert(args) -> None:
    """A checkpoint of the reference implementation (or of this project) as this project's own file."""
    from .checkpoint import CheckpointError, atomic_save, load_any
    from .fileio import check_writable_file
    from .kinds import KINDS

    out = check_writable_file(args.out, "converted checkpoint")
    if Path(out).resolve() == Path(args.ckpt).resolve():
        raise CheckpointError(f"--out {out}: is the input file; write the conversion to another file")
    if (out.exists() or out.is_symlink()) and not args.force:
        raise CheckpointError(
            f"--out {out}: already exists and would be replaced; choose another file, or pass --force to replace it"
        )
    raw = load_any(args.ckpt)
    for convert in [kind.resolve("converter") for kind in KINDS.values() if kind.converter]:
        found = convert(raw, args)
        if found is not None:
            state, info = found
            break
    else:
        raise CheckpointError(
            f"{args.ckpt}: neither a CoordTok nor a CoordTok-SiT checkpoint (of this project or "
            f"of the reference implementation)"
        )
    atomic_save(state, out)
    print(f"{args.ckpt}: {info}", file=sys.stderr)
    print(json.dumps({"converted": str(args.ckpt), "out": str(out), "kind": state["kind"], "info": info}, indent=2))


def register(sub) -> None:
    t = sub.add_parser(
        "train", help="train a tokenizer: CoordTok (stage 1 or 2), or a baseline config's kind (magvit2, promag, regen)"
    )
    add_config_options(t)
    t.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        default=None,
        help="2: fine-tune whole frames with L2 + LPIPS from --init-from",
    )
    t.add_argument(
        "--init-from",
        default=None,
        help="weights to start from: a stage-1 checkpoint or run folder (this project's or the reference's)",
    )
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("convert", help="write a reference CoordTok or CoordTok-SiT checkpoint as this project's own")
    c.add_argument("--ckpt", required=True, help="e.g. CoordTok_UCF101_1M_50K.pth or CoordTok_SiT_L_2_UCF101_600K.pt")
    c.add_argument("--out", required=True, help="the project checkpoint to write (config included)")
    c.add_argument(
        "--heads",
        type=positive_int,
        default=None,
        help="attention heads (default: width / 64, the released models' head width)",
    )
    c.add_argument("--enc-heads", type=positive_int, default=None, help="tokenizer encoder heads (overrides --heads)")
    c.add_argument("--dec-heads", type=positive_int, default=None, help="tokenizer decoder heads (overrides --heads)")
    c.add_argument("--frames", type=positive_int, default=None, help="clip length, when the shapes leave it open")
    c.add_argument("--size", type=positive_int, default=None, help="frame side, when the shapes leave it open")
    c.add_argument(
        "--latent-stats",
        default=None,
        help="SiT: the reference run's log.txt or a stats.json; stored in the converted checkpoint",
    )
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.set_defaults(fn=cmd_convert)
