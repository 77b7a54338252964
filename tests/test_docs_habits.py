"""The documentation and habits of issue 18, read from the files (no model runs: milliseconds).

* ``sit/__init__.py``'s docstring lists exactly the modules of ``sit/``;
* nothing in ``bench/`` edits ``sys.path``: every benchmark runs as a module (``python -m bench.x``),
  and no command line in the Makefile, README.md or BENCHMARKS.md runs a bench script by its path.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_sit_init_docstring_names_every_sit_module_and_no_other():
    listed = set(re.findall(r"^\* ``(\w+)``(?: / ``(\w+)``)?:", _docstring(ROOT / "sit" / "__init__.py"), re.M))
    named = {name for pair in listed for name in pair if name}
    modules = {p.stem for p in (ROOT / "sit").glob("*.py") if p.stem != "__init__"}
    assert named == modules, f"listed but missing: {named - modules}; present but not listed: {modules - named}"


def test_bench_runs_as_modules_without_sys_path_edits():
    assert (ROOT / "bench" / "__init__.py").is_file()
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"sys\.path\s*(\.\s*\w+\s*\(|\[|[+]?=)", text), f"{path.name} edits sys.path"
        assert "noqa: E402" not in text, f"{path.name} has imports below code (E402)"
    by_path = re.compile(r"(?:python3?|\$\(PY\))\s+bench/\w+\.py")
    for doc in ("Makefile", "README.md", "BENCHMARKS.md"):
        assert not by_path.findall((ROOT / doc).read_text()), f"{doc} runs a bench script by its path"
    assert "\tbench/" not in (ROOT / "Makefile").read_text()
