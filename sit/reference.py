"""Checkpoints of the public reference implementation's SiT (github huiwon-jang/CoordTok,
``train_sit.py``) as ours.

The reference saves ``{"model", "ema", "opt", "args"}`` (no key prefix; ``args`` its command line,
an ``argparse.Namespace``) to ``<run>/checkpoints/<step>.pt`` and samples with ``ema``. Its SiT
has the same parameter names as :class:`sit.models.TriplaneSiT` with ``learn_sigma: true``, so
the weights map key for key; the fixed sin-cos table ``pos_embed_xy`` is loaded as stored, not
recomputed. The latent normalization statistics are not in the checkpoint: the reference writes
them to the run's ``log.txt`` and its sampler reads them back from there
(:func:`parse_reference_log`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from coordtok.checkpoint import CheckpointError, load_any
from coordtok.config import ConfigError

from .config import SiTConfig
from .models import TriplaneSiT
from .stats import LatentStats

# The reference's SiT sizes (sit_models.py): name -> (depth, hidden, heads).
SIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
HEAD_DIM = 64  # heads = hidden / 64 when nothing names them
STAT_LINES = ("xy_mean", "xy_std", "yt_mean", "yt_std", "xt_mean", "xt_std")


def _ema_state(obj) -> dict | None:
    """The EMA state dict of a reference file (``{"ema": ...}``) or a bare state dict, else None."""
    if not isinstance(obj, dict) or "kind" in obj:  # "kind": this project's own checkpoints
        return None
    sd = obj.get("ema") if isinstance(obj.get("ema"), dict) else obj
    return sd if all(isinstance(k, str) for k in sd) else None


def is_reference_sit(obj) -> bool:
    """True for a reference SiT checkpoint (``{"model", "ema", "opt", "args"}``) or a bare state
    dict of its SiT (what its ``find_model`` returns)."""
    sd = _ema_state(obj)
    return sd is not None and all(
        k in sd for k in ("x_embedder_xy.proj.weight", "pos_embed_xy", "pos_embed_t", "final_layer_xy.linear.weight")
    )


def _arg(args, name: str):
    """``args.name`` of an ``argparse.Namespace`` or a dict (None if absent)."""
    if args is None:
        return None
    return args.get(name) if isinstance(args, dict) else getattr(args, name, None)


def _shape(sd: dict, key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: 'ema' key '{key}' is missing; not a complete reference SiT checkpoint")
    value = sd[key]
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{source}: 'ema' key '{key}' is {got}, expected a {ndim}-d tensor")
    return tuple(value.shape)


def _heads_from_args(model_name, depth: int, hidden: int, patch: int, source: str) -> int | None:
    """Heads named by ``args.model``: "SiT-L/2" (a reference size, checked against the file) or
    "SiT (depth=2, hidden_size=32, patch_size=2, num_heads=4)"; None if it names none."""
    if not isinstance(model_name, str):
        return None
    named = re.fullmatch(r"\s*SiT-(XL|L|B|S)/(\d+)\s*", model_name)
    if named:
        want_depth, want_hidden, heads = SIT_SIZES[named.group(1)]
        if (want_depth, want_hidden, int(named.group(2))) != (depth, hidden, patch):
            raise CheckpointError(
                f"{source}: args.model is {model_name!r} (depth {want_depth}, hidden {want_hidden}, patch "
                f"{named.group(2)}) but the weights are depth {depth}, hidden {hidden}, patch {patch}"
            )
        return heads
    found = re.search(r"num_heads\s*=\s*(\d+)", model_name)
    return int(found.group(1)) if found else None


def infer_sit_config(
    ema_state: dict, args=None, heads: int | None = None, source: str = "reference SiT checkpoint"
) -> SiTConfig:
    """The :class:`SiTConfig` of a reference SiT state dict, read off its shapes.

    Depth from the block indices, hidden size, channels and patch from the patch embedding
    ``(hidden, C, p, p)``, ``learn_sigma`` from the final layer's ``p * p * out`` rows (out = 2C
    or C), the grid from the lengths of ``pos_embed_xy`` ``((Hl/p)^2)`` and ``pos_embed_t``
    ``((Tl/p)(Hl/p))``, cross-checked with ``args.latent_resolution_t`` / ``_xy`` /
    ``latent_n_features`` when present. Heads: those ``args.model`` names ("SiT-L/2" -> 16),
    else ``heads``, else ``hidden / 64``.
    """
    sd = ema_state
    hidden, c, p, p2 = _shape(sd, "x_embedder_xy.proj.weight", 4, source)
    if p != p2:
        raise CheckpointError(
            f"{source}: 'ema' key 'x_embedder_xy.proj.weight' has a {p}x{p2} kernel; only square patches are supported"
        )
    rows, _ = _shape(sd, "final_layer_xy.linear.weight", 2, source)
    if rows not in (p * p * c, 2 * p * p * c):
        raise CheckpointError(
            f"{source}: 'ema' key 'final_layer_xy.linear.weight' has {rows} rows, expected "
            f"{p * p * c} or {2 * p * p * c} (patch {p}, {c} channels, with learned sigma)"
        )
    learn_sigma = rows == 2 * p * p * c
    _, n_xy, _ = _shape(sd, "pos_embed_xy", 3, source)
    _, n_t, _ = _shape(sd, "pos_embed_t", 3, source)
    side = math.isqrt(n_xy)
    if side * side != n_xy or n_t % side:
        raise CheckpointError(
            f"{source}: 'ema' keys 'pos_embed_xy' ({n_xy} tokens) and 'pos_embed_t' ({n_t} "
            f"tokens) fit no (Tl/p) x (Hl/p) x (Hl/p) patch grid"
        )
    tl, hl = n_t // side * p, side * p
    for name, want in (("latent_resolution_t", tl), ("latent_resolution_xy", hl), ("latent_n_features", c)):
        given = _arg(args, name)
        if given is not None and given != want:
            raise CheckpointError(f"{source}: args.{name} is {given} but the weights give {want}")
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    if not blocks:
        raise CheckpointError(f"{source}: no 'ema' keys 'blocks.N.*'; not a complete reference SiT checkpoint")
    depth = max(blocks) + 1
    mlp_hidden, _ = _shape(sd, "blocks.0.mlp.fc1.weight", 2, source)

    named = _heads_from_args(_arg(args, "model"), depth, hidden, p, source)
    if named is not None and heads is not None and heads != named:
        raise CheckpointError(
            f"{source}: --heads {heads} contradicts args.model {_arg(args, 'model')!r} "
            f"({named} heads); leave --heads out"
        )
    n_heads = named if named is not None else heads
    if n_heads is None:
        if hidden % HEAD_DIM:
            raise CheckpointError(
                f"{source}: the SiT is {hidden}-d, not a multiple of {HEAD_DIM}, and args.model "
                f"does not name its heads; pass --heads"
            )
        n_heads = hidden // HEAD_DIM
    try:
        return SiTConfig(
            hidden=hidden,
            depth=depth,
            heads=n_heads,
            mlp_ratio=mlp_hidden / hidden,
            patch=p,
            grid=(tl, hl, hl),
            channels=c,
            learn_sigma=learn_sigma,
        )
    except ConfigError as e:
        raise CheckpointError(f"{source}: the shapes give an impossible SiT configuration: {e}") from None


def _check(sd: dict, expected: dict[str, tuple[int, ...]], which: str, source: str) -> dict[str, torch.Tensor]:
    """``sd`` if it holds exactly the ``expected`` keys and shapes, else a one-line error naming the key."""
    for key in sd:
        if key not in expected:
            raise CheckpointError(f"{source}: unknown '{which}' key '{key}'; not a reference SiT of a known layout")
    for key, shape in expected.items():
        if key not in sd:
            raise CheckpointError(f"{source}: '{which}' key '{key}' is missing")
        value = sd[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: '{which}' key '{key}' is {got}, expected {shape}")
    return dict(sd)


def convert_sit(
    obj, heads: int | None = None, source: str | None = None
) -> tuple[SiTConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, str]:
    """A reference SiT checkpoint as ``(config, ema state, model state, info)`` for :class:`TriplaneSiT`.

    Args:
        obj: the loaded file (or a bare state dict, taken as the EMA weights) or its path (loaded
            with :func:`coordtok.checkpoint.load_any`, which allows exactly ``argparse.Namespace``).
        heads: attention heads when ``args.model`` does not name them (see :func:`infer_sit_config`).
    Returns:
        The EMA weights (what the reference samples with), the raw training weights (None for a
        bare state dict) and one ``info`` line.
    Raises:
        CheckpointError: one line naming the key that is missing, unknown or of the wrong shape.
    """
    if isinstance(obj, (str, Path)):
        source = source or str(obj)
        obj = load_any(obj)
    source = source or "reference SiT checkpoint"
    if not is_reference_sit(obj):
        raise CheckpointError(
            f"{source}: not a reference SiT checkpoint (no 'ema' weights with 'x_embedder_xy', "
            f"'pos_embed_xy', 'pos_embed_t' and 'final_layer_xy')"
        )
    ema = _ema_state(obj)
    args = obj.get("args") if "ema" in obj else None
    cfg = infer_sit_config(ema, args, heads, source)
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {k: tuple(v.shape) for k, v in TriplaneSiT(cfg).state_dict().items()}
    ema_state = _check(ema, expected, "ema", source)
    has_model = "ema" in obj and isinstance(obj.get("model"), dict)  # a bare state dict is the EMA alone
    model_state = _check(obj["model"], expected, "model", source) if has_model else None
    size = next(
        (f"SiT-{k}/{cfg.patch}" for k, v in SIT_SIZES.items() if v == (cfg.depth, cfg.hidden, cfg.heads)), "custom SiT"
    )
    tl, hl, wl = cfg.grid
    info = (
        f"reference CoordTok-SiT checkpoint, {size} ({cfg.depth} x {cfg.hidden}-d, {cfg.heads} heads, patch "
        f"{cfg.patch}), latent grid {tl}x{hl}x{wl} x {cfg.channels} "
        f"channels, {'learned sigma (unused by velocity sampling)' if cfg.learn_sigma else 'no learned sigma'}, "
        f"EMA weights"
    )
    return cfg, ema_state, model_state, info


# ---------------------------------------------------------------------------- log.txt statistics

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TIMESTAMP = re.compile(r"^\[[^\]]*\]\s*")


def parse_reference_log(path: str | Path, grid: tuple[int, int, int]) -> LatentStats:
    """The latent normalization statistics a reference SiT run printed to its ``log.txt``.

    The lines ``[time] xy_mean: tensor([...])``, ``xy_std``, ``yt_mean``, ``yt_std``,
    ``xt_mean``, ``xt_std`` (time stamps wrapped in ANSI colour codes; torch wraps a long
    tensor over several lines, which are joined). The printed decimals are kept as they are
    (float64); the first occurrence counts, as in the reference sampler (a resumed run appends
    to the same log). ``grid`` ``(Tl, Hl, Wl)`` is the SiT's latent grid (the log does not say).

    Returns:
        :class:`LatentStats` with ``mean`` and ``std`` ``(3, C)`` in plane order xy, yt, xt.
    Raises:
        CheckpointError: one line naming the file and the statistic that is missing or malformed.
    """
    path = Path(path)
    try:
        lines = [_TIMESTAMP.sub("", _ANSI.sub("", line)) for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise CheckpointError(
            f"{path}: cannot read the reference run's log ({e.__class__.__name__}: {why}); "
            f"pass the log.txt next to its checkpoints/"
        ) from None
    values = {}
    for name in STAT_LINES:
        start = next((i for i, line in enumerate(lines) if line.startswith(f"{name}: tensor([")), None)
        if start is None:
            raise CheckpointError(
                f"{path}: no '{name}: tensor([...])' line; the reference SiT run's log.txt prints "
                f"the latent statistics when training starts"
            )
        # A tensor printed over several lines ends at the first ']'.
        text, i = lines[start].split("tensor([", 1)[1], start
        while "]" not in text and i + 1 < len(lines):
            i += 1
            text += " " + lines[i]
        if "]" not in text:
            raise CheckpointError(f"{path}: the '{name}' tensor never closes with ']'")
        try:
            values[name] = [float(v) for v in text.split("]", 1)[0].split(",")]
        except ValueError:
            raise CheckpointError(f"{path}: the '{name}' line does not hold a list of numbers") from None
    counts = {len(v) for v in values.values()}
    if len(counts) != 1:
        raise CheckpointError(
            f"{path}: the statistics disagree on the number of channels "
            f"({', '.join(f'{k} {len(v)}' for k, v in values.items())})"
        )
    mean = torch.tensor([values[f"{p}_mean"] for p in ("xy", "yt", "xt")], dtype=torch.float64)
    std = torch.tensor([values[f"{p}_std"] for p in ("xy", "yt", "xt")], dtype=torch.float64)
    return LatentStats(tuple(grid), mean, std, source=str(path)).check(positive_std="the reference divides by it")
