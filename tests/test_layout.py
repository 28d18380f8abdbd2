"""The package layout: one folder per concern, and imports between folders that never go in a circle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "detector", "sinks", "configs")

# Which folder may import which: each concern's allowed dependencies, from the top (the CLI)
# to the bottom (the detector, usable alone). "jobs" is jobs/'s own support modules
# (config, errors, inputs, media, video, weight_cache).
ALLOWED = {
    "jobs.cli": {"jobs.pipeline", "jobs.cluster", "jobs.results", "jobs", "sinks", "detector"},
    "jobs.cluster": {"jobs", "sinks", "detector"},
    "jobs.pipeline": {"jobs.results", "jobs", "sinks", "detector"},
    "jobs.results": {"jobs", "sinks", "detector"},
    "jobs": {"sinks", "detector"},
    "sinks": {"detector"},
    "detector": set(),  # the model and its weight formats (detector/weights/ included): usable alone
    "configs": set(),
}


def _folder(module: str) -> str:
    """The concern folder of a dotted module name (a package's own __init__ belongs to it)."""
    if module == "jobs.__main__":  # ``python -m jobs``: the CLI's entrypoint
        return "jobs.cli"
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        if name in ALLOWED and (ROOT.joinpath(*name.split(".")) / "__init__.py").exists():
            return name
    raise AssertionError(f"{module} is in no known folder")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """First-party modules a file imports, at any depth (lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in _modules().items():
        src = _folder(module)
        for target in _imports(path):
            dst = _folder(target)
            if dst != src:
                graph[src].add(dst)
    return graph


def test_every_module_lives_in_a_known_folder() -> None:
    for module in _modules():
        _folder(module)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_folder_imports_only_the_folders_below_it(folder: str) -> None:
    unexpected = _folder_graph().get(folder, set()) - ALLOWED[folder]
    assert not unexpected, f"{folder} imports {sorted(unexpected)}"


def test_no_import_cycle_between_folders() -> None:
    graph = _folder_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
