"""The package's shape: every module imports on its own, and the web layer has no import cycle.

Import cycles are found on the source (every ``import`` statement, those inside functions too),
so a cycle hidden behind a late import counts as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"


def _modules() -> dict[str, Path]:
    """Every module of appliance/, by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of appliance/ that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_web_layer():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    web = [c for c in _cycles(graph) if any(m.startswith("appliance.web") for m in c)]
    assert web == [], f"import cycles through the web layer: {web}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"appliance.__main__"}))   # that one runs the command
def test_every_module_imports_on_its_own(name):
    # a fresh interpreter: a module that only imports after some other one is caught here
    r = subprocess.run([sys.executable, "-c", f"import {name}"], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


_MODES = "import pydicom.config as c; print(c.settings.reading_validation_mode, c.settings.writing_validation_mode)"


def _modes_after(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", f"{code}\n{_MODES}"], check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pydicom_settings_are_made_by_an_explicit_call():
    import pydicom.config
    untouched = _modes_after("import pydicom")
    assert _modes_after("import appliance.pydicom_setup") == untouched
    ignore = f"{pydicom.config.IGNORE} {pydicom.config.IGNORE}"
    assert _modes_after("import appliance.pydicom_setup as p; p.configure()") == ignore


def test_no_module_changes_pydicom_settings_on_import():
    untouched = _modes_after("import pydicom")
    everything = "; ".join(f"import {m}" for m in sorted(MODULES) if m != "appliance.__main__")
    assert _modes_after(everything) == untouched


def test_no_two_modules_share_a_name():
    """A reader who sees ``from . import qr`` knows which one; no import needs an alias."""
    root = Path(__file__).resolve().parent.parent / "appliance"
    names: dict[str, list[str]] = {}
    for p in root.rglob("*.py"):
        name = p.parent.name if p.name == "__init__.py" else p.stem
        if p.parent == root and p.name == "__init__.py":
            continue
        names.setdefault(name, []).append(str(p.relative_to(root)))
    shared = {n: where for n, where in names.items() if len(where) > 1}
    assert not shared, shared
