"""`coordtok convert --out <existing file>` refuses to replace it unless --force."""

from pathlib import Path

from coordtok import checkpoint as ckpt
from coordtok.cli import main

TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "reference" / "coordtok_A.pth"


def test_convert_refuses_an_existing_out_file_unless_forced(tmp_path, capsys):
    out = tmp_path / "notes.pt"  # e.g. a training checkpoint with its optimizer and RNG state
    out.write_bytes(b"a file the user cares about")
    assert main(["convert", "--ckpt", str(TOKENIZER), "--out", str(out), "--heads", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--force" in err, err
    assert out.read_bytes() == b"a file the user cares about"
    assert main(["convert", "--ckpt", str(TOKENIZER), "--out", str(out), "--heads", "4", "--force"]) == 0
    assert ckpt.load(out)["kind"] == "coordtok"
