"""medtl's parts import one another in one direction only (DESIGN.md, "The flow of data").

The graph counts module-level and in-function imports alike: an import hidden in a function
still ties the two parts together, it only delays the failure. Imports sit at module level;
one stays in a function only to keep TensorFlow (or another heavy or optional dependency) from
loading early, and says why in a comment. The TF-free entry points are checked to stay so.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medtl"

# Lowest first. A part may import only parts of a lower rank. Parts of one rank are siblings
# and must not import each other. Top-level helper modules sit with the layer they serve.
LAYERS: list[set[str]] = [
    {"stats", "registry", "tfimport"},  # no medtl imports at all
    {"config"},
    {"io"},
    {"data"},
    {"models"},
    {"run"},
    {"train"},
    {"evaluate", "explain"},
    {"report", "init"},
    {"api"},
    {"cli"},
]


def _part(module: str) -> str | None:
    """``medtl.data.cache`` -> ``data``; ``medtl`` itself -> None (the lazy public API)."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else None


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_edges(package: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    """``{(from_part, to_part): ["file:line", ...]}`` over every import in the package."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        mod = _module_name(path, package)
        src = _part(mod)
        if src is None:
            continue
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                    # `from . import x` names sub-modules; `from .m import x` names module m
                    targets = [f"{stem}.{a.name}" for a in node.names] if node.module is None else [stem]
                elif node.module:
                    targets = [node.module]
            for t in targets:
                if t.split(".")[0] != "medtl":
                    continue
                dst = _part(t)
                if dst and dst != src:
                    where = f"{path.relative_to(package.parent)}:{node.lineno}"
                    edges.setdefault((src, dst), []).append(where)
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one part (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(comp: list[str], edges: dict[tuple[str, str], list[str]]) -> str:
    lines = [f"cycle between {', '.join(comp)}:"]
    for (a, b), where in sorted(edges.items()):
        if a in comp and b in comp:
            lines.append(f"  {a} -> {b}: {', '.join(where[:3])}")
    return "\n".join(lines)


def test_cycle_finder_names_a_known_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "medtl"
    for sub in ("a", "b", "c"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from medtl.b import y\n")
    (pkg / "b" / "y.py").write_text("def f():\n    from medtl.c.z import g  # in a function: still counts\n")
    (pkg / "c" / "z.py").write_text("import medtl.a.x\n")
    edges = import_edges(pkg)
    assert cycles(edges) == [["a", "b", "c"]]
    assert "b -> c: medtl/b/y.py:2" in _describe(["a", "b", "c"], edges)


def test_no_import_cycles_between_parts() -> None:
    edges = import_edges()
    found = cycles(edges)
    assert not found, "\n".join(_describe(c, edges) for c in found)


def test_imports_follow_the_layers() -> None:
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    unplaced = sorted(parts - set(rank))
    assert not unplaced, f"parts with no layer in tests/test_imports.py LAYERS: {unplaced}"
    wrong = [f"{a} -> {b}: {', '.join(w[:3])}" for (a, b), w in sorted(import_edges().items())
             if rank[b] >= rank[a]]
    assert not wrong, "imports against the layer order (a part may import only lower layers):\n" + "\n".join(wrong)


@pytest.mark.parametrize("part", ["stats", "registry", "tfimport"])
def test_bottom_parts_import_nothing_of_medtl(part: str) -> None:
    out = [f"{b}: {w[0]}" for (a, b), w in import_edges().items() if a == part]
    assert not out, f"{part} must import nothing else of medtl: {out}"


# -- imports inside functions -----------------------------------------------------------------

# Linter pragmas are not reasons: "# noqa: F401" alone does not say why an import is deferred.
_PRAGMA = re.compile(r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^]]*\])?|pragma:[^#]*|pylint:[^#]*")


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """``({line: comment text}, {lines holding only a comment})``."""
    text: dict[int, str] = {}
    alone: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            text[line] = text.get(line, "") + tok.string.lstrip("#")
            if not tok.line[: tok.start[1]].strip():
                alone.add(line)
    return text, alone


def _is_reason(comment: str) -> bool:
    return re.search(r"[A-Za-z]{3}", _PRAGMA.sub("", comment)) is not None


def imports_in_functions(package: Path = PACKAGE) -> list[tuple[str, bool]]:
    """``[("medtl/x.py:12", has_reason), ...]`` for every import inside a function body.

    The reason is a comment on the import's own line(s), or a comment-only line directly above.
    """
    found: list[tuple[str, bool]] = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        text, alone = _comments(source)

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                    lines = range(child.lineno, (child.end_lineno or child.lineno) + 1)
                    own = any(_is_reason(text.get(n, "")) for n in lines)
                    above = child.lineno - 1 in alone and _is_reason(text[child.lineno - 1])
                    found.append((f"{path.relative_to(package.parent)}:{child.lineno}", own or above))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(source), False)
    return found


def test_reason_finder_reads_comments(tmp_path: Path) -> None:
    pkg = tmp_path / "medtl"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import os\n"
        "def a():\n"
        "    import keras  # TensorFlow loads only when a model is used\n"
        "def b():\n"
        "    # TensorFlow loads only when called\n"
        "    import tensorflow\n"
        "def c():\n"
        "    import json\n"
        "def d():\n"
        "    import keras  # noqa: F401\n"
        "def e():\n"
        "    x = 1  # a comment about x, not the import below\n"
        "    import yaml\n"
        "class K:\n"
        "    def f(self):\n"
        "        if True:\n"
        "            from medtl import (  # heavy: loaded on first use\n"
        "                thing,\n"
        "            )\n"
    )
    assert imports_in_functions(pkg) == [
        ("medtl/m.py:3", True), ("medtl/m.py:6", True), ("medtl/m.py:8", False),
        ("medtl/m.py:10", False), ("medtl/m.py:13", False), ("medtl/m.py:17", True),
    ]


def test_imports_in_functions_say_why() -> None:
    missing = [where for where, ok in imports_in_functions() if not ok]
    assert not missing, (
        "imports inside functions without a reason comment (move them to module level, or say on "
        "the line or the line above why they must wait, e.g. '# TensorFlow loads only when a model "
        "is used'):\n  " + "\n  ".join(missing)
    )


# -- entry points that must not load TensorFlow -----------------------------------------------

TF_FREE = ["medtl", "medtl.config", "medtl.registry", "medtl.stats", "medtl.io", "medtl.run",
           "medtl.evaluate", "medtl.data.cache", "medtl.data.pool", "medtl.data.inspect"]


def test_tf_free_entry_points_load_no_tensorflow() -> None:
    code = (
        "import sys\n"
        f"import {', '.join(TF_FREE)}\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tensorflow_hub', 'tf_keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing {', '.join(TF_FREE)} loaded {out.stdout.strip()}"
