"""The torch range pyproject.toml declares is the one the code needs: its floor is at least the
release that introduced every torch API the code (package, benchmarks and tests) calls, and the
README states the same floor. A user installing the oldest allowed torch then gets no
AttributeError on a cluster where nobody ran the tests."""

import importlib
import re
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for d in ("coordtok", "sit", "eval", "bench", "tests")
    for p in sorted((ROOT / d).rglob("*.py"))
    if p.name != Path(__file__).name
]

# API -> (a pattern that finds its use in the source, the torch release that introduced it),
# from the PyTorch release notes.
NEWER_APIS = {
    "torch.nn.utils.get_total_norm": (r"get_total_norm\(", "2.6"),
    "torch.nn.utils.clip_grads_with_norm_": (r"clip_grads_with_norm_\(", "2.6"),
    "torch.serialization.safe_globals": (r"serialization\.safe_globals\(", "2.5"),
    "torch.serialization.get_unsafe_globals_in_checkpoint": (r"get_unsafe_globals_in_checkpoint\(", "2.5"),
    "torch.serialization.add_safe_globals": (r"add_safe_globals\(", "2.4"),
    "torch.nn.RMSNorm": (r"nn\.RMSNorm\(", "2.4"),
    "torch.optim.AdamW(fused=) on the CPU": (r"AdamW\([^)]*fused=", "2.4"),
    "torch.get_autocast_dtype": (r"get_autocast_dtype\(", "2.4"),
    "torch.is_autocast_enabled(device_type)": (r"is_autocast_enabled\(\s*['\"]", "2.4"),
    "torch.amp.GradScaler": (r"amp\.GradScaler\(", "2.3"),
    "torch.load(mmap=)": (r"torch\.load\([^)]*mmap=", "2.1"),
    "torch.utils.flop_counter.FlopCounterMode": (r"FlopCounterMode\(", "2.1"),
    "torch.func.functional_call": (r"func\.functional_call\(", "2.0"),
}


def _torch_range() -> SpecifierSet:
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    specs = [Requirement(m) for m in re.findall(r'^\s*"([^"]+)",', deps, re.M)]
    (torch_req,) = [r for r in specs if r.name == "torch"]
    return torch_req.specifier


def _floor(spec: SpecifierSet) -> Version:
    (low,) = [s for s in spec if s.operator == ">="]
    return Version(low.version)


def _uses() -> dict[str, list[str]]:
    """Each table API -> the files that call it."""
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in SOURCES}
    return {
        api: [name for name, text in texts.items() if re.search(pattern, text)]
        for api, (pattern, _) in NEWER_APIS.items()
    }


def test_the_floor_covers_every_api_the_code_calls():
    floor, uses = _floor(_torch_range()), _uses()
    assert uses["torch.nn.utils.get_total_norm"], "the table must describe the code it guards"
    too_new = {
        api: (version, uses[api]) for api, (_, version) in NEWER_APIS.items() if uses[api] and Version(version) > floor
    }
    assert not too_new, f"pyproject.toml allows torch {floor}, but the code calls newer APIs: {too_new}"


@pytest.mark.parametrize("api", [a for a in NEWER_APIS if "(" not in a])
def test_the_table_names_real_apis(api):
    """A misspelt entry would never match the source and guard nothing."""
    parts = api.split(".")
    obj = torch
    for k, part in enumerate(parts[1:], start=2):
        obj = getattr(obj, part, None) or importlib.import_module(".".join(parts[:k]))


def test_the_range_keeps_the_installed_pin_and_the_readme_states_the_floor():
    spec = _torch_range()
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "Makefile").read_text()).group(1)
    assert pinned in spec and Version(torch.__version__.split("+")[0]) in spec
    assert [s.version for s in spec if s.operator == "<="] == [pinned]
    floor = _floor(spec)
    assert f"torch {floor}" in (ROOT / "README.md").read_text(), f"README.md must say the code needs torch {floor}"
