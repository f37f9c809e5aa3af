"""The library's import graph has no cycle: each stage is config → unit → driver, and backends import the
unit rather than the driver. Every import counts, function-level ones included (a lazy import that hides a
cycle is still a cycle), and importing `curate.a.b` counts as importing the package `curate.a` too, whose
`__init__` runs first (except from inside `curate.a` itself, where that is how packages load)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import curate

ROOT = Path(curate.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}".rstrip(".")
                # `from curate.x import y` imports the module curate.x.y when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if target not in modules:
                    continue  # not ours (torch, pyarrow, ...)
                graph[name].add(target)
                parents = target.split(".")
                for i in range(1, len(parents)):
                    ancestor = ".".join(parents[:i])
                    if ancestor in modules and not (name == ancestor or name.startswith(ancestor + ".")):
                        graph[name].add(ancestor)
    for name in graph:
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "curate.evaluate" in graph["curate.train.loop"]  # imported inside _evaluator only
    assert "curate.select.ray_backend" in graph["curate.select"]
    assert "curate.score" in graph["curate.select.index"]  # via curate.score.schema, whose package runs


def test_no_import_cycle_inside_curate():
    assert find_cycle(import_graph()) is None


def test_nothing_outside_models_reaches_through_the_open_clip_module():
    """The trainer, the stages and the benches use `ImageTextModel`'s own methods (its one training forward
    is what DDP wraps); only `curate/models/` touches the open_clip module inside it."""
    pattern = re.compile(r"\.module\b(?!s)")
    offenders = []
    for folder in ("curate", "cli", "bench", "examples"):
        for path in (ROOT.parent / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "models"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if pattern.search(code) and "import" not in code:
                    offenders.append(f"{path.relative_to(ROOT.parent)}:{number}")
    assert offenders == []
