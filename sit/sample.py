"""Sampling long videos: ``coordtok sample --sit-ckpt S --tokenizer-ckpt C --num N --out DIR``.

noise ``(B, tokens, C)`` -> SiT (EMA weights) + sampler -> normalized flat triplane ->
denormalize with the statistics stored in the SiT checkpoint (or ``--latent-stats``: a
``stats.json``, or the reference run's ``log.txt`` for a reference checkpoint) ->
``Triplane.unflatten`` -> ``CoordTok.decode_video`` (all coordinates of a clip at once by
default) -> uint8 frames -> ``sample_<index>.mp4`` files or one ``samples.npz`` (key ``videos``,
uint8 ``(N, T, H, W, 3)``, the input of FVD), plus one ``contact_sheet.png``.

Randomness: sample ``i`` depends only on ``(seed, i)``: its initial noise and its SDE's
Brownian increments come from its own generators on the sampling device, seeded by
``mix_seed(seed, i, tag)``. Batches are fixed by index (global batch ``b`` holds samples
``[b B, (b + 1) B)`` for ``--batch-size B``), so however many processes run, and however often a
run is resumed, each sample is computed in the same batch with the same numbers. (Another batch
size changes only float rounding; another device type draws other noise.) A class-conditional
SiT's sample ``i`` has the class ``--class`` names, or one drawn from its own generator ``(seed, i)``
(``--classes uniform|data``; ``cycle``: class ``i mod N``; ``none``: the unconditional null class);
``sampling.json`` lists every sample's label.

Process ``r`` of ``W`` samples the batches ``b = r, r + W, ...``. The folder is the run's
(``sampling.json`` is written first; the same command resumes, skipping finished samples). The
files, the shards in ``.parts/`` and what a resumed or many-process run guarantees: README.md,
"CoordTok-SiT: latent cache, training, sampling".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from coordtok.checkpoint import load_tokenizer
from coordtok.devices import inference_precision, resolve_device, resolve_inference_precision
from coordtok.errors import CoordTokError
from coordtok.fileio import atomic_path, check_writable, write_json
from coordtok.locking import HELD_SUFFIX, LOCK_NAME, FolderLock
from coordtok.loop import on_main_then_all
from coordtok.seeds import SeedTag, mix_seed
from coordtok.triplane import Triplane

from .cache import short_fingerprint, weights_fingerprint
from .checkpoint import load_sit, require_stats
from .models import TriplaneSiT
from .samplers import FIXED_GRID_METHODS, SAMPLERS, check_steps, guided_velocity
from .stats import LatentStats
from .transport import make_path


class SamplingError(CoordTokError, ValueError):
    """Bad sampling arguments or checkpoints that do not fit together (one-line message)."""


def _check_fit(sit_ckpt, tokenizer_ckpt, model: TriplaneSiT, stats: LatentStats, configs: dict, tokenizer) -> None:
    tc = tokenizer.config
    tok_grid, tok_c = tuple(tc.latent_grid), tc.latent_channels
    if tuple(model.grid) != tok_grid or model.in_channels != tok_c or stats.grid != tok_grid:
        trained_on = f" (its latents came from {configs['tokenizer_ckpt']})" if configs.get("tokenizer_ckpt") else ""
        raise SamplingError(
            f"the SiT checkpoint {sit_ckpt} generates triplanes of grid {list(model.grid)} with {model.in_channels} "
            f"channels but the tokenizer {tokenizer_ckpt} uses grid {list(tok_grid)} with {tok_c} channels; pass the "
            f"tokenizer the latents were encoded with{trained_on}"
        )
    trained = (configs.get("tokenizer") or {}).get("model")
    if trained is not None and trained != dataclasses.asdict(tc):
        diff = sorted(k for k in trained if trained.get(k) != getattr(tc, k, None))
        warnings.warn(
            f"the tokenizer {tokenizer_ckpt} differs from the one the SiT latents were encoded with "
            f"(model keys {', '.join(diff)}); samples may decode poorly",
            stacklevel=2,
        )


def _check_tokenizer_fingerprint(sit_ckpt, tokenizer_ckpt, recorded: str | None, found: str, allow: bool, log) -> None:
    """The SiT generates in the latent space of the tokenizer its cache was encoded with: refuse
    another tokenizer (same grid or not) unless the user says so; an old or reference checkpoint
    records none, which one line says."""
    if recorded is None:
        log(
            f"note: {sit_ckpt} records no tokenizer fingerprint (a reference or older checkpoint); cannot check "
            f"that {tokenizer_ckpt} is the tokenizer its latents came from"
        )
    elif recorded != found:
        what = (
            f"the tokenizer {tokenizer_ckpt} (fingerprint {short_fingerprint(found)}) is not the one the SiT "
            f"{sit_ckpt} was trained on (fingerprint {short_fingerprint(recorded)})"
        )
        if not allow:
            raise SamplingError(
                f"{what}; pass the tokenizer the latents were encoded with, or "
                f"--allow-tokenizer-mismatch to sample anyway"
            )
        log(f"warning: {what}; sampling anyway (--allow-tokenizer-mismatch)")


DEFAULT_STEPS = 250  # the paper's
MANIFEST_NAME = "sampling.json"
PARTS_NAME = ".parts"  # finished batches (npz) and the contact sheet's thumbnails, until the run completes
SHEET_FRAMES = 8  # columns of the contact sheet (coordtok.video_io.contact_sheet's default)
# atomic_path's temporary files (".<name>.<8 random>.tmp<suffix>"), _NpzWriter's scratch and
# check_writable's probe: what a killed run of ours leaves in the folder
_TEMP = re.compile(r"\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?")
_SCRATCH = re.compile(r"\.videos\.[a-z0-9_]{8}\.npy|\.write-test\.[a-z0-9_]{8}")


def _sample_name(i: int) -> str:
    return f"sample_{i:04d}.mp4"


def _sheet_frames(length: int) -> np.ndarray:
    """The frames :func:`coordtok.video_io.contact_sheet` shows of a clip (its evenly spaced
    columns); the sheet of these 8-frame thumbnails is the sheet of the whole clips."""
    return np.linspace(0, length - 1, SHEET_FRAMES).round().astype(int)


def _sample_noise(seed: int, i: int, shape, device: torch.device) -> torch.Tensor:
    """``shape``: sample ``i``'s initial noise, drawn on ``device`` from its own generator ``(seed, i)``."""
    g = torch.Generator(device=device).manual_seed(mix_seed(seed, i, SeedTag.SAMPLE_NOISE))
    return torch.randn(tuple(shape), generator=g, device=device)


CLASS_MODES = ("uniform", "data", "cycle", "none")


def sample_labels(mode: str, seed: int, num: int, num_classes: int, counts: list[int] | None = None) -> list[int]:
    """The class of each of ``num`` samples: sample ``i``'s from its own generator ``(seed, i)``
    (so it does not depend on batches or processes), ``uniform`` over the classes or ``data``:
    proportional to ``counts`` (the training latents per class); ``cycle``: class ``i mod
    num_classes`` (every class in turn: the first ``num_classes`` samples show one of each)."""
    if mode == "cycle":
        return [i % num_classes for i in range(num)]
    weights = torch.ones(num_classes) if mode == "uniform" else torch.as_tensor(counts, dtype=torch.float64)
    out = []
    for i in range(num):
        g = torch.Generator().manual_seed(mix_seed(seed, i, SeedTag.SAMPLE_LABEL))
        out.append(int(torch.multinomial(weights, 1, generator=g)))
    return out


def resolve_class(label: int | str, classes: list[str] | None, num_classes: int) -> int:
    """A class index from ``--class``: an index ``0..num_classes-1`` or a name of ``classes``."""
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < num_classes:
            raise SamplingError(f"--class {label}: the SiT has classes 0..{num_classes - 1}")
        return k
    if classes and text in classes:
        return classes.index(text)
    names = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "") if classes else None
    raise SamplingError(
        f"--class {label!r}: not a class of the SiT "
        + (f"(its classes: {names})" if names else "(its checkpoint records no class names: give an index)")
    )


def _labelling(
    model, stats, num: int, seed: int, class_label, classes: str | None, cfg_scale: float, cfg_interval, log
) -> dict | None:
    """Check the class arguments against the SiT; for a class-conditional SiT return the run's
    class settings (manifest ``run`` keys), every sample's label and the class names."""
    conditional = model.num_classes > 1
    if not conditional:
        if class_label is not None or classes is not None or cfg_scale != 1.0 or cfg_interval is not None:
            raise SamplingError(
                "--class, --classes, --cfg-scale and --cfg-interval need a class-conditional SiT; this "
                "one is unconditional (model.num_classes 1, like the released SiT-L/2)"
            )
        return None
    if class_label is not None and classes is not None:
        raise SamplingError(
            "give --class (one class for every sample) or --classes (a label drawn per sample), not both"
        )
    if classes is not None and classes not in CLASS_MODES:
        raise SamplingError(f"--classes must be one of {', '.join(CLASS_MODES)}, got {classes!r}")
    if not (cfg_scale >= 0 and math.isfinite(cfg_scale)):
        raise SamplingError(f"--cfg-scale must be a finite number >= 0, got {cfg_scale}")
    if cfg_interval is not None:
        lo, hi = (float(v) for v in cfg_interval)
        if not 0.0 <= lo <= hi <= 1.0:
            raise SamplingError(f"--cfg-interval {lo} {hi}: need 0 <= LO <= HI <= 1 (times t, 0 noise, 1 data)")
        cfg_interval = [lo, hi]
    if classes == "none":  # the null class: the model's unconditional prediction, learned by label dropout
        if class_label is not None or cfg_scale != 1.0 or cfg_interval is not None:
            raise SamplingError(
                "--classes none samples the unconditional prediction: no --class, --cfg-scale or --cfg-interval with it"
            )
        if model.config.class_dropout == 0.0:
            raise SamplingError(
                "--classes none needs a SiT trained with label dropout (model.class_dropout_prob > 0): "
                "this one's null class never was"
            )
        return None  # no labels: the network's call without a label is the null class's
    if cfg_scale != 1.0 and model.config.class_dropout == 0.0:
        log(
            "warning: this SiT was trained with model.class_dropout_prob 0, so its null class never was: guidance "
            "(--cfg-scale other than 1) extrapolates from an untrained unconditional prediction"
        )
    names = list(stats.classes) if stats.classes and len(stats.classes) == model.num_classes else None
    if class_label is None and classes is None:
        classes = "uniform"
        log(
            f"class-conditional SiT ({model.num_classes} classes) and no --class: labels drawn uniformly "
            f"(--classes uniform; --classes data for the training frequencies)"
        )
    if classes == "data" and not (names and stats.class_counts):
        raise SamplingError(
            "--classes data needs the training class frequencies, which this SiT checkpoint does not "
            "record; use --classes uniform or --class"
        )
    if class_label is not None:
        k = resolve_class(class_label, names, model.num_classes)
        labels = [k] * num
    else:
        k = None
        labels = sample_labels(classes, seed, num, model.num_classes, stats.class_counts)
    return {
        "run": {"class": k, "classes": classes, "cfg_scale": float(cfg_scale), "cfg_interval": cfg_interval},
        "labels": labels,
        "classes": names or [str(c) for c in range(model.num_classes)],
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, "sample part") as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _ours(name: str, num: int, fmt: str) -> bool:
    """Whether a folder entry is one that a sampling run of ``num`` videos in ``fmt`` writes."""
    if name in (MANIFEST_NAME, "contact_sheet.png", PARTS_NAME, LOCK_NAME, LOCK_NAME + HELD_SUFFIX):
        return True
    if _SCRATCH.fullmatch(name):
        return True
    temp = _TEMP.fullmatch(name)
    if temp:
        return not _TEMP.fullmatch(temp["base"]) and _ours(temp["base"], num, fmt)
    if fmt == "npz":
        return name == "samples.npz"
    index = re.fullmatch(r"sample_(\d+)\.mp4", name)
    return bool(index) and int(index[1]) < num and name == _sample_name(int(index[1]))


def _claim_folder(out_dir: Path, manifest: dict, log, claim: bool = True) -> None:
    """Make ``out_dir`` this run's (the caller holds its lock): a new or empty folder gets the
    manifest; a folder with the same manifest is this run, resumed (the temporary files of a killed
    run are removed); a folder with another manifest, or with files the sampler does not write, is
    refused, so that two runs' samples never mix and no user file is overwritten. ``claim=False``
    only checks (before the lock file is made)."""
    path = out_dir / MANIFEST_NAME
    run = manifest["run"]
    if path.exists():
        try:
            old = json.loads(path.read_text())["run"]
            if not isinstance(old, dict):
                raise ValueError("not a sampling manifest")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SamplingError(
                f"{path}: unreadable sampling manifest ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                f"choose another --out"
            ) from None
        diff = [k for k in sorted(set(old) | set(run)) if old.get(k) != run.get(k)]
        if diff:
            said = ", ".join(f"{k} {old.get(k)!r} there, {run.get(k)!r} now" for k in diff[:3] if k != "sample_config")
            raise SamplingError(
                f"{out_dir} holds the samples of another sampling run ({MANIFEST_NAME} differs: "
                f"{said or 'sample_config'}{', ...' if len(diff) > 3 else ''}); choose another --out, "
                f"or repeat that run's arguments to finish it"
            )
    entries = sorted(p.name for p in out_dir.iterdir())
    foreign = [
        n
        for n in entries
        if not _ours(n, run["num"], run["format"])
        or (not path.exists() and n not in (LOCK_NAME, LOCK_NAME + HELD_SUFFIX))
    ]
    if foreign:
        raise SamplingError(
            f"{out_dir} holds files that this sampling run did not write ({', '.join(foreign[:3])}"
            f"{f' and {len(foreign) - 3} more' if len(foreign) > 3 else ''}"
            f"{'' if path.exists() else f'; no {MANIFEST_NAME}'}); choose an empty or new --out"
        )
    if not claim:
        return
    stale = [n for n in entries if _TEMP.fullmatch(n) or _SCRATCH.fullmatch(n)]
    parts = out_dir / PARTS_NAME
    if parts.is_dir():
        stale += [f"{PARTS_NAME}/{p.name}" for p in parts.iterdir() if _TEMP.fullmatch(p.name)]
    for name in stale:  # a killed run's unfinished files: ours, and nobody else is writing here
        (out_dir / name).unlink(missing_ok=True)
    if path.exists():
        log(f"resuming the sampling run in {out_dir} (same {MANIFEST_NAME}); finished samples are skipped")
    else:
        write_json(path, manifest, what="sampling manifest")


class _NpzWriter:
    """``samples.npz`` (key ``videos``) filled batch by batch through a memory-mapped scratch
    ``.npy``, so 2048 clips of 128 x 128 x 128 never sit in RAM at once; the final file appears
    atomically (:func:`coordtok.fileio.atomic_path`) and the scratch file is removed."""

    def __init__(self, path: Path, shape: tuple, extra: dict[str, np.ndarray] | None = None):
        self.path, self.extra = path, extra or {}
        fd, npy = tempfile.mkstemp(prefix=".videos.", suffix=".npy", dir=path.parent)
        os.close(fd)
        self.npy = Path(npy)
        self.arr = np.lib.format.open_memmap(self.npy, mode="w+", dtype=np.uint8, shape=shape)

    def put(self, first: int, videos: np.ndarray) -> None:
        self.arr[first : first + len(videos)] = videos

    def close(self) -> Path:
        self.arr.flush()
        del self.arr
        with atomic_path(self.path, "sample file") as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.write(self.npy, arcname="videos.npy")
                for name, array in self.extra.items():  # small arrays beside the videos (labels, class names)
                    buf = io.BytesIO()
                    np.save(buf, array)
                    zf.writestr(f"{name}.npy", buf.getvalue())
        self.abort()
        return self.path

    def abort(self) -> None:
        self.arr = None
        with contextlib.suppress(FileNotFoundError):
            self.npy.unlink()


def sample_videos(
    sit_ckpt: str | Path,
    tokenizer_ckpt: str | Path,
    num: int,
    out_dir: str | Path,
    sampler: str = "sde",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    fmt: str = "mp4",
    device: str | torch.device | None = None,
    frames_per_chunk: int | None = None,
    fps: float = 25,
    contact_rows: int = 16,
    progress: bool = True,
    latent_stats: str | Path | None = None,
    heads: int | None = None,
    precision: str = "auto",
    allow_tokenizer_mismatch: bool = False,
    class_label: int | str | None = None,
    classes: str | None = None,
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
) -> dict:
    """Generate ``num`` videos and write them to ``out_dir``.

    Args:
        sit_ckpt: a SiT checkpoint (or run folder); its EMA weights and normalization stats are used.
        tokenizer_ckpt: the CoordTok checkpoint whose latents the SiT was trained on (grid and
            channels are checked against the SiT checkpoint).
        sampler: ``sde`` (the paper's Euler-Maruyama), ``heun_sde`` or ``ode`` (torchdiffeq with
            the checkpoint's ``sample.ode_method``, dopri5 by default: ``steps`` then only
            matters for fixed-grid methods).
        steps: sampler steps (velocity calls for ``sde``); None: 250, the paper's. An adaptive
            ``ode`` method picks its own steps: a given ``steps`` is then ignored, which one line says.
        fmt: ``mp4`` -> ``sample_<index>.mp4`` per video; ``npz`` -> ``samples.npz`` with ``videos``
            uint8 ``(N, T, H, W, 3)``. Both write ``contact_sheet.png`` (first ``contact_rows`` videos).
        frames_per_chunk: decode that many frames at a time (bounded memory) instead of the whole
            clip's coordinates at once.
        latent_stats: a ``stats.json`` or a reference run's ``log.txt`` with the latent
            normalization statistics (needed for a reference SiT checkpoint, which holds none).
        heads: attention heads of a reference SiT whose arguments do not name them.
        precision: :data:`coordtok.devices.INFERENCE_PRECISIONS`; ``auto``: TF32 on CUDA (bf16
            autocast when the SiT was trained in bf16), fp32 on a CPU.
        allow_tokenizer_mismatch: sample with a tokenizer whose weights' fingerprint differs from
            the one the SiT checkpoint records (refused otherwise).
        class_label: a class-conditional SiT (``model.num_classes > 1``): every sample of this class
            (its index, or its name from the checkpoint's class list).
        classes: ``uniform`` or ``data`` (the training latents' class frequencies): sample ``i``'s
            class drawn from its own generator ``(seed, i)`` (an FVD run); ``cycle``: class ``i mod
            num_classes``; ``none``: unconditional samples (the null class, which label dropout
            trained; no labels recorded); the default for a conditional SiT without ``class_label``
            is ``uniform``.
        cfg_scale: classifier-free guidance scale (1: the conditional model, 0: the unconditional
            one); see :func:`sit.samplers.guided_velocity` (every channel of every plane, one
            batched network call per velocity evaluation, counted as one).
        cfg_interval: ``(lo, hi)``: guide only at times ``lo <= t <= hi`` (``t = 0`` noise, 1 data).

    A conditional run records every sample's label: ``sampling.json``'s ``labels`` (and ``classes``,
    the names) and, for npz, the ``labels`` and ``classes`` arrays of ``samples.npz``.

    The folder gets ``sampling.json`` first; the same call again resumes (finished samples are
    skipped), another run's folder or one holding other files is refused (module docstring). Under
    ``accelerate launch`` the processes share the batches and write what one process writes.

    Returns ``{"num", "out_dir", "files" (every sample file of the run), "contact_sheet", "sit_step",
    "sampler", "steps" (None for an adaptive ode), "seed", "precision", "processes", "skipped" (samples
    found finished), "manifest"}``.
    """
    from accelerate import Accelerator

    from coordtok.video_io import contact_sheet, to_uint8, write_mp4, write_png

    if num < 1 or batch_size < 1:
        raise SamplingError(f"--num and --batch-size must be >= 1, got {num} and {batch_size}")
    if fmt not in ("mp4", "npz"):
        raise SamplingError(f"--format must be mp4 or npz, got {fmt!r}")
    if sampler not in SAMPLERS:
        raise SamplingError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps_given = steps is not None
    steps = DEFAULT_STEPS if steps is None else steps
    check_steps(steps, getattr(SAMPLERS[sampler], "min_steps", 1), "--steps")  # SDE grids need two points
    if frames_per_chunk is not None and frames_per_chunk < 1:
        raise SamplingError(f"--frames-per-chunk must be >= 1, got {frames_per_chunk}")
    if not fps > 0:
        raise SamplingError(f"--fps must be positive, got {fps}")
    # Under `accelerate launch` every process takes its share of the batches (one process: all).
    procs = Accelerator()  # (a bare PartialState does not join the process group on CPUs)
    world, is_main = procs.num_processes, procs.is_main_process
    if world > 1:  # each process on its own device (accelerate's); --device may only name its type
        if device is not None and torch.device(device).type != procs.device.type:
            raise SamplingError(
                f"--device {device}: under accelerate launch every process samples on its own "
                f"{procs.device.type} device; drop --device (or launch with ACCELERATE_USE_CPU=1)"
            )
        device = procs.device
    else:
        device = resolve_device(device)
    log = (lambda msg: tqdm.write(msg, file=sys.stderr)) if is_main else (lambda msg: None)
    out_dir = check_writable(out_dir, "sample folder", create=False)

    model, stats, configs = load_sit(sit_ckpt, latent_stats=latent_stats, heads=heads, log=log)
    stats = require_stats(stats, sit_ckpt)
    tokenizer, _ = load_tokenizer(tokenizer_ckpt, log=log)
    _check_fit(sit_ckpt, tokenizer_ckpt, model, stats, configs, tokenizer)
    tokenizer_fp = weights_fingerprint(tokenizer)
    _check_tokenizer_fingerprint(
        sit_ckpt, tokenizer_ckpt, configs.get("tokenizer_fingerprint"), tokenizer_fp, allow_tokenizer_mismatch, log
    )
    precision = resolve_inference_precision(precision, device.type, configs["sit"].train.mixed_precision, log)
    s = configs["sit"].sample
    adaptive = sampler == "ode" and s.ode_method not in FIXED_GRID_METHODS
    labelling = _labelling(model, stats, num, seed, class_label, classes, cfg_scale, cfg_interval, log)
    if adaptive and steps_given:
        log(
            f"note: --steps {steps} is ignored: --sampler ode uses {s.ode_method}, an adaptive method that picks its "
            f"own steps (sample.atol {s.atol}, sample.rtol {s.rtol} in the SiT config)"
        )
    manifest = {
        "run": {
            "seed": seed,
            "num": num,
            "sampler": sampler,
            "steps": None if adaptive else steps,
            "format": fmt,
            "batch_size": batch_size,
            "frames_per_chunk": frames_per_chunk,
            "fps": fps if fmt == "mp4" else None,
            "precision": precision,
            "device": device.type,
            "sample_config": dataclasses.asdict(s),
            "path": configs["sit"].train.path,
            "sit_fingerprint": weights_fingerprint(model),
            "tokenizer_fingerprint": tokenizer_fp,
            "stats": hashlib.sha1(json.dumps(stats.to_dict(), sort_keys=True).encode()).hexdigest(),
        },
        "sit_ckpt": str(Path(configs["path"]).resolve()),
        "sit_step": configs["step"],
        "tokenizer_ckpt": str(Path(tokenizer_ckpt).resolve()),
    }
    if labelling is not None:  # (an unconditional run's manifest is what it always was: old runs resume)
        manifest["run"].update(labelling["run"])
        manifest.update(labels=labelling["labels"], classes=labelling["classes"])

    with contextlib.ExitStack() as held:

        def claim_folder():  # main process: create, lock, check and claim the folder with the manifest
            if out_dir.is_dir():  # a folder that is not ours gets no lock file either
                _claim_folder(out_dir, manifest, log, claim=False)
            check_writable(out_dir, "sample folder")  # now create it: the inputs fit together
            held.enter_context(FolderLock(out_dir, "sampling run", "choose another --out", log))
            _claim_folder(out_dir, manifest, log)

        on_main_then_all(procs, claim_folder)
        return _sample_into(
            out_dir,
            model,
            tokenizer,
            stats,
            configs,
            manifest,
            procs,
            device,
            log,
            progress,
            contact_rows,
            to_uint8,
            contact_sheet,
            write_mp4,
            write_png,
        )


def _sample_into(
    out_dir: Path,
    model,
    tokenizer,
    stats: LatentStats,
    configs: dict,
    manifest: dict,
    procs,
    device,
    log,
    progress: bool,
    contact_rows: int,
    to_uint8,
    contact_sheet,
    write_mp4,
    write_png,
) -> dict:
    """The sampling loop of :func:`sample_videos` in a claimed folder: this process's batches,
    skipping finished ones; then the main process merges (npz), writes the sheet and cleans up."""
    run = manifest["run"]
    num, batch_size, fmt, seed, sampler = run["num"], run["batch_size"], run["format"], run["seed"], run["sampler"]
    steps, frames_per_chunk, fps, precision = run["steps"], run["frames_per_chunk"], run["fps"], run["precision"]
    rank, world, is_main = procs.process_index, procs.num_processes, procs.is_main_process
    s = configs["sit"].sample
    path = make_path(configs["sit"].train.path)
    tc = tokenizer.config
    shape = (stats.per_token()[0].shape[1], stats.channels)
    parts = out_dir / PARTS_NAME
    merged = out_dir / "samples.npz"
    sheet_path = out_dir / "contact_sheet.png"
    rows = min(contact_rows, num)

    def thumb(i: int) -> Path:
        return parts / f"thumb-{i:06d}.npy"

    def batch_file(b: int) -> Path:
        return parts / f"batch-{b:06d}.npy"

    def missing(b: int) -> list[int]:
        """The samples of global batch ``b`` still to write (all of them or none for npz)."""
        first, last = b * batch_size, min(num, (b + 1) * batch_size)
        if fmt == "npz":
            return [] if merged.is_file() or batch_file(b).is_file() else list(range(first, last))
        sheet_done = sheet_path.is_file() or all(thumb(i).is_file() for i in range(first, min(last, rows)))
        return [i for i in range(first, last) if not (out_dir / _sample_name(i)).is_file() or not sheet_done]

    num_batches = (num + batch_size - 1) // batch_size
    mine = list(range(rank, num_batches, world))  # global batch b: samples [b B, (b + 1) B), on rank b % world
    todo = {b: m for b in mine if (m := missing(b))}
    done = num - sum(len(missing(b)) for b in range(num_batches))
    # network calls per batch as the sampler states them (None: adaptive; counted on the first batch)
    per_batch = SAMPLERS[sampler].calls(steps) if steps is not None else None
    log(
        f"sampling {num} videos ({sampler}, "
        + (
            f"{steps} steps, {per_batch} network calls per batch"
            if per_batch
            else "steps " + ("adaptive" if steps is None else str(steps))
        )
        + f") in {num_batches} batches of up to "
        f"{batch_size} on {world} process{'es' if world > 1 else ''}"
        + (f"; {done} already written in {out_dir}, skipped" if done else "")
        + f"; device {device}, {precision}"
    )
    model.to(device)
    tokenizer.to(device).eval().requires_grad_(False)
    calls = 0
    bar = tqdm(
        total=per_batch * len(todo) if per_batch else None,
        disable=not (progress and is_main),
        desc="sample (network calls)",
        unit="call",
        dynamic_ncols=True,
        file=sys.stderr,
    )

    def net(x, t, y=None):  # every network call, counted (a guided call on [cond; null] is one)
        nonlocal calls
        v = model(x, t, y)
        calls += 1
        bar.update(1)
        return v

    labels = manifest.get("labels")

    def run_sampler(noise: torch.Tensor, generators: list[torch.Generator], indices: list[int]) -> torch.Tensor:
        velocity = net
        if labels is not None:
            y = torch.tensor([labels[i] for i in indices], dtype=torch.long, device=noise.device)
            velocity = guided_velocity(net, y, model.null_class, run["cfg_scale"], run["cfg_interval"])
        # one call for every registered sampler: each takes the keyword arguments it knows
        return SAMPLERS[sampler](
            velocity,
            noise,
            num_steps=steps if steps is not None else 1,
            diffusion_norm=s.diffusion_norm,
            last_step_size=s.last_step_size,
            generator=generators,
            path=path,
            method=s.ode_method,
            atol=s.atol,
            rtol=s.rtol,
        )

    try:
        with torch.no_grad(), inference_precision(precision, device.type):
            for k, (b, want) in enumerate(todo.items()):
                first, last = b * batch_size, min(num, (b + 1) * batch_size)
                indices = list(range(first, last))  # the whole batch, so a sample's batch never changes
                noise = torch.stack([_sample_noise(seed, i, shape, device) for i in indices])
                generators = [
                    torch.Generator(device=device).manual_seed(mix_seed(seed, i, SeedTag.SAMPLE_SDE)) for i in indices
                ]
                x = run_sampler(noise, generators, indices)
                if k == 0 and calls * len(todo) != bar.total:  # counted: now the ETA is known
                    bar.total = calls * len(todo)
                    bar.refresh()
                triplanes = Triplane.unflatten(stats.denormalize(x.float()), tuple(stats.grid))
                videos = []
                for j, i in enumerate(indices):  # decoded one clip at a time, in frame chunks: bounded memory
                    video = to_uint8(tokenizer.decode_video(triplanes[j : j + 1], None, frames_per_chunk))[0]
                    if i < rows and not thumb(i).is_file():
                        _save_npy(thumb(i), video[_sheet_frames(len(video))])
                    videos.append(video)
                if fmt == "npz":
                    _save_npy(batch_file(b), np.stack(videos))
                else:
                    for i, video in zip(indices, videos):
                        if i in want and not (out_dir / _sample_name(i)).is_file():
                            write_mp4(out_dir / _sample_name(i), video, fps=fps)
    finally:
        bar.close()
    procs.wait_for_everyone()
    if is_main:
        _finish(
            out_dir,
            num,
            fmt,
            rows,
            num_batches,
            batch_size,
            (tc.frames, tc.size, tc.size, 3),
            thumb,
            batch_file,
            contact_sheet,
            write_png,
            log,
            labels=labels,
            classes=manifest.get("classes"),
        )
    procs.wait_for_everyone()
    files = [str(merged)] if fmt == "npz" else [str(out_dir / _sample_name(i)) for i in range(num)]
    return {
        "num": num,
        "out_dir": str(out_dir),
        "files": files,
        "contact_sheet": str(sheet_path) if sheet_path.is_file() else None,
        "sit_step": configs["step"],
        "sampler": sampler,
        "steps": steps,
        "seed": seed,
        "precision": precision,
        "processes": world,
        "skipped": done,
        "manifest": str(out_dir / MANIFEST_NAME),
    } | ({"labels": manifest["labels"], "cfg_scale": run["cfg_scale"]} if "labels" in manifest else {})


def _finish(
    out_dir: Path,
    num: int,
    fmt: str,
    rows: int,
    num_batches: int,
    batch_size: int,
    video_shape: tuple,
    thumb,
    batch_file,
    contact_sheet,
    write_png,
    log,
    labels=None,
    classes=None,
) -> None:
    """Main process, every batch written: the contact sheet from the thumbnails, ``samples.npz``
    from the batch files (npz; with ``labels`` and ``classes`` arrays for a class-conditional run),
    then this run's scratch files removed."""
    sheet_path, merged, parts = out_dir / "contact_sheet.png", out_dir / "samples.npz", out_dir / PARTS_NAME
    if not sheet_path.is_file():
        if all(thumb(i).is_file() for i in range(rows)):
            write_png(sheet_path, contact_sheet([np.load(thumb(i)) for i in range(rows)]))
        else:
            log(f"note: {out_dir} has no contact sheet and its thumbnails are gone; the samples are complete")
    if fmt == "npz" and not merged.is_file():
        extra = (
            {}
            if labels is None
            else {"labels": np.asarray(labels, dtype=np.int64), "classes": np.asarray(classes, dtype=str)}
        )
        npz = _NpzWriter(merged, (num, *video_shape), extra)
        try:
            for b in range(num_batches):
                npz.put(b * batch_size, np.load(batch_file(b), mmap_mode="r"))
            npz.close()
        finally:
            if npz.arr is not None:
                npz.abort()
    if parts.is_dir():
        for p in list(parts.glob("thumb-*.npy")) + list(parts.glob("batch-*.npy")) + list(parts.glob(".*.tmp.npy")):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            parts.rmdir()  # kept if it holds anything else
