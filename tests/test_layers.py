"""The architecture, checked: import-linter's layers contract (pyproject.toml) holds, and no two
modules or packages of resnetlab import each other, counting imports inside functions too."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def imports_of(path: Path, module: str, is_package: bool) -> set[str]:
    """The resnetlab modules `module` imports anywhere in its file (deferred imports included);
    `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for a in node.names:
                found.add(f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base)
    return {m for m in found if m == "resnetlab" or m.startswith("resnetlab.")} - {module}


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.joinpath("resnetlab").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        graph[module] = imports_of(path, module, is_package)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each a cycle's members."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str:
    """resnetlab.train.engine -> resnetlab.train; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        # the root package only re-exports lazily (importlib): it is no layer
        if module == "resnetlab":
            continue
        edges = {package_of(t) for t in targets if t != "resnetlab"} - {package_of(module)}
        graph.setdefault(package_of(module), set()).update(edges)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    """The check above can fail: a graph with a deferred back edge is caught."""
    graph = import_graph()
    graph["resnetlab.models.registry"].add("resnetlab.train.trainer")
    assert any("resnetlab.train.trainer" in c for c in cycles(graph))


def run_tool(*command: str) -> subprocess.CompletedProcess:
    """A checker of the [test] extra, run in the repository root (a missing one fails, saying so)."""
    assert shutil.which(command[0]), f"{command[0]} is missing: pip install -e '.[test]'"
    return subprocess.run(
        command, cwd=SRC.parent, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_layers_contract_holds():
    proc = run_tool("lint-imports")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_ruff_lint_and_format_are_clean():
    lint = run_tool("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    form = run_tool("ruff", "format", "--check", ".")
    assert form.returncode == 0, form.stdout[-3000:]


def test_no_function_over_80_lines():
    long = []
    for path in SRC.joinpath("resnetlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(
                        f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)"
                    )
    assert long == []
