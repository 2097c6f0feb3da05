"""The import graph of tracerd has no cycle, counting imports inside functions
and modules named to importlib as strings; the hook imports nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracerd"


def module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every tracerd module ``name`` imports: import statements anywhere in the file
    (functions included), and any string constant naming a module (importlib)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
        for each in targets:
            target = each
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("tracerd."):
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_tracerd() -> None:
    """No module of tracerd/ reaches itself through imports (statements anywhere,
    including inside functions, and module names handed to importlib)."""
    names = module_names()
    graph = {name: imports_of(name, path, set(names)) for name, path in names.items()}
    assert "tracerd.ctl.postfix" in graph["tracerd.ctl.main"]  # importlib names are edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a two-module loop and a self-contained chain."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_hook_imports_only_the_standard_library_and_the_client() -> None:
    """pftrace-hook --help, run as a module of the package, loads no tracerd module but the
    package itself and the hook, and no third-party package (python -X importtime;
    tests/test_hook_startup.py checks the hook make writes, which loads far less)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tracerd.hook", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.count("|") == 2}
    ours = {name for name in loaded if name.split(".")[0] == "tracerd"}
    assert ours == {"tracerd"}, ours
    assert not loaded & {"psutil", "structlog", "pygdbmi", "ptrace", "tomllib"}
