"""The floor plan holds by itself: tuilm's modules import each other without a cycle, each imports only from its
own floor and those below (FLOORS), and the library (data, model, train, tui, chat, sweep, checkpoint, sampling,
...) never reaches up into the command layer or the CLI.

Imports are read from the source with ast, those inside functions too: a lazy import is still a dependency, and
one that climbs a floor is a loop hidden from the import system until the day it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tuilm"
TOP = ("tuilm.cli", "tuilm.__main__", "tuilm.commands")  # the layer above the library
# The floors, lowest first: a module belongs to the floor of the longest prefix that names it (a package names its
# modules), and imports only from its own floor and those below. The package itself (`tuilm`, tuilm.Monitor's lazy
# re-export) is on the top and names only itself; Python imports a module's packages before the module, so an
# import of a package it lies in is no edge here.
ROOT = "tuilm"
FLOORS = (
    (
        "tuilm.errors",
        "tuilm.formatting",
        "tuilm.atomic",
        "tuilm.resources",
        "tuilm.flops",
        "tuilm.stop_strings",
        "tuilm.sysinfo",
        "tuilm.runlock",
        "tuilm.sampling_settings",
        "tuilm.values",
    ),
    ("tuilm.model.config", "tuilm.data.config", "tuilm.config", "tuilm.device"),  # settings
    ("tuilm.data",),  # sources, tokenizer, pipeline
    ("tuilm.model", "tuilm.sampling", "tuilm.export"),  # the model, its generation, foreign formats of its weights
    ("tuilm.checkpoint",),  # tuilm's own files of a model and its training state
    ("tuilm.train",),
    ("tuilm.monitor", "tuilm.integrations"),  # the health monitor for any training loop
    ("tuilm.run_setup",),  # run setup shared by train and sweep
    ("tuilm.tui", "tuilm.chat", "tuilm.sweep", "tuilm.notify"),  # front ends
    ("tuilm.commands",),
    ("tuilm.cli", "tuilm.__main__", ROOT),
)


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


def floor_of(name: str) -> int | None:
    """The index in FLOORS of the floor `name` is on, None when no prefix names it."""
    best: tuple[int, int] | None = None  # (length of the prefix, floor)
    for floor, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            names = name == prefix or (prefix != ROOT and name.startswith(prefix + "."))
            if names and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return None if best is None else best[1]


def climbing(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module to one on a higher floor, as 'a (floor) imports b (floor)' (a module on no floor
    counts as the lowest: test_every_module_is_on_a_floor names it)."""
    return [
        f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if not name.startswith(target + ".") and (floor_of(target) or 0) > (floor_of(name) or 0)
    ]


def is_top(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP)


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "tuilm.commands.train" in graph["tuilm.cli"]  # imported inside the command function
    assert "tuilm.model.gpt" in graph["tuilm.model"]  # inside the package's __getattr__


def test_every_module_is_on_a_floor():
    missing = [name for name in all_modules() if floor_of(name) is None]
    assert not missing, f"add to FLOORS in tests/test_layering.py: {', '.join(missing)}"


def test_no_import_climbs_a_floor_not_even_inside_a_function():
    wrong = climbing(import_graph())
    assert not wrong, "; ".join(wrong)


def test_climbing_sees_an_import_inside_a_function(tmp_path):
    """The model loading a checkpoint inside a function (as model/pretrained.py once did) is a climb; the
    checkpoint loading the model, or a module importing the package it lies in, is not."""
    source = "def load():\n    from tuilm.checkpoint import load_checkpoint\n"
    (tmp_path / "pretrained.py").write_text(source)
    known = {"tuilm.checkpoint", "tuilm.model", "tuilm.model.pretrained"}
    graph = {"tuilm.model.pretrained": imported("tuilm.model.pretrained", tmp_path / "pretrained.py", known)}
    assert graph["tuilm.model.pretrained"] == {"tuilm.checkpoint"}
    assert climbing(graph) == ["tuilm.model.pretrained (floor 3) imports tuilm.checkpoint (floor 4)"]
    assert climbing({"tuilm.checkpoint.model": {"tuilm.model", "tuilm.checkpoint"}}) == []


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
