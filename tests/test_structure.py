"""The size rules of the code's structure (docs/architecture.md), kept by every test run: no
module of ``src/sperse`` over 600 lines (generated code aside), no class over 400.
Import cycles and layers are import-linter's (``make lint``); ``bench/structure.py``
prints all the figures."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "sperse"
GENERATED = {"sperse_pb2.py", "sperse_pb2_grpc.py"}
MODULE_MAX = 600
CLASS_MAX = 400


def sources() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if p.name not in GENERATED]


def test_the_sources_are_found() -> None:
    assert len(sources()) > 100


def test_no_module_is_over_600_lines() -> None:
    over = {
        str(p.relative_to(SRC)): n
        for p in sources()
        if (n := len(p.read_text().splitlines())) > MODULE_MAX
    }
    assert not over, f"split these modules (lines): {over}"


def test_no_class_is_over_400_lines() -> None:
    over = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > CLASS_MAX:
                    over[f"{path.relative_to(SRC)}:{node.name}"] = size
    assert not over, f"split these classes (lines): {over}"
