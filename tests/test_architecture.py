"""The arrows of the house (docs/architecture.md), read from the source: no import circles,
core's boxes import only the boxes below them, the faces and plugins only what they may,
and core imports no protocol library."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "plugins", "historian", "opcua_server")

#: core's boxes, lowest first: a module may import its own box and the boxes of a lower
#: rank. Boxes of one rank do not know each other.
CORE_RANKS: dict[str, int] = {
    **dict.fromkeys(
        (
            "model",
            "events",
            "errors",
            "money",
            "numbers",
            "text",
            "tasks",
            "logs",
            "private_files",
        ),
        0,
    ),
    "config": 1,
    "db": 2,
    "rating": 2,
    "contracts": 2,
    "ledger": 3,
    "field": 3,
    "cluster": 3,
    "prepay": 4,
    "billing": 5,
    "payments": 5,
    "operations": 6,
    "host": 7,
    "hookspecs": 8,
    "app": 9,
    "cli": 10,
}
BASE = 0
PROTOCOL_LIBRARIES = ("pymodbus", "asyncua", "influxdb_client", "serial")


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found["openprepay." + ".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module or library, line) for every import of the file, type-only and
    function-level ones included."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def owner(target: str, known: dict[str, Path]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


@functools.cache
def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _ in imports(name, path, known):
            module = owner(target, known)
            if module and module != name and not name.startswith(module + "."):
                edges[name].add(module)
    return edges


def box(module: str) -> str:
    """`openprepay.core.prepay.control` → `prepay`."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ""


def test_there_is_no_import_circle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert circles == []


def test_core_boxes_import_only_what_is_below_them() -> None:
    wrong = []
    for module, targets in graph().items():
        if not module.startswith("openprepay.core.") or module == "openprepay.core":
            continue
        mine = box(module)
        assert mine in CORE_RANKS, f"{module}: box {mine!r} has no rank in this test"
        for target in targets:
            if not target.startswith("openprepay.core."):
                continue
            theirs = box(target)
            same_box = theirs == mine or CORE_RANKS[mine] == CORE_RANKS[theirs] == BASE
            if not same_box and CORE_RANKS[theirs] >= CORE_RANKS[mine]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


@pytest.mark.parametrize("package", ["plugins", "historian", "opcua_server"])
def test_faces_and_plugins_import_only_core(package: str) -> None:
    allowed = ("openprepay.core", f"openprepay.{package}")
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if module.startswith(f"openprepay.{package}")
        for target in targets
        if target.startswith("openprepay.") and not target.startswith(allowed)
    ]
    assert wrong == []


def test_core_speaks_no_protocol() -> None:
    known = modules()
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in known.items()
        if name.startswith("openprepay.core")
        for target, line in imports(name, path, known)
        if target.split(".")[0] in PROTOCOL_LIBRARIES
    ]
    assert wrong == []
