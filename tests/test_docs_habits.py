"""The documentation and habits, read from the files (no model runs: milliseconds).

* ``sit/__init__.py``'s docstring lists exactly the modules of ``sit/``;
* nothing in ``bench/`` edits ``sys.path``: every benchmark runs as a module (``python -m bench.x``),
  and no command line in the Makefile, README.md or BENCHMARKS.md runs a bench script by its path;
* README.md starts with ``make demo`` and ``make test``; its layout tree names every module of
  ``coordtok/`` and ``baselines/`` where it is, and every package; README.md and BENCHMARKS.md
  name no file of the repository that does not exist (e.g. the old ``coordtok/baselines/``).
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


def test_readme_starts_with_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]


def test_readme_layout_tree_names_every_module_where_it_is():
    text = (ROOT / "README.md").read_text()
    tree = text.split("## Layout\n", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    named: dict[str, set[str]] = {}
    folder = None
    for line in tree.splitlines():
        top = re.match(r"^(\w+)/ ", line)
        if top:
            folder = top.group(1)
            named.setdefault(folder, set())
            continue
        files = re.match(r"^  ((?:\w+\.py ?)+)", line)
        if files and folder:
            named[folder] |= set(files.group(1).split())
    assert {"coordtok", "sit", "baselines", "eval", "bench", "configs", "tests"} <= set(named)
    for folder, files in named.items():
        for name in files:
            assert (ROOT / folder / name).is_file(), f"README's layout names {folder}/{name}, which does not exist"
    for folder in ("coordtok", "baselines"):
        have = {p.name for p in (ROOT / folder).glob("*.py")} - {"__init__.py", "__main__.py"}
        assert have <= named[folder], f"README's layout does not name {sorted(have - named[folder])} in {folder}/"


def test_docs_name_only_files_that_exist():
    for doc in ("README.md", "BENCHMARKS.md"):
        text = (ROOT / doc).read_text()
        assert "coordtok/baselines" not in text and "sit/regen" not in text, f"{doc} names a pre-restructure path"
        named = re.findall(r"`((?:coordtok|sit|baselines|eval|bench|configs|tests)/[\w./-]*\.(?:py|yaml))", text)
        for path in set(named):
            assert (ROOT / path).is_file(), f"{doc} names {path}, which does not exist"
