"""Reconstruction quality: one clip (``coordtok reconstruct``) and many (``coordtok eval-recon``).

For ``num_clips`` random clips (seeded: random videos, random windows, as the FVD protocol draws
real clips) every clip is reconstructed the way its tokenizer does it (:mod:`eval.tokenizers`:
CoordTok at once, or in blended overlapping windows when the clip is longer than its own; the
conv-3D baselines by chunks), then measured:

* PSNR / SSIM / LPIPS per frame, averaged over frames, then over clips ([0, 1] pixels);
* rFVD between the real and reconstructed clips, on the whole clips and on their 16-frame
  sub-clips (each 128-frame clip cut into 8), with an I3D detector;
* the seam jump (:mod:`eval.seams`): frame-to-frame change at chunk boundaries against within
  chunks, beside the token count spent per clip;
* optionally the analysis metrics (dynamics / frequency magnitude against PSNR).

Clips are split over processes (``accelerate launch``); features and per-clip metrics are
gathered on the main process, which writes ``recon.json``, ``recon.md`` and a few side-by-side
videos. The output folder is checked writable before any clip is touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from coordtok.config import ConfigError, DataConfig
from coordtok.fileio import check_writable, write_json, write_text
from coordtok.lpips import try_lpips
from coordtok.video_io import side_by_side, to_uint8, write_mp4

from .metrics import video_metrics
from .seams import seam_jump
from .tokenizers import CoordTokReconstructor, Reconstructor, load_reconstructor, protocol_variants


def _to_model(clips_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` -> float ``(B, 3, T, H, W)`` in [-1, 1], on the clips' device."""
    from coordtok.data import to_model_video

    return to_model_video(rearrange(clips_u8, "b t h w c -> b c t h w"))


@torch.no_grad()
def evaluate_clip(
    tokenizer,
    video: torch.Tensor,
    num_frames: int,
    out_path: str | Path | None,
    device="cpu",
    frames_per_chunk: int | None = None,
    vgg_path: str | None = None,
    lpips=None,
    fps: float = 25,
) -> dict:
    """Reconstruct ``video`` ``(3, T, H, W)`` in [-1, 1] with ``tokenizer`` (a :class:`CoordTok`
    or a :class:`Reconstructor`); PSNR / SSIM / LPIPS over its valid frames and the seam jump.

    Writes ``ground truth | reconstruction`` to ``out_path`` (mp4) when given.
    """
    rec_model = (
        tokenizer if isinstance(tokenizer, Reconstructor) else CoordTokReconstructor(tokenizer, frames_per_chunk)
    )
    rec_model.to(device)
    nf = int(num_frames)
    x = video[None, :, :nf].to(device)
    rec, boundaries = rec_model.reconstruct(x)
    note = None
    if lpips is None:
        lpips, note = try_lpips(vgg_path, device)
    m = video_metrics(x, rec, lpips=lpips)
    out = {
        "psnr": float(m["psnr"][0]),
        "ssim": float(m["ssim"][0]),
        "lpips": float(m["lpips"][0]) if "lpips" in m else None,
        "tokens": rec_model.tokens(nf),
        "tokenizer": rec_model.name,
    }
    if getattr(rec_model, "token_channels", None):  # a diffusers autoencoder: floats per latent position
        out["token_channels"] = rec_model.token_channels
    if nf > 17:
        seams = seam_jump(x.cpu(), rec.cpu(), boundaries or _reference_boundaries(nf))
        out.update(
            {"seam_boundary": seams["boundary"], "seam_within": seams["within"], "seam_difference": seams["difference"]}
        )
    if note:
        out["lpips_note"] = note
    if out_path is not None:
        write_mp4(out_path, side_by_side(to_uint8(x[0].cpu()), to_uint8(rec[0].cpu())), fps=fps)
    return out


def _reference_boundaries(frames: int) -> list[int]:
    from coordtok.chunking import chunk_boundaries

    return chunk_boundaries(frames)


def eval_recon(
    ckpt,
    real,
    out_dir,
    num_clips: int = 10000,
    seed: int = 0,
    kind: str | None = None,
    split: str | None = None,
    fold: int = 1,
    detector: str | None = "videogpt",
    detector_path=None,
    sub_clip_frames: int = 16,
    batch_size: int = 1,
    frames: int | None = None,
    frames_per_chunk: int | None = None,
    vgg_path=None,
    write_videos: int = 4,
    analysis: bool = False,
    progress: bool = True,
    device=None,
    hints: dict | None = None,
    precision: str = "auto",
    num_workers: int = 2,
    **options,
) -> dict:
    """Evaluate the tokenizer(s) in ``ckpt`` (a checkpoint, or a list of them: one table) on the
    same ``num_clips`` random clips of ``real``; see the module docstring.

    ``frames``: clip length (default: the first tokenizer's, 128 for the chunk tokenizers).
    ``options``: the chunk tokenizers' protocol switches (:func:`eval.tokenizers.load_reconstructor`);
    a switch left unset evaluates both settings (ProMAG with and without blending, REGEN with and
    without latent extension). ``precision``: :data:`coordtok.devices.INFERENCE_PRECISIONS` (``auto``:
    TF32 on CUDA, fp32 on a CPU) of the tokenizers and the detector; the metrics are fp32 always.
    Returns the one result, or ``{"results": [...]}`` for several.
    """
    from accelerate import Accelerator

    from coordtok.devices import inference_precision, resolve_device, resolve_inference_precision

    from .fvd import real_clips

    if num_clips < 1 or batch_size < 1:
        raise ConfigError(f"--num-clips and --batch-size must be >= 1, got {num_clips} and {batch_size}")
    ckpts = [ckpt] if isinstance(ckpt, (str, Path)) else list(ckpt)
    out = Path(out_dir)
    accelerator = Accelerator(cpu=resolve_device(device).type == "cpu")
    if accelerator.is_main_process:
        check_writable(out, "evaluation folder")
    device = accelerator.device
    say = (lambda msg: print(msg, file=sys.stderr)) if accelerator.is_main_process else None
    precision = resolve_inference_precision(precision, device.type, log=say)
    toks = [(c, tok.to(device)) for c in ckpts for tok in variants(c, frames_per_chunk, hints, options)]
    frames = frames or toks[0][1].default_frames
    fixed = {tok.size for _, tok in toks if not getattr(tok, "any_size", False)}
    for _, tok in toks:  # a diffusers autoencoder takes any multiple of its spatial factor: the others' side
        if getattr(tok, "any_size", False) and len(fixed) == 1:
            tok.at_size(next(iter(fixed)))
    sizes = {tok.size for _, tok in toks}
    if len(sizes) > 1:
        raise ConfigError(
            f"the tokenizers take different frame sizes ({sorted(sizes)}): compare tokenizers of one resolution"
        )
    for _, tok in toks:
        tok.check_frames(frames)
    det = None
    if detector:
        from .i3d import load_detector

        det = load_detector(detector, detector_path, device=device)
    lpips, lpips_note = try_lpips(vgg_path, device)
    data = real if isinstance(real, DataConfig) else DataConfig.for_root(real, kind, split=split, fold=fold)
    clips = real_clips(data, frames, sizes.pop(), num_clips, seed)
    results = []
    for k, (c, tok) in enumerate(toks):
        folder = out if len(toks) == 1 else out / f"{k:02d}-{_slug(tok.name)}"
        with inference_precision(precision, device.type):
            results.append(
                _evaluate(
                    accelerator,
                    c,
                    tok,
                    clips,
                    frames,
                    folder,
                    seed,
                    det,
                    lpips,
                    lpips_note,
                    sub_clip_frames,
                    batch_size,
                    write_videos,
                    analysis,
                    progress,
                    precision,
                    num_workers,
                )
            )
    if not accelerator.is_main_process:
        return {}
    if len(results) > 1:
        write_json(out / "recon.json", {"results": results}, what="evaluation result")
    write_text(out / "recon.md", markdown_table(results, frames, sub_clip_frames), what="evaluation table")
    return (
        results[0]
        if len(results) == 1
        else {"results": [{k: v for k, v in r.items() if k != "analysis"} for r in results]}
    )


def variants(ckpt, frames_per_chunk=None, hints=None, options=None) -> list[Reconstructor]:
    """The tokenizer in ``ckpt`` under each protocol the comparison reports
    (:func:`eval.tokenizers.protocol_variants`: its paper's, and for ProMAG without blending, for
    REGEN without latent extension), except the switches ``options`` fixes."""
    options = dict(options or {})
    chosen = [{**v, **options} for v in protocol_variants(ckpt)]
    chosen = [dict(t) for t in dict.fromkeys(tuple(sorted(v.items())) for v in chosen)]  # fixed switches: one each
    return [load_reconstructor(ckpt, frames_per_chunk=frames_per_chunk, hints=hints, **v) for v in chosen]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:48]


def _evaluate(
    accelerator,
    ckpt,
    tok: Reconstructor,
    clips,
    frames: int,
    out: Path,
    seed: int,
    det,
    lpips,
    lpips_note,
    sub_clip_frames: int,
    batch_size: int,
    write_videos: int,
    analysis: bool,
    progress: bool,
    precision: str,
    num_workers: int = 0,
) -> dict:
    """One tokenizer on the clips (this process's share); the main process gathers, writes and
    returns the result. ``num_workers`` processes decode the real clips ahead of the
    reconstruction (uint8 batches, pinned for a GPU; 0: decoded here, between batches)."""
    from accelerate.utils import gather_object

    from .analysis import dynamics_magnitude, frequency_magnitude, write_analysis
    from .fvd import fvd_from_features, split_clips

    device = accelerator.device
    mine = list(range(accelerator.process_index, len(clips), accelerator.num_processes))
    rows, feats = [], {"real": [], "fake": [], "real_sub": [], "fake_sub": []}
    bar = tqdm(
        total=len(mine),
        disable=not (progress and accelerator.is_main_process),
        desc=tok.name[:40],
        unit="clip",
        file=sys.stderr,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(clips, mine),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for first, real_u8 in zip(range(0, len(mine), batch_size), loader):  # real_u8: (B, T, H, W, 3)
        idx = mine[first : first + batch_size]
        video = _to_model(real_u8.to(device, non_blocking=True))
        rec, boundaries = tok.reconstruct(video)
        m = video_metrics(video, rec, lpips=lpips)
        fake_u8 = torch.from_numpy(to_uint8(rec.cpu()))
        seams = seam_jump(real_u8, fake_u8, boundaries or _reference_boundaries(frames)) if frames > 17 else None
        if det is not None:
            feats["real"].append(det.features(real_u8))
            feats["fake"].append(det.features(fake_u8))
            if frames >= 2 * sub_clip_frames:
                feats["real_sub"].append(det.features(split_clips(real_u8, sub_clip_frames)))
                feats["fake_sub"].append(det.features(split_clips(fake_u8, sub_clip_frames)))
        for b, i in enumerate(idx):
            row = {"clip": i, **{k: float(v[b]) for k, v in m.items()}}
            if seams is not None:
                row.update({f"seam_{k}": seams["per_clip"][k][b] for k in ("boundary", "within", "difference")})
            if analysis:
                row["dynamics"] = dynamics_magnitude(real_u8[b])
                row["frequency"] = frequency_magnitude(real_u8[b])
            rows.append(row)
            if i < write_videos and accelerator.is_main_process:
                write_mp4(out / f"recon_{i:04d}.mp4", side_by_side(real_u8[b].numpy(), fake_u8[b].numpy()))
        bar.update(len(idx))
    bar.close()

    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    if det is not None and accelerator.num_processes > 1:
        feats = {k: gather_object([np.concatenate(v)] if v else []) for k, v in feats.items()}
    if not accelerator.is_main_process:
        return {}
    rows.sort(key=lambda r: r["clip"])
    keys = [k for k in ("psnr", "ssim", "lpips", "seam_boundary", "seam_within", "seam_difference") if k in rows[0]]
    result = {
        "checkpoint": str(ckpt),
        "tokenizer": tok.name,
        "tokens": tok.tokens(frames),
        "clips": len(rows),
        "frames": frames,
        "size": tok.size,
        "seed": seed,
        "precision": precision,
        **{k: float(np.mean([r[k] for r in rows])) for k in keys},
    }
    if getattr(tok, "token_channels", None):  # a diffusers autoencoder: floats per latent position
        result["token_channels"] = tok.token_channels
    if "lpips" not in result:
        result["lpips"] = None
        result["lpips_note"] = lpips_note
    if det is not None:
        cat = {k: np.concatenate(v) for k, v in feats.items() if len(v)}
        result["detector"] = det.name
        result[f"rfvd_{frames}"] = fvd_from_features(cat["real"], cat["fake"])
        if "real_sub" in cat:
            result[f"rfvd_{sub_clip_frames}"] = fvd_from_features(cat["real_sub"], cat["fake_sub"])
    write_json(out / "recon.json", {**result, "per_clip": rows}, what="evaluation result")
    if analysis:
        result["analysis"] = write_analysis(
            [
                {
                    "name": f"clip_{r['clip']:05d}",
                    "psnr": r["psnr"],
                    "dynamics": r["dynamics"],
                    "frequency": r["frequency"],
                }
                for r in rows
            ],
            out,
        )
    return result


def markdown_table(results: list[dict], frames: int, sub: int = 16) -> str:
    """One row per evaluated tokenizer: tokens, rFVD, PSNR, SSIM, LPIPS and the seam jump."""
    fmt = lambda v, f=".2f": "n/a" if v is None or v != v else format(v, f)  # noqa: E731
    lines = [f"# Reconstruction of {frames}-frame clips", ""]
    if results:
        r0 = results[0]
        lines += [f"{r0['clips']} random {frames}-frame clips at {r0['size']}x{r0['size']} (seed {r0['seed']}).", ""]
    lines += [
        f"| tokenizer | tokens | rFVD ({frames} f) | rFVD ({sub}-f sub-clips) | PSNR | SSIM | LPIPS | "
        f"seam jump at boundaries | within chunks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tokens = f"{r['tokens']} x {r['token_channels']}" if r.get("token_channels") else r["tokens"]
        lines.append(
            f"| {r['tokenizer']} | {tokens} | {fmt(r.get(f'rfvd_{frames}'), '.1f')} | "
            f"{fmt(r.get(f'rfvd_{sub}'), '.1f')} | {fmt(r['psnr'])} | {fmt(r['ssim'], '.3f')} | "
            f"{fmt(r['lpips'], '.3f')} | {fmt(r.get('seam_boundary'), '.4f')} | "
            f"{fmt(r.get('seam_within'), '.4f')} |"
        )
    lines += [
        "",
        "Tokens: latent positions per clip (x floats per position, for the diffusers autoencoders).",
        "",
        "Seam jump: mean |x_t - x_(t-1)| of the reconstruction minus that of the ground truth, at the "
        "frames where chunks meet and within chunks (a tokenizer without chunks is measured at the same "
        "frames); equal values mean no visible seams.",
        "",
    ]
    return "\n".join(lines)
