"""The demo's folder: locked while a demo runs, and ``--fresh`` deletes exactly the files the demo
wrote (its manifest), never a user's file beside them."""
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
