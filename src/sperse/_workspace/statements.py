"""Statements in: what the workspace makes of one statement before it enters the graph.

``prepare`` labels, analyses and compiles a top-level statement (or, for a remote one,
cuts out the source that travels); nothing here touches the graph or runs anything, so a
bad statement anywhere in an input is found before any of it is entered.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Container
from dataclasses import dataclass
from types import CodeType

from sperse._core.values import value
from sperse._graph.graph import Graph
from sperse._lang.analysis import analyze
from sperse._lang.placement import Placement
from sperse._lang.transform import MARKER, remote_placement
from sperse.errors import StatementError

__all__ = ["Either", "Names", "Prepared", "RemoteBody", "body_source", "label_of", "prepare"]


_LABEL_WIDTH = 60


@dataclass(slots=True)
class RemoteBody:
    placement: Placement
    source: str
    first_line: int


@value
class Prepared:
    """A statement analysed and compiled, not yet entered."""

    label: str
    filename: str
    defs: frozenset[str]
    refs: frozenset[str]
    is_expression: bool
    code: CodeType | None
    remote: RemoteBody | None
    effect: bool = False  # changes an object it reads (rule 9)


class Names:
    """``in`` answers whether the workspace defines a name (to shadow builtins)."""

    __slots__ = ("_graph",)

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._graph.definer(name) is not None


class Either:
    """``in`` either container."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Container[str], b: Container[str]) -> None:
        self._a = a
        self._b = b

    def __contains__(self, name: object) -> bool:
        return name in self._a or name in self._b


def prepare(
    stmt: ast.stmt,
    lines: list[str],
    tlines: list[str],
    filename: str,
    shadowed: Either,
) -> Prepared:
    """Analyse and compile one statement of the input (``lines`` as typed, ``tlines`` as
    transformed); a remote statement is only checked, since its source travels."""
    label = label_of(lines, stmt)
    try:
        info = analyze(stmt, shadowed=shadowed)
    except StatementError as exc:
        raise StatementError(f"line {stmt.lineno}: `{label}`: {exc}") from None
    refs = info.refs
    remote: RemoteBody | None = None
    code: CodeType | None = None
    is_expression = info.is_expression
    found = remote_placement(stmt)
    if found is not None:
        placement, body = found
        refs = refs - {MARKER}
        is_expression = len(body) == 1 and isinstance(body[0], ast.Expr)
        remote = RemoteBody(placement, body_source(tlines, body), body[0].lineno)
        compile(ast.Module(body, []), filename, "exec")  # syntax check only: source travels
    elif is_expression:
        assert isinstance(stmt, ast.Expr)
        code = compile(ast.Expression(stmt.value), filename, "eval")
    else:
        code = compile(ast.Module([stmt], []), filename, "exec")
    # A remote statement changes copies on its server: only a local one has effects here.
    effect = info.effect and remote is None
    return Prepared(label, filename, info.defs, refs, is_expression, code, remote, effect)


def label_of(lines: list[str], stmt: ast.stmt) -> str:
    """The first line of a statement as the user typed it, shortened."""
    text = lines[stmt.lineno - 1].strip() if stmt.lineno - 1 < len(lines) else ""
    if stmt.end_lineno is not None and stmt.end_lineno > stmt.lineno:
        text += " ..."
    if len(text) > _LABEL_WIDTH:
        text = text[: _LABEL_WIDTH - 3] + "..."
    return text


def body_source(lines: list[str], body: list[ast.stmt]) -> str:
    """The source of a remote cell's body (``lines`` of the transformed input), dedented.

    A one-line form (``with __sperse_remote__(...): x = f(y)``) starts after
    the colon; continuation lines of it are inside brackets, where indentation
    does not matter.
    """
    first, last = body[0], body[-1]
    end = last.end_lineno or last.lineno
    chunk = lines[first.lineno - 1 : end]
    if first.col_offset > 0 and first.lineno == end:
        line = chunk[0].encode()
        return line[first.col_offset : last.end_col_offset].decode()
    if first.col_offset > 0 and _is_one_line_with(lines, first):
        head = chunk[0].encode()[first.col_offset :].decode()
        return head + "".join(chunk[1:])
    return textwrap.dedent("".join(chunk))


def _is_one_line_with(lines: list[str], first: ast.stmt) -> bool:
    return lines[first.lineno - 1].encode()[: first.col_offset].strip() != b""
