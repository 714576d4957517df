"""The shape of the ``clipgen`` package itself: no import cycle between library modules (imports inside functions
count too) and no library file over 500 lines without a reason stated in its first line."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "clipgen"
MAX_LINES = 500


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Module -> the clipgen modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    files = {_module(p, root): p for p in root.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in files.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in files and t != name)
    return graph


def test_import_graph_sees_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "clipgen"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from clipgen.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    graph = import_graph(pkg)
    assert graph.has_edge("clipgen.a", "clipgen.sub.b") and graph.has_edge("clipgen.sub.b", "clipgen.a")
    assert [sorted(c) for c in nx.simple_cycles(graph)] == [["clipgen.a", "clipgen.sub.b"]]


def test_no_import_cycle_between_library_modules():
    cycles = [c for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_long_library_files_say_why():
    long = {}
    for path in ROOT.rglob("*.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not lines[0].startswith("# Over 500 lines on purpose:"):
            long[str(path.relative_to(ROOT))] = len(lines)
    assert long == {}
