"""The demo's folder: locked while a demo runs, and ``--fresh`` deletes exactly the files the demo
wrote (its manifest), never a user's file beside them."""

import json
import os

from coordtok.cli import main
from coordtok.locking import FolderLock


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("coordtok") and "error:" in last and "Traceback" not in err, err
    return last


def test_a_second_demo_on_a_running_demos_folder_is_one_line_and_deletes_nothing(tmp_path, capsys):
    from eval.demo import prepare_folder

    out = tmp_path / "demo"
    prepare_folder(out, fresh=False)
    ckpt = out / "runs" / "tokenizer" / "ckpt-0000100.pt"  # the running demo's checkpoint
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    with FolderLock(out, "demo", "choose another --out", lambda m: None):  # a demo is running in `out`
        assert main(["demo", "--quick", "--fresh", "--out", str(out)]) == 2
        line = one_line(capsys)
        assert f"another demo (pid {os.getpid()} " in line and "choose another --out" in line
        assert ckpt.read_bytes() == b"weights"


def test_fresh_deletes_only_the_files_the_demo_wrote_and_the_folders_it_made(tmp_path):
    from coordtok import checkpoint as ckpt
    from coordtok.fileio import write_bytes
    from eval.demo import MANIFEST, MARKER, demo_folder, prepare_folder

    out = tmp_path / "demo"
    with demo_folder(out, fresh=False):
        # what the demo's stages write: checkpoints with their run-folder lock, videos, a table
        with ckpt.RunFolder(out / "runs" / "tokenizer", "coordtok").lock():
            ckpt.atomic_save({"step": 1}, out / "runs" / "tokenizer" / "ckpt-0000001.pt")
        write_bytes(out / "samples" / "sample_000.mp4", b"demo video")
        write_bytes(out / "reconstructions" / "heldout" / "coordtok.mp4", b"demo video")
        write_bytes(out / "summary.md", b"# demo")
    listed = json.loads((out / MANIFEST).read_text())
    assert listed == {
        "files": [
            "reconstructions/heldout/coordtok.mp4",
            "runs/tokenizer/.lock",
            "runs/tokenizer/ckpt-0000001.pt",
            "samples/sample_000.mp4",
            "summary.md",
        ],
        "folders": ["reconstructions", "reconstructions/heldout", "runs", "runs/tokenizer", "samples"],
    }
    # the user's files inside the demo's own subfolders, e.g. `cd demo && coordtok train ...`
    mine = {
        out / "runs" / "my-own-run" / "ckpt-0000100.pt": b"a week of training",
        out / "samples" / "mine.mp4": b"my video",
        out / "reconstructions" / "mine.mp4": b"my reconstruction",
        out / "runs" / "tokenizer" / "notes.txt": b"my notes",
    }
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    prepare_folder(out, fresh=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == sorted(
        [
            ".lock",
            MARKER,
            MANIFEST,
            "reconstructions",
            "reconstructions/mine.mp4",
            "runs",
            "runs/my-own-run",
            "runs/my-own-run/ckpt-0000100.pt",
            "runs/tokenizer",
            "runs/tokenizer/notes.txt",
            "samples",
            "samples/mine.mp4",
        ]
    )
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert json.loads((out / MANIFEST).read_text()) == {"files": [], "folders": []}


def test_a_manifest_naming_a_path_outside_the_folder_deletes_nothing(tmp_path, capsys):
    from eval.demo import MANIFEST, prepare_folder

    out = tmp_path / "demo"
    prepare_folder(out, fresh=False)
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    (out / MANIFEST).write_text(json.dumps({"files": ["../thesis.tex"], "folders": []}))
    assert main(["demo", "--quick", "--fresh", "--out", str(out)]) == 2
    assert "not a path inside the demo's folder" in one_line(capsys)
    assert victim.read_text() == "years of work"


def test_fresh_refuses_checkpoints_it_did_not_write_in_a_demo_run_folder(tmp_path, capsys):
    """--fresh keeps them, so the fresh demo would resume them: it says so instead."""
    from coordtok.fileio import write_bytes
    from eval.demo import demo_folder

    out = tmp_path / "demo"
    with demo_folder(out, fresh=False):
        write_bytes(out / "runs" / "tokenizer" / "ckpt-0000020.pt", b"the demo's")
    theirs = out / "runs" / "tokenizer" / "ckpt-0000500.pt"
    theirs.write_bytes(b"not the demo's")
    assert main(["demo", "--quick", "--fresh", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert str(theirs) in line and "would continue them" in line
    assert theirs.read_bytes() == b"not the demo's"
    assert (out / "runs" / "tokenizer" / "ckpt-0000020.pt").is_file()  # refused before deleting anything
