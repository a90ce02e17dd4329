"""The structure figures issue 13 asks for, printed side by side with the rules they meet.

    python bench/structure.py [--no-threads]

- lines per module (the largest five), and classes over the 400-line rule;
- import cycles between modules of ``src/sperse``: strongly connected components of the
  graph of every ``sperse`` import, those inside functions included (only imports under
  ``if TYPE_CHECKING:`` are left out, as import-linter does with
  ``exclude_type_checking_imports``);
- imports of ``sperse`` modules made inside functions;
- the threads a client starts: ``sperse.connect()`` to an embedded server, one remote call,
  then the threads alive beyond those before.
"""

from __future__ import annotations

import argparse
import ast
import sys
import threading
from pathlib import Path

import networkx as nx

SRC = Path(__file__).resolve().parent.parent / "src"
GENERATED = {"sperse._wire.sperse_pb2", "sperse._wire.sperse_pb2_grpc"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _targets(known: dict[str, Path], importer: str, node: ast.AST, package: bool) -> list[str]:
    """The sperse modules ``node`` (an import statement in ``importer``) loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = importer.split(".") if package else importer.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [
            f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names
        ]
    found = []
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != importer:
            found.append(name)
    return found


def imports(known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every sperse import outside
    ``if TYPE_CHECKING:``."""
    found: list[tuple[str, str, bool]] = []

    def visit(module: str, node: ast.AST, package: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for branch in child.orelse:
                    visit(module, branch, package, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(known, module, child, package):
                    found.append((module, target, in_function))
                continue
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(module, child, package, nested)

    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        visit(module, tree, path.name == "__init__.py", False)
    return found


def class_sizes(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]


def client_threads() -> tuple[int, list[str]]:
    """Threads alive after connect + one call, beyond those alive before."""
    import sperse

    before = {t.ident for t in threading.enumerate()}
    cluster = sperse.connect(workers=1)
    try:
        assert sperse.remote(abs)(-1).result(timeout=60) == 1
        new = [t.name for t in threading.enumerate() if t.ident not in before]
    finally:
        cluster.close()
    return len(new), sorted(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-threads", action="store_true", help="skip the client's threads")
    args = parser.parse_args()
    known = modules()

    lines = {m: len(p.read_text().splitlines()) for m, p in known.items() if m not in GENERATED}
    print("largest modules (rule: at most 600 lines)")
    for module, count in sorted(lines.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {count:5d}  {module}")
    over = sum(1 for count in lines.values() if count > 600)
    print(f"  modules over 600 lines: {over}")

    classes = [
        (size, f"{m}.{name}")
        for m, p in known.items()
        if m not in GENERATED
        for name, size in class_sizes(p)
    ]
    big = sorted((c for c in classes if c[0] > 400), reverse=True)
    print(f"classes over 400 lines: {len(big)}")
    for size, name in big:
        print(f"  {size:5d}  {name}")

    edges = imports(known)
    graph = nx.DiGraph((a, b) for a, b, _ in edges)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    print(f"import cycles (strongly connected groups of modules): {len(cycles)}")
    for group in cycles:
        print(f"  {len(group)} modules: {', '.join(group)}")
    in_function = sum(1 for _, _, inside in edges if inside)
    print(f"sperse imports inside functions: {in_function}")

    if not args.no_threads:
        count, names = client_threads()
        print(f"threads a connected client starts: {count} ({', '.join(names)})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
