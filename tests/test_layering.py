"""The package's import graph: no import circles, and each floor imports only downward.

Floors, top to bottom (a floor is a top-level package or module of `ttpa_ray`):
- entry points (`ENTRY`): may import anything;
- stages (`STAGES`): import the foundation, and another stage only along an edge of
  `ALLOWED_STAGE_EDGES` (the data path: a later stage reading an earlier one's concept);
- the foundation (`FOUNDATION`): imports no stage and no entry point.

Read from the source with `ast` (nothing is imported): module-level imports and the
deferred ones inside functions and `if TYPE_CHECKING:` blocks all count for the floors;
only module-level ones can close an import circle at import time, so only those are
checked for cycles.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import ttpa_ray

PACKAGE = Path(ttpa_ray.__file__).parent

ENTRY = {"cli", "pipeline", "demo"}
STAGES = {"construct", "sample", "score", "train", "serve", "eval", "report"}
FOUNDATION = {
    "ttpa_ray",  # the package's own __init__
    "atomic",
    "cluster",
    "config",
    "engines",
    "outdir",
    "ray_utils",
    "runner",
    "schema",
    "storage",
    "tools",
}

# (importer, imported) → why that stage may import the other one.
ALLOWED_STAGE_EDGES = {
    ("sample", "score"): "TPS scores its candidates with ESM (`score.batch`)",
    ("sample", "construct"): "the pairs' ShareGPT export reuses the dataset's converter",
    ("eval", "score"): "eval grades answers with the same ESM and AST checker",
    ("report", "eval"): "the report renders eval's summaries and intervals",
    ("train", "score"): "GRPO's reward is ESM",
    ("train", "sample"): "GRPO rollouts decode with TPS's HF sampler (one decode loop)",
}


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name
    imported: str  # dotted module name (a package stands for its __init__)
    line: int
    module_level: bool

    def __str__(self) -> str:
        return f"{self.importer} → {self.imported} (line {self.line})"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def _target(name: str) -> str:
    """The package module an import of `name` loads last (`a.b.attr` → `a.b`)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(name: str, path: Path) -> list[Edge]:
    """The package modules `name` imports, each with its line and whether it runs at
    import time (a module-level statement, outside `if TYPE_CHECKING:`)."""
    edges: list[Edge] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
                for stmt in child.orelse:
                    visit(stmt, module_level)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "ttpa_ray":
                        edges.append(Edge(name, _target(alias.name), child.lineno, module_level))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the importer's package, `level - 1` up
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                if base.split(".")[0] != "ttpa_ray":
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"  # `from pkg import module` loads pkg.module
                    edges.append(
                        Edge(
                            name,
                            sub if sub in MODULES else _target(base),
                            child.lineno,
                            module_level,
                        )
                    )
            else:
                visit(child, module_level)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return [e for e in edges if e.imported != name]


EDGES = [e for name, path in MODULES.items() for e in imports_of(name, path)]


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One import circle of `graph` as its edges, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Edge] = []

    def dfs(node: str) -> list[Edge] | None:
        state[node] = 1
        for edge in graph.get(node, []):
            if state.get(edge.imported) == 1:
                start = next(
                    (i for i, e in enumerate(path) if e.importer == edge.imported), len(path)
                )
                return [*path[start:], edge]
            if edge.imported not in state:
                path.append(edge)
                if found := dfs(edge.imported):
                    return found
                path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_the_graph_sees_the_package():
    assert {"ttpa_ray.cli.commands", "ttpa_ray.schema.turns", "ttpa_ray.tools.catalog"} <= set(
        MODULES
    )
    turns_users = {e.importer for e in EDGES if e.imported == "ttpa_ray.schema.turns"}
    assert {"ttpa_ray.sample.stage", "ttpa_ray.train.data", "ttpa_ray.eval.suites"} <= turns_users


def test_every_floor_is_classified():
    floors = {floor(m) for m in MODULES}
    unknown = floors - ENTRY - STAGES - FOUNDATION
    assert not unknown, f"new top-level module(s) {sorted(unknown)}: add each to a floor here"
    assert not (ENTRY & STAGES or ENTRY & FOUNDATION or STAGES & FOUNDATION)


def test_no_import_circles_at_module_level():
    graph: dict[str, list[Edge]] = {}
    for e in EDGES:
        if e.module_level:
            graph.setdefault(e.importer, []).append(e)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + "; ".join(map(str, cycle or []))


def test_floors_import_only_downward():
    bad = []
    for e in EDGES:
        a, b = floor(e.importer), floor(e.imported)
        if a == b or a in ENTRY:
            continue
        if b in ENTRY:
            bad.append(f"{e}: {a} imports the entry point {b}")
        elif a in FOUNDATION and b in STAGES:
            bad.append(f"{e}: the foundation ({a}) imports the stage {b}")
        elif a in STAGES and b in STAGES and (a, b) not in ALLOWED_STAGE_EDGES:
            bad.append(
                f"{e}: stage {a} imports stage {b}, not an edge of the data path "
                "(move the shared concept down to the foundation, or add the edge with "
                "its reason to ALLOWED_STAGE_EDGES)"
            )
    assert not bad, "\n".join(bad)


def test_every_allowed_stage_edge_is_used():
    used = {(floor(e.importer), floor(e.imported)) for e in EDGES}
    stale = sorted(set(ALLOWED_STAGE_EDGES) - used)
    assert not stale, f"no longer imported, remove from ALLOWED_STAGE_EDGES: {stale}"
