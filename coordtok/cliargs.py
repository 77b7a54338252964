"""Argument types and shared options for the subcommands every package registers.

Each package (``coordtok``, ``sit``, ``eval``) has a ``commands`` module with a
``register(subparsers)`` function; :mod:`coordtok.cli`, the composition root, calls them. A bad
number (``--num 0``, ``--fps 0``, ``--max-steps -5``) is refused by the parser with one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _number(kind, low, inclusive: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, True, "a positive integer")
nonnegative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a positive number")


def frame_list(text: str) -> list[int]:
    """``"16,32,64"`` -> ``[16, 32, 64]`` (positive clip lengths)."""
    try:
        values = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated clip lengths, e.g. 16,32,64,128; got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive clip lengths, e.g. 16,32,64,128; got {text!r}")
    return values


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--resume``, ``--out-dir``, ``--max-steps``, ``--no-progress``."""
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.lr=3e-4",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from the newest readable checkpoint in out_dir, or from the given file "
        "(the config's optimizer settings are applied)",
    )
    p.add_argument("--out-dir", default=None, help="run folder (train.out_dir)")
    p.add_argument("--max-steps", type=nonnegative_int, default=None, help="train.max_steps")
    p.add_argument("--no-progress", action="store_true")


def train_overrides(args) -> dict:
    """The ``--set`` / ``--out-dir`` / ``--max-steps`` overrides of a training command."""
    from .config import parse_overrides

    overrides = parse_overrides(args.set)
    for flag, key in (("out_dir", "out_dir"), ("max_steps", "max_steps")):
        if getattr(args, flag) is not None:
            overrides.setdefault("train", {})[key] = getattr(args, flag)
    return overrides


def resume_arg(args):
    """``--resume`` as :func:`coordtok.loop.fit` takes it: True (newest), a path, or None."""
    return None if args.resume is None else (True if args.resume == "latest" else args.resume)


def config_text(path) -> str | None:
    """The config file's text, stored in checkpoints so a run can be read back exactly."""
    p = Path(path)
    return p.read_text() if p.is_file() else None


def add_reference_options(p: argparse.ArgumentParser) -> None:
    """``--heads`` / ``--enc-heads`` / ``--dec-heads``: for a tokenizer checkpoint in the reference
    implementation's format, whose head count the weights do not tell (default width / 64, which
    is right for every released model; another size needs them)."""
    p.add_argument(
        "--heads",
        type=positive_int,
        default=None,
        help="reference-format tokenizer: attention heads (default: width / 64 for the released sizes; "
        "any other size needs it)",
    )
    p.add_argument("--enc-heads", type=positive_int, default=None, help="reference-format tokenizer: encoder heads")
    p.add_argument("--dec-heads", type=positive_int, default=None, help="reference-format tokenizer: decoder heads")


def reference_hints(args) -> dict:
    """The ``--heads`` family of :func:`add_reference_options` that was given, as loader keywords."""
    return {k: getattr(args, k) for k in ("heads", "enc_heads", "dec_heads") if getattr(args, k, None) is not None}


def add_precision_option(p) -> None:
    """``--precision`` of the inference commands (:func:`coordtok.devices.resolve_inference_precision`)."""
    from .devices import INFERENCE_PRECISIONS

    p.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help="auto: TF32 matmuls on CUDA (bf16 autocast where the checkpoint was trained in bf16), "
        "fp32 on a CPU; fp32, tf32, or bf16 / fp16 autocast",
    )
