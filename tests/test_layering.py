"""The package's layering (issue 9): every import inside minipeft points down the stack

    validate, tree, progress, cupy_patches, runtime, version → backend, verdict → nn, autodiff, data, text, io
    → transformer → merge (the folds), models (real checkpoints) → methods → train → adapters, pretrained → tour, exercises
    → cli, chapter

and the import graph has no circle. Read from the source with ``ast`` (imports inside
functions included), not by importing anything.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "minipeft"

#: rank of each top-level part of the package: a module may import only lower ranks
#: (or modules of its own sub-package)
RANK = {
    "validate": 0, "tree": 0, "progress": 0, "cupy_patches": 0, "runtime": 0, "version": 0,
    "backend": 1, "verdict": 1,
    "nn": 2, "autodiff": 2, "data": 2, "io": 2, "text": 2,
    "transformer": 3,
    "merge": 4, "models": 4,
    "methods": 5,
    "train": 6, "generate": 6,
    "adapters": 7, "pretrained": 7,
    "tour": 8, "exercises": 8, "chat": 8, "interop": 8,
    "cli": 9, "chapter": 9, "__init__": 10, "__main__": 10,
}


def modules():
    """{dotted name under minipeft: path}, e.g. "methods.lora"."""
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name, path):
    """The minipeft modules ``name`` imports (dotted, relative to the package)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # from . import a, b
                found |= {".".join(base + [a.name]) for a in node.names}
            else:
                found.add(".".join(target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found |= {m[len("minipeft."):] for m in mods if m.startswith("minipeft.")}
    return {f for f in found if f}


def test_every_import_points_down_the_stack():
    mods = modules()
    assert set(n.split(".")[0] for n in mods) <= set(RANK), sorted(set(n.split(".")[0] for n in mods) - set(RANK))
    bad = []
    for name, path in mods.items():
        top = name.split(".")[0]
        for target in imports(name, path):
            ttop = target.split(".")[0]
            if ttop != top and RANK[ttop] >= RANK[top] and top not in ("__init__", "__main__"):
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_no_import_circle():
    mods = modules()
    graph = {n: {t for t in imports(n, p) if t in mods} for n, p in mods.items()}
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for t in graph[n]:
            if state.get(t) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])
