"""The layers of s3fuse (docs/design/core.md), checked on the source: which package may
import which, no import cycles (function-level imports included), one boto3 importer,
few top-level modules, small modules."""
from __future__ import annotations

import ast
import os

from ..support.mounts import REPO

PACKAGE = os.path.join(REPO, "s3fuse")

# Each layer may import the layers below it (and itself), never one above.  The leaves
# (errors, paths, config, logs, metrics) import only other leaves.
RANK = {"__init__": 0, "errors": 0, "paths": 0, "config": 1, "logs": 1, "metrics": 1,
        "s3": 2, "data": 3, "meta": 3, "write": 4, "fs": 5, "fuse": 6, "app": 7}
ENTRY_POINTS = {"s3fuse.__main__", "s3fuse.cli"}       # may import app; nothing else may
TOP_LEVEL = {"__init__", "__main__", "cli", "config", "errors", "logs", "metrics", "paths"}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _sources():
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield _module_name(path), path, open(path, encoding="utf-8").read()


def _exists(module: str) -> bool:
    base = os.path.join(os.path.dirname(PACKAGE), *module.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def imports(name: str, path: str, text: str):
    """Every s3fuse module ``name`` imports, at any depth of the file (functions too)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "s3fuse":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "s3fuse":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if _exists(sub) else base


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict:
    return {name: set(imports(name, path, text)) for name, path, text in _sources()}


def test_each_layer_imports_only_layers_below_it():
    wrong = []
    for module, targets in graph().items():
        if module in ENTRY_POINTS or module == "s3fuse":
            continue
        mine = RANK[layer(module)]
        for target in targets:
            theirs = RANK.get(layer(target))
            if theirs is None or theirs > mine or (theirs == mine and layer(target) != layer(module)):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_only_the_entry_points_import_app():
    users = sorted(m for m, targets in graph().items()
                   if layer(m) != "app" and m not in ENTRY_POINTS and any(layer(t) == "app" for t in targets))
    assert users == []


def test_no_import_cycles():
    g = graph()
    for module in g:
        g[module] = {t for t in g[module] if t in g and t != module}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"
    for module in sorted(g):
        if module not in state:
            visit(module, [])
    # a package's __init__ re-exporting its own modules is not a cycle worth naming
    cycles = [c for c in cycles if not all(p.startswith(c.split(" -> ")[0]) for p in c.split(" -> "))]
    assert cycles == []


def test_only_s3_boto_imports_boto3():
    users = sorted(m for m, path, text in _sources()
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                          any((getattr(n, "module", None) or a.name).split(".")[0] in ("boto3", "botocore")
                              for a in n.names)
                          for n in ast.walk(ast.parse(text))))
    assert users == ["s3fuse.s3.boto"]


def test_few_top_level_modules():
    top = {n[:-3] for n in os.listdir(PACKAGE) if n.endswith(".py")}
    assert top == TOP_LEVEL, "a new module belongs in a layer package"


def test_every_layer_is_ranked():
    packages = {n for n in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, n, "__init__.py"))}
    assert packages == {name for name in RANK if name not in ("__init__", "errors", "paths", "config", "logs", "metrics")}
