"""The package's layout rules (ARCHITECTURE.md): no import circles, typer and rich output only in cli/."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eldarts_cli"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's own modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                module = f"{target}.{alias.name}"
                found.add(module if module in mods else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in mods and m != name}


def test_no_import_circles():
    mods = _modules()
    graph = defaultdict(set, {name: _imports(name, path, mods) for name, path in mods.items()})
    circles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                done.add(nxt)
                visit(nxt, stack + [nxt], done)

    for name in sorted(mods):
        visit(name, [name], {name})
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


def test_only_the_cli_imports_typer_or_renders_rich_output():
    for name, path in _modules().items():
        if name.startswith("eldarts_cli.cli"):
            continue
        text = path.read_text()
        assert "import typer" not in text and "from typer" not in text, name
        assert "from rich" not in text and "import rich" not in text, name
