"""Checkpoints of the public reference implementation (github huiwon-jang/CoordTok) as ours.

The reference trainer saves ``{"epoch", "model", "best_psnr"}`` with ``model`` the state dict of
its DDP-wrapped ``CoordTok`` (every key starts with ``module.``); a stage-2 file also holds the 33
weights of its LPIPS loss (``decoder.lpips_loss.*``), which are not part of the tokenizer and are
dropped. The file does not store its configuration: :func:`infer_coordtok_config` reads it off
the tensor shapes. Reference names (without ``module.``) -> ours:

==========================================================  ===========================================
``weight_tokens_{xy,yt,xt}`` ``(1, R, S, C)``                ``triplane_encoder.query_*`` ``(1, C, R, S)``
``encoder.encoder.{cls_token, pos_emb}``                     ``video_encoder.{cls_token, pos_embed}``
``encoder.encoder.patch_embed.proj.*``                       ``video_encoder.patch_embed.*``
``encoder.encoder.layers.N.*`` (timm ``Block``)              ``video_encoder.blocks.N.*`` (same names)
``encoder.encoder.norm.*``                                   ``video_encoder.norm.*``
``encoder.cross_pos_emb``                                    ``triplane_encoder.cross_pos_embed``
``encoder.patch_embeds_*.proj.*``                            ``triplane_encoder.embed_*.*``
``encoder.transformer.layers.N.cross_attn.in_proj_weight``   ``...cross_attn.q.weight`` (rows ``[0, D)``) and
                                                             ``...cross_attn.kv.weight`` (rows ``[D, 3D)``)
``encoder.transformer.layers.N.cross_attn.out_proj.weight``  ``triplane_encoder.blocks.N.cross_attn.proj.weight``
``encoder.transformer.layers.N.self_attn.in_proj_weight``    ``triplane_encoder.blocks.N.self_attn.qkv.weight``
``encoder.transformer.layers.N.self_attn.out_proj.weight``   ``triplane_encoder.blocks.N.self_attn.proj.weight``
``encoder.transformer.layers.N.mlp.{0,3}.*``                 ``triplane_encoder.blocks.N.mlp.{fc1,fc2}.*``
``encoder.transformer.layers.N.norm{1,2,3}.*``, ``.norm.*``  ``triplane_encoder.blocks.N.norm{1,2,3}.*``, ``.norm.*``
``encoder.projectors_*.*``                                   ``triplane_encoder.proj_*.*``
``decoder.transformer.pos_embed`` ``(1, Tp, Hp, Wp, D)``     ``decoder.pos_embed`` ``(Tp, Hp, Wp, D)``
``decoder.transformer.patch_embed.*``                        ``decoder.embed.*``
``decoder.transformer.layers.N.*``, ``.norm.*``              ``decoder.blocks.N.*``, ``decoder.norm.*``
``decoder.projector.*``                                      ``decoder.head.*``
==========================================================  ===========================================

The reference's argument names cross over: its ``enc_patch_num_layers`` is the number of ViT
layers (our ``enc_layers``) and its ``enc_num_layers`` the number of cross-self layers (our
``cross_layers``). Its LayerNorm epsilons are :class:`ModelConfig`'s defaults.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Callable

import torch
from einops import rearrange

from .config import ConfigError, ModelConfig
from .errors import CheckpointError

PREFIX = "module."  # DistributedDataParallel's
LPIPS_PREFIX = "decoder.lpips_loss."  # the stage-2 loss module: not part of the tokenizer

# Paper Table 5 (widths and depths; the encoder has 8 ViT layers in every size).
SIZES = {"CoordTok-S": (512, 8), "CoordTok-B": (768, 12), "CoordTok-L": (1024, 24)}
VIT_LAYERS = 8
HEAD_DIM = 64  # the head width of every released size: heads = width / 64 unless told

# reference key (no prefix) -> (its shape, tensor -> {our key: tensor})
Layout = dict[str, tuple[tuple[int, ...], Callable[[torch.Tensor], dict[str, torch.Tensor]]]]


# ---------------------------------------------------------------------------- format


def _state_dict(obj) -> tuple[dict, str]:
    """``(state dict without the DDP prefix, the prefix it had)`` of a file's dict or a bare state dict."""
    sd = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) for k in sd):
        return {}, ""
    if all(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX) :]: v for k, v in sd.items()}, PREFIX
    return dict(sd), ""


def is_reference_coordtok(obj) -> bool:
    """True for a reference CoordTok checkpoint: ``{"model": state dict, ...}`` or a bare state
    dict, with or without the ``module.`` prefix, holding ``weight_tokens_xy``, ``encoder.*`` and
    ``decoder.transformer.*`` keys."""
    sd, _ = _state_dict(obj)
    return (
        "weight_tokens_xy" in sd
        and any(k.startswith("encoder.") for k in sd)
        and any(k.startswith("decoder.transformer.") for k in sd)
    )


class _Reader:
    """Shape look-ups that fail with one line naming the key as the file spells it."""

    def __init__(self, sd: dict, prefix: str, source: str):
        self.sd, self.prefix, self.source = sd, prefix, source

    def name(self, key: str) -> str:
        return self.prefix + key

    def fail(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {msg}")

    def shape(self, key: str, ndim: int) -> tuple[int, ...]:
        if key not in self.sd:
            raise self.fail(f"key '{self.name(key)}' is missing; not a complete reference CoordTok checkpoint")
        value = self.sd[key]
        if not isinstance(value, torch.Tensor):
            raise self.fail(f"key '{self.name(key)}' holds a {type(value).__name__}, not a tensor")
        if value.ndim != ndim:
            raise self.fail(f"key '{self.name(key)}' has shape {tuple(value.shape)}, expected {ndim} dimensions")
        return tuple(value.shape)

    def layers(self, stem: str) -> int:
        """Number of blocks ``stem.N.*`` (highest index + 1; a gap shows up as a missing key later)."""
        found = [int(m.group(1)) for k in self.sd if (m := re.match(re.escape(stem) + r"\.(\d+)\.", k))]
        if not found:
            raise self.fail(f"no '{self.name(stem)}.N.*' keys; not a complete reference CoordTok checkpoint")
        return max(found) + 1


# ---------------------------------------------------------------------------- configuration


def _heads(width: int, given: int | None, what: str, flag: str, r: _Reader, released: str | None) -> int:
    """The attention heads of a ``width``-d module: ``given``, else ``width / 64`` for a released
    size (``released``: its name). A custom size is refused without a head count: the weights do
    not hold it, and a wrong guess loads silently and computes something else (fixture A, 64-d
    with 4 heads, read as 1 head: its triplane is 0.43 off)."""
    if given is None:
        arg = f"{what[:3]}_num_heads"
        if width % HEAD_DIM:
            raise r.fail(
                f"the {what} is {width}-d, not a multiple of {HEAD_DIM}, so its number of attention heads "
                f"cannot be guessed; pass --heads (or {flag}): the reference run's {arg} argument"
            )
        if released is None:
            raise r.fail(
                f"the {what} is {width}-d, a custom size: its attention heads are not in the weights and "
                f"width / {HEAD_DIM} = {width // HEAD_DIM} holds only for the released sizes; pass --heads "
                f"(or {flag}): the reference run's {arg} argument"
            )
        return width // HEAD_DIM
    if given < 1 or width % given:
        raise r.fail(f"{given} heads do not divide the {width}-d {what}; pass a divisor of {width} as {flag}")
    return given


def _clip_candidates(r: _Reader) -> tuple[list[tuple[int, int, int, int]], str]:
    """Every ``(frames, size, dec_patch_t, dec_patch_xy)`` the decoder and encoder shapes allow,
    largest spatial patch first, and a description of the shapes for messages."""
    _, tp, hp, wp, _ = r.shape("decoder.transformer.pos_embed", 5)
    out_dim, _ = r.shape("decoder.projector.weight", 2)
    _, _, et, ep, ep2 = r.shape("encoder.encoder.patch_embed.proj.weight", 5)
    _, n_tokens, _ = r.shape("encoder.encoder.pos_emb", 3)
    facts = (
        f"'{r.name('decoder.transformer.pos_embed')}' grid {tp}x{hp}x{wp}, "
        f"'{r.name('decoder.projector.weight')}' {out_dim} outputs, encoder patch {et}x{ep}x{ep2}, "
        f"{n_tokens} video tokens"
    )
    if hp != wp:
        raise r.fail(
            f"key '{r.name('decoder.transformer.pos_embed')}' has a {hp}x{wp} spatial grid; "
            f"only square clips are supported"
        )
    if ep != ep2:
        raise r.fail(
            f"key '{r.name('encoder.encoder.patch_embed.proj.weight')}' has a {ep}x{ep2} spatial kernel; "
            f"only square patches are supported"
        )
    found = []
    if out_dim % 3 == 0:  # decoder head: 3 * pt * p * p outputs
        per_channel = out_dim // 3
        for p in range(math.isqrt(per_channel), 0, -1):
            if per_channel % (p * p):
                continue
            pt = per_channel // (p * p)
            frames, size = tp * pt, hp * p
            if frames % et == 0 and size % ep == 0 and (frames // et) * (size // ep) ** 2 == n_tokens:
                found.append((frames, size, pt, p))
    return found, facts


def infer_coordtok_config(
    state_dict,
    heads: int | None = None,
    enc_heads: int | None = None,
    dec_heads: int | None = None,
    frames: int | None = None,
    size: int | None = None,
    source: str = "reference checkpoint",
) -> ModelConfig:
    """The :class:`ModelConfig` of a reference CoordTok state dict, read off its tensor shapes.

    Layer counts come from the key indices; widths, latent sizes and patch sizes from the
    kernels and tables. Heads are not in the shapes: ``width / 64`` for a released size (S, B, L)
    unless ``heads`` (both) or ``enc_heads`` / ``dec_heads`` say otherwise; any other size needs
    them (a one-line error otherwise). The clip shape is
    the decoder's positional grid ``(Tp, Hp, Wp)`` times its patch, and the head's
    ``3 * pt * p * p`` outputs can split several ways (fixture B fits ``pt 2, p 4`` and
    ``pt 8, p 2``): among the splits that fit the encoder's patch kernel and token count the
    largest spatial patch wins, unless ``frames`` / ``size`` pick another.

    Args:
        state_dict: the file's dict, or its ``model`` state dict, with or without ``module.``.
        source: the file, for messages.
    Raises:
        CheckpointError: one line naming the first key or shape that fits no configuration.
    """
    sd, prefix = _state_dict(state_dict)
    return _infer(_Reader(sd, prefix, source), heads, enc_heads, dec_heads, frames, size)


def _infer(r: _Reader, heads, enc_heads, dec_heads, frames, size) -> ModelConfig:
    _, _, d = r.shape("encoder.encoder.cls_token", 3)
    _, hl, wl, c = r.shape("weight_tokens_xy", 4)
    if hl != wl:
        raise r.fail(f"key '{r.name('weight_tokens_xy')}' is a {hl}x{wl} plane; only square xy planes are supported")
    _, tl, _, _ = r.shape("weight_tokens_yt", 4)
    _, _, pxy, _ = r.shape("encoder.patch_embeds_xy.proj.weight", 4)
    _, _, pt_lat, _ = r.shape("encoder.patch_embeds_yt.proj.weight", 4)
    *_, dd = r.shape("decoder.transformer.pos_embed", 5)
    mlp_hidden, _ = r.shape("encoder.encoder.layers.0.mlp.fc1.weight", 2)

    candidates, facts = _clip_candidates(r)
    picked = [
        cand for cand in candidates if (frames is None or cand[0] == frames) and (size is None or cand[1] == size)
    ]
    if not picked:
        if not candidates:
            raise r.fail(f"no clip shape fits {facts}; the file is damaged or not a reference CoordTok checkpoint")
        fits = ", ".join(f"{f} frames of {s}x{s}" for f, s, _, _ in candidates)
        raise r.fail(f"frames={frames}, size={size} do not fit the checkpoint ({facts}); it fits {fits}")
    clip_frames, clip_size, dec_pt, dec_p = picked[0]
    # The reference un-patchifies a plane's tokens as a sqrt(L) x sqrt(L) grid: only square
    # patch grids of the triplane come out in the layout the decoder reads.
    if tl % pt_lat == 0 and wl % pxy == 0 and tl // pt_lat != wl // pxy:
        raise r.fail(
            f"key '{r.name('encoder.patch_embeds_yt.proj.weight')}' gives a {tl // pt_lat}x{wl // pxy} "
            f"yt patch grid; the reference lays out only square ones as planes, so this file is unsupported"
        )
    _, _, enc_p_t, enc_p_xy, _ = r.shape("encoder.encoder.patch_embed.proj.weight", 5)
    mlp_ratio = mlp_hidden / d
    if int(d * mlp_ratio) != mlp_hidden:
        raise r.fail(
            f"key '{r.name('encoder.encoder.layers.0.mlp.fc1.weight')}' has a {mlp_hidden}-d MLP for "
            f"{d}-d tokens, which no mlp_ratio reproduces"
        )
    layers = {
        "enc_layers": r.layers("encoder.encoder.layers"),
        "cross_layers": r.layers("encoder.transformer.layers"),
        "dec_layers": r.layers("decoder.transformer.layers"),
    }
    released = next(
        (
            name
            for name, (width, depth) in SIZES.items()
            if d == dd == width and layers == {"enc_layers": VIT_LAYERS, "cross_layers": depth, "dec_layers": depth}
        ),
        None,
    )
    enc_h = _heads(d, enc_heads if enc_heads is not None else heads, "encoder", "--enc-heads", r, released)
    dec_h = _heads(dd, dec_heads if dec_heads is not None else heads, "decoder", "--dec-heads", r, released)
    try:  # (a ModelConfig checks itself when it is built)
        return ModelConfig(
            frames=clip_frames,
            size=clip_size,
            enc_patch_t=enc_p_t,
            enc_patch_xy=enc_p_xy,
            enc_dim=d,
            enc_heads=enc_h,
            latent_xy=hl,
            latent_t=tl,
            latent_channels=c,
            latent_patch_xy=pxy,
            latent_patch_t=pt_lat,
            dec_dim=dd,
            dec_heads=dec_h,
            **layers,
            dec_patch_xy=dec_p,
            dec_patch_t=dec_pt,
            mlp_ratio=mlp_ratio,
            vit_norm_eps=1e-5,
            cross_norm_eps=1e-6,
            dec_norm_eps=1e-5,  # the reference's (timm <= 1.0.15 Block)
        )
    except ConfigError as e:
        keys = dict.fromkeys(f"'{r.name(key)}'" for field, key in _FIELD_KEYS.items() if f"'{field}'" in str(e))
        where = ", ".join(keys) or "the weights"
        raise r.fail(f"the shapes of {where} give an impossible configuration: {e}") from None


# Where infer_coordtok_config reads each field (for messages).
_FIELD_KEYS = {
    "enc_patch_t": "encoder.encoder.patch_embed.proj.weight",
    "enc_patch_xy": "encoder.encoder.patch_embed.proj.weight",
    "enc_dim": "encoder.encoder.cls_token",
    "latent_xy": "weight_tokens_xy",
    "latent_t": "weight_tokens_yt",
    "latent_channels": "weight_tokens_xy",
    "latent_patch_xy": "encoder.patch_embeds_xy.proj.weight",
    "latent_patch_t": "encoder.patch_embeds_yt.proj.weight",
    "dec_dim": "decoder.transformer.pos_embed",
    "frames": "decoder.transformer.pos_embed",
    "size": "decoder.transformer.pos_embed",
    "dec_patch_t": "decoder.projector.weight",
    "dec_patch_xy": "decoder.projector.weight",
}


# ---------------------------------------------------------------------------- the key mapping


def _to(ours: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    return lambda t: {ours: t}


def _block(layout: Layout, ref: str, ours: str, dim: int, hidden: int, qkv_bias: bool) -> None:
    """A timm ``Block``: the reference and ours use the same names."""
    shapes = {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (hidden, dim),
        "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden),
        "mlp.fc2.bias": (dim,),
    }
    if qkv_bias:
        shapes["attn.qkv.bias"] = (3 * dim,)
    for name, shape in shapes.items():
        layout[f"{ref}.{name}"] = (shape, _to(f"{ours}.{name}"))


def _norm(layout: Layout, ref: str, ours: str, dim: int) -> None:
    for name in ("weight", "bias"):
        layout[f"{ref}.{name}"] = ((dim,), _to(f"{ours}.{name}"))


def reference_layout(cfg: ModelConfig) -> Layout:
    """Every key of a reference CoordTok built for ``cfg`` (no prefix, no LPIPS): its shape and
    how it becomes ours (see the module docstring)."""
    d, dd, c = cfg.enc_dim, cfg.dec_dim, cfg.latent_channels
    tl, hl, wl = cfg.latent_grid
    pxy, pt = cfg.latent_patch_xy, cfg.latent_patch_t
    hidden, dec_hidden = int(d * cfg.mlp_ratio), int(dd * cfg.mlp_ratio)
    n_tokens = (cfg.frames // cfg.enc_patch_t) * (cfg.size // cfg.enc_patch_xy) ** 2
    layout: Layout = {}

    for plane, (rows, cols) in (("xy", (hl, wl)), ("yt", (tl, wl)), ("xt", (tl, hl))):
        # channels-last (1, R, S, C) -> ours (1, C, R, S)
        layout[f"weight_tokens_{plane}"] = (
            (1, rows, cols, c),
            lambda t, q=f"triplane_encoder.query_{plane}": {q: rearrange(t, "one r s c -> one c r s").contiguous()},
        )

    vit = "encoder.encoder"
    layout[f"{vit}.cls_token"] = ((1, 1, d), _to("video_encoder.cls_token"))
    layout[f"{vit}.pos_emb"] = ((1, n_tokens, d), _to("video_encoder.pos_embed"))
    layout[f"{vit}.patch_embed.proj.weight"] = (
        (d, 3, cfg.enc_patch_t, cfg.enc_patch_xy, cfg.enc_patch_xy),
        _to("video_encoder.patch_embed.weight"),
    )
    layout[f"{vit}.patch_embed.proj.bias"] = ((d,), _to("video_encoder.patch_embed.bias"))
    for i in range(cfg.enc_layers):
        _block(layout, f"{vit}.layers.{i}", f"video_encoder.blocks.{i}", d, hidden, qkv_bias=False)
    _norm(layout, f"{vit}.norm", "video_encoder.norm", d)

    layout["encoder.cross_pos_emb"] = ((1, n_tokens, d), _to("triplane_encoder.cross_pos_embed"))
    for plane, kernel in (("xy", (pxy, pxy)), ("yt", (pt, pxy)), ("xt", (pt, pxy))):
        layout[f"encoder.patch_embeds_{plane}.proj.weight"] = (
            (d, c, *kernel),
            _to(f"triplane_encoder.embed_{plane}.weight"),
        )
        layout[f"encoder.patch_embeds_{plane}.proj.bias"] = ((d,), _to(f"triplane_encoder.embed_{plane}.bias"))
        out = kernel[0] * kernel[1] * c
        layout[f"encoder.projectors_{plane}.weight"] = ((out, d), _to(f"triplane_encoder.proj_{plane}.weight"))
        layout[f"encoder.projectors_{plane}.bias"] = ((out,), _to(f"triplane_encoder.proj_{plane}.bias"))
    for i in range(cfg.cross_layers):
        ref, ours = f"encoder.transformer.layers.{i}", f"triplane_encoder.blocks.{i}"
        for k in (1, 2, 3):
            _norm(layout, f"{ref}.norm{k}", f"{ours}.norm{k}", d)
        # nn.MultiheadAttention packs the query rows [0, D) and key/value rows [D, 3D) in one weight.
        layout[f"{ref}.cross_attn.in_proj_weight"] = (
            (3 * d, d),
            lambda t, o=ours: {f"{o}.cross_attn.q.weight": t[:d].clone(), f"{o}.cross_attn.kv.weight": t[d:].clone()},
        )
        layout[f"{ref}.cross_attn.out_proj.weight"] = ((d, d), _to(f"{ours}.cross_attn.proj.weight"))
        layout[f"{ref}.self_attn.in_proj_weight"] = ((3 * d, d), _to(f"{ours}.self_attn.qkv.weight"))
        layout[f"{ref}.self_attn.out_proj.weight"] = ((d, d), _to(f"{ours}.self_attn.proj.weight"))
        layout[f"{ref}.mlp.0.weight"] = ((hidden, d), _to(f"{ours}.mlp.fc1.weight"))
        layout[f"{ref}.mlp.0.bias"] = ((hidden,), _to(f"{ours}.mlp.fc1.bias"))
        layout[f"{ref}.mlp.3.weight"] = ((d, hidden), _to(f"{ours}.mlp.fc2.weight"))
        layout[f"{ref}.mlp.3.bias"] = ((d,), _to(f"{ours}.mlp.fc2.bias"))
    _norm(layout, "encoder.transformer.norm", "triplane_encoder.norm", d)

    tp, hp, wp = cfg.patch_grid
    layout["decoder.transformer.pos_embed"] = ((1, tp, hp, wp, dd), lambda t: {"decoder.pos_embed": t[0]})
    layout["decoder.transformer.patch_embed.weight"] = ((dd, 3 * c), _to("decoder.embed.weight"))
    layout["decoder.transformer.patch_embed.bias"] = ((dd,), _to("decoder.embed.bias"))
    for i in range(cfg.dec_layers):
        _block(layout, f"decoder.transformer.layers.{i}", f"decoder.blocks.{i}", dd, dec_hidden, qkv_bias=True)
    _norm(layout, "decoder.transformer.norm", "decoder.norm", dd)
    out = 3 * cfg.dec_patch_t * cfg.dec_patch_xy**2
    layout["decoder.projector.weight"] = ((out, dd), _to("decoder.head.weight"))
    layout["decoder.projector.bias"] = ((out,), _to("decoder.head.bias"))
    return layout


# ---------------------------------------------------------------------------- conversion


def _size_name(cfg: ModelConfig) -> str:
    for name, (width, depth) in SIZES.items():
        if (
            cfg.enc_dim == cfg.dec_dim == width
            and cfg.enc_layers == VIT_LAYERS
            and cfg.cross_layers == cfg.dec_layers == depth
        ):
            return name
    return (
        f"custom (enc {cfg.enc_dim}-d x {cfg.enc_layers} ViT + {cfg.cross_layers} cross-self layers, "
        f"dec {cfg.dec_dim}-d x {cfg.dec_layers} layers)"
    )


def convert_coordtok(
    obj,
    heads: int | None = None,
    enc_heads: int | None = None,
    dec_heads: int | None = None,
    frames: int | None = None,
    size: int | None = None,
    source: str | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """A reference CoordTok checkpoint as ``(config, state dict for our CoordTok, info)``.

    Args:
        obj: the loaded file (``{"model": ...}`` or a bare state dict), as
            :func:`coordtok.checkpoint.load_any` returns it (a safe load that refuses pickled code).
        heads, enc_heads, dec_heads, frames, size: hints, see :func:`infer_coordtok_config`.
        source: the file, for messages (default: the path, or "reference checkpoint").
    Returns:
        ``info`` is one line, e.g. "reference CoordTok checkpoint, CoordTok-L, 1280 tokens,
        128x128x128 clips, stage 2: LPIPS loss weights dropped (33 tensors), 16 encoder / 16 decoder
        heads (width / 64, ...; pass --heads ... if this one used another)": the heads it assumed
        and how to override them, or the ones given.
    Raises:
        CheckpointError: one line naming the key that is missing, unknown or of the wrong shape.
    """
    if isinstance(obj, (str, Path)):
        raise TypeError("convert_coordtok takes the loaded file: coordtok.checkpoint.load_any(path)")
    source = source or "reference checkpoint"
    if not is_reference_coordtok(obj):
        raise CheckpointError(
            f"{source}: not a reference CoordTok checkpoint (no 'weight_tokens_xy', 'encoder.*' "
            f"and 'decoder.transformer.*' weights)"
        )
    sd, prefix = _state_dict(obj)
    lpips = [k for k in sd if k.startswith(LPIPS_PREFIX)]
    sd = {k: v for k, v in sd.items() if not k.startswith(LPIPS_PREFIX)}
    cfg = _infer(_Reader(sd, prefix, source), heads, enc_heads, dec_heads, frames, size)
    layout = reference_layout(cfg)
    what = f"the configuration its other weights give ({_size_name(cfg)})"
    for key in sd:
        if key not in layout:
            raise CheckpointError(
                f"{source}: unknown key '{prefix + key}' for {what}; the file is not a CoordTok "
                f"checkpoint of the reference code this project reads (commit 8475272)"
            )
    state: dict[str, torch.Tensor] = {}
    for key, (shape, convert) in layout.items():
        if key not in sd:
            raise CheckpointError(
                f"{source}: key '{prefix + key}' is missing for {what}; the file is incomplete "
                f"or damaged: download or copy it again"
            )
        value = sd[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: key '{prefix + key}' holds a {type(value).__name__}, not a tensor; "
                f"not a reference CoordTok checkpoint"
            )
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: key '{prefix + key}' has shape {tuple(value.shape)}, expected "
                f"{shape} for {what}; the file is damaged or not a reference CoordTok checkpoint"
            )
        state.update(convert(value))
    stage = (
        f"stage 2: LPIPS loss weights dropped ({len(lpips)} tensors)" if lpips else "stage 1 (no LPIPS loss weights)"
    )
    assumed = heads is None and (enc_heads is None or dec_heads is None)
    how = (
        f" (width / {HEAD_DIM}, as every released size; pass --heads, --enc-heads or --dec-heads if this one "
        f"used another)"
        if assumed
        else ""
    )
    info = (
        f"reference CoordTok checkpoint, {_size_name(cfg)}, {cfg.num_latent_tokens} tokens, "
        f"{cfg.frames}x{cfg.size}x{cfg.size} clips, {stage}, {cfg.enc_heads} encoder / {cfg.dec_heads} decoder "
        f"heads{how}"
    )
    return cfg, state, info


def reference_step(obj) -> int:
    """The training step a reference file was saved at (its ``epoch`` entry counts steps), else 0."""
    step = obj.get("epoch") if isinstance(obj, dict) else None
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else 0


# This project's checkpoint format with the LayerNorm epsilon keys in config["model"].
CHECKPOINT_VERSION = 2


def to_project_checkpoint(cfg: ModelConfig, state: dict[str, torch.Tensor], info: str, step: int = 0) -> dict:
    """The dict this project's loader reads (``coordtok.train.load_tokenizer``): kind
    ``coordtok``, format version 2 (the config holds the epsilon keys), the weights, the model
    config, and ``source: "reference"`` with the ``info`` line. Save it with
    :func:`coordtok.checkpoint.atomic_save`."""
    return {
        "kind": "coordtok",
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "model": state,
        "config": {"model": dataclasses.asdict(cfg)},
        "source": "reference",
        "info": info,
    }
