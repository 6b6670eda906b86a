"""The layout rules of ARCHITECTURE.md that code review alone lets slip: imports point one way
(the kernel library knows nothing of ONNX or the frontend), no module grows into a god module,
and tests import the installed package, never the repository through ``sys.path``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("bnncompile", "custom_ops", "schedules")
MAX_LINES = 500


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports; relative ones resolved against its place in the tree as
    installed (``schedules/x.py`` is ``bnncompile.schedules.x``)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    installed = rel if rel[0] == "bnncompile" else ("bnncompile", *rel)
    package = installed[:-1]  # a module's package; an __init__'s is its own folder
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            mod = ".".join((*base, node.module) if node.module else base)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", _py_files("schedules"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_library_does_not_know_the_frontend(path):
    bad = {n for n in _imports(path)
           if n.startswith(("bnncompile.frontend", "bnncompile.compiler", "onnx"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _py_files(*PRODUCT), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_god_modules(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}): split it"


def test_tests_and_examples_never_put_the_repository_on_sys_path():
    offenders = []
    for path in _py_files("tests", "examples"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"sys.path changed in {offenders}"


def test_import_resolution_sees_relative_imports():
    """The checks above only mean something if relative imports resolve (a broken resolver
    would pass everything)."""
    names = _imports(ROOT / "schedules" / "float_glue" / "rows.py")
    assert "bnncompile.schedules.float_glue.common.vector_lanes" in names
    names = _imports(ROOT / "bnncompile" / "compiler.py")
    assert any(n.startswith("bnncompile.frontend") for n in names)
