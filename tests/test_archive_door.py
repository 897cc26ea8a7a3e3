"""The archive's one door: other packages import ``appliance.archive`` only, and no SQL is
written outside its index backends. Walks the source, so a new module cannot slip past."""

from __future__ import annotations

import ast
import re
from pathlib import Path

APPLIANCE = Path(__file__).resolve().parent.parent / "appliance"
ARCHIVE = APPLIANCE / "archive"
INDEX = ARCHIVE / "index"
SQL = re.compile(r"\b(SELECT\s+.+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|"
                 r"CREATE\s+(TABLE|INDEX|TRIGGER)|WITH\s+RECURSIVE|PRAGMA\s+\w+)\b", re.DOTALL)  # our SQL is written in capitals


def _module_name(path: Path) -> str:
    parts = path.relative_to(APPLIANCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute names of the modules a file imports (``from x import y`` counts x and x.y)."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _outside(root: Path, inside: Path) -> list[Path]:
    return [p for p in root.rglob("*.py") if inside not in p.parents]


def test_nothing_outside_the_archive_imports_its_submodules() -> None:
    submodules = {_module_name(p) for p in ARCHIVE.rglob("*.py")} - {"appliance.archive"}
    offenders = [f"{p.relative_to(APPLIANCE.parent)}:{line} imports {name}"
                 for p in _outside(APPLIANCE, ARCHIVE) for line, name in _imported_modules(p)
                 if name in submodules]
    assert not offenders, "import appliance.archive, not its submodules:\n" + "\n".join(offenders)


def test_the_check_sees_a_submodule_import(tmp_path: Path) -> None:
    """The walker must catch each spelling, or the test above could never fail."""
    probe = APPLIANCE / "web" / "_door_probe.py"
    probe.write_text("from ..archive.hub import Archive\nfrom ..archive import index\n"
                     "import appliance.archive.find\n")
    try:
        names = {n for _, n in _imported_modules(probe)}
    finally:
        probe.unlink()
    assert {"appliance.archive.hub", "appliance.archive.index", "appliance.archive.find"} <= names


def test_no_sql_outside_the_index_backends() -> None:
    offenders = []
    for p in _outside(APPLIANCE, INDEX):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                offenders.append(f"{p.relative_to(APPLIANCE.parent)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, "SQL belongs in appliance/archive/index/:\n" + "\n".join(offenders)


def test_the_sql_check_sees_sql() -> None:
    assert SQL.search("SELECT r0.id FROM resources r0")
    assert SQL.search("WITH RECURSIVE d(id) AS (SELECT 1)")
    assert not SQL.search("Select the series to show from the list")
