"""Import hygiene of the ``recemb`` package (issue 13, "config flows down" and "clean edges").

1. Every module imports in a fresh interpreter (no module needs CUDA to import:
   GPU work starts inside functions), and reading a config or starting the CLI
   loads none of the heavy libraries.
2. The import graph of ``recemb/`` (module-level and function-level imports,
   read with ``ast``) has no cycle: layers import downwards only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "recemb"
HEAVY = ("torch", "torchrec", "numba", "ray", "matplotlib")

# Cycles another branch removes; delete each entry once its fix is merged.
# - two_tower model <-> train: issue 13, deliverable 4 (one training runner) rewrites train.py.
KNOWN_CYCLES: list[frozenset[str]] = []


def module_name(path: Path) -> str:
    """``recemb/a/b.py`` -> ``recemb.a.b``; ``recemb/a/__init__.py`` -> ``recemb.a``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing imported yet) with this test's ``sys.path``."""
    env_path = json.dumps([p for p in sys.path if p])
    prelude = f"import sys; sys.path[:0] = {env_path}\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


def test_every_module_imports_in_a_fresh_interpreter():
    code = f"""
import importlib, traceback
failed = []
for name in {sorted(MODULES)!r}:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
"""
    done = run_fresh(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"modules that do not import:\n{done.stdout}"


@pytest.mark.parametrize("module", ["recemb.config", "recemb.cli"])
def test_config_and_cli_load_no_heavy_library(module):
    done = run_fresh(f"import sys, {module}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))")
    assert done.returncode == 0, done.stderr
    heavy = set(ast.literal_eval(done.stdout.strip())) & set(HEAVY)
    assert not heavy, f"`import {module}` loads {sorted(heavy)}; import them inside the functions that need them"


def imported_modules(path: Path, name: str) -> set[str]:
    """The ``recemb`` modules that ``path`` (module ``name``) imports, at any depth of its code.

    ``from a.b import c`` counts as importing module ``a.b.c`` when that is a
    module, else ``a.b``. Parent packages are not counted: importing
    ``a.b.c`` runs ``a/b/__init__.py`` first, which never forms a real cycle.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(path, name) for name, path in MODULES.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with 2+ modules (each one holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through ``component``, as ``[a, b, ..., a]`` (a shortest way back to its first module)."""
    start = min(component)
    came_from = {start: start}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_graph_helpers_find_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [{"a", "b", "c"}]
    assert cycle_in(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert graph["recemb.config"] >= {"recemb.data.config", "recemb.section"}  # the parser sees real edges
    cycles = [c for c in strongly_connected(graph) if frozenset(c) not in KNOWN_CYCLES]
    described = "\n".join(" -> ".join(cycle_in(graph, c)) for c in cycles)
    assert not cycles, f"import cycles in recemb/ (a lower layer must not import a higher one):\n{described}"


def test_section_is_a_leaf():
    assert import_graph()["recemb.section"] == set()


def requirement_lines(path: Path) -> set[str]:
    """The requirement specifiers of a requirements file, comments and blanks dropped."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line.replace(" ", "") for line in lines if line}


def test_pyproject_declares_what_make_setup_installs():
    import tomllib

    root = PACKAGE_DIR.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {d.replace(" ", "") for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {d.replace(" ", "") for d in extra}
    # torchrec is installed with --no-deps (requirements/torchrec.txt), never declared.
    for name in ("runtime", "pretrained", "dev", "peers"):
        missing = requirement_lines(root / "requirements" / f"{name}.txt") - declared
        assert not missing, f"requirements/{name}.txt has {sorted(missing)}, not declared in pyproject.toml"
