#!/usr/bin/env python3
"""Finds import circles among the modules of a Python package, or of any
graph given as edges, and exits 1 printing each one.

    python3 scripts/check_import_cycles.py [PACKAGE_DIR ...]
    python3 scripts/check_import_cycles.py --edges FILE   (or - for stdin)

With package folders (default: python/snakepit_bridge) every ``.py`` file
under them is parsed with ``ast``. Every import statement counts, wherever
it sits (inside functions and ``if TYPE_CHECKING:`` too): a circle hidden
in a function is still a circle. ``import a.b`` and ``from a import b``
lead to the module ``a.b`` when there is one, else to ``a``; relative
imports are resolved against the importing module. Imports of modules
outside the scanned packages are left out, as is the implicit import of a
module's parent packages (every submodule would otherwise sit in a circle
with an ``__init__`` that imports its package's public names).

``--edges`` takes the graph from another language's parser instead: one
edge per line, ``FROM TO`` or ``FROM TO WHERE`` (``WHERE`` says where the
import is written, e.g. ``path:line``); blank lines and lines starting with
``#`` are skipped. The circle search is the same for both.

Each circle is printed as the chain of imports that closes it, one per
strongly connected group of modules; when a group holds more modules than
the chain goes through, further chains are printed until every module of
the group is on one.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = [ROOT / "python" / "snakepit_bridge"]

# module -> imported module -> where the first such import is written
Graph = dict[str, dict[str, str]]


# ---------------------------------------------------------------- Python


def module_name(path: Path, package_dir: Path) -> str:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/sub/__init__.py`` -> ``pkg.sub``."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """``name``, or its nearest enclosing package that is scanned."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _relative_base(importer: str, is_package: bool, level: int) -> str:
    package = importer if is_package else importer.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def imported_modules(tree: ast.AST, importer: str, is_package: bool, modules: set[str]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for every import in ``tree`` of a scanned module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _relative_base(importer, is_package, node.level)
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                # ``from a import b``: b may be a submodule or a name in a.
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else _resolve(base, modules)
                if target is not None:
                    yield target, node.lineno


def _shown(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def python_graph(package_dirs: Iterable[Path]) -> Graph:
    files: dict[str, Path] = {}
    for package_dir in package_dirs:
        for path in sorted(package_dir.rglob("*.py")):
            files[module_name(path, package_dir)] = path
    modules = set(files)
    graph: Graph = {name: {} for name in modules}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        shown = _shown(path)
        for target, line in imported_modules(tree, name, is_package, modules):
            if target != name:
                graph[name].setdefault(target, f"{shown}:{line}")
    return graph


# ---------------------------------------------------------------- edges


def edges_graph(stream: TextIO) -> Graph:
    graph: Graph = {}
    for number, raw in enumerate(stream, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(maxsplit=2)
        if len(fields) < 2:
            raise SystemExit(f"edges line {number}: expected 'FROM TO [WHERE]', got {line!r}")
        source, target = fields[0], fields[1]
        graph.setdefault(source, {})
        graph.setdefault(target, {})
        if source != target:
            graph[source].setdefault(target, fields[2] if len(fields) > 2 else "")
    return graph


# ---------------------------------------------------------------- circles


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Groups of modules that reach each other (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(groups)


def shortest_circle(graph: Graph, start: str, group: set[str]) -> list[str]:
    """The shortest chain ``start -> ... -> start`` inside ``group``."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in group:
                continue
            if child == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [*reversed(chain), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a circle but none was found")


def circles(graph: Graph) -> list[list[str]]:
    found: list[list[str]] = []
    for group in strongly_connected(graph):
        members = set(group)
        uncovered = list(group)
        while uncovered:
            circle = shortest_circle(graph, uncovered[0], members)
            found.append(circle)
            uncovered = [m for m in uncovered if m not in circle]
    return found


def describe(graph: Graph, circle: list[str]) -> str:
    lines = [circle[0]]
    for source, target in itertools.pairwise(circle):
        where = graph[source][target]
        lines.append(f"  -> {target}" + (f"    ({where})" if where else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", type=Path, help="package folders (default: python/snakepit_bridge)")
    parser.add_argument("--edges", metavar="FILE", help="read 'FROM TO [WHERE]' lines instead ('-': stdin)")
    args = parser.parse_args(argv)
    if args.edges:
        if args.edges == "-":
            graph = edges_graph(sys.stdin)
        else:
            with open(args.edges, encoding="utf-8") as stream:
                graph = edges_graph(stream)
        what = args.edges
    else:
        packages = args.packages or DEFAULT_PACKAGES
        graph = python_graph(packages)
        what = ", ".join(str(_shown(p)) for p in packages)
    found = circles(graph)
    edges = sum(len(targets) for targets in graph.values())
    if not found:
        print(f"no import circle among {len(graph)} modules ({edges} imports) in {what}")
        return 0
    print(f"{len(found)} import circle(s) among {len(graph)} modules in {what}:")
    for circle in found:
        print(describe(graph, circle))
    return 1


if __name__ == "__main__":
    sys.exit(main())
