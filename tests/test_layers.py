"""The package's layers point one way: no import cycle, the low modules import nothing above them,
and importing any module first, in a fresh interpreter, works (a cycle held together by import
order breaks exactly there)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mapgate"

# function-local imports of mapgate's own modules: a few are deliberate (a heavy renderer or an optional
# front end loaded only when asked for); more than this means a cycle is being dodged again
MAX_FUNCTION_LOCAL = 0  # issue 20 asked for at most 20; none are left, and none may be added
# modules every layer may use: they import nothing of mapgate but the modules named here
FOUNDATION = {
    "mapgate.errors": set(),
    "mapgate.decision": set(),
    "mapgate.optional": {"mapgate.errors"},
    "mapgate.paths": {"mapgate.errors"},
    "mapgate.fsutil": {"mapgate.errors"},
    "mapgate.manifest": {"mapgate.decision", "mapgate.errors", "mapgate.paths"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own_imports(path: Path) -> tuple[set[str], int]:
    """(mapgate modules imported anywhere in the file, how many of those imports sit inside a function)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    local = 0
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        own = [t for t in targets if t == "mapgate" or t.startswith("mapgate.")]
        if not own:
            continue
        if _is_type_checking_only(tree, node):
            continue
        found.update(own)
        local += id(node) in inside
    return found, local


def _is_type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING":
            if any(n is node for s in stmt.body for n in ast.walk(s)):
                return True
    return False


def _graph() -> tuple[dict[str, set[str]], int]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    local_total = 0
    for name, path in files.items():
        imported, local = _own_imports(path)
        # "from mapgate.x import y" names y: an edge only where y is a module
        graph[name] = {t for t in imported if t in files and t != name}
        local_total += local
    return graph, local_total


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_import_graph_of_the_package_has_no_cycle() -> None:
    graph, _ = _graph()
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    graph, _ = _graph()
    graph["mapgate.errors"] = graph["mapgate.errors"] | {"mapgate.gate"}  # gate reaches errors: a loop
    assert _cycle(graph)[0] == _cycle(graph)[-1]


def test_the_foundation_modules_import_nothing_above_them() -> None:
    graph, _ = _graph()
    for module, allowed in FOUNDATION.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"


def test_function_local_imports_of_own_modules_stay_few() -> None:
    _, local = _graph()
    assert local <= MAX_FUNCTION_LOCAL


# Each module is imported first in a process whose interpreter holds no mapgate module: a child forked from
# one parent that has loaded only the third-party libraries the package imports (found by a first
# interpreter that imports everything), so each child pays for mapgate's own imports alone (~25 s with a
# new interpreter per module, ~3 s forked).
_IMPORT_EACH_FIRST = """
import importlib, json, os, sys
names, deps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for dep in deps:
    try:
        importlib.import_module(dep)
    except ImportError:  # a name that is only importable as part of its parent package
        pass
assert not [m for m in sys.modules if m == "mapgate" or m.startswith("mapgate.")], "the parent imported mapgate"
failed = []
for name in names:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException as exc:  # noqa: BLE001 - any failure of a first import is the finding
            message = f"{name}: {type(exc).__name__}: {exc}"
        os.write(write_end, message.encode()[:4000])
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if message or status:
        failed.append(message or f"{name}: the child exited with status {status}")
print("\\n".join(failed))
"""

_THIRD_PARTY = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"mapgate"})))
"""


@pytest.mark.slow  # ~5 s: the package imported whole once, then each module first in a forked child
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    names = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))
    found = subprocess.run([sys.executable, "-c", _THIRD_PARTY, json.dumps(names)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert found.returncode == 0, found.stderr
    deps = json.loads(found.stdout.strip().splitlines()[-1])
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH_FIRST, json.dumps(names), json.dumps(deps)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
