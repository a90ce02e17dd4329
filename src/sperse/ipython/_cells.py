"""Which statements of an IPython cell go to the workspace, and which stay IPython's.

The extension sees a cell after IPython's own transforms, where IPython's syntax has become
calls on ``get_ipython()``::

    %pending          ->  get_ipython().run_line_magic('pending', '')
    !ls               ->  get_ipython().system('ls')
    files = !ls       ->  files = get_ipython().getoutput('ls')
    %%time ...        ->  get_ipython().run_cell_magic('time', '', '...')

:func:`split_cell` cuts a cell into :class:`Segment` s: those statements (and any statement
with a top-level ``await``, which IPython runs as a coroutine) are *IPython's* and run as
IPython runs them; every run of other statements goes to the workspace as one source text,
and so does a statement that is a bare name, on its own, to be *looked at* rather than
entered (as at the REPL). A ``%%remote [placement]`` cell becomes a ``remote[placement]:``
block.

The cell's text is not rewritten: IPython stores, caches and parses it as it would without
the extension (``In[n]``, ``_i``, a trailing ``;``, the lines in tracebacks), except that remote
forms, which are not Python, are written as the ``with`` statements of
:func:`sperse._lang.transform.transform` (:attr:`Plan.text`). The routing happens on the parsed
tree instead: :func:`route_tree` replaces the statements of each workspace segment by one call
on the line where the segment starts, so every statement keeps its line number.

Invariants: a cell without workspace statements has no :class:`Plan` and stays IPython's;
remote forms are checked (:func:`sperse._lang.transform.transform`) and workspace statements
compiled here, so a malformed one is a ``SyntaxError`` before anything in the cell runs, as
in Python.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from typing import Final, Literal

from sperse._lang.transform import remote_placement, transform

__all__ = ["FILENAME", "Plan", "Segment", "plan_cell", "remote_block", "route_tree", "split_cell"]

FILENAME: Final = "<cell>"

Kind = Literal["ipython", "sperse", "look"]


@dataclass(frozen=True, slots=True)
class Segment:
    """Lines ``first``..``last`` (1-based) of a cell, and who runs them.

    ``source``: for "sperse" and "look", the text for the workspace, with ``first - 1``
    blank lines in front so that its line numbers are the cell's; for "ipython", the lines.
    """

    kind: Kind
    first: int
    last: int
    source: str


def remote_block(placement: str, body: str) -> str:
    """The source of ``%%remote placement`` + ``body``: a ``remote[placement]:`` block.

    The placement may be written with or without its brackets. Line ``n + 1`` of the
    block is line ``n`` of the body, as line ``n + 1`` of the cell it came from.
    """
    text = placement.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    header = f"remote[{text}]:" if text else "remote:"
    lines = body.splitlines() if body.strip() else ["pass"]
    return header + "\n" + textwrap.indent("\n".join(lines), "    ", lambda _: True) + "\n"


def _first_line(stmt: ast.stmt) -> int:
    """The statement's first line: its first decorator's, for a decorated definition."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return min([stmt.lineno, *(d.lineno for d in stmt.decorator_list)])
    return stmt.lineno


def _is_ipython_call(node: ast.expr | None) -> bool:
    """``get_ipython().anything(...)``: what IPython's transforms produce."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
        and not node.func.value.args
        and not node.func.value.keywords
    )


def _cell_magic(stmt: ast.stmt, name: str | None) -> tuple[str, str] | None:
    """For ``get_ipython().run_cell_magic(name, line, body)``, its line and body."""
    if name is None or not isinstance(stmt, ast.Expr) or not _is_ipython_call(stmt.value):
        return None
    call = stmt.value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
    if call.func.attr != "run_cell_magic" or len(call.args) != 3 or call.keywords:
        return None
    values = [a.value if isinstance(a, ast.Constant) else None for a in call.args]
    if values[0] != name or not all(isinstance(v, str) for v in values):
        return None
    line, body = str(values[1]), str(values[2])
    if not body.strip():
        return None  # IPython says that the cell body is empty
    return line, body


class _TopLevelAwait(ast.NodeVisitor):
    found = False

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Await | ast.AsyncFor | ast.AsyncWith) or (
            isinstance(node, ast.comprehension) and node.is_async
        ):
            self.found = True
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            return  # a body of its own: await there is not top-level
        super().generic_visit(node)


def _kind(stmt: ast.stmt) -> Kind:
    if remote_placement(stmt) is not None:
        return "sperse"
    if isinstance(stmt, ast.Expr | ast.Assign | ast.AugAssign | ast.AnnAssign) and (
        _is_ipython_call(stmt.value)
    ):
        return "ipython"
    finder = _TopLevelAwait()
    finder.generic_visit(stmt)
    if finder.found:
        return "ipython"
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Name):
        return "look"
    return "sperse"


def split_cell(source: str, *, remote_magic: str | None = "remote") -> list[Segment]:
    """The segments of a cell (see the module docstring); [] for a cell with no statement.

    ``remote_magic``: the name the ``%%remote`` magic has in this shell (None: not ours).
    Raises ``SyntaxError`` for a malformed remote form, or a workspace statement that does
    not compile. Plain Python that does not parse is left to IPython, which reports it.
    """
    if not source.strip():
        return []
    transformed = transform(source, FILENAME)
    try:
        tree = ast.parse(transformed, FILENAME)
    except SyntaxError:
        if transformed is source:
            return [Segment("ipython", 1, len(source.splitlines()), source)]
        raise
    if len(tree.body) == 1:
        magic = _cell_magic(tree.body[0], remote_magic)
        if magic is not None:
            block = remote_block(*magic)
            _check(ast.parse(transform(block, FILENAME), FILENAME).body)
            last = tree.body[0].end_lineno or 1
            return [Segment("sperse", 1, last, block)]
    stmts = tree.body
    kinds = [_kind(stmt) for stmt in stmts]
    # Statements that share a line cannot be cut apart: they go to the workspace together.
    for i in range(len(stmts) - 1):
        if (stmts[i].end_lineno or 0) >= _first_line(stmts[i + 1]) and kinds[i] != kinds[i + 1]:
            kinds[i] = kinds[i + 1] = "sperse"
    lines = source.splitlines(keepends=True)
    segments: list[Segment] = []
    group: list[ast.stmt] = []
    for index, stmt in enumerate(stmts):
        group.append(stmt)
        joins_next = index + 1 < len(stmts) and kinds[index] == kinds[index + 1] == "sperse"
        if joins_next:
            continue
        kind = kinds[index]
        first, last = _first_line(group[0]), group[-1].end_lineno or group[-1].lineno
        text = "".join(lines[first - 1 : last])
        if kind == "ipython":
            segments.append(Segment(kind, first, last, text))
        else:
            _check(group)
            segments.append(Segment(kind, first, last, "\n" * (first - 1) + text))
        group = []
    return segments


def _check(stmts: list[ast.stmt]) -> None:
    """Compile workspace statements, for errors only Python's compiler finds (``return``)."""
    compile(ast.Module(stmts, []), FILENAME, "exec", dont_inherit=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """How a cell with workspace statements runs.

    ``source``: the cell as IPython's transforms left it (remote forms as typed);
    ``text``: the same cell as IPython parses it (remote forms as ``with`` statements, on the
    same lines); ``segments``: :func:`split_cell` of it.
    """

    source: str
    text: str
    segments: tuple[Segment, ...]

    def on_cell_lines(self, source: str) -> bool:
        """Whether ``source`` is the source of one of the cell's workspace segments that is
        written on the cell's own lines (every one but a ``%%remote`` block)."""
        lines = self.source.splitlines(keepends=True)
        return any(
            s.kind != "ipython"
            and s.source == source
            and source == "\n" * (s.first - 1) + "".join(lines[s.first - 1 : s.last])
            for s in self.segments
        )


def plan_cell(source: str, *, remote_magic: str | None = "remote") -> Plan | None:
    """The plan of a cell, or None when all of it is IPython's.

    Raises ``SyntaxError`` as :func:`split_cell` does.
    """
    segments = split_cell(source, remote_magic=remote_magic)
    if all(segment.kind == "ipython" for segment in segments):
        return None
    return Plan(source, transform(source, FILENAME), tuple(segments))


def route_tree(tree: ast.Module, plan: Plan, runner: str) -> ast.Module:
    """``tree`` (parsed from ``plan.text``) with each workspace segment's statements replaced
    by one ``get_ipython().run_cell_magic(runner, '', source)`` on the segment's first line.

    IPython's statements stay as they are. Raises ``ValueError`` when ``tree`` is not the
    tree of ``plan.text`` (a statement lies outside every segment).
    """
    body: list[ast.stmt] = []
    called: set[int] = set()
    for stmt in tree.body:
        first, last = _first_line(stmt), stmt.end_lineno or stmt.lineno
        index = next(
            (i for i, s in enumerate(plan.segments) if s.first <= first and last <= s.last),
            None,
        )
        if index is None:
            raise ValueError(f"the statement on lines {first}-{last} is in no part of the cell")
        segment = plan.segments[index]
        if segment.kind == "ipython":
            body.append(stmt)
        elif index not in called:
            called.add(index)
            body.append(_runner_call(runner, segment))
    return ast.Module(body, tree.type_ignores)


def _runner_call(runner: str, segment: Segment) -> ast.stmt:
    """``get_ipython().run_cell_magic(runner, '', segment.source)``, on the segment's first
    line (an expression statement: IPython shows the value it returns as ``Out[n]``)."""
    shell = ast.Call(ast.Name("get_ipython", ast.Load()), [], [])
    call = ast.Call(
        ast.Attribute(shell, "run_cell_magic", ast.Load()),
        [ast.Constant(runner), ast.Constant(""), ast.Constant(segment.source)],
        [],
    )
    stmt = ast.Expr(call)
    stmt.lineno = stmt.end_lineno = segment.first
    stmt.col_offset = stmt.end_col_offset = 0
    return ast.fix_missing_locations(stmt)
