"""The house rules the code is held to: no import cycles, and core never imports `adapters`.

Walks every module's imports (top-level and inside functions: a lazy import
is still a dependency) with `ast`, so nothing is executed.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder, as pyproject.toml maps them
PACKAGES = {"agentsleep": ROOT / "agentsleep", "agentsleep.daemon": ROOT / "daemon",
            "agentsleep.adapters": ROOT / "adapters"}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([prefix, *parts])] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, with the packages whose __init__ that runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                q = ".".join(parts[:i])
                if q in mods and q != name and not name.startswith(q + "."):
                    found.add(q)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a cycle made only of a function-level import is found."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert _cycles(graph) == [["p.a", "p.b"]]
    mods = {"agentsleep.sleep.x": tmp_path / "x.py", "agentsleep.sleep.y": tmp_path / "y.py",
            "agentsleep.sleep": tmp_path / "__init__.py"}
    (tmp_path / "x.py").write_text("def f():\n    from .y import g\n")
    assert _imports("agentsleep.sleep.x", tmp_path / "x.py", mods) == {"agentsleep.sleep.y"}


def test_no_import_cycle_anywhere():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_core_never_imports_adapters():
    """`adapters/` plugs agentsleep INTO other frameworks; the core must work without it."""
    graph = _graph()
    core = [m for m in graph if not m.startswith(("agentsleep.adapters", "agentsleep.daemon"))]
    bad = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t.startswith("agentsleep.adapters"))
    assert not bad, "core imports adapters: " + ", ".join(bad)


def test_seeding_modules_import_one_way():
    """objective <- train <- launch <- seed: the loop and the workers never reach back into seed."""
    graph = _graph()
    s = "agentsleep.sleep."
    assert graph[s + "objective"].isdisjoint({s + "seed", s + "train", s + "launch"})
    assert s + "seed" not in graph[s + "train"] | graph[s + "launch"]
