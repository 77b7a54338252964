"""The documentation and habits of issue 18, read from the files (no model runs: milliseconds).

* ``sit/__init__.py``'s docstring lists exactly the modules of ``sit/``.
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
