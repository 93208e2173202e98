"""The package's layering: which modules may import which, read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path


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
