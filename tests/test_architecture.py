"""The package's layering: which parts may import which, read from the source with `ast`.

Data flows one way (docs/architecture.md): a part of the package imports only parts below
it, so each can be read, loaded and tested without the ones above. Every import counts,
inside a function or under TYPE_CHECKING too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tic_grpo_cli

PACKAGE = Path(tic_grpo_cli.__file__).parent
# Low to high; a part imports only parts of lower layers, never one beside it or above.
LAYERS = (
    ("errors", "assets"),
    ("runtime",),
    ("lora", "encoding", "logprobs"),
    ("models", "sampling"),
    ("runs",),
    ("config",),
    ("algorithms", "data"),
    ("evaluation",),
    ("train",),
    ("sweep",),
    ("analysis",),
    ("cli",),
    ("__main__",),  # the console script: cli.main, and Ctrl-C during its imports
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 400


def module_name(path: Path) -> str:
    """`tic_grpo_cli.train.loop` for tic_grpo_cli/train/loop.py (a package: its folder)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The part of the package a module belongs to: its subpackage or top-level module."""
    return module.split(".")[1] if "." in module else ""


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import of this package in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x`, `from .core import y`
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from tic_grpo_cli import errors` imports the module tic_grpo_cli.errors
            names = [f"{base}.{a.name}" for a in node.names] if base == "tic_grpo_cli" else [base]
        else:
            continue
        for name in names:
            if name.startswith("tic_grpo_cli."):
                yield name, node.lineno


def part_imports() -> dict[str, dict[str, list[str]]]:
    """part -> {imported part: ["file:line", ...]}, imports within a part left out."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module_name(path))
        if not source:  # tic_grpo_cli/__init__.py
            continue
        edges = found.setdefault(source, {})
        for name, line in imported_modules(path):
            target = part_of(name)
            if target != source:
                edges.setdefault(target, []).append(f"{path.relative_to(PACKAGE)}:{line}")
    return found


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every import cycle between parts, each once, as the list of parts around it."""
    found: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, {}):
            if nxt == path[0]:
                found.append(path)
            elif nxt not in path and nxt > path[0]:  # each cycle from its smallest part
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {""}
    assert sorted(parts - set(RANK)) == []
    assert {"train", "runs", "config", "errors"} <= parts  # the walk sees the package


def test_the_parts_import_each_other_in_no_circle():
    graph = part_imports()
    assert "train" in graph["cli"] and "errors" in graph["runs"]  # imports are found
    assert cycles(graph) == []


def test_a_lower_layer_never_imports_a_higher_one():
    upward = [
        f"{source} imports {target} ({', '.join(where)})"
        for source, edges in sorted(part_imports().items())
        for target, where in sorted(edges.items())
        if target in RANK and RANK[target] >= RANK[source]
    ]
    assert upward == []


def test_no_module_is_over_400_lines():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert "train/loop.py" in sizes  # the walk sees the package
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_data_modules_do_not_import_each_other_in_a_circle():
    # Every import of a sibling, at the top or inside a function: a cycle means one module
    # cannot be read (or loaded) without the other.
    import tic_grpo_cli.data as package

    folder = Path(package.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    imports: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "tic_grpo_cli.data":
                found |= {alias.name for alias in node.names} & modules
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "tic_grpo_cli.data."
            ):
                found.add(node.module.rsplit(".", 1)[1])
        imports[name] = found

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in imports[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    assert {"task", "hf", "embedded"} <= modules
    assert "task" in imports["hf"]  # the walk sees the imports it must judge
    circles = sorted(m for m in modules if reaches(m, m, set()))
    assert circles == []
