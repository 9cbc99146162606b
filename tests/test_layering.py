"""The floor plan holds by itself: tuilm's modules import each other without a cycle, and the library (data, model,
train, tui, chat, sweep, checkpoint, sampling, ...) never reaches up into the command layer or the CLI.

Imports are read from the source with ast, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tuilm"
TOP = ("tuilm.cli", "tuilm.__main__", "tuilm.commands")  # the layer above the library


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The tuilm modules `name` imports: `from a import b` counts as a.b where that is a module, else as a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_top(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP)


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "tuilm.commands.train" in graph["tuilm.cli"]  # imported inside the command function
    assert "tuilm.model.gpt" in graph["tuilm.model"]  # inside the package's __getattr__


def test_no_import_cycle_between_tuilm_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_command_layer_or_the_cli():
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not is_top(name)
        for target in sorted(targets)
        if is_top(target)
    ]
    assert not wrong, "; ".join(wrong)


def test_commands_never_import_the_cli():
    wrong = [
        f"{n} imports tuilm.cli"
        for n, t in import_graph().items()
        if n.startswith("tuilm.commands") and "tuilm.cli" in t
    ]
    assert not wrong, "; ".join(wrong)
